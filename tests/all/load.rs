//! `bento bench load`, short: concurrent clients storing, invoking,
//! detaching/re-attaching and killing against one box lose and duplicate
//! no byte (every session's output is checked by hash), and a new user is
//! answered throughout. Timings are reported by the bench, never asserted.

use std::process::Command;

use crate::harness::{BENTO, runtime};

#[test]
fn fifty_clients_for_ten_seconds_lose_and_duplicate_no_byte_and_new_users_are_answered() {
    let output = Command::new(BENTO)
        .args([
            "bench",
            "load",
            "--clients",
            "50",
            "--duration",
            "10",
            "--think-ms",
            "200",
            "--messages",
            "32",
            "--workers",
            "2",
            "--json",
            "--runtime",
        ])
        .arg(runtime())
        .env("BENTO_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(report["mismatched_sessions"], 0, "{report:#}");
    assert_eq!(report["failures"], 0, "{report:#}");
    assert_eq!(report["probe"]["errors"], 0, "{report:#}");
    assert_eq!(report["clean"], true, "{report:#}");
    assert!(output.status.success(), "{report:#}");
    // The mix really ran: sessions were checked, every kind of operation
    // happened, and the probe was answered.
    assert!(
        report["checked_sessions"].as_u64().unwrap() >= 50,
        "{report:#}"
    );
    for op in ["store", "invoke", "detach", "kill"] {
        assert!(
            report["operations"][op].as_u64().unwrap() > 0,
            "no {op}: {report:#}"
        );
    }
    assert!(
        report["probe"]["answers"].as_u64().unwrap() > 0,
        "{report:#}"
    );
}
