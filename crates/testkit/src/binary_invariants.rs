//! Invariants of `keepcached_protocol::binary::parse_binary` that must hold for any input bytes.
//!
//! [`check_binary_request`] is the body of the `binary_request` fuzz target (fuzz/, cargo-fuzz on
//! nightly); the test below drives it with the seeded packet generator of [`crate::fuzz`], so the
//! workspace tests (stable Rust, CI) check the same properties and the target cannot rot.

use keepcached_protocol::binary::{parse_binary, BinaryCommand, BinaryOutcome, HEADER_LEN};
use keepcached_protocol::Limits;

use crate::client::escape;
use crate::invariants::{assert_incomplete, under_both_limits};

/// Parses `input` with the default limits and with a 4 KiB item limit (so short inputs reach
/// the size checks), and checks every invariant.
pub fn check_binary_request(input: &[u8]) {
    under_both_limits(input, check_with);
}

/// Parses the whole input the way a connection does and checks each step: no panic, the same
/// answer twice, progress, `consumed` within the input, an `Incomplete` that asks for more than
/// is there but never more than a header, extras, key and an item-sized value, and a request
/// whose key (within the limit), extras and value are the bytes it consumed.
pub fn check_with(input: &[u8], limits: &Limits) {
    // The most a packet may make a connection buffer: what a store of the largest item needs.
    let most = HEADER_LEN + usize::from(u8::MAX) + usize::from(u16::MAX) + limits.item_size_max;
    let mut rest = input;
    while !rest.is_empty() {
        let shown = || escape(&rest[..rest.len().min(200)]);
        let result = parse_binary(rest, limits);
        assert_eq!(
            result,
            parse_binary(rest, limits),
            "nondeterministic on {}",
            shown()
        );
        let parsed = match result {
            Err(incomplete) => {
                assert_incomplete(&incomplete, rest, Some(most));
                return;
            }
            Ok(parsed) => parsed,
        };
        let consumed = parsed.consumed;
        assert!(
            consumed <= rest.len(),
            "consumed {consumed} of {}",
            rest.len()
        );
        match &parsed.outcome {
            BinaryOutcome::Request(request) => {
                let header = &request.header;
                let fixed = HEADER_LEN + usize::from(header.extras_len) + request.key.len();
                assert_eq!(usize::from(header.key_len), request.key.len());
                assert!(request.key.len() <= limits.max_key_len, "key too long");
                assert_eq!(consumed, fixed + request.value.len(), "{}", shown());
                // Only a store and SASL read a value; the others read their extras and key,
                // and what their header declares beyond is the next packet.
                let reads_value = matches!(
                    request.command,
                    BinaryCommand::Store { .. } | BinaryCommand::SaslAuth | BinaryCommand::SaslStep
                );
                if reads_value {
                    assert_eq!(consumed, HEADER_LEN + header.body_len as usize);
                    assert!(request.value.len() <= limits.item_size_max);
                } else {
                    assert!(request.value.is_empty(), "{}", shown());
                }
                assert!(rest[..consumed].ends_with(request.value));
                let key_end = consumed - request.value.len();
                assert_eq!(&rest[key_end - request.key.len()..key_end], request.key);
            }
            BinaryOutcome::Reject(reject) => {
                assert!(consumed >= HEADER_LEN, "a reject consumes its header");
                // memcached keeps the count in an int: 2 GiB or more discards nothing.
                assert!(reject.swallow <= i32::MAX as usize);
                if let Some(key) = reject.unlink {
                    assert!(key.len() <= limits.max_key_len);
                }
            }
            BinaryOutcome::Close => return,
        }
        assert!(consumed > 0, "no progress");
        rest = &rest[consumed..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::{Protocol, Rng};

    #[test]
    fn binary_parser_invariants_hold_on_generated_packets() {
        let mut rng = Rng::new(0x5eed_b1a7_0000_0001);
        for i in 0..5_000 {
            let input = Protocol::Binary.case(&mut rng, &format!("c{i}_"), true);
            check_binary_request(&input);
            for cut in [HEADER_LEN, input.len() / 2, input.len().saturating_sub(1)] {
                check_binary_request(&input[..cut.min(input.len())]);
            }
        }
    }
}
