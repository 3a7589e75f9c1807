//! Producing evidence: `none` here, real TEEs through their OS interfaces.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::evidence::MAX_EVIDENCE_LEN;
use crate::{AttestError, Binding, Evidence, TeeKind};

/// Something that can have a TEE sign 64 bytes of report data.
pub trait EvidenceSource: Send + Sync {
    /// The kind of evidence produced.
    fn kind(&self) -> TeeKind;

    /// The TEE's quote (or report) over `report_data`.
    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError>;

    /// Collateral shipped with every quote (SGX/TDX: dcap-qvl
    /// `QuoteCollateralV3` JSON, fetched by the operator from a PCCS).
    fn collateral(&self) -> &[u8] {
        &[]
    }

    /// The quote over `report_data` and the collateral to ship with it
    /// (by default [`quote`](Self::quote) and the fixed
    /// [`collateral`](Self::collateral); a source whose TEE hands out
    /// collateral with each report overrides this).
    fn quote_and_collateral(
        &self,
        report_data: &[u8; 64],
    ) -> Result<(Vec<u8>, Vec<u8>), AttestError> {
        Ok((self.quote(report_data)?, self.collateral().to_vec()))
    }

    /// Evidence bound to `binding`, claiming `software_digest`.
    fn evidence(&self, binding: &Binding, software_digest: &[u8]) -> Result<Evidence, AttestError> {
        let (quote, collateral) = self.quote_and_collateral(&binding.report_data())?;
        let evidence = Evidence {
            kind: self.kind(),
            onion_identity: binding.onion_identity,
            channel_key: binding.channel_key,
            software_digest: software_digest.to_vec(),
            quote,
            collateral,
        };
        // Refuse here rather than have every client refuse it.
        let len = evidence.encode().len();
        if len > MAX_EVIDENCE_LEN {
            return Err(AttestError::Produce {
                kind: self.kind(),
                reason: format!("evidence of {len} bytes exceeds {MAX_EVIDENCE_LEN}"),
            });
        }
        Ok(evidence)
    }
}

/// No TEE. The "quote" is the bare report data, unsigned: it runs the same
/// code path as a real TEE (binding, channel key) and proves nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTee;

impl EvidenceSource for NoTee {
    fn kind(&self) -> TeeKind {
        TeeKind::None
    }

    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
        Ok(report_data.to_vec())
    }
}

/// SGX under Gramine: write the report data to
/// `/dev/attestation/user_report_data`, read the DCAP quote from
/// `/dev/attestation/quote`. Only works inside a Gramine-SGX enclave
/// (`sgx.remote_attestation = "dcap"`); not exercised by tests here.
#[derive(Debug)]
pub struct GramineSgx {
    collateral: Vec<u8>,
    // The two pseudo-files are one global state per enclave: a second
    // writer between our write and read would get us its quote.
    lock: Mutex<()>,
    root: PathBuf,
}

impl GramineSgx {
    /// A source using Gramine's `/dev/attestation`, shipping `collateral`.
    pub fn new(collateral: Vec<u8>) -> GramineSgx {
        GramineSgx {
            collateral,
            lock: Mutex::new(()),
            root: PathBuf::from("/dev/attestation"),
        }
    }
}

impl EvidenceSource for GramineSgx {
    fn kind(&self) -> TeeKind {
        TeeKind::Sgx
    }

    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
        let produce = |reason: String| AttestError::Produce {
            kind: TeeKind::Sgx,
            reason,
        };
        let _guard = self
            .lock
            .lock()
            .map_err(|_| produce("lock poisoned".into()))?;
        std::fs::write(self.root.join("user_report_data"), report_data)
            .map_err(|e| produce(format!("writing user_report_data: {e}")))?;
        std::fs::read(self.root.join("quote")).map_err(|e| produce(format!("reading quote: {e}")))
    }

    fn collateral(&self) -> &[u8] {
        &self.collateral
    }
}

/// Where Linux (≥ 6.7) mounts configfs-tsm's report interface.
pub const CONFIGFS_TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";

/// TDX or SEV-SNP through the kernel's configfs-tsm interface
/// ([`CONFIGFS_TSM_REPORT_DIR`], Linux ≥ 6.7): make a report directory,
/// check its `provider`, write `inblob`, read `outblob`. Inside a TDX guest
/// the outblob is a DCAP quote; inside an SNP guest it is the attestation
/// report. Only works inside a confidential VM; tests here run it only
/// where there is none.
#[derive(Debug)]
pub struct ConfigfsTsm {
    kind: TeeKind,
    collateral: Vec<u8>,
    root: PathBuf,
    counter: AtomicU64,
}

impl ConfigfsTsm {
    /// A source of `kind` (tdx or sev-snp) evidence, shipping `collateral`.
    pub fn new(kind: TeeKind, collateral: Vec<u8>) -> ConfigfsTsm {
        ConfigfsTsm {
            kind,
            collateral,
            root: PathBuf::from(CONFIGFS_TSM_REPORT_DIR),
            counter: AtomicU64::new(0),
        }
    }

