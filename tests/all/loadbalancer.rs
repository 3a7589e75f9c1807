//! The LoadBalancer function and `bento lb start|load`, end to end over the
//! private Tor network: a front function on one onion box publishes one
//! onion service and forwards its streams to replicas it starts on other
//! onion boxes (over Tor, with `api.bento_box`); the load generator drives
//! it up and down through Tor, and every response must come back whole.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{BENTO, TestBox};
use crate::tor::{net, one_at_a_time, onion_test_box};

/// A valid v3 onion address whose key was thrown away: nobody publishes it,
/// on this network or any other.
const NOWHERE: &str = "yom5hsf5ge43ih65fjlrzosln6fglyzxlpeajhx6avihf6vbaakxztad.onion:7878";

/// Bytes unlike any other test's.
fn content_file(dir: &Path, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let data = crate::browser::noise(len, 0x9e37_79b9);
    let path = dir.join("content.bin");
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

/// `bento lb start --json` running, its log lines read as they come.
struct Front {
    child: Child,
    events: mpsc::Receiver<serde_json::Value>,
    /// Every event read so far, in order.
    seen: Vec<serde_json::Value>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Front {
    fn start(boxes: &[&str], content: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(BENTO)
            .args(["--server", &net().boxes[0], "--socks", &net().socks])
            .args(["lb", "start", "--json", "--content"])
            .arg(content)
            .arg("--replica-box")
            .arg(boxes.join(","))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, events) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
                if sender.send(event).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (pipe, copy) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                copy.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Self {
            child,
            events,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The first event from now on that `wanted` accepts; panics with the
    /// log so far if none comes within `limit` (a guard against hangs).
    fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if wanted(&event) {
                        return event;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {} s; the front's log:\n{}",
                    limit.as_secs(),
                    self.stderr
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                ),
            }
        }
    }

    fn onion(&mut self) -> String {
        let serving = self.wait_for("serving event", Duration::from_secs(180), |e| {
            e["event"] == "serving"
        });
        serving["onion"].as_str().unwrap().to_owned()
    }

    /// Ctrl-C: the front stops taking streams, stops its replicas and
    /// returns; its last event is returned.
    fn stop(&mut self) -> serde_json::Value {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let stopped = self.wait_for("stopped event", Duration::from_secs(120), |e| {
            e["event"] == "stopped"
        });
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "{}",
            self.stderr
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        );
        stopped
    }

    /// Take every event logged so far.
    fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
    }

    /// Every replica count the log has shown, in order, without repeats.
    fn replica_counts(&mut self) -> Vec<u64> {
        self.drain();
        let mut counts: Vec<u64> = Vec::new();
        for event in &self.seen {
            if let Some(n) = event["replicas"].as_u64()
                && counts.last() != Some(&n)
            {
                counts.push(n);
            }
        }
        counts
    }

    fn events_named(&mut self, name: &str) -> Vec<serde_json::Value> {
        self.drain();
        self.seen
            .iter()
            .filter(|e| e["event"] == name)
            .cloned()
            .collect()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the front's log:\n{}",
                self.stderr
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bento lb load … --json` against `onion`; its summary.
fn load(onion: &str, streams: usize, duration: &str, expect: &Path) -> serde_json::Value {
    let out = Command::new(BENTO)
        .args(["--socks", &net().socks, "lb", "load", onion, "--json"])
        .args(["--streams", &streams.to_string(), "--duration", duration])
        .arg("--expect")
        .arg(expect)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lb load printed no summary ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("lb load: {summary}");
    summary
}

/// Wait until no instance runs on a box (asked through its metrics
/// endpoint): the box counts an instance out once its worker reports the
/// end, a moment after the function returned.
fn assert_idle(bx: &TestBox, what: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = runtime.block_on(bx.metric("bento_instances_running"));
        if running == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {running} instances run");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_replica_count_follows_the_watermarks_up_under_load_and_down_after_it_and_every_response_is_whole()
 {
    let _serial = one_at_a_time();
    // The network's own boxes first (the front's box may hold a replica
    // too), then a box of the test's own, to see its replica end.
    let (third, third_onion) = onion_test_box(None);
    let (first_onion, second_onion) = (net().boxes[0].clone(), net().boxes[1].clone());
    let dir = tempfile::tempdir().unwrap();
    let (content, _) = content_file(dir.path(), 150_000);
    let boxes = [
        first_onion.as_str(),
        second_onion.as_str(),
        third_onion.as_str(),
    ];
    // Another replica above 1 stream in progress per replica; one stops
    // once they stay below 0.75 per replica for 3 s.
    let mut front = Front::start(
        &boxes,
        &content,
        &["--high", "1", "--low", "0.75", "--grace", "3s"],
    );
    let onion = front.onion();
    assert_eq!(front.replica_counts(), [1], "one replica before any load");

    // Six streams at a time: 6 > 1 per replica until all three boxes serve.
    let summary = load(&onion, 6, "40s", &content);
    assert_eq!(summary["incomplete"], 0, "{summary}");
    let complete = summary["complete"].as_u64().unwrap();
    assert!(complete >= 10, "{summary}");
    let started: Vec<String> = front
        .events_named("replica_started")
        .iter()
        .map(|e| e["box"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        started, boxes,
        "a replica on each box, in order, under load"
    );

    // Without load, the replicas stop one by one down to one.
    front.wait_for("the last retirement", Duration::from_secs(120), |e| {
        e["event"] == "replica_retired" && e["replicas"] == 1
    });
    assert_eq!(front.replica_counts(), [1, 2, 3, 2, 1]);
    let retired: Vec<String> = front
        .events_named("replica_retired")
        .iter()
        .map(|e| e["box"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        retired,
        [third_onion.as_str(), second_onion.as_str()],
        "the newest idle replica goes first; the first one stays"
    );
    assert_idle(&third, "the retired replica ended");

    let stopped = front.stop();
    assert_eq!(stopped["replicas"], 0, "{stopped}");
    assert_eq!(
        stopped["served"].as_u64(),
        Some(complete + 1),
        "the front served exactly the responses the load generator saw whole, and its warm-up request: {stopped}"
    );
    assert_eq!(stopped["cut"], 0, "{stopped}");
    assert_eq!(stopped["refused"], 0, "{stopped}");
}

/// Open a stream to the service through Tor and send the start of a
/// request; the rest comes later.
async fn half_request(onion: &str, who: &str) -> tokio::net::TcpStream {
    let socks: std::net::SocketAddr = net().socks.parse().unwrap();
    // The service was just published: Tor may not find it at the first try.
    let deadline = Instant::now() + Duration::from_secs(120);
    for attempt in 0.. {
        let isolation = format!("{who}-{attempt}");
        let tried = tokio::time::timeout(
            Duration::from_secs(20),
            bento_tor::socks5_connect(socks, onion, 80, Some(("lb-slow", &isolation))),
        )
        .await;
        match tried {
            Ok(Ok(mut stream)) => {
                stream.write_all(b"GET / HTTP/1.0\r\n").await.unwrap();
                return stream;
            }
            Ok(Err(e)) => eprintln!("{onion} not reached yet: {e}"),
            Err(_) => eprintln!("{onion} not reached yet: no answer in 20 s"),
        }
        assert!(Instant::now() < deadline, "{onion} never became reachable");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    unreachable!()
}

/// Send the end of the request; the whole response's body.
async fn finish_request(mut stream: tokio::net::TcpStream) -> Vec<u8> {
    stream.write_all(b"\r\n").await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&response)));
    assert!(response.starts_with(b"HTTP/1.0 200 OK\r\n"));
    response.split_off(head_end + 4)
}

#[test]
fn a_slow_stream_keeps_its_replica_while_the_idle_one_stops_and_then_completes() {
    let _serial = one_at_a_time();
    let (first, first_onion) = onion_test_box(None);
    let second_onion = net().boxes[1].clone();
    let dir = tempfile::tempdir().unwrap();
    let (content, data) = content_file(dir.path(), 300_000);
    let mut front = Front::start(
        &[first_onion.as_str(), second_onion.as_str()],
        &content,
        &["--high", "1", "--low", "0.75", "--grace", "2s"],
    );
    let onion = front.onion();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let per_replica = |front: &mut Front, want: serde_json::Value| {
        front.wait_for(
            &format!("streams per replica {want}"),
            Duration::from_secs(60),
            |e| e["event"] == "status" && e["per_replica"] == want,
        );
    };

    // Two streams on the only replica: above the high watermark.
    let a = runtime.block_on(half_request(&onion, "a"));
    let b = runtime.block_on(half_request(&onion, "b"));
    front.wait_for("the second replica", Duration::from_secs(120), |e| {
        e["event"] == "replica_started" && e["replicas"] == 2
    });
    // The next stream goes to the new, empty replica and stays there, slow.
    let slow = runtime.block_on(half_request(&onion, "slow"));
    per_replica(&mut front, serde_json::json!([2, 1]));

    // The first two finish: the first replica is idle, the load is below
    // the low watermark, and the first replica (not the busy one) stops.
    for stream in [a, b] {
        assert!(runtime.block_on(finish_request(stream)) == data);
    }
    let retired = front.wait_for("a retirement", Duration::from_secs(60), |e| {
        e["event"] == "replica_retired"
    });
    assert_eq!(retired["box"], first_onion.as_str(), "{retired}");
    assert_idle(&first, "the retired replica ended");
    // Several grace periods later the busy replica is still there …
    std::thread::sleep(Duration::from_secs(6));
    per_replica(&mut front, serde_json::json!([1]));
    // … and the slow stream gets its whole answer.
    assert!(
        runtime.block_on(finish_request(slow)) == data,
        "the slow stream's response is whole"
    );
    let stopped = front.stop();
    assert_eq!(
        front.events_named("replica_retired").len(),
        2,
        "{:?}",
        front.seen
    );
    assert_eq!(stopped["served"], 3, "{stopped}");
    assert_eq!(stopped["cut"], 0, "{stopped}");
    assert_eq!(front.replica_counts(), [1, 2, 1, 0]);
}

#[test]
fn boxes_that_refuse_or_do_not_exist_are_reported_and_the_front_serves_with_the_replicas_it_has() {
    let _serial = one_at_a_time();
    let refusing_policy =
        bento_policy::DEFAULT_POLICY_TOML.replacen(", \"onion_service\"]", "]", 1);
    assert_ne!(refusing_policy, bento_policy::DEFAULT_POLICY_TOML);
    let (refusing, refusing_onion) = onion_test_box(Some(&refusing_policy));
    let good = net().boxes[1].clone();
    let dir = tempfile::tempdir().unwrap();
    let (content, _) = content_file(dir.path(), 100_000);
    let mut front = Front::start(
        &[good.as_str(), refusing_onion.as_str(), NOWHERE],
        &content,
        &["--high", "1", "--low", "0.5", "--grace", "300s"],
    );
    let onion = front.onion();

    // Load above the high watermark makes the front try the other boxes.
    let summary = load(&onion, 4, "45s", &content);
    assert_eq!(summary["incomplete"], 0, "{summary}");
    assert!(summary["complete"].as_u64().unwrap() >= 5, "{summary}");
    // The box that does not exist is asked three times in all (a Tor
    // failure may pass); wait for the last.
    front.wait_for(
        "the last try of the missing box",
        Duration::from_secs(120),
        |e| e["event"] == "replica_failed" && e["box"] == NOWHERE && e["again"] == false,
    );
    let failed = front.events_named("replica_failed");
    let refused: Vec<_> = failed
        .iter()
        .filter(|e| e["box"] == refusing_onion.as_str())
        .collect();
    assert_eq!(refused.len(), 1, "a refusal is not asked again: {failed:?}");
    let error = refused[0]["error"].as_str().unwrap();
    assert!(
        error.contains("manifest_rejected") && error.contains("onion_service"),
        "{error}"
    );
    assert_eq!(refused[0]["again"], false);
    let missing: Vec<_> = failed.iter().filter(|e| e["box"] == NOWHERE).collect();
    assert_eq!(missing.len(), 3, "{failed:?}");
    assert!(
        missing[0]["error"]
            .as_str()
            .unwrap()
            .contains("Tor could not connect"),
        "{:?}",
        missing[0]
    );
    assert_eq!(
        front.replica_counts(),
        [1],
        "served by the one replica throughout"
    );

    // The service still answers, whole, after the failures.
    let summary = load(&onion, 2, "5s", &content);
    assert_eq!(summary["incomplete"], 0, "{summary}");
    assert!(summary["complete"].as_u64().unwrap() >= 1, "{summary}");
    let stopped = front.stop();
    assert_eq!(stopped["cut"], 0, "{stopped}");

    // The refusing box serves its next user.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut conn = refusing.connect().await;
        let (_, token) = conn
            .store("hello.py", "def main():\n    api.send('next user')\n")
            .await
            .unwrap();
        let session = conn.invoke(&token, "main", "[]").await.unwrap();
        let mut attachment = refusing
            .connect()
            .await
            .attach(&session, None)
            .await
            .unwrap();
        assert_eq!(attachment.next().await.unwrap().unwrap(), "next user");
    });
}

#[test]
fn a_replica_whose_box_dies_is_dropped_and_the_service_goes_on_with_the_others() {
    let _serial = one_at_a_time();
    let (doomed, doomed_onion) = onion_test_box(None);
    let survivor = net().boxes[1].clone();
    let dir = tempfile::tempdir().unwrap();
    let (content, _) = content_file(dir.path(), 100_000);
    let mut front = Front::start(
        &[survivor.as_str(), doomed_onion.as_str()],
        &content,
        &["--high", "1", "--low", "0.5", "--grace", "300s"],
    );
    let onion = front.onion();
    let (load_onion, load_content) = (onion.clone(), content.clone());
    let under_load = std::thread::spawn(move || load(&load_onion, 6, "40s", &load_content));
    front.wait_for("the second replica", Duration::from_secs(120), |e| {
        e["event"] == "replica_started" && e["box"] == doomed_onion.as_str()
    });
    std::thread::sleep(Duration::from_secs(5));
    drop(doomed); // the box and its replica are gone, mid-load
    let lost = front.wait_for("the lost replica", Duration::from_secs(120), |e| {
        e["event"] == "replica_lost"
    });
    assert_eq!(lost["box"], doomed_onion.as_str(), "{lost}");
    assert_eq!(lost["replicas"], 1, "{lost}");
    let during = under_load.join().unwrap();
    assert!(during["complete"].as_u64().unwrap() >= 5, "{during}");
    // Streams that were mid-answer on the dead replica are cut; the rest
    // moved on. Afterwards everything is whole again, from the survivor.
    let after = load(&onion, 3, "10s", &content);
    assert_eq!(after["incomplete"], 0, "{after}");
    assert!(after["complete"].as_u64().unwrap() >= 3, "{after}");
    let stopped = front.stop();
    assert_eq!(
        stopped["cut"].as_u64().unwrap() + stopped["abandoned"].as_u64().unwrap(),
        during["incomplete"].as_u64().unwrap(),
        "every stream the load generator saw incomplete was one the front saw cut: {stopped}"
    );
    let started = front.events_named("replica_started");
    assert_eq!(
        started.len(),
        2,
        "a lost box is not asked again: {started:?}"
    );
}

fn lb(args: &[&str]) -> Output {
    Command::new(BENTO)
        .args(["--server", "127.0.0.1:9", "lb"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn lb_refuses_impossible_requests_before_contacting_any_box() {
    let dir = tempfile::tempdir().unwrap();
    let (small, _) = content_file(dir.path(), 10);
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![1u8; 1024 * 1024 + 1]).unwrap();
    let (small, big) = (small.to_str().unwrap(), big.to_str().unwrap());
    let cases: [(&[&str], &str); 8] = [
        (
            &[
                "start",
                "--replica-box",
                "a.onion:1",
                "--high",
                "1",
                "--low",
                "1",
            ],
            "the watermarks need 0 <= --low < --high",
        ),
        (
            &["start", "--replica-box", "a.onion:1,a.onion:1"],
            "a.onion:1 is named twice in --replica-box",
        ),
        (
            &["start", "--replica-box", "a.onion"],
            "--replica-box \"a.onion\" is not ONION:PORT",
        ),
        (
            &["start", "--replica-box", "a.onion:1", "--content", big],
            "the LoadBalancer serves at most 1048576 bytes",
        ),
        (
            &["start", "--replica-box", "a.onion:1", "--lifetime", "5m"],
            "--lifetime may be at most 270 s",
        ),
        (
            &[
                "start",
                "--replica-box",
                "a.onion:1",
                "--content",
                small,
                "--bandwidth",
                "0",
            ],
            "--bandwidth must be at least 1 KiB/s",
        ),
        (&["load", "a.onion"], "give --socks"),
        (
            &["--socks", "127.0.0.1:9", "load", "a.onion:0"],
            "the port must be 1-65535",
        ),
    ];
    for (args, message) in cases {
        let out = lb(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("starting the front") && !stderr.contains("connect"),
            "{args:?} contacted something: {stderr}"
        );
    }
}
