//! The worker jail: what a worker process takes away from itself before it
//! runs any guest code.
//!
//! Wasmtime is the first wall around a hostile function; the jail is the
//! second, for the day a function escapes the first. It is applied by the
//! worker to itself (after loading the runtime, before starting any thread)
//! and is inherited by every thread it starts. Four layers, each best effort
//! so a box still runs on a kernel that lacks one, and each reported:
//!
//! - **rlimits**: no core dumps (a dump would write instance memory,
//!   including storage keys, to disk), a bounded number of open files, and
//!   the process marked non-dumpable so other processes of the same user
//!   cannot ptrace it or read its memory.
//! - **landlock** (filesystem): the only writable place is the instance
//!   storage directory, which holds nothing but ciphertext under keys that
//!   live in worker memory. The rest of the data dir (stored functions, the
//!   onion-service key) and every other path are closed, except read-only
//!   access to the system libraries and the few `/etc` files the name
//!   resolver reads. Nothing may be executed.
//! - **landlock** (network and IPC scopes, where the kernel has them): no TCP
//!   port may be bound, no signal sent outside the worker, no abstract UNIX
//!   socket of another process reached.
//! - **seccomp**: a deny-list of system calls a worker never needs: new
//!   processes, exec, ptrace, sockets other than IPv4/IPv6 (no UNIX,
//!   netlink, packet or raw sockets), listening or accepting, mounts and
//!   namespaces, kernel modules, BPF, io_uring (which would bypass this
//!   filter), credential changes, and signals to other processes.
//!
//! What the jail deliberately still allows: the worker opens outbound
//! IPv4/IPv6 TCP connections itself (the `connect`, `http` and
//! `tor_connect` capabilities) and resolves names with the system resolver
//! (UDP to the configured name server). Destinations are checked in the
//! worker by `bento-egress` before connecting; a seccomp filter cannot see
//! socket addresses, so an escaped function could reach what the worker's
//! network namespace reaches. Operators who want that closed too run
//! workers under `--worker-wrapper` in a network namespace with only the
//! routes they want.

use std::fmt;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Most file descriptors a worker may hold open (hard limit; lowered to the
/// existing hard limit if that is smaller). Instances hold at most their
/// channel allowance of sockets each plus transient storage files.
pub const WORKER_MAX_OPEN_FILES: u64 = 16_384;

/// The newest Landlock ABI whose rights this jail was written and tested
/// against; older kernels get the subset they know (best effort).
const LANDLOCK_ABI: ABI = ABI::V6;

/// Read-only trees: shared libraries the name resolver may load (NSS
/// modules).
const READ_ONLY_DIRS: &[&str] = &["/usr", "/lib", "/lib64", "/lib32"];

/// Read-only files: what the system name resolver reads.
const READ_ONLY_FILES: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/ld.so.cache",
    "/dev/urandom",
    "/dev/null",
];

/// What to jail the worker into.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The one directory the worker may write: the root of instance
    /// storage. Created if missing.
    pub storage_dir: PathBuf,
}

/// One jail layer that could not be applied, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JailError {
    /// A resource limit could not be set.
    #[error("rlimit {what}: {error}")]
    Rlimit {
        /// Which limit.
        what: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// The instance storage directory could not be created.
    #[error("cannot create the instance storage directory {}: {error}", path.display())]
    StorageDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// Landlock refused the ruleset.
    #[error("landlock: {0}")]
    Landlock(String),
    /// The seccomp filter could not be built or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
}

/// How far the Landlock layer got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockLevel {
    /// Every right this jail asks for is enforced.
    Full,
    /// The kernel knows only part of the rights (an older ABI).
    Partial,
    /// The kernel has no Landlock (or it is disabled).
    Unavailable,
}

/// Which layers are active: one line for the log.
#[derive(Debug)]
pub struct JailReport {
    /// Resource limits and non-dumpable.
    pub rlimits: Result<(), JailError>,
    /// Filesystem, bind and scope restrictions.
    pub landlock: Result<LandlockLevel, JailError>,
    /// The system-call filter.
    pub seccomp: Result<(), JailError>,
}

impl JailReport {
    /// Whether every layer is fully in force.
    pub fn complete(&self) -> bool {
        self.rlimits.is_ok()
            && matches!(self.landlock, Ok(LandlockLevel::Full))
            && self.seccomp.is_ok()
    }
}

