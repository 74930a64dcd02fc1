//! The VRRP socket: raw IPv4 protocol 112, bound to one interface, joined to
//! 224.0.0.18 unless the instance uses unicast peers.
//!
//! Received packets come with their IPv4 header (so the TTL and destination
//! can be checked); sent packets carry a header we build (`IP_HDRINCL`), so
//! the source address is the one the VRRPv3 checksum was computed over, even
//! when the virtual address sits on the same interface.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::packet::{IPPROTO_VRRP, MULTICAST_V4};

#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
}

impl VrrpSocket {
    pub fn open(ifname: &str, ifindex: u32, multicast: bool) -> io::Result<VrrpSocket> {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(IPPROTO_VRRP))),
        )?;
        s.bind_device(Some(ifname.as_bytes()))?;
        s.set_header_included_v4(true)?;
        // Our own multicast adverts are of no use to us.
        s.set_multicast_loop_v4(false)?;
        if multicast {
            s.join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(ifindex))?;
        }
        s.set_nonblocking(true)?;
        Ok(VrrpSocket {
            fd: crate::sys::async_socket(s)?,
        })
    }

    /// Receives one IPv4 packet, header included.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            if let Ok(r) = guard.try_io(|s| s.get_ref().read(buf)) {
                return r;
            }
        }
    }

    /// Receives one IPv4 packet if one is waiting, without waiting for one.
    pub fn try_recv(&self, buf: &mut [u8]) -> Option<usize> {
        self.fd.get_ref().read(buf).ok()
    }

    /// Sends one IPv4 packet whose header is already in `packet`.
    pub fn send(&self, packet: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        self.fd
            .get_ref()
            .send_to(packet, &SocketAddrV4::new(dst, 0).into())?;
        Ok(())
    }
}

pub fn interface_index(name: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(io::Error::from)
}

/// The first IPv4 address of interface `name` that is not one of `exclude`
/// (the virtual addresses, which may still be there from a previous run).
pub fn primary_ipv4(name: &str, exclude: &[Ipv4Addr]) -> io::Result<Option<Ipv4Addr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter(|a| a.interface_name == name)
        .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|s| s.ip())))
        .find(|ip| !exclude.contains(ip)))
}
