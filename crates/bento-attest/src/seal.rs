//! The sealed channel: a client encrypts its function, arguments and input
//! to a key only the (attested) worker holds, and the worker encrypts the
//! output back; the server process in between relays ciphertext.
//!
//! The construction (docs/attestation.md, "The sealed channel"):
//!
//! - The worker holds a static X25519 key pair ([`ChannelSecret`]); its
//!   public key is the evidence's `channel_key`, bound by the report data.
//! - Every envelope (a `SealedStore`'s source, a `SealedInvoke`'s call) is
//!   sealed with a fresh client X25519 key pair `e`/`E`:
//!   `ikm = X25519(e, W)` (all-zero refused), `prk = HKDF-Extract(salt =
//!   "bento-sealed-v1", ikm)`, and each key is `HKDF-Expand(prk, label ||
//!   E || W, 32)`, so keys are bound to both public keys and a purpose.
//! - An invocation's envelope also yields the 32-byte *session secret*,
//!   from which the session's input, output and outcome keys derive. The
//!   client keeps it (the sealed session token); the box never sees it.
//! - ChaCha20-Poly1305 with a 96-bit nonce `0^32 || u64be(counter)`: 0 for
//!   one-shot keys, the input sequence number for input records, the
//!   record's offset in the output stream for output records. Each key
//!   encrypts under each counter at most once, and a record decrypts only
//!   at the counter it was sealed for: replayed, reordered, truncated or
//!   moved records fail to open.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::binding::CHANNEL_KEY_BYTES;

/// Domain separator of every key the sealed channel derives.
pub const SEAL_DOMAIN: &[u8] = b"bento-sealed-v1";
/// Version byte at the start of every envelope.
pub const ENVELOPE_VERSION: u8 = 1;
/// Bytes of a Poly1305 tag.
pub const SEAL_TAG_LEN: usize = 16;
/// An envelope's bytes beyond its plaintext: version, `E`, tag.
pub const ENVELOPE_OVERHEAD: usize = 1 + CHANNEL_KEY_BYTES + SEAL_TAG_LEN;
/// An output record's bytes beyond its plaintext: `u32` length, tag. The
/// worker charges them to the session's output credit, so the box's
/// buffer bound counts what it actually holds.
pub const OUTPUT_RECORD_OVERHEAD: usize = 4 + SEAL_TAG_LEN;
/// An input record's bytes beyond its plaintext: `u64` sequence, tag.
pub const INPUT_RECORD_OVERHEAD: usize = 8 + SEAL_TAG_LEN;
/// Bytes of the session secret a client keeps to attach to its session.
pub const SESSION_SECRET_BYTES: usize = 32;
/// Prefix of an error message whose text is sealed (hex follows).
pub const SEALED_MESSAGE_PREFIX: &str = "sealed:";

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The bytes do not have the layout of an envelope or record.
    #[error("malformed sealed data: {0}")]
    Malformed(&'static str),
    /// The authentication tag did not verify: the ciphertext was changed,
    /// replayed, reordered, or sealed for another key or session.
    #[error(
        "sealed data failed authentication: changed, replayed, reordered, or sealed for another session or key"
    )]
    Tampered,
    /// An input record's sequence number is not above the last one.
    #[error("sealed input out of order: sequence {got} after {last}")]
    OutOfOrder {
        /// The record's sequence number.
        got: u64,
        /// The last accepted one.
        last: u64,
    },
    /// The peer's public key is a low-order point (the shared secret would
    /// be all zero, known to everyone).
    #[error("the channel key is not a valid X25519 public key")]
    WeakKey,
    /// The operating system's random source failed.
    #[error("random number generator failed: {0}")]
    Random(String),
    /// Reading or writing the channel key file failed.
    #[error("channel key file {path}: {error}")]
    KeyFile {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
}

fn random32() -> Result<Zeroizing<[u8; 32]>, SealError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut_slice()).map_err(|e| SealError::Random(e.to_string()))?;
    Ok(bytes)
}

fn x25519(secret: &[u8; 32], public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let shared = Zeroizing::new(MontgomeryPoint(*public).mul_clamped(*secret).to_bytes());
    if *shared == [0u8; 32] {
        return Err(SealError::WeakKey);
    }
    Ok(shared)
}

