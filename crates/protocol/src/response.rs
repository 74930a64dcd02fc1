//! Parsing of memcached's replies, as the proxy reads them from its backends.
//!
//! The caller keeps a read buffer, calls [`parse_response`] on its front in a loop, and advances
//! the buffer by [`ParsedResponse::consumed`] after each step; `Err(Incomplete)` means "read
//! more". One step yields one reply line (with its data block for `VALUE`/`VA`): a multi-get's
//! answer is several `Value` steps and then `End`, a `stats` answer several `Stat` steps and then
//! `End`, so the caller decides from the request it sent when a reply is complete.
//!
//! ```text
//! VALUE <key> <flags> <bytes>[ <cas unique>]\r\n<data>\r\n      get/gets/gat/gats, one per hit
//! END\r\n                                                       end of a get or stats reply
//! STORED | NOT_STORED | EXISTS | NOT_FOUND | DELETED | TOUCHED | OK | RESET \r\n
//! <decimal>\r\n                                                 incr/decr
//! VERSION <text>\r\n          STAT <name> <value>\r\n
//! ERROR[ <text>]\r\n          CLIENT_ERROR <text>\r\n       SERVER_ERROR <text>\r\n
//! HD|EN|NF|NS|EX|MN[ <flags>]\r\n    VA <bytes>[ <flags>]\r\n<data>\r\n     meta commands
//! ME <key> <name>=<value>...\r\n                                  me (debug)
//! ```
//!
//! A line that is none of these (or a data block not followed by `\r\n`) is returned as
//! [`Response::Unknown`]: the byte stream is out of step with the requests, and the only safe
//! thing for the caller is to drop the connection.

use crate::number::{parse_u32_truncating, parse_u64};
use crate::text::Incomplete;

/// The longest reply line we wait for. memcached's longest lines are `VALUE` headers (a 250-byte
/// key and three numbers) and `STAT` lines; anything far beyond that is not a memcached reply,
/// and waiting for its end would let a broken backend grow our buffer without bound.
const MAX_REPLY_LINE: usize = 8 * 1024;

/// One-word replies that carry no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    Ok,
    Reset,
}

impl Status {
    /// The reply line, with its `\r\n`, as memcached sends it.
    pub fn as_line(self) -> &'static [u8] {
        match self {
            Status::Stored => b"STORED\r\n",
            Status::NotStored => b"NOT_STORED\r\n",
            Status::Exists => b"EXISTS\r\n",
            Status::NotFound => b"NOT_FOUND\r\n",
            Status::Deleted => b"DELETED\r\n",
            Status::Touched => b"TOUCHED\r\n",
            Status::Ok => b"OK\r\n",
            Status::Reset => b"RESET\r\n",
        }
    }
}

/// The two-letter code of a meta command's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaCode {
    /// `HD`: success, no value.
    Header,
    /// `VA`: success with a value.
    Value,
    /// `EN`: miss.
    Miss,
    /// `NF`: not found.
    NotFound,
    /// `NS`: not stored.
    NotStored,
    /// `EX`: CAS mismatch.
    Exists,
    /// `MN`: the reply to `mn`.
    Noop,
    /// `ME`: the reply to `me` (an item's metadata as `name=value` pairs).
    Debug,
}

