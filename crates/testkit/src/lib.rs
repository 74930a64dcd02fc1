//! Test helpers shared by keepcached's integration tests.
//!
//! Everything here is blocking std code with a timeout on every wait, so a broken server makes a
//! test fail with a message instead of hanging CI:
//! - [`process`]: start Debian's memcached or our `keepcached server` on a free loopback port and
//!   kill exactly that process when the handle is dropped (also while a test panics);
//! - [`client`]: a TCP client that sends raw bytes and reads a reply until it is complete;
//! - [`mask`]: blank out values that legitimately differ between two servers (CAS numbers, pid,
//!   uptime, rusage, ...) before replies are compared;
//! - [`wire`]: differential wire tables (request bytes and the documented reply), run against
//!   memcached and against keepcached, every difference collected and reported;
//! - [`env`]: skip tests that need root or a Debian tool, except in CI where they must run;
//! - [`parser_invariants`]: the properties the text request parser must keep on any input,
//!   shared by the fuzz target (`fuzz/`) and a deterministic test over generated inputs;
//!   [`meta_invariants`] and [`binary_invariants`] do the same for the meta and binary parsers;
//! - [`fuzz`]: seeded generated and mutated requests of each protocol, played against
//!   memcached and keepcached, replies compared after masking.

pub mod binary_invariants;
pub mod client;
pub mod env;
pub mod fuzz;
mod invariants;
pub mod mask;
pub mod meta_invariants;
pub mod parser_invariants;
pub mod process;
pub mod wait;
pub mod wire;

pub use client::{escape, Client, End};
pub use process::{
    free_port, keepcached_proxy, keepcached_server, memcached, raise_open_file_limit,
    run_with_timeout, CommandOutput, ServerProcess,
};
