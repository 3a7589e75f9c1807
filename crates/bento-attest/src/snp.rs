//! AMD SEV-SNP: the attestation report, signed by the chip's VCEK, whose
//! certificate chains through the ASK to AMD's root key (ARK).
//!
//! Parsing and the signatures (ARK self-signature, ARK → ASK → VCEK with
//! RSA-PSS, VCEK → report with ECDSA P-384) are VirTEE's `sev` crate. What
//! it leaves to its caller is done here: which roots to trust, that the
//! certificates are valid at the client's clock, that the report bytes are
//! exactly what was verified, that the VCEK is the one for the TCB and chip
//! the report names, and the guest policy.

use std::fmt;

use sev::certs::snp::{Certificate, Chain, Verifiable, builtin, ca};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::TcbVersion;
use sev::parser::ByteParser;
use x509_cert::der::asn1::{Ia5String, ObjectIdentifier};
use x509_cert::der::{Decode, Encode};

use crate::{AttestError, TeeKind};

/// Bytes of an SEV-SNP attestation report (every report version so far).
pub const SNP_REPORT_LEN: usize = 1184;

/// Where the signature starts: it covers the bytes before it.
const SIGNATURE_AT: usize = 0x2a0;
/// Bytes of the signature's R and S fields each.
const SIGNATURE_FIELD_LEN: usize = 72;
/// Bytes of a P-384 scalar.
const P384_SCALAR_LEN: usize = 48;

/// Certificates SNP collateral holds: VCEK, ASK, ARK.
const SNP_CHAIN_LEN: usize = 3;

/// AMD's VCEK certificate extensions (AMD, "Versioned Chip Endorsement Key
/// (VCEK) Certificate and KDS Interface Specification", 57230, ch. 3).
const OID_PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
const OID_BOOTLOADER_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const OID_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const OID_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const OID_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
const OID_FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
const OID_HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");

/// The ARK certificates (DER) a client trusts by default: AMD's roots for
/// Milan, Genoa and Turin, as the `sev` crate ships them.
pub fn amd_root_keys() -> Vec<Vec<u8>> {
    [
        builtin::milan::ark(),
        builtin::genoa::ark(),
        builtin::turin::ark(),
    ]
    .into_iter()
    // The built-in PEMs are constants of the crate; one failing to
    // parse would be a broken build, and leaving it out only trusts less.
    .filter_map(|ark| ark.and_then(|ark| ark.to_der()).ok())
    .collect()
}

/// The security patch levels of an SNP platform's firmware, as AMD
/// certified them in the VCEK (equal to the report's `REPORTED_TCB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpTcb {
    /// PSP bootloader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Lowest microcode patch level of all cores.
    pub microcode: u8,
    /// FMC firmware SPL (Turin and later).
    pub fmc: Option<u8>,
}

impl fmt::Display for SnpTcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bootloader {}, TEE {}, SNP {}, microcode {}",
            self.bootloader, self.tee, self.snp, self.microcode
        )?;
        if let Some(fmc) = self.fmc {
            write!(f, ", FMC {fmc}")?;
        }
        Ok(())
    }
}

impl SnpTcb {
    /// Whether every level is at least `minimum`'s. A minimum that names an
    /// FMC level is not met by a platform that reports none (before Turin).
    pub fn at_least(&self, minimum: &SnpTcb) -> bool {
        let fmc = match (self.fmc, minimum.fmc) {
            (_, None) => true,
            (Some(have), Some(need)) => have >= need,
            (None, Some(_)) => false,
        };
        self.bootloader >= minimum.bootloader
            && self.tee >= minimum.tee
            && self.snp >= minimum.snp
            && self.microcode >= minimum.microcode
            && fmc
    }
}

/// `bootloader=N,tee=N,snp=N,microcode=N[,fmc=N]` (also `bl`, `ucode`; a
/// level left out is 0, i.e. no minimum for it): a client's minimum TCB.
impl std::str::FromStr for SnpTcb {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut tcb = SnpTcb {
            bootloader: 0,
            tee: 0,
            snp: 0,
            microcode: 0,
            fmc: None,
        };
        let mut seen = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not NAME=LEVEL"))?;
            let level: u8 = value
                .trim()
                .parse()
                .map_err(|_| format!("{name}: {value:?} is not a level from 0 to 255"))?;
            let name = name.trim();
            let canonical = match name {
                "bootloader" | "bl" => "bootloader",
                "tee" => "tee",
                "snp" => "snp",
                "microcode" | "ucode" => "microcode",
                "fmc" => "fmc",
                other => {
                    return Err(format!(
                        "unknown level {other:?} (expected bootloader, tee, snp, microcode, fmc)"
                    ));
                }
            };
            if seen.contains(&canonical) {
                return Err(format!("{canonical} is given twice"));
            }
            seen.push(canonical);
            match canonical {
                "bootloader" => tcb.bootloader = level,
                "tee" => tcb.tee = level,
                "snp" => tcb.snp = level,
                "microcode" => tcb.microcode = level,
                _ => tcb.fmc = Some(level),
            }
        }
        if seen.is_empty() {
            return Err("no level given (e.g. bootloader=3,tee=0,snp=8,microcode=115)".into());
        }
        Ok(tcb)
    }
}

