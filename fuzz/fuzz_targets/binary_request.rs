//! Feeds arbitrary bytes to the binary request parser the way a connection does and asserts its
//! invariants (no panic, determinism, progress, consumed within the input, a buffer request never
//! beyond one item, key/extras/value taken from what was consumed): see
//! keepcached_testkit::binary_invariants, whose test runs the same checks on generated packets in
//! the workspace tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keepcached_testkit::binary_invariants::check_binary_request(data);
});
