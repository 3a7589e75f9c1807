//! The Dropbox function and `bento drop put|get`, end to end over the
//! private Tor network: a file dropped at an onion box is picked up by
//! holders of the token, as often as allowed, until it expires.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::BENTO;
use crate::tor::net;

/// `bento` against box `index` of the shared network, through its SOCKS port.
fn bento(index: usize, args: &[&str]) -> Output {
    let net = net();
    let mut child = Command::new(BENTO)
        .args(["--server", &net.boxes[index], "--socks", &net.socks])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn put(dir: &tempfile::TempDir, data: &[u8], extra: &[&str]) -> String {
    let file = dir.path().join("secret.bin");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(data)
        .unwrap();
    let mut args = vec!["drop", "put", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = bento(0, &args);
    assert!(out.status.success(), "drop put failed: {}", stderr(&out));
    std::fs::write(dir.path().join("put.err"), stderr(&out)).unwrap();
    assert!(
        stderr(&out).contains(&format!("stored {} bytes", data.len())),
        "{}",
        stderr(&out)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn get(dir: &tempfile::TempDir, token: &str, name: &str) -> (Output, std::path::PathBuf) {
    let out_path = dir.path().join(name);
    // Any box's address works as the way in: the token names the box.
    let out = bento(
        1,
        &["drop", "get", token, "--out", out_path.to_str().unwrap()],
    );
    (out, out_path)
}

#[test]
fn a_dropped_file_is_picked_up_byte_for_byte_as_often_as_allowed_then_gone() {
    let _turn = crate::tor::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..700_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let token = put(&dir, &data, &["--max-gets", "2"]);
    assert!(
        token.contains(".onion:"),
        "the token names the box: {token}"
    );

    for name in ["first.bin", "second.bin"] {
        let (out, path) = get(&dir, &token, name);
        if !out.status.success() {
            let session = std::fs::read_to_string(dir.path().join("put.err")).unwrap_or_default();
            let session = session
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            let why = bento(0, &["attach", &session]);
            panic!(
                "drop get failed: {}\nthe dropbox session: {}{}",
                stderr(&out),
                String::from_utf8_lossy(&why.stdout),
                stderr(&why)
            );
        }
        assert_eq!(std::fs::read(&path).unwrap(), data, "{name} differs");
    }
    let (out, path) = get(&dir, &token, "third.bin");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing to pick up"),
        "{}",
        stderr(&out)
    );
    assert!(!path.exists(), "a failed pick-up writes nothing");
}

#[test]
fn a_drop_expires_and_then_nothing_can_be_picked_up() {
    let _turn = crate::tor::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let token = put(
        &dir,
        b"short-lived",
        &["--expires", "2s", "--max-gets", "5"],
    );
    let started = Instant::now();
    // Expiry is checked by the function; wait until well past it.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(started.elapsed()));
    let (out, _) = get(&dir, &token, "late.bin");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing to pick up"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_file_larger_than_the_dropbox_holds_is_refused_before_upload() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    std::fs::write(&file, vec![0u8; 2 * 1024 * 1024]).unwrap();
    let out = bento(0, &["drop", "put", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the Dropbox holds at most"),
        "{}",
        stderr(&out)
    );
    let out = bento(0, &["drop", "get", "not-a-token", "--out", "/dev/null"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("SERVICE_TOKEN@BOX"),
        "{}",
        stderr(&out)
    );
}
