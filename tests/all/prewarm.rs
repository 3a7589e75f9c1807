//! Instances prepared ahead of demand (`box.prewarm_per_worker`): each is
//! used once, bound to its own grant before the function runs, and
//! replaced, also after its worker crashed.

use std::time::{Duration, Instant};

use bento_protocol::ErrorCode;

use crate::harness::{TestBox, code, message};

/// Leaves traces everywhere a Python function can reach in its instance.
const POLLUTER: &str = r#"
import builtins, sys, os, random
import json
def main():
    builtins.leaked = 'secret'
    sys.leaked = 'secret'
    sys.modules['leaked_module'] = sys
    os.environ['LEAKED'] = 'secret'
    json.leaked = 'secret'
    globals()['leaked_global'] = 'secret'
    random.seed(7)
    sys.setrecursionlimit(77)
    try:
        with open('/tmp/bento-leak', 'w') as f:
            f.write('secret')
    except OSError:
        pass
    api.send('polluted %r' % random.random())
"#;

/// Reports every trace the polluter could have left.
const INSPECTOR: &str = r#"
import builtins, sys, os, random
import json
def main(seeded):
    found = []
    if hasattr(builtins, 'leaked'): found.append('builtins')
    if hasattr(sys, 'leaked'): found.append('sys')
    if 'leaked_module' in sys.modules: found.append('sys.modules')
    if 'LEAKED' in os.environ: found.append('environ')
    if hasattr(json, 'leaked'): found.append('module attribute')
    if 'leaked_global' in globals(): found.append('globals')
    if sys.getrecursionlimit() == 77: found.append('recursion limit')
    if random.random() == seeded: found.append('random state')
    try:
        open('/tmp/bento-leak').read()
        found.append('file')
    except OSError:
        pass
    api.send('clean' if not found else 'leaked: ' + ', '.join(found))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_a_function_leaves_behind_is_never_seen_by_the_next_invocations() {
    // One worker, two instances kept ready: the polluter and the inspectors
    // run in turn on prepared instances of the same worker.
    let bx = TestBox::start(&["--prewarm", "2"]);
    let polluter = bx.store(POLLUTER).await;
    let inspector = bx.store(INSPECTOR).await;
    for round in 0..4 {
        let session = bx.invoke(&polluter, "[]").await;
        let (output, result) = bx.read_all(&session).await;
        result.unwrap();
        let output = String::from_utf8(output).unwrap();
        let seeded: f64 = output
            .strip_prefix("polluted ")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("round {round}: {output}"));
        // More inspections than instances kept ready: refilled ones too.
        for _ in 0..3 {
            let session = bx.invoke(&inspector, &format!("[{seeded}]")).await;
            let (output, result) = bx.read_all(&session).await;
            result.unwrap();
            assert_eq!(String::from_utf8_lossy(&output), "clean", "round {round}");
        }
    }
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_on_a_prewarmed_instance_is_stopped_at_its_own_grant() {
    // Instances are made before anyone's grant is known; the 32 MiB grant
    // must still hold on them.
    let bx = TestBox::start(&["--prewarm", "4"]);
    let manifest = "version = 1\n[limits]\nmemory_mib = 48\n";
    let bomb = "def main():\n    hoard = []\n    while True:\n        try:\n            hoard.append(bytearray(1 << 20))\n        except MemoryError:\n            api.send('caught it')\n";
    for _ in 0..6 {
        let (output, result) = bx.run_with_manifest(bomb, manifest, "[]").await;
        assert_eq!(code(&result), ErrorCode::LimitMemory);
        assert!(message(&result).contains("48 MiB"), "{}", message(&result));
        assert!(output.is_empty(), "the function must not catch MemoryError");
    }
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_smaller_than_a_fresh_instance_fails_with_the_memory_limit_before_the_function_runs()
 {
    // A prepared instance already has the runtime's initial memory; a grant
    // below it is refused at binding, as instantiation used to refuse it.
    let bx = TestBox::start(&["--prewarm", "2"]);
    let manifest = "version = 1\n[limits]\nmemory_mib = 1\n";
    let (output, result) = bx
        .run_with_manifest(
            "api.send('module ran')\ndef main():\n    api.send('main ran')\n",
            manifest,
            "[]",
        )
        .await;
    assert_eq!(
        code(&result),
        ErrorCode::LimitMemory,
        "{}",
        message(&result)
    );
    assert!(output.is_empty(), "no code of the function may run");
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ready_instances_are_made_again_after_the_worker_crashed() {
    let bx = TestBox::start(&["--prewarm", "3"]);
    let filled = || bx.log().matches("prewarm: 3 fresh instances ready").count();
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while filled() < n {
            assert!(Instant::now() < deadline, "not refilled: {}", bx.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(1);
    let workers = bx.worker_pids();
    assert_eq!(workers.len(), 1, "{workers:?}");
    // SAFETY: sending SIGKILL to a child process of the test's box.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(workers[0] as i32, libc::SIGKILL);
    }
    // The replacement worker fills its own set.
    wait_for(2);
    let token = bx
        .store("def main(n):\n    api.send('hello %d' % n)\n")
        .await;
    for n in 0..8 {
        let session = bx.invoke(&token, &format!("[{n}]")).await;
        let (output, result) = bx.read_all(&session).await;
        result.unwrap();
        assert_eq!(String::from_utf8_lossy(&output), format!("hello {n}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_with_prewarming_off_still_serves() {
    let bx = TestBox::start(&["--prewarm", "0"]);
    bx.assert_serves_hello().await;
    assert!(!bx.log().contains("fresh instances ready"));
}
