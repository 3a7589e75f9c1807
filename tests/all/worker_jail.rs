//! The worker jail in a real box: every worker runs under seccomp and
//! no-new-privileges, the box says which layers are on, and jailed workers
//! still run functions (the capability, hostile, session and browser tests
//! run under the same jail). What the jail forbids is tested syscall by
//! syscall in crates/bento-worker/tests/jail.rs. Workers also run below
//! the server's CPU priority.

use std::time::{Duration, Instant};

use crate::harness::{BENTO, TestBox};

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

/// The nice value of every thread of process `pid`, from
/// /proc/PID/task/TID/stat (field 19).
fn thread_nice_values(pid: u32) -> Vec<i64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("stat")).ok())
        .map(|stat| {
            // Counted after the parenthesised command name (field 2).
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            after_name.split(' ').nth(16).unwrap().parse().unwrap()
        })
        .collect()
}

/// Store and invoke `source`, attach, and return the attachment once the
/// function's first message, `first`, has arrived.
async fn attached_after(
    test_box: &TestBox,
    source: &str,
    first: &[u8],
) -> bento_client::Attachment {
    let token = test_box.store(source).await;
    let session = test_box.invoke(&token, "[]").await;
    let mut attachment = test_box
        .connect()
        .await
        .attach(&session, None)
        .await
        .unwrap();
    let said = attachment.next().await.unwrap().unwrap();
    assert_eq!(&said[..], first);
    attachment
}

/// Start a session that waits in `api.recv()` (so its instance thread is
/// alive), and return its attachment once the function has said so.
async fn waiting_session(test_box: &TestBox) -> bento_client::Attachment {
    attached_after(
        test_box,
        "def main():\n    api.send('waiting')\n    api.recv()\n",
        b"waiting",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_has_used_more_than_a_short_functions_cpu_drops_further_and_a_new_one_does_not()
 {
    // Workers at the server's priority, so that the drop is visible
    // below nice 19 whatever priority the tests run at (up to 13).
    let test_box = TestBox::start(&["--workers", "1", "--worker-nice", "0"]);
    let worker = thread_nice_values(test_box.pid())[0];
    // Spins well past LONG_RUNNING_AFTER of CPU, says so, then waits.
    let spin_ms = 4 * bento_sandbox::LONG_RUNNING_AFTER.as_millis();
    let spinner = format!(
        "import time\ndef main():\n    end = time.process_time() + {spin_ms} / 1000\n    \
         while time.process_time() < end:\n        pass\n    api.send('spun')\n    api.recv()\n"
    );
    let mut spun = attached_after(&test_box, &spinner, b"spun").await;
    let _waiting = waiting_session(&test_box).await;
    let pid = workers(&test_box).await[0];
    let threads = thread_nice_values(pid);
    let long = (worker + i64::from(bento_sandbox::LONG_RUNNING_NICE_LEVELS))
        .min(i64::from(bento_sandbox::MAX_NICE));
    if long == worker {
        // Run at nice 19 (the lowest), nothing can drop further to be seen.
        eprintln!("tests run at nice {worker}: no room to see a long-running instance drop");
        test_box.assert_serves_hello().await;
        return;
    }
    assert_eq!(
        threads.iter().filter(|&&n| n == long).count(),
        1,
        "one thread (the spinner's) at {long}, the rest at {worker}: {threads:?}"
    );
    assert!(
        threads.iter().all(|&n| n == worker || n == long),
        "{threads:?}"
    );
    // The lowered instance still finishes, and the next user is served.
    spun.input().end().await.unwrap();
    assert_eq!(spun.next().await.unwrap(), None);
    test_box.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_their_instance_threads_run_below_the_servers_priority() {
    // The default: 10 nice levels below the server (which keeps the
    // priority it was started with, e.g. under `nice cargo test`) for
    // every thread of every worker, the running instance's included.
    let test_box = TestBox::start(&["--workers", "1"]);
    let _session = waiting_session(&test_box).await;
    let server = thread_nice_values(test_box.pid());
    let base = server[0];
    assert!(
        server.iter().all(|&n| n == base),
        "server threads: {server:?}"
    );
    let below = |levels: i64| (base + levels).min(19);
    for pid in workers(&test_box).await {
        let threads = thread_nice_values(pid);
        // The main thread, the prewarming thread and at least the waiting
        // instance's thread.
        assert!(threads.len() >= 3, "worker {pid}: {threads:?}");
        assert!(
            threads.iter().all(|&n| n == below(10)),
            "worker {pid}: {threads:?}, server at {base}"
        );
    }
    test_box.assert_serves_hello().await;

    // --worker-nice sets how far; 0 runs functions at the server's priority.
    for (nice, expected) in [("3", below(3)), ("0", base)] {
        let test_box = TestBox::start(&["--workers", "1", "--worker-nice", nice]);
        let _session = waiting_session(&test_box).await;
        for pid in workers(&test_box).await {
            let threads = thread_nice_values(pid);
            assert!(
                threads.iter().all(|&n| n == expected),
                "--worker-nice {nice}: worker {pid}: {threads:?}"
            );
        }
        test_box.assert_serves_hello().await;
    }

    // Beyond what Linux allows is refused before the box starts.
    let refused = std::process::Command::new(BENTO)
        .args(["serve", "--worker-nice", "20"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--worker-nice"), "{stderr}");
}