/// What a verified SEV-SNP report proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpFacts {
    /// The 64 bytes the guest asked the firmware to sign.
    pub report_data: [u8; 64],
    /// The launch measurement of the guest (48 bytes, SHA-384).
    pub measurement: Vec<u8>,
    /// AMD's product name from the VCEK, e.g. `Milan-B0`.
    pub product: String,
    /// The platform TCB the VCEK certifies.
    pub tcb: SnpTcb,
    /// The VM privilege level that requested the report (0 is the highest).
    pub vmpl: u32,
    /// The guest policy fixed at launch (debugging is refused).
    pub policy: u64,
}

/// Check an SEV-SNP attestation report with its certificate chain at a
/// given time: the ARK is one the client trusts, ARK → ASK → VCEK
/// signatures and validity windows, the VCEK's TCB and chip match the
/// report, the report's signature over its exact bytes, the report is
/// signed by a VCEK (not a VLEK) and its guest policy forbids debugging.
/// The report data is returned, not checked: [`verify`](crate::verify)
/// binds it.
///
/// `collateral` is the PEM bundle VCEK, ASK, ARK in that order (what AMD's
/// key distribution service serves: the VCEK for the chip and TCB, then the
/// product's `cert_chain`). `trusted_arks` are DER certificates; the
/// bundle's ARK must be one of them byte for byte, so a box can ship the
/// chain but not choose its root.
pub fn verify_snp_report(
    report: &[u8],
    collateral: &[u8],
    trusted_arks: &[Vec<u8>],
    now_unix: u64,
) -> Result<SnpFacts, AttestError> {
    let rejected = |reason: String| AttestError::QuoteRejected {
        kind: TeeKind::SevSnp,
        reason,
    };
    if collateral.is_empty() {
        return Err(AttestError::MissingCollateral(TeeKind::SevSnp));
    }
    let certs = x509_cert::Certificate::load_pem_chain(collateral).map_err(|e| {
        AttestError::Malformed(format!(
            "sev-snp collateral is not a PEM certificate bundle: {e}"
        ))
    })?;
    let [vcek, ask, ark]: [x509_cert::Certificate; SNP_CHAIN_LEN] =
        certs.try_into().map_err(|certs: Vec<_>| {
            AttestError::Malformed(format!(
                "sev-snp collateral must hold {SNP_CHAIN_LEN} certificates (VCEK, ASK, ARK), not {}",
                certs.len()
            ))
        })?;

    let ark_der = ark
        .to_der()
        .map_err(|e| AttestError::Malformed(format!("ARK does not re-encode: {e}")))?;
    if !trusted_arks.contains(&ark_der) {
        return Err(rejected(
            "the chain's root (ARK) is not one of AMD's roots this client trusts".into(),
        ));
    }
    for (name, cert) in [("ARK", &ark), ("ASK", &ask), ("VCEK", &vcek)] {
        check_validity(name, cert, now_unix).map_err(rejected)?;
    }
    let chain = Chain {
        ca: ca::Chain {
            ark: Certificate::from(ark),
            ask: Certificate::from(ask),
        },
        vek: Certificate::from(vcek.clone()),
    };
    (&chain)
        .verify()
        .map_err(|e| rejected(format!("VCEK certificate chain: {e}")))?;

    if report.len() != SNP_REPORT_LEN {
        return Err(rejected(format!(
            "a report of {} bytes is not an SEV-SNP attestation report ({SNP_REPORT_LEN})",
            report.len()
        )));
    }
    let parsed = AttestationReport::from_bytes(report)
        .map_err(|e| rejected(format!("attestation report does not parse: {e}")))?;
    // `sev` checks the signature over the report as it re-encodes it, not
    // over the bytes received; bytes it does not model (the reserved bytes
    // of its TCB fields) would escape the signature. Accept only reports
    // whose bytes are exactly the ones it verifies.
    let canonical = parsed
        .to_bytes()
        .map_err(|e| rejected(format!("attestation report does not re-encode: {e}")))?;
    if canonical.as_ref() != report {
        return Err(rejected(
            "attestation report has bytes outside its defined fields (reserved fields must be zero)"
                .into(),
        ));
    }
    // R and S are 72-byte little-endian fields holding 48-byte P-384
    // values; `sev` reads the low 48 bytes only, so the rest must be zero
    // for every byte of the report to count.
    for (name, at) in [
        ("R", SIGNATURE_AT),
        ("S", SIGNATURE_AT + SIGNATURE_FIELD_LEN),
    ] {
        if report[at + P384_SCALAR_LEN..at + SIGNATURE_FIELD_LEN]
            .iter()
            .any(|b| *b != 0)
        {
            return Err(rejected(format!(
                "signature {name} has non-zero padding above its 48 bytes"
            )));
        }
    }
    // Signing key 0 is the VCEK; 1 (VLEK) chains to another AMD key (ASVK)
    // and 7 means unsigned.
    if parsed.key_info.signing_key() != 0 {
        return Err(rejected(format!(
            "report is not signed by a VCEK (signing key {})",
            parsed.key_info.signing_key()
        )));
    }
    (&chain, &parsed)
        .verify()
        .map_err(|e| rejected(format!("report signature: {e}")))?;

    // The firmware signs with the VCEK derived for the report's
    // REPORTED_TCB. A VCEK certified for another TCB (an older one, whose
    // key leaked through a since-fixed bug, say) must not vouch for a report
    // claiming this one, so the certified TCB and chip must be the report's.
    let tcb = vcek_tcb(&vcek).map_err(rejected)?;
    if !same_tcb(&tcb, &parsed.reported_tcb) {
        return Err(rejected(format!(
            "the VCEK is certified for TCB {tcb}, the report claims {}",
            tcb_of(&parsed.reported_tcb)
        )));
    }
    // The hwID extension's value is the raw chip id, not DER inside DER.
    if let Some(hw_id) = extension(&vcek, OID_HW_ID) {
        let chip = parsed.chip_id;
        // Milan and Genoa certify all 64 bytes, Turin the first 8 (the rest
        // of its CHIP_ID is zero). An all-zero CHIP_ID is masked by guest
        // policy: the VCEK's signature already names the chip.
        let masked = chip == [0; 64];
        let matches = hw_id.len() <= chip.len()
            && chip[..hw_id.len()] == hw_id[..]
            && chip[hw_id.len()..].iter().all(|b| *b == 0);
        if !masked && !matches {
            return Err(rejected(
                "the VCEK is for another chip than the one that made the report".into(),
            ));
        }
    }
    if parsed.policy.debug_allowed() {
        return Err(rejected(
            "the guest policy allows debugging: the host can read and change the guest's memory"
                .into(),
        ));
    }
    let product = extension(&vcek, OID_PRODUCT_NAME)
        .and_then(|value| Ia5String::from_der(value).ok())
        .map_or_else(|| "unknown".to_owned(), |name| name.to_string());
    Ok(SnpFacts {
        report_data: parsed.report_data,
        measurement: parsed.measurement.to_vec(),
        product,
        tcb,
        vmpl: parsed.vmpl,
        policy: u64::from(parsed.policy),
    })
}

