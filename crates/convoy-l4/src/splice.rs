//! Zero-copy relaying on Linux: socket → pipe → socket with splice(2), so
//! payload bytes never enter user space. The pipe is created on the first
//! byte, so idle connections cost no extra descriptors. rustix's splice is
//! a safe wrapper, so no `unsafe` is needed here either.

use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

const PIPE_SIZE: usize = 1 << 20;
const FLAGS: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

/// One direction's pipe.
pub(crate) struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    size: usize,
}

impl Pipe {
    pub(crate) fn new() -> io::Result<Pipe> {
        let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // A bigger pipe moves more per syscall; the kernel may refuse
        // (pipe-max-size), then the default 64 KiB stays.
        let size = fcntl_setpipe_size(&w, PIPE_SIZE).unwrap_or(1 << 16);
        Ok(Pipe { r, w, size })
    }

    /// Moves up to one pipe-full from `src` into the pipe. Returns the
    /// bytes moved; 0 means `src` reached end of stream.
    pub(crate) async fn fill(&self, src: &TcpStream) -> io::Result<usize> {
        loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src, None, &self.w, None, self.size, FLAGS).map_err(io::Error::from)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// Moves `n` bytes from the pipe to `dst`.
    /// Tries at once: a socket is nearly always writable, so waiting for
    /// readiness first would cost a poll for nothing.
    pub(crate) async fn drain(&self, dst: &TcpStream, mut n: usize) -> io::Result<()> {
        while n > 0 {
            match dst.try_io(Interest::WRITABLE, || {
                splice(&self.r, None, dst, None, n, FLAGS).map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => n -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
