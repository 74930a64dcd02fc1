//! Listening sockets of either kind, TCP or unix, accepted on one runtime and served on a
//! worker's.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use crate::Socket;

/// A listener whose connections are accepted on the calling runtime and then moved to a worker.
pub trait Acceptor: Send + Sync + 'static {
    type Stream: Socket + Send + 'static;
    /// The next connection and its peer's address (`None` for a unix socket). TCP connections
    /// come with Nagle off where the socket allows: requests and replies are small and
    /// latency-bound.
    fn accept_one(
        &self,
    ) -> impl Future<Output = io::Result<(Self::Stream, Option<SocketAddr>)>> + Send;
    /// Moves an accepted connection to the runtime of the calling thread (a worker's), so its
    /// wake-ups happen there.
    fn rehome(stream: Self::Stream) -> io::Result<Self::Stream>;
}

impl Acceptor for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (stream, peer) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Some(peer)))
    }
    fn rehome(stream: Self::Stream) -> io::Result<Self::Stream> {
        tokio::net::TcpStream::from_std(stream.into_std()?)
    }
}

impl Acceptor for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<(Self::Stream, Option<SocketAddr>)> {
        Ok((self.accept().await?.0, None))
    }
    fn rehome(stream: Self::Stream) -> io::Result<Self::Stream> {
        tokio::net::UnixStream::from_std(stream.into_std()?)
    }
}
