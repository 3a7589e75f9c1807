//! Running a box like a service: `bento serve --config FILE` and
//! `bento doctor`, against real files and a real tor.

use std::process::Command;

use crate::harness::{BENTO, TestBox, runtime};
use crate::local_tor::{Tor, free_port, wait_for_control, write_torrc};

/// `bento doctor ARGS`: (exit code, stdout).
fn doctor(args: &[&str]) -> (i32, String) {
    let out = Command::new(BENTO)
        .arg("doctor")
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run bento doctor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The report line(s) about `topic` with the given verdict.
fn has_line(report: &str, verdict: &str, topic: &str, needle: &str) -> bool {
    report
        .lines()
        .any(|l| l.starts_with(verdict) && l.contains(topic) && l.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_takes_its_options_from_a_config_file_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    // A policy next to the config, named by a relative path: uploads of
    // at most 1 KiB.
    let policy = bento_policy::DEFAULT_POLICY_TOML
        .replace("max_upload_kib = 1024", "max_upload_kib = 1        ");
    assert_ne!(policy, bento_policy::DEFAULT_POLICY_TOML, "policy edited");
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let config = dir.path().join("box.toml");
    std::fs::write(
        &config,
        "policy = \"policy.toml\"\nsession-retention-secs = 60\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let sized = |kib: usize| {
        format!(
            "def main():\n    api.send('x')\n#{}\n",
            "y".repeat(kib * 1024)
        )
    };

    // The file's policy, found relative to the file: 1 KiB.
    let from_file = TestBox::start(&["--config", &config]);
    let refused = from_file
        .try_store_with_manifest(&sized(2), "version = 1\n")
        .await;
    assert!(
        refused.is_err(),
        "2 KiB is over the policy's 1 KiB: {refused:?}"
    );
    from_file.assert_serves_hello().await;
    drop(from_file);

    // The command line's ceiling wins over the file's policy.
    let overridden = TestBox::start(&["--config", &config, "--max-source-kib", "5"]);
    overridden
        .try_store_with_manifest(&sized(4), "version = 1\n")
        .await
        .unwrap();
    overridden.assert_serves_hello().await;
}

#[test]
fn serve_refuses_a_config_file_with_an_unknown_key_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("box.toml");
    std::fs::write(&config, "data-dir = \"state\"\nmax-instance = 3\n").unwrap();
    let out = Command::new(BENTO)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown key \"max-instance\""), "{stderr}");
    assert!(stderr.contains("max-instances"), "lists the keys: {stderr}");
    assert!(!dir.path().join("state").exists(), "nothing created");
}

#[test]
fn doctor_names_each_problem_with_its_fix_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the data directory should be, a policy that does not
    // parse, a ControlPort nobody listens on, and the listen port taken.
    let data = dir.path().join("data");
    std::fs::write(&data, b"not a directory").unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[instance]\nmemory_mib = \"lots\"\n").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let control = format!("127.0.0.1:{}", free_port());
    let (code, report) = doctor(&[
        "--data-dir",
        &data.display().to_string(),
        "--policy",
        &policy.display().to_string(),
        "--runtime",
        &runtime().display().to_string(),
        "--listen",
        &listen,
        "--tor-control",
        &control,
    ]);
    assert_eq!(code, 1, "{report}");
    assert!(
        has_line(&report, "FAIL", "data dir", "not a directory"),
        "{report}"
    );
    assert!(
        has_line(&report, "FAIL", "policy", "policy.toml"),
        "{report}"
    );
    assert!(
        report.contains("expected u64"),
        "says what is wrong: {report}"
    );
    assert!(has_line(&report, "FAIL", "listen", &listen), "{report}");
    assert!(has_line(&report, "FAIL", "tor", &control), "{report}");
    assert!(
        report.contains("ControlPort 9051"),
        "says how to enable it: {report}"
    );
    assert!(has_line(&report, "ok", "runtime", "loads"), "{report}");
    assert!(report.contains("problem(s) to fix"), "{report}");
}

#[test]
fn doctor_warns_about_a_data_directory_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, report) = doctor(&[
        "--data-dir",
        &data.display().to_string(),
        "--runtime",
        &runtime().display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--max-instances",
        "4",
    ]);
    assert_eq!(code, 0, "warnings do not fail: {report}");
    assert!(has_line(&report, "WARN", "data dir", "755"), "{report}");
    assert!(report.contains("chmod 700"), "{report}");
    assert!(
        has_line(&report, "WARN", "tor", "no tor-control"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_sound_box_beside_a_real_tor() {
    let dir = tempfile::tempdir().unwrap();
    let (control_port, socks_port) = (free_port(), free_port());
    write_torrc(dir.path(), control_port, Some(socks_port));
    let _tor = Tor::start(dir.path());
    let control = format!("127.0.0.1:{control_port}");
    wait_for_control(&control).await;
    let data = dir.path().join("box");
    let config = dir.path().join("box.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = \"box\"\nlisten = \"127.0.0.1:0\"\ntor-control = \"{control}\"\n\
             runtime = \"{}\"\nmax-instances = 4\n",
            runtime().display()
        ),
    )
    .unwrap();
    let (code, report) = doctor(&["--config", &config.display().to_string()]);
    assert_eq!(code, 0, "{report}");
    assert!(has_line(&report, "ok", "config", "parsed"), "{report}");
    assert!(has_line(&report, "ok", "tor", "authenticated"), "{report}");
    assert!(has_line(&report, "ok", "tor", "proof-of-work"), "{report}");
    assert!(
        has_line(
            &report,
            "ok",
            "tor",
            &format!("SocksPort 127.0.0.1:{socks_port} answers")
        ),
        "{report}"
    );
    // Its only bridge is closed: tor never bootstraps, and doctor says so.
    assert!(has_line(&report, "WARN", "tor", "bootstrapped"), "{report}");
    assert!(
        has_line(&report, "ok", "data dir", "will be created"),
        "{report}"
    );
    assert!(!data.exists(), "doctor only looks: {}", data.display());
}
