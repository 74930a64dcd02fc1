//! Feeds arbitrary bytes to the meta request parser (`parse_command`, which routes meta lines)
//! the way a connection does and asserts its invariants (no panic, determinism, progress, keys
//! within the limit, key and data from the consumed bytes): see
//! keepcached_testkit::meta_invariants, whose test runs the same checks on generated requests in
//! the workspace tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keepcached_testkit::meta_invariants::check_meta_request(data);
});