struct Len32;
impl ring::hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// `HKDF-Expand(HKDF-Extract(salt, ikm), info, 32)`.
fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes from SHA-256's HKDF is always within its 255 * 32 limit.
    if let Ok(okm) = prk.expand(info, Len32) {
        let _ = okm.fill(out.as_mut_slice());
    }
    out
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::from(n)
}

/// One direction's AEAD key.
struct Cipher(ChaCha20Poly1305);

impl Cipher {
    fn new(key: &[u8; 32]) -> Self {
        Self(ChaCha20Poly1305::new(&Key::from(*key)))
    }

    fn seal(&self, counter: u64, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        // Encryption fails only for plaintexts beyond 256 GiB.
        self.0
            .encrypt(
                &nonce(counter),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default()
    }

    fn open(&self, counter: u64, aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, SealError> {
        self.0
            .decrypt(
                &nonce(counter),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| SealError::Tampered)
    }
}

/// What an envelope is for; also the label of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Store,
    Invoke,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Store => b"store",
            Purpose::Invoke => b"invoke",
        }
    }
}

/// Keys derived from one envelope's X25519 exchange.
struct EnvelopeKeys {
    envelope: Cipher,
    /// Seals the box's error text back (store: the syntax error).
    reply: Cipher,
    /// Invocations: the session secret.
    session: Zeroizing<[u8; 32]>,
}

fn envelope_keys(shared: &[u8; 32], purpose: Purpose, e: &[u8; 32], w: &[u8; 32]) -> EnvelopeKeys {
    let key = |label: &[u8]| hkdf(SEAL_DOMAIN, shared, &[purpose.label(), label, e, w]);
    EnvelopeKeys {
        envelope: Cipher::new(&key(b" envelope")),
        reply: Cipher::new(&key(b" reply")),
        session: key(b" session"),
    }
}

fn store_aad(manifest: &str) -> Vec<u8> {
    let mut aad = b"bento-sealed-v1 store ".to_vec();
    aad.extend_from_slice(&Sha256::digest(manifest.as_bytes()));
    aad
}

const INVOKE_AAD: &[u8] = b"bento-sealed-v1 invoke";

/// Seal `plaintext` for `purpose` to the worker key `w`: the envelope and
/// the keys derived from it.
fn seal_envelope(
    w: &[u8; CHANNEL_KEY_BYTES],
    purpose: Purpose,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, EnvelopeKeys), SealError> {
    let e_secret = random32()?;
    let e_public = MontgomeryPoint::mul_base_clamped(*e_secret).to_bytes();
    let shared = x25519(&e_secret, w)?;
    let keys = envelope_keys(&shared, purpose, &e_public, w);
    let mut out = Vec::with_capacity(ENVELOPE_OVERHEAD + plaintext.len());
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&e_public);
    out.extend_from_slice(&keys.envelope.seal(0, aad, plaintext));
    Ok((out, keys))
}

/// `str`-style length-prefixed fields, as in the wire protocol.
fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn take_str(bytes: &mut &[u8]) -> Result<String, SealError> {
    if bytes.len() < 4 {
        return Err(SealError::Malformed("truncated string"));
    }
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let rest = &bytes[4..];
    if rest.len() < len {
        return Err(SealError::Malformed("truncated string"));
    }
    let s = std::str::from_utf8(&rest[..len])
        .map_err(|_| SealError::Malformed("string is not UTF-8"))?
        .to_owned();
    *bytes = &rest[len..];
    Ok(s)
}

/// A function's sealed upload, as the worker opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedFunction {
    /// File name for tracebacks.
    pub filename: String,
    /// Python source.
    pub source: String,
}

/// An invocation's sealed call, as the worker opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCall {
    /// The function to call.
    pub entry: String,
    /// JSON array of positional arguments.
    pub args_json: String,
}

/// Seals text (an error message) back to the client of one envelope.
pub struct ReplySealer(Cipher);

