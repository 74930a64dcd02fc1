//! The meta commands of memcached 1.6.18: `mg`, `ms`, `md`, `ma`, `mn` and `me`.
//!
//! A meta request is one line of space-separated tokens, a two-letter command, a key and
//! single-letter flags, each optionally followed by its argument; `ms` also names the length of a
//! data block that follows the line:
//!
//! ```text
//! mg <key> <flags>*\r\n
//! ms <key> <datalen> <flags>*\r\n<data>\r\n
//! md <key> <flags>*\r\n          ma <key> <flags>*\r\n
//! mn\r\n                         me <key> [b]\r\n
//! ```
//!
//! memcached routes every two-letter command that starts with `m` here before any other
//! command is looked at; [`parse_command`] does the same and hands everything else to the text
//! parser. Flags are checked the way memcached's `_meta_flag_preparse` checks them: a repeated
//! flag (or a byte above 126) stops at once with `duplicate flag`, an unknown one with
//! `invalid flag`, and a bad argument is remembered while the rest are still read, so the last
//! error seen is the one reported. Keys may be base64 (`b`); they are decoded into the request
//! itself, so nothing is allocated.

use crate::number::{parse_i32, parse_u32_truncating, parse_u64};
use crate::text::{memchr, parse_request, Incomplete, Limits, Parsed, Tokens};

/// memcached's `MFLAG_MAX_OPT_LENGTH`: a meta line with more tokens than this (counting the
/// command, the key and memcached's terminal token) is refused.
const MAX_TOKENS: usize = 20;
/// The most flags a request that passes the token limit can carry.
const MAX_FLAGS: usize = MAX_TOKENS - 3;
/// memcached's `MFLAG_MAX_OPAQUE_LENGTH`, counted with the leading `O`.
const MAX_OPAQUE: usize = 32;
/// A base64 key of at most 250 bytes decodes to at most this many.
const MAX_DECODED_KEY: usize = 250 / 4 * 3;

/// The meta error lines, exactly as memcached 1.6.18 words them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaError {
    /// Too few tokens: memcached's generic `ERROR`.
    Error,
    BadFormat,
    DuplicateFlag,
    InvalidFlag,
    /// mg's wording of the token limit.
    OptionsTooLongGet,
    /// ms, md and ma word it without "are".
    OptionsTooLong,
    OpaqueTooLong,
    DecodingKey,
    BadToken,
    /// md and ma report every flag error with this one line.
    InvalidOrDuplicate,
    IncorrectMLength,
    InvalidMsMode,
    InvalidMaMode,
    InvalidInitial,
    InvalidDelta,
    BadDataChunk,
    TooLarge,
}

impl MetaError {
    pub fn as_str(self) -> &'static str {
        match self {
            MetaError::Error => "ERROR",
            MetaError::BadFormat => "CLIENT_ERROR bad command line format",
            MetaError::DuplicateFlag => "CLIENT_ERROR duplicate flag",
            MetaError::InvalidFlag => "CLIENT_ERROR invalid flag",
            MetaError::OptionsTooLongGet => "CLIENT_ERROR options flags are too long",
            MetaError::OptionsTooLong => "CLIENT_ERROR options flags too long",
            MetaError::OpaqueTooLong => "CLIENT_ERROR opaque token too long",
            MetaError::DecodingKey => "CLIENT_ERROR error decoding key",
            MetaError::BadToken => "CLIENT_ERROR bad token in command line format",
            MetaError::InvalidOrDuplicate => "CLIENT_ERROR invalid or duplicate flag",
            MetaError::IncorrectMLength => "CLIENT_ERROR incorrect length for M token",
            MetaError::InvalidMsMode => "CLIENT_ERROR invalid mode for ms M token",
            MetaError::InvalidMaMode => "CLIENT_ERROR invalid mode for ma M token",
            MetaError::InvalidInitial => "CLIENT_ERROR invalid numeric initial value",
            MetaError::InvalidDelta => "CLIENT_ERROR invalid numeric delta value",
            MetaError::BadDataChunk => "CLIENT_ERROR bad data chunk",
            MetaError::TooLarge => "SERVER_ERROR object too large for cache",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaCommand {
    /// `mg`
    Get,
    /// `ms`
    Set,
    /// `md`
    Delete,
    /// `ma`
    Arith,
    /// `me`: an item's metadata, for debugging.
    Debug,
    /// `mn`: answers `MN`, the end marker of a quiet pipeline.
    Noop,
}

/// A key as sent, or decoded from base64 into the request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MetaKey<'a> {
    sent: &'a [u8],
    decoded: Option<([u8; MAX_DECODED_KEY], u8)>,
}

impl<'a> MetaKey<'a> {
    fn sent(sent: &'a [u8]) -> MetaKey<'a> {
        MetaKey {
            sent,
            decoded: None,
        }
    }

    /// The key the store sees.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.decoded {
            Some((buf, len)) => &buf[..usize::from(*len)],
            None => self.sent,
        }
    }

