//! Gratuitous ARP (RFC 5798 §6.4.2 / RFC 3768 §6.4.2: a new master announces
//! the virtual addresses so that hosts and switches learn where they now are).
//!
//! One Ethernet frame per address, an ARP request whose sender and target are
//! both the virtual address, broadcast out of the interface through an
//! `AF_PACKET` socket; an IPv6 address gets an unsolicited neighbour
//! advertisement (`ndisc.rs`) through the same socket instead.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use socket2::{Domain, Protocol, Socket, Type};

use crate::ndisc;
use crate::sys::link_layer_addr;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const BROADCAST: [u8; 6] = [0xff; 6];
const ARP_REQUEST: u16 = 1;
const HTYPE_ETHERNET: u16 = 1;

/// The 42-byte Ethernet frame announcing that `addr` is at `mac`.
pub fn frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    let arp = &mut f[14..];
    arp[0..2].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
    arp[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&ARP_REQUEST.to_be_bytes());
    arp[8..14].copy_from_slice(&mac);
    arp[14..18].copy_from_slice(&addr.octets());
    arp[18..24].copy_from_slice(&BROADCAST);
    arp[24..28].copy_from_slice(&addr.octets());
    f
}

/// A socket that sends gratuitous ARPs and unsolicited neighbour advertisements.
#[derive(Debug)]
pub struct GarpSender {
    socket: Socket,
}

impl GarpSender {
    pub fn open() -> io::Result<GarpSender> {
        // Protocol 0: this socket only sends, so it asks the kernel for no frames.
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))?;
        Ok(GarpSender { socket })
    }

    /// Announces `addr` at `mac` out of interface `ifindex`; `router` (IPv6
    /// only) says that this host forwards on that interface.
    pub fn send(&self, ifindex: u32, mac: [u8; 6], addr: IpAddr, router: bool) -> io::Result<()> {
        match addr {
            IpAddr::V4(a) => {
                let dest = link_layer_addr(ifindex, ETH_P_ARP, BROADCAST)?;
                self.socket.send_to(&frame(mac, a), &dest)?;
            }
            IpAddr::V6(a) => {
                let dest = link_layer_addr(ifindex, ndisc::ETH_P_IPV6, ndisc::ALL_NODES_MAC)?;
                self.socket
                    .send_to(&ndisc::na_frame(mac, a, router), &dest)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_a_broadcast_arp_request_for_the_address_itself() {
        let mac = [2, 0, 0, 0, 0, 1];
        let f = frame(mac, Ipv4Addr::new(198, 18, 0, 100));
        assert_eq!(
            &f[..14],
            &[255, 255, 255, 255, 255, 255, 2, 0, 0, 0, 0, 1, 8, 6]
        );
        assert_eq!(
            &f[14..],
            &[
                0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 198, 18, 0, 100, 255, 255, 255, 255, 255,
                255, 198, 18, 0, 100
            ]
        );
    }
}