/// `notBefore <= now <= notAfter`, or why not.
fn check_validity(name: &str, cert: &x509_cert::Certificate, now_unix: u64) -> Result<(), String> {
    let validity = &cert.tbs_certificate.validity;
    let not_before = validity.not_before.to_unix_duration().as_secs();
    let not_after = validity.not_after.to_unix_duration().as_secs();
    if now_unix < not_before {
        return Err(format!(
            "{name} certificate is not valid yet (from {not_before}, now {now_unix})"
        ));
    }
    if now_unix > not_after {
        return Err(format!(
            "{name} certificate expired (until {not_after}, now {now_unix})"
        ));
    }
    Ok(())
}

/// The DER inside an extension's OCTET STRING, if the certificate has it.
fn extension(cert: &x509_cert::Certificate, oid: ObjectIdentifier) -> Option<&[u8]> {
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|ext| ext.extn_id == oid)
        .map(|ext| ext.extn_value.as_bytes())
}

/// The TCB a VCEK certifies; every SPL but FMC (Turin on) is required.
fn vcek_tcb(vcek: &x509_cert::Certificate) -> Result<SnpTcb, String> {
    let spl = |oid: ObjectIdentifier, name: &str| -> Result<Option<u8>, String> {
        extension(vcek, oid)
            .map(|value| u8::from_der(value).map_err(|e| format!("VCEK {name} extension: {e}")))
            .transpose()
    };
    let required = |oid, name: &str| {
        spl(oid, name)?.ok_or_else(|| format!("VCEK certificate has no {name} extension"))
    };
    Ok(SnpTcb {
        bootloader: required(OID_BOOTLOADER_SPL, "blSPL")?,
        tee: required(OID_TEE_SPL, "teeSPL")?,
        snp: required(OID_SNP_SPL, "snpSPL")?,
        microcode: required(OID_UCODE_SPL, "ucodeSPL")?,
        fmc: spl(OID_FMC_SPL, "fmcSPL")?,
    })
}

