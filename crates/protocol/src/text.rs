//! The text (ASCII) request protocol of memcached 1.6.18.
//!
//! A request is one line, `<command> <tokens...>\r\n`, followed for the storage commands by a
//! data block of exactly the announced length and `\r\n`:
//!
//! ```text
//! set <key> <flags> <exptime> <bytes> [noreply]\r\n<data>\r\n
//! cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]\r\n<data>\r\n
//! get <key>*\r\n            gat <exptime> <key>*\r\n
//! ```
//!
//! The line is split only on spaces (a tab belongs to the token), into at most 24 tokens as
//! memcached's `tokenize_command` does; the remainder of a longer line is left in the last token,
//! which matters because only the get family reads past it.

use crate::number::{parse_i32, parse_u32_truncating, parse_u64};
use crate::reply::ErrorReply;

/// memcached's `MAX_TOKENS`: 23 tokens plus the unsplit remainder of the line.
const MAX_TOKENS: usize = 24;

/// Configured limits; the parser enforces them so that no oversized key or value ever reaches
/// the store, and a connection's buffered line stays bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest key (memcached: 250, fixed).
    pub max_key_len: usize,
    /// The item size limit (`-I`); values that cannot fit are swallowed with an error.
    pub item_size_max: usize,
    /// memcached counts an item as `header + key + 1 + value + 2` plus 8 when CAS is on; this is
    /// everything but the key and the value, so the size limit falls exactly where memcached's
    /// does.
    pub item_overhead: usize,
    /// A line with no newline after this many bytes closes the connection (memcached: 2048),
    /// unless it is a multi-get, which may run to `max_multiget_line`.
    pub max_line: usize,
    /// Bound for a multi-get line, so a client cannot grow our buffer without limit.
    pub max_multiget_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_len: 250,
            item_size_max: 1024 * 1024,
            item_overhead: 48 + 1 + 2 + 8,
            max_line: 2048,
            max_multiget_line: 4 * 1024 * 1024,
        }
    }
}

/// Not enough bytes yet. `needed` is the total buffer length that will let parsing progress when
/// it is known (the data block of a storage command), so the caller can reserve it at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incomplete {
    pub needed: Option<usize>,
}

/// One parse step: how many bytes of the buffer it covers, and what they meant.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub consumed: usize,
    pub outcome: Result<Request<'a>, Invalid<'a>>,
}

/// Input that memcached answers with an error rather than a result.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid<'a> {
    /// Reply with this error line unless `noreply` (memcached silences most errors of a
    /// `noreply` request too), then go on with the next line.
    Reply { error: ErrorReply, noreply: bool },
    /// A storage command whose value can never fit. memcached answers `SERVER_ERROR object too
    /// large for cache`, discards the next `swallow` bytes (the data block) as they arrive, and
    /// for `set` removes the key's current item so that no stale value survives the failed
    /// write.
    TooLarge {
        kind: StoreKind,
        key: &'a [u8],
        swallow: usize,
        noreply: bool,
    },
    /// memcached drops the connection without a reply (a runaway line, an HTTP request).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Set => "set",
            StoreKind::Add => "add",
            StoreKind::Replace => "replace",
            StoreKind::Append => "append",
            StoreKind::Prepend => "prepend",
            StoreKind::Cas => "cas",
        }
    }
}

/// The keys of a multi-get: the rest of the line, split on spaces as it is read, so a get of
/// thousands of keys needs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys<'a> {
    rest: &'a [u8],
}

impl<'a> Keys<'a> {
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.rest.split(|b| *b == b' ').filter(|k| !k.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The keys as they appeared on the line (space separated), for re-encoding.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.rest
    }
}

/// The command word of a request, for statistics and routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Gets,
    Gat,
    Gats,
}

