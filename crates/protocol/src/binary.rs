//! memcached's binary protocol (deprecated by memcached since 1.6, still spoken by many clients
//! and the only way to SASL), as memcached 1.6.18 answers it.
//!
//! Every request and response starts with a 24-byte header, all numbers big-endian:
//!
//! ```text
//!  0        1        2        3
//! +--------+--------+--------+--------+
//! | magic  | opcode |     key length  |   magic: 0x80 request, 0x81 response
//! +--------+--------+--------+--------+
//! | extlen |datatype| vbucket / status|   status only in responses
//! +--------+--------+--------+--------+
//! |        total body length          |   extras + key + value
//! +--------+--------+--------+--------+
//! |              opaque               |   echoed in the response
//! +--------+--------+--------+--------+
//! |                cas                |
//! |                                   |
//! +--------+--------+--------+--------+
//! followed by: extras (extlen bytes), key (key length bytes), value (the rest)
//! ```
//!
//! [`parse_binary`] checks a request the way memcached's `dispatch_bin_command` does, in the
//! same order, so each malformed packet gets memcached's status, text and fate (answered, the
//! rest of its body swallowed, or the connection closed after the answer). Encoders for the
//! responses are at the end.
//!
//! The body length a header declares is never trusted for buffering: only a store (a value up
//! to `-I`) and a SASL exchange (its data up to `-I`) ask for more than the header, extras and
//! key; every other command is answered from those, as memcached does, and what its header
//! declared beyond them is read as the next packet. A declared length that cannot fit is
//! answered at once and its bytes discarded as they arrive, never held.

use crate::text::{Incomplete, Limits};

pub const REQUEST_MAGIC: u8 = 0x80;
pub const RESPONSE_MAGIC: u8 = 0x81;
pub const HEADER_LEN: usize = 24;

/// The opcodes memcached 1.6.18 knows; every other one is answered "Unknown command".
pub mod opcode {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
}

/// Response statuses, each with the text memcached puts in the body of an error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    Ok = 0x00,
    KeyNotFound = 0x01,
    KeyExists = 0x02,
    TooLarge = 0x03,
    InvalidArguments = 0x04,
    NotStored = 0x05,
    DeltaBadValue = 0x06,
    AuthError = 0x20,
    AuthContinue = 0x21,
    UnknownCommand = 0x81,
    OutOfMemory = 0x82,
}

impl Status {
    pub fn message(self) -> &'static [u8] {
        match self {
            Status::Ok | Status::AuthContinue => b"",
            Status::KeyNotFound => b"Not found",
            Status::KeyExists => b"Data exists for key.",
            Status::TooLarge => b"Too large.",
            Status::InvalidArguments => b"Invalid arguments",
            Status::NotStored => b"Not stored.",
            Status::DeltaBadValue => b"Non-numeric server-side value for incr or decr",
            Status::AuthError => b"Auth failure.",
            Status::UnknownCommand => b"Unknown command",
            Status::OutOfMemory => b"Out of memory",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u8,
    pub opcode: u8,
    pub key_len: u16,
    pub extras_len: u8,
    pub body_len: u32,
    pub opaque: u32,
    pub cas: u64,
}

impl Header {
    /// Reads a header from the first 24 bytes of `buf`, if there are that many.
    pub fn read(buf: &[u8]) -> Option<Header> {
        let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            magic: h[0],
            opcode: h[1],
            key_len: u16::from_be_bytes([h[2], h[3]]),
            extras_len: h[4],
            body_len: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            opaque: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
            cas: u64::from_be_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]),
        })
    }
}

