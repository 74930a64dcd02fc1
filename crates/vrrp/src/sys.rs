//! The one place that needs `unsafe`, for two things safe APIs do not offer:
//! - a link-layer socket address (`sockaddr_ll`), which gratuitous ARP needs to
//!   name the interface it leaves by: socket2 and nix build every other address
//!   safely but have no constructor for this one;
//! - registering the raw VRRP socket with tokio's reactor: `AsyncFd::register`
//!   is `unsafe` because tokio cannot check that the descriptor stays open;
//! - reading and setting the thread's capability sets (`capget`/`capset`),
//!   which neither libc nor nix wraps. The `caps` crate does, but two system
//!   calls on plain structs are not worth a new dependency.
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

/// The capability sets of the calling thread, one bit per `CAP_*` number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn halves(bits: u64) -> [u32; 2] {
    [bits as u32, (bits >> 32) as u32]
}

fn join(low: u32, high: u32) -> u64 {
    u64::from(low) | u64::from(high) << 32
}

/// Reads the calling thread's capability sets.
pub fn cap_get() -> io::Result<CapSets> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 of the call reads one header and writes two data
    // structs, which are what we pass, laid out as the kernel's.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// Sets the calling thread's capability sets (only ever to fewer than it has).
pub fn cap_set(sets: CapSets) -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let [e0, e1] = halves(sets.effective);
    let [p0, p1] = halves(sets.permitted);
    let [i0, i1] = halves(sets.inheritable);
    let data = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: version 3 of the call reads one header and two data structs,
    // which are what we pass, laid out as the kernel's.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Empties the calling thread's ambient set, so that programs it runs do not
/// inherit capabilities through it.
pub fn clear_ambient() -> io::Result<()> {
    let zero: libc::c_ulong = 0;
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers; the unused
    // arguments must be zero.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            zero,
            zero,
            zero,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
