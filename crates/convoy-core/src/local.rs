//! Errors that are this node's own resource limits — out of file
//! descriptors (EMFILE, ENFILE), of local ports or addresses
//! (EADDRNOTAVAIL), of socket buffers (ENOBUFS), of memory (ENOMEM) —
//! and never a server's fault: a probe or a connection that fails with
//! one of them is not a failed check or a passive failure signal. They
//! are counted here by kind (for the metrics and `convoy ctl query`) and
//! logged as `local_resource_error`, at most once a second.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The kinds of local resource errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// EMFILE, ENFILE: no file descriptor left.
    Descriptors,
    /// EADDRNOTAVAIL: no local address or port left.
    Addresses,
    /// ENOBUFS: no socket buffer.
    Buffers,
    /// ENOMEM.
    Memory,
}

impl Kind {
    /// Every kind, in the order of [`counts`].
    pub const ALL: [Kind; 4] = [
        Kind::Descriptors,
        Kind::Addresses,
        Kind::Buffers,
        Kind::Memory,
    ];

    /// Its name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Descriptors => "descriptors",
            Kind::Addresses => "addresses",
            Kind::Buffers => "buffers",
            Kind::Memory => "memory",
        }
    }
}

/// The kind of `e` if it is a local resource error.
pub fn kind(e: &std::io::Error) -> Option<Kind> {
    // Linux errno values.
    match e.raw_os_error()? {
        23 | 24 => Some(Kind::Descriptors),
        99 => Some(Kind::Addresses),
        105 => Some(Kind::Buffers),
        12 => Some(Kind::Memory),
        _ => None,
    }
}

static COUNTS: [AtomicU64; 4] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];
static LAST_LOG_S: AtomicU64 = AtomicU64::new(0);

/// If `e` is a local resource error: counts it, logs it (at most once a
/// second, with `what` was being done) and returns true. Otherwise false:
/// the caller treats it as it would any error.
pub fn note(e: &std::io::Error, what: &str) -> bool {
    let Some(k) = kind(e) else {
        return false;
    };
    let i = Kind::ALL.iter().position(|x| *x == k).unwrap_or(0);
    let total = COUNTS[i].fetch_add(1, Relaxed) + 1;
    let now = crate::clock::now_ms() / 1000;
    let last = LAST_LOG_S.load(Relaxed);
    if now != last
        && LAST_LOG_S
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
    {
        tracing::warn!(
            event = "local_resource_error",
            kind = k.as_str(),
            error = %e,
            during = what,
            total,
            "this node ran out of a resource (not a server's fault)"
        );
    }
    true
}

/// The errors counted so far, by kind (in [`Kind::ALL`]'s order).
pub fn counts() -> [(Kind, u64); 4] {
    let mut out = [(Kind::Descriptors, 0); 4];
    for (i, k) in Kind::ALL.iter().enumerate() {
        out[i] = (*k, COUNTS[i].load(Relaxed));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_errors_are_local_others_are_not() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert_eq!(kind(&e(24)), Some(Kind::Descriptors));
        assert_eq!(kind(&e(23)), Some(Kind::Descriptors));
        assert_eq!(kind(&e(99)), Some(Kind::Addresses));
        assert_eq!(kind(&e(105)), Some(Kind::Buffers));
        assert_eq!(kind(&e(12)), Some(Kind::Memory));
        // Refused, reset, unreachable, timed out: the server's side.
        for n in [111, 104, 113, 110] {
            assert_eq!(kind(&e(n)), None, "{n}");
        }
        let before = counts()[0].1;
        assert!(note(&e(24), "test"));
        assert!(!note(&e(111), "test"));
        assert!(counts()[0].1 > before);
    }
}
