//! The control plane's errors: what can stop a node from starting (a
//! socket that does not bind, a token or certificate that does not load,
//! an upgrade socket already in use) and what can break a binary-upgrade
//! handover. Commands answer [`convoy_core::control::CmdError`]s instead;
//! this type is for the process that runs the node.

use std::path::PathBuf;

/// Why a node could not start, or a handover failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed while doing `what`.
    #[error("{what}")]
    Io {
        /// What was being done, e.g. "admin API: cannot bind 127.0.0.1:9900".
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed (the caller says what it was doing).
    #[error(transparent)]
    Os(#[from] std::io::Error),
    /// The admin token cannot be read (`admin.token_env`, `admin.token_file`),
    /// or the admin API's certificates do not load (`admin.tls`).
    #[error("{0}")]
    Token(String),
    /// A listener's certificates or keys do not load (`tls.` and the key
    /// path of the problem).
    #[error("tls.{0}")]
    Tls(convoy_http::tls::TlsError),
    /// A listener cannot start.
    #[error("listener {name}")]
    Listener {
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// The `[cluster]` settings cannot be used (the key cannot be read).
    #[error("{0}")]
    Cluster(String),
    /// Another node serves on the upgrade socket.
    #[error("upgrade socket {} is in use by a running node (to replace it, start the new one with --upgrade)", .0.display())]
    UpgradeSocketInUse(PathBuf),
    /// The other process broke the upgrade protocol.
    #[error("{0}")]
    Protocol(String),
    /// A handover frame that does not read.
    #[error("upgrade: bad frame")]
    Frame(#[source] serde_json::Error),
    /// A handover message that cannot be written.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// `source` while doing `what`.
    pub fn io(what: impl Into<String>, source: impl Into<std::io::Error>) -> Error {
        Error::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// An error with its causes, joined by ": " (what `anyhow` prints for
/// `{:#}`), for messages and logs.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_joins_the_causes_like_anyhow() {
        let e = Error::Listener {
            name: "web".into(),
            source: Box::new(Error::Os(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "cannot bind 127.0.0.1:80: Address in use",
            ))),
        };
        assert_eq!(
            report(&e),
            "listener web: cannot bind 127.0.0.1:80: Address in use"
        );
        let e = Error::io(
            "admin API: cannot bind 127.0.0.1:9900",
            std::io::Error::from(std::io::ErrorKind::AddrInUse),
        );
        assert!(report(&e).starts_with("admin API: cannot bind 127.0.0.1:9900: "));
    }
}
