//! Hostile functions: each hits a limit, gets a typed error naming it, and
//! the box then serves the next user.

use std::time::Duration;

use bento_protocol::ErrorCode;
use bytes::Bytes;

use crate::harness::{TestBox, code, message, next_failure};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_by_the_cpu_limit() {
    let bx = TestBox::start(&["--cpu-ms", "500"]);
    let (_, result) = bx
        .run("def main():\n    while True:\n        pass\n", "[]")
        .await;
    assert_eq!(code(&result), ErrorCode::LimitCpu);
    assert!(
        message(&result).contains("500 ms of CPU time"),
        "{}",
        message(&result)
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_time_counts_the_clock_the_cpu_limit_counts_and_not_sleep() {
    let bx = TestBox::start(&["--cpu-ms", "500"]);
    // Reaching 0.3 s before the 0.5 s limit stops it shows both count the
    // same CPU time; a sleep costs none; the function then runs into the
    // limit while it reads the clock.
    let source = "import time\ndef main():\n    start = time.process_time()\n    while time.process_time() < 0.3:\n        pass\n    busy = time.process_time()\n    t = time.monotonic()\n    time.sleep(0.6)\n    slept = time.monotonic() - t\n    idle = time.process_time() - busy\n    api.send('%s %s %s %s' % (start >= 0, busy >= 0.3, idle < slept / 2, time.thread_time_ns() >= 3 * 10 ** 8))\n    while True:\n        time.process_time()\n";
    let (output, result) = bx.run(source, "[]").await;
    assert_eq!(String::from_utf8_lossy(&output), "True True True True");
    assert_eq!(code(&result), ErrorCode::LimitCpu);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_stopped_by_the_memory_limit_and_cannot_catch_it() {
    let bx = TestBox::start(&["--memory-mib", "64"]);
    let source = "def main():\n    hoard = []\n    while True:\n        try:\n            hoard.append(bytearray(1 << 20))\n        except MemoryError:\n            api.send('caught it')\n";
    let (output, result) = bx.run(source, "[]").await;
    assert_eq!(code(&result), ErrorCode::LimitMemory);
    assert!(message(&result).contains("64 MiB"), "{}", message(&result));
    assert!(
        output.is_empty(),
        "the function must not survive to catch MemoryError"
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_waiting_forever_is_stopped_by_the_wall_clock_limit() {
    let bx = TestBox::start(&["--wall-ms", "1000"]);
    let (_, result) = bx.run("def main():\n    api.recv()\n", "[]").await;
    assert_eq!(code(&result), ErrorCode::LimitWallTime);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_ends_with_a_typed_limit_error() {
    let bx = TestBox::start(&[]);
    let source = "import sys\ndef f(n):\n    return f(n + 1)\ndef main():\n    sys.setrecursionlimit(10**7)\n    f(0)\n";
    let (_, result) = bx.run(source, "[]").await;
    // CPython keeps its frames in linear memory, so depending on where the
    // recursion gives out first this is the memory or the stack limit, or
    // CPython's own RecursionError — never a crash.
    assert!(
        matches!(
            code(&result),
            ErrorCode::LimitMemory | ErrorCode::LimitStack | ErrorCode::FunctionException
        ),
        "{:?}",
        result
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_sent_in_one_mib_pieces_fits_in_a_128_mib_instance() {
    let bx = TestBox::fast(&[]);
    let token = bx
        .try_store_with_manifest(
            "def main():\n    chunk = b'z' * (1 << 20)\n    for _ in range(1024):\n        api.send(chunk)\n",
            &crate::harness::FAST_MANIFEST.replace("memory_mib = 256", "memory_mib = 128"),
        )
        .await
        .unwrap();
    let session = bx.invoke(&token, "[]").await;
    let mut attachment = bx.connect().await.attach(&session, None).await.unwrap();
    let mut received = 0u64;
    let mut all_z = true;
    while let Some(data) = attachment.next().await.unwrap() {
        received += data.len() as u64;
        all_z &= data.iter().all(|&b| b == b'z');
    }
    attachment.close().await;
    assert_eq!(received, 1 << 30);
    assert!(all_z);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_never_reads_cannot_make_the_box_buffer_a_flood_of_input() {
    let bx = TestBox::start(&["--wall-ms", "3000"]);
    let token = bx.store("import time\ndef main():\n    api.send('ready')\n    while True:\n        time.sleep(0.01)\n").await;
    let session = bx.invoke(&token, "[]").await;
    let mut attachment = bx.connect().await.attach(&session, None).await.unwrap();
    assert_eq!(attachment.next().await.unwrap().unwrap(), "ready");
    let input = attachment.input();
    let flood = tokio::spawn(async move {
        let chunk = Bytes::from(vec![0u8; 1 << 20]);
        let mut sent = 0u64;
        // Stops when the box stops reading (backpressure) and the session
        // ends; bounded in any case.
        while sent < (1 << 30) {
            if input.send(chunk.clone()).await.is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let result = next_failure(&mut attachment).await;
    assert_eq!(code(&result), ErrorCode::LimitWallTime);
    flood.abort();
    let _ = flood.await;
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_fails_only_its_sessions_and_is_replaced() {
    let bx = TestBox::start(&["--workers", "2"]);
    let token = bx
        .store("def main():\n    api.send('running')\n    api.recv()\n")
        .await;
    let session = bx.invoke(&token, "[]").await;
    let mut attachment = bx.connect().await.attach(&session, None).await.unwrap();
    assert_eq!(attachment.next().await.unwrap().unwrap(), "running");
    let workers = bx.worker_pids();
    assert_eq!(workers.len(), 2, "{workers:?}");
    for pid in &workers {
        // SAFETY: sending SIGKILL to a child process of the test's box.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(*pid as i32, libc::SIGKILL);
        }
    }
    let result = next_failure(&mut attachment).await;
    assert_eq!(code(&result), ErrorCode::WorkerCrashed);
    bx.assert_serves_hello().await;
    assert_eq!(bx.metric("bento_worker_restarts_total").await, 2.0);
    let replaced = bx.worker_pids();
    assert!(
        replaced.iter().all(|pid| !workers.contains(pid)),
        "{replaced:?} vs {workers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_stops_a_running_session_at_once() {
    let bx = TestBox::start(&[]);
    let token = bx
        .store("def main():\n    api.send('spinning')\n    while True:\n        pass\n")
        .await;
    let session = bx.invoke(&token, "[]").await;
    let mut attachment = bx.connect().await.attach(&session, None).await.unwrap();
    assert_eq!(attachment.next().await.unwrap().unwrap(), "spinning");
    bx.connect().await.kill(&session).await.unwrap();
    let result = next_failure(&mut attachment).await;
    assert_eq!(code(&result), ErrorCode::Killed);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrent_instance_cap_refuses_extra_invocations_clearly() {
    let bx = TestBox::start(&["--max-instances", "2"]);
    let token = bx.store("def main():\n    api.recv()\n").await;
    let first = bx.invoke(&token, "[]").await;
    let second = bx.invoke(&token, "[]").await;
    let err = bx
        .connect()
        .await
        .invoke(&token, "main", "[]")
        .await
        .unwrap_err();
    let bento_client::ClientError::Remote { code, message } = err else {
        panic!("{err}")
    };
    assert_eq!(code, ErrorCode::TooManyInstances);
    assert!(message.contains("at most 2 instances"), "{message}");
    bx.connect().await.kill(&first).await.unwrap();
    bx.connect().await.kill(&second).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_output_buffer_cap_refuses_extra_sessions_clearly() {
    // Each session reserves 1 MiB (the minimum manifest's output buffer);
    // the box allows 2 MiB in all.
    let bx = TestBox::start(&["--max-buffered-mib", "2", "--session-retention-secs", "1"]);
    let token = bx.store("def main():\n    api.recv()\n").await;
    let first = bx.invoke(&token, "[]").await;
    let second = bx.invoke(&token, "[]").await;
    let err = bx
        .connect()
        .await
        .invoke(&token, "main", "[]")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            bento_client::ClientError::Remote {
                code: ErrorCode::BufferCapReached,
                ..
            }
        ),
        "{err}"
    );
    bx.connect().await.kill(&first).await.unwrap();
    bx.connect().await.kill(&second).await.unwrap();
    // Killed sessions release their reservation once they expire.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reserved = bx.metric("bento_output_buffer_reserved_bytes").await;
        if reserved == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reservations never released: {reserved} bytes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upload_is_refused_with_the_limit() {
    let bx = TestBox::start(&["--max-source-kib", "1"]);
    let source = format!("# {}\ndef main():\n    pass\n", "x".repeat(2000));
    let err = bx
        .connect()
        .await
        .store("big.py", &source)
        .await
        .unwrap_err();
    let bento_client::ClientError::Remote { code, message } = err else {
        panic!("{err}")
    };
    assert_eq!(code, ErrorCode::InvalidFunction);
    assert!(message.contains("at most 1024"), "{message}");
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_is_killed_and_replaced_once_a_session_overruns_its_wall_limit() {
    let bx = TestBox::start(&["--wall-ms", "1000"]);
    let token = bx
        .store("def main():\n    api.send('up')\n    api.recv()\n")
        .await;
    let session = bx.invoke(&token, "[]").await;
    let mut attachment = bx.connect().await.attach(&session, None).await.unwrap();
    assert_eq!(attachment.next().await.unwrap().unwrap(), "up");
    let workers = bx.worker_pids();
    assert_eq!(workers.len(), 1);
    // SIGSTOP: the worker can no longer enforce the wall-clock limit.
    // SAFETY: signalling a child process of the test's box.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(workers[0] as i32, libc::SIGSTOP);
    }
    let result = next_failure(&mut attachment).await;
    assert_eq!(code(&result), ErrorCode::WorkerCrashed);
    // The box logs before it kills; the test reads its log through a pipe
    // and a thread, which may lag behind the failure on a busy machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !bx.log().contains("overran its wall-clock limit") {
        assert!(std::time::Instant::now() < deadline, "{}", bx.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bx.assert_serves_hello().await;
    assert!(
        !bx.worker_pids().contains(&workers[0]),
        "the hung worker is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_sleep_past_the_wall_limit_ends_at_the_limit_without_taking_its_worker_down() {
    let bx = TestBox::start(&[]);
    // A bystander on the same (only) worker, waiting for input.
    let echo = bx.store("def main():\n    api.send(api.recv())\n").await;
    let bystander = bx.invoke(&echo, "[]").await;
    let sleeper = bx
        .try_store_with_manifest(
            "import time\ndef main():\n    time.sleep(3600)\n",
            "version = 1\n[limits]\nwall_ms = 1000\n",
        )
        .await
        .unwrap();
    let session = bx.invoke(&sleeper, "[]").await;
    let (_, result) = bx.read_all(&session).await;
    assert_eq!(code(&result), ErrorCode::LimitWallTime, "{result:?}");
    let mut attachment = bx.connect().await.attach(&bystander, None).await.unwrap();
    attachment
        .input()
        .send(Bytes::from_static(b"still alive"))
        .await
        .unwrap();
    assert_eq!(attachment.next().await.unwrap().unwrap(), "still alive");
    attachment.close().await;
    assert!(
        !bx.log().contains("killing and replacing"),
        "the sleeper's worker was killed:\n{}",
        bx.log()
    );
    bx.assert_serves_hello().await;
}
