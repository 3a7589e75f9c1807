//! Attestation end to end: `bento attest`, `--require-tee`,
//! `--expect-measurement`, the unattested warning, and hostile boxes.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bento_attest::{Binding, EvidenceSource, NoTee};
use bento_client::{ClientError, Connection, Requirement, Target, TeeKind};
use bento_protocol::{ATTEST_NONCE_LEN, ErrorCode, Frame, FrameDecoder, PROTOCOL_VERSION};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{BENTO, TestBox, runtime};

fn bento(bx: &TestBox, args: &[&str]) -> Output {
    Command::new(BENTO)
        .args(args)
        .env("BENTO_SERVER", &bx.addr)
        .env_remove("BENTO_SOCKS")
        .env_remove("BENTO_REQUIRE_TEE")
        .env_remove("BENTO_EXPECT_MEASUREMENT")
        .env_remove("BENTO_ALLOW_UNATTESTED")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn hello_function(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("hello.py");
    std::fs::write(&path, "def main(name): api.send('hello ' + name)\n").unwrap();
    path.display().to_string()
}

#[test]
fn bento_attest_says_plainly_that_an_unattested_box_proves_nothing_and_states_its_measurement() {
    let bx = TestBox::start(&[]);
    let out = bento(&bx, &["attest"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("no TEE"), "{stdout}");
    assert!(stdout.contains("operator can read"), "{stdout}");

    // The box states the measurement of its worker (this bento binary) and
    // runtime; a user computes the same value with `bento attest measure`.
    let runtime = runtime().display().to_string();
    let measure = || {
        bento(
            &bx,
            &[
                "attest",
                "measure",
                "--worker",
                BENTO,
                "--runtime",
                &runtime,
            ],
        )
    };
    let measured = measure();
    assert!(measured.status.success(), "{}", text(&measured.stderr));
    let digest = text(&measured.stdout).trim().to_owned();
    assert_eq!(digest.len(), 64, "{digest}");
    assert!(
        stdout.contains(&format!("software {digest} (claimed, unproven)")),
        "{stdout}"
    );
    // Measuring twice gives the same digest (reproducible).
    let again = measure();
    assert_eq!(text(&again.stdout).trim(), digest);
}

#[test]
fn require_tee_refuses_an_unattested_box_before_anything_is_uploaded() {
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let hello = hello_function(&dir);
    for flags in [
        vec!["--require-tee"],
        vec!["--require-tee", "sgx"],
        vec!["--require-tee", "tdx"],
        vec!["--expect-measurement", &"ab".repeat(32)],
    ] {
        let mut args = vec!["run", hello.as_str()];
        args.extend(flags.iter().copied());
        args.extend(["--", "world"]);
        let out = bento(&bx, &args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{flags:?}: {stderr}");
        assert!(stderr.contains("box refused"), "{flags:?}: {stderr}");
        assert!(stderr.contains("nothing was sent"), "{flags:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }
    // The box never saw a Store, nor a Run.
    assert!(!bx.log().contains("stored a function"), "{}", bx.log());
    assert!(!bx.log().contains("started a session"), "{}", bx.log());
    // And it serves the next user, who accepts an unattested box.
    let out = bento(&bx, &["run", &hello, "--allow-unattested", "--", "world"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"hello world");
    assert!(bx.log().contains("started a session"));
}

#[test]
fn without_a_requirement_the_client_warns_once_unless_silenced() {
    let bx = TestBox::start(&[]);
    let out = bento(&bx, &["status"]);
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.matches("warning: the box is not attested").count(),
        1,
        "{stderr}"
    );
    let out = bento(&bx, &["status", "--allow-unattested"]);
    assert!(out.status.success());
    assert!(!text(&out.stderr).contains("not attested"));
}

#[test]
fn a_minimum_snp_tcb_alone_lets_an_unattested_box_through_with_the_warning_and_with_sev_snp_refuses_it()
 {
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let hello = hello_function(&dir);
    let out = bento(
        &bx,
        &["run", &hello, "--min-snp-tcb", "snp=8", "--", "world"],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(out.stdout, b"hello world");
    assert_eq!(
        stderr.matches("warning: the box is not attested").count(),
        1,
        "{stderr}"
    );
    let out = bento(
        &bx,
        &[
            "run",
            &hello,
            "--require-tee=sev-snp",
            "--min-snp-tcb",
            "snp=8",
            "--",
            "world",
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("nothing was sent"), "{stderr}");
}

#[test]
fn a_bad_requirement_is_a_request_error_not_a_refused_box() {
    let bx = TestBox::start(&[]);
    for flags in [
        ["--require-tee", "sgx2"],
        ["--expect-measurement", "xyz"],
        ["--min-snp-tcb", "psp=1"],
    ] {
        let out = bento(&bx, &["status", flags[0], flags[1]]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flags:?}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_refuses_an_unattested_box_with_a_typed_error() {
    let bx = TestBox::start(&[]);
    let requirement = Requirement {
        tee: bento_client::TeeRequirement::AnyTee,
        measurement: None,
        min_snp_tcb: None,
    };
    match Connection::connect_attested(&bx.target(), &requirement).await {
        Err(ClientError::Attestation(bento_client::AttestError::TeeRequired {
            offered: TeeKind::None,
            ..
        })) => {}
        other => panic!("expected TeeRequired, got {other:?}"),
    }
    // Without a requirement the evidence verifies (nonce-bound) and the
    // connection goes on to serve requests.
    let (mut conn, verified) = Connection::connect_attested(&bx.target(), &Requirement::default())
        .await
        .unwrap();
    assert_eq!(verified.kind, TeeKind::None);
    assert!(conn.status().await.is_ok());
}

/// A fake box that answers `Attest` with `reply(nonce)`; its task fails if
/// the client sends anything after the evidence (an upload it must not send).
pub(crate) async fn fake_box(
    reply: fn([u8; ATTEST_NONCE_LEN]) -> Frame,
) -> (Target, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let mut decoder = FrameDecoder::default();
        let mut next = async |stream: &mut TcpStream, buf: &mut BytesMut| loop {
            if let Some(frame) = decoder.decode(buf).unwrap() {
                return frame;
            }
            assert!(stream.read_buf(buf).await.unwrap() > 0);
        };
        assert!(matches!(
            next(&mut stream, &mut buf).await,
            Frame::Hello { .. }
        ));
        let welcome = Frame::Welcome {
            version: PROTOCOL_VERSION,
            software: "fake".into(),
        };
        stream.write_all(&welcome.to_bytes()).await.unwrap();
        let Frame::Attest { nonce } = next(&mut stream, &mut buf).await else {
            panic!("expected Attest");
        };
        stream.write_all(&reply(nonce).to_bytes()).await.unwrap();
        // Anything after this would be an upload the client must not send.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(
            rest.is_empty(),
            "the client sent {} bytes after a refusal",
            rest.len()
        );
    });
    (
        Target {
            server: addr.to_string(),
            socks: None,
            dialer: None,
        },
        task,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_replaying_evidence_made_for_another_nonce_is_refused() {
    let (target, fake) = fake_box(|nonce| {
        let mut other = nonce;
        other[0] ^= 1;
        let binding = Binding {
            nonce: other,
            onion_identity: [0; 32],
            channel_key: [0; 32],
        };
        let evidence = NoTee.evidence(&binding, &[]).unwrap();
        Frame::Attested {
            evidence: evidence.encode().into(),
        }
    })
    .await;
    match Connection::connect_attested(&target, &Requirement::default()).await {
        Err(ClientError::Attestation(bento_client::AttestError::BindingMismatch)) => {}
        other => panic!("expected BindingMismatch, got {other:?}"),
    }
    fake.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_sending_garbage_evidence_is_refused_with_a_typed_error() {
    let (target, fake) = fake_box(|_| Frame::Attested {
        evidence: vec![1, 0, 0xff].into(),
    })
    .await;
    match Connection::connect_attested(&target, &Requirement::default()).await {
        Err(ClientError::Attestation(bento_client::AttestError::Malformed(_))) => {}
        other => panic!("expected Malformed, got {other:?}"),
    }
    fake.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attest_with_a_truncated_nonce_gets_malformed_frame_and_the_box_serves_on() {
    let bx = TestBox::start(&[]);
    let mut stream = TcpStream::connect(&bx.addr).await.unwrap();
    let mut bytes = Frame::Hello {
        min_version: 1,
        max_version: PROTOCOL_VERSION,
    }
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 4, 0x27, 1, 2, 3]);
    stream.write_all(&bytes).await.unwrap();
    let mut buf = BytesMut::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while stream.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    let mut decoder = FrameDecoder::default();
    let mut last = None;
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        last = Some(frame);
    }
    assert!(
        matches!(
            last,
            Some(Frame::Error {
                code: ErrorCode::MalformedFrame,
                ..
            })
        ),
        "{last:?}"
    );
    let (_, verified) = Connection::connect_attested(&bx.target(), &Requirement::default())
        .await
        .unwrap();
    assert_eq!(verified.kind, TeeKind::None);
}

#[test]
fn commands_that_cannot_check_attestation_refuse_a_requirement_instead_of_ignoring_it() {
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("page").display().to_string();
    let out = bento(
        &bx,
        &[
            "browse",
            "http://127.0.0.1:1/",
            "--out",
            &out_dir,
            "--require-tee",
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot check attestation"), "{stderr}");
    assert!(!bx.log().contains("stored a function"), "{}", bx.log());
}

/// `bento serve` with the given options, on a fresh data directory; what it
/// printed and how it exited.
fn serve_with(args: &[&str]) -> (Output, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let runtime = runtime().display().to_string();
    let mut argv = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--runtime",
        &runtime,
    ];
    argv.extend_from_slice(args);
    let out = Command::new(BENTO)
        .args(&argv)
        .arg("--data-dir")
        .arg(data.path().join("box"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out, data)
}

#[test]
fn a_box_told_to_offer_sev_snp_evidence_outside_a_confidential_vm_does_not_start() {
    // The real path (configfs-tsm) on this machine, which is no SNP guest:
    // the box must refuse to start rather than look attested, and say why.
    if std::path::Path::new(bento_attest::CONFIGFS_TSM_REPORT_DIR).exists() {
        return;
    }
    let chain = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bento-attest/tests/data/snp_cert_chain_milan.pem"
    );
    // With the operator's collateral, and with none (the host's
    // certificates would be shipped): the same refusal.
    for args in [
        vec!["--tee", "sev-snp", "--tee-collateral", chain],
        vec!["--tee", "sev-snp"],
    ] {
        let (out, data) = serve_with(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(
            stderr.contains("could not produce sev-snp evidence"),
            "{stderr}"
        );
        assert!(stderr.contains("confidential VM"), "{stderr}");
        // The box failed to start (3), before anything was written.
        assert!(!data.path().join("box").exists());
    }
}

#[test]
fn serve_refuses_a_tee_without_collateral_collateral_without_a_tee_and_sgx() {
    // A box that cannot start exits 3, like any other `serve` failure; a
    // value the option never takes is a usage error (2).
    let (out, _data) = serve_with(&["--tee", "tdx"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("--tee tdx needs --tee-collateral"),
        "{stderr}"
    );

    let (out, _data) = serve_with(&["--tee-collateral", "/dev/null"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("--tee-collateral needs --tee tdx"),
        "{stderr}"
    );

    // A usage error (exit 2): the box cannot produce SGX evidence itself.
    let (out, _data) = serve_with(&["--tee", "sgx", "--tee-collateral", "/dev/null"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Gramine enclave"), "{stderr}");
}
