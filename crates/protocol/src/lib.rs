//! memcached's wire protocols, without I/O.
//!
//! Bytes enter through [`parse_request`] (the server and the proxy call it in a loop over their
//! read buffer and advance the buffer by [`Parsed::consumed`]); replies leave through the
//! encoders in [`reply`]. Nothing here allocates on the request path: a parsed request borrows
//! its keys and value from the caller's buffer.
//!
//! The behaviour follows memcached 1.6.18 byte for byte, including its odd corners (which error
//! text each malformed line gets, when `noreply` silences an error, when the connection is
//! closed); the differential tests in `crates/keepcached/tests` hold it to that.

pub mod binary;
pub mod meta;
mod number;
pub mod reply;
pub mod response;
mod text;

pub use meta::{parse_command, Command};
pub use number::{parse_i32, parse_u32_truncating, parse_u64};
pub use text::{
    parse_request, Incomplete, Invalid, Keys, Limits, Parsed, Request, StoreKind, Verb,
};
