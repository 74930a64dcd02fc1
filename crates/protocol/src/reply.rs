//! Encoders for the replies of the text protocol, and memcached's exact error lines.
//!
//! Replies are appended to the caller's output buffer so a pipeline of requests leaves in as few
//! writes as possible.

/// Error lines that memcached sends for malformed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReply {
    /// Unknown command or wrong number of tokens.
    Error,
    BadFormat,
    /// A key over 250 bytes in a get, gets, gat or gats: `BadFormat`'s line, and memcached also
    /// throws away every reply it had queued and not yet sent (those since the connection last
    /// wrote: its last completed get, `mn`, or the end of the input it had read).
    GetKeyTooLong,
    BadDataChunk,
    InvalidExptime,
    InvalidDelta,
    /// `delete <key> <time>` with a non-zero time.
    DeleteUsage,
}

impl ErrorReply {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReply::Error => "ERROR",
            ErrorReply::BadFormat | ErrorReply::GetKeyTooLong => {
                "CLIENT_ERROR bad command line format"
            }
            ErrorReply::BadDataChunk => "CLIENT_ERROR bad data chunk",
            ErrorReply::InvalidExptime => "CLIENT_ERROR invalid exptime argument",
            ErrorReply::InvalidDelta => "CLIENT_ERROR invalid numeric delta argument",
            ErrorReply::DeleteUsage => {
                "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]"
            }
        }
    }
}

pub const STORED: &[u8] = b"STORED\r\n";
pub const NOT_STORED: &[u8] = b"NOT_STORED\r\n";
pub const EXISTS: &[u8] = b"EXISTS\r\n";
pub const NOT_FOUND: &[u8] = b"NOT_FOUND\r\n";
pub const DELETED: &[u8] = b"DELETED\r\n";
pub const TOUCHED: &[u8] = b"TOUCHED\r\n";
pub const OK: &[u8] = b"OK\r\n";
pub const END: &[u8] = b"END\r\n";
pub const RESET: &[u8] = b"RESET\r\n";
pub const MN: &[u8] = b"MN\r\n";
pub const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
pub const OUT_OF_MEMORY_STORING: &[u8] = b"SERVER_ERROR out of memory storing object\r\n";
pub const OUT_OF_MEMORY: &[u8] = b"SERVER_ERROR out of memory\r\n";
pub const NON_NUMERIC: &[u8] = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";

/// Appends `line` and `\r\n`.
pub fn line(out: &mut Vec<u8>, line: &[u8]) {
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
}

/// Appends `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`.
pub fn value(out: &mut Vec<u8>, key: &[u8], flags: u32, data: &[u8], cas: Option<u64>) {
    out.reserve(key.len() + data.len() + 48);
    value_header(out, key, flags, data.len(), cas);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// `VALUE <key> <flags> <bytes>[ <cas>]\r\n`: the line [`value`] puts before the data, for a
/// caller that sends the data from elsewhere.
pub fn value_header(out: &mut Vec<u8>, key: &[u8], flags: u32, len: usize, cas: Option<u64>) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.push(b' ');
    out.extend_from_slice(num.format(flags).as_bytes());
    out.push(b' ');
    out.extend_from_slice(num.format(len).as_bytes());
    if let Some(cas) = cas {
        out.push(b' ');
        out.extend_from_slice(num.format(cas).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a decimal number line (the reply of incr/decr).
pub fn number(out: &mut Vec<u8>, n: u64) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(num.format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `STAT <name> <value>\r\n`.
pub fn stat(out: &mut Vec<u8>, name: &str, value: impl std::fmt::Display) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "STAT {name} {value}\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_line_with_and_without_cas() {
        let mut out = Vec::new();
        value(&mut out, b"k", 7, b"abc", None);
        value(&mut out, b"k", 0, b"", Some(42));
        assert_eq!(out, b"VALUE k 7 3\r\nabc\r\nVALUE k 0 0 42\r\n\r\n");
    }
}
