//! The worker jail in a real box: every worker runs under seccomp and
//! no-new-privileges, the box says which layers are on, and jailed workers
//! still run functions (the capability, hostile, session and browser tests
//! run under the same jail). What the jail forbids is tested syscall by
//! syscall in crates/bento-worker/tests/jail.rs.

use std::time::{Duration, Instant};

use crate::harness::TestBox;

/// `Name:\tvalue` from /proc/PID/status.
fn proc_status(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// The box's workers, once it has at least one.
async fn workers(test_box: &TestBox) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pids = test_box.worker_pids();
        if !pids.is_empty() {
            return pids;
        }
        assert!(Instant::now() < deadline, "the box started no worker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_is_jailed_by_default_and_the_box_says_which_layers() {
    let test_box = TestBox::start(&["--workers", "2"]);
    // A function runs in a jailed worker (the jail is applied before the
    // worker reports ready).
    test_box.assert_serves_hello().await;
    let pids = workers(&test_box).await;
    assert_eq!(pids.len(), 2, "{pids:?}");
    for pid in pids {
        // 2 = filter mode.
        assert_eq!(proc_status(pid, "Seccomp"), "2", "worker {pid}");
        assert_eq!(proc_status(pid, "NoNewPrivs"), "1", "worker {pid}");
    }
    let log = test_box.log();
    assert!(
        log.contains("worker jail: rlimits, landlock (ABI"),
        "no jail line in the log:\n{log}"
    );
    assert!(
        !log.contains("worker jail incomplete"),
        "a worker's jail is incomplete on this kernel:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_jail_runs_workers_unjailed_and_warns() {
    let test_box = TestBox::start(&["--no-worker-jail"]);
    test_box.assert_serves_hello().await;
    for pid in workers(&test_box).await {
        assert_eq!(proc_status(pid, "Seccomp"), "0", "worker {pid}");
    }
    let log = test_box.log();
    assert!(
        log.contains("worker jail: off (--no-worker-jail)"),
        "no warning in the log:\n{log}"
    );
}
