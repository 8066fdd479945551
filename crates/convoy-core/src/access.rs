//! The access log: one JSON line per HTTP request or TCP connection,
//! written by a dedicated thread so the data plane only formats a line
//! and hands it over (`try_send`: when the writer falls behind, lines are
//! dropped and counted, never waited for). Off by default.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

/// A newly opened file for the writer to switch to.
type NextFile = std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>;

/// Where lines go.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: AtomicU64,
    /// The destination as configured.
    dest: String,
    /// A file opened by [`AccessLog::reopen`], taken by the writer.
    next: NextFile,
}

/// Opens a log file for appending (created if missing).
fn open_file(path: &str) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl AccessLog {
    /// Opens `dest`: "stderr", "stdout", or a file path (appended to).
    pub fn open(dest: &str) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = match dest {
            "stderr" => Box::new(std::io::stderr()),
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(open_file(path)?),
        };
        let next: NextFile = std::sync::Arc::default();
        let switch = std::sync::Arc::clone(&next);
        let (tx, rx) = sync_channel::<String>(65_536);
        std::thread::Builder::new()
            .name("convoy-access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                loop {
                    // A reopened file: what was written so far stays in
                    // the old one (moved away by logrotate).
                    if let Some(f) = switch.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        let _ = out.flush();
                        out = Box::new(f);
                    }
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(line) => {
                            buf.extend_from_slice(line.as_bytes());
                            buf.push(b'\n');
                            // Take whatever else is waiting, then write once.
                            while buf.len() < 60 * 1024 {
                                match rx.try_recv() {
                                    Ok(l) => {
                                        buf.extend_from_slice(l.as_bytes());
                                        buf.push(b'\n');
                                    }
                                    Err(_) => break,
                                }
                            }
                            let _ = out.write_all(&buf);
                            let _ = out.flush();
                            buf.clear();
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
            dest: dest.to_string(),
            next,
        })
    }

    /// Opens the file again by its name (after logrotate moved it): the
    /// lines from now on go to the new file. Nothing to do for stderr or
    /// stdout. An error (the directory is gone, no permission) leaves the
    /// old file in use.
    pub fn reopen(&self) -> std::io::Result<()> {
        if self.dest == "stderr" || self.dest == "stdout" {
            return Ok(());
        }
        let f = open_file(&self.dest)?;
        *self.next.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
        Ok(())
    }

    /// Queues one line (without its newline).
    pub fn write(&self, line: String) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Milliseconds since the Unix epoch, for log lines.
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file() {
        let p = std::env::temp_dir().join(format!("convoy-access-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let log = AccessLog::open(p.to_str().unwrap()).unwrap();
        for i in 0..100 {
            log.write(format!("{{\"i\":{i}}}"));
        }
        let mut text = String::new();
        for _ in 0..50 {
            text = std::fs::read_to_string(&p).unwrap_or_default();
            if text.lines().count() == 100 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(text.lines().count(), 100);
        assert_eq!(text.lines().last(), Some("{\"i\":99}"));
        // logrotate: the file is moved away, then the log is reopened.
        let rotated = p.with_extension("log.1");
        std::fs::rename(&p, &rotated).unwrap();
        log.reopen().unwrap();
        // The writer switches at its next turn (within 200 ms).
        std::thread::sleep(Duration::from_millis(300));
        log.write("{\"after\":1}".to_string());
        let mut fresh = String::new();
        for _ in 0..50 {
            fresh = std::fs::read_to_string(&p).unwrap_or_default();
            if !fresh.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(fresh, "{\"after\":1}\n");
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap().lines().count(),
            100
        );
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(&rotated);
    }
}
