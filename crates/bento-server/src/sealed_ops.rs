//! `SealedStore` and `SealedInvoke`: the server's side of the sealed
//! channel. The server checks what it can see (lifetime, sizes, the
//! manifest against its policy) and relays the envelopes to a worker, which
//! alone holds the key to open them (docs/attestation.md, "The sealed
//! channel"). Nothing here ever holds a function's source, arguments,
//! input or output in the clear.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bento_protocol::{ErrorCode, Frame, InvokeToken, MAX_NAME_LEN};
use bento_worker_contract::{SealedFunctionRef, StartCall};
use bytes::Bytes;

use crate::box_ops::{Refusal, Stored, trial_refusal};
use crate::box_state::BoxState;
use crate::function_store::{SEALED_FILENAME, StoreError, StoredFunction};

/// The refusal of a plain `Invoke` of a sealed function.
pub(crate) fn refuse_plain_invoke(function: &StoredFunction) -> Option<Frame> {
    function.is_sealed().then(|| {
        Frame::error(
            ErrorCode::InvalidArguments,
            "this function is sealed: invoke it with SealedInvoke",
        )
    })
}

impl BoxState {
    /// Check and persist a sealed function. The worker opens the envelope
    /// and compiles the source; a syntax error comes back sealed to the
    /// client.
    pub(crate) async fn store_sealed(
        self: &Arc<Self>,
        manifest: String,
        lifetime_s: u64,
        envelope: Bytes,
    ) -> Result<Stored, Refusal> {
        let lifetime = self.resolve_lifetime(Some(lifetime_s))?;
        let max = self.config.max_source_bytes();
        // The envelope holds the source, the file name (two `str`s) and the
        // envelope's own overhead: the same source limit as `Store`.
        let max_envelope = max + MAX_NAME_LEN + 8 + bento_attest::ENVELOPE_OVERHEAD;
        if envelope.len() > max_envelope {
            return Err(Refusal::new(
                ErrorCode::InvalidFunction,
                format!(
                    "the sealed function is {} bytes; this box accepts at most {max_envelope}",
                    envelope.len()
                ),
            ));
        }
        self.check_manifest(&manifest)?;
        let sealed = SealedFunctionRef {
            envelope: hex::encode(&envelope),
            manifest,
        };
        self.admit()?;
        // The exception's text is sealed: only the client can read it.
        trial_refusal(self.pool.check_sealed(sealed.clone()).await, |text| text)?;
        let stored = self
            .persist(
                SEALED_FILENAME.to_owned(),
                sealed.envelope,
                sealed.manifest,
                lifetime,
            )
            .await;
        if stored.is_ok() {
            self.metrics.stores.fetch_add(1, Ordering::Relaxed);
        }
        stored
    }

    /// Start a session of the sealed function under `token` with a sealed
    /// call: the `Invoked` reply or an error frame.
    pub(crate) async fn invoke_sealed(&self, token: &InvokeToken, envelope: Bytes) -> Frame {
        let Some(function) = self.store.lookup(token) else {
            return Frame::error(
                ErrorCode::UnknownInvokeToken,
                StoreError::UnknownToken.to_string(),
            );
        };
        if !function.is_sealed() {
            return Frame::error(
                ErrorCode::InvalidArguments,
                "this function is not sealed: invoke it with Invoke",
            );
        }
        let call = StartCall::SealedEntry {
            envelope: hex::encode(&envelope),
        };
        self.start_invoked(&function, call, None).await
    }
}
