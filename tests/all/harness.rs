//! A real box for tests: the `bento serve` binary as a child process, with
//! its own data directory, and its log captured (to check what it logs).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bento_client::{ClientError, Connection, Target};
use bento_protocol::{ErrorCode, InvokeToken, SessionToken};

pub const BENTO: &str = env!("CARGO_BIN_EXE_bento");

pub fn runtime() -> PathBuf {
    std::env::var_os("BENTO_RUNTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../.cache/runtime/bento-python.cwasm"
            ))
        })
}

/// A policy for tests that move hundreds of MiB: the default policy with
/// ceilings high enough that bandwidth limits never slow a test down.
pub fn fast_policy() -> String {
    bento_policy::DEFAULT_POLICY_TOML
        .replace("memory_mib = 128 ", "memory_mib = 256 ")
        .replace("cpu_ms = 10000 ", "cpu_ms = 60000 ")
        .replace(
            "bandwidth_kib_per_s = 1024 ",
            "bandwidth_kib_per_s = 100000000 ",
        )
        .replace(
            "bandwidth_kib_per_s = 10240 ",
            "bandwidth_kib_per_s = 100000000 ",
        )
}

/// What functions moving hundreds of MiB ask for under [`fast_policy`].
pub const FAST_MANIFEST: &str = "version = 1\n[limits]\nmemory_mib = 256\ncpu_ms = 60000\nwall_ms = 300000\noutput_buffer_kib = 4096\nbandwidth_kib_per_s = 100000000\n";

pub struct TestBox {
    child: Child,
    pub addr: String,
    /// The research prototype's protocol, when started with `--legacy-listen`.
    pub legacy_addr: Option<String>,
    /// The operator's metrics endpoint (every test box serves one).
    pub metrics_addr: String,
    log: Arc<Mutex<String>>,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    _policy_dir: Option<tempfile::TempDir>,
    args: Vec<String>,
}

impl TestBox {
    /// A box with one worker and the given extra `bento serve` options.
    pub fn start(args: &[&str]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let data_dir = temp.path().join("data");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut this = Self::spawn(&data_dir, &args);
        this._temp = Some(temp);
        this
    }

    fn spawn(data_dir: &Path, args: &[String]) -> Self {
        let mut command = Command::new(BENTO);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--runtime")
            .arg(runtime());
        if !args.iter().any(|a| a == "--workers") {
            command.args(["--workers", "1"]);
        }
        if !args.iter().any(|a| a == "--metrics") {
            command.args(["--metrics", "127.0.0.1:0"]);
        }
        // Tests run many boxes at once on a few cores: overload control
        // (50 ms by default) would refuse their invocations now and then.
        // Only a stall this long counts here, unless a test sets its own.
        if !args.iter().any(|a| a == "--overload-target-ms") {
            command.args(["--overload-target-ms", "2000"]);
        }
        command
            .args(args)
            .env("BENTO_LOG", "debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start bento serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (legacy_tx, legacy_rx) = std::sync::mpsc::channel();
        let (metrics_tx, metrics_rx) = std::sync::mpsc::channel();
        let log_writer = log.clone();
        let field = |line: &str, name: &str| {
            line.split(name)
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
        };
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = field(&line, "legacy_addr=") {
                    let _ = legacy_tx.send(addr);
                } else if let Some(addr) = field(&line, "metrics_addr=") {
                    let _ = metrics_tx.send(addr);
                } else if line.contains("bento box listening") {
                    let _ = addr_tx.send(field(&line, " addr=").unwrap_or_default());
                }
                let mut log = log_writer.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("box did not start: {}", log.lock().unwrap()));
        let legacy_addr = legacy_rx.try_recv().ok();
        let metrics_addr = metrics_rx.try_recv().unwrap_or_default();
        Self {
            child,
            addr,
            legacy_addr,
            metrics_addr,
            log,
            data_dir: data_dir.to_owned(),
            _temp: None,
            _policy_dir: None,
            args: args.to_vec(),
        }
    }

