//! The access log: one JSON line per HTTP request or TCP connection,
//! written by a dedicated thread so the data plane only formats a line
//! and hands it over (`try_send`: when the writer falls behind, lines are
//! dropped and counted, never waited for). Off by default.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

/// Where lines go.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Opens `dest`: "stderr", "stdout", or a file path (appended to).
    pub fn open(dest: &str) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = match dest {
            "stderr" => Box::new(std::io::stderr()),
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel::<String>(65_536);
        std::thread::Builder::new()
            .name("convoy-access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                loop {
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
        })
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
        let _ = std::fs::remove_file(&p);
    }
}
