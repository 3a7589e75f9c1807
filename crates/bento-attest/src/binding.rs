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

#[cfg(test)]
mod tests {
    use super::*;

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
