//! Stored functions, persisted in the data directory.
//!
//! Each stored function is one file, `functions/<h>.json`, where `<h>` is
//! the hex SHA-256 of its invoke token. Paths are therefore built only from
//! hashes the server computed, never from client-supplied names, and the
//! directory holds no usable tokens: reading it does not let anyone invoke.
//!
//! Writes are atomic: write a temporary file, fsync, rename into place,
//! fsync the directory. A crash leaves either no file or a whole one; stray
//! temporaries are removed at startup and never loaded.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bento_protocol::{FunctionId, InvokeToken};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const TEMP_PREFIX: &str = ".tmp-";
const RECORD_VERSION: u32 = 1;

/// Errors of the function store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory could not be used.
    #[error("function store I/O error at {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
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
    /// A random token could not be generated.
    #[error("cannot generate a token: {0}")]
    Random(String),
}

/// A stored function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredFunction {
    version: u32,
    /// Hex SHA-256 of the invoke token (the file name).
    token_sha256: String,
    /// Public content hash.
    pub function_id: String,
    /// File name shown in tracebacks.
    pub filename: String,
    /// Python source.
    pub source: String,
    /// Manifest text (empty for the default).
    pub manifest: String,
}

/// The persistent store.
#[derive(Debug)]
pub struct FunctionStore {
    dir: PathBuf,
    max_bytes: u64,
    used_bytes: AtomicU64,
    count: AtomicU64,
    /// Serialises the capacity check with the write it guards.
    write_lock: Mutex<()>,
    cache: Mutex<HashMap<String, std::sync::Arc<StoredFunction>>>,
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

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl FunctionStore {
    /// Open (creating if needed) the store under `data_dir`, removing
    /// leftovers of interrupted writes.
    pub fn open(data_dir: &Path, max_bytes: u64) -> Result<Self, StoreError> {
        let dir = data_dir.join("functions");
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let mut used = 0;
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if name.ends_with(".json") {
                used += entry.metadata().map(|m| m.len()).unwrap_or(0);
                count += 1;
            }
        }
        Ok(Self {
            dir,
            max_bytes,
            used_bytes: AtomicU64::new(used),
            count: AtomicU64::new(count),
            write_lock: Mutex::new(()),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Number of stored functions and their total size on disk.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.used_bytes.load(Ordering::Relaxed),
        )
    }

    /// Persist a function under a fresh invoke token.
    pub fn store(
        &self,
        filename: &str,
        source: &str,
        manifest: &str,
    ) -> Result<(FunctionId, InvokeToken), StoreError> {
        let token = InvokeToken::generate().map_err(|e| StoreError::Random(e.to_string()))?;
        let id = function_id(filename, source, manifest);
        let record = StoredFunction {
            version: RECORD_VERSION,
            token_sha256: token_hash(&token),
            function_id: id.to_hex(),
            filename: filename.to_owned(),
            source: source.to_owned(),
            manifest: manifest.to_owned(),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| StoreError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e),
        })?;
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let used = self.used_bytes.load(Ordering::Relaxed);
        let needed = bytes.len() as u64;
        if used.saturating_add(needed) > self.max_bytes {
            return Err(StoreError::Full {
                max: self.max_bytes,
                used,
                needed,
            });
        }
        let final_path = self.dir.join(format!("{}.json", record.token_sha256));
        let temp_path = self
            .dir
            .join(format!("{TEMP_PREFIX}{}", record.token_sha256));
        let mut file = std::fs::File::create(&temp_path).map_err(io_error(&temp_path))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_error(&temp_path))?;
        drop(file);
        std::fs::rename(&temp_path, &final_path).map_err(io_error(&final_path))?;
        // Make the rename itself durable.
        std::fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(&self.dir))?;
        self.used_bytes.fetch_add(needed, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok((id, token))
    }

    /// The function an invoke token refers to, if any.
    pub fn lookup(&self, token: &InvokeToken) -> Option<std::sync::Arc<StoredFunction>> {
        let hash = token_hash(token);
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .cloned();
        let record = match cached {
            Some(record) => record,
            None => {
                let path = self.dir.join(format!("{hash}.json"));
                let bytes = std::fs::read(&path).ok()?;
                let record: StoredFunction = match serde_json::from_slice(&bytes) {
                    Ok(record) => record,
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring an unreadable stored function");
                        return None;
                    }
                };
                let record = std::sync::Arc::new(record);
                self.cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(hash.clone(), record.clone());
                record
            }
        };
        // The file name already matched the hash; compare again in constant
        // time so a tampered record under the wrong name is not accepted.
        let matches: bool = record.token_sha256.as_bytes().ct_eq(hash.as_bytes()).into();
        (matches && record.version == RECORD_VERSION).then_some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_functions_are_found_by_token_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = FunctionStore::open(dir.path(), 1 << 20).unwrap();
        let (id, token) = store.store("a.py", "def main(): pass", "").unwrap();
        drop(store);
        let store = FunctionStore::open(dir.path(), 1 << 20).unwrap();
        let found = store.lookup(&token).unwrap();
        assert_eq!(found.function_id, id.to_hex());
        assert_eq!(found.source, "def main(): pass");
        assert_eq!(store.usage().0, 1);
    }

    #[test]
    fn unknown_tokens_find_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FunctionStore::open(dir.path(), 1 << 20).unwrap();
        store.store("a.py", "x = 1", "").unwrap();
        assert!(store.lookup(&InvokeToken::generate().unwrap()).is_none());
    }

    #[test]
    fn the_directory_holds_no_tokens_and_no_leftover_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let functions = dir.path().join("functions");
        std::fs::create_dir_all(&functions).unwrap();
        std::fs::write(functions.join(".tmp-deadbeef"), b"{half a rec").unwrap();
        let store = FunctionStore::open(dir.path(), 1 << 20).unwrap();
        let (_, token) = store.store("a.py", "x = 1", "").unwrap();
        let names: Vec<String> = std::fs::read_dir(&functions)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let content = std::fs::read_to_string(functions.join(&names[0])).unwrap();
        assert!(!content.contains(&token.to_hex()));
        assert!(!names[0].contains(&token.to_hex()));
    }

    #[test]
    fn storing_beyond_the_cap_is_refused_with_the_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let store = FunctionStore::open(dir.path(), 300).unwrap();
        store.store("a.py", "x = 1", "").unwrap();
        let err = store.store("b.py", &"#".repeat(400), "").unwrap_err();
        assert!(matches!(err, StoreError::Full { max: 300, .. }), "{err}");
    }

    #[test]
    fn function_ids_depend_on_every_part() {
        assert_ne!(function_id("a", "bc", ""), function_id("ab", "c", ""));
        assert_eq!(function_id("a", "b", "c"), function_id("a", "b", "c"));
    }
}
