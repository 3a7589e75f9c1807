//! Overload control (issue 11, "the box answers a new user within 1 s";
//! docs/policy.md, "Overload"): while the workers start instances late, the
//! box refuses a share of new ones at once with `overloaded` instead of
//! making every user wait, lets the rest through, and admits everything
//! again once the workers catch up. No timing is asserted: the workers are
//! stopped outright (the extreme of a box with more work than cores).

use std::time::Duration;

use bento_client::ClientError;
use bento_protocol::ErrorCode;

use crate::harness::TestBox;

fn signal(pid: u32, signal: i32) {
    // SAFETY: signalling a child process of the test's box.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_workers_start_nothing_a_share_of_new_invocations_is_refused_as_overloaded_and_the_admitted_ones_complete_whole()
 {
    let bx = TestBox::start(&["--overload-target-ms", "50"]);
    let token = bx
        .store("def main(i):\n    api.send('done %d' % i)\n")
        .await;
    let workers = bx.worker_pids();
    assert_eq!(workers.len(), 1);
    signal(workers[0], libc::SIGSTOP);
    // Two seconds of invocations while the worker cannot run any: each is
    // answered (Invoked or overloaded) by the server alone.
    let mut admitted = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let answer = bx
            .connect()
            .await
            .invoke(&token, "main", &format!("[{i}]"))
            .await;
        match answer {
            Ok(session) => admitted.push((i, session)),
            Err(ClientError::Remote {
                code: ErrorCode::Overloaded,
                message,
            }) => {
                assert!(message.contains("try again"), "{message}");
                refused += 1;
            }
            Err(e) => {
                signal(workers[0], libc::SIGCONT);
                panic!("invocation {i}: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused_share = bx.metric("bento_admission_refused_permille").await;
    signal(workers[0], libc::SIGCONT);
    assert!(refused > 0, "nothing refused during a 2 s stall");
    // The share is capped below 100 %: some starts always go through.
    assert!(admitted.len() >= 4, "{} admitted", admitted.len());
    assert!(
        refused_share > 0.0 && refused_share <= 900.0,
        "{refused_share}"
    );
    assert_eq!(
        bx.metric("bento_errors_total{code=\"overloaded\"}").await,
        f64::from(refused)
    );
    // Everything admitted runs once the worker does, each with its own
    // answer: nothing lost to the stall.
    for (i, session) in admitted {
        let (output, result) = bx.read_all(&session).await;
        result.unwrap();
        assert_eq!(output, format!("done {i}").as_bytes());
    }
    // The share falls back once starts are prompt again; a new user who is
    // told to try again is served after a few tries.
    bx.assert_serves_hello().await;
    let mut waited = 0;
    while bx.metric("bento_admission_refused_permille").await > 0.0 {
        assert!(waited < 600, "the refused share never fell back to 0");
        // Starts keep the measure going.
        let _ = bx.connect().await.invoke(&token, "main", "[0]").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert_eq!(bx.metric("bento_pending_starts").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_overload_control_off_a_stalled_box_admits_every_invocation() {
    let bx = TestBox::start(&["--overload-target-ms", "0"]);
    let token = bx
        .store("def main(i):\n    api.send('done %d' % i)\n")
        .await;
    let workers = bx.worker_pids();
    signal(workers[0], libc::SIGSTOP);
    let mut sessions = Vec::new();
    for i in 0..20 {
        let answer = bx
            .connect()
            .await
            .invoke(&token, "main", &format!("[{i}]"))
            .await;
        match answer {
            Ok(session) => sessions.push((i, session)),
            Err(e) => {
                signal(workers[0], libc::SIGCONT);
                panic!("invocation {i}: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(workers[0], libc::SIGCONT);
    for (i, session) in sessions {
        let (output, result) = bx.read_all(&session).await;
        result.unwrap();
        assert_eq!(output, format!("done {i}").as_bytes());
    }
    assert_eq!(bx.metric("bento_admission_refused_permille").await, 0.0);
}
