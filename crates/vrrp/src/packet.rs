//! VRRP advertisement codec: VRRPv2 (RFC 3768) over IPv4, VRRPv3 (RFC 5798)
//! over IPv4 and IPv6.
//!
//! Over IPv4, bytes come in from the raw socket with their IPv4 header (as
//! Linux hands them to a raw socket) and leave as an IPv4 header plus
//! advertisement, because the sender builds its own header (`IP_HDRINCL`) to
//! choose the source address. Over IPv6 the kernel strips and builds the
//! header; the hop limit and destination arrive as ancillary data
//! ([`Ipv6Header`]). Nothing here does I/O; checks that need the instance's
//! configuration (VRID, password, interval, address list) live in
//! `instance.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of VRRP (RFC 5798 §5.1.1.4).
pub const IPPROTO_VRRP: u8 = 112;
/// Multicast group of VRRP over IPv4 (RFC 5798 §5.1.1.2).
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// Multicast group of VRRP over IPv6 (RFC 5798 §5.1.2.2).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// Every advert is sent with, and must arrive with, this TTL or hop limit
/// (RFC 5798 §5.1.1.3, §5.1.2.3).
pub const TTL: u8 = 255;
/// Length of the fixed part of an advert, before the addresses.
const FIXED_LEN: usize = 8;
/// VRRPv2 carries 8 bytes of authentication data after the addresses (RFC 3768 §5.3.10).
const AUTH_LEN: usize = 8;
/// The only advert type defined (RFC 5798 §5.2.2).
const TYPE_ADVERTISEMENT: u8 = 1;
/// Length of the IPv4 header we send: no options.
pub const IPV4_HEADER_LEN: usize = 20;
/// IP precedence "internetwork control", as routing protocols (and keepalived) send.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// Protocol version of an instance; both peers must use the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V2,
    V3,
}

impl Version {
    fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// What the VRRPv3 checksum covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumMode {
    /// IPv4 pseudo-header plus advert, as RFC 5798 §5.2.8 says and keepalived 2.2 does.
    #[default]
    PseudoHeader,
    /// The advert alone, as some VRRPv3 implementations for IPv4 do; RFC 9568 §5.2.8
    /// lets a router be configured to interoperate with them.
    WithoutPseudoHeader,
}

/// VRRPv2 authentication (RFC 3768 §5.3.6). VRRPv3 removed it (RFC 5798 §9.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Type 0: no authentication, data ignored.
    None,
    /// Type 1: a clear-text password, NUL padded to 8 bytes.
    Pass([u8; AUTH_LEN]),
}

impl Auth {
    /// A PASS authentication from the configured password; keepalived keeps only
    /// the first 8 bytes of a longer one.
    pub fn pass(password: &str) -> Auth {
        let mut data = [0u8; AUTH_LEN];
        let bytes = password.as_bytes();
        let n = bytes.len().min(AUTH_LEN);
        data[..n].copy_from_slice(&bytes[..n]);
        Auth::Pass(data)
    }

    fn type_code(&self) -> u8 {
        match self {
            Auth::None => 0,
            Auth::Pass(_) => 1,
        }
    }
}

/// One VRRP advertisement.
///
/// VRRPv2 (RFC 3768 §5.1):
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-------+-------+---------------+---------------+---------------+
/// |Vers=2 |Type=1 |     VRID      |   Priority    | Count IP addr |
/// +-------+-------+---------------+---------------+---------------+
/// |   Auth Type   | Adver Int (s) |           Checksum            |
/// +---------------+---------------+-------------------------------+
/// |                      IPv4 address (1..n)                      |
/// +---------------------------------------------------------------+
/// |             Authentication data (8 bytes, 2 words)            |
/// +---------------------------------------------------------------+
/// ```
///
/// VRRPv3 (RFC 5798 §5.1):
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-------+-------+---------------+---------------+---------------+
/// |Vers=3 |Type=1 |     VRID      |   Priority    | Count IP addr |
/// +-------+-------+---------------+---------------+---------------+
/// | rsvd  |  Max Adver Int (cs, 12 bits)  |        Checksum       |
/// +-------+-------------------------------+-----------------------+
/// |              IPv4 address (1..n), or IPv6 address             |
/// |              (1..n, 16 bytes each) over IPv6                  |
/// +---------------------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    /// Advertisement interval in centiseconds; VRRPv2 carries whole seconds.
    pub interval_cs: u16,
    /// Always `Auth::None` for VRRPv3.
    pub auth: Auth,
    /// All of the family the advert is sent over.
    pub addresses: Vec<IpAddr>,
}