    /// Whether the client sent it in base64 (replies then echo it in base64 too).
    pub fn is_binary(&self) -> bool {
        self.decoded.is_some()
    }
}

impl std::fmt::Debug for MetaKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaKey")
            .field("key", &String::from_utf8_lossy(self.as_bytes()))
            .field("binary", &self.is_binary())
            .finish()
    }
}

/// The flags that change what a command does. Numbers are as sent; times are the server's to
/// convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetaOptions {
    /// `q`: leave out the nominal reply (EN for mg, HD for ms/md/ma).
    pub quiet: bool,
    /// `v`: return the value.
    pub value: bool,
    /// `u`: do not bump the item in the eviction order.
    pub no_bump: bool,
    /// `I`: invalidate (md marks stale; ms with C may store over a newer CAS as stale).
    pub invalidate: bool,
    /// `T<ttl>`: the new time to live.
    pub ttl: Option<i32>,
    /// `N<ttl>`: create the item on a miss, with this time to live.
    pub vivify: Option<i32>,
    /// `R<ttl>`: win a recache when less than this is left to live.
    pub recache: Option<i32>,
    /// `F<flags>`: ms's client flags.
    pub client_flags: u32,
    /// `C<cas>`: compare with the item's CAS first.
    pub compare_cas: Option<u64>,
    /// `M<mode>`: ms's or ma's mode letter, checked by the command.
    pub mode: Option<u8>,
    /// `D<delta>`: ma's delta (default 1).
    pub delta: u64,
    /// `J<initial>`: ma's value for an item created by N (default 0).
    pub initial: u64,
}

/// The mode of an `ms` (its `M` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetMode {
    Set,
    /// `ME`: add.
    Add,
    Append,
    Prepend,
    Replace,
}

/// A well-formed meta request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest<'a> {
    pub command: MetaCommand,
    pub key: MetaKey<'a>,
    pub options: MetaOptions,
    /// ms's mode, from M (default set).
    pub set_mode: SetMode,
    /// ma's direction, from M (default increment).
    pub incr: bool,
    /// ms's value.
    pub data: &'a [u8],
    flags: [&'a [u8]; MAX_FLAGS],
    nflags: usize,
}

impl<'a> MetaRequest<'a> {
    /// The flag tokens in the order sent; replies echo the return flags in this order.
    pub fn flags(&self) -> &[&'a [u8]] {
        &self.flags[..self.nflags]
    }

    /// The position among [`MetaRequest::flags`] of the first opaque longer than memcached
    /// accepts, if there is one.
    pub fn long_opaque(&self) -> Option<usize> {
        self.flags()
            .iter()
            .position(|f| f[0] == b'O' && f.len() > MAX_OPAQUE)
    }

