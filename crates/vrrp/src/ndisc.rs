//! Unsolicited neighbour advertisements (RFC 5798 §6.4.2 for IPv6, RFC 4861
//! §7.2.6): the IPv6 counterpart of gratuitous ARP. A new master tells the
//! link's hosts that each virtual address is now at its hardware address.
//!
//! One Ethernet frame per address, built whole (as keepalived does) so that
//! it leaves by the same `AF_PACKET` socket as the gratuitous ARPs: an ICMPv6
//! neighbour advertisement from the virtual address to all nodes (ff02::1),
//! hop limit 255, override flag set, target link-layer address option.

use std::net::Ipv6Addr;

/// Ethertype of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Ethernet address of ff02::1 (RFC 2464 §7: 33:33 and the group's low 32 bits).
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const IPPROTO_ICMPV6: u8 = 58;
/// Neighbour discovery is only believed when it was not routed (RFC 4861 §7.1.2).
const HOP_LIMIT: u8 = 255;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const FLAG_ROUTER: u8 = 0x80;
const FLAG_OVERRIDE: u8 = 0x20;
const OPTION_TARGET_LINK_LAYER_ADDRESS: u8 = 2;
/// ICMPv6 part: type, code, checksum, flags (4), target (16), option (8).
const ICMP_LEN: usize = 32;
/// Ethernet (14) + IPv6 header (40) + ICMPv6.
pub const FRAME_LEN: usize = 14 + 40 + ICMP_LEN;

/// The frame announcing that `addr` is at `mac`. `router` sets the R flag,
/// which a host that forwards IPv6 must send (RFC 4861 §4.4) lest its
/// neighbours stop using it as a router.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +---------------+---------------+-------------------------------+
/// |   Type=136    |    Code=0     |           Checksum            |
/// +-+-+-+---------+---------------+-------------------------------+
/// |R|S|O|                     Reserved                            |
/// +-+-+-+---------------------------------------------------------+
/// |                  Target Address (16 bytes)                    |
/// +---------------+---------------+-------------------------------+
/// |    Type=2     |   Length=1    |  Link-layer address (6 bytes) |
/// +---------------+---------------+-------------------------------+
/// ```
pub fn na_frame(mac: [u8; 6], addr: Ipv6Addr, router: bool) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&ALL_NODES_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let ip = &mut f[14..54];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(ICMP_LEN as u16).to_be_bytes());
    ip[6] = IPPROTO_ICMPV6;
    ip[7] = HOP_LIMIT;
    ip[8..24].copy_from_slice(&addr.octets());
    ip[24..40].copy_from_slice(&ALL_NODES.octets());
    let icmp = &mut f[54..];
    icmp[0] = NEIGHBOR_ADVERTISEMENT;
    icmp[4] = FLAG_OVERRIDE | if router { FLAG_ROUTER } else { 0 };
    icmp[8..24].copy_from_slice(&addr.octets());
    icmp[24] = OPTION_TARGET_LINK_LAYER_ADDRESS;
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&mac);
    let sum = icmpv6_checksum(addr, ALL_NODES, icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// RFC 4443 §2.3: the Internet checksum over the IPv6 pseudo-header (RFC
/// 8200 §8.1) and the ICMPv6 message, whose checksum field is zero.
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in [&src.octets()[..], &dst.octets()[..], msg] {
        for w in chunk.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
    }
    sum += msg.len() as u32 + u32::from(IPPROTO_ICMPV6);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether the kernel forwards IPv6 on `ifname`, which makes this host a
/// router in its neighbour advertisements. Unreadable counts as no.
pub fn forwarding(ifname: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{ifname}/forwarding"))
        .is_ok_and(|v| v.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sent by keepalived 2.2.7 as it became master of 2001:2::100 on an
    /// interface with hardware address 02:00:00:00:00:01 that does not
    /// forward (captured with tcpdump in a namespace).
    const KEEPALIVED_NA: [u8; FRAME_LEN] = [
        0x33, 0x33, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff, 0x20, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x88, 0x00, 0x12, 0x99, 0x20, 0x00,
        0x00, 0x00, 0x20, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x00, 0x02, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01,
    ];

    #[test]
    fn frame_matches_keepalived() {
        let vip = "2001:2::100".parse().unwrap();
        assert_eq!(na_frame([2, 0, 0, 0, 0, 1], vip, false), KEEPALIVED_NA);
    }

    #[test]
    fn a_forwarding_host_sets_the_router_flag_and_the_checksum_follows() {
        let vip = "2001:2::100".parse().unwrap();
        let f = na_frame([2, 0, 0, 0, 0, 1], vip, true);
        assert_eq!(f[58], FLAG_ROUTER | FLAG_OVERRIDE);
        // A correct checksum sums, with the pseudo-header, to zero.
        let mut icmp = f[54..].to_vec();
        let sum = u16::from_be_bytes([icmp[2], icmp[3]]);
        icmp[2..4].fill(0);
        assert_eq!(icmpv6_checksum(vip, ALL_NODES, &icmp), sum);
        assert_ne!(f[56..58], KEEPALIVED_NA[56..58]);
    }
}