fn tcb_of(reported: &TcbVersion) -> SnpTcb {
    SnpTcb {
        bootloader: reported.bootloader,
        tee: reported.tee,
        snp: reported.snp,
        microcode: reported.microcode,
        fmc: reported.fmc,
    }
}

fn same_tcb(certified: &SnpTcb, reported: &TcbVersion) -> bool {
    // A pre-Turin VCEK has no FMC SPL and a pre-Turin report no FMC field:
    // both `None`. Anything else must match exactly.
    *certified == tcb_of(reported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimum_tcb_parses_from_names_and_levels_and_bad_text_is_refused() {
        let min: SnpTcb = "bl=3, tee=0,snp=8,ucode=115".parse().unwrap();
        let full = SnpTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: None,
        };
        assert_eq!(min, full);
        assert_eq!(
            "snp=8".parse::<SnpTcb>().unwrap(),
            SnpTcb {
                bootloader: 0,
                tee: 0,
                microcode: 0,
                ..full
            }
        );
        for (bad, says) in [
            ("", "no level"),
            ("snp", "not NAME=LEVEL"),
            ("snp=256", "0 to 255"),
            ("psp=1", "unknown level"),
            ("bl=1,bootloader=2", "given twice"),
        ] {
            let err = bad.parse::<SnpTcb>().unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_tcb_meets_a_minimum_only_when_every_level_does() {
        let tcb: SnpTcb = "bootloader=3,tee=0,snp=8,microcode=115".parse().unwrap();
        assert!(tcb.at_least(&tcb));
        assert!(tcb.at_least(&"snp=7".parse().unwrap()));
        for above in ["bootloader=4", "tee=1", "snp=9", "microcode=116"] {
            assert!(!tcb.at_least(&above.parse().unwrap()), "{above}");
        }
        // A pre-Turin platform has no FMC level to meet an FMC minimum.
        assert!(!tcb.at_least(&"fmc=0".parse().unwrap()));
        let turin = SnpTcb {
            fmc: Some(2),
            ..tcb
        };
        assert!(turin.at_least(&"fmc=2".parse().unwrap()));
        assert!(!turin.at_least(&"fmc=3".parse().unwrap()));
    }

    #[test]
    fn amd_roots_for_milan_genoa_and_turin_are_trusted_by_default() {
        let roots = amd_root_keys();
        assert_eq!(roots.len(), 3);
        for der in &roots {
            let cert = x509_cert::Certificate::from_der(der).unwrap();
            let subject = cert.tbs_certificate.subject.to_string();
            assert!(subject.contains("ARK-"), "{subject}");
            // Each root signs itself.
            let ark = Certificate::from(cert);
            (&ark, &ark).verify().unwrap();
        }
    }

    #[test]
    fn a_vcek_certified_for_another_tcb_does_not_match_the_report() {
        // Real certificates (tests/data): the Milan VCEK certifies exactly
        // the Milan report's REPORTED_TCB; the Turin VCEK certifies another
        // TCB (with an FMC level), which must not vouch for that report.
        let report =
            hex::decode(include_str!("../tests/data/snp_report_milan.hex").trim()).unwrap();
        let reported = AttestationReport::from_bytes(&report).unwrap().reported_tcb;
        let milan =
            x509_cert::Certificate::from_der(include_bytes!("../tests/data/snp_vcek_milan.der"))
                .unwrap();
        let turin =
            x509_cert::Certificate::from_der(include_bytes!("../tests/data/snp_vcek_turin.der"))
                .unwrap();
        let milan_tcb = vcek_tcb(&milan).unwrap();
        assert!(same_tcb(&milan_tcb, &reported));
        let turin_tcb = vcek_tcb(&turin).unwrap();
        assert!(turin_tcb.fmc.is_some());
        assert!(!same_tcb(&turin_tcb, &reported));
        // One level lower in any component is another TCB.
        for lower in [
            SnpTcb {
                bootloader: milan_tcb.bootloader - 1,
                ..milan_tcb
            },
            SnpTcb {
                snp: milan_tcb.snp - 1,
                ..milan_tcb
            },
            SnpTcb {
                microcode: milan_tcb.microcode - 1,
                ..milan_tcb
            },
            SnpTcb {
                fmc: Some(0),
                ..milan_tcb
            },
        ] {
            assert!(!same_tcb(&lower, &reported), "{lower}");
        }
    }

    #[test]
    fn a_tcb_prints_its_patch_levels_in_words() {
        let tcb = SnpTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: None,
        };
        assert_eq!(tcb.to_string(), "bootloader 3, TEE 0, SNP 8, microcode 115");
        let turin = SnpTcb {
            fmc: Some(1),
            ..tcb
        };
        assert!(turin.to_string().ends_with(", FMC 1"));
    }
}
