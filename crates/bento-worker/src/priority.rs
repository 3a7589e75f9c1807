//! The worker's CPU priority: below the server's and the relay's, so that
//! hostile or merely busy functions cannot take the CPU from the process
//! that answers clients (and refuses them when the box is overloaded), or
//! from the `tor` relay beside the box.

/// The largest nice value Linux accepts.
pub const MAX_WORKER_NICE: u8 = bento_sandbox::MAX_NICE;

/// Lower the calling thread's priority by `levels` nice levels (0 =
/// unchanged), relative to what it inherited from the server and clamped at
/// [`MAX_WORKER_NICE`]. Linux keeps the nice value per thread and every
/// thread created afterwards inherits it, so the worker calls this first,
/// before it starts any thread.
pub fn lower_worker_priority(levels: u8) -> std::io::Result<()> {
    bento_sandbox::lower_thread_priority(levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's nice value, from /proc (independent of the
    /// getpriority call the code under test makes).
    fn thread_nice() -> std::io::Result<i64> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
        // Field 19, counted after the parenthesised command name (field 2).
        stat.rfind(')')
            .and_then(|end| stat.get(end + 2..))
            .and_then(|rest| rest.split(' ').nth(16))
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| std::io::Error::other("no nice value in /proc/thread-self/stat"))
    }

    #[test]
    fn the_priority_drops_by_the_levels_asked_for_and_later_threads_inherit_it() {
        std::thread::spawn(|| {
            let before = thread_nice().unwrap();
            lower_worker_priority(0).unwrap();
            assert_eq!(
                thread_nice().unwrap(),
                before,
                "0 leaves the priority alone"
            );
            lower_worker_priority(3).unwrap();
            let lowered = (before + 3).min(i64::from(MAX_WORKER_NICE));
            assert_eq!(thread_nice().unwrap(), lowered);
            let child = std::thread::spawn(|| thread_nice().unwrap())
                .join()
                .unwrap();
            assert_eq!(child, lowered, "a thread started afterwards inherits it");
            // Past the kernel's maximum is clamped, not an error.
            lower_worker_priority(200).unwrap();
            assert_eq!(thread_nice().unwrap(), i64::from(MAX_WORKER_NICE));
        })
        .join()
        .unwrap();
    }
}
