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

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// Every replica of a key failed or is down.
    #[error("no replica answered ({})", Reasons(.reasons))]
    Unavailable { reasons: Vec<BackendError> },
    #[error("client {peer}: {source}")]
    Client {
        peer: String,
        source: std::io::Error,
    },
}

impl ProxyError {
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
