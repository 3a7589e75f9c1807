//! A real tor on loopback for tests that talk to its ControlPort: no
//! network (DisableNetwork 1), cookie authentication, stopped by PID.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tor started from `dir`'s torrc; stopped by PID.
pub struct Tor(Child);

impl Tor {
    pub fn start(dir: &Path) -> Self {
        let child = Command::new("tor")
            .arg("--defaults-torrc")
            .arg(dir.join("empty"))
            .arg("-f")
            .arg(dir.join("torrc"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tor");
        Self(child)
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Tor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A torrc in `dir` with a ControlPort and, if `socks` is given, a
/// SocksPort. A SocksPort needs DisableNetwork 0 (tor opens no other
/// listener without network); the only bridge is then a closed loopback
/// port, so tor still never reaches the real network (it stays
/// unbootstrapped).
pub fn write_torrc(dir: &Path, control: u16, socks: Option<u16>) {
    use std::os::unix::fs::PermissionsExt;
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(
        dir.join("torrc"),
        format!(
            "DataDirectory {d}\n{network}ControlPort 127.0.0.1:{control}\n\
             CookieAuthentication 1\nLog notice file {d}/notice.log\n\
             GeoIPFile {e}\nGeoIPv6File {e}\n",
            d = data.display(),
            network = match socks {
                None => "DisableNetwork 1\nSocksPort 0\n".to_owned(),
                Some(port) => format!(
                    "DisableNetwork 0\nUseBridges 1\nBridge 127.0.0.1:1\nSocksPort 127.0.0.1:{port}\n"
                ),
            },
            e = dir.join("empty").display(),
        ),
    )
    .unwrap();
}

pub async fn wait_for_control(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "tor did not open {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
