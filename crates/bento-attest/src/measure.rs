//! The software measurement: worker binary plus precompiled runtime.

use std::fmt;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::AttestError;

/// Domain separator opening the measurement hash.
pub const MEASUREMENT_DOMAIN: &[u8] = b"bento-measurement-v1\0";

/// The measurement of one worker build, with its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// SHA-256 of the worker binary.
    pub worker_sha256: [u8; 32],
    /// Size of the worker binary in bytes.
    pub worker_len: u64,
    /// SHA-256 of the precompiled runtime (`.cwasm`).
    pub runtime_sha256: [u8; 32],
    /// Size of the precompiled runtime in bytes.
    pub runtime_len: u64,
    /// The combined digest (see [`measure`]).
    pub digest: [u8; 32],
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.digest))
    }
}

/// Measure a worker binary and a precompiled runtime:
///
/// ```text
/// digest = SHA-256( "bento-measurement-v1\0"
///                   || u64be(len(worker))  || SHA-256(worker)
///                   || u64be(len(runtime)) || SHA-256(runtime) )
/// ```
///
/// Only file contents count (not names, times or permissions), so two
/// reproducible builds of the same source measure the same. The per-file
/// SHA-256s are the values a Gramine manifest pins as trusted files.
pub fn measure(worker: &Path, runtime: &Path) -> Result<Measurement, AttestError> {
    let (worker_sha256, worker_len) = hash_file(worker)?;
    let (runtime_sha256, runtime_len) = hash_file(runtime)?;
    let mut hash = Sha256::new();
    hash.update(MEASUREMENT_DOMAIN);
    hash.update(worker_len.to_be_bytes());
    hash.update(worker_sha256);
    hash.update(runtime_len.to_be_bytes());
    hash.update(runtime_sha256);
    Ok(Measurement {
        worker_sha256,
        worker_len,
        runtime_sha256,
        runtime_len,
        digest: hash.finalize().into(),
    })
}

fn hash_file(path: &Path) -> Result<([u8; 32], u64), AttestError> {
    let err = |error| AttestError::Measure {
        path: path.display().to_string(),
        error,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hash.finalize().into(), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measurement_is_the_documented_hash_and_depends_only_on_contents() {
        let dir = tempfile::tempdir().unwrap();
        let worker = dir.path().join("worker");
        let runtime = dir.path().join("runtime.cwasm");
        std::fs::write(&worker, b"worker bytes").unwrap();
        std::fs::write(&runtime, b"runtime bytes").unwrap();
        let m = measure(&worker, &runtime).unwrap();

        let mut preimage = b"bento-measurement-v1\0".to_vec();
        preimage.extend(12u64.to_be_bytes());
        preimage.extend(Sha256::digest(b"worker bytes"));
        preimage.extend(13u64.to_be_bytes());
        preimage.extend(Sha256::digest(b"runtime bytes"));
        assert_eq!(m.digest, <[u8; 32]>::from(Sha256::digest(&preimage)));

        // Same contents under other names: same measurement.
        let copy = dir.path().join("other-name");
        std::fs::copy(&worker, &copy).unwrap();
        assert_eq!(measure(&copy, &runtime).unwrap(), m);
        // One byte more in the runtime: another measurement.
        std::fs::write(&runtime, b"runtime bytes!").unwrap();
        assert_ne!(measure(&worker, &runtime).unwrap().digest, m.digest);
        // Swapping the roles changes it too (order is part of the hash).
        assert_ne!(measure(&runtime, &worker).unwrap().digest, m.digest);
    }

    #[test]
    fn a_missing_file_is_a_typed_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        match measure(&missing, &missing) {
            Err(AttestError::Measure { path, .. }) => assert!(path.ends_with("nope")),
            other => panic!("expected a Measure error, got {other:?}"),
        }
    }
}
