//! Stored functions, persisted in the data directory, each with a lifetime.
//!
//! # Layout
//!
//! * `functions/blobs/<function_id>.json`: a function's content (file name,
//!   source, manifest), once per distinct content.
//! * `functions/records/<h>.json`: one record per successful `Store`, where
//!   `<h>` is the hex SHA-256 of its invoke token. A record names its blob
//!   and its expiry time. Each `Store` gets its own token and its own
//!   lifetime, even for content that is already stored.
//!
//! Paths are built only from hashes the server computed, never from
//! client-supplied names, and the directory holds no usable tokens.
//!
//! # Deduplication without linking users
//!
//! A blob is kept while at least one unexpired record names it and counts
//! once against `max_stored_mib`; every record counts [`RECORD_BYTES`].
//! Deleting or expiring one record never touches another record, so user
//! B's function stays when user A deletes the same content. What B could
//! otherwise observe about A's identical upload is closed off:
//!
//! * **`storage_full`.** The capacity check always asks for room for the
//!   blob *and* the record, whether or not the blob already exists, so a
//!   store of already-stored content is refused exactly when a store of new
//!   content of the same size would be.
//! * **Timing.** The blob file is written (temporary file, fsync, rename)
//!   on every store, also when it exists, so a duplicate does not answer
//!   sooner. Content is not cached in memory between invocations, so an
//!   invoke is not faster because someone else invoked the same content.
//! * What remains: the box's free space moves by less for a duplicate. The
//!   box publishes only a coarse "a largest upload still fits" bit in its
//!   status (exact figures are on the operator-only metrics endpoint), so
//!   this is visible only when it flips that bit.
//!
//! # Durability
//!
//! Writes are atomic: write a temporary file, fsync, rename into place,
//! fsync the directory. A store writes its blob before its record; a delete
//! removes the record before the blob. A crash therefore leaves at worst a
//! blob no record names, which [`FunctionStore::open`] removes, as it does
//! stray temporaries, expired records and records whose blob is missing or
//! corrupt. Files are created 0600 and directories 0700.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bento_protocol::{FunctionId, InvokeToken};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The store's directory, in the data directory.
pub(crate) const DIR_NAME: &str = "functions";
const TEMP_PREFIX: &str = ".tmp-";
/// Version of the files written by this store.
const FILE_VERSION: u32 = 2;
/// Version of the single-file records of earlier boxes (migrated at open).
const LEGACY_VERSION: u32 = 1;

/// What each stored record counts against `max_stored_mib`, bytes, besides
/// its blob: a record is a file (an inode, a block, an index entry), so
/// without this, identical uploads would cost disk and memory for free.
pub const RECORD_BYTES: u64 = 512;

/// Errors of the function store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory could not be used.
    #[error("function store I/O error at {path}: {error}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        error: std::io::Error,
    },
    /// Storing would exceed the box's total storage cap.
    #[error(
        "the box stores at most {max} bytes of functions and has {used} in use; this function needs {needed}"
    )]
    Full {
        /// Cap.
        max: u64,
        /// In use.
        used: u64,
        /// Needed.
        needed: u64,
    },
    /// No unexpired function is stored under this invoke token.
    #[error(
        "no function is stored under this invoke token (never stored, deleted, or its lifetime ended)"
    )]
    UnknownToken,
    /// A random token could not be generated.
    #[error("cannot generate a token: {0}")]
    Random(String),
}

/// Whether `name` may be a stored function's file name (shown in its
/// tracebacks): short, plain characters, and never hidden, so no upload can
/// take the name sealed functions are stored under.
pub fn check_filename(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "file name {name:?} must be 1-255 characters of letters, digits, '_', '-' or '.', not starting with '.'"
        ))
    }
}

/// The file name a sealed function is stored under: one a `Store` can never
/// use ([`check_filename`] refuses names starting with a dot), so a stored
/// function is sealed exactly when it has this name. Its `source` is then
/// the envelope in hex.
pub const SEALED_FILENAME: &str = ".sealed";

