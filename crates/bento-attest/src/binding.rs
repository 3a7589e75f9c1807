//! What the report data binds: nonce, onion identity, channel key.

use sha2::{Digest, Sha512};

/// Bytes of the client's nonce (the `Attest` frame's nonce).
pub use bento_protocol::ATTEST_NONCE_LEN as NONCE_BYTES;
/// Bytes of a box's onion identity: the ed25519 public key inside its v3
/// onion address (all zero for a box reached without an onion service).
pub const ONION_IDENTITY_BYTES: usize = 32;
/// Bytes of the sealed channel's X25519 public key.
pub const CHANNEL_KEY_BYTES: usize = 32;

/// Domain separator hashed first, so a Bento report data can never equal a
/// hash some other protocol asked the same TEE to sign.
pub const BINDING_DOMAIN: &[u8] = b"bento-attest-v1\0";

/// The three things a piece of evidence is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// Fresh random bytes chosen by the client for this request.
    pub nonce: [u8; NONCE_BYTES],
    /// The box's onion identity.
    pub onion_identity: [u8; ONION_IDENTITY_BYTES],
    /// The sealed channel's public key, held by the worker inside the TEE.
    pub channel_key: [u8; CHANNEL_KEY_BYTES],
}

impl Binding {
    /// The 64 bytes the TEE signs:
    /// `SHA-512(BINDING_DOMAIN || nonce || onion_identity || channel_key)`,
    /// all fields fixed-length, so the concatenation is unambiguous. 64 bytes
    /// is exactly the report-data field of SGX, TDX and SEV-SNP reports.
    pub fn report_data(&self) -> [u8; 64] {
        let mut hash = Sha512::new();
        hash.update(BINDING_DOMAIN);
        hash.update(self.nonce);
        hash.update(self.onion_identity);
        hash.update(self.channel_key);
        hash.finalize().into()
    }
}

/// The onion identity in a v3 onion address (`<56 base32 chars>.onion`,
/// optionally with `:PORT`): the first 32 of the 35 bytes the name encodes
/// (ed25519 public key, 2-byte checksum, version 3). `None` for anything
/// else (an IP address, a host name, a malformed onion name). The checksum
/// is not checked: a mistyped address fails the identity check anyway.
pub fn onion_identity(address: &str) -> Option<[u8; ONION_IDENTITY_BYTES]> {
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    };
    let name = host.strip_suffix(".onion")?;
    if name.len() != 56 {
        return None;
    }
    let mut bits: u64 = 0;
    let mut nbits = 0;
    let mut out = Vec::with_capacity(35);
    for c in name.bytes() {
        let value = match c.to_ascii_lowercase() {
            c @ b'a'..=b'z' => c - b'a',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        bits = (bits << 5) | u64::from(value);
        nbits += 5;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
        }
    }
    // 56 × 5 bits = 35 bytes exactly; the last byte is the version.
    if out.len() != 35 || out[34] != 3 {
        return None;
    }
    let mut identity = [0u8; ONION_IDENTITY_BYTES];
    identity.copy_from_slice(&out[..ONION_IDENTITY_BYTES]);
    Some(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_of_a_v3_onion_address_is_its_public_key() {
        // Tor's rend-spec-v3 test vector style: encode a known key and
        // decode it back, with and without a port.
        let key = [0x5au8; 32];
        let mut raw = key.to_vec();
        raw.extend([0xab, 0xcd, 3]);
        let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut name = String::new();
        let (mut bits, mut nbits) = (0u64, 0);
        for byte in raw {
            bits = (bits << 8) | u64::from(byte);
            nbits += 8;
            while nbits >= 5 {
                nbits -= 5;
                name.push(alphabet[((bits >> nbits) & 31) as usize] as char);
            }
        }
        assert_eq!(name.len(), 56);
        assert_eq!(onion_identity(&format!("{name}.onion")), Some(key));
        assert_eq!(onion_identity(&format!("{name}.onion:7878")), Some(key));
        assert_eq!(
            onion_identity(&format!("{}.onion", name.to_uppercase())),
            Some(key)
        );
        assert_eq!(onion_identity("127.0.0.1:7878"), None);
        assert_eq!(onion_identity("example.com:80"), None);
        assert_eq!(onion_identity(&format!("{}.onion", &name[1..])), None);
        assert_eq!(onion_identity(&format!("{}1.onion", &name[1..])), None);
    }

    fn binding() -> Binding {
        Binding {
            nonce: [1; 32],
            onion_identity: [2; 32],
            channel_key: [3; 32],
        }
    }

    #[test]
    fn changing_any_bound_field_changes_the_report_data() {
        let base = binding().report_data();
        let mut other = binding();
        other.nonce[31] ^= 1;
        assert_ne!(other.report_data(), base);
        let mut other = binding();
        other.onion_identity[0] ^= 1;
        assert_ne!(other.report_data(), base);
        let mut other = binding();
        other.channel_key[7] ^= 0x80;
        assert_ne!(other.report_data(), base);
        assert_eq!(binding().report_data(), base);
    }

    #[test]
    fn report_data_is_the_documented_sha512() {
        let mut preimage = b"bento-attest-v1\0".to_vec();
        preimage.extend([1; 32]);
        preimage.extend([2; 32]);
        preimage.extend([3; 32]);
        let expected: [u8; 64] = Sha512::digest(&preimage).into();
        assert_eq!(binding().report_data(), expected);
    }
}
