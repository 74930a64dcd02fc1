//! rtnetlink requests: add and remove the virtual addresses (with their label,
//! as `ip addr add A/P dev D label L` does; IPv6 ones without duplicate
//! address detection, as `ip addr add A/P dev D nodad` and keepalived do, so
//! that a new master can use them at once), and read an interface's state
//! and hardware address.
//!
//! Messages are built by hand (a header, a fixed struct and attributes, in
//! host byte order) and sent on a `NETLINK_ROUTE` socket, which without a
//! destination address goes to the kernel. Each call is one request and its
//! answer; the kernel answers at once, so the calls block briefly.

use std::io::{self, Read};
use std::net::IpAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

const NLMSG_HDR_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
/// ifaddrmsg flag: skip duplicate address detection (IPv6).
const IFA_F_NODAD: u8 = 0x02;
const RT_SCOPE_LINK: u8 = 253;
const IFLA_ADDRESS: u16 = 1;
const IFINFOMSG_LEN: usize = 16;
const IFF_UP: u32 = 0x1;
const IFF_RUNNING: u32 = 0x40;
/// The kernel limits labels (interface names) to 15 bytes plus NUL.
const LABEL_MAX: usize = 15;

/// State of an interface as keepalived judges it: usable when up and running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub usable: bool,
    pub mac: Option<[u8; 6]>,
}

