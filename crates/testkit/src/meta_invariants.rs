//! Invariants of the meta request parser (`keepcached_protocol::parse_command`, which routes meta
//! lines) that must hold for any input bytes.
//!
//! [`check_meta_request`] is the body of the `meta_request` fuzz target (fuzz/, cargo-fuzz on
//! nightly); the test below drives it with the seeded meta generator of [`crate::fuzz`], so the
//! workspace tests check the same properties on stable and the target cannot rot.

use keepcached_protocol::meta::{MetaParsed, MetaReject};
use keepcached_protocol::{parse_command, Command, Limits};

use crate::client::escape;
use crate::invariants::{assert_incomplete, under_both_limits};

/// Whether `part` is a slice of `whole` (the parser must not invent bytes).
fn within(part: &[u8], whole: &[u8]) -> bool {
    let (start, end) = (
        whole.as_ptr() as usize,
        whole.as_ptr() as usize + whole.len(),
    );
    let p = part.as_ptr() as usize;
    part.is_empty() || (p >= start && p + part.len() <= end)
}

fn check_meta(input: &[u8], parsed: &MetaParsed<'_>, limits: &Limits) {
    let consumed = &input[..parsed.consumed];
    match &parsed.outcome {
        Ok(request) => {
            let key = request.key.as_bytes();
            assert!(
                key.len() <= limits.max_key_len,
                "key of {} bytes",
                key.len()
            );
            // A base64 key is decoded into the request; any other is the client's bytes.
            if !request.key.is_binary() {
                assert!(within(key, consumed), "key not from the consumed bytes");
            }
            assert!(
                within(request.data, consumed),
                "data not from the consumed bytes"
            );
            assert!(
                request.data.len() <= limits.item_size_max,
                "data of {} bytes",
                request.data.len()
            );
        }
        Err(MetaReject { unlink, .. }) => {
            if let Some(key) = unlink {
                assert!(key.as_bytes().len() <= limits.max_key_len);
            }
        }
    }
}

/// Parses `input` with the default limits and with a 4 KiB item limit, and checks every
/// invariant.
pub fn check_meta_request(input: &[u8]) {
    under_both_limits(input, check_with);
}

/// Parses the whole input the way a connection does and checks each step: no panic, the same
/// answer twice, progress, `consumed` within the input, an `Incomplete` that asks for more than
/// is there, keys within the limit, a request's key and data taken from the consumed bytes.
pub fn check_with(input: &[u8], limits: &Limits) {
    let mut rest = input;
    while !rest.is_empty() {
        let shown = || escape(&rest[..rest.len().min(200)]);
        let result = parse_command(rest, limits);
        assert_eq!(
            format!("{result:?}"),
            format!("{:?}", parse_command(rest, limits)),
            "nondeterministic on {}",
            shown()
        );
        let parsed = match result {
            Err(incomplete) => {
                assert_incomplete(&incomplete, rest, None);
                return;
            }
            Ok(parsed) => parsed,
        };
        let consumed = parsed.consumed();
        assert!(consumed > 0, "no progress on {}", shown());
        assert!(
            consumed <= rest.len(),
            "consumed {consumed} of {}",
            rest.len()
        );
        if let Command::Meta(meta) = &parsed {
            check_meta(rest, meta, limits);
        }
        rest = &rest[consumed..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::{Protocol, Rng};

    #[test]
    fn meta_parser_invariants_hold_on_generated_requests() {
        let mut rng = Rng::new(0x5eed_3e7a_0000_0001);
        for i in 0..5_000 {
            let input = Protocol::Meta.case(&mut rng, &format!("c{i}_"), true);
            check_meta_request(&input);
            for cut in [
                input.len() / 3,
                input.len() / 2,
                input.len().saturating_sub(1),
            ] {
                check_meta_request(&input[..cut]);
            }
        }
    }
}