/// What a request asks for, with the quiet variants folded into their loud ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryCommand {
    /// GET, GETK and their quiet forms; TOUCH, GAT, GATK and theirs (`touch` set, and
    /// `value` false for TOUCH).
    Get {
        with_key: bool,
        touch: Option<u32>,
        value: bool,
    },
    Store {
        kind: BinaryStore,
        flags: u32,
        exptime: u32,
    },
    Delete,
    Arith {
        incr: bool,
        delta: u64,
        initial: u64,
        /// 0xffffffff: do not create a missing counter.
        exptime: u32,
    },
    Quit,
    Flush {
        exptime: u32,
    },
    Noop,
    Version,
    Stat,
    SaslListMechs,
    SaslAuth,
    SaslStep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryStore {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryRequest<'a> {
    pub header: Header,
    pub command: BinaryCommand,
    /// Quiet: no response on success (nor on a get miss).
    pub quiet: bool,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// A request memcached answers with an error status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryReject<'a> {
    pub header: Header,
    pub status: Status,
    /// Body bytes still to discard after `consumed`.
    pub swallow: usize,
    /// Close the connection once the error is written.
    pub close: bool,
    /// The key of a SET whose value can never fit: memcached removes its current item.
    pub unlink: Option<&'a [u8]>,
    /// The packet was rejected before memcached's authentication check would have run.
    pub before_auth: bool,
    /// A SASL packet rejected for its size: without SASL (`-S`) memcached answers it
    /// "Unknown command" instead, discarding the same bytes.
    pub sasl: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BinaryOutcome<'a> {
    Request(BinaryRequest<'a>),
    Reject(BinaryReject<'a>),
    /// Not a request packet: memcached closes without answering.
    Close,
}

#[derive(Debug, PartialEq, Eq)]
pub struct BinaryParsed<'a> {
    pub consumed: usize,
    pub outcome: BinaryOutcome<'a>,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// How many body bytes memcached discards after an error: it keeps the count in a C `int`, so a
/// length of 2 GiB or more turns negative and nothing is discarded (the bytes that follow are
/// read as the next packet).
fn swallow_count(len: u32) -> usize {
    if i32::try_from(len).is_ok() {
        len as usize
    } else {
        0
    }
}

/// The longest SASL mechanism name memcached accepts.
const MAX_SASL_MECH_LEN: usize = 32;

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Parses one binary request from the front of `buf`.
pub fn parse_binary<'a>(buf: &'a [u8], limits: &Limits) -> Result<BinaryParsed<'a>, Incomplete> {
    let Some(header) = Header::read(buf) else {
        return Err(Incomplete {
            needed: Some(HEADER_LEN),
        });
    };
    if header.magic != REQUEST_MAGIC {
        return Ok(BinaryParsed {
            consumed: buf.len(),
            outcome: BinaryOutcome::Close,
        });
    }
    let extlen = usize::from(header.extras_len);
    let keylen = usize::from(header.key_len);
    let bodylen = header.body_len as usize;
    let fixed = HEADER_LEN + extlen + keylen;
    if buf.len() < fixed {
        return Err(Incomplete {
            needed: Some(fixed),
        });
    }
    let reject = |status, swallow, close| {
        Ok(BinaryParsed {
            consumed: fixed,
            outcome: BinaryOutcome::Reject(BinaryReject {
                header,
                status,
                swallow,
                close,
                unlink: None,
                before_auth: false,
                sasl: false,
            }),
        })
    };
    if keylen > bodylen || keylen + extlen > bodylen {
        let mut parsed = reject(Status::UnknownCommand, 0, true)?;
        if let BinaryOutcome::Reject(r) = &mut parsed.outcome {
            r.before_auth = true;
        }
        return Ok(parsed);
    }
    if keylen > limits.max_key_len {
        return reject(Status::InvalidArguments, 0, true);
    }
    let extras = &buf[HEADER_LEN..HEADER_LEN + extlen];
    let key = &buf[HEADER_LEN + extlen..fixed];
    // Cannot underflow: the key and extras fit in the body (checked above).
    let value_len = header.body_len - (extlen + keylen) as u32;
    let invalid = || reject(Status::InvalidArguments, 0, true);
    use opcode::*;
    let quiet = matches!(
        header.opcode,
        SETQ | ADDQ
            | REPLACEQ
            | DELETEQ
            | INCREMENTQ
            | DECREMENTQ
            | QUITQ
            | FLUSHQ
            | APPENDQ
            | PREPENDQ
            | GETQ
            | GETKQ
            | GATQ
            | GATKQ
    );
    let no_body = extlen == 0 && keylen == 0 && bodylen == 0;
    let command = match header.opcode {
        VERSION if no_body => BinaryCommand::Version,
        NOOP if no_body => BinaryCommand::Noop,
        QUIT | QUITQ if no_body => BinaryCommand::Quit,
        SASL_LIST_MECHS if no_body => BinaryCommand::SaslListMechs,
        FLUSH | FLUSHQ if keylen == 0 && bodylen == extlen && (extlen == 0 || extlen == 4) => {
            BinaryCommand::Flush {
                exptime: if extlen == 4 { be32(extras) } else { 0 },
            }
        }
        SET | SETQ | ADD | ADDQ | REPLACE | REPLACEQ
            if extlen == 8 && keylen != 0 && bodylen >= keylen + 8 =>
        {
            BinaryCommand::Store {
                kind: match header.opcode {
                    SET | SETQ => BinaryStore::Set,
                    ADD | ADDQ => BinaryStore::Add,
                    _ => BinaryStore::Replace,
                },
                flags: be32(extras),
                exptime: be32(&extras[4..]),
            }
        }
        APPEND | APPENDQ | PREPEND | PREPENDQ if keylen > 0 && extlen == 0 => {
            BinaryCommand::Store {
                kind: if matches!(header.opcode, APPEND | APPENDQ) {
                    BinaryStore::Append
                } else {
                    BinaryStore::Prepend
                },
                flags: 0,
                exptime: 0,
            }
        }
        GET | GETQ | GETK | GETKQ if extlen == 0 && bodylen == keylen && keylen > 0 => {
            BinaryCommand::Get {
                with_key: matches!(header.opcode, GETK | GETKQ),
                touch: None,
                value: true,
            }
        }
        TOUCH | GAT | GATQ | GATK | GATKQ if extlen == 4 && keylen != 0 => BinaryCommand::Get {
            with_key: matches!(header.opcode, GATK | GATKQ),
            touch: Some(be32(extras)),
            value: header.opcode != TOUCH,
        },
        DELETE | DELETEQ if keylen > 0 && extlen == 0 && bodylen == keylen => BinaryCommand::Delete,
        INCREMENT | INCREMENTQ | DECREMENT | DECREMENTQ
            if keylen > 0 && extlen == 20 && bodylen == keylen + extlen =>
        {
            BinaryCommand::Arith {
                incr: matches!(header.opcode, INCREMENT | INCREMENTQ),
                delta: be64(extras),
                initial: be64(&extras[8..]),
                exptime: be32(&extras[16..]),
            }
        }
        STAT if extlen == 0 => BinaryCommand::Stat,
        SASL_AUTH if extlen == 0 && keylen != 0 => BinaryCommand::SaslAuth,
        SASL_STEP if extlen == 0 && keylen != 0 => BinaryCommand::SaslStep,
        VERSION | NOOP | QUIT | QUITQ | SASL_LIST_MECHS | FLUSH | FLUSHQ | SET | SETQ | ADD
        | ADDQ | REPLACE | REPLACEQ | APPEND | APPENDQ | PREPEND | PREPENDQ | GET | GETQ | GETK
        | GETKQ | TOUCH | GAT | GATQ | GATK | GATKQ | DELETE | DELETEQ | INCREMENT | INCREMENTQ
        | DECREMENT | DECREMENTQ | STAT | SASL_AUTH | SASL_STEP => return invalid(),
        // memcached discards a body's length after the extras and key it already read, so
        // the next bytes of an unknown command with extras or a key are lost too.
        _ => {
            return reject(
                Status::UnknownCommand,
                swallow_count(header.body_len),
                false,
            )
        }
    };
    // What memcached reads of the body after the extras and key: a store's value and SASL
    // data. Every other command is answered from its extras and key; the rest of a longer
    // body is the next packet's first bytes.
    let value_len = match command {
        BinaryCommand::Store { .. } | BinaryCommand::SaslAuth | BinaryCommand::SaslStep => {
            value_len
        }
        _ => 0,
    };
    let size_reject = |status, sasl, unlink| {
        Ok(BinaryParsed {
            consumed: fixed,
            outcome: BinaryOutcome::Reject(BinaryReject {
                header,
                status,
                swallow: swallow_count(value_len),
                close: false,
                unlink,
                before_auth: false,
                sasl,
            }),
        })
    };
    // A length of 2 GiB or more is negative in memcached's `int` and can never fit an item.
    let fits = i32::try_from(value_len).is_ok()
        && keylen + value_len as usize + limits.item_overhead <= limits.item_size_max;
    match command {
        BinaryCommand::Store { kind, .. } if !fits => {
            return size_reject(
                Status::TooLarge,
                false,
                (kind == BinaryStore::Set).then_some(key),
            );
        }
        BinaryCommand::SaslAuth | BinaryCommand::SaslStep if keylen > MAX_SASL_MECH_LEN => {
            return size_reject(Status::InvalidArguments, true, None);
        }
        // memcached reads SASL data into an item, and answers "Out of memory" when none can
        // hold it.
        BinaryCommand::SaslAuth | BinaryCommand::SaslStep if !fits => {
            return size_reject(Status::OutOfMemory, true, None);
        }
        _ => {}
    }
    let value_len = value_len as usize;
    let total = fixed + value_len;
    if buf.len() < total {
        return Err(Incomplete {
            needed: Some(total),
        });
    }
    Ok(BinaryParsed {
        consumed: total,
        outcome: BinaryOutcome::Request(BinaryRequest {
            header,
            command,
            quiet,
            key,
            value: &buf[fixed..total],
        }),
    })
}