    fn new(command: MetaCommand, key: &'a [u8]) -> MetaRequest<'a> {
        MetaRequest {
            command,
            key: MetaKey::sent(key),
            options: MetaOptions {
                delta: 1,
                ..MetaOptions::default()
            },
            set_mode: SetMode::Set,
            incr: true,
            data: &[],
            flags: [&[]; MAX_FLAGS],
            nflags: 0,
        }
    }
}

/// A meta request memcached answers with an error line. Errors after an `ms` line's data length
/// was understood discard the data block too (`swallow` bytes, as they arrive); an `ms` whose
/// value can never fit also removes the key's current item (`unlink`), as memcached does, so
/// that no stale value survives the failed write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaReject<'a> {
    pub error: MetaError,
    pub swallow: usize,
    pub unlink: Option<MetaKey<'a>>,
}

impl MetaReject<'_> {
    fn line(error: MetaError) -> Self {
        MetaReject {
            error,
            swallow: 0,
            unlink: None,
        }
    }
}

/// What [`parse_command_with`] makes of an `mg` or `ma` with an opaque over 32 bytes.
/// memcached notices such an opaque only while it writes the reply: after it has looked the
/// item up (creating it for `N`), changed it (`ma`) and applied the `T` and `N` flags that come
/// before the opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongOpaque {
    /// Refuse it at once with `CLIENT_ERROR opaque token too long` (a proxy, which answers the
    /// error itself).
    Reject,
    /// Parse it as a request, for a server to do as much as memcached before it answers the
    /// error ([`MetaRequest::long_opaque`] says where to stop).
    Run,
}

/// One meta parse step.
#[derive(Debug, PartialEq, Eq)]
pub struct MetaParsed<'a> {
    pub consumed: usize,
    pub outcome: Result<MetaRequest<'a>, MetaReject<'a>>,
}

/// One step of the ASCII protocols: a meta request or a text one.
// A meta request (its flags and decoded key held inline) lives on the stack for one call;
// boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Text(Parsed<'a>),
    Meta(MetaParsed<'a>),
}

impl Command<'_> {
    pub fn consumed(&self) -> usize {
        match self {
            Command::Text(p) => p.consumed,
            Command::Meta(p) => p.consumed,
        }
    }
}

/// Parses one ASCII request (meta or text) from the front of `buf`; a long opaque in `mg` or
/// `ma` is refused ([`LongOpaque::Reject`]).
pub fn parse_command<'a>(buf: &'a [u8], limits: &Limits) -> Result<Command<'a>, Incomplete> {
    parse_command_with(buf, limits, LongOpaque::Reject)
}

/// [`parse_command`], with the choice of what a long opaque in `mg` or `ma` makes.
pub fn parse_command_with<'a>(
    buf: &'a [u8],
    limits: &Limits,
    long_opaque: LongOpaque,
) -> Result<Command<'a>, Incomplete> {
    // Only a line whose first word starts with 'm' can be meta; the rest go straight to the
    // text parser without being tokenized twice.
    let first = buf.iter().position(|b| *b != b' ');
    if first.map(|i| buf[i]) == Some(b'm') {
        if let Some(newline) = memchr(b'\n', buf) {
            let mut line = &buf[..newline];
            if line.len() > 1 && line[line.len() - 1] == b'\r' {
                line = &line[..line.len() - 1];
            }
            if let Some(nul) = memchr(0, line) {
                line = &line[..nul];
            }
            let tokens = Tokens::split(line);
            let command = tokens.get(0);
            if tokens.len > 0 && command.len() == 2 && command[0] == b'm' {
                return parse_meta(&tokens, buf, newline + 1, limits, long_opaque)
                    .map(Command::Meta);
            }
        }
    }
    parse_request(buf, limits).map(Command::Text)
}

fn done<'a>(consumed: usize, outcome: Result<MetaRequest<'a>, MetaReject<'a>>) -> MetaParsed<'a> {
    MetaParsed { consumed, outcome }
}

