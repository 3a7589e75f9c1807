//! Answering `Attest`: evidence bound to the client's nonce, the box's
//! onion identity and the sealed-channel key.

use std::path::PathBuf;
use std::sync::Arc;

use bento_attest::{Binding, CHANNEL_KEY_BYTES, EvidenceSource, NoTee, ONION_IDENTITY_BYTES};
use bento_protocol::{ATTEST_NONCE_LEN, ErrorCode, Frame};
use tokio::sync::OnceCell;

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
    /// Kind `none` evidence (this box runs no TEE), claiming the
    /// measurement of `measured_files` when given.
    pub(crate) fn unattested(measured_files: Option<(PathBuf, PathBuf)>) -> Self {
        Self {
            source: Arc::new(NoTee),
            measured_files,
            software_digest: OnceCell::new(),
        }
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
