//! How a request's outcome is written to the client: a write's reply (or none for
//! `noreply`), a failure as `SERVER_ERROR`, and what the connection does next. Shared by the
//! text (client.rs), meta (meta.rs) and read (read.rs) paths, so none of them imports another
//! for it.

use std::future::Future;

use keepcached_protocol::reply;

use crate::backend::{ErrorKind, Reply};
use crate::error::ProxyError;
use crate::stats::Stats;
use crate::Context;

/// Where replies go: a buffer, and for a client connection the chance to write it out between
/// the windows of a long read (read.rs), so that the buffer stays bounded however many keys a
/// client asks for.
pub trait Output {
    fn buf(&mut self) -> &mut Vec<u8>;

    /// Writes the buffer out once it holds the connection's high-water mark (waiting for the
    /// client to read it); an error means the client is gone.
    fn relieve(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// A reply of its own, written to the client later (pipelined reads run side by side, each
/// into its own buffer; each is bounded by the read window).
impl Output for Vec<u8> {
    fn buf(&mut self) -> &mut Vec<u8> {
        self
    }

    async fn relieve(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the connection does after a request.
pub enum Next {
    Continue,
    Close,
    /// Discard this many more bytes (the data block of a value too large to store).
    Swallow(usize),
}

/// Appends a write's reply (unless `noreply`).
pub fn answer(ctx: &Context, result: Result<Reply, ProxyError>, noreply: bool, out: &mut Vec<u8>) {
    match result {
        Ok(_) if noreply => {}
        Ok(Reply::Status(status)) => out.extend_from_slice(status.as_line()),
        Ok(Reply::Number(n)) => reply::number(out, n),
        Ok(Reply::Error { kind, text }) => {
            out.extend_from_slice(match kind {
                ErrorKind::Error => b"ERROR",
                ErrorKind::Client => b"CLIENT_ERROR",
                ErrorKind::Server => b"SERVER_ERROR",
            });
            if !text.is_empty() {
                out.push(b' ');
                out.extend_from_slice(&text);
            }
            out.extend_from_slice(b"\r\n");
        }
        Ok(other) => {
            tracing::error!(?other, "backend answered a write with an unexpected reply");
            reply::line(
                out,
                b"SERVER_ERROR keepcached-proxy: unexpected reply from backend",
            );
        }
        // A client that asked for no reply gets none, even for a failure (as with memcached).
        Err(_) if noreply => Stats::add(&ctx.stats.counters().unavailable_errors, 1),
        Err(e) => unavailable(ctx, &e, out),
    }
}

pub fn unavailable(ctx: &Context, error: &ProxyError, out: &mut Vec<u8>) {
    Stats::add(&ctx.stats.counters().unavailable_errors, 1);
    reply::line(
        out,
        format!("SERVER_ERROR keepcached-proxy: {error}").as_bytes(),
    );
}