/// Why received bytes are not a VRRP advert that keepalived would accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("IPv4 packet too short or malformed")]
    BadIpHeader,
    #[error("not protocol 112")]
    NotVrrp,
    #[error("TTL {0} instead of 255")]
    BadTtl(u8),
    #[error("hop limit {0} instead of 255")]
    BadHopLimit(u8),
    #[error("multicast from a source that is not link-local")]
    NotLinkLocal,
    #[error("advert shorter than its address list")]
    BadLength,
    #[error("version {0} unknown")]
    BadVersion(u8),
    #[error("type {0} is not an advertisement")]
    BadType(u8),
    #[error("bad checksum")]
    BadChecksum,
    #[error("authentication type {0} unsupported")]
    BadAuthType(u8),
    #[error("interval 0")]
    ZeroInterval,
}

impl DecodeError {
    /// A fixed name for the kind of error, whatever its details (TTL value,
    /// version number): the key under which warnings are rate-limited and
    /// counted.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::BadIpHeader | DecodeError::NotVrrp => "malformed IPv4 header",
            DecodeError::BadTtl(_) => "TTL other than 255",
            DecodeError::BadHopLimit(_) => "hop limit other than 255",
            DecodeError::NotLinkLocal => "multicast source not link-local",
            DecodeError::BadLength => "too short",
            DecodeError::BadVersion(_) => "unknown version",
            DecodeError::BadType(_) => "not an advertisement",
            DecodeError::BadChecksum => "bad checksum",
            DecodeError::BadAuthType(_) => "unknown authentication type",
            DecodeError::ZeroInterval => "interval 0",
        }
    }
}

/// The source address of a received IPv4 packet, if it is long enough to
/// have one: names the sender of a packet that does not decode.
pub fn ipv4_source(buf: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = buf.get(12..16)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// The parts of a received IPv4 header that VRRP checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
}

/// Splits a received IPv4 packet into its header and VRRP payload, checking
/// protocol and TTL (RFC 5798 §7.1: a TTL other than 255 means the advert was
/// routed, so it did not come from this link).
pub fn parse_ipv4(buf: &[u8]) -> Result<(Ipv4Header, &[u8]), DecodeError> {
    if buf.len() < IPV4_HEADER_LEN || buf[0] >> 4 != 4 {
        return Err(DecodeError::BadIpHeader);
    }
    let header_len = usize::from(buf[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if header_len < IPV4_HEADER_LEN || total_len < header_len || total_len > buf.len() {
        return Err(DecodeError::BadIpHeader);
    }
    if buf[9] != IPPROTO_VRRP {
        return Err(DecodeError::NotVrrp);
    }
    let header = Ipv4Header {
        ttl: buf[8],
        src: Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]),
        dst: Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]),
    };
    if header.ttl != TTL {
        return Err(DecodeError::BadTtl(header.ttl));
    }
    Ok((header, &buf[header_len..total_len]))
}

/// What the kernel tells about a received IPv6 packet (source address,
/// `IPV6_PKTINFO`, `IPV6_HOPLIMIT`): the parts of its header VRRP checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Header {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
}

