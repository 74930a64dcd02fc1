//! The one place that needs `unsafe`, for what safe APIs do not offer:
//! - a link-layer socket address (`sockaddr_ll`), which gratuitous ARP needs to
//!   name the interface it leaves by: socket2 and nix build every other address
//!   safely but have no constructor for this one;
//! - registering the raw VRRP socket with tokio's reactor: `AsyncFd::register`
//!   is `unsafe` because tokio cannot check that the descriptor stays open;
//! - receiving an IPv6 packet with its hop limit and destination, which
//!   arrive as control messages: nix parses the destination but hands the
//!   hop limit over opaque, and socket2's `recvmsg` needs uninitialised
//!   buffers, so one `recvmsg` call and the `CMSG_*` walk are written here;
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

/// One packet received on an IPv6 raw socket, with the ancillary data VRRP
/// checks (`IPV6_RECVHOPLIMIT` and `IPV6_RECVPKTINFO` must be on).
#[derive(Debug, Clone, Copy)]
pub struct RecvV6 {
    pub len: usize,
    pub src: std::net::Ipv6Addr,
    pub dst: Option<std::net::Ipv6Addr>,
    pub hop_limit: Option<u8>,
}

/// `recvmsg` on an IPv6 socket: data into `buf`, the source address, and the
/// hop limit and destination from the control messages.
pub fn recv_v6(socket: &Socket, buf: &mut [u8]) -> io::Result<RecvV6> {
    use std::os::fd::AsRawFd;
    // SAFETY: both are plain C structs for which all-zero bytes are valid.
    let mut src: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // u64 elements align the buffer for `cmsghdr`; 128 bytes hold both messages.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    msg.msg_name = std::ptr::addr_of_mut!(src).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `msg` points to live storage of the length
    // given beside it, which outlives the call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut got = RecvV6 {
        len: n as usize,
        src: std::net::Ipv6Addr::from(src.sin6_addr.s6_addr),
        dst: None,
        hop_limit: None,
    };
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled
    // within `msg_controllen`, returning null at its end; each message's data
    // is read unaligned as the type its level and type name.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    let h = data.cast::<libc::c_int>().read_unaligned();
                    got.hop_limit = u8::try_from(h).ok();
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = data.cast::<libc::in6_pktinfo>().read_unaligned();
                    got.dst = Some(std::net::Ipv6Addr::from(info.ipi6_addr.s6_addr));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(got)
}
