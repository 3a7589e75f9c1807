//! Answering `Attest`: evidence bound to the client's nonce, the box's
//! onion identity and the sealed-channel key.

use std::path::PathBuf;
use std::sync::Arc;

use bento_attest::{
    AttestError, Binding, CHANNEL_KEY_BYTES, ConfigfsTsm, EvidenceSource, NoTee,
    ONION_IDENTITY_BYTES, Requirement, TeeRequirement, VerifyOptions,
};
use bento_protocol::{ATTEST_NONCE_LEN, ErrorCode, Frame};
use tokio::sync::OnceCell;

use crate::config::EvidenceConfig;

/// The box's side of attestation.
pub(crate) struct BoxAttestation {
    source: Arc<dyn EvidenceSource>,
    /// Worker binary and precompiled runtime, measured on the first
    /// `Attest` (hashing tens of MB at every start would slow every box
    /// down for a request few clients make).
    measured_files: Option<(PathBuf, PathBuf)>,
    software_digest: OnceCell<Vec<u8>>,
}

/// No sealed channel (the workers hold no common key): the all-zero key
/// says so (docs/attestation.md).
const NO_CHANNEL_KEY: [u8; CHANNEL_KEY_BYTES] = [0; CHANNEL_KEY_BYTES];

impl BoxAttestation {
    /// Evidence from `evidence`'s source, claiming the measurement of
    /// `measured_files` when given.
    pub(crate) fn new(
        evidence: &EvidenceConfig,
        measured_files: Option<(PathBuf, PathBuf)>,
    ) -> Self {
        let source: Arc<dyn EvidenceSource> = match evidence {
            EvidenceConfig::NoTee => Arc::new(NoTee),
            EvidenceConfig::ConfigfsTsm { kind, collateral } => {
                Arc::new(ConfigfsTsm::new(*kind, collateral.clone()))
            }
        };
        Self::from_source(source, measured_files)
    }

    fn from_source(
        source: Arc<dyn EvidenceSource>,
        measured_files: Option<(PathBuf, PathBuf)>,
    ) -> Self {
        Self {
            source,
            measured_files,
            software_digest: OnceCell::new(),
        }
    }

    /// With a TEE: produce evidence once and verify it as a client would,
    /// now, so that a box outside its TEE, or shipping collateral that does
    /// not certify it (a VCEK for another TCB after a firmware update,
    /// expired TCB info), fails at start instead of being refused by every
    /// client. Kind `none` proves nothing and needs no check.
    pub(crate) async fn self_check(&self) -> Result<(), AttestError> {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.self_check_at(now_unix).await
    }

    async fn self_check_at(&self, now_unix: u64) -> Result<(), AttestError> {
        let kind = self.source.kind();
        if !kind.is_tee() {
            return Ok(());
        }
        let binding = Binding {
            nonce: [0; ATTEST_NONCE_LEN],
            onion_identity: [0; ONION_IDENTITY_BYTES],
            channel_key: NO_CHANNEL_KEY,
        };
        let source = Arc::clone(&self.source);
        let evidence = tokio::task::spawn_blocking(move || source.evidence(&binding, &[]))
            .await
            .map_err(|e| AttestError::Produce {
                kind,
                reason: e.to_string(),
            })??;
        let requirement = Requirement {
            tee: TeeRequirement::Kind(kind),
            measurement: None,
            min_snp_tcb: None,
        };
        bento_attest::verify(
            &evidence,
            &binding.nonce,
            &requirement,
            &VerifyOptions::at(now_unix),
        )?;
        tracing::info!(%kind, "attestation: the box's own evidence verifies");
        Ok(())
    }