impl Ipv6Header {
    /// RFC 5798 §7.1: an advert whose hop limit is not 255 was routed, so it
    /// did not come from this link; §5.1.2.1: a multicast advert's source is
    /// the sender's link-local address. Unicast adverts (keepalived's
    /// `unicast_peer`, outside the RFC) come from whatever source the peer
    /// was given.
    pub fn check(&self) -> Result<(), DecodeError> {
        if self.hop_limit != TTL {
            return Err(DecodeError::BadHopLimit(self.hop_limit));
        }
        if self.dst == MULTICAST_V6 && !is_link_local(self.src) {
            return Err(DecodeError::NotLinkLocal);
        }
        Ok(())
    }
}

/// Whether `a` is in fe80::/10.
pub fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// Builds the IPv4 header sent in front of an advert; the kernel fills in the
/// identification and header checksum of a raw `IP_HDRINCL` packet.
pub fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) -> [u8; IPV4_HEADER_LEN] {
    let total = u16::try_from(IPV4_HEADER_LEN + payload_len).unwrap_or(u16::MAX);
    let mut h = [0u8; IPV4_HEADER_LEN];
    h[0] = 0x45;
    h[1] = TOS_INTERNETWORK_CONTROL;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[8] = TTL;
    h[9] = IPPROTO_VRRP;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    h
}

/// Length of one address in an advert sent from `src`.
fn address_len(src: IpAddr) -> usize {
    match src {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    }
}

