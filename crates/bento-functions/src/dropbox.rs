//! The Dropbox: anonymous drop-off and pick-up of a file
//! (`functions/dropbox/`, docs/functions/dropbox.md).
//!
//! [`put`] stores the function on the box, starts it, hands it the file and
//! detaches, leaving it running; its pick-up token `SERVICE_TOKEN@BOX`
//! ([`Dropped::pickup_token`]) lets anyone [`get`] the file, from anywhere
//! (over Tor with a SOCKS proxy). The token is the only way to the file.

use std::path::Path;
use std::time::Duration;

use bento_client::{ClientError, Connection, Target};
use bento_protocol::{ErrorCode, ServiceToken, SessionToken};

use crate::Error;

/// The function's source and manifest.
pub const SOURCE: &str = include_str!("../../../functions/dropbox/dropbox.py");
/// The function's manifest.
pub const MANIFEST: &str = include_str!("../../../functions/dropbox/dropbox.toml");

/// The Dropbox's storage quota (its manifest's `storage_kib`), bytes.
const STORAGE: u64 = 1024 * 1024;
/// What instance storage adds to each stored chunk (its key and the
/// encryption's per-entry overhead); the function stores one chunk per MiB.
const CHUNK_OVERHEAD: u64 = 64 + 16;
/// The largest file the Dropbox's manifest can hold.
pub const MAX_FILE: u64 = STORAGE - CHUNK_OVERHEAD;

/// The Dropbox's wall-clock limit (its manifest's `wall_ms`).
pub const WALL: Duration = Duration::from_secs(300);
/// The longest expiry that leaves the Dropbox time to delete the file and
/// end cleanly within [`WALL`].
pub const MAX_EXPIRES: Duration = Duration::from_secs(280);

/// How a drop is kept.
#[derive(Debug, Clone, Copy)]
pub struct PutOptions {
    /// Pick-ups allowed before the file is deleted (at least 1).
    pub max_gets: u32,
    /// How long the file waits for pick-ups (at most [`MAX_EXPIRES`]).
    pub expires: Duration,
    /// Stop once this many bytes were served in all (0: no budget).
    pub max_bytes: u64,
}

impl PutOptions {
    /// Check the options the way the function and its manifest would, so
    /// a bad drop is refused before anything is sent.
    pub fn check(&self) -> Result<(), Error> {
        if self.max_gets == 0 {
            return Err(Error::Request("--max-gets must be at least 1".into()));
        }
        if self.expires > MAX_EXPIRES {
            return Err(Error::Request(format!(
                "--expires may be at most {} s: the Dropbox's manifest gives it {} s of wall-clock time in all (see docs/functions/dropbox.md)",
                MAX_EXPIRES.as_secs(),
                WALL.as_secs()
            )));
        }
        Ok(())
    }

    /// The function's arguments, `[max_gets, expires, max_bytes]`.
    pub fn args(&self) -> serde_json::Value {
        serde_json::json!([self.max_gets, self.expires.as_secs(), self.max_bytes])
    }
}

/// A file left at a box.
#[derive(Debug)]
pub struct Dropped {
    /// The running Dropbox's session (watch it or end it early).
    pub session: SessionToken,
    /// What opens a pick-up channel.
    pub service: ServiceToken,
    /// The function's own confirmation ("stored N bytes").
    pub confirmation: String,
}

impl Dropped {
    /// The pick-up token for [`get`]: `SERVICE_TOKEN@BOX`.
    pub fn pickup_token(&self, server: &str) -> String {
        format!("{}@{server}", self.service.to_hex())
    }
}

