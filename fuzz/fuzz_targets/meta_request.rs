//! Feeds arbitrary bytes to the meta request parser (`parse_command`, which routes meta lines)
//! the way a connection does, and asserts its invariants: no panic, the same answer twice,
//! progress, `consumed` never beyond the input, an `Incomplete` that asks for more than is
//! there, keys within the limit, and a request's key and data taken from the consumed bytes.
#![no_main]

use keepcached_protocol::meta::{MetaParsed, MetaReject};
use keepcached_protocol::{parse_command, Command, Limits};
use libfuzzer_sys::fuzz_target;

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

fn check(input: &[u8], limits: &Limits) {
    let mut rest = input;
    while !rest.is_empty() {
        let result = parse_command(rest, limits);
        assert_eq!(
            format!("{result:?}"),
            format!("{:?}", parse_command(rest, limits)),
            "nondeterministic"
        );
        let parsed = match result {
            Err(incomplete) => {
                if let Some(needed) = incomplete.needed {
                    assert!(
                        needed > rest.len(),
                        "Incomplete needs {needed} of {}",
                        rest.len()
                    );
                }
                return;
            }
            Ok(parsed) => parsed,
        };
        let consumed = parsed.consumed();
        assert!(consumed > 0, "no progress");
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

fuzz_target!(|data: &[u8]| {
    check(data, &Limits::default());
    // Small limits so that short inputs reach the size checks.
    check(
        data,
        &Limits {
            item_size_max: 4096,
            ..Limits::default()
        },
    );
});
