//! The Python runtime re-implements this protocol for `api.bento_box` (a
//! function talking to another box over Tor): its constants live in
//! `runtime/bento/protocol.py`, which is generated from this crate's own
//! so that the two never drift. The test fails when the file is not what
//! this crate generates; `BENTO_BLESS=1 cargo test -p bento-protocol
//! python_constants` rewrites it (then run `scripts/setup.sh`).

use crate::{
    ErrorCode, FrameType, HELLO_MAGIC, MAX_DATA_LEN, MAX_FRAME_LEN, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, TOKEN_BYTES,
};

/// The file, relative to this crate.
const PATH: &str = "../../runtime/bento/protocol.py";

/// `StatusRequest` → `STATUS_REQUEST`.
fn upper_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn generate() -> String {
    let mut out = String::from(
        "\"\"\"The native protocol's constants (docs/protocol.md), for the runtime's\n\
         remote-box client (bento/remote.py).\n\n\
         Generated from the bento-protocol crate: do not edit. Its test\n\
         (`cargo test -p bento-protocol python_constants`) fails when this file is\n\
         stale; `BENTO_BLESS=1` on that command rewrites it.\n\"\"\"\n\n",
    );
    let magic = String::from_utf8_lossy(HELLO_MAGIC);
    out += &format!("HELLO_MAGIC = b\"{magic}\"\n");
    out += &format!("PROTOCOL_VERSION = {PROTOCOL_VERSION}\n");
    out += &format!("MIN_PROTOCOL_VERSION = {MIN_PROTOCOL_VERSION}\n");
    out += &format!("MAX_FRAME_LEN = {MAX_FRAME_LEN}\n");
    out += &format!("MAX_DATA_LEN = {MAX_DATA_LEN}\n");
    out += &format!("TOKEN_BYTES = {TOKEN_BYTES}\n\n");
    out += "# Frame types (the byte after a frame's length).\n";
    for &frame in FrameType::ALL {
        out += &format!("{} = 0x{:02x}\n", upper_snake(frame.name()), frame as u8);
    }
    out += "\n# Error codes (an Error frame's u16) and their names.\nERROR_NAMES = {\n";
    for &code in ErrorCode::ALL {
        out += &format!("    {}: \"{}\",\n", code.to_u16(), code.name());
    }
    out += "}\n";
    out
}

#[test]
fn the_runtimes_protocol_constants_are_the_ones_this_crate_generates() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(PATH);
    let expected = generate();
    if std::env::var_os("BENTO_BLESS").is_some()
        && let Err(e) = std::fs::write(&path, &expected)
    {
        panic!("cannot write {}: {e}", path.display());
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is stale: run `BENTO_BLESS=1 cargo test -p bento-protocol python_constants`, \
         then scripts/setup.sh",
        path.display()
    );
}

#[test]
fn names_become_python_constant_names() {
    assert_eq!(upper_snake("StatusRequest"), "STATUS_REQUEST");
    assert_eq!(upper_snake("Hello"), "HELLO");
}