impl Advert {
    /// Encodes the advert (without IP header). `src` and `dst` are the
    /// addresses it will be sent between, needed for the VRRPv3 pseudo-header;
    /// their family is the advert's, which the addresses must share.
    pub fn encode(&self, src: IpAddr, dst: IpAddr, mode: ChecksumMode) -> Vec<u8> {
        let auth_len = if self.version == Version::V2 {
            AUTH_LEN
        } else {
            0
        };
        let mut out =
            Vec::with_capacity(FIXED_LEN + address_len(src) * self.addresses.len() + auth_len);
        out.push(self.version.number() << 4 | TYPE_ADVERTISEMENT);
        out.push(self.vrid);
        out.push(self.priority);
        out.push(u8::try_from(self.addresses.len()).unwrap_or(u8::MAX));
        match self.version {
            Version::V2 => {
                out.push(self.auth.type_code());
                out.push(u8::try_from(self.interval_cs / 100).unwrap_or(u8::MAX));
            }
            // RFC 5798 §5.2.7: 12 bits of centiseconds, the 4 bits above reserved as 0.
            Version::V3 => out.extend_from_slice(&(self.interval_cs & 0x0fff).to_be_bytes()),
        }
        out.extend_from_slice(&[0, 0]);
        for a in &self.addresses {
            match a {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
        if self.version == Version::V2 {
            match self.auth {
                Auth::None => out.extend_from_slice(&[0; AUTH_LEN]),
                Auth::Pass(data) => out.extend_from_slice(&data),
            }
        }
        let sum = checksum(self.version, &out, src, dst, mode);
        out[6..8].copy_from_slice(&sum.to_be_bytes());
        out
    }

    /// Decodes an advert (without IP header) received from `src` on `dst`;
    /// their family says how long each address is.
    pub fn decode(
        buf: &[u8],
        src: IpAddr,
        dst: IpAddr,
        mode: ChecksumMode,
    ) -> Result<Advert, DecodeError> {
        if buf.len() < FIXED_LEN {
            return Err(DecodeError::BadLength);
        }
        let version = match buf[0] >> 4 {
            2 => Version::V2,
            3 => Version::V3,
            // RFC 3768 defines VRRPv2 for IPv4 only.
            v => return Err(DecodeError::BadVersion(v)),
        };
        if version == Version::V2 && src.is_ipv6() {
            return Err(DecodeError::BadVersion(2));
        }
        if buf[0] & 0x0f != TYPE_ADVERTISEMENT {
            return Err(DecodeError::BadType(buf[0] & 0x0f));
        }
        let count = usize::from(buf[3]);
        let auth_len = if version == Version::V2 { AUTH_LEN } else { 0 };
        let alen = address_len(src);
        let len = FIXED_LEN + alen * count + auth_len;
        // RFC 5798 §7.1: the length must cover the address list the count announces.
        if buf.len() < len {
            return Err(DecodeError::BadLength);
        }
        let buf = &buf[..len];
        if checksum(version, buf, src, dst, mode) != 0 {
            return Err(DecodeError::BadChecksum);
        }
        let (auth, interval_cs) = match version {
            Version::V2 => {
                let auth = match buf[4] {
                    0 => Auth::None,
                    1 => {
                        let mut data = [0u8; AUTH_LEN];
                        data.copy_from_slice(&buf[len - AUTH_LEN..]);
                        Auth::Pass(data)
                    }
                    // Type 2 (IP AH) was withdrawn by RFC 3768 §5.3.6.
                    t => return Err(DecodeError::BadAuthType(t)),
                };
                (auth, u16::from(buf[5]) * 100)
            }
            Version::V3 => (Auth::None, u16::from_be_bytes([buf[4], buf[5]]) & 0x0fff),
        };
        if interval_cs == 0 {
            return Err(DecodeError::ZeroInterval);
        }
        let addresses = buf[FIXED_LEN..FIXED_LEN + alen * count]
            .chunks_exact(alen)
            .map(|c| match <[u8; 16]>::try_from(c) {
                Ok(v6) => IpAddr::from(v6),
                Err(_) => IpAddr::from([c[0], c[1], c[2], c[3]]),
            })
            .collect();
        Ok(Advert {
            version,
            vrid: buf[1],
            priority: buf[2],
            interval_cs,
            auth,
            addresses,
        })
    }
}

/// Internet checksum of an advert whose checksum field is zero (encoding) or
/// filled (verifying: the result is then 0).
fn checksum(version: Version, advert: &[u8], src: IpAddr, dst: IpAddr, mode: ChecksumMode) -> u16 {
    let mut sum = 0u32;
    // RFC 3768 §5.3.8: VRRPv2 sums the advert alone. RFC 5798 §5.2.8: VRRPv3
    // prepends the pseudo-header of RFC 768 over IPv4 (src, dst, zero,
    // protocol, 16-bit length) or of RFC 8200 §8.1 over IPv6 (src, dst,
    // 32-bit length, zeros, next header), which sum alike. Leaving it out is
    // an IPv4 interoperability option only (RFC 9568 §5.2.8).
    if version == Version::V3 && (mode == ChecksumMode::PseudoHeader || src.is_ipv6()) {
        for a in [src, dst] {
            sum = match a {
                IpAddr::V4(a) => add_words(sum, &a.octets()),
                IpAddr::V6(a) => add_words(sum, &a.octets()),
            };
        }
        sum += u32::from(IPPROTO_VRRP);
        sum += u32::try_from(advert.len()).unwrap_or(0);
    }
    sum = add_words(sum, advert);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn add_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const SRC: IpAddr = IpAddr::V4(SRC4);
    const GROUP: IpAddr = IpAddr::V4(MULTICAST_V4);
    const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100));

    /// Sent by keepalived 2.2.7: VRID 51, priority 100, PASS "s3cret", 1 s.
    const KEEPALIVED_V2: [u8; 20] = [
        0x21, 0x33, 0x64, 0x01, 0x01, 0x01, 0x77, 0x39, 0xc6, 0x12, 0x00, 0x64, 0x73, 0x33, 0x63,
        0x72, 0x65, 0x74, 0x00, 0x00,
    ];
    /// Sent by keepalived 2.2.7 from 198.18.0.1: VRID 51, priority 100, 1 s.
    const KEEPALIVED_V3: [u8; 12] = [
        0x31, 0x33, 0x64, 0x01, 0x00, 0x64, 0xfd, 0x4d, 0xc6, 0x12, 0x00, 0x64,
    ];

