//! Instance-scoped, quota-limited key-value storage, encrypted at rest with a
//! key that exists only in memory.
//!
//! A Bento function instance that is granted `api.storage` gets one
//! [`InstanceStorage`]: a small key-value store that belongs to that instance
//! alone, limited by a byte quota, and gone when the instance ends.
//!
//! # Security argument
//!
//! The operator's disk must never end up holding a function's data after the
//! function instance is over, even if clean-up never runs (the worker process
//! is SIGKILLed, the box loses power, deletion fails half-way).
//!
//! * [`InstanceStorage::create`] draws a fresh random 256-bit key from the
//!   operating system. The key is held only in memory (inside the cipher
//!   state); it is never written to disk, logged, or handed out, and it is
//!   zeroized when the storage is dropped.
//! * Every value is sealed with XChaCha20-Poly1305 under that key, with a
//!   fresh random 192-bit nonce per write. The associated data binds each
//!   ciphertext to its entry (the user key and the file's serial number), so
//!   files cannot be swapped between entries, replayed from an older write, or
//!   copied in from another instance without [`StorageError::Corrupt`].
//! * Nothing about the user's keys is on disk in plaintext: files are named by
//!   an increasing counter and the key → file index lives only in memory.
//!   Consequently a storage cannot be reopened after a restart, by design.
//! * When the [`InstanceStorage`] is dropped, its directory is deleted. If
//!   that never happens, what remains is ciphertext under a key nobody has any
//!   more: unrecoverable garbage, which [`remove_leftovers`] sweeps away at the
//!   next start-up.
//!
//! What the disk still reveals while (or after) an instance runs: how many
//! entries there are and how long each value is (ciphertext length is
//! plaintext length plus a fixed overhead).
//!
//! Writes go to a temporary file that is renamed into place, and the in-memory
//! index switches to the new file only after that succeeded, so a value is
//! never half-replaced. Files are not fsynced: durability across a crash is
//! pointless for data that is unreadable after a crash anyway.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

/// The longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 256;

/// Length of the random nonce stored at the start of every file.
const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag at the end of every file.
const TAG_LEN: usize = 16;
/// Domain separation prefix of the associated data.
const AAD_DOMAIN: &[u8] = b"bento-storage/v1\0";

/// Why a storage operation failed.
///
/// The `Display` texts are shown to function authors (as Python exceptions),
/// so they are written for them and never contain host paths.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The put would take the storage over its quota; nothing was changed.
    #[error(
        "storage quota exceeded: this put needs {needed} bytes but {used} of {quota} bytes are already in use"
    )]
    QuotaExceeded {
        /// Bytes the new entry would use (key + value + [`ENTRY_OVERHEAD`]).
        needed: u64,
        /// Bytes in use by all other entries (not counting the value this put
        /// would replace), so `needed + used > quota`.
        used: u64,
        /// The storage's quota in bytes.
        quota: u64,
    },
    /// The key is not acceptable (empty or too long); the message says why.
    #[error("{0}")]
    InvalidKey(String),
    /// The file system failed.
    #[error("storage I/O error while {action}: {error}")]
    Io {
        /// What the storage was doing, e.g. "writing a value".
        action: &'static str,
        /// The underlying error.
        error: io::Error,
    },
    /// A stored value failed authentication: its file was modified, replaced
    /// or truncated on disk. The message names the key.
    #[error("{0}")]
    Corrupt(String),
}

impl StorageError {
    fn io(action: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |error| StorageError::Io { action, error }
    }

    fn corrupt(key: &str, what: &str) -> Self {
        StorageError::Corrupt(format!(
            "stored value for key {key:?} is corrupt ({what}): its file was modified or replaced on disk"
        ))
    }
}

/// One live entry of the in-memory index.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Serial number of the file holding the value (also its file name).
    file: u64,
    /// Plaintext value length in bytes.
    value_len: u64,
}

/// A key-value store belonging to one function instance, with a byte quota,
/// encrypted at rest under a key held only in memory.
///
/// Dropping it deletes its directory (best effort) and zeroizes the key. It
/// is deliberately not `Clone`: there is exactly one owner of the key.
pub struct InstanceStorage {
    dir: PathBuf,
    quota: u64,
    used: u64,
    /// Boxed so that moving the storage does not copy key material around.
    /// The cipher zeroizes its key when dropped (`zeroize` feature).
    cipher: Box<XChaCha20Poly1305>,
    index: BTreeMap<String, Entry>,
    next_file: u64,
}