/// A `NETLINK_ROUTE` socket.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let socket = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(libc::NETLINK_ROUTE)),
        )?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Adds `addr/prefix` to interface `ifindex`; an address already there is fine.
    pub fn add_address(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
        prefix: u8,
        label: Option<&str>,
    ) -> io::Result<()> {
        let msg = self.address_message(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_EXCL,
            ifindex,
            addr,
            prefix,
            label,
        )?;
        match self.request(&msg) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r.map(drop),
        }
    }

    /// Removes `addr/prefix` from interface `ifindex`; an address already gone is fine.
    pub fn remove_address(&mut self, ifindex: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let msg = self.address_message(RTM_DELADDR, 0, ifindex, addr, prefix, None)?;
        match self.request(&msg) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            r => r.map(drop),
        }
    }

    pub fn link(&mut self, ifindex: u32) -> io::Result<Link> {
        let mut msg = self.header(RTM_GETLINK, 0);
        let mut info = [0u8; IFINFOMSG_LEN];
        info[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        msg.extend_from_slice(&info);
        let reply = self.request(&msg)?;
        parse_link(&reply)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad RTM_NEWLINK"))
    }

    fn header(&mut self, kind: u16, flags: u16) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        let mut h = Vec::with_capacity(64);
        h.extend_from_slice(&0u32.to_ne_bytes());
        h.extend_from_slice(&kind.to_ne_bytes());
        h.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        h.extend_from_slice(&self.seq.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h
    }

    fn address_message(
        &mut self,
        kind: u16,
        flags: u16,
        ifindex: u32,
        addr: IpAddr,
        prefix: u8,
        label: Option<&str>,
    ) -> io::Result<Vec<u8>> {
        let mut msg = self.header(kind, flags);
        // struct ifaddrmsg: family, prefixlen, flags, scope, index.
        let (family, octets, ifa_flags, scope) = match addr {
            IpAddr::V4(a) => (libc::AF_INET, a.octets().to_vec(), 0, 0),
            IpAddr::V6(a) => {
                let scope = if crate::packet::is_link_local(a) {
                    RT_SCOPE_LINK
                } else {
                    0
                };
                (libc::AF_INET6, a.octets().to_vec(), IFA_F_NODAD, scope)
            }
        };
        msg.extend_from_slice(&[family as u8, prefix, ifa_flags, scope]);
        msg.extend_from_slice(&ifindex.to_ne_bytes());
        push_attr(&mut msg, IFA_LOCAL, &octets);
        push_attr(&mut msg, IFA_ADDRESS, &octets);
        if let Some(label) = label {
            if label.len() > LABEL_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "label longer than 15 bytes",
                ));
            }
            let mut bytes = label.as_bytes().to_vec();
            bytes.push(0);
            push_attr(&mut msg, IFA_LABEL, &bytes);
        }
        Ok(msg)
    }

    /// Sends one request; returns the first answer that is not an ack.
    fn request(&mut self, msg: &[u8]) -> io::Result<Vec<u8>> {
        let mut msg = msg.to_vec();
        let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        self.socket.send(&msg)?;
        let mut buf = vec![0u8; 16384];
        let mut data = None;
        loop {
            let n = (&self.socket).read(&mut buf)?;
            let mut rest = &buf[..n];
            while rest.len() >= NLMSG_HDR_LEN {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if len < NLMSG_HDR_LEN || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let body = &rest[NLMSG_HDR_LEN..len];
                rest = &rest[align(len).min(rest.len())..];
                if seq != self.seq {
                    continue;
                }
                if kind == NLMSG_ERROR && body.len() >= 4 {
                    let errno = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                    return match (errno, data) {
                        (0, Some(d)) => Ok(d),
                        (0, None) => Ok(Vec::new()),
                        (e, _) => Err(io::Error::from_raw_os_error(-e)),
                    };
                }
                if kind == RTM_NEWLINK {
                    data = Some(body.to_vec());
                }
            }
        }
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn push_attr(msg: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(data);
    msg.resize(align(msg.len()), 0);
}

/// Reads flags and hardware address from an RTM_NEWLINK body.
fn parse_link(body: &[u8]) -> Option<Link> {
    let flags = u32::from_ne_bytes(body.get(8..12)?.try_into().ok()?);
    let mut mac = None;
    let mut attrs = body.get(IFINFOMSG_LEN..)?;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        if kind == IFLA_ADDRESS && len == 10 {
            mac = attrs[4..10].try_into().ok();
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    Some(Link {
        usable: flags & IFF_UP != 0 && flags & IFF_RUNNING != 0,
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_message_carries_local_address_and_label() {
        let mut nl = Netlink {
            socket: Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap(),
            seq: 0,
        };
        let vip = IpAddr::from([198, 18, 0, 100]);
        let msg = nl
            .address_message(RTM_NEWADDR, NLM_F_CREATE, 7, vip, 32, Some("veth0:2"))
            .unwrap();
        // header (16) + ifaddrmsg (8) + 2 * 8 address attrs + label 4 + 8 -> 12.
        assert_eq!(msg.len(), 16 + 8 + 16 + 12);
        assert_eq!(&msg[16..24], &[2, 32, 0, 0, 7, 0, 0, 0]);
        assert_eq!(&msg[24..32], &[8, 0, 2, 0, 198, 18, 0, 100]);
        assert_eq!(&msg[44..52], b"veth0:2\0");
        assert!(nl
            .address_message(RTM_NEWADDR, 0, 7, vip, 32, Some("a-very-long-label"))
            .is_err());
    }

    #[test]
    fn ipv6_address_message_skips_duplicate_address_detection() {
        let mut nl = Netlink {
            socket: Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap(),
            seq: 0,
        };
        let vip: IpAddr = "2001:2::100".parse().unwrap();
        let msg = nl
            .address_message(RTM_NEWADDR, NLM_F_CREATE, 7, vip, 64, None)
            .unwrap();
        // header (16) + ifaddrmsg (8) + 2 * 20 address attrs.
        assert_eq!(msg.len(), 16 + 8 + 40);
        assert_eq!(&msg[16..24], &[10, 64, IFA_F_NODAD, 0, 7, 0, 0, 0]);
        assert_eq!(&msg[24..28], &[20, 0, 2, 0]);
        assert_eq!(
            &msg[28..44],
            &[0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        );
        let ll: IpAddr = "fe80::100".parse().unwrap();
        let msg = nl
            .address_message(RTM_NEWADDR, NLM_F_CREATE, 7, ll, 64, None)
            .unwrap();
        assert_eq!(msg[19], RT_SCOPE_LINK);
    }

    #[test]
    fn link_flags_and_mac_are_read() {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[8..12].copy_from_slice(&(IFF_UP | IFF_RUNNING).to_ne_bytes());
        push_attr(&mut body, IFLA_ADDRESS, &[2, 0, 0, 0, 0, 9]);
        assert_eq!(
            parse_link(&body),
            Some(Link {
                usable: true,
                mac: Some([2, 0, 0, 0, 0, 9])
            })
        );
        body[8..12].copy_from_slice(&IFF_UP.to_ne_bytes());
        assert!(!parse_link(&body).unwrap().usable);
    }
}
