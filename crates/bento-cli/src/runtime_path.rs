//! Where the precompiled Python runtime lives by default.

use std::path::PathBuf;

/// Where the Debian package (scripts/package-deb.sh) installs the runtime,
/// relative to the prefix the `bento` binary is installed under (`/usr`
/// for `/usr/bin/bento`).
const INSTALLED_RUNTIME: &str = "lib/bento/bento-python.cwasm";

/// `$BENTO_RUNTIME` if set; else the installed runtime beside an installed
/// binary (`/usr/lib/bento/` for `/usr/bin/bento`) if it exists; else the
/// file `scripts/setup.sh` writes in this source tree's `.cache/runtime/`.
pub fn default_runtime() -> PathBuf {
    if let Some(path) = std::env::var_os("BENTO_RUNTIME") {
        return PathBuf::from(path);
    }
    let installed = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()?
                .parent()
                .map(|prefix| prefix.join(INSTALLED_RUNTIME))
        })
        .filter(|path| path.is_file());
    if let Some(installed) = installed {
        return installed;
    }
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.cache/runtime/bento-python.cwasm"
    ))
}