/// Appends a response packet.
pub fn response(
    out: &mut Vec<u8>,
    request: &Header,
    status: Status,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    out.reserve(HEADER_LEN + extras.len() + key.len() + value.len());
    response_head(out, request, status, cas, extras, key, value.len());
    out.extend_from_slice(value);
}

/// [`response`] without the value, whose length it announces: the caller sends the value
/// from where it is stored.
pub fn response_head(
    out: &mut Vec<u8>,
    request: &Header,
    status: Status,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value_len: usize,
) {
    let body = extras.len() + key.len() + value_len;
    out.push(RESPONSE_MAGIC);
    out.push(request.opcode);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.push(extras.len() as u8);
    out.push(0);
    out.extend_from_slice(&(status as u16).to_be_bytes());
    out.extend_from_slice(&(body as u32).to_be_bytes());
    out.extend_from_slice(&request.opaque.to_be_bytes());
    out.extend_from_slice(&cas.to_be_bytes());
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
}

/// Appends an error response: the status and memcached's text for it.
pub fn error(out: &mut Vec<u8>, request: &Header, status: Status) {
    response(out, request, status, 0, &[], &[], status.message());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], cas: u64) -> Vec<u8> {
        let mut p = vec![REQUEST_MAGIC, opcode];
        p.extend_from_slice(&(key.len() as u16).to_be_bytes());
        p.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
        p.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(&cas.to_be_bytes());
        p.extend_from_slice(extras);
        p.extend_from_slice(key);
        p.extend_from_slice(value);
        p
    }

    fn parse(buf: &[u8]) -> Result<BinaryParsed<'_>, Incomplete> {
        parse_binary(buf, &Limits::default())
    }

    #[test]
    fn set_with_extras_key_and_value() {
        let p = packet(opcode::SETQ, &[0, 0, 0, 5, 0, 0, 0, 9], b"key", b"value", 3);
        let parsed = parse(&p).unwrap();
        assert_eq!(parsed.consumed, p.len());
        let BinaryOutcome::Request(r) = parsed.outcome else {
            panic!()
        };
        assert!(r.quiet);
        assert_eq!(
            (r.key, r.value, r.header.cas),
            (&b"key"[..], &b"value"[..], 3)
        );
        assert_eq!(
            r.command,
            BinaryCommand::Store {
                kind: BinaryStore::Set,
                flags: 5,
                exptime: 9
            }
        );
        assert_eq!(parse(&p[..30]).unwrap_err().needed, Some(35));
        assert_eq!(parse(&p[..36]).unwrap_err().needed, Some(p.len()));
    }

    #[test]
    fn malformed_packets_get_memcacheds_fate() {
        let get_with_extras = packet(opcode::GET, b"1234", b"k", b"", 0);
        let BinaryOutcome::Reject(r) = parse(&get_with_extras).unwrap().outcome else {
            panic!()
        };
        assert_eq!((r.status, r.close), (Status::InvalidArguments, true));
        let unknown = packet(0x40, b"", b"", b"xx", 0);
        let parsed = parse(&unknown).unwrap();
        let BinaryOutcome::Reject(r) = parsed.outcome else {
            panic!()
        };
        assert_eq!(
            (r.status, r.swallow, r.close),
            (Status::UnknownCommand, 2, false)
        );
        let mut not_request = packet(opcode::NOOP, b"", b"", b"", 0);
        not_request[0] = RESPONSE_MAGIC;
        assert_eq!(parse(&not_request).unwrap().outcome, BinaryOutcome::Close);
    }

    #[test]
    fn too_large_value_is_swallowed_without_buffering() {
        let header_only = packet(opcode::SET, &[0; 8], b"k", b"", 0);
        let mut p = header_only.clone();
        let len = (2 * 1024 * 1024 + 9) as u32;
        p[8..12].copy_from_slice(&len.to_be_bytes());
        let parsed = parse(&p).unwrap();
        assert_eq!(parsed.consumed, header_only.len());
        let BinaryOutcome::Reject(r) = parsed.outcome else {
            panic!()
        };
        assert_eq!(r.status, Status::TooLarge);
        assert_eq!(r.swallow, 2 * 1024 * 1024);
        assert_eq!(r.unlink, Some(&b"k"[..]));
    }

    fn with_body_len(mut p: Vec<u8>, len: u32) -> Vec<u8> {
        p[8..12].copy_from_slice(&len.to_be_bytes());
        p
    }

    #[test]
    fn a_huge_declared_body_never_asks_for_more_than_a_value() {
        let limits = Limits::default();
        let cap = HEADER_LEN + 8 + 255 + limits.item_size_max;
        for op in 0..=u8::MAX {
            for len in [0xFFFF_FFF0, 0x8000_0000, 0x7FFF_FFF0, 2 << 20] {
                for (extras, key) in [
                    (&[][..], &b""[..]),
                    (&[0; 4][..], b"k"),
                    (&[0; 8][..], b"k"),
                ] {
                    let p = with_body_len(packet(op, extras, key, b"", 0), len);
                    if let Err(incomplete) = parse(&p) {
                        let needed = incomplete.needed.unwrap_or(0);
                        assert!(needed <= cap, "opcode {op:#x} len {len:#x} needs {needed}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_body_of_2_gib_or_more_is_answered_without_swallowing() {
        let set = with_body_len(packet(opcode::SET, &[0; 8], b"k", b"", 0), 0xFFFF_FFF0);
        let BinaryOutcome::Reject(r) = parse(&set).unwrap().outcome else {
            panic!()
        };
        assert_eq!((r.status, r.swallow, r.close), (Status::TooLarge, 0, false));
        let unknown = with_body_len(packet(0x40, b"", b"", b"", 0), 0x8000_0000);
        let BinaryOutcome::Reject(r) = parse(&unknown).unwrap().outcome else {
            panic!()
        };
        assert_eq!((r.status, r.swallow), (Status::UnknownCommand, 0));
        let unknown = with_body_len(packet(0x40, b"", b"", b"", 0), 0x7FFF_FFFF);
        let BinaryOutcome::Reject(r) = parse(&unknown).unwrap().outcome else {
            panic!()
        };
        assert_eq!(r.swallow, 0x7FFF_FFFF);
        let sasl = with_body_len(packet(opcode::SASL_AUTH, b"", b"PLAIN", b"", 0), 3 << 20);
        let BinaryOutcome::Reject(r) = parse(&sasl).unwrap().outcome else {
            panic!()
        };
        assert_eq!(
            (r.status, r.swallow, r.sasl),
            (Status::OutOfMemory, (3 << 20) - 5, true)
        );
    }

    #[test]
    fn surplus_body_of_touch_and_stat_is_the_next_packet() {
        let noop = packet(opcode::NOOP, b"", b"", b"", 0);
        for (op, extras, key) in [
            (opcode::TOUCH, &[0u8; 4][..], &b"k"[..]),
            (opcode::GATKQ, &[0; 4], b"k"),
            (opcode::STAT, &[], b"items"),
            (opcode::STAT, &[], b""),
        ] {
            let head = packet(op, extras, key, b"", 0);
            let declared = (extras.len() + key.len() + noop.len()) as u32;
            let p = [with_body_len(head.clone(), declared), noop.clone()].concat();
            let parsed = parse(&p).unwrap();
            assert_eq!(parsed.consumed, head.len(), "opcode {op:#x}");
            let BinaryOutcome::Request(r) = parsed.outcome else {
                panic!()
            };
            assert_eq!((r.key, r.value), (key, &b""[..]));
            let next = parse(&p[parsed.consumed..]).unwrap();
            assert_eq!(next.consumed, noop.len());
        }
    }

    #[test]
    fn response_layout() {
        let request = Header::read(&packet(opcode::GETK, b"", b"k", b"", 0)).unwrap();
        let mut out = Vec::new();
        response(&mut out, &request, Status::Ok, 9, &[0, 0, 0, 1], b"k", b"v");
        assert_eq!(out.len(), 24 + 6);
        assert_eq!(&out[..2], &[RESPONSE_MAGIC, opcode::GETK]);
        assert_eq!(&out[8..12], &6u32.to_be_bytes());
        assert_eq!(&out[12..16], &7u32.to_be_bytes());
        assert_eq!(&out[16..24], &9u64.to_be_bytes());
    }
}