impl fmt::Display for JailReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layer = |ok: bool| if ok { "on" } else { "OFF" };
        write!(f, "rlimits {}", layer(self.rlimits.is_ok()))?;
        match &self.landlock {
            Ok(LandlockLevel::Full) => write!(f, ", landlock on")?,
            Ok(LandlockLevel::Partial) => write!(f, ", landlock partial (older kernel ABI)")?,
            Ok(LandlockLevel::Unavailable) => write!(f, ", landlock OFF (not in this kernel)")?,
            Err(e) => write!(f, ", landlock OFF ({e})")?,
        }
        write!(f, ", seccomp {}", layer(self.seccomp.is_ok()))?;
        for error in [self.rlimits.as_ref().err(), self.seccomp.as_ref().err()]
            .into_iter()
            .flatten()
        {
            write!(f, " ({error})")?;
        }
        Ok(())
    }
}

/// What the running kernel offers the jail, probed without applying
/// anything: for the server's one log line at start-up (each worker warns
/// if its own jail came out weaker).
pub fn jail_support() -> String {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute, size 0 and the VERSION flag the call
    // only returns the ABI version (or an error); it touches no memory.
    #[allow(unsafe_code)]
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    // SAFETY: PR_GET_SECCOMP takes no pointer; EINVAL means no seccomp.
    #[allow(unsafe_code)]
    let seccomp = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } >= 0;
    let landlock = match abi {
        abi if abi >= 6 => format!("landlock (ABI {abi})"),
        abi if abi >= 1 => format!("landlock partial (ABI {abi} < 6)"),
        _ => "landlock OFF (not in this kernel)".to_owned(),
    };
    let seccomp = if seccomp {
        "seccomp"
    } else {
        "seccomp OFF (not in this kernel)"
    };
    format!("rlimits, {landlock}, {seccomp}")
}

/// Jail the calling process. Call it on the main thread before any other
/// thread exists: Landlock restricts only the calling thread and threads
/// it starts afterwards. Irreversible. Each layer is applied independently
/// so one the kernel lacks does not cost the others.
pub fn jail_worker(config: &JailConfig) -> JailReport {
    let rlimits = apply_rlimits();
    let landlock = apply_landlock(&config.storage_dir);
    // Last: seccomp forbids nothing the layers above need, but keeping it
    // last means a future rule cannot break their set-up.
    let seccomp = apply_seccomp();
    JailReport {
        rlimits,
        landlock,
        seccomp,
    }
}

fn set_rlimit(
    what: &'static str,
    resource: libc::__rlimit_resource_t,
    limit: u64,
) -> Result<(), JailError> {
    let value = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setrlimit(resource, &value) };
    if rc == 0 {
        Ok(())
    } else {
        Err(JailError::Rlimit {
            what,
            error: std::io::Error::last_os_error(),
        })
    }
}

fn apply_rlimits() -> Result<(), JailError> {
    set_rlimit("core", libc::RLIMIT_CORE, 0)?;
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) };
    if rc != 0 {
        return Err(JailError::Rlimit {
            what: "nofile",
            error: std::io::Error::last_os_error(),
        });
    }
    set_rlimit(
        "nofile",
        libc::RLIMIT_NOFILE,
        current.rlim_max.min(WORKER_MAX_OPEN_FILES),
    )?;
    // Non-dumpable: no ptrace attach or /proc/PID/mem from other processes
    // of the same user (another worker a function escaped into), no core.
    // SAFETY: PR_SET_DUMPABLE takes integer arguments only.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        return Err(JailError::Rlimit {
            what: "dumpable",
            error: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn apply_landlock(storage_dir: &Path) -> Result<LandlockLevel, JailError> {
    use std::os::unix::fs::DirBuilderExt;
    // Owner-only like everything in the data directory: functions' files
    // are users' data, whatever the umask the box was started with.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(storage_dir)
        .map_err(|error| JailError::StorageDir {
            path: storage_dir.to_owned(),
            error,
        })?;
    let error = |e: &dyn fmt::Display| JailError::Landlock(e.to_string());
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .map_err(|e| error(&e))?
        // Handled with no rule: no TCP port may be bound (ABI 4).
        .handle_access(AccessNet::BindTcp)
        .map_err(|e| error(&e))?
        // Signals and abstract UNIX sockets stay inside the worker (ABI 6).
        .scope(Scope::from_all(LANDLOCK_ABI))
        .map_err(|e| error(&e))?
        .create()
        .map_err(|e| error(&e))?;
    let read_dir = AccessFs::ReadFile | AccessFs::ReadDir;
    for dir in READ_ONLY_DIRS.iter().map(Path::new).filter(|p| p.is_dir()) {
        let fd = PathFd::new(dir).map_err(|e| error(&e))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, read_dir))
            .map_err(|e| error(&e))?;
    }
    for file in READ_ONLY_FILES.iter().map(Path::new).filter(|p| p.exists()) {
        let fd = PathFd::new(file).map_err(|e| error(&e))?;
        // /dev/null is also written to (a closed stdio stream).
        let access = if file == Path::new("/dev/null") {
            AccessFs::ReadFile | AccessFs::WriteFile
        } else {
            AccessFs::ReadFile.into()
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| error(&e))?;
    }
    // Instance storage: everything but executing files.
    let fd = PathFd::new(storage_dir).map_err(|e| error(&e))?;
    ruleset = ruleset
        .add_rule(PathBeneath::new(
            fd,
            AccessFs::from_all(LANDLOCK_ABI) & !AccessFs::Execute,
        ))
        .map_err(|e| error(&e))?;
    let status = ruleset.restrict_self().map_err(|e| error(&e))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockLevel::Full,
        RulesetStatus::PartiallyEnforced => LandlockLevel::Partial,
        RulesetStatus::NotEnforced => LandlockLevel::Unavailable,
    })
}