/// Leave `file` at the box and detach, leaving the Dropbox running.
pub async fn put(target: &Target, file: &Path, options: PutOptions) -> Result<Dropped, Error> {
    options.check()?;
    let data = crate::read_file(file)?;
    if data.len() as u64 > MAX_FILE {
        return Err(Error::Request(format!(
            "{} is {} bytes; the Dropbox holds at most {MAX_FILE} bytes (its storage quota; see docs/functions/dropbox.md)",
            file.display(),
            data.len()
        )));
    }
    let args = options.args().to_string();
    let mut conn = Connection::connect(target).await?;
    let (_, token) = conn
        .store_with_manifest("dropbox.py", SOURCE, MANIFEST)
        .await?;
    let (session, service) = match conn.invoke_service(&token, "main", &args).await? {
        (session, Some(service)) => (session, service),
        (_, None) => {
            return Err(Error::Box(
                "the box did not grant the Dropbox a service token".into(),
            ));
        }
    };
    let mut attachment = Connection::connect(target)
        .await?
        .attach(&session, None)
        .await?;
    let input = attachment.input();
    crate::send_all(&input, &data).await?;
    input.end().await?;
    let mut reply = Vec::new();
    while !reply.ends_with(b"\n") {
        match attachment.next().await? {
            Some(bytes) => reply.extend_from_slice(&bytes),
            None => {
                return Err(Error::Function(
                    "the Dropbox ended before confirming the drop".into(),
                ));
            }
        }
    }
    attachment.detach().await?;
    Ok(Dropped {
        session,
        service,
        confirmation: String::from_utf8_lossy(&reply).trim().to_owned(),
    })
}

/// Pick up the file a pick-up token leads to and write it to `out` (never
/// overwriting); returns its length. The token's box is reached as
/// `route` reaches its box (directly, its SOCKS proxy or its dialer).
pub async fn get(route: &Target, token: &str, out: &Path) -> Result<usize, Error> {
    let (service, server) = token.trim().split_once('@').ok_or_else(|| {
        Error::Request(
            "a pick-up token looks like SERVICE_TOKEN@BOX (as printed by `bento drop put`)".into(),
        )
    })?;
    let service = ServiceToken::from_hex(service).map_err(|e| Error::Request(format!("{e}")))?;
    if out.exists() {
        return Err(Error::Request(format!(
            "{} exists; not overwriting it",
            out.display()
        )));
    }
    let target = route.with_server(server);
    let received = async {
        let mut channel = Connection::connect(&target)
            .await?
            .connect_service(&service)
            .await?;
        channel.read_to_end().await
    }
    .await;
    let data = match received {
        Ok(data) => data,
        Err(ClientError::Remote {
            code: ErrorCode::UnknownService,
            ..
        }) => {
            return Err(Error::Request(
                "nothing to pick up: the drop expired, was picked up as often as allowed, or never existed".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    crate::write_file_whole(out, &data)?;
    Ok(data.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python_source;

    #[test]
    fn the_limits_agree_with_the_dropbox_manifest_and_source() {
        assert_eq!(
            python_source::manifest_int(MANIFEST, "wall_ms"),
            WALL.as_millis() as u64
        );
        assert_eq!(
            python_source::manifest_int(MANIFEST, "storage_kib") * 1024,
            STORAGE
        );
        // One chunk per MiB: a file under the quota is one chunk, so one
        // entry's overhead is all it pays.
        assert!(python_source::int(SOURCE, "CHUNK") >= MAX_FILE);
        assert!(MAX_EXPIRES < WALL);
    }

    #[test]
    fn drops_the_function_would_not_keep_are_refused_first() {
        let ok = PutOptions {
            max_gets: 1,
            expires: MAX_EXPIRES,
            max_bytes: 0,
        };
        assert!(ok.check().is_ok());
        assert_eq!(ok.args(), serde_json::json!([1, 280, 0]));
        let none = PutOptions { max_gets: 0, ..ok };
        assert!(matches!(none.check(), Err(Error::Request(_))));
        let long = PutOptions {
            expires: MAX_EXPIRES + Duration::from_secs(1),
            ..ok
        };
        assert!(matches!(long.check(), Err(Error::Request(_))));
    }
}
