//! The requests the proxy sends to its backends, in memcached's text protocol.
//!
//! Backends are always asked with a reply (never `noreply`), even when the client said
//! `noreply`: the proxy needs each reply to keep a pipelined connection in step and to know
//! whether every replica applied a write. A client's meta request goes out as the client sent
//! it ([`meta`]); a quiet one is followed by `mn` so that its reply, or its absence, is seen.
//!
//! The commands the proxy makes up itself (copies to other replicas, TTL copies, deletes) name a
//! key the way the text protocol can carry it. A key that arrived in base64 (meta's `b` flag) may
//! decode to bytes a text line cannot hold (spaces, line ends); such keys go out as the meta
//! commands `ms`/`md`/`mg` with the key in base64 again.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use keepcached_protocol::meta::encode_base64;
use keepcached_protocol::{StoreKind, Verb};

use crate::backend::{Call, Expect, Opaque};

fn head(capacity: usize, build: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(capacity);
    build(&mut out);
    out.put_slice(b"\r\n");
    out.freeze()
}

fn number(out: &mut BytesMut, n: impl itoa::Integer) {
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Whether `key` can be a token of a text command line: memcached splits the line at spaces and
/// ends it at `\n` (or a NUL), so any byte up to the space, and DEL, rules it out.
fn is_text_key(key: &[u8]) -> bool {
    !key.is_empty() && key.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// `<verb> <base64 key>`, the start of a meta command for a key that is not text-safe (the
/// caller adds the `b` flag after the command's positional arguments).
fn meta_head(out: &mut BytesMut, verb: &[u8], key: &[u8]) {
    let mut encoded = Vec::with_capacity(key.len().div_ceil(3) * 4);
    encode_base64(&mut encoded, key);
    out.put_slice(verb);
    out.put_u8(b' ');
    out.put_slice(&encoded);
}

/// A client's meta request, forwarded as sent (`frame` holds the line and any data block).
///
/// Its reply must carry the request's opaque token (conn.rs checks it). A quiet request that
/// has none gets one of the proxy's, taken out of the reply again: a quiet request may get no
/// reply at all, so only a token tells its own reply from a stray one the server sent. (`me`
/// takes no flags; its reply is checked by the connection's sync points alone.)
pub fn meta(frame: Bytes, quiet: bool) -> Call {
    let expect = if quiet {
        Expect::UntilNoop
    } else {
        Expect::Line
    };
    let line_end = frame
        .iter()
        .position(|&b| b == b'\n')
        .map_or(frame.len(), |i| i + 1);
    let line = &frame[..line_end];
    if let Some(token) = opaque_of(line) {
        let opaque = Opaque {
            token: frame.slice_ref(token),
            added: false,
        };
        return Call {
            opaque: Some(opaque),
            ..Call::line(frame, expect)
        };
    }
    if !quiet || line.starts_with(b"me ") {
        return Call::line(frame, expect);
    }
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let token = Bytes::from(format!("{:x}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    let head = head(trimmed.len() + token.len() + 2, |out| {
        out.put_slice(trimmed);
        out.put_slice(b" O");
        out.put_slice(&token);
    });
    // The data block (ms) goes as it came; the writer adds its line end.
    let data = (line_end < frame.len()).then(|| frame.slice(line_end..frame.len() - 2));
    Call {
        head,
        data,
        expect,
        opaque: Some(Opaque { token, added: true }),
    }
}

/// The opaque token (`O` flag) of a meta request line: the flags follow the command and key.
fn opaque_of(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .skip(2)
        .find_map(|t| t.strip_prefix(b"O"))
}

/// A client's `set`, `delete` or `touch` as the replicas get it. The proxy needs every server's
/// reply, so a `noreply` one is written anew without it (`rebuild`); one that wants a reply goes
/// as the client sent it (`frame` holds its line and any data block), and no line is built.
pub fn write(frame: &Bytes, noreply: bool, rebuild: impl FnOnce() -> Call) -> Call {
    if noreply {
        rebuild()
    } else {
        Call::line(frame.clone(), Expect::Line)
    }
}

/// `get|gets|gat|gats [exptime] <keys>`.
pub fn get<'a>(
    verb: Verb,
    exptime: Option<i32>,
    keys: impl Iterator<Item = &'a [u8]> + Clone,
) -> Call {
    let len: usize = keys.clone().map(|k| k.len() + 1).sum();
    let line = head(len + 24, |out| {
        out.put_slice(match verb {
            Verb::Get => b"get",
            Verb::Gets => b"gets",
            Verb::Gat => b"gat",
            Verb::Gats => b"gats",
        });
        if let Some(t) = exptime {
            out.put_u8(b' ');
            number(out, t);
        }
        for key in keys {
            out.put_u8(b' ');
            out.put_slice(key);
        }
    });
    Call::line(line, Expect::Values)
}

/// A storage command; `data` is the value without its `\r\n`.
pub fn store(kind: StoreKind, key: &[u8], flags: u32, exptime: i32, data: Bytes, cas: u64) -> Call {
    let line = head(key.len() + 64, |out| {
        out.put_slice(kind.name().as_bytes());
        out.put_u8(b' ');
        out.put_slice(key);
        out.put_u8(b' ');
        number(out, flags);
        out.put_u8(b' ');
        number(out, exptime);
        out.put_u8(b' ');
        number(out, data.len());
        if kind == StoreKind::Cas {
            out.put_u8(b' ');
            number(out, cas);
        }
    });
    Call {
        head: line,
        data: Some(data),
        expect: Expect::Line,
        opaque: None,
    }
}

/// `set`, for a copy to another replica: the text command, or `ms` for a key that is not
/// text-safe (`T` and `F` mean what set's exptime and flags do).
pub fn set(key: &[u8], flags: u32, exptime: i32, data: Bytes) -> Call {
    copy(StoreKind::Set, key, flags, exptime, data)
}

/// `add`, for a warm-up copy that must lose to any value a client stored meanwhile.
pub fn add(key: &[u8], flags: u32, exptime: i32, data: Bytes) -> Call {
    copy(StoreKind::Add, key, flags, exptime, data)
}

/// `set` or `add` of a copied item (`ms` in the same mode for a key that is not text-safe).
fn copy(kind: StoreKind, key: &[u8], flags: u32, exptime: i32, data: Bytes) -> Call {
    if is_text_key(key) {
        return store(kind, key, flags, exptime, data, 0);
    }
    let line = head(key.len() * 2 + 64, |out| {
        meta_head(out, b"ms", key);
        out.put_slice(b" ");
        number(out, data.len());
        out.put_slice(b" b F");
        number(out, flags);
        out.put_slice(b" T");
        number(out, exptime);
        if kind == StoreKind::Add {
            out.put_slice(b" ME");
        }
    });
    Call {
        head: line,
        data: Some(data),
        expect: Expect::Line,
        opaque: None,
    }
}

/// `delete`, or `md` for a key that is not text-safe.
pub fn delete(key: &[u8]) -> Call {
    Call::line(
        head(key.len() * 2 + 10, |out| {
            if is_text_key(key) {
                out.put_slice(b"delete ");
                out.put_slice(key);
            } else {
                meta_head(out, b"md", key);
                out.put_slice(b" b");
            }
        }),
        Expect::Line,
    )
}

/// `md <key> C<cas>`: delete the item only if it is still the one read with that CAS.
pub fn delete_cas(key: &[u8], cas: u64) -> Call {
    own_meta(b"md", key, format!(" C{cas}").as_bytes())
}

/// `touch`, or `mg ... T` for a key that is not text-safe.
pub fn touch(key: &[u8], exptime: i32) -> Call {
    Call::line(
        head(key.len() * 2 + 20, |out| {
            if is_text_key(key) {
                out.put_slice(b"touch ");
                out.put_slice(key);
                out.put_u8(b' ');
            } else {
                meta_head(out, b"mg", key);
                out.put_slice(b" b T");
            }
            number(out, exptime);
        }),
        Expect::Line,
    )
}

pub fn arith(incr: bool, key: &[u8], delta: u64) -> Call {
    Call::line(
        head(key.len() + 30, |out| {
            out.put_slice(if incr { b"incr " } else { b"decr " });
            out.put_slice(key);
            out.put_u8(b' ');
            number(out, delta);
        }),
        Expect::Line,
    )
}

pub fn flush_all(delay: Option<i32>) -> Call {
    Call::line(
        head(24, |out| {
            out.put_slice(b"flush_all");
            if let Some(d) = delay {
                out.put_u8(b' ');
                number(out, d);
            }
        }),
        Expect::Line,
    )
}

pub fn cache_memlimit(megabytes: u32) -> Call {
    Call::line(
        head(32, |out| {
            out.put_slice(b"cache_memlimit ");
            number(out, megabytes);
        }),
        Expect::Line,
    )
}

/// `mg <key> v f t`: the whole item (value, client flags, remaining TTL), to copy it exactly to
/// the other replicas after a command that changed it in place (incr, append, ...).
pub fn meta_get_item(key: &[u8]) -> Call {
    own_meta(b"mg", key, b" v f t")
}

/// `mg <key>`: whether the server holds the key (`HD` or `EN`), without its value.
pub fn meta_exists(key: &[u8]) -> Call {
    own_meta(b"mg", key, b"")
}

/// `<verb> <key> <flags>`, a meta command of the proxy's own (the key in base64 when it is not
/// text-safe).
fn own_meta(verb: &[u8], key: &[u8], flags: &[u8]) -> Call {
    Call::line(
        head(key.len() * 2 + flags.len() + 8, |out| {
            if is_text_key(key) {
                out.put_slice(verb);
                out.put_u8(b' ');
                out.put_slice(key);
            } else {
                meta_head(out, verb, key);
                out.put_slice(b" b");
            }
            out.put_slice(flags);
        }),
        Expect::Line,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let keys = [&b"a"[..], b"b"];
        assert_eq!(
            &get(Verb::Gat, Some(-1), keys.into_iter()).head[..],
            b"gat -1 a b\r\n"
        );
        let set = store(StoreKind::Cas, b"k", 3, 0, Bytes::from_static(b"xy"), 77);
        assert_eq!(&set.head[..], b"cas k 3 0 2 77\r\n");
        assert_eq!(&set.data.unwrap()[..], b"xy");
        assert_eq!(&arith(false, b"n", 5).head[..], b"decr n 5\r\n");
        assert_eq!(&flush_all(None).head[..], b"flush_all\r\n");
        assert_eq!(&meta_get_item(b"k").head[..], b"mg k v f t\r\n");
        assert_eq!(&meta_exists(b"k").head[..], b"mg k\r\n");
        assert_eq!(&delete_cas(b"k", 42).head[..], b"md k C42\r\n");
    }

    #[test]
    fn keys_that_a_text_line_cannot_carry_go_in_base64() {
        assert_eq!(&delete(b"a b").head[..], b"md YSBi b\r\n");
        assert_eq!(&touch(b"\r\n", 5).head[..], b"mg DQo= b T5\r\n");
        assert_eq!(&meta_get_item(b"\x7f").head[..], b"mg fw== b v f t\r\n");
        let copy = set(b"x y", 3, 100, Bytes::from_static(b"val"));
        assert_eq!(&copy.head[..], b"ms eCB5 3 b F3 T100\r\n");
        assert_eq!(&copy.data.unwrap()[..], b"val");
        assert_eq!(
            &add(b"x y", 0, 5, Bytes::from_static(b"v")).head[..],
            b"ms eCB5 1 b F0 T5 ME\r\n"
        );
        assert_eq!(&add(b"k", 2, 0, Bytes::new()).head[..], b"add k 2 0 0\r\n");
        assert_eq!(
            &set(b"plain", 1, 0, Bytes::new()).head[..],
            b"set plain 1 0 0\r\n"
        );
        let quiet = meta(Bytes::from_static(b"mg k v q\r\n"), true);
        assert_eq!(quiet.expect, Expect::UntilNoop);
        let token = quiet.opaque.expect("a token of the proxy's").token;
        let mut line = b"mg k v q O".to_vec();
        line.extend_from_slice(&token);
        line.extend_from_slice(b"\r\n");
        assert_eq!(&quiet.head[..], &line[..]);
        let own = meta(Bytes::from_static(b"ms k 2 q Oab T1\r\nxy\r\n"), true);
        assert_eq!(&own.head[..], b"ms k 2 q Oab T1\r\nxy\r\n");
        assert_eq!(&own.opaque.unwrap().token[..], b"ab");
        let store = meta(Bytes::from_static(b"ms k 2 q\r\nxy\r\n"), true);
        assert!(store.head.starts_with(b"ms k 2 q O"));
        assert_eq!(&store.data.unwrap()[..], b"xy");
        assert!(meta(Bytes::from_static(b"mg Okey v\r\n"), false)
            .opaque
            .is_none());
    }
}
