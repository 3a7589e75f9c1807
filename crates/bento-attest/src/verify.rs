//! Checking evidence against what the client requires.

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::Report;
use dcap_qvl::verify::QuoteVerifier;

use crate::binding::{NONCE_BYTES, ONION_IDENTITY_BYTES};
use crate::snp::{SnpFacts, SnpTcb, amd_root_keys, verify_snp_report};
use crate::{AttestError, Binding, Evidence, TeeKind};

/// Intel TCB statuses accepted by default: the platform is patched, or
/// needs only configuration/software hardening the enclave can account for.
/// `OutOfDate*`, `Revoked` and `TDRelaunchAdvised*` are refused.
pub const ACCEPTED_TCB_STATUSES: &[&str] = &[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
];

/// Which evidence kind the client insists on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TeeRequirement {
    /// Any evidence, including `none` (the client is warned).
    #[default]
    NotRequired,
    /// Any real TEE.
    AnyTee,
    /// Exactly this kind.
    Kind(TeeKind),
}

impl TeeRequirement {
    fn admits(self, kind: TeeKind) -> bool {
        match self {
            TeeRequirement::NotRequired => true,
            TeeRequirement::AnyTee => kind.is_tee(),
            TeeRequirement::Kind(required) => kind == required,
        }
    }

    fn describe(self) -> String {
        match self {
            TeeRequirement::NotRequired => "nothing".into(),
            TeeRequirement::AnyTee => "a TEE".into(),
            TeeRequirement::Kind(kind) => kind.to_string(),
        }
    }
}

/// What a client requires of a box before uploading anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requirement {
    /// The TEE kind required.
    pub tee: TeeRequirement,
    /// The TEE measurement required (MRENCLAVE for SGX, MRTD for TDX,
    /// MEASUREMENT for SEV-SNP).
    pub measurement: Option<Vec<u8>>,
    /// The lowest SEV-SNP firmware TCB accepted, level by level, when the
    /// evidence is SEV-SNP (it says nothing about other kinds: combine it
    /// with [`TeeRequirement::Kind`] to require SEV-SNP). AMD publishes no
    /// TCB status as Intel does; a client that knows which firmware fixed
    /// a flaw it cares about states it here.
    pub min_snp_tcb: Option<SnpTcb>,
}

/// Verification parameters other than the requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The time to verify at, seconds since the Unix epoch (collateral and
    /// certificates must be valid then).
    pub now_unix: u64,
    /// The onion identity the client dialed, when it dialed an onion
    /// address; `None` for a direct connection.
    pub dialed_identity: Option<[u8; ONION_IDENTITY_BYTES]>,
    /// Intel TCB statuses accepted (default [`ACCEPTED_TCB_STATUSES`]).
    pub accepted_tcb: Vec<String>,
    /// The root CA (DER) SGX/TDX chains must end in; `None` (the default)
    /// is Intel's SGX root CA built into dcap-qvl. Another root serves
    /// tests that need a CA whose key they hold (a revoked PCK
    /// certificate cannot be made under Intel's).
    pub dcap_root_ca: Option<Vec<u8>>,
    /// AMD root certificates (ARK, DER) an SEV-SNP chain may end in
    /// (default [`amd_root_keys`]: Milan, Genoa, Turin).
    pub snp_trusted_arks: Vec<Vec<u8>>,
}

impl VerifyOptions {
    /// Options for verifying at `now_unix` with the default TCB statuses.
    pub fn at(now_unix: u64) -> VerifyOptions {
        VerifyOptions {
            now_unix,
            dialed_identity: None,
            accepted_tcb: ACCEPTED_TCB_STATUSES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            dcap_root_ca: None,
            snp_trusted_arks: amd_root_keys(),
        }
    }
}

/// What verified evidence proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The evidence kind.
    pub kind: TeeKind,
    /// The TEE measurement (MRENCLAVE/MRTD/SNP MEASUREMENT); `None` for
    /// kind `none`.
    pub tee_measurement: Option<Vec<u8>>,
    /// SGX MRSIGNER (who signed the enclave); `None` otherwise.
    pub signer: Option<Vec<u8>>,
    /// Intel TCB status and advisories (SGX/TDX).
    pub tcb_status: Option<String>,
    /// Intel security advisories applying to the platform.
    pub advisory_ids: Vec<String>,
    /// What an SEV-SNP report proves about the platform; `None` otherwise.
    pub snp: Option<SnpFacts>,
    /// The sealed channel key the evidence binds.
    pub channel_key: [u8; 32],
    /// The onion identity the evidence binds.
    pub onion_identity: [u8; ONION_IDENTITY_BYTES],
    /// Whether that identity was checked against the address dialed.
    pub identity_checked: bool,
    /// The box's claimed software digest.
    pub software_digest: Vec<u8>,
}