/// A stored function's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredFunction {
    version: u32,
    /// Public content hash (the blob's file name).
    pub function_id: String,
    /// File name shown in tracebacks.
    pub filename: String,
    /// Python source.
    pub source: String,
    /// Manifest text (empty for the default).
    pub manifest: String,
}

impl StoredFunction {
    /// Whether it was stored sealed (only the worker can open its source).
    pub fn is_sealed(&self) -> bool {
        self.filename == SEALED_FILENAME
    }

    /// Content that is run once and never written anywhere (`Run`).
    pub fn unstored(filename: String, source: String, manifest: String) -> Self {
        Self {
            version: FILE_VERSION,
            function_id: function_id(&filename, &source, &manifest).to_hex(),
            filename,
            source,
            manifest,
        }
    }
}

/// One `Store`: which content, until when.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecordFile {
    version: u32,
    /// Hex SHA-256 of the invoke token (the file name).
    token_sha256: String,
    /// The blob.
    function_id: String,
    /// Unix time (seconds) from which the record is gone.
    expires_at: u64,
}

/// A record of an earlier box: token hash and content in one file.
#[derive(Debug, Deserialize)]
struct LegacyRecord {
    version: u32,
    token_sha256: String,
    filename: String,
    source: String,
    manifest: String,
}

#[derive(Debug, Clone)]
struct Record {
    function_id: String,
    expires_at: u64,
}

#[derive(Debug, Clone, Copy)]
struct Blob {
    /// Records naming this blob.
    refs: u64,
    /// Size of its file.
    bytes: u64,
}

/// The in-memory index: what is on disk, kept in step with it.
#[derive(Debug, Default)]
struct Index {
    records: HashMap<String, Record>,
    blobs: HashMap<String, Blob>,
    /// `(expires_at, token hash)` of every record, soonest first.
    expiry: BTreeSet<(u64, String)>,
    /// Bytes counted against the cap: blob sizes + `RECORD_BYTES` per record.
    used: u64,
}

impl Index {
    fn add_record(&mut self, hash: String, function_id: String, expires_at: u64, blob_bytes: u64) {
        let blob = self.blobs.entry(function_id.clone()).or_insert(Blob {
            refs: 0,
            bytes: blob_bytes,
        });
        if blob.refs == 0 {
            self.used = self.used.saturating_add(blob.bytes);
        }
        blob.refs += 1;
        self.used = self.used.saturating_add(RECORD_BYTES);
        self.expiry.insert((expires_at, hash.clone()));
        self.records.insert(
            hash,
            Record {
                function_id,
                expires_at,
            },
        );
    }

    /// Forget a record; returns the blob to remove from disk when it was
    /// the last record naming it.
    fn remove_record(&mut self, hash: &str) -> Option<String> {
        let record = self.records.remove(hash)?;
        self.expiry.remove(&(record.expires_at, hash.to_owned()));
        self.used = self.used.saturating_sub(RECORD_BYTES);
        let blob = self.blobs.get_mut(&record.function_id)?;
        blob.refs = blob.refs.saturating_sub(1);
        if blob.refs > 0 {
            return None;
        }
        let bytes = blob.bytes;
        self.blobs.remove(&record.function_id);
        self.used = self.used.saturating_sub(bytes);
        Some(record.function_id)
    }

    fn live(&self, hash: &str, now: u64) -> Option<&Record> {
        self.records.get(hash).filter(|r| r.expires_at > now)
    }
}

/// Figures about the store, for the operator's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUsage {
    /// Stored records (one per `Store` not yet deleted or expired).
    pub records: u64,
    /// Distinct contents.
    pub blobs: u64,
    /// Bytes counted against `max_stored_mib`.
    pub bytes: u64,
}

/// The persistent store.
#[derive(Debug)]
pub struct FunctionStore {
    blobs_dir: PathBuf,
    records_dir: PathBuf,
    max_bytes: u64,
    /// Serialises every change on disk with the index update it goes with.
    write_lock: Mutex<()>,
    index: Mutex<Index>,
}

