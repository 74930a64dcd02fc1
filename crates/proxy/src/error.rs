//! The proxy's errors. Each says where it came from ([`Origin`]) and whether trying again can
//! help, so callers (the binary, a client wrapper, logs) can act on it without parsing text.

use std::fmt;

use crate::backend::BackendError;
use crate::config::ConfigError;

/// Where an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client sent something wrong or went away.
    Client,
    /// A cache server failed, timed out or is down.
    Backend,
    /// The proxy itself: its configuration or its host (ports, sockets).
    Internal,
}

/// The causes (an OS error, a configuration error) are part of each message rather than a
/// source: the binary prints an error with its chain of sources, which showed each twice.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid configuration: {0}")]
    Config(ConfigError),
    /// `hint`: what to do about it, when known (empty, or starting with `; `).
    #[error("cannot listen on {addr}: {error}{hint}")]
    Bind {
        addr: String,
        error: std::io::Error,
        hint: String,
    },
    /// Every replica of a key failed or is down.
    #[error("no replica answered ({})", Reasons(.reasons))]
    Unavailable { reasons: Vec<BackendError> },
    #[error("client {peer}: {error}")]
    Client { peer: String, error: std::io::Error },
}

impl From<ConfigError> for ProxyError {
    fn from(error: ConfigError) -> ProxyError {
        ProxyError::Config(error)
    }
}

impl ProxyError {
    /// A listener that could not be opened on `addr`.
    pub fn bind(addr: impl Into<String>, error: std::io::Error) -> ProxyError {
        ProxyError::Bind {
            addr: addr.into(),
            error,
            hint: String::new(),
        }
    }

    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::Config(_) | ProxyError::Bind { .. } => Origin::Internal,
            ProxyError::Unavailable { .. } => Origin::Backend,
            ProxyError::Client { .. } => Origin::Client,
        }
    }

    /// Whether the same action may succeed if tried again later.
    pub fn retryable(&self) -> bool {
        match self {
            ProxyError::Config(_) | ProxyError::Client { .. } => false,
            // The address may be freed, or the interface come up.
            ProxyError::Bind { .. } => true,
            ProxyError::Unavailable { reasons } => {
                reasons.is_empty() || reasons.iter().any(BackendError::retryable)
            }
        }
    }
}

struct Reasons<'a>(&'a [BackendError]);

impl fmt::Display for Reasons<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no servers");
        }
        for (i, reason) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{reason}")?;
        }
        Ok(())
    }
}
