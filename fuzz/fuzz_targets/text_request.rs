//! Feeds arbitrary bytes to the text request parser the way a connection does and asserts its
//! invariants (no panic, progress, consumed within the input, keys within the limit, values
//! consistent with consumed, determinism): see keepcached_testkit::parser_invariants, whose
//! test runs the same checks on generated inputs in the workspace tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keepcached_testkit::parser_invariants::check_text_request(data);
});