impl Verified {
    /// What this evidence proves, in words, one statement per line.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        match self.kind {
            TeeKind::None => {
                lines.push(
                    "no TEE: the box's operator can read and change your functions, arguments, input and output"
                        .into(),
                );
                lines.push(
                    "the evidence is unsigned; it only shows the box answered this request".into(),
                );
            }
            kind => {
                lines.push(format!(
                    "{kind}: a genuine {} signed this evidence for your nonce",
                    match kind {
                        TeeKind::Sgx => "Intel SGX enclave",
                        TeeKind::Tdx => "Intel TDX trust domain",
                        _ => "AMD SEV-SNP guest",
                    }
                ));
                if let Some(m) = &self.tee_measurement {
                    lines.push(format!(
                        "measurement {} (compare with a reproducible build)",
                        hex::encode(m)
                    ));
                }
                if let Some(s) = &self.signer {
                    lines.push(format!("enclave signer {}", hex::encode(s)));
                }
                if let Some(status) = &self.tcb_status {
                    let advisories = if self.advisory_ids.is_empty() {
                        String::new()
                    } else {
                        format!(" (advisories: {})", self.advisory_ids.join(", "))
                    };
                    lines.push(format!("platform TCB status {status}{advisories}"));
                }
                if let Some(snp) = &self.snp {
                    lines.push(format!(
                        "AMD {} processor; firmware patch levels {} (certified by AMD in the VCEK; compare with AMD's security bulletins)",
                        snp.product, snp.tcb
                    ));
                    lines.push(format!(
                        "report requested at VMPL {}; guest policy {:#x} forbids debugging",
                        snp.vmpl, snp.policy
                    ));
                }
                lines.push(
                    "the operator still sees timing, sizes and can deny service (docs/attestation.md)"
                        .into(),
                );
            }
        }
        lines.push(format!(
            "sealed-channel key {} is bound to this evidence",
            hex::encode(self.channel_key)
        ));
        if self.onion_identity == [0; ONION_IDENTITY_BYTES] {
            lines.push("the box states no onion identity".into());
        } else if self.identity_checked {
            lines.push("bound to the onion address you dialed".into());
        } else {
            lines.push(format!(
                "bound to onion identity {} (not the address you dialed: direct connection)",
                hex::encode(self.onion_identity)
            ));
        }
        if !self.software_digest.is_empty() {
            let proof = if self.kind.is_tee() {
                "claimed; the TEE measurement above is what is proven"
            } else {
                "claimed, unproven"
            };
            lines.push(format!(
                "software {} ({proof})",
                hex::encode(&self.software_digest)
            ));
        }
        lines
    }
}

/// The facts a signed quote proves, once its signatures, collateral and TCB
/// status have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteFacts {
    /// The 64 bytes the TEE signed.
    pub report_data: [u8; 64],
    /// MRENCLAVE (SGX) or MRTD (TDX).
    pub measurement: Vec<u8>,
    /// MRSIGNER (SGX only).
    pub signer: Option<Vec<u8>>,
    /// Intel's TCB status.
    pub tcb_status: String,
    /// Intel's advisories for this platform.
    pub advisory_ids: Vec<String>,
}

/// Check a DCAP quote (SGX or TDX) with offline collateral at a given time:
/// Intel's certificate chain and CRLs, the QE identity, the TCB info, the
/// quote's signature, not a debug enclave/TD, and an accepted TCB status.
/// The report data is returned, not checked: [`verify`] binds it.
pub fn verify_quote(
    kind: TeeKind,
    quote: &[u8],
    collateral: &[u8],
    options: &VerifyOptions,
) -> Result<QuoteFacts, AttestError> {
    if collateral.is_empty() {
        return Err(AttestError::MissingCollateral(kind));
    }
    let collateral: QuoteCollateralV3 = serde_json::from_slice(collateral).map_err(|e| {
        AttestError::Malformed(format!("collateral is not QuoteCollateralV3 JSON: {e}"))
    })?;
    let rejected = |reason: String| AttestError::QuoteRejected { kind, reason };
    let verifier = match &options.dcap_root_ca {
        Some(root) => QuoteVerifier::new(root.clone()),
        None => QuoteVerifier::new_prod(),
    };
    let report = verifier
        .verify(quote, &collateral, options.now_unix)
        .map_err(|e| rejected(format!("{e:#}")))?;
    let (report_data, measurement, signer) = match (kind, &report.report) {
        (TeeKind::Sgx, Report::SgxEnclave(r)) => (
            r.report_data,
            r.mr_enclave.to_vec(),
            Some(r.mr_signer.to_vec()),
        ),
        (TeeKind::Tdx, Report::TD10(r)) => (r.report_data, r.mr_td.to_vec(), None),
        (TeeKind::Tdx, Report::TD15(r)) => (r.base.report_data, r.base.mr_td.to_vec(), None),
        (TeeKind::Tdx, Report::TD15Ex(r)) => {
            let base = &r.base.base;
            (base.report_data, base.mr_td.to_vec(), None)
        }
        (kind, other) => {
            return Err(rejected(format!(
                "evidence labelled {kind} holds a {} report",
                if other.is_sgx() { "sgx" } else { "tdx" }
            )));
        }
    };
    if !options.accepted_tcb.contains(&report.status) {
        return Err(AttestError::TcbNotAccepted {
            kind,
            status: report.status,
            advisories: report.advisory_ids.join(","),
        });
    }
    Ok(QuoteFacts {
        report_data,
        measurement,
        signer,
        tcb_status: report.status,
        advisory_ids: report.advisory_ids,
    })
}

