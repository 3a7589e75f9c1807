//! The `bento` command line against a real box.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::harness::{BENTO, TestBox};

fn bento(bx: &TestBox, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BENTO)
        .args(args)
        .env("BENTO_SERVER", &bx.addr)
        .env_remove("BENTO_SOCKS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn write_function(dir: &tempfile::TempDir, name: &str, source: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, source).unwrap();
    path.display().to_string()
}

#[test]
fn bento_run_prints_hello_world() {
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let hello = write_function(
        &dir,
        "hello.py",
        "def main(name): api.send(\"hello \" + name)\n",
    );
    let out = bento(&bx, &["run", &hello, "--", "world"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello world");
}

#[test]
fn store_and_invoke_print_json_and_attach_forwards_stdin() {
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let echo = write_function(
        &dir,
        "echo.py",
        "def main(prefix):\n    while True:\n        m = api.recv()\n        if not m:\n            return\n        api.send(prefix.encode() + m)\n",
    );
    let out = bento(&bx, &["store", &echo, "--json"], b"");
    assert!(out.status.success());
    let stored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stored["function_id"].as_str().unwrap().len(), 64);
    let token = stored["invoke_token"].as_str().unwrap().to_string();

    let out = bento(&bx, &["invoke", &token, "--json", "--", "> "], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let invoked: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let session = invoked["session_token"].as_str().unwrap().to_string();

    let out = bento(&bx, &["attach", &session], b"ping");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"> ping");
}

#[test]
fn arguments_are_json_when_they_parse_and_strings_otherwise() {
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let show = write_function(
        &dir,
        "show.py",
        "def main(*args):\n    api.send(repr(args))\n",
    );
    let out = bento(
        &bx,
        &[
            "run",
            &show,
            "--",
            "42",
            "[1, 2]",
            "{\"k\": true}",
            "plain text",
            "null",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "(42, [1, 2], {'k': True}, 'plain text', None)"
    );
}

#[test]
fn a_failing_function_exits_non_zero_with_the_traceback_on_stderr() {
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let bad = write_function(
        &dir,
        "bad.py",
        "def main():\n    api.send('partial')\n    1 / 0\n",
    );
    let out = bento(&bx, &["run", &bad], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stdout, b"partial");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("function_exception"), "{stderr}");
    assert!(stderr.contains("ZeroDivisionError"), "{stderr}");
    assert!(stderr.contains("bad.py\", line 3"), "{stderr}");
}

#[test]
fn bad_tokens_and_unknown_sessions_exit_2_with_a_clear_message() {
    let bx = TestBox::start(&[]);
    // A malformed token is the request's fault: exit 2, like an unknown one.
    for command in ["attach", "invoke", "kill"] {
        let out = bento(&bx, &[command, "../../etc/passwd"], b"");
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("64 hexadecimal digits"),
            "{command}"
        );
    }
    let out = bento(&bx, &["attach", &"ab".repeat(32)], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_session"));
}

#[test]
fn status_shows_version_and_load() {
    let bx = TestBox::start(&[]);
    let out = bento(&bx, &["status"], b"");
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["protocol_version"], bento_protocol::PROTOCOL_VERSION);
    assert_eq!(status["workers"]["configured"], 1);
    assert!(status["software"].as_str().unwrap().starts_with("bento "));
}

#[test]
fn an_unreachable_box_is_reported_not_a_panic() {
    let out = Command::new(BENTO)
        .args(["--server", "127.0.0.1:1", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection to the box failed"));
}

#[test]
fn workers_run_under_an_operator_wrapper() {
    // `env` execs the worker command it is given, like a jail or TEE loader.
    let bx = TestBox::start(&["--worker-wrapper", "env BENTO_WRAPPED=1"]);
    let dir = tempfile::tempdir().unwrap();
    let hello = write_function(
        &dir,
        "hello.py",
        "def main(name): api.send(\"hello \" + name)\n",
    );
    let out = bento(&bx, &["run", &hello, "--", "wrapped"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello wrapped");
    let worker = bx.worker_pids()[0];
    let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|var| var == b"BENTO_WRAPPED=1"),
        "the worker runs under the wrapper"
    );
}

#[test]
fn a_wrapper_that_cannot_start_workers_fails_serve_with_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BENTO)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--worker-wrapper",
            "false",
            "--data-dir",
        ])
        .arg(data.path())
        .arg("--runtime")
        .arg(crate::harness::runtime())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot start a sandbox worker (false "),
        "{stderr}"
    );
    assert!(stderr.contains("exited before it was ready"), "{stderr}");
}

