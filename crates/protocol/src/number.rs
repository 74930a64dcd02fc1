//! Numeric tokens as memcached reads them.
//!
//! memcached parses numbers with `strtoul`/`strtol`/`strtoull` wrapped in its `safe_strto*`
//! helpers, and clients depend on the exact set of accepted spellings: leading whitespace and a
//! sign are allowed, the number must end at whitespace or at the end of the token, values beyond
//! 64 bits are rejected, and a minus sign on an unsigned field is rejected unless the value is
//! zero. Flags are read into 64 bits and then truncated to 32, so `4294967296` is stored as 0;
//! that is what memcached 1.6.18 does and what its clients see.

/// Splits an optional sign and the digits after leading whitespace, as `strtol` does. Returns
/// `None` when there are no digits, or when the digits are followed by something other than
/// whitespace.
fn split_number(token: &[u8]) -> Option<(bool, &[u8])> {
    let start = token
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != 0x0b)
        .unwrap_or(token.len());
    let mut rest = &token[start..];
    let mut negative = false;
    if let Some((&sign, tail)) = rest.split_first() {
        if sign == b'-' || sign == b'+' {
            negative = sign == b'-';
            rest = tail;
        }
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let trailer = &rest[digits..];
    if let Some(&next) = trailer.first() {
        if !(next.is_ascii_whitespace() || next == 0x0b) {
            return None;
        }
    }
    Some((negative, &rest[..digits]))
}

/// Accumulates decimal digits; `None` on overflow of 64 bits (`strtoull`'s ERANGE).
fn digits_to_u64(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// memcached's `safe_strtoull`: a 64-bit unsigned number (CAS values, incr/decr deltas).
pub fn parse_u64(token: &[u8]) -> Option<u64> {
    let (negative, digits) = split_number(token)?;
    let magnitude = digits_to_u64(digits)?;
    if !negative {
        return Some(magnitude);
    }
    // strtoull negates a negative input; memcached only rejects the result when it looks
    // negative as a signed number, so "-0" is 0 and "-1" is an error.
    let value = magnitude.wrapping_neg();
    if (value as i64) < 0 {
        None
    } else {
        Some(value)
    }
}

/// memcached's `safe_strtoul` into a 32-bit field (client flags, verbosity, memory limit): read as
/// 64 bits, then truncated.
pub fn parse_u32_truncating(token: &[u8]) -> Option<u32> {
    parse_u64(token).map(|v| v as u32)
}

/// memcached's `safe_strtol` into a 32-bit signed field (exptime, data length, flush delay):
/// read as a 64-bit `long` (beyond that is an error), then truncated to 32 bits, so
/// `4294967297` reads as 1 exactly as memcached reads it.
pub fn parse_i32(token: &[u8]) -> Option<i32> {
    let (negative, digits) = split_number(token)?;
    let magnitude = digits_to_u64(digits)?;
    let value = if negative {
        0i64.checked_sub_unsigned(magnitude)?
    } else {
        i64::try_from(magnitude).ok()?
    };
    Some(value as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_accepts_what_strtoull_accepts() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"+5"), Some(5));
        assert_eq!(parse_u64(b"-0"), Some(0));
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"\t7"), Some(7));
        assert_eq!(parse_u64(b"7\t"), Some(7));
        assert_eq!(parse_u64(b"1x"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"-"), None);
    }

    #[test]
    fn flags_truncate_to_32_bits() {
        assert_eq!(parse_u32_truncating(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32_truncating(b"4294967296"), Some(0));
        assert_eq!(parse_u32_truncating(b"-1"), None);
    }

    #[test]
    fn signed_truncates_to_32_bits() {
        assert_eq!(parse_i32(b"-1"), Some(-1));
        assert_eq!(parse_i32(b"2147483647"), Some(i32::MAX));
        assert_eq!(parse_i32(b"2147483648"), Some(i32::MIN));
        assert_eq!(parse_i32(b"4294967297"), Some(1));
        assert_eq!(parse_i32(b"-2147483648"), Some(i32::MIN));
        assert_eq!(parse_i32(b"9223372036854775808"), None);
        assert_eq!(parse_i32(b"abc"), None);
    }
}
