//! The evidence a box sends in `Attested`, and its byte layout.

use crate::binding::{CHANNEL_KEY_BYTES, ONION_IDENTITY_BYTES};
use crate::{AttestError, TeeKind};

/// Version byte opening every evidence blob.
pub const EVIDENCE_VERSION: u8 = 1;

/// Largest evidence blob a client accepts (and a box sends): the limit of
/// the `Attested` frame that carries it.
pub use bento_protocol::MAX_EVIDENCE_LEN;

/// Largest software digest a box may claim (SHA-256 today).
const MAX_SOFTWARE_DIGEST_LEN: usize = 64;

/// What a box offers as proof of what it runs.
///
/// Layout (all integers big-endian), `docs/attestation.md`:
///
/// ```text
/// u8   version (1)
/// u8   kind: 0 none, 1 sgx, 2 tdx, 3 sev-snp
/// [32] onion identity (ed25519 key of the box's v3 onion address; zeros if none)
/// [32] sealed-channel X25519 public key
/// u16  length, then the box's claimed software digest (`bento attest measure`)
/// u32  length, then the quote/report (kind none: the 64 report-data bytes)
/// u32  length, then the collateral (sgx/tdx: dcap-qvl QuoteCollateralV3 JSON)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// Which TEE produced the quote.
    pub kind: TeeKind,
    /// The box's onion identity as the box states it.
    pub onion_identity: [u8; ONION_IDENTITY_BYTES],
    /// The sealed channel's public key.
    pub channel_key: [u8; CHANNEL_KEY_BYTES],
    /// The software digest the box claims to run; proven only insofar as a
    /// TEE measurement covers it (see `docs/attestation.md`).
    pub software_digest: Vec<u8>,
    /// The TEE's signed quote or report, or for `none` the bare report data.
    pub quote: Vec<u8>,
    /// Collateral the verifier needs (SGX/TDX), supplied by the operator.
    pub collateral: Vec<u8>,
}

impl Evidence {
    /// Serialize to the documented layout.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            2 + 64 + 2 + 8 + self.software_digest.len() + self.quote.len() + self.collateral.len(),
        );
        out.push(EVIDENCE_VERSION);
        out.push(self.kind.code());
        out.extend_from_slice(&self.onion_identity);
        out.extend_from_slice(&self.channel_key);
        // Lengths are bounded by construction (decode and the sources
        // enforce MAX_EVIDENCE_LEN), so the casts cannot truncate in
        // practice; saturating keeps a bug from wrapping silently.
        out.extend_from_slice(
            &u16::try_from(self.software_digest.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.software_digest);
        out.extend_from_slice(
            &u32::try_from(self.quote.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.quote);
        out.extend_from_slice(
            &u32::try_from(self.collateral.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.collateral);
        out
    }

    /// Parse the documented layout; any deviation is [`AttestError::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<Evidence, AttestError> {
        if bytes.len() > MAX_EVIDENCE_LEN {
            return Err(AttestError::Malformed(format!(
                "{} bytes exceed the maximum of {MAX_EVIDENCE_LEN}",
                bytes.len()
            )));
        }
        let mut reader = Reader { rest: bytes };
        let version = reader.u8()?;
        if version != EVIDENCE_VERSION {
            return Err(AttestError::Malformed(format!(
                "unknown evidence version {version}"
            )));
        }
        let code = reader.u8()?;
        let kind = TeeKind::from_code(code)
            .ok_or_else(|| AttestError::Malformed(format!("unknown kind code {code}")))?;
        let onion_identity = reader.array::<ONION_IDENTITY_BYTES>()?;
        let channel_key = reader.array::<CHANNEL_KEY_BYTES>()?;
        let digest_len = usize::from(u16::from_be_bytes(reader.array::<2>()?));
        if digest_len > MAX_SOFTWARE_DIGEST_LEN {
            return Err(AttestError::Malformed(format!(
                "software digest of {digest_len} bytes exceeds {MAX_SOFTWARE_DIGEST_LEN}"
            )));
        }
        let software_digest = reader.take(digest_len)?.to_vec();
        let quote_len = reader.len32()?;
        let quote = reader.take(quote_len)?.to_vec();
        let collateral_len = reader.len32()?;
        let collateral = reader.take(collateral_len)?.to_vec();
        if !reader.rest.is_empty() {
            return Err(AttestError::Malformed(format!(
                "{} trailing bytes",
                reader.rest.len()
            )));
        }
        Ok(Evidence {
            kind,
            onion_identity,
            channel_key,
            software_digest,
            quote,
            collateral,
        })
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AttestError> {
        if self.rest.len() < n {
            return Err(AttestError::Malformed(format!(
                "truncated: needed {n} more bytes, {} left",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, AttestError> {
        Ok(self.array::<1>()?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AttestError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len32(&mut self) -> Result<usize, AttestError> {
        let len = u32::from_be_bytes(self.array::<4>()?);
        usize::try_from(len)
            .map_err(|_| AttestError::Malformed(format!("length {len} does not fit")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Evidence {
        Evidence {
            kind: TeeKind::Tdx,
            onion_identity: [4; 32],
            channel_key: [5; 32],
            software_digest: vec![6; 32],
            quote: vec![7; 100],
            collateral: b"{}".to_vec(),
        }
    }

    #[test]
    fn evidence_round_trips_through_its_layout() {
        let bytes = sample().encode();
        assert_eq!(Evidence::decode(&bytes).ok(), Some(sample()));
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_malformed() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    Evidence::decode(&bytes[..cut]),
                    Err(AttestError::Malformed(_))
                ),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            Evidence::decode(&longer),
            Err(AttestError::Malformed(_))
        ));
    }

    #[test]
    fn a_huge_declared_length_is_malformed_not_an_allocation() {
        let mut bytes = sample().encode();
        // The quote length sits after version, kind, 64 key bytes, the
        // digest length and the 32-byte digest.
        let at = 2 + 64 + 2 + 32;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Evidence::decode(&bytes),
            Err(AttestError::Malformed(_))
        ));
    }

    #[test]
    fn an_unknown_version_or_kind_is_malformed() {
        let mut bytes = sample().encode();
        bytes[0] = 2;
        assert!(matches!(
            Evidence::decode(&bytes),
            Err(AttestError::Malformed(_))
        ));
        let mut bytes = sample().encode();
        bytes[1] = 9;
        assert!(matches!(
            Evidence::decode(&bytes),
            Err(AttestError::Malformed(_))
        ));
        let oversized = vec![0u8; MAX_EVIDENCE_LEN + 1];
        assert!(matches!(
            Evidence::decode(&oversized),
            Err(AttestError::Malformed(_))
        ));
    }
}