/// A well-formed request. Numbers are carried as the client sent them (exptime is the raw signed
/// value); turning them into times is the server's job.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// get, gets, gat, gats. `exptime` is set for gat/gats.
    Get {
        verb: Verb,
        exptime: Option<i32>,
        keys: Keys<'a>,
    },
    Store {
        kind: StoreKind,
        key: &'a [u8],
        flags: u32,
        exptime: i32,
        data: &'a [u8],
        /// The compare value of `cas`; 0 for the other kinds.
        cas: u64,
        noreply: bool,
    },
    Delete {
        key: &'a [u8],
        noreply: bool,
    },
    Arith {
        incr: bool,
        key: &'a [u8],
        delta: u64,
        noreply: bool,
    },
    Touch {
        key: &'a [u8],
        exptime: i32,
        noreply: bool,
    },
    FlushAll {
        delay: Option<i32>,
        noreply: bool,
    },
    Version,
    Verbosity {
        level: u32,
        noreply: bool,
    },
    Quit,
    /// `shutdown [graceful]`; any other mode is carried so the server can reject it.
    Shutdown {
        mode: Option<&'a [u8]>,
    },
    CacheMemlimit {
        megabytes: u32,
        noreply: bool,
    },
    /// `stats [args...]`: the arguments after `stats`, split on spaces.
    Stats {
        args: Keys<'a>,
    },
    /// `lru_crawler <args...>`.
    LruCrawler {
        args: Keys<'a>,
    },
    /// `slabs <args...>` (`reassign`, `automove`).
    Slabs {
        args: Keys<'a>,
    },
    /// `mn`: the meta no-op, used as a pipeline end marker.
    MetaNoop,
}

/// Parses one request from the front of `buf`.
///
/// Returns `Err(Incomplete)` when more bytes are needed; otherwise the request or the error
/// memcached would answer, with the number of bytes to drop from the buffer.
pub fn parse_request<'a>(buf: &'a [u8], limits: &Limits) -> Result<Parsed<'a>, Incomplete> {
    let Some(newline) = memchr(b'\n', buf) else {
        return if runaway_line(buf, limits) {
            Ok(Parsed {
                consumed: buf.len(),
                outcome: Err(Invalid::Close),
            })
        } else {
            Err(Incomplete { needed: None })
        };
    };
    let line_len = newline + 1;
    // memcached strips a '\r' before the '\n' only when something precedes it.
    let mut line = &buf[..newline];
    if line.len() > 1 && line[line.len() - 1] == b'\r' {
        line = &line[..line.len() - 1];
    }
    // memcached treats the line as a C string: an embedded NUL ends it.
    if let Some(nul) = memchr(0, line) {
        line = &line[..nul];
    }
    let tokens = Tokens::split(line);
    let outcome = match dispatch(&tokens, buf, line_len, limits) {
        Dispatch::Done(outcome) => outcome,
        Dispatch::WithData { consumed, outcome } => return Ok(Parsed { consumed, outcome }),
        Dispatch::NeedData(needed) => {
            return Err(Incomplete {
                needed: Some(needed),
            })
        }
    };
    Ok(Parsed {
        consumed: line_len,
        outcome,
    })
}

/// A buffered line without a newline that memcached gives up on: longer than its limit and not a
/// multi-get (which may legitimately be long), or a multi-get beyond our own bound.
fn runaway_line(buf: &[u8], limits: &Limits) -> bool {
    if buf.len() <= limits.max_line {
        return false;
    }
    let spaces = buf.iter().take_while(|b| **b == b' ').count();
    let start = &buf[spaces..];
    let multiget = start.starts_with(b"get ") || start.starts_with(b"gets ");
    spaces > 100 || !multiget || buf.len() > limits.max_multiget_line
}

/// The first `needle` in `haystack`: the memchr crate's word-at-a-time (SIMD where the CPU
/// has it) search, since every request line is scanned for its end and for a NUL.
pub(crate) fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    memchr::memchr(needle, haystack)
}

/// memcached's token array: up to 23 tokens, then the unsplit remainder (if any).
pub(crate) struct Tokens<'a> {
    words: [&'a [u8]; MAX_TOKENS - 1],
    pub(crate) len: usize,
    rest: Option<&'a [u8]>,
}

impl<'a> Tokens<'a> {
    pub(crate) fn split(line: &'a [u8]) -> Self {
        let mut tokens = Tokens {
            words: [&[][..]; MAX_TOKENS - 1],
            len: 0,
            rest: None,
        };
        let mut start = 0;
        let mut i = 0;
        while i < line.len() {
            if line[i] == b' ' {
                if start != i {
                    tokens.words[tokens.len] = &line[start..i];
                    tokens.len += 1;
                    if tokens.len == MAX_TOKENS - 1 {
                        let rest = &line[i + 1..];
                        tokens.rest = (!rest.is_empty()).then_some(rest);
                        return tokens;
                    }
                }
                start = i + 1;
            }
            i += 1;
        }
        if start != line.len() {
            tokens.words[tokens.len] = &line[start..];
            tokens.len += 1;
        }
        tokens
    }