    fn v2_reference() -> Advert {
        Advert {
            version: Version::V2,
            vrid: 51,
            priority: 100,
            interval_cs: 100,
            auth: Auth::pass("s3cret"),
            addresses: vec![VIP],
        }
    }

    fn v3_reference() -> Advert {
        Advert {
            version: Version::V3,
            auth: Auth::None,
            ..v2_reference()
        }
    }

    #[test]
    fn keepalived_v2_pass_advert_decodes_and_encodes_identically() {
        let mode = ChecksumMode::PseudoHeader;
        let got = Advert::decode(&KEEPALIVED_V2, SRC, GROUP, mode).unwrap();
        assert_eq!(got, v2_reference());
        assert_eq!(v2_reference().encode(SRC, GROUP, mode), KEEPALIVED_V2);
    }

    #[test]
    fn keepalived_v3_advert_uses_the_pseudo_header() {
        let mode = ChecksumMode::PseudoHeader;
        let got = Advert::decode(&KEEPALIVED_V3, SRC, GROUP, mode).unwrap();
        assert_eq!(got, v3_reference());
        assert_eq!(v3_reference().encode(SRC, GROUP, mode), KEEPALIVED_V3);
        // The same bytes from another source fail: the source is in the sum.
        let other = IpAddr::from([198, 18, 0, 2]);
        assert_eq!(
            Advert::decode(&KEEPALIVED_V3, other, GROUP, mode),
            Err(DecodeError::BadChecksum)
        );
    }

    #[test]
    fn v3_without_pseudo_header_differs_and_round_trips() {
        let mode = ChecksumMode::WithoutPseudoHeader;
        let bytes = v3_reference().encode(SRC, GROUP, mode);
        assert_ne!(bytes, KEEPALIVED_V3);
        assert_eq!(
            Advert::decode(&bytes, SRC, GROUP, mode).unwrap(),
            v3_reference()
        );
        assert_eq!(
            Advert::decode(&KEEPALIVED_V3, SRC, GROUP, mode),
            Err(DecodeError::BadChecksum)
        );
    }