#[test]
fn serve_without_the_runtime_says_how_to_build_it() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BENTO)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            "/nonexistent/runtime.cwasm",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scripts/setup.sh"));
}

fn bento_offline(args: &[&str]) -> Output {
    Command::new(BENTO).args(args).output().unwrap()
}

#[test]
fn an_unreadable_file_is_named_with_its_cause_once_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.py").display().to_string();
    let policy = dir.path().join("missing.toml").display().to_string();
    for args in [
        vec!["--server", "127.0.0.1:1", "run", missing.as_str()],
        vec![
            "policy",
            "check",
            missing.as_str(),
            "--policy",
            policy.as_str(),
        ],
    ] {
        let out = bento_offline(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("cannot read"), "{args:?}: {stderr}");
        assert_eq!(
            stderr.matches("No such file or directory").count(),
            1,
            "the cause once: {stderr}"
        );
    }
}

#[test]
fn a_client_option_on_a_command_that_reaches_no_box_is_refused_but_its_environment_variable_is_not()
{
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data").display().to_string();
    for (args, option, command) in [
        (
            vec!["serve", "--server", "1.2.3.4:5", "--data-dir", &data_dir],
            "--server",
            "serve",
        ),
        (vec!["--sealed", "policy", "default"], "--sealed", "policy"),
        (vec!["bench", "soak", "--tor", "direct"], "--tor", "bench"),
        (
            vec!["testnet", "status", "--require-tee", "tdx"],
            "--require-tee",
            "testnet",
        ),
    ] {
        let out = bento_offline(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{option} is for commands that reach a box; `bento {command}` reaches none"
            )),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        !std::path::Path::new(&data_dir).exists(),
        "the refused serve started nothing"
    );
    // A user's environment that names their box does not break the
    // commands that reach none.
    let out = Command::new(BENTO)
        .args(["policy", "default"])
        .env("BENTO_SERVER", "1.2.3.4:5")
        .env("BENTO_SEALED", "true")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn policy_check_lists_every_violation_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_function(
        &dir,
        "fn.toml",
        "version = 1\ncapabilities = [\"connect\"]\n[limits]\nmemory_mib = 512\n",
    );
    let out = bento_offline(&["policy", "check", &manifest]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("asks for 512 MiB memory per instance; this box allows 128 MiB"),
        "{stderr}"
    );
    assert!(
        stderr.contains("asks for the `connect` capability; this box does not grant it"),
        "{stderr}"
    );
}

#[test]
fn policy_check_accepts_a_fitting_manifest_against_a_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    let default = bento_offline(&["policy", "default"]);
    assert!(default.status.success());
    let policy_text = String::from_utf8(default.stdout)
        .unwrap()
        .replace(
            "destinations = [\"reject *:*\"]",
            "destinations = [\"accept 127.0.0.1:8080\"]",
        )
        .replace(
            "capabilities = [\"storage\"",
            "capabilities = [\"connect\", \"storage\"",
        );
    let policy = write_function(&dir, "policy.toml", &policy_text);
    let manifest = write_function(
        &dir,
        "fn.toml",
        "version = 1\ncapabilities = [\"connect\"]\ndestinations = [\"accept 127.0.0.1:8080\"]\n",
    );
    let out = bento_offline(&["policy", "check", &manifest, "--policy", &policy]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("capabilities: connect"), "{stdout}");
    assert!(
        stdout.contains("destinations: accept 127.0.0.1:8080"),
        "{stdout}"
    );
    // The same manifest against the default policy is refused.
    let out = bento_offline(&["policy", "check", &manifest]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn policy_check_reports_a_malformed_manifest_with_its_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_function(&dir, "fn.toml", "version = 1\nmemry = 3\n");
    let out = bento_offline(&["policy", "check", &manifest]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `memry`"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn ctrl_c_detaches_attach_and_a_second_attach_resumes_exactly() {
    use std::io::{BufRead, BufReader};
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ticks = write_function(
        &dir,
        "ticks.py",
        "import time\ndef main():\n    for i in range(6):\n        api.send(f'tick {i}\\n')\n        time.sleep(0.3)\n",
    );
    let token = String::from_utf8(bento(&bx, &["store", &ticks], b"").stdout).unwrap();
    let session = String::from_utf8(bento(&bx, &["invoke", token.trim()], b"").stdout).unwrap();
    let session = session.trim();

    let mut child = Command::new(BENTO)
        .args(["attach", session])
        .env("BENTO_SERVER", &bx.addr)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first, "tick 0\n");
    // SAFETY: signalling our own child process.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let mut rest_of_first = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest_of_first).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("detached at output offset"), "{stderr}");
    assert!(
        stderr.contains(&format!("bento attach {session}")),
        "{stderr}"
    );

    let second = bento(&bx, &["attach", session], b"");
    assert!(second.status.success());
    let all = format!(
        "{first}{rest_of_first}{}",
        String::from_utf8(second.stdout).unwrap()
    );
    let expected: String = (0..6).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(all, expected, "nothing lost or repeated across the detach");
}