impl ReplySealer {
    /// `sealed:` and the hex of the sealed text.
    pub fn seal(&self, text: &str) -> String {
        format!(
            "{SEALED_MESSAGE_PREFIX}{}",
            hex::encode(self.0.seal(0, b"bento-sealed-v1 reply", text.as_bytes()))
        )
    }

    /// Open a message [`Self::seal`] made; a message without the prefix
    /// is the box's own (e.g. a refusal before the worker saw anything).
    pub fn open(&self, message: &str) -> Result<String, SealError> {
        let Some(hex_text) = message.strip_prefix(SEALED_MESSAGE_PREFIX) else {
            return Ok(message.to_owned());
        };
        let sealed =
            hex::decode(hex_text).map_err(|_| SealError::Malformed("sealed message is not hex"))?;
        let text = self.0.open(0, b"bento-sealed-v1 reply", &sealed)?;
        String::from_utf8(text).map_err(|_| SealError::Malformed("sealed message is not UTF-8"))
    }
}

/// The worker's static channel key. Held only by the worker process (the
/// part that runs inside a TEE); its public half is the evidence's
/// `channel_key`.
pub struct ChannelSecret(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for ChannelSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelSecret({})", hex::encode(self.public_key()))
    }
}

impl ChannelSecret {
    /// A fresh random key.
    pub fn generate() -> Result<Self, SealError> {
        Ok(Self(random32()?))
    }

    /// The key kept in `path`, created (mode 0600) if the file does not
    /// exist. Every worker of a box reads the same file, so all hold the
    /// same key and a function sealed to it can be invoked on any worker
    /// and after restarts. Under a TEE the file must be one only the TEE
    /// can read (Gramine: an encrypted file keyed to the enclave's
    /// measurement; see docs/attestation.md).
    pub fn load_or_create(path: &std::path::Path) -> Result<Self, SealError> {
        let file_error = |error| SealError::KeyFile {
            path: path.display().to_string(),
            error,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    file_error(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} bytes, expected 32", bytes.len()),
                    ))
                })?;
                return Ok(Self(Zeroizing::new(raw)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_error(e)),
        }
        // Several workers start at once: each writes a complete candidate
        // under its own name and links it into place; the first link wins
        // and everyone reads the winner, never a half-written file.
        let secret = Self::generate()?;
        let candidate = path.with_extension(format!("tmp{}", std::process::id()));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&candidate)
                .map_err(file_error)?;
            file.write_all(secret.0.as_slice())
                .and_then(|()| file.sync_all())
                .map_err(file_error)?;
        }
        match std::fs::hard_link(&candidate, path) {
            Ok(()) => {
                let _ = std::fs::remove_file(&candidate);
                Ok(secret)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&candidate);
                Self::load_or_create(path)
            }
            // A file system without hard links (e.g. an encrypted mount):
            // rename, and read back whichever key ended up there. A worker
            // that read an earlier one then disagrees with the others, and
            // the box offers no sealed channel rather than a wrong one.
            Err(_) => {
                std::fs::rename(&candidate, path).map_err(file_error)?;
                Self::load_or_create(path)
            }
        }
    }

    /// The public key, `W`.
    pub fn public_key(&self) -> [u8; CHANNEL_KEY_BYTES] {
        MontgomeryPoint::mul_base_clamped(*self.0).to_bytes()
    }

    fn open_envelope(
        &self,
        envelope: &[u8],
        purpose: Purpose,
        aad: &[u8],
    ) -> Result<(Vec<u8>, EnvelopeKeys), SealError> {
        if envelope.len() < ENVELOPE_OVERHEAD {
            return Err(SealError::Malformed("envelope too short"));
        }
        if envelope[0] != ENVELOPE_VERSION {
            return Err(SealError::Malformed("unknown envelope version"));
        }
        let mut e_public = [0u8; 32];
        e_public.copy_from_slice(&envelope[1..33]);
        let shared = x25519(&self.0, &e_public)?;
        let keys = envelope_keys(&shared, purpose, &e_public, &self.public_key());
        let plaintext = keys.envelope.open(0, aad, &envelope[33..])?;
        Ok((plaintext, keys))
    }

    /// Open a `SealedStore` envelope made for `manifest` (the manifest is
    /// sent in the clear for the box's policy check, and bound here so
    /// the box cannot pair the source with another one).
    pub fn open_function(
        &self,
        envelope: &[u8],
        manifest: &str,
    ) -> Result<(SealedFunction, ReplySealer), SealError> {
        let (plaintext, keys) =
            self.open_envelope(envelope, Purpose::Store, &store_aad(manifest))?;
        let mut rest = plaintext.as_slice();
        let filename = take_str(&mut rest)?;
        let source = take_str(&mut rest)?;
        if !rest.is_empty() {
            return Err(SealError::Malformed("trailing bytes in a sealed function"));
        }
        Ok((SealedFunction { filename, source }, ReplySealer(keys.reply)))
    }

    /// Open a `SealedInvoke` envelope: the call and the session's keys.
    pub fn open_call(&self, envelope: &[u8]) -> Result<(SealedCall, SessionKeys), SealError> {
        let (plaintext, keys) = self.open_envelope(envelope, Purpose::Invoke, INVOKE_AAD)?;
        let mut rest = plaintext.as_slice();
        let entry = take_str(&mut rest)?;
        let args_json = take_str(&mut rest)?;
        if !rest.is_empty() {
            return Err(SealError::Malformed("trailing bytes in a sealed call"));
        }
        Ok((
            SealedCall { entry, args_json },
            SessionKeys::from_secret(&keys.session),
        ))
    }
}