    /// memcached's `ntokens`: the tokens plus the terminating marker.
    pub(crate) fn count(&self) -> usize {
        self.len + 1
    }

    pub(crate) fn get(&self, i: usize) -> &'a [u8] {
        self.words[i]
    }

    /// The key token, unless it is longer than memcached allows.
    pub(crate) fn key(&self, limits: &Limits) -> Option<&'a [u8]> {
        let key = self.get(1);
        (key.len() <= limits.max_key_len).then_some(key)
    }

    /// `set_noreply_maybe`: the last real token is exactly `noreply`.
    fn noreply(&self) -> bool {
        self.len > 0 && self.words[self.len - 1] == b"noreply"
    }
}

enum Dispatch<'a> {
    Done(Result<Request<'a>, Invalid<'a>>),
    WithData {
        consumed: usize,
        outcome: Result<Request<'a>, Invalid<'a>>,
    },
    NeedData(usize),
}

fn reply<'a>(error: ErrorReply, noreply: bool) -> Dispatch<'a> {
    Dispatch::Done(Err(Invalid::Reply { error, noreply }))
}

fn error<'a>() -> Dispatch<'a> {
    reply(ErrorReply::Error, false)
}

fn ok(request: Request<'_>) -> Dispatch<'_> {
    Dispatch::Done(Ok(request))
}

/// The part of the line after the command word, with its leading spaces.
fn tail_after_command<'a>(tokens: &Tokens<'a>, buf: &'a [u8]) -> &'a [u8] {
    let command = tokens.get(0);
    // The command token is a subslice of `buf`; find where it ends.
    let offset = command.as_ptr() as usize - buf.as_ptr() as usize + command.len();
    let newline = memchr(b'\n', &buf[offset..]).map_or(buf.len(), |n| offset + n);
    let mut end = newline;
    if end > offset && buf[end - 1] == b'\r' {
        end -= 1;
    }
    let tail = &buf[offset..end];
    match memchr(0, tail) {
        Some(nul) => &tail[..nul],
        None => tail,
    }
}

fn dispatch<'a>(
    tokens: &Tokens<'a>,
    buf: &'a [u8],
    line_len: usize,
    limits: &Limits,
) -> Dispatch<'a> {
    let ntokens = tokens.count();
    if ntokens < 2 || tokens.get(0).len() < 2 {
        return error();
    }
    let command = tokens.get(0);
    let want = |lo: usize, hi: usize| ntokens == lo || ntokens == hi;
    match command {
        // `bget` is an undocumented old spelling of `get` that memcached still answers.
        b"get" | b"gets" | b"gat" | b"gats" | b"bget" => {
            if ntokens < 3 {
                return error();
            }
            parse_get(tokens, buf, limits)
        }
        b"set" | b"add" | b"replace" | b"append" | b"prepend" => {
            if !want(6, 7) {
                return error();
            }
            let kind = match command {
                b"set" => StoreKind::Set,
                b"add" => StoreKind::Add,
                b"replace" => StoreKind::Replace,
                b"append" => StoreKind::Append,
                _ => StoreKind::Prepend,
            };
            parse_store(kind, tokens, buf, line_len, limits)
        }
        b"cas" => {
            if !want(7, 8) {
                return error();
            }
            parse_store(StoreKind::Cas, tokens, buf, line_len, limits)
        }
        b"incr" | b"decr" => {
            if !want(4, 5) {
                return error();
            }
            let noreply = tokens.noreply();
            let Some(key) = tokens.key(limits) else {
                return reply(ErrorReply::BadFormat, noreply);
            };
            match parse_u64(tokens.get(2)) {
                Some(delta) => ok(Request::Arith {
                    incr: command == b"incr",
                    key,
                    delta,
                    noreply,
                }),
                None => reply(ErrorReply::InvalidDelta, noreply),
            }
        }
        b"delete" => parse_delete(tokens, limits),
        b"touch" => {
            if !want(4, 5) {
                return error();
            }
            let noreply = tokens.noreply();
            let Some(key) = tokens.key(limits) else {
                return reply(ErrorReply::BadFormat, noreply);
            };
            match parse_i32(tokens.get(2)) {
                Some(exptime) => ok(Request::Touch {
                    key,
                    exptime,
                    noreply,
                }),
                None => reply(ErrorReply::InvalidExptime, noreply),
            }
        }
        b"flush_all" => {
            if !(2..=4).contains(&ntokens) {
                return error();
            }
            let noreply = tokens.noreply();
            // Without a delay the line is `flush_all` or `flush_all noreply`.
            if ntokens == if noreply { 3 } else { 2 } {
                return ok(Request::FlushAll {
                    delay: None,
                    noreply,
                });
            }
            match parse_i32(tokens.get(1)) {
                Some(delay) => ok(Request::FlushAll {
                    delay: Some(delay),
                    noreply,
                }),
                None => reply(ErrorReply::InvalidExptime, noreply),
            }
        }
        b"version" => ok(Request::Version),
        b"quit" => ok(Request::Quit),
        b"verbosity" => {
            if !want(3, 4) {
                return error();
            }
            let noreply = tokens.noreply();
            match parse_u32_truncating(tokens.get(1)) {
                Some(level) => ok(Request::Verbosity { level, noreply }),
                None => reply(ErrorReply::BadFormat, noreply),
            }
        }
        b"cache_memlimit" => {
            if !want(3, 4) {
                return error();
            }
            let noreply = tokens.noreply();
            match parse_u32_truncating(tokens.get(1)) {
                Some(megabytes) => ok(Request::CacheMemlimit { megabytes, noreply }),
                None => reply(ErrorReply::Error, noreply),
            }
        }
        b"shutdown" => ok(Request::Shutdown {
            mode: (tokens.len > 1).then(|| tokens.get(1)),
        }),
        b"stats" => ok(Request::Stats {
            args: Keys {
                rest: tail_after_command(tokens, buf),
            },
        }),
        b"lru_crawler" => ok(Request::LruCrawler {
            args: Keys {
                rest: tail_after_command(tokens, buf),
            },
        }),
        b"slabs" => ok(Request::Slabs {
            args: Keys {
                rest: tail_after_command(tokens, buf),
            },
        }),
        b"mn" => ok(Request::MetaNoop),
        // memcached picks a command by its first letter before it compares names, and answers
        // an unknown name under one of these letters (or a two-letter `m` word) with ERROR:
        // only other lines ending in an `HTTP/` token close the connection.
        _ if !(matches!(command[0], b'g' | b's' | b'a' | b'c' | b'i' | b'd' | b't')
            || (command[0] == b'm' && command.len() == 2))
            && tokens.get(tokens.len - 1).starts_with(b"HTTP/") =>
        {
            Dispatch::Done(Err(Invalid::Close))
        }
        _ => error(),
    }
}