/// One reply line, borrowing from the caller's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    Value {
        key: &'a [u8],
        flags: u32,
        data: &'a [u8],
        cas: Option<u64>,
    },
    End,
    Status(Status),
    /// The new value after incr/decr.
    Number(u64),
    Version(&'a [u8]),
    Stat {
        name: &'a [u8],
        value: &'a [u8],
    },
    /// `ERROR`, with the text memcached sometimes appends (empty when none).
    Error(&'a [u8]),
    ClientError(&'a [u8]),
    ServerError(&'a [u8]),
    /// A meta reply; `flags` is the rest of the line after the code (and the size, for `VA`).
    Meta {
        code: MetaCode,
        flags: &'a [u8],
        data: Option<&'a [u8]>,
    },
    /// Not a memcached reply: the stream is out of step.
    Unknown(&'a [u8]),
}

/// One parse step: the reply and how many bytes of the buffer it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedResponse<'a> {
    pub response: Response<'a>,
    pub consumed: usize,
}

/// Parses one reply from the front of `buf`.
pub fn parse_response(buf: &[u8]) -> Result<ParsedResponse<'_>, Incomplete> {
    let Some(newline) = buf.iter().position(|b| *b == b'\n') else {
        if buf.len() > MAX_REPLY_LINE {
            return Ok(ParsedResponse {
                response: Response::Unknown(buf),
                consumed: buf.len(),
            });
        }
        return Err(Incomplete { needed: None });
    };
    let line_len = newline + 1;
    let line = buf[..newline]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..newline]);
    let (word, rest) = match line.iter().position(|b| *b == b' ') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &line[line.len()..]),
    };
    let single = |response| {
        Ok(ParsedResponse {
            response,
            consumed: line_len,
        })
    };
    match word {
        b"VALUE" => parse_value(buf, line, rest, line_len),
        b"VA" => parse_meta_value(buf, line, rest, line_len),
        b"END" if rest.is_empty() => single(Response::End),
        b"STAT" => {
            let (name, value) = match rest.iter().position(|b| *b == b' ') {
                Some(space) => (&rest[..space], &rest[space + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            single(Response::Stat { name, value })
        }
        b"VERSION" => single(Response::Version(rest)),
        b"ERROR" => single(Response::Error(rest)),
        b"CLIENT_ERROR" => single(Response::ClientError(rest)),
        b"SERVER_ERROR" => single(Response::ServerError(rest)),
        _ if rest.is_empty() => single(match status(word) {
            Some(s) => Response::Status(s),
            None => match meta_code(word) {
                Some(code) => Response::Meta {
                    code,
                    flags: rest,
                    data: None,
                },
                None => match number(word) {
                    Some(n) => Response::Number(n),
                    None => Response::Unknown(line),
                },
            },
        }),
        _ => single(match meta_code(word) {
            Some(code) => Response::Meta {
                code,
                flags: rest,
                data: None,
            },
            None => Response::Unknown(line),
        }),
    }
}

fn status(word: &[u8]) -> Option<Status> {
    Some(match word {
        b"STORED" => Status::Stored,
        b"NOT_STORED" => Status::NotStored,
        b"EXISTS" => Status::Exists,
        b"NOT_FOUND" => Status::NotFound,
        b"DELETED" => Status::Deleted,
        b"TOUCHED" => Status::Touched,
        b"OK" => Status::Ok,
        b"RESET" => Status::Reset,
        _ => return None,
    })
}

fn meta_code(word: &[u8]) -> Option<MetaCode> {
    Some(match word {
        b"HD" => MetaCode::Header,
        b"EN" => MetaCode::Miss,
        b"NF" => MetaCode::NotFound,
        b"NS" => MetaCode::NotStored,
        b"EX" => MetaCode::Exists,
        b"MN" => MetaCode::Noop,
        b"ME" => MetaCode::Debug,
        _ => return None,
    })
}

/// An incr/decr result: digits only (memcached never signs or pads it).
fn number(word: &[u8]) -> Option<u64> {
    if word.is_empty() || !word.iter().all(u8::is_ascii_digit) {
        return None;
    }
    parse_u64(word)
}

/// Splits a data block of `len` bytes after the line; `Err` while it has not fully arrived.
fn data_block(buf: &[u8], line_len: usize, len: usize) -> Result<Option<&[u8]>, Incomplete> {
    // A length no buffer can hold (a server's bytes, not ours) is a bad reply, not an overflow.
    let Some(total) = line_len.checked_add(len).and_then(|t| t.checked_add(2)) else {
        return Ok(None);
    };
    if buf.len() < total {
        return Err(Incomplete {
            needed: Some(total),
        });
    }
    if &buf[line_len + len..total] != b"\r\n" {
        return Ok(None);
    }
    Ok(Some(&buf[line_len..line_len + len]))
}

fn parse_value<'a>(
    buf: &'a [u8],
    line: &'a [u8],
    rest: &'a [u8],
    line_len: usize,
) -> Result<ParsedResponse<'a>, Incomplete> {
    let unknown = Ok(ParsedResponse {
        response: Response::Unknown(line),
        consumed: line_len,
    });
    let mut fields = rest.split(|b| *b == b' ');
    let (Some(key), Some(flags), Some(len)) = (fields.next(), fields.next(), fields.next()) else {
        return unknown;
    };
    let cas = fields.next();
    if fields.next().is_some() || key.is_empty() {
        return unknown;
    }
    let (Some(flags), Some(len)) = (parse_u32_truncating(flags), number(len)) else {
        return unknown;
    };
    let cas = match cas.map(number) {
        None => None,
        Some(Some(c)) => Some(c),
        Some(None) => return unknown,
    };
    let Ok(len) = usize::try_from(len) else {
        return unknown;
    };
    match data_block(buf, line_len, len)? {
        Some(data) => Ok(ParsedResponse {
            response: Response::Value {
                key,
                flags,
                data,
                cas,
            },
            consumed: line_len + len + 2,
        }),
        None => unknown,
    }
}