    async fn software_digest(&self) -> Vec<u8> {
        self.software_digest
            .get_or_init(|| async {
                let Some((worker, runtime)) = self.measured_files.clone() else {
                    return Vec::new();
                };
                let measured =
                    tokio::task::spawn_blocking(move || bento_attest::measure(&worker, &runtime))
                        .await;
                match measured {
                    Ok(Ok(m)) => m.digest.to_vec(),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot measure the worker; attesting without a software digest");
                        Vec::new()
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "measuring the worker failed");
                        Vec::new()
                    }
                }
            })
            .await
            .clone()
    }

    /// The reply to `Attest { nonce }`, binding the workers' sealed-channel
    /// key `channel_key` (reported by the workers, which hold its secret).
    pub(crate) async fn answer(
        &self,
        nonce: [u8; ATTEST_NONCE_LEN],
        onion_address: Option<&str>,
        channel_key: Option<[u8; CHANNEL_KEY_BYTES]>,
    ) -> Frame {
        let binding = Binding {
            nonce,
            onion_identity: onion_address
                .and_then(bento_attest::onion_identity)
                .unwrap_or([0; ONION_IDENTITY_BYTES]),
            channel_key: channel_key.unwrap_or(NO_CHANNEL_KEY),
        };
        let digest = self.software_digest().await;
        let source = Arc::clone(&self.source);
        // A real TEE's quote call blocks (device I/O, quoting enclave).
        let evidence =
            tokio::task::spawn_blocking(move || source.evidence(&binding, &digest)).await;
        match evidence {
            Ok(Ok(evidence)) => Frame::Attested {
                evidence: evidence.encode().into(),
            },
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot produce attestation evidence");
                Frame::error(
                    ErrorCode::Internal,
                    "the box cannot produce attestation evidence",
                )
            }
            Err(_) => Frame::error(
                ErrorCode::Internal,
                "the box cannot produce attestation evidence",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bento_attest::TeeKind;

    /// A TEE device that answers with real, vendor-signed evidence recorded
    /// on TDX hardware (bento-attest's tests/data, provenance in its
    /// README), whatever report data it is asked to sign: what a box
    /// would see whose quote is not its own.
    struct RecordedQuote;

    impl EvidenceSource for RecordedQuote {
        fn kind(&self) -> TeeKind {
            TeeKind::Tdx
        }

        fn quote(&self, _report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
            Ok(include_bytes!("../../bento-attest/tests/data/tdx_quote").to_vec())
        }

        fn collateral(&self) -> &[u8] {
            include_bytes!("../../bento-attest/tests/data/tdx_quote_collateral.json")
        }
    }

    /// 2025-07-01T00:00:00Z, inside the recorded collateral's validity
    /// (2025-06-19 to 2025-07-19).
    const COLLATERAL_VALID_AT: u64 = 1_751_328_000;
    /// 2026-12-01T00:00:00Z: that collateral has expired.
    const COLLATERAL_EXPIRED_AT: u64 = 1_796_083_200;

    fn recorded() -> BoxAttestation {
        BoxAttestation::from_source(Arc::new(RecordedQuote), None)
    }

    #[tokio::test]
    async fn a_box_whose_genuine_quote_is_not_bound_to_its_request_fails_its_self_check() {
        // Intel's signature and the collateral verify; the report data is
        // someone else's, so every client would refuse this box.
        let result = recorded().self_check_at(COLLATERAL_VALID_AT).await;
        assert!(
            matches!(result, Err(AttestError::BindingMismatch)),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_box_shipping_expired_collateral_fails_its_self_check() {
        let result = recorded().self_check_at(COLLATERAL_EXPIRED_AT).await;
        assert!(
            matches!(
                result,
                Err(AttestError::QuoteRejected {
                    kind: TeeKind::Tdx,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_box_outside_a_confidential_vm_fails_its_self_check_and_one_without_a_tee_passes() {
        let none = BoxAttestation::new(&EvidenceConfig::NoTee, None);
        assert!(none.self_check().await.is_ok());
        // This machine is no TDX guest (a real one would have its own
        // provider and evidence).
        if std::path::Path::new(bento_attest::CONFIGFS_TSM_REPORT_DIR).exists() {
            return;
        }
        let tdx = BoxAttestation::new(
            &EvidenceConfig::ConfigfsTsm {
                kind: TeeKind::Tdx,
                collateral: Vec::new(),
            },
            None,
        );
        assert!(matches!(
            tdx.self_check().await,
            Err(AttestError::Produce {
                kind: TeeKind::Tdx,
                ..
            })
        ));
    }
}