/// System calls a worker never makes, refused with EPERM whatever their
/// arguments.
fn always_denied() -> Vec<i64> {
    let mut calls = vec![
        // New programs, other processes' memory.
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_process_madvise,
        libc::SYS_kcmp,
        libc::SYS_pidfd_open,
        libc::SYS_pidfd_getfd,
        libc::SYS_pidfd_send_signal,
        libc::SYS_tkill,
        // Serving sockets: the worker only connects out. (`socketpair` is
        // allowed: a pair connects only to itself, and tokio's signal
        // driver, started inside wasmtime-wasi's runtime on an instance
        // thread, makes one; refusing it crashed the worker.)
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        // Mounts and namespaces.
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_name_to_handle_at,
        libc::SYS_open_by_handle_at,
        libc::SYS_mknodat,
        // The kernel's more exposed interfaces.
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_personality,
        libc::SYS_fanotify_init,
        libc::SYS_vhangup,
        // io_uring performs its operations outside this filter's view.
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        // Credentials.
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setgroups,
        libc::SYS_setfsuid,
        libc::SYS_setfsgid,
        libc::SYS_capset,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_mknod,
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
    ]);
    calls
}

fn condition(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, JailError> {
    SeccompCondition::new(arg, len, op, value).map_err(|e| JailError::Seccomp(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, JailError> {
    SeccompRule::new(conditions).map_err(|e| JailError::Seccomp(e.to_string()))
}

fn compile(
    rules: std::collections::BTreeMap<i64, Vec<SeccompRule>>,
    errno: i32,
) -> Result<BpfProgram, JailError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| JailError::Seccomp(e.to_string()))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno.unsigned_abs()),
        arch,
    )
    .map_err(|e| JailError::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| JailError::Seccomp(e.to_string()))
}

/// `SOCK_PACKET`: the obsolete packet-socket type (raw frames through an
/// `AF_INET` socket). libc deprecates its constant; the kernel still
/// honours it for a process with CAP_NET_RAW, so it is refused by number.
const LEGACY_SOCK_PACKET: u64 = 10;

fn apply_seccomp() -> Result<(), JailError> {
    use SeccompCmpArgLen::{Dword, Qword};
    use SeccompCmpOp::{MaskedEq, Ne};
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> = always_denied()
        .into_iter()
        .map(|call| (call, Vec::new()))
        .collect();
    // Sockets: IPv4 and IPv6 only (egress and name lookups), never raw.
    let domain = |family: i32| condition(0, Dword, Ne, family.unsigned_abs().into());
    rules.insert(
        libc::SYS_socket,
        vec![
            rule(vec![domain(libc::AF_INET)?, domain(libc::AF_INET6)?])?,
            rule(vec![condition(
                1,
                Dword,
                MaskedEq(0xf),
                libc::SOCK_RAW.unsigned_abs().into(),
            )?])?,
            rule(vec![condition(
                1,
                Dword,
                MaskedEq(0xf),
                LEGACY_SOCK_PACKET,
            )?])?,
        ],
    );
    // clone: threads only, never a new process.
    let clone_thread = u64::try_from(libc::CLONE_THREAD).unwrap_or(0x10000);
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![condition(0, Qword, MaskedEq(clone_thread), 0)?])?],
    );
    // Signals only to this process (threads included).
    let own_pid = u64::from(std::process::id());
    for call in [
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
    ] {
        rules.insert(call, vec![rule(vec![condition(0, Dword, Ne, own_pid)?])?]);
    }
    let deny = compile(rules, libc::EPERM)?;
    // clone3 passes its flags in memory a filter cannot read: refuse it as
    // unknown, and the C library falls back to clone, filtered above.
    let clone3 = compile(
        std::iter::once((libc::SYS_clone3, Vec::new())).collect(),
        libc::ENOSYS,
    )?;
    // Both filters on every thread of the process, current and future.
    for program in [&clone3, &deny] {
        seccompiler::apply_filter_all_threads(program)
            .map_err(|e| JailError::Seccomp(e.to_string()))?;
    }
    Ok(())
}
