//! The one place that needs `unsafe`, for two things safe APIs do not offer:
//! - a link-layer socket address (`sockaddr_ll`), which gratuitous ARP needs to
//!   name the interface it leaves by: socket2 and nix build every other address
//!   safely but have no constructor for this one;
//! - registering the raw VRRP socket with tokio's reactor: `AsyncFd::register`
//!   is `unsafe` because tokio cannot check that the descriptor stays open.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;

use socket2::{SockAddr, Socket};
use tokio::io::unix::AsyncFd;

/// Registers a non-blocking socket with the tokio reactor.
pub fn async_socket(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: `Socket` owns its descriptor, which stays open and the same
    // until the `Socket`, owned by the `AsyncFd`, is dropped with it.
    unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)
}

/// A `sockaddr_ll` for sending frames of `ethertype` out of interface
/// `ifindex` to the hardware address `dest`.
pub fn link_layer_addr(ifindex: u32, ethertype: u16, dest: [u8; 6]) -> io::Result<SockAddr> {
    let index = i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut sll_addr = [0u8; 8];
    sll_addr[..6].copy_from_slice(&dest);
    let ll = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: ethertype.to_be(),
        sll_ifindex: index,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr,
    };
    // SAFETY: `try_init` hands us zeroed storage of `sockaddr_storage` size,
    // which is larger than and aligned for `sockaddr_ll`; we write one
    // `sockaddr_ll` at its start and report exactly that length.
    let ((), addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            storage.cast::<libc::sockaddr_ll>().write(ll);
            *len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })
    }?;
    Ok(addr)
}