fn parse_get<'a>(tokens: &Tokens<'a>, buf: &'a [u8], limits: &Limits) -> Dispatch<'a> {
    let verb = match tokens.get(0) {
        b"get" | b"bget" => Verb::Get,
        b"gets" => Verb::Gets,
        b"gat" => Verb::Gat,
        _ => Verb::Gats,
    };
    let mut tail = tail_after_command(tokens, buf);
    let mut exptime = None;
    if matches!(verb, Verb::Gat | Verb::Gats) {
        match parse_i32(tokens.get(1)) {
            Some(t) => exptime = Some(t),
            None => return reply(ErrorReply::InvalidExptime, false),
        }
        // Drop the exptime token from the key list.
        let spaces = tail.iter().take_while(|b| **b == b' ').count();
        tail = &tail[spaces + tokens.get(1).len()..];
    }
    let keys = Keys { rest: tail };
    // memcached checks each key as it answers, and on an over-long key throws away everything
    // it had answered for the line and sends only the error; checking them all first is the
    // same reply without the wasted lookups. It throws away the replies it queued for earlier
    // requests too, which is the connection's to do ([`ErrorReply::GetKeyTooLong`]).
    if keys.iter().any(|k| k.len() > limits.max_key_len) {
        return reply(ErrorReply::GetKeyTooLong, false);
    }
    ok(Request::Get {
        verb,
        exptime,
        keys,
    })
}

