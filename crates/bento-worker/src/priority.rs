//! The worker's CPU priority: below the server's and the relay's, so that
//! hostile or merely busy functions cannot take the CPU from the process
//! that answers clients (and refuses them when the box is overloaded), or
//! from the `tor` relay beside the box.

/// The largest nice value Linux accepts.
pub const MAX_WORKER_NICE: u8 = 19;

/// Raise the calling thread's nice value to `nice` (0 = unchanged).
/// Linux keeps the value per thread and every thread created afterwards
/// inherits it, so the worker calls this first, before it starts any
/// thread. Raising one's own nice value needs no privilege.
pub fn lower_worker_priority(nice: u8) -> std::io::Result<()> {
    if nice == 0 {
        return Ok(());
    }
    let nice = nice.min(MAX_WORKER_NICE);
    // SAFETY: setpriority only reads its integer arguments; `who` = 0 is
    // the calling thread on Linux.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, libc::c_int::from(nice)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's nice value, from /proc.
    fn own_nice() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Field 19 (nice), counted after the parenthesised command name.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn the_nice_value_applies_to_the_calling_thread_and_the_threads_it_starts_later() {
        std::thread::spawn(|| {
            let before = own_nice();
            lower_worker_priority(0).unwrap();
            assert_eq!(own_nice(), before, "0 leaves the priority alone");
            lower_worker_priority(7).unwrap();
            assert_eq!(own_nice(), 7);
            let child = std::thread::spawn(own_nice).join().unwrap();
            assert_eq!(child, 7, "a thread started afterwards inherits it");
            // Over the kernel's maximum is clamped, not an error.
            lower_worker_priority(200).unwrap();
            assert_eq!(own_nice(), i64::from(MAX_WORKER_NICE));
        })
        .join()
        .unwrap();
    }
}
