//! Authentication: the users file, SASL PLAIN as the binary protocol carries it, and ASCII
//! authentication (`-Y`).
//!
//! memcached reads users from a file of `user:password` lines (its `MEMCACHED_SASL_PWDB` for
//! SASL, and `-Y` for ASCII authentication). The file is read once, before any socket is bound,
//! so a missing or malformed file stops the server with a message naming the file and line.
//!
//! ASCII authentication: until a connection has authenticated, its only accepted request is a
//! `set` of any key whose data is `user password`; [`ascii_auth`] reads that request from the
//! connection's input and says what to answer.

use std::path::Path;

/// The `-Y` users file and where it was read from (`stats settings` shows the path).
#[derive(Debug, Clone)]
pub struct AuthFile {
    pub path: std::path::PathBuf,
    pub users: Users,
}

/// Users and their passwords.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Users {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Users {
    // Passwords stay out of logs and `--print-config`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Users({} entries)", self.entries.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read users file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("users file {path}, line {line}: expected user:password")]
    Malformed { path: String, line: usize },
    #[error("users file {path} holds no user")]
    Empty { path: String },
}

impl Users {
    /// Reads `user:password` lines; blank lines are skipped, a trailing `\r` is ignored.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        Users::load_with(path, Users::parse)
    }

    /// Reads and parses a users file; an empty one is an error, since nobody could ever
    /// authenticate (memcached starts with it anyway, a mistake worth stopping for).
    fn load_with(
        path: &Path,
        parse: fn(&[u8]) -> Result<Users, usize>,
    ) -> Result<Users, UsersError> {
        let name = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| UsersError::Read {
            path: name.clone(),
            source,
        })?;
        let users = parse(&text).map_err(|line| UsersError::Malformed {
            path: name.clone(),
            line,
        })?;
        if users.entries.is_empty() {
            return Err(UsersError::Empty { path: name });
        }
        Ok(users)
    }

    /// Parses the file's contents; the error is the 1-based number of a malformed line.
    pub fn parse(text: &[u8]) -> Result<Users, usize> {
        let mut entries = Vec::new();
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let colon = line.iter().position(|b| *b == b':').ok_or(i + 1)?;
            let (user, password) = (&line[..colon], &line[colon + 1..]);
            if user.is_empty() {
                return Err(i + 1);
            }
            entries.push((user.to_vec(), password.to_vec()));
        }
        Ok(Users { entries })
    }

    /// Reads an ASCII authentication file (`-Y`) with memcached's rules, which are stricter than
    /// the SASL file's: every line, blank ones included, must hold a `:`, and the password ends
    /// at the first `\r` or `\n`. Unlike memcached, a last line without a newline keeps its
    /// last character and there is no limit of eight users.
    pub fn load_authfile(path: &Path) -> Result<Users, UsersError> {
        Users::load_with(path, Users::parse_authfile)
    }

    /// The `-Y` file's contents; the error is the 1-based number of a malformed line.
    pub fn parse_authfile(text: &[u8]) -> Result<Users, usize> {
        let mut entries = Vec::new();
        if text.is_empty() {
            return Ok(Users { entries });
        }
        let lines = text.strip_suffix(b"\n").unwrap_or(text);
        for (i, line) in lines.split(|b| *b == b'\n').enumerate() {
            let colon = line.iter().position(|b| *b == b':').ok_or(i + 1)?;
            let password = &line[colon + 1..];
            let end = password
                .iter()
                .position(|b| *b == b'\r')
                .unwrap_or(password.len());
            entries.push((line[..colon].to_vec(), password[..end].to_vec()));
        }
        Ok(Users { entries })
    }

    pub fn check(&self, user: &[u8], password: &[u8]) -> bool {
        self.entries
            .iter()
            .any(|(u, p)| u == user && constant_time_eq(p, password))
    }
}

/// Compares without stopping at the first difference, so the time taken does not tell an
/// attacker how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The mechanisms we offer: PLAIN only (RFC 4616); run it over a trusted network or TLS
/// terminated in front, as with memcached.
pub const SASL_MECHS: &[u8] = b"PLAIN";