fn parse_meta_value<'a>(
    buf: &'a [u8],
    line: &'a [u8],
    rest: &'a [u8],
    line_len: usize,
) -> Result<ParsedResponse<'a>, Incomplete> {
    let unknown = Ok(ParsedResponse {
        response: Response::Unknown(line),
        consumed: line_len,
    });
    let (size, flags) = match rest.iter().position(|b| *b == b' ') {
        Some(space) => (&rest[..space], &rest[space + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    let Some(len) = number(size).and_then(|n| usize::try_from(n).ok()) else {
        return unknown;
    };
    match data_block(buf, line_len, len)? {
        Some(data) => Ok(ParsedResponse {
            response: Response::Meta {
                code: MetaCode::Value,
                flags,
                data: Some(data),
            },
            consumed: line_len + len + 2,
        }),
        None => unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> Response<'_> {
        let parsed = parse_response(input).expect("complete");
        assert_eq!(parsed.consumed, input.len(), "{input:?}");
        parsed.response
    }

    #[test]
    fn value_with_and_without_cas() {
        assert_eq!(
            one(b"VALUE k 5 3\r\nabc\r\n"),
            Response::Value {
                key: b"k",
                flags: 5,
                data: b"abc",
                cas: None
            }
        );
        assert_eq!(
            one(b"VALUE k 0 0 42\r\n\r\n"),
            Response::Value {
                key: b"k",
                flags: 0,
                data: b"",
                cas: Some(42)
            }
        );
    }

    #[test]
    fn value_data_may_contain_line_ends() {
        assert_eq!(
            one(b"VALUE k 0 4\r\n\r\n\r\n\r\n"),
            Response::Value {
                key: b"k",
                flags: 0,
                data: b"\r\n\r\n",
                cas: None
            }
        );
    }

    #[test]
    fn a_value_length_past_any_buffer_is_a_bad_reply() {
        let line = format!("VALUE k 0 {}\r\nabc", u64::MAX);
        let parsed = parse_response(line.as_bytes()).expect("answered, not incomplete");
        assert!(
            matches!(parsed.response, Response::Unknown(_)),
            "{parsed:?}"
        );
    }

    #[test]
    fn incomplete_value_reports_needed_length() {
        assert_eq!(
            parse_response(b"VALUE k 0 10\r\nabc").unwrap_err(),
            Incomplete { needed: Some(26) }
        );
        assert_eq!(
            parse_response(b"VALUE k 0").unwrap_err(),
            Incomplete { needed: None }
        );
        assert_eq!(
            parse_response(b"STORED\r").unwrap_err(),
            Incomplete { needed: None }
        );
    }

    #[test]
    fn a_get_reply_is_values_then_end() {
        let input = b"VALUE a 1 1\r\nx\r\nVALUE b 2 2\r\nyy\r\nEND\r\n";
        let mut at = 0;
        let mut seen = Vec::new();
        loop {
            let parsed = parse_response(&input[at..]).unwrap();
            at += parsed.consumed;
            match parsed.response {
                Response::Value { key, .. } => seen.push(key.to_vec()),
                Response::End => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(at, input.len());
        assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn status_words() {
        for (input, status) in [
            (&b"STORED\r\n"[..], Status::Stored),
            (b"NOT_STORED\r\n", Status::NotStored),
            (b"EXISTS\r\n", Status::Exists),
            (b"NOT_FOUND\r\n", Status::NotFound),
            (b"DELETED\r\n", Status::Deleted),
            (b"TOUCHED\r\n", Status::Touched),
            (b"OK\r\n", Status::Ok),
            (b"RESET\r\n", Status::Reset),
        ] {
            assert_eq!(one(input), Response::Status(status));
            assert_eq!(status.as_line(), input);
        }
    }

    #[test]
    fn numbers_version_stats_and_errors() {
        assert_eq!(one(b"18446744073709551615\r\n"), Response::Number(u64::MAX));
        assert_eq!(one(b"VERSION 1.6.18\r\n"), Response::Version(b"1.6.18"));
        assert_eq!(
            one(b"STAT curr_items 3\r\n"),
            Response::Stat {
                name: b"curr_items",
                value: b"3"
            }
        );
        assert_eq!(
            one(b"STAT version 1.6.18 x\r\n"),
            Response::Stat {
                name: b"version",
                value: b"1.6.18 x"
            }
        );
        assert_eq!(one(b"ERROR\r\n"), Response::Error(b""));
        assert_eq!(
            one(b"CLIENT_ERROR bad data chunk\r\n"),
            Response::ClientError(b"bad data chunk")
        );
        assert_eq!(
            one(b"SERVER_ERROR out of memory\r\n"),
            Response::ServerError(b"out of memory")
        );
        assert_eq!(one(b"END\r\n"), Response::End);
    }

    #[test]
    fn meta_replies() {
        assert_eq!(
            one(b"VA 2 f5 t-1\r\nhi\r\n"),
            Response::Meta {
                code: MetaCode::Value,
                flags: b"f5 t-1",
                data: Some(b"hi")
            }
        );
        assert_eq!(
            one(b"HD c7\r\n"),
            Response::Meta {
                code: MetaCode::Header,
                flags: b"c7",
                data: None
            }
        );
        assert_eq!(
            one(b"EN\r\n"),
            Response::Meta {
                code: MetaCode::Miss,
                flags: b"",
                data: None
            }
        );
        assert_eq!(
            one(b"ME foo exp=-1 la=0 cas=6\r\n"),
            Response::Meta {
                code: MetaCode::Debug,
                flags: b"foo exp=-1 la=0 cas=6",
                data: None
            }
        );
        assert_eq!(
            one(b"MN\r\n"),
            Response::Meta {
                code: MetaCode::Noop,
                flags: b"",
                data: None
            }
        );
    }

    #[test]
    fn garbage_is_unknown() {
        assert_eq!(one(b"HELLO\r\n"), Response::Unknown(b"HELLO"));
        assert_eq!(one(b"-1\r\n"), Response::Unknown(b"-1"));
        assert_eq!(one(b"STORED now\r\n"), Response::Unknown(b"STORED now"));
        assert_eq!(one(b"VALUE k x 1\r\n"), Response::Unknown(b"VALUE k x 1"));
        let bad_block = parse_response(b"VALUE k 0 1\r\nxyz\r\n").unwrap();
        assert!(matches!(bad_block.response, Response::Unknown(_)));
        let runaway = vec![b'x'; MAX_REPLY_LINE + 1];
        assert_eq!(
            parse_response(&runaway).unwrap().response,
            Response::Unknown(&runaway[..])
        );
    }
}