    /// The `provider` a report directory names for `kind` (the guest
    /// driver that signs it).
    fn provider(kind: TeeKind) -> Option<&'static str> {
        match kind {
            TeeKind::Tdx => Some("tdx_guest"),
            TeeKind::SevSnp => Some("sev_guest"),
            TeeKind::None | TeeKind::Sgx => None,
        }
    }
}

impl ConfigfsTsm {
    /// One report over `report_data`: the outblob and, when `auxblob`, the
    /// auxblob (SEV-SNP: the certificate table the hypervisor supplies).
    fn report(
        &self,
        report_data: &[u8; 64],
        auxblob: bool,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), AttestError> {
        let kind = self.kind;
        let produce = |reason: String| AttestError::Produce { kind, reason };
        let expected = ConfigfsTsm::provider(kind)
            .ok_or_else(|| produce("configfs-tsm produces only tdx and sev-snp evidence".into()))?;
        if !self.root.is_dir() {
            return Err(produce(format!(
                "there is no {} (configfs-tsm, Linux 6.7 or later inside a TDX or SEV-SNP \
                 confidential VM): this machine is not such a guest, or configfs is not mounted",
                self.root.display()
            )));
        }
        // One directory per request: configfs-tsm detects concurrent
        // writers through `generation`, a private directory avoids them.
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join(format!("bento-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir)
            .map_err(|e| produce(format!("creating {}: {e}", dir.display())))?;
        let result = std::fs::read_to_string(dir.join("provider"))
            .map_err(|e| produce(format!("reading provider: {e}")))
            .and_then(|provider| {
                // A TDX guest cannot give SNP evidence and vice versa: say
                // which one this is rather than hand clients a quote they
                // would refuse as malformed.
                let provider = provider.trim();
                if provider == expected {
                    Ok(())
                } else {
                    Err(produce(format!(
                        "the kernel's attestation provider is {provider:?}, not {expected:?}: \
                         this guest does not produce {kind} evidence"
                    )))
                }
            })
            .and_then(|()| {
                std::fs::write(dir.join("inblob"), report_data)
                    .map_err(|e| produce(format!("writing inblob: {e}")))
            })
            .and_then(|()| {
                std::fs::read(dir.join("outblob"))
                    .map_err(|e| produce(format!("reading outblob: {e}")))
            })
            .and_then(|outblob| {
                if !auxblob {
                    return Ok((outblob, None));
                }
                // Read after the outblob: the kernel fills both from one
                // request.
                let aux = std::fs::read(dir.join("auxblob"))
                    .map_err(|e| produce(format!("reading auxblob: {e}")))?;
                Ok((outblob, Some(aux)))
            });
        // configfs directories are removed with rmdir, never recursively.
        let _ = std::fs::remove_dir(&dir);
        result
    }
}

impl EvidenceSource for ConfigfsTsm {
    fn kind(&self) -> TeeKind {
        self.kind
    }

    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
        Ok(self.report(report_data, false)?.0)
    }

    fn collateral(&self) -> &[u8] {
        &self.collateral
    }

    /// SEV-SNP without collateral from the operator: the certificates the
    /// hypervisor attaches to the report (an extended report's
    /// certificate table, configfs-tsm's `auxblob`). Clients verify them
    /// against AMD's roots as they would any collateral, so the untrusted
    /// host can make a box fail but not make a client accept it.
    fn quote_and_collateral(
        &self,
        report_data: &[u8; 64],
    ) -> Result<(Vec<u8>, Vec<u8>), AttestError> {
        if self.kind != TeeKind::SevSnp || !self.collateral.is_empty() {
            return Ok((self.quote(report_data)?, self.collateral.clone()));
        }
        let (report, aux) = self.report(report_data, true)?;
        let collateral = snp_collateral_from_cert_table(&aux.unwrap_or_default())?;
        Ok((report, collateral))
    }
}

/// The GUIDs of the GHCB certificate table's entries (AMD's "SEV-ES Guest-
/// Hypervisor Communication Block Standardization", the `SNP Extended Guest
/// Request`), in their byte order on the wire (RFC 4122).
const SNP_CERT_GUIDS: [(&str, &str); 4] = [
    ("VCEK", "63da758d-e664-4564-adc5-f4b93be8accd"),
    ("ASK", "4ab7b379-bbac-4fe4-a02f-05aef327c782"),
    ("ARK", "c0b406a4-a803-4952-9743-3fb6014cd0ae"),
    ("VLEK", "a8074bc2-a25a-483e-aae6-39c045a0b8a1"),
];

/// Bytes of one certificate-table entry: GUID, offset, length.
const SNP_CERT_ENTRY_LEN: usize = 24;

/// SEV-SNP collateral (the PEM bundle VCEK, ASK, ARK that
/// [`verify`](crate::verify) takes) from an extended report's certificate
/// table: 24-byte entries (GUID, then offset and length from the table's
/// start, little-endian u32s) ended by an all-zero entry, then the DER
/// certificates. The hypervisor writes this table, so every offset and
/// length is checked; a VLEK-signed platform (no VCEK in the table) is
/// refused, as verification does not support VLEKs.
pub fn snp_collateral_from_cert_table(table: &[u8]) -> Result<Vec<u8>, AttestError> {
    use x509_cert::der::{Decode, EncodePem, pem::LineEnding};

    let bad = |reason: String| AttestError::Produce {
        kind: TeeKind::SevSnp,
        reason: format!("the host's certificate table: {reason}"),
    };
    let guid = |text: &str| -> Vec<u8> { hex::decode(text.replace('-', "")).unwrap_or_default() };
    let mut found: [Option<&[u8]>; 4] = [None; 4];
    let mut at = 0;
    loop {
        let entry = table
            .get(at..at + SNP_CERT_ENTRY_LEN)
            .ok_or_else(|| bad(format!("no closing entry (table of {} bytes)", table.len())))?;
        let (id, place) = entry.split_at(16);
        if id.iter().all(|&b| b == 0) {
            break;
        }
        let number = |bytes: &[u8]| {
            let mut word = [0u8; 4];
            word.copy_from_slice(bytes);
            u32::from_le_bytes(word) as usize
        };
        let (offset, len) = (number(&place[..4]), number(&place[4..8]));
        let data = offset
            .checked_add(len)
            .and_then(|end| table.get(offset..end))
            .ok_or_else(|| {
                bad(format!(
                    "an entry's {len} bytes at offset {offset} lie outside its {} bytes",
                    table.len()
                ))
            })?;
        if let Some(i) = SNP_CERT_GUIDS.iter().position(|(_, g)| guid(g) == id) {
            found[i] = Some(data);
        }
        at += SNP_CERT_ENTRY_LEN;
    }
    let [vcek, ask, ark, vlek] = found;
    let (Some(vcek), Some(ask), Some(ark)) = (vcek, ask, ark) else {
        let missing: Vec<&str> = [vcek, ask, ark]
            .iter()
            .zip(SNP_CERT_GUIDS)
            .filter(|(cert, _)| cert.is_none())
            .map(|(_, (name, _))| name)
            .collect();
        let vlek = if vlek.is_some() {
            " (it has a VLEK: VLEK-signed reports are not supported)"
        } else {
            ""
        };
        return Err(bad(format!(
            "no {}{vlek}; pass --tee-collateral",
            missing.join(", ")
        )));
    };
    let mut pem = String::new();
    for (der, (name, _)) in [vcek, ask, ark].into_iter().zip(SNP_CERT_GUIDS) {
        let text = x509_cert::Certificate::from_der(der)
            .and_then(|cert| cert.to_pem(LineEnding::LF))
            .map_err(|e| bad(format!("its {name} is not a DER certificate: {e}")))?;
        pem.push_str(&text);
    }
    Ok(pem.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_tee_evidence_carries_the_binding_and_its_report_data() {
        let binding = Binding {
            nonce: [9; 32],
            onion_identity: [8; 32],
            channel_key: [7; 32],
        };
        let evidence = NoTee.evidence(&binding, &[1; 32]).unwrap();
        assert_eq!(evidence.kind, TeeKind::None);
        assert_eq!(evidence.quote, binding.report_data().to_vec());
        assert_eq!(evidence.channel_key, [7; 32]);
        assert_eq!(evidence.onion_identity, [8; 32]);
        assert!(evidence.collateral.is_empty());
    }

    #[test]
    fn a_tsm_source_outside_a_confidential_vm_fails_with_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = ConfigfsTsm::new(TeeKind::Tdx, Vec::new());
        source.root = dir.path().join("missing");
        let Err(AttestError::Produce {
            kind: TeeKind::Tdx,
            reason,
        }) = source.quote(&[0; 64])
        else {
            panic!("a missing configfs-tsm produced evidence");
        };
        assert!(reason.contains("confidential VM"), "{reason}");
    }

    #[test]
    fn a_tsm_source_refuses_to_produce_kinds_configfs_tsm_does_not_sign() {
        for kind in [TeeKind::None, TeeKind::Sgx] {
            let source = ConfigfsTsm::new(kind, Vec::new());
            assert!(matches!(
                source.quote(&[0; 64]),
                Err(AttestError::Produce { .. })
            ));
        }
    }

    #[test]
    fn an_oversized_collateral_is_refused_when_producing() {
        let mut source = GramineSgx::new(vec![b' '; MAX_EVIDENCE_LEN]);
        let dir = tempfile::tempdir().unwrap();
        source.root = dir.path().to_path_buf();
        std::fs::write(dir.path().join("quote"), b"q").unwrap();
        let binding = Binding {
            nonce: [0; 32],
            onion_identity: [0; 32],
            channel_key: [0; 32],
        };
        assert!(matches!(
            source.evidence(&binding, &[]),
            Err(AttestError::Produce {
                kind: TeeKind::Sgx,
                ..
            })
        ));
        // The report data was written where Gramine expects it.
        let written = std::fs::read(dir.path().join("user_report_data")).unwrap();
        assert_eq!(written, binding.report_data().to_vec());
    }
}
