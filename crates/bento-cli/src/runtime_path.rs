//! Where the precompiled Python runtime lives by default.

use std::path::PathBuf;

/// `$BENTO_RUNTIME` if set, else the file `scripts/setup.sh` writes
/// in this source tree's `.cache/runtime/`.
pub fn default_runtime() -> PathBuf {
    if let Some(path) = std::env::var_os("BENTO_RUNTIME") {
        return PathBuf::from(path);
    }
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.cache/runtime/bento-python.cwasm"
    ))
}
