//! Feeds arbitrary bytes to the binary request parser the way a connection does, and asserts
//! its invariants: no panic, the same answer twice, `consumed` never beyond the input and at
//! least a header, an `Incomplete` that asks for more than is there, and a request whose key
//! (within the limit), extras and value add up to the body length it consumed.
#![no_main]

use keepcached_protocol::binary::{parse_binary, BinaryOutcome, HEADER_LEN};
use keepcached_protocol::Limits;
use libfuzzer_sys::fuzz_target;

fn check(input: &[u8], limits: &Limits) {
    let mut rest = input;
    while !rest.is_empty() {
        let result = parse_binary(rest, limits);
        assert_eq!(result, parse_binary(rest, limits), "nondeterministic");
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
        let consumed = parsed.consumed;
        assert!(
            consumed <= rest.len(),
            "consumed {consumed} of {}",
            rest.len()
        );
        match &parsed.outcome {
            BinaryOutcome::Request(request) => {
                let header = &request.header;
                assert_eq!(consumed, HEADER_LEN + header.body_len as usize);
                assert_eq!(usize::from(header.key_len), request.key.len());
                assert!(request.key.len() <= limits.max_key_len, "key too long");
                assert_eq!(
                    usize::from(header.extras_len) + request.key.len() + request.value.len(),
                    header.body_len as usize,
                    "extras, key and value do not make the body"
                );
                // Key then value, at the end of what was consumed.
                assert!(rest[..consumed].ends_with(request.value));
                let key_end = consumed - request.value.len();
                assert_eq!(&rest[key_end - request.key.len()..key_end], request.key);
            }
            BinaryOutcome::Reject(reject) => {
                assert!(consumed >= HEADER_LEN, "a reject consumes its header");
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

fuzz_target!(|data: &[u8]| {
    check(data, &Limits::default());
    check(
        data,
        &Limits {
            item_size_max: 4096,
            ..Limits::default()
        },
    );
});
