//! Waiting for data before reading it, so a connection takes its read buffer only once data is
//! there.
//!
//! The read itself then goes through `AsyncRead` (tokio's `read_buf`), not `try_read_buf`: a
//! short read through `AsyncRead` tells tokio the socket is drained, while `try_read_buf` leaves
//! it marked readable, so the next wait returns at once and costs a read that finds nothing —
//! one wasted system call per request.

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

/// A client stream the server and the proxy serve: TCP or unix.
pub trait Socket: AsyncRead + AsyncWrite + Unpin {
    /// Waits until a read would not block (or the peer closed).
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Socket for tokio::net::TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        tokio::net::TcpStream::readable(self)
    }
}

impl Socket for tokio::net::UnixStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        tokio::net::UnixStream::readable(self)
    }
}
