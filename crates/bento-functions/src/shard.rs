//! The Shard function: a file spread over several boxes with an erasure
//! code (`functions/shard/`; docs/functions/shard.md).
//!
//! [`put`] splits the file into `n` shards with a Reed–Solomon code
//! (`reed-solomon-simd`), any `k` of which rebuild it, and hands them to the
//! Shard function on the `--server` box; the function leaves each in a
//! Dropbox on a different box, over Tor, and reports the pick-up tokens,
//! which [`put`] writes to a recovery file (mode 0600: whoever holds it can
//! fetch the shards). [`get`] fetches shards from the boxes named there until
//! it has `k` that match their checksums, and rebuilds the file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bento_client::{ClientError, Connection, Target};
use bento_protocol::ServiceToken;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::{Console, Error, dropbox};

/// The function's source.
pub const SOURCE: &str = include_str!("../../../functions/shard/shard.py");
/// The function's manifest.
pub const MANIFEST: &str = include_str!("../../../functions/shard/shard.toml");

/// The recovery file's format version.
const FORMAT: u32 = 1;

/// Shards per file: enough for any sensible spread, small enough that the
/// header and the recovery file stay small.
const MAX_SHARDS: usize = 64;

/// Fetching one shard: connecting over Tor, the onion-service lookup and
/// the transfer. A box that takes longer counts as unreachable.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// What `put` writes and `get` reads.
#[derive(Debug, Serialize, Deserialize)]
struct Recovery {
    format: u32,
    /// Shards needed.
    k: usize,
    /// Shards made.
    n: usize,
    /// The file's length; the data shards are zero-padded past it.
    size: u64,
    /// SHA-256 of the file, hex.
    sha256: String,
    /// Every shard's length.
    shard_bytes: usize,
    /// The shards that were placed (some may be missing if boxes refused).
    shards: Vec<PlacedShard>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlacedShard {
    /// 0..k are the file's bytes, k..n recovery shards.
    index: usize,
    /// The box, ONION:PORT.
    server: String,
    /// The Dropbox's service token, hex: fetching the shard.
    service: String,
    /// The Dropbox's session token, hex: `bento kill` ends it early.
    session: String,
    /// SHA-256 of the shard, hex.
    sha256: String,
}

/// One line of the Shard function's report.
#[derive(Debug, Deserialize)]
struct ShardLine {
    shard: Option<usize>,
    #[serde(rename = "box")]
    server: Option<String>,
    service: Option<String>,
    session: Option<String>,
    error: Option<String>,
    placed: Option<usize>,
}

/// How a file is spread.
#[derive(Debug, Clone)]
pub struct PutOptions {
    /// Boxes to hold the shards, ONION:PORT; boxes beyond `n` are spares.
    pub boxes: Vec<String>,
    /// Shards needed to rebuild the file.
    pub k: usize,
    /// Shards made.
    pub n: usize,
    /// Where to write the recovery file (never overwritten).
    pub recovery: PathBuf,
    /// Pick-ups each shard's Dropbox allows.
    pub max_gets: u32,
    /// How long the shards wait for pick-ups.
    pub expires: Duration,
}

/// The default recovery file for `file`: `FILE.shards`.
pub fn default_recovery_path(file: &Path) -> PathBuf {
    let mut name = file.to_owned().into_os_string();
    name.push(".shards");
    PathBuf::from(name)
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Split `data` into `k` data shards of equal, even length (the codec's
/// requirement), zero-padded, followed by `n - k` recovery shards.
fn encode(data: &[u8], k: usize, n: usize) -> Result<Vec<Vec<u8>>, Error> {
    let shard_bytes = shard_bytes(data.len() as u64, k);
    let mut shards: Vec<Vec<u8>> = (0..k)
        .map(|i| {
            let start = (i * shard_bytes).min(data.len());
            let end = ((i + 1) * shard_bytes).min(data.len());
            let mut shard = data[start..end].to_vec();
            shard.resize(shard_bytes, 0);
            shard
        })
        .collect();
    let recovery = reed_solomon_simd::encode(k, n - k, &shards)
        .map_err(|e| Error::Request(format!("erasure coding failed: {e}")))?;
    shards.extend(recovery);
    Ok(shards)
}

/// The length of every shard of a `size`-byte file split `k` ways.
fn shard_bytes(size: u64, k: usize) -> usize {
    let per_shard = usize::try_from(size.div_ceil(k as u64)).unwrap_or(usize::MAX);
    per_shard.max(2).next_multiple_of(2)
}

/// Rebuild the file from at least `k` verified shards (index → bytes).
fn decode(recovery: &Recovery, shards: &BTreeMap<usize, Vec<u8>>) -> Result<Vec<u8>, Error> {
    let k = recovery.k;
    let mut data_shards: Vec<Option<Vec<u8>>> = (0..k).map(|i| shards.get(&i).cloned()).collect();
    if data_shards.iter().any(Option::is_none) {
        let originals = shards.iter().filter(|(i, _)| **i < k).map(|(i, s)| (*i, s));
        let recovered = shards
            .iter()
            .filter(|(i, _)| **i >= k)
            .map(|(i, s)| (*i - k, s));
        let restored = reed_solomon_simd::decode(k, recovery.n - k, originals, recovered)
            .map_err(|e| Error::Box(format!("the shards do not rebuild the file: {e}")))?;
        for (index, shard) in restored {
            if let Some(slot) = data_shards.get_mut(index) {
                *slot = Some(shard);
            }
        }
    }
    let mut file = Vec::with_capacity(k * recovery.shard_bytes);
    for (index, shard) in data_shards.into_iter().enumerate() {
        file.extend(
            shard.ok_or_else(|| Error::Box(format!("data shard {index} was not rebuilt")))?,
        );
    }
    let size = usize::try_from(recovery.size)
        .map_err(|_| Error::Request("the file is too large".into()))?;
    if size > file.len() {
        return Err(Error::Request(format!(
            "the recovery file says the file has {size} bytes, more than its shards hold"
        )));
    }
    file.truncate(size);
    if hex_sha256(&file) != recovery.sha256 {
        return Err(Error::Box(
            "the rebuilt file does not match its checksum".into(),
        ));
    }
    Ok(file)
}

/// Split `file` into shards and have the Shard function on the `target`
/// box place them in Dropboxes on `options.boxes`; writes the recovery
/// file and returns its path.
pub async fn put(
    target: &Target,
    file: &Path,
    options: &PutOptions,
    console: &dyn Console,
) -> Result<PathBuf, Error> {
    let PutOptions {
        boxes,
        k,
        n,
        recovery: recovery_path,
        max_gets,
        expires,
    } = options;
    let (k, n, max_gets, expires) = (*k, *n, *max_gets, *expires);
    if k == 0 || k >= n {
        return Err(Error::Request(format!(
            "-k must be at least 1 and less than -n (got k = {k}, n = {n}): n − k shards are the redundancy"
        )));
    }
    if n > MAX_SHARDS {
        return Err(Error::Request(format!(
            "at most {MAX_SHARDS} shards (-n {n})"
        )));
    }
    if boxes.len() < n {
        return Err(Error::Request(format!(
            "{n} shards need {n} boxes, one each; --boxes names {}",
            boxes.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = boxes.iter().find(|b| !seen.insert(b.as_str())) {
        return Err(Error::Request(format!(
            "{twice} is named twice in --boxes: each shard must be on a different box"
        )));
    }
    if max_gets == 0 {
        return Err(Error::Request("--max-gets must be at least 1".into()));
    }
    if expires > dropbox::MAX_EXPIRES {
        return Err(Error::Request(format!(
            "--expires may be at most {} s (the Dropbox's wall-clock limit; see docs/functions/dropbox.md)",
            dropbox::MAX_EXPIRES.as_secs()
        )));
    }
    if recovery_path.exists() {
        return Err(Error::Request(format!(
            "{} exists; not overwriting it",
            recovery_path.display()
        )));
    }
    let data = crate::read_file(file)?;
    let shard_len = shard_bytes(data.len() as u64, k);
    if shard_len as u64 > dropbox::MAX_FILE {
        let most = dropbox::MAX_FILE / 2 * 2 * k as u64;
        return Err(Error::Request(format!(
            "{} is {} bytes; with -k {k} each shard would be {shard_len} bytes, more than a Dropbox holds ({} bytes): at most {most} bytes with -k {k}",
            file.display(),
            data.len(),
            dropbox::MAX_FILE
        )));
    }
    let shards = encode(&data, k, n)?;
    let header = serde_json::json!({
        "boxes": boxes,
        "sizes": vec![shard_len; n],
        "dropbox": {"source": dropbox::SOURCE, "manifest": dropbox::MANIFEST},
        "dropbox_args": dropbox::PutOptions { max_gets, expires, max_bytes: 0 }.args(),
    });

    console.note(&format!(
        "{} bytes → {n} shards of {shard_len} bytes, any {k} rebuild it; placing them through {}",
        data.len(),
        target.server
    ));
    let (_, mut attachment) = crate::Start {
        filename: "shard.py",
        source: SOURCE,
        manifest: MANIFEST,
        entry: "main",
        args: "[]",
    }
    .attach(target)
    .await?;
    let input = attachment.input();
    input.send(Bytes::from(header.to_string())).await?;
    for shard in &shards {
        crate::send_all(&input, shard).await?;
    }
    input.end().await?;

    let mut placed = Vec::new();
    let mut text = Vec::new();
    let outcome = loop {
        match attachment.next().await {
            Ok(Some(bytes)) => {
                text.extend_from_slice(&bytes);
                while let Some(end) = text.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = text.drain(..=end).collect();
                    let line: ShardLine = serde_json::from_slice(&line).map_err(|e| {
                        Error::Box(format!(
                            "the Shard function sent a line that is not its report: {e}"
                        ))
                    })?;
                    report_line(&line, &shards, &mut placed, console);
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    attachment.close().await;
    if let Err(e) = outcome {
        let mut message = format!("the Shard function failed: {e}");
        if !placed.is_empty() {
            message.push_str(&format!(
                "\nthe {} shard(s) placed so far stay until they expire",
                placed.len()
            ));
        }
        return Err(Error::Function(message));
    }
    if placed.len() < k {
        return Err(Error::Box(format!(
            "only {} of {n} shards were placed and {k} are needed to rebuild the file; no recovery file written (the placed shards expire on their own)",
            placed.len()
        )));
    }
    if placed.len() < n {
        console.note(&format!(
            "warning: {} of {n} shards placed: the file survives the loss of {} box(es), not {}",
            placed.len(),
            placed.len() - k,
            n - k
        ));
    }
    let recovery = Recovery {
        format: FORMAT,
        k,
        n,
        size: data.len() as u64,
        sha256: hex_sha256(&data),
        shard_bytes: shard_len,
        shards: placed,
    };
    let text = serde_json::to_vec_pretty(&recovery)
        .map_err(|e| Error::Request(format!("cannot write the recovery file: {e}")))?;
    write_private(recovery_path, &text)?;
    console.note(&format!(
        "recovery file: {} (keep it secret: it is the only way to the shards; they wait {} s for up to {max_gets} pick-up(s))",
        recovery_path.display(),
        expires.as_secs()
    ));
    Ok(recovery_path.clone())
}

/// Show one line of the function's report; record a placed shard.
fn report_line(
    line: &ShardLine,
    shards: &[Vec<u8>],
    placed: &mut Vec<PlacedShard>,
    console: &dyn Console,
) {
    let server = line.server.as_deref().unwrap_or("-");
    match (line.shard, &line.service, &line.session, &line.error) {
        (Some(index), Some(service), Some(session), _) if index < shards.len() => {
            console.note(&format!("shard {index}: placed on {server}"));
            placed.push(PlacedShard {
                index,
                server: server.to_owned(),
                service: service.clone(),
                session: session.clone(),
                sha256: hex_sha256(&shards[index]),
            });
        }
        (Some(index), _, _, Some(error)) => {
            console.note(&format!("shard {index}: not placed on {server}: {error}"));
        }
        _ => {
            if let Some(count) = line.placed {
                console.note(&format!("{count} shard(s) placed"));
            }
        }
    }
}

/// Write `data` to `path` readable by its owner only, never overwriting.
fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::file("create", path, e))?;
    file.write_all(data)
        .map_err(|e| Error::file("write", path, e))
}

/// Why a shard could not be used.
#[derive(Debug)]
enum FetchFailure {
    Box(ClientError),
    BadToken,
    TimedOut,
    Checksum { got: usize },
}

impl std::fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Box(ClientError::Remote {
                code: bento_protocol::ErrorCode::UnknownService,
                ..
            }) => f.write_str(
                "the box holds no such shard any more (expired, picked up as often as allowed, or the box restarted)",
            ),
            Self::Box(e) => write!(f, "{e}"),
            Self::BadToken => f.write_str("its service token in the recovery file is not 64 hex digits"),
            Self::TimedOut => write!(f, "no answer in {} s", FETCH_TIMEOUT.as_secs()),
            Self::Checksum { got } => {
                write!(f, "the shard ({got} bytes) does not match its checksum")
            }
        }
    }
}

async fn fetch(
    shard: PlacedShard,
    route: Target,
    expected_len: usize,
) -> (PlacedShard, Result<Vec<u8>, FetchFailure>) {
    let result = async {
        let service = ServiceToken::from_hex(&shard.service).map_err(|_| FetchFailure::BadToken)?;
        let target = route.with_server(shard.server.clone());
        let received = tokio::time::timeout(FETCH_TIMEOUT, async {
            let mut channel = Connection::connect(&target)
                .await?
                .connect_service(&service)
                .await?;
            channel.read_to_end().await
        })
        .await
        .map_err(|_| FetchFailure::TimedOut)?
        .map_err(FetchFailure::Box)?;
        if received.len() != expected_len || hex_sha256(&received) != shard.sha256 {
            return Err(FetchFailure::Checksum {
                got: received.len(),
            });
        }
        Ok(received)
    }
    .await;
    (shard, result)
}

/// Rebuild a file from any `k` of its shards, as the recovery file
/// describes them, into `out` (never overwriting); returns its length.
/// The boxes named there are reached as `route` reaches its box
/// (directly, its SOCKS proxy or its dialer).
pub async fn get(
    route: &Target,
    recovery_path: &Path,
    out: &Path,
    console: &dyn Console,
) -> Result<usize, Error> {
    let text = crate::read_file(recovery_path)?;
    let recovery: Recovery = serde_json::from_slice(&text).map_err(|e| {
        Error::Request(format!(
            "{} is not a recovery file from `bento shard put`: {e}",
            recovery_path.display()
        ))
    })?;
    if recovery.format != FORMAT
        || recovery.k == 0
        || recovery.k >= recovery.n
        || recovery.n > MAX_SHARDS
        || recovery.shard_bytes != shard_bytes(recovery.size, recovery.k)
        || recovery.shards.iter().any(|s| s.index >= recovery.n)
    {
        return Err(Error::Request(format!(
            "{} is not a valid recovery file (format {FORMAT} expected)",
            recovery_path.display()
        )));
    }
    if out.exists() {
        return Err(Error::Request(format!(
            "{} exists; not overwriting it",
            out.display()
        )));
    }
    let k = recovery.k;
    console.note(&format!(
        "fetching {k} of {} shards ({} listed)",
        recovery.n,
        recovery.shards.len()
    ));
    // Fetch k at a time; each failure starts the next untried shard, so
    // pick-ups beyond what is needed are spent only on failures.
    let mut untried = recovery.shards.iter().cloned();
    let mut running = JoinSet::new();
    for shard in untried.by_ref().take(k) {
        running.spawn(fetch(shard, route.clone(), recovery.shard_bytes));
    }
    let mut good = BTreeMap::new();
    let mut failures = Vec::new();
    while let Some(joined) = running.join_next().await {
        let (shard, result) =
            joined.map_err(|e| Error::Box(format!("a shard fetch panicked: {e}")))?;
        match result {
            Ok(bytes) => {
                console.note(&format!(
                    "shard {}: fetched from {}",
                    shard.index, shard.server
                ));
                good.insert(shard.index, bytes);
                if good.len() == k {
                    running.abort_all();
                    break;
                }
            }
            Err(failure) => {
                console.note(&format!(
                    "shard {}: {}: {failure}",
                    shard.index, shard.server
                ));
                failures.push(shard.index);
                if let Some(next) = untried.next() {
                    running.spawn(fetch(next, route.clone(), recovery.shard_bytes));
                }
            }
        }
    }
    if good.len() < k {
        return Err(Error::Box(format!(
            "only {} of {} shards could be fetched and {k} are needed to rebuild the file",
            good.len(),
            recovery.n
        )));
    }
    let file = decode(&recovery, &good)?;
    crate::write_file_whole(out, &file)?;
    console.note(&format!(
        "rebuilt {} bytes from shards {:?} into {}",
        file.len(),
        good.keys().collect::<Vec<_>>(),
        out.display()
    ));
    Ok(file.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_header_the_client_sends_is_the_one_shard_py_reads() {
        // The client's header keys, as shard.py reads them.
        for key in ["boxes", "sizes", "dropbox", "dropbox_args"] {
            assert!(
                SOURCE.contains(&format!("header[\"{key}\"]")),
                "shard.py does not read {key}"
            );
        }
        // Each shard goes into a Dropbox of the embedded source: the
        // largest shard `put` accepts fits one.
        let largest = dropbox::MAX_FILE / 2 * 2;
        assert_eq!(shard_bytes(largest * 3, 3) as u64, largest);
    }

    fn recovery_for(data: &[u8], k: usize, n: usize) -> Recovery {
        Recovery {
            format: FORMAT,
            k,
            n,
            size: data.len() as u64,
            sha256: hex_sha256(data),
            shard_bytes: shard_bytes(data.len() as u64, k),
            shards: Vec::new(),
        }
    }

    #[test]
    fn any_k_of_n_shards_rebuild_the_file() {
        let data: Vec<u8> = (0..10_001u32).map(|i| (i * 7 % 251) as u8).collect();
        let (k, n) = (3, 5);
        let shards = encode(&data, k, n).unwrap();
        let recovery = recovery_for(&data, k, n);
        // Every choice of k shards out of n.
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize != k {
                continue;
            }
            let chosen: BTreeMap<usize, Vec<u8>> = (0..n)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| (i, shards[i].clone()))
                .collect();
            assert_eq!(
                decode(&recovery, &chosen).unwrap(),
                data,
                "shards {mask:05b}"
            );
        }
    }

    #[test]
    fn fewer_than_k_shards_or_a_wrong_one_do_not_give_a_file() {
        let data = b"a small file, an odd number of bytes".to_vec();
        let shards = encode(&data, 2, 4).unwrap();
        let recovery = recovery_for(&data, 2, 4);
        let one: BTreeMap<_, _> = [(3, shards[3].clone())].into();
        assert!(decode(&recovery, &one).is_err());
        let mut wrong = shards[2].clone();
        wrong[0] ^= 1;
        let tampered: BTreeMap<_, _> = [(0, shards[0].clone()), (2, wrong)].into();
        let error = decode(&recovery, &tampered).unwrap_err().to_string();
        assert!(error.contains("checksum"), "{error}");
    }

    #[test]
    fn shards_have_an_even_length_even_for_an_empty_file() {
        assert_eq!(shard_bytes(0, 3), 2);
        assert_eq!(shard_bytes(7, 2), 4);
        assert_eq!(shard_bytes(8, 2), 4);
        let shards = encode(b"", 2, 3).unwrap();
        assert!(shards.iter().all(|s| s.len() == 2));
        assert_eq!(
            decode(
                &recovery_for(b"", 2, 3),
                &[(2, shards[2].clone()), (1, shards[1].clone())].into()
            )
            .unwrap(),
            b""
        );
    }
}
