//! The worker jail, applied for real: each test re-runs this test binary as
//! a child process that jails itself with `jail_worker` (exactly what
//! `bento worker` does) and then tries what a function that escaped wasmtime
//! would try. The parent checks the child's verdict; nothing is mocked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use bento_worker::{JailConfig, jail_worker};

/// Set in the child: the data dir to jail against.
const CHILD_DATA_DIR: &str = "BENTO_JAIL_TEST_DATA_DIR";
/// Set in the child: a loopback port the parent listens on.
const CHILD_PORT: &str = "BENTO_JAIL_TEST_PORT";

fn storage_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("instance-storage")
}

/// In the parent: run test `name` as a jailed child and return whether each
/// of its checks held. In the child: jail, run `checks`, exit.
fn in_jailed_child(name: &str, checks: impl FnOnce(&Path, u16)) {
    if let Some(data_dir) = std::env::var_os(CHILD_DATA_DIR) {
        let data_dir = PathBuf::from(data_dir);
        let port: u16 = std::env::var(CHILD_PORT).unwrap().parse().unwrap();
        let report = jail_worker(&JailConfig {
            storage_dir: storage_dir(&data_dir),
        });
        // This machine's kernel has every layer: a weaker jail is a failure
        // here, not something to skip.
        assert!(report.complete(), "jail incomplete: {report}");
        checks(&data_dir, port);
        // Leave before libtest prints anything it might need files for.
        std::process::exit(0);
    }
    let data_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data_dir.path().join("functions")).unwrap();
    std::fs::write(data_dir.path().join("functions/stored.py"), "secret").unwrap();
    std::fs::write(data_dir.path().join("onion-service.key"), "key").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        // Answer at most one connection (the egress test's).
        listener.set_nonblocking(false).unwrap();
        if let Ok((mut stream, _)) = listener.accept() {
            let mut buf = [0u8; 4];
            if stream.read_exact(&mut buf).is_ok() {
                let _ = stream.write_all(&buf);
            }
        }
    });
    let output = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DATA_DIR, data_dir.path())
        .env(CHILD_PORT, port.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "jailed child failed: {}\n{stderr}",
        output.status
    );
    // Unblock the one-shot server if the child never connected.
    let _ = TcpStream::connect(("127.0.0.1", port));
    server.join().unwrap();
    // The child really ran the checks (and did not, say, skip them).
    assert!(
        stderr.contains("jail checks done"),
        "the child did not run its checks:\n{stderr}"
    );
    // Nothing the child tried left a trace in the data dir.
    assert_eq!(
        std::fs::read_to_string(data_dir.path().join("functions/stored.py")).unwrap(),
        "secret"
    );
    assert!(!data_dir.path().join("planted").exists());
}

fn done() {
    eprintln!("jail checks done");
}

fn denied(result: std::io::Result<impl std::fmt::Debug>, what: &str) {
    match result {
        Ok(value) => panic!("{what} succeeded in the jail: {value:?}"),
        Err(e) => assert!(
            e.kind() == std::io::ErrorKind::PermissionDenied,
            "{what}: expected permission denied, got {e}"
        ),
    }
}

#[test]
fn a_jailed_worker_cannot_read_or_write_the_data_dir() {
    in_jailed_child(
        "a_jailed_worker_cannot_read_or_write_the_data_dir",
        |data_dir, _| {
            denied(
                std::fs::read(data_dir.join("functions/stored.py")),
                "reading a stored function",
            );
            denied(
                std::fs::read(data_dir.join("onion-service.key")),
                "reading the onion-service key",
            );
            denied(std::fs::read_dir(data_dir), "listing the data dir");
            denied(
                std::fs::write(data_dir.join("planted"), "x"),
                "creating a file in the data dir",
            );
            denied(
                std::fs::write(data_dir.join("functions/stored.py"), "x"),
                "overwriting a stored function",
            );
            denied(
                std::fs::remove_file(data_dir.join("functions/stored.py")),
                "deleting a stored function",
            );
            denied(std::fs::read("/etc/passwd"), "reading /etc/passwd");
            denied(
                std::fs::write("/tmp/bento-jail-escape", "x"),
                "writing /tmp",
            );
            done();
        },
    );
}

