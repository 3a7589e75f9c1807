//! Attestation evidence for Bento boxes.
//!
//! A box answers a client's `Attest { nonce }` with [`Evidence`]: which
//! trusted execution environment ([`TeeKind`]) runs the worker, a
//! vendor-signed quote or report over 64 bytes of *report data*, the public
//! key of the sealed channel, and the box's onion identity. The report data
//! is [`Binding::report_data`], a hash of the client's nonce, the onion
//! identity and the channel key, so evidence can be neither replayed (fresh
//! nonce) nor moved to another box (other identity) nor used to make a
//! client seal its upload to a key the TEE does not hold (other key).
//!
//! - [`EvidenceSource`] produces evidence: [`NoTee`] here (kind `none`, the
//!   same code path without a signature), [`GramineSgx`] and
//!   [`ConfigfsTsm`] on TEE hardware.
//! - [`verify`] checks evidence against what the client expects
//!   ([`Requirement`]) at a given time, with collateral supplied offline
//!   (SGX and TDX quotes are verified by `dcap-qvl` against Intel's root,
//!   SEV-SNP reports by `sev` against AMD's roots).
//! - [`seal`](ChannelSecret) is the sealed channel: the worker's key pair,
//!   envelopes for a function and a call, and the session's record layer.
//! - [`measure`] computes the software measurement of the worker binary
//!   plus the precompiled runtime (`bento attest measure`).
//!
//! Nothing here needs TEE hardware or the network; `docs/attestation.md`
//! says what is tested here and what only on hardware.

mod binding;
mod evidence;
mod kind;
mod measure;
mod seal;
mod snp;
mod source;
mod verify;

pub use binding::{
    BINDING_DOMAIN, Binding, CHANNEL_KEY_BYTES, NONCE_BYTES, ONION_IDENTITY_BYTES, onion_identity,
};
pub use evidence::{EVIDENCE_VERSION, Evidence, MAX_EVIDENCE_LEN};
pub use kind::{TeeKind, UnknownTeeKind};
pub use measure::{MEASUREMENT_DOMAIN, Measurement, measure};
pub use seal::{
    ChannelSecret, ENVELOPE_OVERHEAD, ENVELOPE_VERSION, INPUT_RECORD_OVERHEAD,
    OUTPUT_RECORD_OVERHEAD, OutputOpener, ReplySealer, SEAL_DOMAIN, SEAL_TAG_LEN,
    SEALED_MESSAGE_PREFIX, SESSION_SECRET_BYTES, SealError, SealedCall, SealedFunction,
    SessionKeys, seal_call, seal_function,
};
pub use snp::{SNP_REPORT_LEN, SnpFacts, SnpTcb, amd_root_keys, verify_snp_report};
pub use source::{
    CONFIGFS_TSM_REPORT_DIR, ConfigfsTsm, EvidenceSource, GramineSgx, NoTee,
    snp_collateral_from_cert_table,
};
pub use verify::{
    ACCEPTED_TCB_STATUSES, QuoteFacts, Requirement, TeeRequirement, Verified, VerifyOptions,
    verify, verify_quote,
};

/// Why evidence could not be produced, decoded or accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The evidence bytes do not follow the layout in `docs/attestation.md`.
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// The client requires a TEE (of some kind) and the box offers another.
    #[error("the box offers {offered} evidence, but {required} is required")]
    TeeRequired {
        /// What the client asked for, in words (`any TEE`, `sgx`, ...).
        required: String,
        /// What the box offered.
        offered: TeeKind,
    },
    /// The quote's signature chain, collateral or TCB did not verify.
    #[error("{kind} quote rejected: {reason}")]
    QuoteRejected {
        /// The evidence kind.
        kind: TeeKind,
        /// The verifier's reason.
        reason: String,
    },
    /// The platform's TCB status is not one the client accepts.
    #[error("{kind} platform TCB status {status} is not accepted (advisories: {advisories})")]
    TcbNotAccepted {
        /// The evidence kind.
        kind: TeeKind,
        /// Intel's TCB status, e.g. `OutOfDate`, `Revoked`.
        status: String,
        /// Intel security advisory ids, comma-separated.
        advisories: String,
    },
    /// The quote's report data is not the hash of this client's nonce, the
    /// box's identity and the channel key: replayed or moved evidence.
    #[error(
        "evidence is not bound to this request (report data mismatch): replayed, or for another box or key"
    )]
    BindingMismatch,
    /// The box claims an onion identity other than the one the client dialed.
    #[error("evidence names onion identity {claimed}, but the client dialed {dialed}")]
    IdentityMismatch {
        /// Hex of the identity in the evidence.
        claimed: String,
        /// Hex of the identity the client dialed.
        dialed: String,
    },
    /// The client expects a measurement the evidence does not prove.
    #[error("measurement mismatch: expected {expected}, the box proves {proven}")]
    MeasurementMismatch {
        /// Hex of the expected measurement.
        expected: String,
        /// Hex of the proven one, or `nothing` for kind `none`.
        proven: String,
    },
    /// The box's SEV-SNP firmware is older than the client's minimum.
    #[error(
        "the box's SEV-SNP firmware TCB ({proven}) is below the minimum this client requires ({minimum})"
    )]
    TcbBelowMinimum {
        /// The TCB the VCEK certifies and the report claims.
        proven: String,
        /// The client's minimum.
        minimum: String,
    },
    /// SGX/TDX/SEV-SNP evidence without the collateral to verify it.
    #[error("{0} evidence carries no collateral; verification needs it")]
    MissingCollateral(TeeKind),
    /// Producing evidence failed (TEE device or file).
    #[error("could not produce {kind} evidence: {reason}")]
    Produce {
        /// The evidence kind.
        kind: TeeKind,
        /// What failed.
        reason: String,
    },
    /// Reading a file to measure failed.
    #[error("could not read {path} to measure it: {error}")]
    Measure {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
}
