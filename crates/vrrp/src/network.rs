//! The VRRP socket: raw protocol 112, bound to one interface, joined to
//! 224.0.0.18 (IPv4) or ff02::12 (IPv6) unless the instance uses unicast peers.
//!
//! Over IPv4, received packets come with their IPv4 header (so the TTL and
//! destination can be checked); sent packets carry a header we build
//! (`IP_HDRINCL`), so the source address is the one the VRRPv3 checksum was
//! computed over, even when the virtual address sits on the same interface.
//!
//! Over IPv6 the kernel builds the header: the socket is bound to the
//! interface's link-local address (the source RFC 5798 §5.1.2.1 asks for) and
//! sends with hop limit 255 and traffic class "internetwork control", as
//! keepalived does; received packets come with their hop limit and
//! destination as ancillary data. The kernel neither computes nor checks the
//! checksum (no `IPV6_CHECKSUM`), so a bad one is counted like over IPv4.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::packet::{Ipv6Header, IPPROTO_VRRP, MULTICAST_V4, MULTICAST_V6, TTL};

/// IP precedence "internetwork control", as the IPv4 header carries it.
const TCLASS_INTERNETWORK_CONTROL: u32 = 0xc0;

#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    /// The interface, for the scope of IPv6 link-local destinations.
    ifindex: u32,
    ipv6: bool,
}

/// One received packet: `len` bytes of `buf`, which over IPv4 start with the
/// IPv4 header; over IPv6 they are the advert and `ipv6` tells the header.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub ipv6: Option<Ipv6Header>,
}

impl VrrpSocket {
    pub fn open_v4(ifname: &str, ifindex: u32, multicast: bool) -> io::Result<VrrpSocket> {
        let s = raw(Domain::IPV4, ifname)?;
        s.set_header_included_v4(true)?;
        // Our own multicast adverts are of no use to us.
        s.set_multicast_loop_v4(false)?;
        if multicast {
            s.join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(ifindex))?;
        }
        VrrpSocket::register(s, ifindex, false)
    }

    /// An IPv6 socket sending from `source` (normally the interface's
    /// link-local address).
    pub fn open_v6(
        ifname: &str,
        ifindex: u32,
        source: Ipv6Addr,
        multicast: bool,
    ) -> io::Result<VrrpSocket> {
        let s = raw(Domain::IPV6, ifname)?;
        s.bind(&SocketAddrV6::new(source, 0, 0, ifindex).into())?;
        s.set_multicast_hops_v6(u32::from(TTL))?;
        s.set_unicast_hops_v6(u32::from(TTL))?;
        s.set_tclass_v6(TCLASS_INTERNETWORK_CONTROL)?;
        s.set_multicast_if_v6(ifindex)?;
        s.set_multicast_loop_v6(false)?;
        s.set_recv_hoplimit_v6(true)?;
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6RecvPacketInfo, &true)
            .map_err(io::Error::from)?;
        if multicast {
            s.join_multicast_v6(&MULTICAST_V6, ifindex)?;
        }
        VrrpSocket::register(s, ifindex, true)
    }

    fn register(s: Socket, ifindex: u32, ipv6: bool) -> io::Result<VrrpSocket> {
        s.set_nonblocking(true)?;
        Ok(VrrpSocket {
            fd: crate::sys::async_socket(s)?,
            ifindex,
            ipv6,
        })
    }

    /// Receives one packet.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            if let Ok(r) = guard.try_io(|s| self.read(s.get_ref(), buf)) {
                return r;
            }
        }
    }

    /// Receives one packet if one is waiting, without waiting for one.
    pub fn try_recv(&self, buf: &mut [u8]) -> Option<Received> {
        self.read(self.fd.get_ref(), buf).ok()
    }

    fn read(&self, s: &Socket, buf: &mut [u8]) -> io::Result<Received> {
        if !self.ipv6 {
            let len = (&*s).read(buf)?;
            return Ok(Received { len, ipv6: None });
        }
        let r = crate::sys::recv_v6(s, buf)?;
        // Linux delivers both on a socket that asked for them; a packet
        // without them cannot be checked, so it counts as routed.
        Ok(Received {
            len: r.len,
            ipv6: Some(Ipv6Header {
                src: r.src,
                dst: r.dst.unwrap_or(Ipv6Addr::UNSPECIFIED),
                hop_limit: r.hop_limit.unwrap_or(0),
            }),
        })
    }

    /// Sends one packet: over IPv4 with its header already in `packet`,
    /// over IPv6 the advert alone.
    pub fn send(&self, packet: &[u8], dst: IpAddr) -> io::Result<()> {
        let to = match dst {
            IpAddr::V4(d) => SocketAddrV4::new(d, 0).into(),
            IpAddr::V6(d) => SocketAddrV6::new(d, 0, 0, self.ifindex).into(),
        };
        self.fd.get_ref().send_to(packet, &to)?;
        Ok(())
    }
}

fn raw(domain: Domain, ifname: &str) -> io::Result<Socket> {
    let s = Socket::new(
        domain,
        Type::RAW,
        Some(Protocol::from(i32::from(IPPROTO_VRRP))),
    )?;
    s.bind_device(Some(ifname.as_bytes()))?;
    Ok(s)
}

pub fn interface_index(name: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(io::Error::from)
}

/// The first IPv4 address of interface `name` that is not one of `exclude`
/// (the virtual addresses, which may still be there from a previous run).
pub fn primary_ipv4(name: &str, exclude: &[IpAddr]) -> io::Result<Option<Ipv4Addr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter(|a| a.interface_name == name)
        .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|s| s.ip())))
        .find(|ip| !exclude.contains(&IpAddr::V4(*ip))))
}

/// The first link-local IPv6 address of interface `name` that is not one of
/// `exclude`.
pub fn link_local_ipv6(name: &str, exclude: &[IpAddr]) -> io::Result<Option<Ipv6Addr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter(|a| a.interface_name == name)
        .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in6().map(|s| s.ip())))
        .filter(|ip| crate::packet::is_link_local(*ip))
        .find(|ip| !exclude.contains(&IpAddr::V6(*ip))))
}
