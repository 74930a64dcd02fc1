//! Authentication: the users file, and SASL PLAIN as the binary protocol carries it.
//!
//! memcached reads users from a file of `user:password` lines (its `MEMCACHED_SASL_PWDB` for
//! SASL, and `-Y` for ASCII authentication). The file is read once, before any socket is bound,
//! so a missing or malformed file stops the server with a message naming the file and line.

use std::path::Path;

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
        let name = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| UsersError::Read {
            path: name.clone(),
            source,
        })?;
        let users = Users::parse(&text).map_err(|line| UsersError::Malformed {
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
}