/// Client: seal a function (file name and source) for `manifest` to the
/// worker key `w`. Returns the envelope and the sealer that opens the
/// box's sealed error text (a syntax error quotes the source).
pub fn seal_function(
    w: &[u8; CHANNEL_KEY_BYTES],
    function: &SealedFunction,
    manifest: &str,
) -> Result<(Vec<u8>, ReplySealer), SealError> {
    let mut plaintext = Zeroizing::new(Vec::new());
    put_str(&mut plaintext, &function.filename);
    put_str(&mut plaintext, &function.source);
    let (envelope, keys) = seal_envelope(w, Purpose::Store, &store_aad(manifest), &plaintext)?;
    Ok((envelope, ReplySealer(keys.reply)))
}

/// Client: seal a call to the worker key `w`. Returns the envelope and the
/// session secret (kept by the client; [`SessionKeys::from_secret`]).
pub fn seal_call(
    w: &[u8; CHANNEL_KEY_BYTES],
    call: &SealedCall,
) -> Result<(Vec<u8>, Zeroizing<[u8; SESSION_SECRET_BYTES]>), SealError> {
    let mut plaintext = Zeroizing::new(Vec::new());
    put_str(&mut plaintext, &call.entry);
    put_str(&mut plaintext, &call.args_json);
    let (envelope, keys) = seal_envelope(w, Purpose::Invoke, INVOKE_AAD, &plaintext)?;
    Ok((envelope, keys.session))
}

/// One sealed session's keys, derived from its session secret.
pub struct SessionKeys {
    input: Cipher,
    output: Cipher,
    outcome: ReplySealer,
}

const INPUT_AAD: &[u8] = b"bento-sealed-v1 input";
const OUTPUT_AAD: &[u8] = b"bento-sealed-v1 output";

impl SessionKeys {
    /// The keys of the session whose secret is `secret`.
    pub fn from_secret(secret: &[u8; SESSION_SECRET_BYTES]) -> Self {
        let key = |label: &[u8]| hkdf(SEAL_DOMAIN, secret, &[b"session ", label]);
        Self {
            input: Cipher::new(&key(b"input")),
            output: Cipher::new(&key(b"output")),
            outcome: ReplySealer(Cipher::new(&key(b"outcome"))),
        }
    }

    /// Seals and opens the session's error text (tracebacks quote source
    /// and arguments).
    pub fn outcome(&self) -> &ReplySealer {
        &self.outcome
    }