fn parse_meta<'a>(
    tokens: &Tokens<'a>,
    buf: &'a [u8],
    line_len: usize,
    limits: &Limits,
    long_opaque: LongOpaque,
) -> Result<MetaParsed<'a>, Incomplete> {
    let command = match tokens.get(0)[1] {
        b'g' => MetaCommand::Get,
        b's' => MetaCommand::Set,
        b'd' => MetaCommand::Delete,
        b'a' => MetaCommand::Arith,
        b'e' => MetaCommand::Debug,
        b'n' => return Ok(done(line_len, Ok(MetaRequest::new(MetaCommand::Noop, &[])))),
        _ => return Ok(done(line_len, Err(MetaReject::line(MetaError::Error)))),
    };
    let ntokens = tokens.count();
    let reject = |error| Ok(done(line_len, Err(MetaReject::line(error))));
    if command == MetaCommand::Debug {
        return parse_debug(tokens, line_len, limits);
    }
    if ntokens < 3 {
        return reject(MetaError::Error);
    }
    let key = tokens.get(1);
    if key.len() > limits.max_key_len {
        return reject(MetaError::BadFormat);
    }
    let mut request = MetaRequest::new(command, key);
    match command {
        MetaCommand::Get => {
            if ntokens > MAX_TOKENS {
                return reject(MetaError::OptionsTooLongGet);
            }
            if let Err(e) = read_flags(tokens, 2, &mut request) {
                return reject(e);
            }
            if request.long_opaque().is_some() && long_opaque == LongOpaque::Reject {
                return reject(MetaError::OpaqueTooLong);
            }
            Ok(done(line_len, Ok(request)))
        }
        MetaCommand::Delete | MetaCommand::Arith => {
            if ntokens > MAX_TOKENS {
                return reject(MetaError::OptionsTooLong);
            }
            if read_flags(tokens, 2, &mut request).is_err() {
                return reject(MetaError::InvalidOrDuplicate);
            }
            if command == MetaCommand::Arith {
                match request.options.mode {
                    None | Some(b'I' | b'+') => {}
                    Some(b'D' | b'-') => request.incr = false,
                    Some(_) => return reject(MetaError::InvalidMaMode),
                }
            }
            // memcached's md checks the opaque before it deletes anything.
            if request.long_opaque().is_some()
                && (command == MetaCommand::Delete || long_opaque == LongOpaque::Reject)
            {
                return reject(MetaError::OpaqueTooLong);
            }
            Ok(done(line_len, Ok(request)))
        }
        MetaCommand::Set => parse_set(tokens, buf, line_len, limits, request),
        MetaCommand::Debug | MetaCommand::Noop => unreachable!("handled above"),
    }
}

/// `me <key> [b]`: memcached checks only the key and an exact `b` in third place.
fn parse_debug<'a>(
    tokens: &Tokens<'a>,
    line_len: usize,
    limits: &Limits,
) -> Result<MetaParsed<'a>, Incomplete> {
    let reject = || Ok(done(line_len, Err(MetaReject::line(MetaError::BadFormat))));
    if tokens.count() < 3 || tokens.get(1).len() > limits.max_key_len {
        return reject();
    }
    let mut request = MetaRequest::new(MetaCommand::Debug, tokens.get(1));
    if tokens.count() >= 4 && tokens.get(2) == b"b" {
        match decode_key(tokens.get(1)) {
            Some(key) => request.key = key,
            None => return reject(),
        }
    }
    Ok(done(line_len, Ok(request)))
}

