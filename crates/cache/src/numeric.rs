//! The numbers of incr/decr: reading a stored value as memcached does and writing the result.
//!
//! memcached reads the value with `safe_strtoull`, that is C's `strtoull` in base 10 plus two
//! checks. What that accepts, verified on memcached 1.6.18:
//! leading C whitespace, then an optional `+` or `-`, then at least one digit; the digits must end
//! the value or be followed by whitespace (or NUL), after which anything may follow (`"5 abc"` is
//! 5). A value over `u64::MAX` is rejected. `strtoull` negates a `-` number modulo 2^64 and
//! memcached then rejects the result only when it is at or above 2^63, so `"-0"` is 0 and `"-5"`
//! is rejected. Leading zeros are fine at any length.

/// The digits of `u64::MAX`: the longest decimal a counter can need.
pub(crate) const MAX_DIGITS: usize = 20;

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The counter a value holds, or `None` when incr/decr must answer "non-numeric".
pub(crate) fn parse_counter(value: &[u8]) -> Option<u64> {
    let mut i = value.iter().take_while(|&&b| is_c_space(b)).count();
    let negative = match value.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits_start = i;
    let mut magnitude: Option<u64> = Some(0);
    while let Some(&b) = value.get(i).filter(|b| b.is_ascii_digit()) {
        magnitude = magnitude
            .and_then(|m| m.checked_mul(10))
            .and_then(|m| m.checked_add(u64::from(b - b'0')));
        i += 1;
    }
    if i == digits_start {
        return None;
    }
    let magnitude = magnitude?;
    if value.get(i).is_some_and(|&b| !is_c_space(b) && b != 0) {
        return None;
    }
    if negative {
        let n = magnitude.wrapping_neg();
        (n < 1 << 63).then_some(n)
    } else {
        Some(magnitude)
    }
}

/// The counter after the operation: incr wraps at 2^64, decr stops at 0.
pub(crate) fn apply_delta(counter: u64, incr: bool, delta: u64) -> u64 {
    if incr {
        counter.wrapping_add(delta)
    } else {
        counter.saturating_sub(delta)
    }
}

/// Writes `n` in decimal at the end of `buf` and returns the digits.
pub(crate) fn format_counter(mut n: u64, buf: &mut [u8; MAX_DIGITS]) -> &[u8] {
    let mut start = MAX_DIGITS;
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_memcached_accepts() {
        // Each case was run through `decr` on memcached 1.6.18.
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"100", Some(100)),
            (b"  5", Some(5)),
            (b"\t7", Some(7)),
            (b"5  ", Some(5)),
            (b"5 abc", Some(5)),
            (b"+5", Some(5)),
            (b"-0", Some(0)),
            (b"-5", None),
            (b"0x10", None),
            (b"12a", None),
            (b"", None),
            (b" ", None),
            (b"-", None),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"0000000000000000000000000000001", Some(1)),
        ];
        for &(value, want) in cases {
            assert_eq!(
                parse_counter(value),
                want,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn negative_numbers_follow_strtoull_modulo_arithmetic() {
        assert_eq!(parse_counter(b"-18446744073709551615"), Some(1));
        assert_eq!(parse_counter(b"-9223372036854775808"), None);
        assert_eq!(parse_counter(b"-9223372036854775809"), Some((1 << 63) - 1));
        assert_eq!(parse_counter(b"9223372036854775808"), Some(1 << 63));
    }

    #[test]
    fn a_nul_after_the_digits_ends_the_number() {
        assert_eq!(parse_counter(b"42\0xyz"), Some(42));
    }

    #[test]
    fn incr_wraps_and_decr_stops_at_zero() {
        assert_eq!(apply_delta(u64::MAX, true, 2), 1);
        assert_eq!(apply_delta(5, false, 10), 0);
        assert_eq!(apply_delta(5, false, 5), 0);
        assert_eq!(apply_delta(5, true, 5), 10);
    }

    #[test]
    fn formats_decimal() {
        let mut buf = [0; MAX_DIGITS];
        assert_eq!(format_counter(0, &mut buf), b"0");
        assert_eq!(format_counter(99, &mut buf), b"99");
        assert_eq!(format_counter(u64::MAX, &mut buf), b"18446744073709551615");
    }
}