/// Checks a SASL PLAIN message, `[authzid] NUL authcid NUL passwd` (RFC 4616 section 2).
/// An authorization identity other than the user itself is refused.
pub fn check_plain(users: &Users, message: &[u8]) -> bool {
    let mut parts = message.splitn(3, |b| *b == 0);
    let (Some(authzid), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    (authzid.is_empty() || authzid == user) && users.check(user, password)
}

/// Longest request line memcached waits for before authentication; past it, without a
/// newline, the client is sending junk and the connection is closed.
const AUTH_LINE_MAX: usize = 2048;

/// Authentication data longer than this is not held in memory: no users file line is that long,
/// so it is discarded as it arrives and answered as a failure.
pub const AUTH_DATA_MAX: usize = 64 * 1024;

/// What to do with a connection's input before it has authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsciiAuth {
    /// No whole request yet.
    Incomplete,
    /// A line with no newline within [`AUTH_LINE_MAX`] bytes.
    Close,
    /// Consume `consumed` bytes, discard `swallow` more as they arrive, answer `verdict`.
    Answer {
        consumed: usize,
        swallow: usize,
        verdict: Verdict,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Anything but `set <key> <flags> <exptime> <bytes>`.
    Unauthenticated,
    /// The data block did not end with `\r\n`.
    BadTermination,
    /// The data held fewer than two words.
    BadFormat,
    Denied,
    Granted,
}

impl Verdict {
    /// memcached's reply; a successful authentication looks like a stored item.
    pub fn reply(self) -> &'static [u8] {
        match self {
            Verdict::Unauthenticated => b"CLIENT_ERROR unauthenticated\r\n",
            Verdict::BadTermination => b"CLIENT_ERROR bad command line termination\r\n",
            Verdict::BadFormat => b"CLIENT_ERROR bad authentication token format\r\n",
            Verdict::Denied => b"CLIENT_ERROR authentication failure\r\n",
            Verdict::Granted => b"STORED\r\n",
        }
    }

    /// Whether memcached counts it in `auth_cmds` (malformed attempts are not counted).
    pub fn is_attempt(self) -> bool {
        matches!(self, Verdict::Denied | Verdict::Granted)
    }
}

/// Reads one request of an unauthenticated ASCII connection: `set <key> <flags> <exptime>
/// <bytes> [noreply]\r\n` then `<bytes>` of `user password` and `\r\n`. Key, flags, exptime and
/// noreply are ignored, as memcached does; words after the password too. Nothing is consumed
/// until the whole request is in `input`.
pub fn ascii_auth(input: &[u8], users: &Users) -> AsciiAuth {
    // memcached waits for two bytes before looking: no request is shorter.
    if input.len() < 2 {
        return AsciiAuth::Incomplete;
    }
    let Some(newline) = input.iter().position(|b| *b == b'\n') else {
        return if input.len() > AUTH_LINE_MAX {
            AsciiAuth::Close
        } else {
            AsciiAuth::Incomplete
        };
    };
    let line_end = newline + 1;
    let unauthenticated = AsciiAuth::Answer {
        consumed: line_end,
        swallow: 0,
        verdict: Verdict::Unauthenticated,
    };
    // Only spaces separate words, so a `\r` before the newline stays in the last word, where
    // the number parser takes it as trailing white space.
    let mut words = input[..newline]
        .split(|b| *b == b' ')
        .filter(|w| !w.is_empty());
    let (Some(b"set"), Some(_key), Some(_flags), Some(_exptime), Some(bytes)) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return unauthenticated;
    };
    let Some(size) = parse_c_ulong(bytes) else {
        return unauthenticated;
    };
    let data_len = (size as usize).saturating_add(2);
    if data_len > AUTH_DATA_MAX {
        return AsciiAuth::Answer {
            consumed: line_end,
            swallow: data_len,
            verdict: Verdict::Denied,
        };
    }
    let Some(data) = input.get(line_end..line_end + data_len) else {
        return AsciiAuth::Incomplete;
    };
    let consumed = line_end + data_len;
    let verdict = match data.strip_suffix(b"\r\n") {
        None => Verdict::BadTermination,
        Some(payload) => {
            let mut words = payload.split(|b| *b == b' ').filter(|w| !w.is_empty());
            match (words.next(), words.next()) {
                (Some(user), Some(password)) if users.check(user, password) => Verdict::Granted,
                (Some(_), Some(_)) => Verdict::Denied,
                _ => Verdict::BadFormat,
            }
        }
    };
    AsciiAuth::Answer {
        consumed,
        swallow: 0,
        verdict,
    }
}