impl fmt::Debug for InstanceStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither the key nor the user's keys are printed.
        f.debug_struct("InstanceStorage")
            .field("dir", &self.dir)
            .field("quota", &self.quota)
            .field("used", &self.used)
            .field("entries", &self.index.len())
            .finish_non_exhaustive()
    }
}

impl InstanceStorage {
    /// Create the storage directory `dir` with a fresh random 256-bit key held
    /// only in memory.
    ///
    /// `dir` must not exist yet (so two instances can never share one); its
    /// parent is created if missing. Directories are created with mode 0700.
    pub fn create(dir: PathBuf, quota_bytes: u64) -> Result<Self, StorageError> {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            dir_builder(true)
                .create(parent)
                .map_err(StorageError::io("creating the storage root directory"))?;
        }
        dir_builder(false)
            .create(&dir)
            .map_err(StorageError::io("creating the storage directory"))?;

        let mut key = Zeroizing::new([0u8; 32]);
        if let Err(e) = getrandom::fill(key.as_mut_slice()) {
            remove_dir_quietly(&dir);
            return Err(StorageError::Io {
                action: "generating the storage key",
                error: random_error(e),
            });
        }
        let cipher = Box::new(XChaCha20Poly1305::new(Key::cast_from_core(&key)));

        Ok(InstanceStorage {
            dir,
            quota: quota_bytes,
            used: 0,
            cipher,
            index: BTreeMap::new(),
            next_file: 0,
        })
    }

    /// Store `value` under `key`, replacing any old value.
    ///
    /// The quota counts key bytes + value bytes + [`ENTRY_OVERHEAD`] of all
    /// live entries. A put
    /// that would exceed it fails with [`StorageError::QuotaExceeded`] and
    /// changes nothing; so does any other failure (the old value stays).
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        validate_key(key)?;
        let needed = (key.len() as u64)
            .saturating_add(value.len() as u64)
            .saturating_add(ENTRY_OVERHEAD);
        let old = self.index.get(key).copied();
        let others = match old {
            Some(entry) => self.used.saturating_sub(entry_size(key, entry)),
            None => self.used,
        };
        if others.saturating_add(needed) > self.quota {
            return Err(StorageError::QuotaExceeded {
                needed,
                used: others,
                quota: self.quota,
            });
        }

        let file = self.next_file;
        self.next_file += 1;

        let mut nonce = XNonce::default();
        getrandom::fill(nonce.as_mut_slice()).map_err(|e| StorageError::Io {
            action: "generating a nonce",
            error: random_error(e),
        })?;
        let aad = associated_data(file, key);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .map_err(|_| StorageError::Io {
                action: "encrypting a value",
                error: io::Error::other("the value is too large to encrypt"),
            })?;

        self.write_file(file, &nonce, &sealed)?;

        self.index.insert(
            key.to_owned(),
            Entry {
                file,
                value_len: value.len() as u64,
            },
        );
        self.used = others + needed;
        if let Some(entry) = old {
            // The new value is already in place; failing to remove the old
            // file only leaves unreadable ciphertext until drop.
            let _ = fs::remove_file(self.file_path(entry.file));
        }
        Ok(())
    }

    /// The value stored under `key`, or `None` if there is none.
    ///
    /// Fails with [`StorageError::Corrupt`] if the value's file was tampered
    /// with; it never returns bytes that were not put under this key.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        validate_key(key)?;
        let Some(&entry) = self.index.get(key) else {
            return Ok(None);
        };
        let expected_len = (NONCE_LEN + TAG_LEN) as u64 + entry.value_len;

        let mut file = match fs::File::open(self.file_path(entry.file)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::corrupt(key, "its file is missing"));
            }
            Err(e) => return Err(StorageError::io("reading a value")(e)),
        };
        let mut data = Vec::new();
        // Read at most one byte more than expected: a planted huge file must
        // not make us read it whole.
        Read::by_ref(&mut file)
            .take(expected_len.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(StorageError::io("reading a value"))?;
        if data.len() as u64 != expected_len {
            return Err(StorageError::corrupt(key, "its file has the wrong length"));
        }

        let (nonce, sealed) = data.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce)
            .map_err(|_| StorageError::corrupt(key, "its file has the wrong length"))?;
        let aad = associated_data(entry.file, key);
        let value = self
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| StorageError::corrupt(key, "authentication failed"))?;
        Ok(Some(value))
    }

    /// Delete the value under `key`; returns whether there was one.
    pub fn delete(&mut self, key: &str) -> Result<bool, StorageError> {
        validate_key(key)?;
        let Some(entry) = self.index.remove(key) else {
            return Ok(false);
        };
        self.used = self.used.saturating_sub(entry_size(key, entry));
        // The entry is gone from the index either way: even if removing its
        // file fails, the ciphertext is unreachable and goes with the
        // directory on drop, so the delete counts as done.
        let _ = fs::remove_file(self.file_path(entry.file));
        Ok(true)
    }

    /// All keys with a value, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    /// Bytes in use: key bytes + value bytes + [`ENTRY_OVERHEAD`] of all live entries.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The quota in bytes.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// The directory holding this storage's (encrypted) files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_path(&self, file: u64) -> PathBuf {
        self.dir.join(format!("{file:016x}"))
    }

    /// Atomically create the file numbered `file` holding `nonce || sealed`.
    fn write_file(&self, file: u64, nonce: &XNonce, sealed: &[u8]) -> Result<(), StorageError> {
        let tmp = self.dir.join(format!("{file:016x}.tmp"));
        let result = (|| {
            let mut f = new_file_options()
                .open(&tmp)
                .map_err(StorageError::io("creating a value file"))?;
            f.write_all(nonce.as_slice())
                .and_then(|()| f.write_all(sealed))
                .map_err(StorageError::io("writing a value"))?;
            drop(f);
            fs::rename(&tmp, self.file_path(file))
                .map_err(StorageError::io("moving a value file into place"))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl Drop for InstanceStorage {
    fn drop(&mut self) {
        remove_dir_quietly(&self.dir);
        self.index.clear();
        // `self.cipher` zeroizes its key when it is dropped right after this.
    }
}

/// Remove `dir` and everything in it, ignoring all errors (best effort, never
/// panics). Symbolic links inside are removed, not followed.
///
/// Returns whether `dir` is gone afterwards (also true if it never existed).
pub fn remove_dir_quietly(dir: &Path) -> bool {
    match fs::remove_dir_all(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::NotFound || fs::symlink_metadata(dir).is_err(),
    }
}

/// Remove every leftover instance directory directly under `root` and return
/// how many were removed.
///
/// Used by the server at start-up and after a worker crash: the keys of those
/// storages died with their processes, so their contents are unreadable
/// garbage. Only call this when no live [`InstanceStorage`] has its directory
/// under `root`. Entries of `root` that are not directories are left alone. A
/// missing `root` is not an error (nothing to remove).
///
/// Tries every directory even if some fail, then returns the first error.
pub fn remove_leftovers(root: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    let mut first_error = None;
    for entry in entries {
        let result = entry.and_then(|entry| {
            // `file_type` does not follow symlinks: a link to a directory is
            // not a leftover of ours and is not descended into.
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
                removed += 1;
            }
            Ok(())
        });
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

fn validate_key(key: &str) -> Result<(), StorageError> {
    if key.is_empty() {
        return Err(StorageError::InvalidKey(
            "invalid storage key: a key must not be empty".to_owned(),
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StorageError::InvalidKey(format!(
            "invalid storage key: a key may be at most {MAX_KEY_BYTES} bytes of UTF-8, this one is {} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// What every entry costs beyond its key and value bytes: each is a file
/// (an inode, a block, an index slot), so without this a quota filled with
/// one-byte entries would cost far more disk and memory than its size.
pub const ENTRY_OVERHEAD: u64 = 64;

/// Bytes an entry counts against the quota.
fn entry_size(key: &str, entry: Entry) -> u64 {
    key.len() as u64 + entry.value_len + ENTRY_OVERHEAD
}

/// Associated data binding a ciphertext to its entry: the file serial number
/// (unique per write, so old versions cannot be replayed) and the user key.
fn associated_data(file: u64, key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + 8 + key.len());
    aad.extend_from_slice(AAD_DOMAIN);
    aad.extend_from_slice(&file.to_be_bytes());
    aad.extend_from_slice(key.as_bytes());
    aad
}

/// An I/O error for a failure of the operating system's random source.
fn random_error(e: getrandom::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::other(format!("random number generator failed: {e}")),
    }
}

#[cfg(unix)]
fn dir_builder(recursive: bool) -> fs::DirBuilder {
    use std::os::unix::fs::DirBuilderExt;
    let mut b = fs::DirBuilder::new();
    b.recursive(recursive).mode(0o700);
    b
}

#[cfg(not(unix))]
fn dir_builder(recursive: bool) -> fs::DirBuilder {
    let mut b = fs::DirBuilder::new();
    b.recursive(recursive);
    b
}

#[cfg(unix)]
fn new_file_options() -> fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true).mode(0o600);
    o
}

#[cfg(not(unix))]
fn new_file_options() -> fs::OpenOptions {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    o
}

#[cfg(test)]
mod tests;