#[test]
fn a_store_refused_by_the_policy_gives_the_same_reasons_as_policy_check() {
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let source = write_function(&dir, "greedy.py", "def main():\n    pass\n");
    // Picked up from next to the source, as greedy.toml.
    let manifest = write_function(
        &dir,
        "greedy.toml",
        "version = 1\ncapabilities = [\"http\"]\ndestinations = [\"accept 192.168.0.10:80\"]\n[limits]\nmemory_mib = 1024\nchannels = 100\n",
    );
    let check = bento_offline(&["policy", "check", &manifest]);
    assert_eq!(check.status.code(), Some(1));
    let check_reasons: Vec<String> = String::from_utf8_lossy(&check.stderr)
        .lines()
        .filter(|l| l.trim_start().starts_with("- "))
        .map(|l| l.trim().to_owned())
        .collect();
    assert_eq!(check_reasons.len(), 4, "{check_reasons:?}");

    let store = bento(&bx, &["store", &source], b"");
    assert_eq!(
        store.status.code(),
        Some(2),
        "a refused manifest is a bad request"
    );
    let stderr = String::from_utf8_lossy(&store.stderr);
    assert!(stderr.contains("[manifest_rejected]"), "{stderr}");
    for reason in &check_reasons {
        assert!(
            stderr.contains(reason.as_str()),
            "missing {reason:?} in:\n{stderr}"
        );
    }
}

#[test]
fn bento_connect_picks_up_what_the_invoker_dropped_using_the_service_token() {
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let dropbox = write_function(
        &dir,
        "dropbox.py",
        "def main():\n    data = api.recv()\n    api.send('ok')\n    channel = api.accept()\n    channel.send(data)\n    channel.close()\n",
    );
    write_function(
        &dir,
        "dropbox.toml",
        "version = 1\ncapabilities = [\"service\"]\n",
    );
    let token = String::from_utf8(bento(&bx, &["store", &dropbox], b"").stdout).unwrap();
    let invoked = bento(&bx, &["invoke", token.trim(), "--json"], b"");
    assert!(invoked.status.success());
    let json: serde_json::Value = serde_json::from_slice(&invoked.stdout).unwrap();
    let session = json["session_token"].as_str().unwrap().to_owned();
    let service = json["service_token"].as_str().unwrap().to_owned();

    // The invoker's attach ends when the function does, after the pick-up.
    let addr = bx.addr.clone();
    let drop_off = std::thread::spawn(move || {
        let mut child = Command::new(BENTO)
            .args(["attach", &session])
            .env("BENTO_SERVER", &addr)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(b"a secret for someone else").unwrap();
        drop(pipe);
        child.wait_with_output().unwrap()
    });
    let pick_up = bento(&bx, &["connect", &service], b"");
    assert!(
        pick_up.status.success(),
        "{}",
        String::from_utf8_lossy(&pick_up.stderr)
    );
    assert_eq!(pick_up.stdout, b"a secret for someone else");
    let drop_off = drop_off.join().unwrap();
    assert!(drop_off.status.success());
    assert_eq!(drop_off.stdout, b"ok");

    // The instance has ended: its service token no longer opens anything.
    let again = bento(&bx, &["connect", &service], b"");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("[unknown_service]"));
}

#[test]
fn a_function_without_the_service_capability_gets_no_service_token() {
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let hello = write_function(&dir, "plain.py", "def main():\n    pass\n");
    let token = String::from_utf8(bento(&bx, &["store", &hello], b"").stdout).unwrap();
    let invoked = bento(&bx, &["invoke", token.trim(), "--json"], b"");
    let json: serde_json::Value = serde_json::from_slice(&invoked.stdout).unwrap();
    assert!(json.get("service_token").is_none(), "{json}");
}