    /// Worker: the output record for `plaintext` starting at byte `offset`
    /// of the session's output stream: `u32be(len) || ciphertext`.
    pub fn seal_output(&self, offset: u64, plaintext: &[u8]) -> Vec<u8> {
        let mut record = Vec::with_capacity(OUTPUT_RECORD_OVERHEAD + plaintext.len());
        record.extend_from_slice(&(plaintext.len() as u32).to_be_bytes());
        record.extend_from_slice(&self.output.seal(offset, OUTPUT_AAD, plaintext));
        record
    }

    /// Client: the input record carrying `plaintext` as message number
    /// `seq`: `u64be(seq) || ciphertext`.
    pub fn seal_input(&self, seq: u64, plaintext: &[u8]) -> Vec<u8> {
        let mut record = Vec::with_capacity(INPUT_RECORD_OVERHEAD + plaintext.len());
        record.extend_from_slice(&seq.to_be_bytes());
        record.extend_from_slice(&self.input.seal(seq, INPUT_AAD, plaintext));
        record
    }

    /// Worker: open an input record whose sequence number must be above
    /// `*last` (then updated): a replayed or reordered record is refused.
    pub fn open_input(&self, last: &mut u64, record: &[u8]) -> Result<Vec<u8>, SealError> {
        if record.len() < INPUT_RECORD_OVERHEAD {
            return Err(SealError::Malformed("input record too short"));
        }
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&record[..8]);
        let seq = u64::from_be_bytes(seq_bytes);
        let plaintext = self.input.open(seq, INPUT_AAD, &record[8..])?;
        if seq <= *last {
            return Err(SealError::OutOfOrder {
                got: seq,
                last: *last,
            });
        }
        *last = seq;
        Ok(plaintext)
    }
}

/// Client: turns the sealed output stream, from some record boundary on,
/// back into plaintext.
pub struct OutputOpener {
    keys: SessionKeys,
    /// Stream offset of the first byte of `pending`.
    offset: u64,
    pending: Vec<u8>,
}

impl OutputOpener {
    /// Open the stream from `offset`, which must be a record boundary (an
    /// offset this client acknowledged, or 0).
    pub fn new(keys: SessionKeys, offset: u64) -> Self {
        Self {
            keys,
            offset,
            pending: Vec::new(),
        }
    }

    /// The session's keys.
    pub fn keys(&self) -> &SessionKeys {
        &self.keys
    }

    /// Stream offset just after the last whole record returned.
    pub fn boundary(&self) -> u64 {
        self.offset
    }

    /// Whether bytes of an unfinished record are buffered.
    pub fn has_partial(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Add the next ciphertext bytes; returns the plaintext of every record
    /// they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<u8>, SealError> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            if self.pending.len() < 4 {
                return Ok(out);
            }
            let len = u32::from_be_bytes([
                self.pending[0],
                self.pending[1],
                self.pending[2],
                self.pending[3],
            ]) as usize;
            let whole = OUTPUT_RECORD_OVERHEAD + len;
            if self.pending.len() < whole {
                return Ok(out);
            }
            let plaintext =
                self.keys
                    .output
                    .open(self.offset, OUTPUT_AAD, &self.pending[4..whole])?;
            out.extend_from_slice(&plaintext);
            self.pending.drain(..whole);
            self.offset += whole as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function() -> SealedFunction {
        SealedFunction {
            filename: "f.py".into(),
            source: "def main():\n    api.send('x')\n".into(),
        }
    }

    #[test]
    fn a_function_sealed_to_the_worker_key_opens_only_with_its_manifest() {
        let worker = ChannelSecret::generate().unwrap();
        let (envelope, client_reply) =
            seal_function(&worker.public_key(), &function(), "[limits]").unwrap();
        let (opened, reply) = worker.open_function(&envelope, "[limits]").unwrap();
        assert_eq!(opened, function());
        assert_eq!(
            client_reply
                .open(&reply.seal("SyntaxError at line 2"))
                .unwrap(),
            "SyntaxError at line 2"
        );
        assert!(matches!(
            worker.open_function(&envelope, "[capabilities]"),
            Err(SealError::Tampered)
        ));
        let other = ChannelSecret::generate().unwrap();
        assert!(matches!(
            other.open_function(&envelope, "[limits]"),
            Err(SealError::Tampered)
        ));
    }