fn parse_set<'a>(
    tokens: &Tokens<'a>,
    buf: &'a [u8],
    line_len: usize,
    limits: &Limits,
    mut request: MetaRequest<'a>,
) -> Result<MetaParsed<'a>, Incomplete> {
    let ntokens = tokens.count();
    let reject = |error| Ok(done(line_len, Err(MetaReject::line(error))));
    if ntokens == 3 {
        return reject(MetaError::BadFormat);
    }
    if ntokens > MAX_TOKENS {
        return reject(MetaError::OptionsTooLong);
    }
    let length = match parse_i32(tokens.get(2)) {
        Some(n) if (0..=i32::MAX - 2).contains(&n) => n as usize,
        _ => return reject(MetaError::BadFormat),
    };
    // From here on memcached knows the data length, and discards the block after an error.
    let block = length + 2;
    let swallow = |error| {
        Ok(done(
            line_len,
            Err(MetaReject {
                error,
                swallow: block,
                unlink: None,
            }),
        ))
    };
    if let Err(e) = read_flags(tokens, 3, &mut request) {
        return swallow(e);
    }
    request.set_mode = match request.options.mode {
        None | Some(b'S') => SetMode::Set,
        Some(b'E') => SetMode::Add,
        Some(b'A') => SetMode::Append,
        Some(b'P') => SetMode::Prepend,
        Some(b'R') => SetMode::Replace,
        Some(_) => return swallow(MetaError::InvalidMsMode),
    };
    if request.long_opaque().is_some() {
        return swallow(MetaError::OpaqueTooLong);
    }
    let key = request.key.as_bytes();
    if key.len() + length + limits.item_overhead > limits.item_size_max {
        return Ok(done(
            line_len,
            Err(MetaReject {
                error: MetaError::TooLarge,
                swallow: block,
                unlink: Some(request.key),
            }),
        ));
    }
    let total = line_len + block;
    if buf.len() < total {
        return Err(Incomplete {
            needed: Some(total),
        });
    }
    if &buf[line_len + length..total] != b"\r\n" {
        return Ok(done(total, Err(MetaReject::line(MetaError::BadDataChunk))));
    }
    request.data = &buf[line_len..line_len + length];
    Ok(done(total, Ok(request)))
}

/// Reads the flags from token `start` on, as memcached's `_meta_flag_preparse` does.
fn read_flags<'a>(
    tokens: &Tokens<'a>,
    start: usize,
    request: &mut MetaRequest<'a>,
) -> Result<(), MetaError> {
    let mut seen = [false; 127];
    let mut failed = None;
    let mut bad = |e: Option<MetaError>| {
        // A bad argument without a message of its own keeps the last one (or the default).
        failed = Some(e.or(failed.flatten()));
    };
    let opts = &mut request.options;
    for i in start..tokens.len {
        let token = tokens.get(i);
        let flag = token[0];
        if flag >= 127 || seen[usize::from(flag)] {
            return Err(MetaError::DuplicateFlag);
        }
        seen[usize::from(flag)] = true;
        let arg = &token[1..];
        match flag {
            b'b' => match decode_key(tokens.get(1)) {
                Some(key) => request.key = key,
                None => bad(Some(MetaError::DecodingKey)),
            },
            b'N' | b'T' | b'R' => match parse_i32(arg) {
                Some(t) => {
                    let slot = match flag {
                        b'N' => &mut opts.vivify,
                        b'T' => &mut opts.ttl,
                        _ => &mut opts.recache,
                    };
                    *slot = Some(t);
                }
                None => bad(Some(MetaError::BadToken)),
            },
            b'F' => match parse_u32_truncating(arg) {
                Some(f) => opts.client_flags = f,
                None => bad(None),
            },
            b'C' => match parse_u64(arg) {
                Some(c) => opts.compare_cas = Some(c),
                None => bad(Some(MetaError::BadToken)),
            },
            b'M' => {
                if token.len() == 2 {
                    opts.mode = Some(token[1]);
                } else {
                    bad(Some(MetaError::IncorrectMLength));
                }
            }
            b'J' => match parse_u64(arg) {
                Some(j) => opts.initial = j,
                None => bad(Some(MetaError::InvalidInitial)),
            },
            b'D' => match parse_u64(arg) {
                Some(d) => opts.delta = d,
                None => bad(Some(MetaError::InvalidDelta)),
            },
            b'v' => opts.value = true,
            b'q' => opts.quiet = true,
            b'u' => opts.no_bump = true,
            b'I' => opts.invalidate = true,
            // Return flags (echoed or answered in order), and P and L, which memcached's proxy
            // uses and the server ignores.
            b'O' | b'P' | b'L' | b'k' | b's' | b't' | b'c' | b'f' | b'l' | b'h' => {}
            _ => return Err(MetaError::InvalidFlag),
        }
        request.flags[request.nflags] = token;
        request.nflags += 1;
    }
    match failed {
        Some(e) => Err(e.unwrap_or(MetaError::BadFormat)),
        None => Ok(()),
    }
}