#[test]
fn a_jailed_worker_can_use_its_instance_storage_and_the_resolver_files() {
    in_jailed_child(
        "a_jailed_worker_can_use_its_instance_storage_and_the_resolver_files",
        |data_dir, _| {
            let dir = storage_dir(data_dir).join("instance-1");
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("0"), "sealed").unwrap();
            std::fs::rename(dir.join("0"), dir.join("1")).unwrap();
            assert_eq!(std::fs::read_to_string(dir.join("1")).unwrap(), "sealed");
            std::fs::remove_dir_all(&dir).unwrap();
            if Path::new("/etc/hosts").exists() {
                std::fs::read("/etc/hosts").unwrap();
            }
            // A name lookup through the system resolver still works.
            use std::net::ToSocketAddrs;
            assert!(
                ("localhost", 80)
                    .to_socket_addrs()
                    .unwrap()
                    .next()
                    .is_some()
            );
            done();
        },
    );
}

#[test]
fn a_jailed_worker_cannot_listen_or_open_unix_netlink_or_raw_sockets() {
    in_jailed_child(
        "a_jailed_worker_cannot_listen_or_open_unix_netlink_or_raw_sockets",
        |_, _| {
            denied(TcpListener::bind("127.0.0.1:0"), "listening on a TCP port");
            denied(
                std::net::UdpSocket::bind("127.0.0.1:0"),
                "binding a UDP port",
            );
            denied(
                std::os::unix::net::UnixDatagram::unbound(),
                "creating a UNIX socket",
            );
            denied(
                std::os::unix::net::UnixStream::connect("/run/anything.sock"),
                "connecting to a UNIX socket",
            );
            for (domain, kind) in [
                (libc::AF_NETLINK, libc::SOCK_RAW),
                (libc::AF_PACKET, libc::SOCK_RAW),
                (libc::AF_INET, libc::SOCK_RAW),
                (libc::AF_INET6, libc::SOCK_RAW),
            ] {
                // SAFETY: socket() takes integers; a descriptor it returns
                // is closed below.
                #[allow(unsafe_code)]
                let fd = unsafe { libc::socket(domain, kind, 0) };
                let error = std::io::Error::last_os_error();
                if fd >= 0 {
                    #[allow(unsafe_code)]
                    // SAFETY: fd was just returned to us by socket().
                    unsafe {
                        libc::close(fd)
                    };
                }
                assert!(fd < 0, "socket({domain}, {kind}) succeeded in the jail");
                assert_eq!(
                    error.raw_os_error(),
                    Some(libc::EPERM),
                    "socket({domain}, {kind})"
                );
            }
            done();
        },
    );
}

#[test]
fn a_jailed_worker_can_still_connect_out_over_tcp_and_pair_sockets_with_itself() {
    in_jailed_child(
        "a_jailed_worker_can_still_connect_out_over_tcp_and_pair_sockets_with_itself",
        |_, port| {
            // Egress (connect, http, tor_connect) opens sockets in the
            // worker, after bento-egress checked the destination.
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            stream.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"ping");
            // The tokio runtime inside wasmtime-wasi makes a socket pair
            // for its signal driver on an instance thread; refusing it
            // crashed every worker that ran an HTTP request.
            let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
            a.write_all(b"pair").unwrap();
            b.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"pair");
            done();
        },
    );
}

#[test]
fn a_jailed_worker_cannot_start_a_process_or_signal_others_but_can_start_threads() {
    in_jailed_child(
        "a_jailed_worker_cannot_start_a_process_or_signal_others_but_can_start_threads",
        |_, _| {
            denied(Command::new("/bin/true").status(), "running /bin/true");
            // SAFETY: fork() in a test child; the child branch exits at once.
            #[allow(unsafe_code)]
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                #[allow(unsafe_code)]
                // SAFETY: leave the forked child without running destructors.
                unsafe {
                    libc::_exit(0)
                };
            }
            assert!(pid < 0, "fork succeeded in the jail");
            // The parent test process is outside the jail.
            let parent = i32::try_from(std::os::unix::process::parent_id()).unwrap();
            #[allow(unsafe_code)]
            // SAFETY: signal 0 only checks permission.
            let rc = unsafe { libc::kill(parent, 0) };
            assert!(rc < 0, "signalling the parent succeeded in the jail");
            let worked = std::thread::spawn(|| 6 * 7).join().unwrap();
            assert_eq!(worked, 42);
            done();
        },
    );
}
