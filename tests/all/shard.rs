//! The Shard function and `bento shard put|get`, end to end over the private
//! Tor network: a file erasure-coded into n shards, each left in a Dropbox
//! on a different onion box by the Shard function on an entry box; any k
//! shards bring it back byte for byte, fewer give an error that counts them.

use bento_client::Connection;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::harness::{BENTO, TestBox};
use crate::tor::{net, onion_box, onion_test_box};

/// `bento` through the network's SOCKS port, with `server` as `--server`.
fn bento(server: &str, args: &[&str]) -> Output {
    Command::new(BENTO)
        .args(["--server", server, "--socks", &net().socks])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Bytes that no two shards share by accident.
fn sample_file(dir: &Path, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let data = crate::browser::noise(len, 0x2545_f491);
    let path = dir.join("file.bin");
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

fn recovery_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn get(recovery: &Path, out: &Path) -> Output {
    // Any box serves as `--server`: `get` goes to the boxes the recovery file names.
    bento(
        &net().boxes[1],
        &[
            "shard",
            "get",
            recovery.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
}

#[test]
fn a_file_comes_back_from_any_k_of_its_n_shards_and_fewer_say_how_many_are_needed() {
    let _turn = crate::tor::one_at_a_time();
    let mut boxes: Vec<Option<(TestBox, String)>> =
        (0..4).map(|_| Some(onion_test_box(None))).collect();
    let addresses: Vec<String> = boxes.iter().flatten().map(|(_, a)| a.clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = sample_file(dir.path(), 300_001);
    let recovery = dir.path().join("file.shards");

    let put = bento(
        &net().boxes[0],
        &[
            "shard",
            "put",
            file.to_str().unwrap(),
            "--boxes",
            &addresses.join(","),
            "-k",
            "2",
            "-n",
            "4",
            "--recovery",
            recovery.to_str().unwrap(),
        ],
    );
    assert!(put.status.success(), "shard put failed: {}", stderr(&put));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&recovery).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the recovery file holds the tokens");
    let json = recovery_json(&recovery);
    let placed: Vec<(u64, String)> = json["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["index"].as_u64().unwrap(),
                s["server"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = (0..4).map(|i| (i, addresses[i as usize].clone())).collect();
    assert_eq!(placed, expected, "one shard per box, in order");

    let whole = dir.path().join("whole.bin");
    let out = get(&recovery, &whole);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&whole).unwrap() == data,
        "rebuilt byte for byte"
    );

    // Stop n − k boxes: the two holding the file's own bytes (shards 0 and
    // 1), so only the recovery shards are left to rebuild it from.
    boxes[0] = None;
    boxes[1] = None;
    let rebuilt = dir.path().join("rebuilt.bin");
    let out = get(&recovery, &rebuilt);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&rebuilt).unwrap() == data,
        "rebuilt byte for byte from shards 2 and 3"
    );
    assert!(stderr(&out).contains("shards [2, 3]"), "{}", stderr(&out));

    // One more box gone: one shard is left and two are needed.
    boxes[2] = None;
    let lost = dir.path().join("lost.bin");
    let out = get(&recovery, &lost);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("only 1 of 4 shards could be fetched and 2 are needed"),
        "{}",
        stderr(&out)
    );
    assert!(!lost.exists() && !lost.with_extension("part").exists());
    drop(boxes);
}

#[test]
fn shards_go_to_spare_boxes_when_a_box_refuses_and_a_bad_shard_is_replaced() {
    let _turn = crate::tor::one_at_a_time();
    let refusing_policy = bento_policy::DEFAULT_POLICY_TOML.replacen("\"storage\", ", "", 1);
    assert_ne!(refusing_policy, bento_policy::DEFAULT_POLICY_TOML);
    let (_refusing, refusing) = onion_test_box(Some(&refusing_policy));
    let (_first, first) = onion_test_box(None);
    let (_second, second) = onion_test_box(None);
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = sample_file(dir.path(), 5_000);
    let recovery = dir.path().join("file.shards");

    let boxes = [refusing.as_str(), first.as_str(), second.as_str()].join(",");
    let put = bento(
        &net().boxes[0],
        &[
            "shard",
            "put",
            file.to_str().unwrap(),
            "--boxes",
            &boxes,
            "-k",
            "1",
            "-n",
            "2",
            "--recovery",
            recovery.to_str().unwrap(),
        ],
    );
    assert!(put.status.success(), "{}", stderr(&put));
    assert!(
        stderr(&put).contains(&format!(
            "shard 0: not placed on {refusing}: RemoteError: manifest_rejected"
        )),
        "{}",
        stderr(&put)
    );
    let servers: Vec<String> = recovery_json(&recovery)["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["server"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        servers,
        [first.clone(), second.clone()],
        "the spare took over"
    );

    // A shard that does not match its checksum is not used: the next one is.
    let mut json = recovery_json(&recovery);
    json["shards"][0]["sha256"] = serde_json::json!("00".repeat(32));
    let tampered = dir.path().join("tampered.shards");
    std::fs::write(&tampered, serde_json::to_vec(&json).unwrap()).unwrap();
    let out_path = dir.path().join("out.bin");
    let out = get(&tampered, &out_path);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not match its checksum"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(&out_path).unwrap() == data);
}

#[test]
fn shard_put_refuses_impossible_requests_before_contacting_any_box() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = sample_file(dir.path(), 100);
    let (big, _) = {
        let path = dir.path().join("big.bin");
        std::fs::write(&path, vec![7u8; 1024 * 1024 + 1]).unwrap();
        (path, ())
    };
    let file = file.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "shard",
                "put",
                file,
                "--boxes",
                "a.onion:1,b.onion:1",
                "-k",
                "2",
                "-n",
                "2",
            ],
            "-k must be at least 1 and less than -n",
        ),
        (
            &[
                "shard",
                "put",
                file,
                "--boxes",
                "a.onion:1,b.onion:1",
                "-k",
                "1",
                "-n",
                "3",
            ],
            "3 shards need 3 boxes, one each; --boxes names 2",
        ),
        (
            &[
                "shard",
                "put",
                file,
                "--boxes",
                "a.onion:1,a.onion:1",
                "-k",
                "1",
            ],
            "a.onion:1 is named twice in --boxes",
        ),
        (
            &[
                "shard",
                "put",
                big.to_str().unwrap(),
                "--boxes",
                "a.onion:1,b.onion:1",
                "-k",
                "1",
            ],
            "more than a Dropbox holds",
        ),
        (
            &["shard", "get", file, "--out", "x"],
            "is not a recovery file from `bento shard put`",
        ),
    ];
    for (args, expected) in cases {
        // An address nothing listens on: these must fail before any connection.
        let out = Command::new(BENTO)
            .args(["--server", "127.0.0.1:9"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // The entry box still serves the next user.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut conn = Connection::connect(&onion_box(0)).await.unwrap();
        let (_, token) = conn
            .store("hello.py", "def main():\n    api.send('still here')\n")
            .await
            .unwrap();
        let session = conn.invoke(&token, "main", "[]").await.unwrap();
        let mut attachment = Connection::connect(&onion_box(0))
            .await
            .unwrap()
            .attach(&session, None)
            .await
            .unwrap();
        assert_eq!(attachment.next().await.unwrap().unwrap(), "still here");
    });
}