/// 6-bit value of a base64 character; `=` decodes as 0 and is counted as padding.
fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        b'=' => Some(0),
        _ => None,
    }
}

/// Decodes a base64 key as memcached's decoder does: characters outside the alphabet are
/// skipped, the rest must come in groups of four, and the first group with padding ends the
/// key. `None` when nothing valid is left.
fn decode_key(sent: &[u8]) -> Option<MetaKey<'_>> {
    let valid = sent.iter().filter(|c| sextet(**c).is_some()).count();
    if valid == 0 || valid % 4 != 0 {
        return None;
    }
    let mut buf = [0u8; MAX_DECODED_KEY];
    let mut len = 0;
    let mut group = [0u8; 4];
    let mut filled = 0;
    let mut pad = 0;
    for &c in sent {
        let Some(v) = sextet(c) else { continue };
        if c == b'=' {
            pad += 1;
        }
        group[filled] = v;
        filled += 1;
        if filled == 4 {
            buf[len] = group[0] << 2 | group[1] >> 4;
            buf[len + 1] = group[1] << 4 | group[2] >> 2;
            buf[len + 2] = group[2] << 6 | group[3];
            len += 3;
            filled = 0;
            match pad {
                0 => {}
                1 => {
                    len -= 1;
                    break;
                }
                2 => {
                    len -= 2;
                    break;
                }
                _ => return None,
            }
        }
    }
    Some(MetaKey {
        sent,
        decoded: Some((buf, len as u8)),
    })
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Appends `bytes` in base64 with padding (how binary keys are echoed).
pub fn encode_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(input: &[u8]) -> MetaParsed<'_> {
        match parse_command(input, &Limits::default()) {
            Ok(Command::Meta(m)) => m,
            other => panic!("not meta: {other:?}"),
        }
    }

    fn error(input: &[u8]) -> MetaError {
        meta(input).outcome.expect_err("should be rejected").error
    }

    #[test]
    fn routes_two_letter_m_commands_only() {
        assert!(matches!(
            parse_command(b"mget a\r\n", &Limits::default()),
            Ok(Command::Text(_))
        ));
        assert!(matches!(
            parse_command(b"get a\r\n", &Limits::default()),
            Ok(Command::Text(_))
        ));
        assert_eq!(
            meta(b"  mn\r\n").outcome.unwrap().command,
            MetaCommand::Noop
        );
        assert_eq!(error(b"mz a\r\n"), MetaError::Error);
    }

    #[test]
    fn get_flags_in_order() {
        let r = meta(b"mg foo v c t k O12 q\r\n").outcome.unwrap();
        assert_eq!(r.key.as_bytes(), b"foo");
        assert!(r.options.value && r.options.quiet);
        assert_eq!(r.flags(), &[&b"v"[..], b"c", b"t", b"k", b"O12", b"q"]);
    }

    #[test]
    fn flag_errors_as_memcached_reports_them() {
        assert_eq!(error(b"mg foo v v\r\n"), MetaError::DuplicateFlag);
        assert_eq!(error(b"mg foo \x80\r\n"), MetaError::DuplicateFlag);
        assert_eq!(error(b"mg foo x\r\n"), MetaError::InvalidFlag);
        assert_eq!(error(b"mg foo Tx b\r\n"), MetaError::DecodingKey);
        assert_eq!(error(b"mg foo b Tx\r\n"), MetaError::BadToken);
        assert_eq!(error(b"md foo Cx\r\n"), MetaError::InvalidOrDuplicate);
        assert_eq!(error(b"ma foo Mx\r\n"), MetaError::InvalidMaMode);
        let long = b"mg foo O123456789012345678901234567890123\r\n";
        assert_eq!(error(long), MetaError::OpaqueTooLong);
        // For a server, mg and ma parse, to be run up to the opaque; md is refused still.
        let run = |input| match parse_command_with(input, &Limits::default(), LongOpaque::Run) {
            Ok(Command::Meta(m)) => m,
            other => panic!("not meta: {other:?}"),
        };
        let long = b"mg foo N30 O123456789012345678901234567890123 T5\r\n";
        assert_eq!(run(long).outcome.unwrap().long_opaque(), Some(1));
        let long = b"ma foo O123456789012345678901234567890123\r\n";
        assert_eq!(run(long).outcome.unwrap().long_opaque(), Some(0));
        let long = b"md foo O123456789012345678901234567890123\r\n";
        assert_eq!(
            run(long).outcome.unwrap_err().error,
            MetaError::OpaqueTooLong
        );
        let many = b"mg foo 1 2 3 4 5 6 7 8 9 0 a c d e f g h i j\r\n";
        assert_eq!(error(many), MetaError::OptionsTooLongGet);
    }

    #[test]
    fn set_reads_its_data_block() {
        let p = meta(b"ms foo 3 F5 T10 c\r\nbar\r\nmn\r\n");
        assert_eq!(p.consumed, 24);
        let r = p.outcome.unwrap();
        assert_eq!(r.data, b"bar");
        assert_eq!(r.options.client_flags, 5);
        assert_eq!(r.options.ttl, Some(10));
        assert_eq!(
            parse_command(b"ms foo 3\r\nba", &Limits::default()).unwrap_err(),
            Incomplete { needed: Some(15) }
        );
    }

    #[test]
    fn set_errors_swallow_only_once_the_length_is_known() {
        let p = meta(b"ms foo 1x\r\nx\r\n");
        assert_eq!(p.outcome.unwrap_err().swallow, 0);
        let p = meta(b"ms foo 1 Mxx\r\nx\r\n");
        let reject = p.outcome.unwrap_err();
        assert_eq!(
            (reject.error, reject.swallow),
            (MetaError::IncorrectMLength, 3)
        );
        let p = meta(b"ms foo 2\r\nxyz\r\n");
        assert_eq!(p.consumed, 14);
        assert_eq!(p.outcome.unwrap_err().error, MetaError::BadDataChunk);
    }

    #[test]
    fn too_large_set_unlinks_the_key() {
        let input = format!("ms foo {}\r\n", 2 * 1024 * 1024);
        let reject = meta(input.as_bytes()).outcome.unwrap_err();
        assert_eq!(reject.error, MetaError::TooLarge);
        assert_eq!(reject.unlink.unwrap().as_bytes(), b"foo");
    }

    #[test]
    fn base64_keys_decode_like_memcached() {
        let key = |k: &[u8]| decode_key(k).map(|k| k.as_bytes().to_vec());
        assert_eq!(key(b"Zm9v"), Some(b"foo".to_vec()));
        assert_eq!(key(b"Zg=="), Some(b"f".to_vec()));
        assert_eq!(key(b"Zm=v"), Some(vec![0x66, 0x60]));
        assert_eq!(key(b"Zm+/"), Some(vec![0x66, 0x6f, 0xbf]));
        assert_eq!(key(b"===="), None);
        assert_eq!(key(b"Zm9vYg"), None);
        assert_eq!(key(b"Zm-v"), None);
        let mut out = Vec::new();
        encode_base64(&mut out, b"f");
        encode_base64(&mut out, &[0x66, 0x6f, 0xbf]);
        assert_eq!(out, b"Zg==Zm+/");
    }

    #[test]
    fn debug_takes_an_exact_b() {
        let r = meta(b"me Zm9v b\r\n").outcome.unwrap();
        assert_eq!(r.key.as_bytes(), b"foo");
        assert_eq!(error(b"me\r\n"), MetaError::BadFormat);
        assert_eq!(error(b"me foo b\r\n"), MetaError::BadFormat);
    }
}