    pub fn target(&self) -> Target {
        Target {
            server: self.addr.clone(),
            socks: None,
            dialer: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL the box and start it again on the same data directory.
    pub fn kill9_and_restart(&mut self) {
        self.kill9_and_restart_after(Duration::ZERO);
    }

    /// SIGKILL the box, leave it down for `down`, then start it again on
    /// the same data directory.
    pub fn kill9_and_restart_after(&mut self, down: Duration) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
        std::thread::sleep(down);
        let mut next = Self::spawn(&self.data_dir, &self.args);
        std::mem::swap(&mut self.child, &mut next.child);
        self.addr = next.addr.clone();
        self.metrics_addr = next.metrics_addr.clone();
        self.log = next.log.clone();
        // `next` now holds the dead child; dropping it is harmless.
    }

    /// Worker processes of this box (its direct children).
    pub fn worker_pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let after = stat
                .rsplit_once(')')
                .map(|(_, r)| r.to_string())
                .unwrap_or_default();
            let fields: Vec<&str> = after.split_whitespace().collect();
            if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(self.pid())
                && fields[0] != "Z"
            {
                out.push(pid);
            }
        }
        out
    }

    /// The operator's exact figures, scraped from the metrics endpoint:
    /// sample (`name` or `name{labels}`) → value.
    pub async fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let addr = self
            .metrics_addr
            .parse()
            .unwrap_or_else(|_| panic!("no metrics endpoint: {}", self.log()));
        bento_server::metrics::scrape(addr).await.unwrap()
    }

    /// One figure from [`TestBox::metrics`].
    pub async fn metric(&self, sample: &str) -> f64 {
        let all = self.metrics().await;
        *all.get(sample)
            .unwrap_or_else(|| panic!("no sample {sample} in {all:?}"))
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.target()).await.unwrap()
    }

    /// A box whose policy is `policy` (TOML), plus extra `serve` options.
    pub fn with_policy(policy: &str, args: &[&str]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("policy.toml");
        std::fs::write(&path, policy).unwrap();
        let path = path.display().to_string();
        let mut all = vec!["--policy", path.as_str()];
        all.extend_from_slice(args);
        let mut this = Self::start(&all);
        // Keep the policy file's directory alive as long as the box.
        this._policy_dir = Some(temp);
        this
    }

    /// A box with [`fast_policy`]; store with [`TestBox::store_fast`].
    pub fn fast(args: &[&str]) -> Self {
        Self::with_policy(&fast_policy(), args)
    }

    /// Store with [`FAST_MANIFEST`].
    pub async fn store_fast(&self, source: &str) -> InvokeToken {
        self.try_store_with_manifest(source, FAST_MANIFEST)
            .await
            .unwrap()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Store with a manifest; the box's answer as it is.
    pub async fn try_store_with_manifest(
        &self,
        source: &str,
        manifest: &str,
    ) -> Result<InvokeToken, ClientError> {
        Ok(self
            .connect()
            .await
            .store_with_manifest("test.py", source, manifest)
            .await?
            .1)
    }

    /// Store (with a manifest), invoke, attach and read everything.
    pub async fn run_with_manifest(
        &self,
        source: &str,
        manifest: &str,
        args_json: &str,
    ) -> (Vec<u8>, Result<(), ClientError>) {
        let token = self
            .try_store_with_manifest(source, manifest)
            .await
            .unwrap();
        let session = self.invoke(&token, args_json).await;
        self.read_all(&session).await
    }

    pub async fn store(&self, source: &str) -> InvokeToken {
        self.connect()
            .await
            .store("test.py", source)
            .await
            .unwrap()
            .1
    }

    pub async fn invoke(&self, token: &InvokeToken, args_json: &str) -> SessionToken {
        self.connect()
            .await
            .invoke(token, "main", args_json)
            .await
            .unwrap()
    }

    /// Store, invoke, attach and read everything: (output, how it ended).
    pub async fn run(&self, source: &str, args_json: &str) -> (Vec<u8>, Result<(), ClientError>) {
        self.try_run(source, args_json).await.unwrap()
    }

    /// Like [`Self::run`], but a refused store or invoke is returned too.
    pub async fn try_run(
        &self,
        source: &str,
        args_json: &str,
    ) -> Result<(Vec<u8>, Result<(), ClientError>), ClientError> {
        let (_, token) = self.connect().await.store("test.py", source).await?;
        let session = self
            .connect()
            .await
            .invoke(&token, "main", args_json)
            .await?;
        Ok(self.read_all(&session).await)
    }

    pub async fn read_all(&self, session: &SessionToken) -> (Vec<u8>, Result<(), ClientError>) {
        let mut attachment = self.connect().await.attach(session, None).await.unwrap();
        let mut output = Vec::new();
        let result = loop {
            match attachment.next().await {
                Ok(Some(data)) => output.extend_from_slice(&data),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        attachment.close().await;
        (output, result)
    }

    /// The box still serves a fresh user: hello-world works.
    pub async fn assert_serves_hello(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Store and invoke may be refused too (overloaded), not only the
            // session.
            let answer = self
                .try_run(
                    "def main(name):\n    api.send('hello ' + name)\n",
                    "[\"next user\"]",
                )
                .await;
            let (out, result) = match answer {
                Ok(ran) => ran,
                Err(e) => (Vec::new(), Err(e)),
            };
            match result {
                Ok(()) => {
                    assert_eq!(out, b"hello next user");
                    return;
                }
                // Right after a worker crash the pool may still be noticing
                // it (an invocation sent to a dying worker fails with
                // worker_crashed) or respawning.
                // A box refusing some starts as overloaded asks the user
                // to try again.
                Err(ClientError::Remote {
                    code: ErrorCode::Internal | ErrorCode::WorkerCrashed | ErrorCode::Overloaded,
                    ..
                }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("hello-world failed after the previous test step: {e}"),
            }
        }
    }
}

impl Drop for TestBox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The attachment's next event, which must be the session's failure.
pub async fn next_failure(attachment: &mut bento_client::Attachment) -> Result<(), ClientError> {
    match attachment.next().await {
        Err(e) => Err(e),
        Ok(other) => panic!("expected the session to fail, got {other:?}"),
    }
}

/// The error code of a failed result.
pub fn code(result: &Result<(), ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Remote { code, .. }) => *code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

pub fn message(result: &Result<(), ClientError>) -> String {
    match result {
        Err(ClientError::Remote { message, .. }) => message.clone(),
        other => panic!("expected an error frame, got {other:?}"),
    }
}