fn parse_delete<'a>(tokens: &Tokens<'a>, limits: &Limits) -> Dispatch<'a> {
    let ntokens = tokens.count();
    if !(3..=5).contains(&ntokens) {
        return error();
    }
    let mut noreply = false;
    if ntokens > 3 {
        // The old `delete <key> <time>` form survives only with a time of 0.
        let hold_is_zero = tokens.get(2) == b"0";
        noreply = tokens.noreply();
        let valid = (ntokens == 4 && (hold_is_zero || noreply))
            || (ntokens == 5 && hold_is_zero && noreply);
        if !valid {
            return reply(ErrorReply::DeleteUsage, noreply);
        }
    }
    match tokens.key(limits) {
        Some(key) => ok(Request::Delete { key, noreply }),
        None => reply(ErrorReply::BadFormat, noreply),
    }
}

fn parse_store<'a>(
    kind: StoreKind,
    tokens: &Tokens<'a>,
    buf: &'a [u8],
    line_len: usize,
    limits: &Limits,
) -> Dispatch<'a> {
    let noreply = tokens.noreply();
    let Some(key) = tokens.key(limits) else {
        return reply(ErrorReply::BadFormat, noreply);
    };
    let (Some(flags), Some(exptime), Some(length)) = (
        parse_u32_truncating(tokens.get(2)),
        parse_i32(tokens.get(3)),
        parse_i32(tokens.get(4)),
    ) else {
        return reply(ErrorReply::BadFormat, noreply);
    };
    let mut cas = 0;
    if kind == StoreKind::Cas {
        match parse_u64(tokens.get(5)) {
            Some(c) => cas = c,
            None => return reply(ErrorReply::BadFormat, noreply),
        }
    }
    if !(0..=i32::MAX - 2).contains(&length) {
        return reply(ErrorReply::BadFormat, noreply);
    }
    let length = length as usize;
    let block = length + 2;
    if key.len() + length + limits.item_overhead > limits.item_size_max {
        return Dispatch::Done(Err(Invalid::TooLarge {
            kind,
            key,
            swallow: block,
            noreply,
        }));
    }
    let total = line_len + block;
    if buf.len() < total {
        return Dispatch::NeedData(total);
    }
    let data = &buf[line_len..line_len + length];
    let outcome = if &buf[line_len + length..total] == b"\r\n" {
        Ok(Request::Store {
            kind,
            key,
            flags,
            exptime,
            data,
            cas,
            noreply,
        })
    } else {
        Err(Invalid::Reply {
            error: ErrorReply::BadDataChunk,
            noreply,
        })
    };
    Dispatch::WithData {
        consumed: total,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Parsed<'_>, Incomplete> {
        parse_request(input, &Limits::default())
    }

    fn request(input: &[u8]) -> Request<'_> {
        match parse(input).expect("complete").outcome {
            Ok(r) => r,
            Err(e) => panic!("invalid: {e:?}"),
        }
    }

    fn invalid(input: &[u8]) -> Invalid<'_> {
        parse(input)
            .expect("complete")
            .outcome
            .expect_err("should be invalid")
    }

    #[test]
    fn set_with_data_borrows_the_value() {
        let input = b"set k 5 0 3\r\nabc\r\nget k\r\n";
        let parsed = parse(input).unwrap();
        assert_eq!(parsed.consumed, 18);
        assert_eq!(
            parsed.outcome.unwrap(),
            Request::Store {
                kind: StoreKind::Set,
                key: b"k",
                flags: 5,
                exptime: 0,
                data: b"abc",
                cas: 0,
                noreply: false
            }
        );
    }

    #[test]
    fn incomplete_data_reports_the_length_needed() {
        assert_eq!(
            parse(b"set k 0 0 10\r\nabc").unwrap_err(),
            Incomplete { needed: Some(26) }
        );
        assert_eq!(parse(b"get k").unwrap_err(), Incomplete { needed: None });
    }

    #[test]
    fn bad_data_chunk_consumes_the_block() {
        let parsed = parse(b"set k 0 0 1\r\nxx\r\n").unwrap();
        assert_eq!(parsed.consumed, 16);
        assert_eq!(
            parsed.outcome.unwrap_err(),
            Invalid::Reply {
                error: ErrorReply::BadDataChunk,
                noreply: false
            }
        );
    }

    #[test]
    fn too_large_is_swallowed() {
        let limits = Limits::default();
        let max = limits.item_size_max - limits.item_overhead - 1;
        let ok_line = format!("set k 0 0 {max}\r\n");
        assert_eq!(
            parse(ok_line.as_bytes()).unwrap_err(),
            Incomplete {
                needed: Some(ok_line.len() + max + 2)
            }
        );
        let big = format!("set k 0 0 {}\r\n", max + 1);
        assert_eq!(
            invalid(big.as_bytes()),
            Invalid::TooLarge {
                kind: StoreKind::Set,
                key: b"k",
                swallow: max + 3,
                noreply: false
            }
        );
    }

    #[test]
    fn multiget_keys_split_on_spaces() {
        let Request::Get { keys, verb, .. } = request(b"gets a  b c\r\n") else {
            panic!()
        };
        assert_eq!(verb, Verb::Gets);
        assert_eq!(keys.iter().collect::<Vec<_>>(), vec![&b"a"[..], b"b", b"c"]);
    }

    #[test]
    fn multiget_beyond_token_limit_keeps_all_keys() {
        let line: String = (0..100).map(|i| format!(" k{i}")).collect();
        let input = format!("get{line}\r\n");
        let Request::Get { keys, .. } = request(input.as_bytes()) else {
            panic!()
        };
        assert_eq!(keys.iter().count(), 100);
    }

    #[test]
    fn gat_takes_exptime_first() {
        let Request::Get { keys, exptime, .. } = request(b"gat 10 a b\r\n") else {
            panic!()
        };
        assert_eq!(exptime, Some(10));
        assert_eq!(keys.iter().collect::<Vec<_>>(), vec![&b"a"[..], b"b"]);
        assert_eq!(
            invalid(b"gat x a\r\n"),
            Invalid::Reply {
                error: ErrorReply::InvalidExptime,
                noreply: false
            }
        );
    }

    #[test]
    fn long_key_is_rejected() {
        let key = "k".repeat(251);
        let line = format!("get a {key}\r\n");
        assert_eq!(
            invalid(line.as_bytes()),
            Invalid::Reply {
                error: ErrorReply::GetKeyTooLong,
                noreply: false
            }
        );
    }

    #[test]
    fn runaway_line_closes_but_long_multiget_waits() {
        let junk = vec![b'x'; 3000];
        assert_eq!(invalid(&junk), Invalid::Close);
        let mut multiget = b"get ".to_vec();
        multiget.extend(std::iter::repeat_n(b"k ".as_slice(), 2000).flatten());
        assert!(parse(&multiget).is_err());
    }

    #[test]
    fn short_or_unknown_commands_are_errors() {
        for input in [
            &b"\r\n"[..],
            b"\n",
            b"x\r\n",
            b"GET a\r\n",
            b"get\r\n",
            b"set a\r\n",
        ] {
            assert_eq!(
                invalid(input),
                Invalid::Reply {
                    error: ErrorReply::Error,
                    noreply: false
                },
                "{input:?}"
            );
        }
    }

    #[test]
    fn delete_forms() {
        assert_eq!(
            request(b"delete a 0 noreply\r\n"),
            Request::Delete {
                key: b"a",
                noreply: true
            }
        );
        assert_eq!(
            invalid(b"delete a 5\r\n"),
            Invalid::Reply {
                error: ErrorReply::DeleteUsage,
                noreply: false
            }
        );
    }

    #[test]
    fn flush_all_forms() {
        assert_eq!(
            request(b"flush_all noreply\r\n"),
            Request::FlushAll {
                delay: None,
                noreply: true
            }
        );
        assert_eq!(
            request(b"flush_all 10\r\n"),
            Request::FlushAll {
                delay: Some(10),
                noreply: false
            }
        );
    }

    #[test]
    fn http_request_closes() {
        assert_eq!(invalid(b"GET / HTTP/1.1\r\n"), Invalid::Close);
        assert_eq!(invalid(b"xGET / HTTP/1.1\r\n"), Invalid::Close);
        assert_eq!(invalid(b"mxx / HTTP/1.1\r\n"), Invalid::Close);
        // Under the first letters of memcached's commands, an unknown name is an ERROR.
        for line in [
            &b"tamiuxxGET / HTTP/1.1\r\n"[..],
            b"gx HTTP/1.1\r\n",
            b"mx / HTTP/1.0\r\n",
        ] {
            assert_eq!(
                invalid(line),
                Invalid::Reply {
                    error: ErrorReply::Error,
                    noreply: false
                },
                "{line:?}"
            );
        }
    }

    #[test]
    fn bget_is_get() {
        let Request::Get { verb, keys, .. } = request(b"bget a b\r\n") else {
            panic!()
        };
        assert_eq!(verb, Verb::Get);
        assert_eq!(keys.iter().count(), 2);
    }
}
