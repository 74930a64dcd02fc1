//! Capabilities kept only where they are needed.
//!
//! Opening the VRRP socket (raw IPv4) and the gratuitous-ARP socket
//! (`AF_PACKET`) needs CAP_NET_RAW; the kernel checks it when a socket is
//! created, not when it is used. Adding and removing the virtual addresses
//! through netlink needs CAP_NET_ADMIN at every request. A configuration
//! reload (SIGHUP) may add instances, which open sockets of their own, so
//! CAP_NET_RAW stays too. Once the first sockets are open, [`drop_to_network`]
//! leaves the daemon with those two alone: a bug in packet handling can then
//! no longer read any file (CAP_DAC_OVERRIDE), load modules, change owners
//! and so on.
//!
//! Only the effective, permitted and inheritable sets (and the ambient set)
//! shrink; the bounding set is left alone. A daemon running as root therefore
//! still starts its check and notify scripts with root's full capabilities,
//! since the kernel grants them afresh at `execve` to uid 0, as keepalived's
//! scripts get them. A daemon started as another user with capabilities
//! granted to it (systemd's AmbientCapabilities) passes none to its scripts.
//!
//! Capabilities belong to a thread: this must run on the thread that drives
//! the daemon before it starts others, which then inherit the reduced sets.

use std::io;

use crate::sys::{cap_get, cap_set, clear_ambient, CapSets};

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_NET_RAW: u32 = 13;

/// `current` with every capability but those in `keep` removed; a capability
/// not in `current`'s permitted set cannot be (re)gained.
pub fn reduced(current: CapSets, keep: &[u32]) -> CapSets {
    let keep = keep.iter().fold(0u64, |m, &c| m | 1 << c) & current.permitted;
    CapSets {
        effective: keep,
        permitted: keep,
        inheritable: 0,
    }
}

/// Drops every capability of the calling thread but CAP_NET_ADMIN and
/// CAP_NET_RAW; returns the sets it had and the sets it has now.
pub fn drop_to_network() -> io::Result<(CapSets, CapSets)> {
    let before = cap_get()?;
    let after = reduced(before, &[CAP_NET_ADMIN, CAP_NET_RAW]);
    clear_ambient()?;
    cap_set(after)?;
    Ok((before, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = (1 << 41) - 1;

    #[test]
    fn root_keeps_net_admin_and_net_raw_only() {
        let root = CapSets {
            effective: ALL,
            permitted: ALL,
            inheritable: 0,
        };
        let after = reduced(root, &[CAP_NET_ADMIN, CAP_NET_RAW]);
        assert_eq!(
            after,
            CapSets {
                effective: 0x3000,
                permitted: 0x3000,
                inheritable: 0,
            }
        );
    }

    #[test]
    fn nothing_is_gained() {
        let raw_only = CapSets {
            effective: 1 << CAP_NET_RAW,
            permitted: 1 << CAP_NET_RAW,
            inheritable: 1 << CAP_NET_RAW,
        };
        let after = reduced(raw_only, &[CAP_NET_ADMIN]);
        assert_eq!(
            after,
            CapSets {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            }
        );
    }

    #[test]
    fn the_sets_of_this_thread_can_be_read() {
        let sets = cap_get().unwrap();
        assert_eq!(sets.effective & !sets.permitted, 0);
    }
}
