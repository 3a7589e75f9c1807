//! The worker's CPU priority: below the server's and the relay's, so that
//! hostile or merely busy functions cannot take the CPU from the process
//! that answers clients (and refuses them when the box is overloaded), or
//! from the `tor` relay beside the box.

/// The largest nice value Linux accepts.
pub const MAX_WORKER_NICE: u8 = 19;

/// Lower the calling thread's priority by `levels` nice levels (0 =
/// unchanged), relative to what it inherited from the server and clamped at
/// [`MAX_WORKER_NICE`]. Linux keeps the nice value per thread and every
/// thread created afterwards inherits it, so the worker calls this first,
/// before it starts any thread. Only raising the nice value is asked for,
/// which needs no privilege.
pub fn lower_worker_priority(levels: u8) -> std::io::Result<()> {
    if levels == 0 {
        return Ok(());
    }
    let target = (thread_nice()? + i64::from(levels)).min(i64::from(MAX_WORKER_NICE));
    let target = libc::c_int::try_from(target).map_err(std::io::Error::other)?;
    // SAFETY: setpriority only reads its integer arguments; `who` = 0 is
    // the calling thread on Linux.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's nice value, from /proc (getpriority's -1 would be
/// ambiguous without errno).
fn thread_nice() -> std::io::Result<i64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    // Field 19, counted after the parenthesised command name (field 2).
    stat.rfind(')')
        .and_then(|end| stat.get(end + 2..))
        .and_then(|rest| rest.split(' ').nth(16))
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| {
            std::io::Error::other("cannot read the nice value from /proc/thread-self/stat")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