    /// Sent by keepalived 2.2.7 from fe80::ff:fe00:1 to ff02::12 (captured
    /// with tcpdump in a namespace): VRID 51, priority 150, 1 s, 2001:2::100.
    const KEEPALIVED_V6: [u8; 24] = [
        0x31, 0x33, 0x96, 0x01, 0x00, 0x64, 0x1a, 0x45, 0x20, 0x01, 0x00, 0x02, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0x01, 0x00,
    ];
    /// The same keepalived's priority-0 advert as it stopped.
    const KEEPALIVED_V6_STOP: [u8; 24] = [
        0x31, 0x33, 0x00, 0x01, 0x00, 0x64, 0xb0, 0x45, 0x20, 0x01, 0x00, 0x02, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0x01, 0x00,
    ];
    const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 1);

    fn v6_reference(priority: u8) -> Advert {
        Advert {
            version: Version::V3,
            vrid: 51,
            priority,
            interval_cs: 100,
            auth: Auth::None,
            addresses: vec!["2001:2::100".parse().unwrap()],
        }
    }

    #[test]
    fn keepalived_v6_advert_decodes_and_encodes_identically() {
        let (src, dst) = (IpAddr::V6(LINK_LOCAL), IpAddr::V6(MULTICAST_V6));
        for (bytes, priority) in [(KEEPALIVED_V6, 150), (KEEPALIVED_V6_STOP, 0)] {
            // Over IPv6 the pseudo-header is always summed, whatever the mode.
            for mode in [
                ChecksumMode::PseudoHeader,
                ChecksumMode::WithoutPseudoHeader,
            ] {
                assert_eq!(
                    Advert::decode(&bytes, src, dst, mode),
                    Ok(v6_reference(priority))
                );
                assert_eq!(v6_reference(priority).encode(src, dst, mode), bytes);
            }
        }
        // The source is in the sum: the same bytes from another sender fail.
        let other = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 2));
        assert_eq!(
            Advert::decode(&KEEPALIVED_V6, other, dst, ChecksumMode::PseudoHeader),
            Err(DecodeError::BadChecksum)
        );
        let mut sum = KEEPALIVED_V6;
        sum[7] ^= 1;
        assert_eq!(
            Advert::decode(&sum, src, dst, ChecksumMode::PseudoHeader),
            Err(DecodeError::BadChecksum)
        );
        // The count says two 16-byte addresses; one is there.
        let mut two = KEEPALIVED_V6;
        two[3] = 2;
        assert_eq!(
            Advert::decode(&two, src, dst, ChecksumMode::PseudoHeader),
            Err(DecodeError::BadLength)
        );
    }

    #[test]
    fn vrrpv2_over_ipv6_is_refused() {
        let (src, dst) = (IpAddr::V6(LINK_LOCAL), IpAddr::V6(MULTICAST_V6));
        let mut v2 = KEEPALIVED_V6;
        v2[0] = 0x21;
        assert_eq!(
            Advert::decode(&v2, src, dst, ChecksumMode::PseudoHeader),
            Err(DecodeError::BadVersion(2))
        );
    }

    #[test]
    fn ipv6_header_needs_hop_limit_255_and_a_link_local_source() {
        let ok = Ipv6Header {
            src: LINK_LOCAL,
            dst: MULTICAST_V6,
            hop_limit: 255,
        };
        assert_eq!(ok.check(), Ok(()));
        let routed = Ipv6Header {
            hop_limit: 254,
            ..ok
        };
        assert_eq!(routed.check(), Err(DecodeError::BadHopLimit(254)));
        let global = Ipv6Header {
            src: "2001:2::1".parse().unwrap(),
            ..ok
        };
        assert_eq!(global.check(), Err(DecodeError::NotLinkLocal));
        let unicast = Ipv6Header {
            dst: "2001:2::1".parse().unwrap(),
            ..global
        };
        assert_eq!(unicast.check(), Ok(()));
        assert!(is_link_local("febf::1".parse().unwrap()));
        assert!(!is_link_local("fec0::1".parse().unwrap()));
    }

    #[test]
    fn v2_ignores_the_checksum_mode() {
        let bytes = v2_reference().encode(SRC, GROUP, ChecksumMode::WithoutPseudoHeader);
        assert_eq!(bytes, KEEPALIVED_V2);
    }

    #[test]
    fn long_password_is_cut_to_eight_bytes() {
        assert_eq!(Auth::pass("0123456789"), Auth::Pass(*b"01234567"));
    }

    #[test]
    fn malformed_adverts_are_rejected() {
        let mode = ChecksumMode::PseudoHeader;
        let dec = |b: &[u8]| Advert::decode(b, SRC, GROUP, mode);
        assert_eq!(dec(&KEEPALIVED_V2[..7]), Err(DecodeError::BadLength));
        // Address count 2 but only one address present.
        let mut two = KEEPALIVED_V3;
        two[3] = 2;
        assert_eq!(dec(&two), Err(DecodeError::BadLength));
        let mut v4 = KEEPALIVED_V3;
        v4[0] = 0x41;
        assert_eq!(dec(&v4), Err(DecodeError::BadVersion(4)));
        let mut ty = KEEPALIVED_V3;
        ty[0] = 0x32;
        assert_eq!(dec(&ty), Err(DecodeError::BadType(2)));
        let mut sum = KEEPALIVED_V2;
        sum[7] ^= 1;
        assert_eq!(dec(&sum), Err(DecodeError::BadChecksum));
        let ah = Advert {
            auth: Auth::None,
            ..v2_reference()
        };
        let mut ah = ah.encode(SRC, GROUP, mode);
        ah[4] = 2;
        ah[6] = 0;
        ah[7] = 0;
        let sum = checksum(Version::V2, &ah, SRC, GROUP, mode);
        ah[6..8].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(dec(&ah), Err(DecodeError::BadAuthType(2)));
        let zero = Advert {
            interval_cs: 0,
            ..v3_reference()
        };
        assert_eq!(
            dec(&zero.encode(SRC, GROUP, mode)),
            Err(DecodeError::ZeroInterval)
        );
    }

    #[test]
    fn ipv4_header_round_trip_and_ttl_check() {
        let mut pkt = ipv4_header(SRC4, MULTICAST_V4, KEEPALIVED_V3.len()).to_vec();
        pkt.extend_from_slice(&KEEPALIVED_V3);
        let (h, payload) = parse_ipv4(&pkt).unwrap();
        assert_eq!(
            h,
            Ipv4Header {
                src: SRC4,
                dst: MULTICAST_V4,
                ttl: 255
            }
        );
        assert_eq!(payload, KEEPALIVED_V3);
        pkt[8] = 254;
        assert_eq!(parse_ipv4(&pkt), Err(DecodeError::BadTtl(254)));
        pkt[9] = 6;
        assert_eq!(parse_ipv4(&pkt), Err(DecodeError::NotVrrp));
        assert_eq!(parse_ipv4(&pkt[..10]), Err(DecodeError::BadIpHeader));
    }

    proptest! {
        #[test]
        fn any_advert_round_trips(
            v3 in any::<bool>(),
            vrid in 1u8..=255,
            priority in any::<u8>(),
            secs in 1u16..=40,
            cs in 1u16..=4095,
            pass in "[a-z0-9]{0,8}",
            addrs in proptest::collection::vec(any::<u32>(), 1..16),
            src in any::<u32>(),
        ) {
            let src = IpAddr::from(Ipv4Addr::from(src));
            let advert = Advert {
                version: if v3 { Version::V3 } else { Version::V2 },
                vrid,
                priority,
                interval_cs: if v3 { cs } else { secs * 100 },
                auth: if v3 || pass.is_empty() { Auth::None } else { Auth::pass(&pass) },
                addresses: addrs.into_iter().map(|a| IpAddr::from(Ipv4Addr::from(a))).collect(),
            };
            for mode in [ChecksumMode::PseudoHeader, ChecksumMode::WithoutPseudoHeader] {
                let bytes = advert.encode(src, GROUP, mode);
                prop_assert_eq!(Advert::decode(&bytes, src, GROUP, mode), Ok(advert.clone()));
            }
        }

        #[test]
        fn any_ipv6_advert_round_trips(
            vrid in 1u8..=255,
            priority in any::<u8>(),
            cs in 1u16..=4095,
            addrs in proptest::collection::vec(any::<u128>(), 1..16),
            src in any::<u128>(),
        ) {
            let src = IpAddr::V6(Ipv6Addr::from(src));
            let dst = IpAddr::V6(MULTICAST_V6);
            let advert = Advert {
                version: Version::V3,
                vrid,
                priority,
                interval_cs: cs,
                auth: Auth::None,
                addresses: addrs.into_iter().map(|a| IpAddr::V6(Ipv6Addr::from(a))).collect(),
            };
            let bytes = advert.encode(src, dst, ChecksumMode::PseudoHeader);
            prop_assert_eq!(bytes.len(), 8 + 16 * advert.addresses.len());
            prop_assert_eq!(Advert::decode(&bytes, src, dst, ChecksumMode::PseudoHeader), Ok(advert));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_ipv4(&bytes);
            let _ = Advert::decode(&bytes, IpAddr::from(Ipv4Addr::LOCALHOST), GROUP, ChecksumMode::PseudoHeader);
            let _ = Advert::decode(&bytes, IpAddr::V6(Ipv6Addr::LOCALHOST), IpAddr::V6(MULTICAST_V6), ChecksumMode::PseudoHeader);
        }
    }
}