#[test]
fn serve_refuses_an_unusable_ca_file_and_a_legacy_manifest_the_policy_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let runtime = crate::harness::runtime().display().to_string();
    let bad_ca = write_function(&dir, "ca.pem", "not a certificate\n");
    let greedy = write_function(
        &dir,
        "legacy.toml",
        "version = 1\n[limits]\nmemory_mib = 4096\n",
    );
    for (option, file, expected) in [
        ("--http-ca-file", &bad_ca, "--http-ca-file"),
        (
            "--legacy-manifest",
            &greedy,
            "asks for 4096 MiB memory per instance",
        ),
    ] {
        let out = Command::new(BENTO)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", &data])
            .args(["--runtime", &runtime, option, file])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{option} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{option}: {stderr}");
    }
}

/// Every function the project ships is admitted by the default box policy,
/// except for exit fetching (`http`), which is the operator's choice: for
/// those the only violation is the `http` capability.
#[test]
fn the_default_policy_admits_every_shipped_function_except_for_exit_fetching() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../functions");
    let mut checked = 0;
    for dir in std::fs::read_dir(&root).unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let manifest = std::fs::read_to_string(&path).unwrap();
            let out = bento_offline(&["policy", "check", path.to_str().unwrap()]);
            let report = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            let asks_http = bento_policy::Manifest::from_toml(&manifest)
                .unwrap()
                .capabilities
                .contains(&bento_policy::Capability::Http);
            if asks_http {
                let violations: Vec<&str> =
                    report.lines().filter(|l| l.starts_with("  - ")).collect();
                assert_eq!(
                    violations,
                    ["  - asks for the `http` capability; this box does not grant it"],
                    "{}: {report}",
                    path.display()
                );
            } else {
                assert!(out.status.success(), "{}: {report}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "found only {checked} manifests under {}",
        root.display()
    );
}

/// The function clients map every failure to the exit code `bento --help`
/// documents (one mapping, crates/bento-cli/src/exit.rs): 2 for the
/// request's fault, 3 for the box's (1, the function's, is shown by the
/// Browser's tests); the box they talked to still serves the next user.
#[test]
fn function_clients_exit_with_the_documented_code_for_whose_fault_a_failure_is() {
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out").display().to_string();
    let missing = dir.path().join("missing").display().to_string();
    let nobody = format!("{}@{}", "ab".repeat(32), bx.addr);
    for (args, expected) in [
        // An input that cannot be read.
        (vec!["drop", "put", missing.as_str()], "cannot read"),
        (
            vec!["cover", "--duration", "1s", "--data", missing.as_str()],
            "cannot read",
        ),
        (vec!["store", missing.as_str()], "cannot read"),
        (vec!["run", missing.as_str()], "cannot read"),
        // A malformed pick-up token; one the box does not know.
        (
            vec!["drop", "get", "not-a-token", "--out", out.as_str()],
            "SERVICE_TOKEN@BOX",
        ),
        (
            vec!["drop", "get", nobody.as_str(), "--out", out.as_str()],
            "nothing to pick up",
        ),
        // Options the function would refuse, refused first.
        (vec!["cover", "--cell-size", "63"], "cell size"),
        (
            vec!["drop", "put", "--expires", "281s", missing.as_str()],
            "--expires",
        ),
        // A fraction of a second where whole seconds are counted.
        (
            vec!["drop", "put", "--expires", "1500ms", missing.as_str()],
            "whole seconds",
        ),
    ] {
        let output = bento(&bx, &args, b"");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // A box that cannot be reached is the box's fault.
    let unreachable = Command::new(BENTO)
        .args(["--server", "127.0.0.1:1", "cover", "--duration", "1s"])
        .env_remove("BENTO_SOCKS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(unreachable.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("connection to the box failed"), "{stderr}");
    // Nothing was left behind, and the box serves the next user.
    assert!(!std::path::Path::new(&out).exists());
    let hello = write_function(&dir, "hello.py", "def main():\n    api.send(b'next')\n");
    let next = bento(&bx, &["run", &hello], b"");
    assert!(next.status.success());
    assert_eq!(next.stdout, b"next");
}
