//! The requests the proxy sends to its backends, in memcached's text protocol.
//!
//! Backends are always asked with a reply (never `noreply`), even when the client said
//! `noreply`: the proxy needs each reply to keep a pipelined connection in step and to know
//! whether every replica applied a write.

use bytes::{BufMut, Bytes, BytesMut};
use keepcached_protocol::{StoreKind, Verb};

use crate::backend::{Call, Expect};

fn head(capacity: usize, build: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(capacity);
    build(&mut out);
    out.put_slice(b"\r\n");
    out.freeze()
}

fn number(out: &mut BytesMut, n: impl itoa::Integer) {
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `get|gets|gat|gats [exptime] <keys>`.
pub fn get<'a>(verb: Verb, exptime: Option<i32>, keys: impl Iterator<Item = &'a [u8]>) -> Call {
    let keys: Vec<&[u8]> = keys.collect();
    let len: usize = keys.iter().map(|k| k.len() + 1).sum();
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
    }
}

pub fn delete(key: &[u8]) -> Call {
    Call::line(
        head(key.len() + 10, |out| {
            out.put_slice(b"delete ");
            out.put_slice(key);
        }),
        Expect::Line,
    )
}

pub fn touch(key: &[u8], exptime: i32) -> Call {
    Call::line(
        head(key.len() + 20, |out| {
            out.put_slice(b"touch ");
            out.put_slice(key);
            out.put_u8(b' ');
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
    Call::line(
        head(key.len() + 12, |out| {
            out.put_slice(b"mg ");
            out.put_slice(key);
            out.put_slice(b" v f t");
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
    }
}
