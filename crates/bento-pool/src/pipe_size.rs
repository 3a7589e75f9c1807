//! Larger pipe buffers between the server and its workers.
//!
//! Linux pipes hold 64 KiB by default, so moving a 1 MiB output chunk takes
//! 16 writer/reader wake-ups. One MiB pipes (the default unprivileged
//! maximum, `/proc/sys/fs/pipe-max-size`) move it in one.

use std::os::fd::AsRawFd;

/// Pipe capacity requested for worker pipes.
pub const WORKER_PIPE_BYTES: i32 = 1024 * 1024;

/// Ask the kernel to grow the pipe behind `fd`; a no-op for non-pipes, and
/// best effort (a smaller system maximum only costs throughput).
pub fn grow_pipe(fd: &impl AsRawFd) {
    // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory of
    // ours; an invalid or non-pipe fd just makes it fail with EBADF/EINVAL.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, WORKER_PIPE_BYTES) };
    if rc < 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot grow worker pipe");
    }
}