/// The byte count as memcached reads it: C's `strtoul` (leading white space, a sign, digits, then
/// white space or the end), a negative number refused, and the result cut to 32 bits.
fn parse_c_ulong(word: &[u8]) -> Option<u32> {
    let start = word.iter().position(|b| !is_c_space(*b))?;
    let mut rest = &word[start..];
    let negative = match rest.first() {
        Some(b'-') => {
            rest = &rest[1..];
            true
        }
        Some(b'+') => {
            rest = &rest[1..];
            false
        }
        _ => false,
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || rest.get(digits).is_some_and(|b| !is_c_space(*b)) {
        return None;
    }
    let mut value: u64 = 0;
    for d in &rest[..digits] {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        value = value.wrapping_neg();
        if (value as i64) < 0 {
            return None;
        }
    }
    Some(value as u32)
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_lines() {
        let users = Users::parse(b"alice:secret\r\n\nbob:p:w\n").unwrap();
        assert!(users.check(b"alice", b"secret"));
        assert!(users.check(b"bob", b"p:w"));
        assert!(!users.check(b"alice", b"secre"));
        assert_eq!(Users::parse(b"ok:1\nnocolon\n"), Err(2));
        assert_eq!(Users::parse(b":x\n"), Err(1));
    }

    #[test]
    fn plain_messages() {
        let users = Users::parse(b"u:p\n").unwrap();
        assert!(check_plain(&users, b"\0u\0p"));
        assert!(check_plain(&users, b"u\0u\0p"));
        assert!(!check_plain(&users, b"x\0u\0p"));
        assert!(!check_plain(&users, b"\0u\0q"));
        assert!(!check_plain(&users, b"\0u"));
    }

    #[test]
    fn authfile_lines_follow_memcached() {
        let users = Users::parse_authfile(b"alice:secret\r\n:empty\nbob:p:w").unwrap();
        assert!(users.check(b"alice", b"secret"));
        assert!(users.check(b"", b"empty"));
        assert!(users.check(b"bob", b"p:w"));
        assert_eq!(Users::parse_authfile(b"a:b\n\nc:d\n"), Err(2));
        assert_eq!(Users::parse_authfile(b"nocolon\n"), Err(1));
        assert_eq!(Users::parse_authfile(b""), Ok(Users::default()));
        assert_eq!(Users::parse_authfile(b"\n"), Err(1));
    }

    fn answer(consumed: usize, verdict: Verdict) -> AsciiAuth {
        AsciiAuth::Answer {
            consumed,
            swallow: 0,
            verdict,
        }
    }

    #[test]
    fn ascii_auth_requests() {
        let users = Users::parse_authfile(b"alice:wonder\n").unwrap();
        let auth = |input: &[u8]| ascii_auth(input, &users);
        let ok = b"set k 0 0 12\r\nalice wonder\r\n";
        assert_eq!(auth(ok), answer(ok.len(), Verdict::Granted));
        for partial in 0..ok.len() {
            assert_eq!(auth(&ok[..partial]), AsciiAuth::Incomplete);
        }
        assert_eq!(
            auth(b"set k 0 0 18 noreply\nalice wonder extra\r\nget"),
            answer(41, Verdict::Granted)
        );
        assert_eq!(
            auth(b"set k 0 0 12\r\nalice wondex\r\n"),
            answer(28, Verdict::Denied)
        );
        assert_eq!(auth(b"get k\r\n"), answer(7, Verdict::Unauthenticated));
        assert_eq!(
            auth(b"SET k 0 0 1\r\n"),
            answer(13, Verdict::Unauthenticated)
        );
        assert_eq!(
            auth(b"set k 0 0 -1\r\n"),
            answer(14, Verdict::Unauthenticated)
        );
        assert_eq!(
            auth(b"set k 0 0 3\r\n a \r\n"),
            answer(18, Verdict::BadFormat)
        );
        assert_eq!(
            auth(b"set k 0 0 3\r\na bXX"),
            answer(18, Verdict::BadTermination)
        );
        assert_eq!(auth(&[b'x'; AUTH_LINE_MAX + 1]), AsciiAuth::Close);
        assert_eq!(
            auth(b"set k 0 0 4294967295\r\n"),
            AsciiAuth::Answer {
                consumed: 22,
                swallow: 4294967297,
                verdict: Verdict::Denied
            }
        );
    }

    #[test]
    fn byte_counts_read_as_strtoul() {
        assert_eq!(parse_c_ulong(b"12\r"), Some(12));
        assert_eq!(parse_c_ulong(b"+7"), Some(7));
        assert_eq!(parse_c_ulong(b"-0"), Some(0));
        assert_eq!(parse_c_ulong(b"-1"), None);
        assert_eq!(parse_c_ulong(b"12x"), None);
        assert_eq!(parse_c_ulong(b"4294967296"), Some(0));
        assert_eq!(parse_c_ulong(b"99999999999999999999"), None);
        assert_eq!(parse_c_ulong(b"\r"), None);
    }
}
