//! What the binary and meta parsers' invariant checks share: the limits they run under and
//! what an `Incomplete` may ask for.

use keepcached_protocol::{Incomplete, Limits};

use crate::client::escape;

/// Runs `check` on `input` with the default limits and with a 4 KiB item limit, so that short
/// inputs reach the size checks.
pub(crate) fn under_both_limits(input: &[u8], check: fn(&[u8], &Limits)) {
    check(input, &Limits::default());
    check(
        input,
        &Limits {
            item_size_max: 4096,
            ..Limits::default()
        },
    );
}

/// An `Incomplete` for what is left of the input, `rest`, must ask for more than is there, and
/// no more than `most` where the protocol bounds what a request may make a connection buffer.
pub(crate) fn assert_incomplete(incomplete: &Incomplete, rest: &[u8], most: Option<usize>) {
    let shown = || escape(&rest[..rest.len().min(200)]);
    if let Some(needed) = incomplete.needed {
        assert!(
            needed > rest.len(),
            "Incomplete needs {needed} of {}: {}",
            rest.len(),
            shown()
        );
        if let Some(most) = most {
            assert!(needed <= most, "asks to buffer {needed} bytes: {}", shown());
        }
    }
}
