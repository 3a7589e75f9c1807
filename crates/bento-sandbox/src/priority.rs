//! Lowering a thread's CPU priority: the worker lowers itself below the
//! server at start, and an instance's thread drops further once it has run
//! long (see [`crate::LONG_RUNNING_AFTER`]).

/// The largest nice value Linux accepts.
pub const MAX_NICE: u8 = 19;

/// Lower the calling thread's priority by `levels` nice levels (0 =
/// unchanged), clamped at [`MAX_NICE`]. Linux keeps the nice value per
/// thread, and threads created afterwards inherit it. Only raising the nice
/// value is asked for, which needs no privilege.
pub fn lower_thread_priority(levels: u8) -> std::io::Result<()> {
    if levels == 0 {
        return Ok(());
    }
    // SAFETY: errno is the calling thread's own; getpriority and
    // setpriority only read their integer arguments (`who` = 0 is the
    // calling thread on Linux).
    #[allow(unsafe_code)]
    let rc = unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        // -1 is also a valid nice value: errno tells an error from it.
        if nice == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let target = nice.saturating_add(libc::c_int::from(levels));
        libc::setpriority(
            libc::PRIO_PROCESS,
            0,
            target.min(libc::c_int::from(MAX_NICE)),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