fn token_hash(token: &InvokeToken) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The public id of a function: SHA-256 over its parts, length-prefixed so
/// that different splits cannot collide.
pub fn function_id(filename: &str, source: &str, manifest: &str) -> FunctionId {
    let mut hasher = Sha256::new();
    for part in [filename, source, manifest] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    FunctionId(hasher.finalize().into())
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_owned(),
        error,
    }
}

/// A directory created owner-only (0700), also when it already existed.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Atomically put `bytes` at `dir/name` (owner-only), durable on return.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let final_path = dir.join(name);
    let temp_path = dir.join(format!("{TEMP_PREFIX}{name}"));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp_path)
            .map_err(io_error(&temp_path))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_error(&temp_path))?;
        drop(file);
        std::fs::rename(&temp_path, &final_path).map_err(io_error(&final_path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp_path);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(dir))
}

fn remove_file_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path)(e)),
    }
}

fn json_error(path: &Path) -> impl FnOnce(serde_json::Error) -> StoreError + '_ {
    move |e| StoreError::Io {
        path: path.to_owned(),
        error: std::io::Error::other(e),
    }
}

/// The `.json` files of `dir` by stem, removing stray temporaries.
fn json_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) {
            let _ = std::fs::remove_file(entry.path());
        } else if let Some(stem) = name.strip_suffix(".json")
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            out.push((stem.to_owned(), entry.path()));
        }
    }
    Ok(out)
}

/// The blob's content, checked against its id.
fn read_blob(path: &Path, expected_id: &str) -> Option<StoredFunction> {
    let bytes = std::fs::read(path).ok()?;
    let blob: StoredFunction = match serde_json::from_slice(&bytes) {
        Ok(blob) => blob,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable stored function");
            return None;
        }
    };
    // The content must hash to its name: a modified or misplaced file is
    // never run in place of what its users stored.
    let actual = function_id(&blob.filename, &blob.source, &blob.manifest).to_hex();
    (blob.version == FILE_VERSION && blob.function_id == expected_id && actual == expected_id)
        .then_some(blob)
}

impl FunctionStore {
    /// Open (creating if needed) the store under `data_dir`: remove
    /// leftovers of interrupted writes, expired records and blobs no record
    /// names, and migrate records of earlier boxes (which had no lifetime)
    /// to `default_lifetime` from now.
    pub fn open(
        data_dir: &Path,
        max_bytes: u64,
        default_lifetime: Duration,
    ) -> Result<Self, StoreError> {
        Self::open_at(data_dir, max_bytes, default_lifetime, unix_now())
    }