    #[test]
    fn every_flipped_bit_of_an_envelope_is_refused() {
        let worker = ChannelSecret::generate().unwrap();
        let call = SealedCall {
            entry: "main".into(),
            args_json: "[1]".into(),
        };
        let (envelope, _) = seal_call(&worker.public_key(), &call).unwrap();
        assert_eq!(worker.open_call(&envelope).unwrap().0, call);
        for bit in 0..envelope.len() * 8 {
            let mut bad = envelope.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(worker.open_call(&bad).is_err(), "bit {bit} accepted");
        }
        assert!(matches!(
            worker.open_call(&envelope[..10]),
            Err(SealError::Malformed(_))
        ));
    }

    #[test]
    fn a_low_order_worker_key_is_refused() {
        assert!(matches!(
            seal_call(
                &[0; 32],
                &SealedCall {
                    entry: "main".into(),
                    args_json: "[]".into()
                }
            ),
            Err(SealError::WeakKey)
        ));
    }

    #[test]
    fn output_records_open_in_place_and_fail_when_moved_or_reordered() {
        let worker = ChannelSecret::generate().unwrap();
        let (envelope, secret) = seal_call(
            &worker.public_key(),
            &SealedCall {
                entry: "main".into(),
                args_json: "[]".into(),
            },
        )
        .unwrap();
        let (_, worker_keys) = worker.open_call(&envelope).unwrap();
        let first = worker_keys.seal_output(0, b"hello ");
        let second = worker_keys.seal_output(first.len() as u64, b"world");
        let mut stream = first.clone();
        stream.extend_from_slice(&second);
        // Split at every point: records reassemble across frames.
        for split in 0..stream.len() {
            let mut opener = OutputOpener::new(SessionKeys::from_secret(&secret), 0);
            let mut out = opener.push(&stream[..split]).unwrap();
            out.extend(opener.push(&stream[split..]).unwrap());
            assert_eq!(out, b"hello world");
            assert_eq!(opener.boundary(), stream.len() as u64);
        }
        // Resuming at the second record's offset.
        let mut resumed = OutputOpener::new(SessionKeys::from_secret(&secret), first.len() as u64);
        assert_eq!(resumed.push(&second).unwrap(), b"world");
        // Reordered: the second record where the first was.
        let mut reordered = OutputOpener::new(SessionKeys::from_secret(&secret), 0);
        assert!(matches!(reordered.push(&second), Err(SealError::Tampered)));
        // Another session's keys.
        let (_, other_secret) = seal_call(
            &worker.public_key(),
            &SealedCall {
                entry: "main".into(),
                args_json: "[]".into(),
            },
        )
        .unwrap();
        let mut moved = OutputOpener::new(SessionKeys::from_secret(&other_secret), 0);
        assert!(matches!(moved.push(&first), Err(SealError::Tampered)));
    }

    #[test]
    fn input_records_are_refused_when_replayed_or_reordered() {
        let secret = [7u8; 32];
        let client = SessionKeys::from_secret(&secret);
        let worker = SessionKeys::from_secret(&secret);
        let (a, b) = (client.seal_input(5, b"a"), client.seal_input(6, b"b"));
        let mut last = 0;
        assert_eq!(worker.open_input(&mut last, &a).unwrap(), b"a");
        assert!(matches!(
            worker.open_input(&mut last, &a),
            Err(SealError::OutOfOrder { got: 5, last: 5 })
        ));
        assert_eq!(worker.open_input(&mut last, &b).unwrap(), b"b");
        // A sequence number rewritten to pass the order check fails the tag.
        let mut forged = a.clone();
        forged[..8].copy_from_slice(&9u64.to_be_bytes());
        assert!(matches!(
            worker.open_input(&mut last, &forged),
            Err(SealError::Tampered)
        ));
    }

    #[test]
    fn the_channel_key_file_is_created_once_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("channel.key");
        let first = ChannelSecret::load_or_create(&path).unwrap();
        let second = ChannelSecret::load_or_create(&path).unwrap();
        assert_eq!(first.public_key(), second.public_key());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            ChannelSecret::load_or_create(&path),
            Err(SealError::KeyFile { .. })
        ));
    }
}