/// Verify `evidence` for the request that sent `nonce`, against
/// `requirement`. Checks, in order: the kind required; the onion identity
/// against the address dialed; the quote (signatures, collateral at
/// `now_unix`, TCB status); the expected measurement; and last the binding
/// of nonce, identity and channel key into the report data.
pub fn verify(
    evidence: &Evidence,
    nonce: &[u8; NONCE_BYTES],
    requirement: &Requirement,
    options: &VerifyOptions,
) -> Result<Verified, AttestError> {
    if !requirement.tee.admits(evidence.kind) {
        return Err(AttestError::TeeRequired {
            required: requirement.tee.describe(),
            offered: evidence.kind,
        });
    }
    if let Some(dialed) = options.dialed_identity
        && dialed != evidence.onion_identity
    {
        return Err(AttestError::IdentityMismatch {
            claimed: hex::encode(evidence.onion_identity),
            dialed: hex::encode(dialed),
        });
    }
    let expected = Binding {
        nonce: *nonce,
        onion_identity: evidence.onion_identity,
        channel_key: evidence.channel_key,
    }
    .report_data();

    let (report_data, facts, snp) = match evidence.kind {
        TeeKind::None => {
            let report_data: [u8; 64] = evidence.quote.as_slice().try_into().map_err(|_| {
                AttestError::Malformed(format!(
                    "none evidence must carry 64 report-data bytes, not {}",
                    evidence.quote.len()
                ))
            })?;
            (report_data, None, None)
        }
        kind @ (TeeKind::Sgx | TeeKind::Tdx) => {
            let facts = verify_quote(kind, &evidence.quote, &evidence.collateral, options)?;
            (facts.report_data, Some(facts), None)
        }
        TeeKind::SevSnp => {
            let snp = verify_snp_report(
                &evidence.quote,
                &evidence.collateral,
                &options.snp_trusted_arks,
                options.now_unix,
            )?;
            (snp.report_data, None, Some(snp))
        }
    };
    if let (Some(minimum), Some(snp)) = (&requirement.min_snp_tcb, &snp)
        && !snp.tcb.at_least(minimum)
    {
        return Err(AttestError::TcbBelowMinimum {
            proven: snp.tcb.to_string(),
            minimum: minimum.to_string(),
        });
    }
    let measurement = facts
        .as_ref()
        .map(|f| &f.measurement)
        .or(snp.as_ref().map(|s| &s.measurement));

    if let Some(expected_measurement) = &requirement.measurement {
        let proven = measurement;
        if proven != Some(expected_measurement) {
            return Err(AttestError::MeasurementMismatch {
                expected: hex::encode(expected_measurement),
                proven: proven.map_or_else(|| "nothing (no TEE)".to_owned(), hex::encode),
            });
        }
    }
    if report_data != expected {
        return Err(AttestError::BindingMismatch);
    }
    Ok(Verified {
        kind: evidence.kind,
        tee_measurement: measurement.cloned(),
        signer: facts.as_ref().and_then(|f| f.signer.clone()),
        tcb_status: facts.as_ref().map(|f| f.tcb_status.clone()),
        advisory_ids: facts.map(|f| f.advisory_ids).unwrap_or_default(),
        snp,
        channel_key: evidence.channel_key,
        onion_identity: evidence.onion_identity,
        identity_checked: options.dialed_identity.is_some(),
        software_digest: evidence.software_digest.clone(),
    })
}