    fn open_at(
        data_dir: &Path,
        max_bytes: u64,
        default_lifetime: Duration,
        now: u64,
    ) -> Result<Self, StoreError> {
        let dir = data_dir.join(DIR_NAME);
        let blobs_dir = dir.join("blobs");
        let records_dir = dir.join("records");
        for d in [&dir, &blobs_dir, &records_dir] {
            create_private_dir(d).map_err(io_error(d))?;
        }
        let store = Self {
            blobs_dir,
            records_dir,
            max_bytes,
            write_lock: Mutex::new(()),
            index: Mutex::new(Index::default()),
        };
        store.migrate_legacy(&dir, now.saturating_add(default_lifetime.as_secs()))?;

        let mut blob_sizes: HashMap<String, u64> = HashMap::new();
        for (id, path) in json_files(&store.blobs_dir)? {
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            blob_sizes.insert(id, size);
        }
        let mut index = Index::default();
        let mut dropped = 0u64;
        for (hash, path) in json_files(&store.records_dir)? {
            let record = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<RecordFile>(&bytes).ok())
                .filter(|r| r.version == FILE_VERSION && r.token_sha256 == hash);
            match record {
                Some(r) if r.expires_at > now && blob_sizes.contains_key(&r.function_id) => {
                    let size = blob_sizes[&r.function_id];
                    index.add_record(hash, r.function_id, r.expires_at, size);
                }
                // Expired, unreadable, or its blob is gone: nobody can
                // invoke it any more, so it only takes space.
                _ => {
                    remove_file_if_present(&path)?;
                    dropped += 1;
                }
            }
        }
        for id in blob_sizes.keys() {
            if !index.blobs.contains_key(id) {
                remove_file_if_present(&store.blobs_dir.join(format!("{id}.json")))?;
            }
        }
        if dropped > 0 {
            sync_dir(&store.records_dir)?;
            tracing::info!(
                dropped,
                "removed stored functions whose lifetime ended while the box was down"
            );
        }
        sync_dir(&store.blobs_dir)?;
        *store.lock_index() = index;
        Ok(store)
    }

    /// Turn each single-file record of an earlier box into a blob and a
    /// record expiring at `expires_at`, keeping its token valid.
    fn migrate_legacy(&self, dir: &Path, expires_at: u64) -> Result<(), StoreError> {
        for (hash, path) in json_files(dir)? {
            let legacy = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<LegacyRecord>(&bytes).ok())
                .filter(|r| r.version == LEGACY_VERSION && r.token_sha256 == hash);
            if let Some(old) = legacy {
                let id = function_id(&old.filename, &old.source, &old.manifest).to_hex();
                let blob = StoredFunction {
                    version: FILE_VERSION,
                    function_id: id.clone(),
                    filename: old.filename,
                    source: old.source,
                    manifest: old.manifest,
                };
                let bytes = serde_json::to_vec(&blob).map_err(json_error(&path))?;
                write_atomically(&self.blobs_dir, &format!("{id}.json"), &bytes)?;
                self.write_record(&hash, &id, expires_at)?;
            } else {
                tracing::warn!("removing an unreadable stored function of an earlier version");
            }
            remove_file_if_present(&path)?;
        }
        Ok(())
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_record(
        &self,
        hash: &str,
        function_id: &str,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let record = RecordFile {
            version: FILE_VERSION,
            token_sha256: hash.to_owned(),
            function_id: function_id.to_owned(),
            expires_at,
        };
        let bytes = serde_json::to_vec(&record).map_err(json_error(&self.records_dir))?;
        write_atomically(&self.records_dir, &format!("{hash}.json"), &bytes)
    }

    /// Records, distinct contents and bytes in use.
    pub fn usage(&self) -> StoreUsage {
        let index = self.lock_index();
        StoreUsage {
            records: index.records.len() as u64,
            blobs: index.blobs.len() as u64,
            bytes: index.used,
        }
    }

    /// The cap, bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether a store of `source_bytes` of content would fit now (the same
    /// test [`FunctionStore::store`] applies, blob and record counted).
    pub fn fits(&self, content_bytes: u64) -> bool {
        let used = self.lock_index().used;
        used.saturating_add(content_bytes)
            .saturating_add(RECORD_BYTES)
            <= self.max_bytes
    }

    /// Persist a function under a fresh invoke token for `lifetime`;
    /// returns its id, the token and the Unix time it expires at.
    pub fn store(
        &self,
        filename: &str,
        source: &str,
        manifest: &str,
        lifetime: Duration,
    ) -> Result<(FunctionId, InvokeToken, u64), StoreError> {
        self.store_at(filename, source, manifest, lifetime, unix_now())
    }

    fn store_at(
        &self,
        filename: &str,
        source: &str,
        manifest: &str,
        lifetime: Duration,
        now: u64,
    ) -> Result<(FunctionId, InvokeToken, u64), StoreError> {
        let token = InvokeToken::generate().map_err(|e| StoreError::Random(e.to_string()))?;
        let hash = token_hash(&token);
        let id = function_id(filename, source, manifest);
        let id_hex = id.to_hex();
        let blob = StoredFunction {
            version: FILE_VERSION,
            function_id: id_hex.clone(),
            filename: filename.to_owned(),
            source: source.to_owned(),
            manifest: manifest.to_owned(),
        };
        let bytes = serde_json::to_vec(&blob).map_err(json_error(&self.blobs_dir))?;
        let expires_at = now.saturating_add(lifetime.as_secs().max(1));

        let _writes = self.lock_writes();
        // Room for the blob and the record, whether or not the blob is
        // already stored: see the module documentation.
        let needed = (bytes.len() as u64).saturating_add(RECORD_BYTES);
        let used = self.lock_index().used;
        if used.saturating_add(needed) > self.max_bytes {
            return Err(StoreError::Full {
                max: self.max_bytes,
                used,
                needed,
            });
        }
        // Written also when it exists (same bytes), so that a duplicate
        // takes as long as new content.
        write_atomically(&self.blobs_dir, &format!("{id_hex}.json"), &bytes)?;
        if let Err(e) = self.write_record(&hash, &id_hex, expires_at) {
            // A blob nobody else names would be an orphan until restart.
            if !self.lock_index().blobs.contains_key(&id_hex) {
                let _ = std::fs::remove_file(self.blobs_dir.join(format!("{id_hex}.json")));
            }
            return Err(e);
        }
        self.lock_index()
            .add_record(hash, id_hex, expires_at, bytes.len() as u64);
        Ok((id, token, expires_at))
    }

    /// The function an invoke token refers to, unless deleted or expired.
    pub fn lookup(&self, token: &InvokeToken) -> Option<Arc<StoredFunction>> {
        self.lookup_at(token, unix_now())
    }

    fn lookup_at(&self, token: &InvokeToken, now: u64) -> Option<Arc<StoredFunction>> {
        let hash = token_hash(token);
        let function_id = self.lock_index().live(&hash, now)?.function_id.clone();
        let path = self.blobs_dir.join(format!("{function_id}.json"));
        read_blob(&path, &function_id).map(Arc::new)
    }

    /// Give the function under `token` a new lifetime from now; returns the
    /// Unix time it now expires at.
    pub fn renew(&self, token: &InvokeToken, lifetime: Duration) -> Result<u64, StoreError> {
        self.renew_at(token, lifetime, unix_now())
    }

    fn renew_at(
        &self,
        token: &InvokeToken,
        lifetime: Duration,
        now: u64,
    ) -> Result<u64, StoreError> {
        let hash = token_hash(token);
        let _writes = self.lock_writes();
        let record = self
            .lock_index()
            .live(&hash, now)
            .cloned()
            .ok_or(StoreError::UnknownToken)?;
        let expires_at = now.saturating_add(lifetime.as_secs().max(1));
        self.write_record(&hash, &record.function_id, expires_at)?;
        let mut index = self.lock_index();
        index.expiry.remove(&(record.expires_at, hash.clone()));
        index.expiry.insert((expires_at, hash.clone()));
        if let Some(r) = index.records.get_mut(&hash) {
            r.expires_at = expires_at;
        }
        Ok(expires_at)
    }

    /// Delete the record under `token`; its content goes too unless another
    /// record names it.
    pub fn delete(&self, token: &InvokeToken) -> Result<(), StoreError> {
        self.delete_at(token, unix_now())
    }

    fn delete_at(&self, token: &InvokeToken, now: u64) -> Result<(), StoreError> {
        let hash = token_hash(token);
        let _writes = self.lock_writes();
        if self.lock_index().live(&hash, now).is_none() {
            return Err(StoreError::UnknownToken);
        }
        self.remove_locked(&hash)
    }

    /// Remove one record and, if it was the last naming it, its blob: the
    /// record file first, so a crash in between leaves only an orphan blob.
    /// The caller holds the write lock.
    fn remove_locked(&self, hash: &str) -> Result<(), StoreError> {
        remove_file_if_present(&self.records_dir.join(format!("{hash}.json")))?;
        sync_dir(&self.records_dir)?;
        let orphan = self.lock_index().remove_record(hash);
        if let Some(id) = orphan {
            remove_file_if_present(&self.blobs_dir.join(format!("{id}.json")))?;
        }
        Ok(())
    }

    /// Delete every record whose lifetime has ended; returns how many.
    pub fn expire(&self) -> Result<u64, StoreError> {
        self.expire_at(unix_now())
    }

    fn expire_at(&self, now: u64) -> Result<u64, StoreError> {
        let due: Vec<String> = {
            let index = self.lock_index();
            match index.expiry.first() {
                Some((first, _)) if *first <= now => {}
                _ => return Ok(0),
            }
            index
                .expiry
                .iter()
                .take_while(|(at, _)| *at <= now)
                .map(|(_, hash)| hash.clone())
                .collect()
        };
        let _writes = self.lock_writes();
        let mut removed = 0;
        for hash in due {
            // Renewed since the list was taken: keep it.
            if self.lock_index().live(&hash, now).is_some() {
                continue;
            }
            self.remove_locked(&hash)?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const T0: u64 = 1_700_000_000;

    fn open(dir: &Path, max: u64, now: u64) -> FunctionStore {
        FunctionStore::open_at(dir, max, DAY, now).unwrap()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn stored_functions_are_found_by_token_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1 << 20, T0);
        let (id, token, expires) = store
            .store_at("a.py", "def main(): pass", "", DAY, T0)
            .unwrap();
        assert_eq!(expires, T0 + DAY.as_secs());
        drop(store);
        let store = open(dir.path(), 1 << 20, T0 + 10);
        let found = store.lookup_at(&token, T0 + 10).unwrap();
        assert_eq!(found.function_id, id.to_hex());
        assert_eq!(found.source, "def main(): pass");
        assert_eq!(store.usage().records, 1);
    }

    #[test]
    fn unknown_tokens_find_nothing_and_cannot_be_renewed_or_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1 << 20, T0);
        store.store_at("a.py", "x = 1", "", DAY, T0).unwrap();
        let stranger = InvokeToken::generate().unwrap();
        assert!(store.lookup_at(&stranger, T0).is_none());
        assert!(matches!(
            store.renew_at(&stranger, DAY, T0),
            Err(StoreError::UnknownToken)
        ));
        assert!(matches!(
            store.delete_at(&stranger, T0),
            Err(StoreError::UnknownToken)
        ));
        assert_eq!(store.usage().records, 1, "nothing was lost");
    }

    #[test]
    fn the_directory_holds_no_tokens_and_no_leftover_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("functions/records");
        std::fs::create_dir_all(&records).unwrap();
        std::fs::write(records.join(".tmp-deadbeef.json"), b"{half a rec").unwrap();
        let store = open(dir.path(), 1 << 20, T0);
        let (_, token, _) = store.store_at("a.py", "x = 1", "", DAY, T0).unwrap();
        let names = files(&records);
        assert_eq!(names.len(), 1, "{names:?}");
        let content = std::fs::read_to_string(records.join(&names[0])).unwrap();
        assert!(!content.contains(&token.to_hex()));
        assert!(!names[0].contains(&token.to_hex()));
    }

    #[test]
    fn storing_beyond_the_cap_is_refused_with_the_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1000, T0);
        store.store_at("a.py", "x = 1", "", DAY, T0).unwrap();
        let err = store
            .store_at("b.py", &"#".repeat(600), "", DAY, T0)
            .unwrap_err();
        assert!(matches!(err, StoreError::Full { max: 1000, .. }), "{err}");
    }

    #[test]
    fn identical_uploads_count_once_but_each_gets_its_own_token_and_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let source = "#".repeat(10_000);
        // Room for the content twice (a store needs room for a copy even
        // when it is a duplicate) plus many records: far less than the
        // seven copies stored below.
        let store = open(dir.path(), 2 * (10_000 + 200) + 20 * RECORD_BYTES, T0);
        let (id_a, a, _) = store.store_at("f.py", &source, "", DAY, T0).unwrap();
        let (id_b, b, _) = store
            .store_at("f.py", &source, "", 2 * DAY, T0 + 1)
            .unwrap();
        assert_eq!(id_a, id_b);
        assert_ne!(a, b);
        for _ in 0..5 {
            store.store_at("f.py", &source, "", DAY, T0).unwrap();
        }
        let usage = store.usage();
        assert_eq!((usage.records, usage.blobs), (7, 1));
        assert_eq!(files(&dir.path().join("functions/blobs")).len(), 1);
        // A's lifetime ends; B's function stays.
        assert_eq!(store.expire_at(T0 + DAY.as_secs()).unwrap(), 6);
        assert!(store.lookup_at(&a, T0 + DAY.as_secs()).is_none());
        assert!(store.lookup_at(&b, T0 + DAY.as_secs()).is_some());
    }

    #[test]
    fn a_duplicate_is_refused_exactly_when_new_content_of_its_size_would_be() {
        let dir = tempfile::tempdir().unwrap();
        let source = "#".repeat(1000);
        let store = open(dir.path(), 2 * (1100 + RECORD_BYTES) - 1, T0);
        store.store_at("f.py", &source, "", DAY, T0).unwrap();
        // Room for another record but not for another copy of the content:
        // the duplicate is refused like new content, so it tells the
        // uploader nothing about whether someone stored it before.
        assert!(matches!(
            store.store_at("f.py", &source, "", DAY, T0),
            Err(StoreError::Full { .. })
        ));
        assert!(matches!(
            store.store_at("g.py", &source, "", DAY, T0),
            Err(StoreError::Full { .. })
        ));
    }

    #[test]
    fn deleting_one_users_record_leaves_the_others_content_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1 << 20, T0);
        let (_, a, _) = store.store_at("f.py", "x = 1", "", DAY, T0).unwrap();
        let (_, b, _) = store.store_at("f.py", "x = 1", "", DAY, T0).unwrap();
        let before = store.usage().bytes;
        store.delete_at(&a, T0).unwrap();
        assert!(store.lookup_at(&a, T0).is_none());
        assert_eq!(store.lookup_at(&b, T0).unwrap().source, "x = 1");
        assert_eq!(store.usage().bytes, before - RECORD_BYTES);
        store.delete_at(&b, T0).unwrap();
        assert_eq!(
            store.usage(),
            StoreUsage {
                records: 0,
                blobs: 0,
                bytes: 0
            }
        );
        assert!(files(&dir.path().join("functions/blobs")).is_empty());
        assert!(files(&dir.path().join("functions/records")).is_empty());
        // Deleted is deleted: a second delete is refused.
        assert!(matches!(
            store.delete_at(&a, T0),
            Err(StoreError::UnknownToken)
        ));
    }

    #[test]
    fn an_expired_function_is_gone_after_reopening_and_its_space_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1 << 20, T0);
        let (_, short, _) = store
            .store_at("a.py", "x = 1", "", Duration::from_secs(60), T0)
            .unwrap();
        let (_, long, _) = store.store_at("b.py", "y = 2", "", DAY, T0).unwrap();
        let long_usage = {
            let blob = files(&dir.path().join("functions/blobs"))
                .iter()
                .map(|n| {
                    std::fs::metadata(dir.path().join("functions/blobs").join(n))
                        .unwrap()
                        .len()
                })
                .collect::<Vec<_>>();
            assert_eq!(blob.len(), 2);
            blob
        };
        drop(store);
        // Expired while the box was down.
        let store = open(dir.path(), 1 << 20, T0 + 61);
        assert!(store.lookup_at(&short, T0 + 61).is_none());
        assert!(store.lookup_at(&long, T0 + 61).is_some());
        assert_eq!(store.usage().records, 1);
        assert_eq!(files(&dir.path().join("functions/blobs")).len(), 1);
        assert_eq!(files(&dir.path().join("functions/records")).len(), 1);
        assert!(
            long_usage
                .iter()
                .any(|&len| store.usage().bytes == len + RECORD_BYTES)
        );
    }

    #[test]
    fn a_function_past_its_expiry_is_unknown_even_before_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1 << 20, T0);
        let (_, token, _) = store
            .store_at("a.py", "x = 1", "", Duration::from_secs(10), T0)
            .unwrap();
        assert!(store.lookup_at(&token, T0 + 9).is_some());
        assert!(store.lookup_at(&token, T0 + 10).is_none());
        assert!(matches!(
            store.renew_at(&token, DAY, T0 + 10),
            Err(StoreError::UnknownToken)
        ));
    }

    #[test]
    fn renewal_moves_the_expiry_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1 << 20, T0);
        let (_, token, _) = store
            .store_at("a.py", "x = 1", "", Duration::from_secs(10), T0)
            .unwrap();
        assert_eq!(
            store.renew_at(&token, DAY, T0 + 5).unwrap(),
            T0 + 5 + 86_400
        );
        assert_eq!(store.expire_at(T0 + 100).unwrap(), 0);
        drop(store);
        let store = open(dir.path(), 1 << 20, T0 + 100);
        assert!(store.lookup_at(&token, T0 + 100).is_some());
        assert_eq!(store.expire_at(T0 + 5 + 86_400).unwrap(), 1);
        assert!(store.lookup_at(&token, T0 + 5 + 86_400).is_none());
    }

    #[test]
    fn orphan_blobs_and_records_without_a_blob_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1 << 20, T0);
        let (_, a, _) = store.store_at("a.py", "x = 1", "", DAY, T0).unwrap();
        let (_, b, _) = store.store_at("b.py", "y = 2", "", DAY, T0).unwrap();
        drop(store);
        let blobs = dir.path().join("functions/blobs");
        let records = dir.path().join("functions/records");
        // A crash between a delete's two steps leaves a blob no record names.
        std::fs::remove_file(records.join(format!("{}.json", token_hash(&a)))).unwrap();
        // A blob lost or planted under the wrong name: its record is useless.
        let b_blob = function_id("b.py", "y = 2", "").to_hex();
        std::fs::write(
            blobs.join(format!("{b_blob}.json")),
            serde_json::to_vec(&StoredFunction {
                version: FILE_VERSION,
                function_id: b_blob.clone(),
                filename: "b.py".into(),
                source: "import os".into(),
                manifest: String::new(),
            })
            .unwrap(),
        )
        .unwrap();
        let store = open(dir.path(), 1 << 20, T0);
        // The tampered content is never run in place of what was stored.
        assert!(store.lookup_at(&b, T0).is_none());
        assert_eq!(files(&blobs).len(), 1, "{:?}", files(&blobs));
        assert_eq!(store.usage().records, 1);
    }

    #[test]
    fn records_of_an_earlier_version_keep_their_token_and_get_the_default_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let functions = dir.path().join("functions");
        std::fs::create_dir_all(&functions).unwrap();
        let token = InvokeToken::generate().unwrap();
        let hash = token_hash(&token);
        let old = serde_json::json!({
            "version": 1, "token_sha256": hash, "function_id": "ignored",
            "filename": "a.py", "source": "x = 1", "manifest": "",
        });
        std::fs::write(functions.join(format!("{hash}.json")), old.to_string()).unwrap();
        let store = open(dir.path(), 1 << 20, T0);
        assert_eq!(store.lookup_at(&token, T0).unwrap().source, "x = 1");
        assert!(store.lookup_at(&token, T0 + DAY.as_secs()).is_none());
        assert_eq!(files(&functions), vec!["blobs", "records"]);
    }

    #[test]
    fn everything_the_store_writes_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1 << 20, T0);
        store.store_at("a.py", "x = 1", "", DAY, T0).unwrap();
        let functions = dir.path().join("functions");
        for sub in ["", "blobs", "records"] {
            let d = functions.join(sub);
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
            if !sub.is_empty() {
                for name in files(&d) {
                    let mode = std::fs::metadata(d.join(&name))
                        .unwrap()
                        .permissions()
                        .mode();
                    assert_eq!(mode & 0o777, 0o600, "{name}");
                }
            }
        }
    }

    #[test]
    fn function_ids_depend_on_every_part() {
        assert_ne!(function_id("a", "bc", ""), function_id("ab", "c", ""));
        assert_eq!(function_id("a", "b", "c"), function_id("a", "b", "c"));
    }
}
