//! A box stays published across a restart of its tor: it reconnects to the
//! ControlPort with backoff and adds the same onion service again, without
//! being restarted itself. Uses a real tor with DisableNetwork 1 (no
//! network needed: tor accepts and keeps onion services all the same).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bento_tor::{OnionKey, TorControl, TorError};

use crate::harness::TestBox;
use crate::local_tor::{Tor, free_port, wait_for_control, write_torrc};

/// Wait until the box's log has `line` at least `times` times.
async fn wait_for_log(test_box: &TestBox, line: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while test_box.log().matches(line).count() < times {
        assert!(
            Instant::now() < deadline,
            "{line:?} not {times}× in the log:\n{}",
            test_box.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `key`'s service is published on that tor: adding it again from
/// another connection collides (550) exactly when it is.
async fn published(control: &str, key: &str) -> bool {
    let mut probe = TorControl::connect(control).await.unwrap();
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    match probe
        .add_onion(&OnionKey::Existing(key.to_owned()), &[(80, target)], &[])
        .await
    {
        Ok(_) => false,
        Err(TorError::Command { code: 550, .. }) => true,
        Err(e) => panic!("unexpected probe answer: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_re_publishes_its_onion_service_after_its_tor_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let control = format!("127.0.0.1:{port}");
    write_torrc(dir.path(), port, None);
    let mut tor = Tor::start(dir.path());
    wait_for_control(&control).await;

    let test_box = TestBox::start(&["--tor-control", &control]);
    const PUBLISHED: &str = "published the box's onion service pow_defense=true";
    wait_for_log(&test_box, PUBLISHED, 1).await;
    let key = std::fs::read_to_string(test_box.data_dir().join("onion-service.key")).unwrap();
    let key = key.trim();
    assert!(published(&control, key).await, "not published at start-up");

    // tor goes away; the box notices and keeps trying while it is down.
    tor.stop();
    wait_for_log(&test_box, "lost the connection to tor's ControlPort", 1).await;
    wait_for_log(
        &test_box,
        "cannot re-publish the box's onion service yet",
        1,
    )
    .await;
    // The box keeps serving users meanwhile.
    test_box.assert_serves_hello().await;

    // tor comes back on the same ControlPort (with a new cookie).
    let _tor = Tor::start(dir.path());
    wait_for_control(&control).await;
    wait_for_log(&test_box, PUBLISHED, 2).await;
    assert!(
        published(&control, key).await,
        "the box did not re-publish the same service on the restarted tor"
    );
    // Same box process, still serving.
    test_box.assert_serves_hello().await;
}
