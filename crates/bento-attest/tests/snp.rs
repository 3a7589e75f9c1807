//! Verification of a real AMD-signed SEV-SNP attestation report with its
//! real VCEK and AMD's ASK/ARK (tests/data, provenance in its README).

// Test helpers outside #[test] functions unwrap too: a panic is a failure.
#![allow(clippy::unwrap_used)]

use bento_attest::{
    AttestError, Binding, Evidence, Requirement, SNP_REPORT_LEN, SnpTcb, TeeKind, TeeRequirement,
    Verified, VerifyOptions, amd_root_keys, verify, verify_snp_report,
};
use sev::certs::snp::{Chain, Verifiable, ca};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use x509_cert::der::pem::LineEnding;
use x509_cert::der::{Decode, DecodePem, Encode, EncodePem};

const REPORT_HEX: &str = include_str!("data/snp_report_milan.hex");
const MILAN_VCEK_DER: &[u8] = include_bytes!("data/snp_vcek_milan.der");
const TURIN_VCEK_DER: &[u8] = include_bytes!("data/snp_vcek_turin.der");
/// AMD's `cert_chain` for Milan: the ASK, then the ARK.
const MILAN_CHAIN_PEM: &str = include_str!("data/snp_cert_chain_milan.pem");
const TURIN_CHAIN_PEM: &str = include_str!("data/snp_cert_chain_turin.pem");

/// 2025-06-20T00:00:00Z: every certificate of the Milan chain is valid.
const VALID_AT: u64 = 1_750_377_600;
/// 2030-05-01T00:00:00Z: the Milan VCEK (until 2030-04-03) has expired.
const VCEK_EXPIRED_AT: u64 = 1_903_910_400;
/// 2023-01-01T00:00:00Z: before the Milan VCEK was issued (2023-04-03).
const BEFORE_VCEK_ISSUED: u64 = 1_672_531_200;

/// Offsets in the report (AMD SEV-SNP ABI, table "ATTESTATION_REPORT").
const POLICY_AT: usize = 0x08;
/// CURRENT_TCB's bytes 2..6, reserved on Milan and Genoa.
const RESERVED_IN_CURRENT_TCB: usize = 0x3a;
const REPORT_DATA_AT: usize = 0x50;
const MEASUREMENT_AT: usize = 0x90;
const CHIP_ID_AT: usize = 0x1a0;
/// The signature's R and S: 72 little-endian bytes each, of which a P-384
/// value uses 48; the rest must be zero.
const SIGNATURE_R_PADDING_AT: usize = 0x2a0 + 48;
const SIGNATURE_S_PADDING_AT: usize = 0x2a0 + 72 + 48;

fn report() -> Vec<u8> {
    hex::decode(REPORT_HEX.trim()).unwrap()
}

fn pem(der: &[u8]) -> String {
    x509_cert::Certificate::from_der(der)
        .unwrap()
        .to_pem(LineEnding::LF)
        .unwrap()
}

/// The chain's PEM blocks: ASK then ARK.
fn split(chain: &str) -> (String, String) {
    let certs = x509_cert::Certificate::load_pem_chain(chain.as_bytes()).unwrap();
    assert_eq!(certs.len(), 2);
    let text = |c: &x509_cert::Certificate| c.to_pem(LineEnding::LF).unwrap();
    (text(&certs[0]), text(&certs[1]))
}

/// What a box ships: VCEK, ASK, ARK.
fn collateral(vcek: &[u8], chain: &str) -> Vec<u8> {
    let (ask, ark) = split(chain);
    format!("{}{ask}{ark}", pem(vcek)).into_bytes()
}

fn milan_collateral() -> Vec<u8> {
    collateral(MILAN_VCEK_DER, MILAN_CHAIN_PEM)
}

fn check(report: &[u8], collateral: &[u8], at: u64) -> Result<bento_attest::SnpFacts, AttestError> {
    verify_snp_report(report, collateral, &amd_root_keys(), at)
}

fn rejected(result: Result<bento_attest::SnpFacts, AttestError>) -> String {
    match result {
        Err(AttestError::QuoteRejected {
            kind: TeeKind::SevSnp,
            reason,
        }) => reason,
        other => panic!("expected an sev-snp QuoteRejected, got {other:?}"),
    }
}

#[test]
fn the_real_milan_report_is_accepted_with_its_vcek_and_amds_chain() {
    let report = report();
    assert_eq!(report.len(), SNP_REPORT_LEN);
    let facts = check(&report, &milan_collateral(), VALID_AT).unwrap();
    // The facts are the report's own bytes at their ABI offsets.
    assert_eq!(
        &facts.report_data[..],
        &report[REPORT_DATA_AT..REPORT_DATA_AT + 64]
    );
    assert_eq!(
        facts.measurement,
        &report[MEASUREMENT_AT..MEASUREMENT_AT + 48]
    );
    assert_eq!(facts.product, "Milan-B0");
    assert_eq!(
        facts.tcb,
        SnpTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: None,
        }
    );
    assert_eq!(facts.vmpl, 0);
    assert_eq!(facts.policy, 0x30000, "SMT allowed, debugging not");
}

#[test]
fn a_flipped_bit_in_any_byte_of_the_report_is_rejected() {
    // Every byte: the signed body (0..0x2a0), the signature, and the
    // unsigned reserved tail, which must be zero.
    let report = report();
    let collateral = milan_collateral();
    let accepted: Vec<String> = (0..report.len())
        .filter(|at| {
            let mut tampered = report.clone();
            tampered[*at] ^= 1 << (at % 8);
            !matches!(
                check(&tampered, &collateral, VALID_AT),
                Err(AttestError::QuoteRejected {
                    kind: TeeKind::SevSnp,
                    ..
                })
            )
        })
        .map(|at| format!("{at:#x}"))
        .collect();
    assert!(accepted.is_empty(), "bytes not refused: {accepted:?}");
}

#[test]
fn bytes_the_sev_crate_alone_would_accept_changed_are_rejected() {
    // `sev` verifies the signature over its re-encoding of the report: the
    // reserved bytes inside its TCB fields are zero again there, and the
    // unused high bytes of R and S are not part of the P-384 values. With
    // any of them changed, its own check still passes; ours refuses.
    let chain = Chain {
        ca: ca::Chain {
            ark: sev::certs::snp::builtin::milan::ark().unwrap(),
            ask: sev::certs::snp::builtin::milan::ask().unwrap(),
        },
        vek: sev::certs::snp::Certificate::from_der(MILAN_VCEK_DER).unwrap(),
    };
    for at in [
        RESERVED_IN_CURRENT_TCB,
        SIGNATURE_R_PADDING_AT,
        SIGNATURE_S_PADDING_AT + 23,
    ] {
        let mut tampered = report();
        tampered[at] ^= 0x40;
        let parsed = AttestationReport::from_bytes(&tampered).unwrap();
        assert!((&chain, &parsed).verify().is_ok(), "{at:#x}");
        let reason = rejected(check(&tampered, &milan_collateral(), VALID_AT));
        assert!(
            reason.contains("reserved") || reason.contains("padding"),
            "{at:#x}: {reason}"
        );
    }
}

#[test]
fn a_report_with_the_debug_policy_bit_or_another_size_is_rejected() {
    // Turning debugging on (policy bit 19) breaks AMD's signature; no
    // genuine debug report is at hand, so this shows only that the bit is
    // covered. A truncated or padded report is refused before parsing.
    let mut debug = report();
    debug[POLICY_AT + 2] |= 1 << 3;
    rejected(check(&debug, &milan_collateral(), VALID_AT));
    let report = report();
    let reason = rejected(check(&report[..1000], &milan_collateral(), VALID_AT));
    assert!(reason.contains("1184"), "{reason}");
    let mut longer = report.clone();
    longer.push(0);
    rejected(check(&longer, &milan_collateral(), VALID_AT));
}

#[test]
fn a_vcek_not_signed_by_the_given_ask_and_ark_is_rejected() {
    let report = report();
    // Milan's VCEK under Turin's (genuine, trusted) ASK and ARK.
    let reason = rejected(check(
        &report,
        &collateral(MILAN_VCEK_DER, TURIN_CHAIN_PEM),
        VALID_AT,
    ));
    assert!(reason.contains("chain"), "{reason}");
    // A genuine Turin VCEK with its own chain: the chain verifies, but that
    // VCEK did not sign this Milan report.
    let reason = rejected(check(
        &report,
        &collateral(TURIN_VCEK_DER, TURIN_CHAIN_PEM),
        VALID_AT,
    ));
    assert!(reason.contains("signature"), "{reason}");
    // Milan's ASK under Turin's ARK: the ARK did not sign that ASK.
    let (milan_ask, _) = split(MILAN_CHAIN_PEM);
    let (_, turin_ark) = split(TURIN_CHAIN_PEM);
    let mixed = format!("{}{milan_ask}{turin_ark}", pem(MILAN_VCEK_DER));
    rejected(check(&report, mixed.as_bytes(), VALID_AT));
    // A VCEK whose signed body was changed (one bit of its public key).
    let mut vcek = MILAN_VCEK_DER.to_vec();
    let key_at = vcek.len() - 600;
    vcek[key_at] ^= 0x01;
    let err = check(&report, &collateral(&vcek, MILAN_CHAIN_PEM), VALID_AT).unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::QuoteRejected { .. } | AttestError::Malformed(_)
        ),
        "{err}"
    );
}

#[test]
fn a_chain_ending_in_a_root_the_client_does_not_trust_is_rejected() {
    let report = report();
    // A client that trusts only Genoa's root refuses the genuine Milan chain.
    let genoa_only = vec![
        sev::certs::snp::builtin::genoa::ark()
            .unwrap()
            .to_der()
            .unwrap(),
    ];
    let err = verify_snp_report(&report, &milan_collateral(), &genoa_only, VALID_AT).unwrap_err();
    match err {
        AttestError::QuoteRejected { reason, .. } => assert!(reason.contains("ARK"), "{reason}"),
        other => panic!("expected QuoteRejected, got {other}"),
    }
    // A box that ships the certificates in another order names no trusted root.
    let (ask, ark) = split(MILAN_CHAIN_PEM);
    let reordered = format!("{ask}{ark}{}", pem(MILAN_VCEK_DER));
    rejected(check(&report, reordered.as_bytes(), VALID_AT));
}

#[test]
fn an_expired_or_not_yet_valid_vcek_is_rejected() {
    let report = report();
    let reason = rejected(check(&report, &milan_collateral(), VCEK_EXPIRED_AT));
    assert!(reason.contains("VCEK certificate expired"), "{reason}");
    let reason = rejected(check(&report, &milan_collateral(), BEFORE_VCEK_ISSUED));
    assert!(
        reason.contains("VCEK certificate is not valid yet"),
        "{reason}"
    );
}

#[test]
fn missing_or_malformed_collateral_is_a_typed_error() {
    let report = report();
    assert!(matches!(
        check(&report, b"", VALID_AT),
        Err(AttestError::MissingCollateral(TeeKind::SevSnp))
    ));
    assert!(matches!(
        check(&report, b"not pem", VALID_AT),
        Err(AttestError::Malformed(_))
    ));
    // The VCEK alone, without ASK and ARK.
    assert!(matches!(
        check(&report, pem(MILAN_VCEK_DER).as_bytes(), VALID_AT),
        Err(AttestError::Malformed(_))
    ));
    // A fourth certificate is refused too: the layout is exact.
    let mut four = milan_collateral();
    four.extend(pem(MILAN_VCEK_DER).as_bytes());
    assert!(matches!(
        check(&report, &four, VALID_AT),
        Err(AttestError::Malformed(_))
    ));
}

fn evidence(report: &[u8]) -> Evidence {
    Evidence {
        kind: TeeKind::SevSnp,
        onion_identity: [0x11; 32],
        channel_key: [0x22; 32],
        software_digest: vec![],
        quote: report.to_vec(),
        collateral: milan_collateral(),
    }
}

#[test]
fn the_real_report_is_refused_for_a_wrong_nonce_or_another_boxs_key() {
    // Its report data was chosen by whoever made it, so no Bento binding
    // matches it: whatever nonce, identity or key a client expects, the
    // binding check refuses it after the signature checks pass.
    let report = report();
    let options = VerifyOptions::at(VALID_AT);
    let base = evidence(&report);
    let mut other_key = base.clone();
    other_key.channel_key = [0x33; 32];
    let mut other_box = base.clone();
    other_box.onion_identity = [0x44; 32];
    for (what, evidence, nonce) in [
        ("nonce", &base, [9u8; 32]),
        ("key", &other_key, [0; 32]),
        ("box", &other_box, [0; 32]),
    ] {
        let binding = Binding {
            nonce,
            onion_identity: evidence.onion_identity,
            channel_key: evidence.channel_key,
        };
        assert_ne!(
            &binding.report_data()[..],
            &report[REPORT_DATA_AT..REPORT_DATA_AT + 64]
        );
        let err = verify(evidence, &nonce, &Requirement::default(), &options).unwrap_err();
        assert!(matches!(err, AttestError::BindingMismatch), "{what}: {err}");
    }
    // A report whose report data was changed to the binding is no longer
    // AMD's: the signature refuses it before the binding is looked at.
    let nonce = [5u8; 32];
    let mut forged = report.clone();
    forged[REPORT_DATA_AT..REPORT_DATA_AT + 64].copy_from_slice(
        &Binding {
            nonce,
            onion_identity: base.onion_identity,
            channel_key: base.channel_key,
        }
        .report_data(),
    );
    let err = verify(
        &evidence(&forged),
        &nonce,
        &Requirement::default(),
        &options,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::QuoteRejected {
                kind: TeeKind::SevSnp,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_wrong_expected_measurement_or_kind_is_rejected_and_the_right_one_reaches_the_binding() {
    let report = report();
    let options = VerifyOptions::at(VALID_AT);
    let real = report[MEASUREMENT_AT..MEASUREMENT_AT + 48].to_vec();
    let mut wrong = real.clone();
    wrong[47] ^= 1;
    let required = |tee, measurement| Requirement {
        tee,
        measurement: Some(measurement),
        min_snp_tcb: None,
    };
    let snp = TeeRequirement::Kind(TeeKind::SevSnp);
    let err = verify(
        &evidence(&report),
        &[0; 32],
        &required(snp, wrong),
        &options,
    )
    .unwrap_err();
    assert!(
        matches!(err, AttestError::MeasurementMismatch { .. }),
        "{err}"
    );
    let err = verify(
        &evidence(&report),
        &[0; 32],
        &required(snp, real.clone()),
        &options,
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BindingMismatch), "{err}");
    // Any TEE admits it; another kind does not.
    let err = verify(
        &evidence(&report),
        &[0; 32],
        &required(TeeRequirement::AnyTee, real.clone()),
        &options,
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BindingMismatch), "{err}");
    let err = verify(
        &evidence(&report),
        &[0; 32],
        &required(TeeRequirement::Kind(TeeKind::Tdx), real),
        &options,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::TeeRequired {
                offered: TeeKind::SevSnp,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_minimum_tcb_refuses_the_real_report_below_it_and_lets_it_through_at_or_under_it() {
    let report = report();
    let options = VerifyOptions::at(VALID_AT);
    let tcb = check(&report, &milan_collateral(), VALID_AT).unwrap().tcb;
    let required = |min: Option<SnpTcb>| Requirement {
        tee: TeeRequirement::Kind(TeeKind::SevSnp),
        measurement: None,
        min_snp_tcb: min,
    };
    // At its own TCB, or with no minimum, the report passes the TCB check
    // and reaches the binding (its report data is not a Bento binding).
    for min in [None, Some(tcb)] {
        let err = verify(&evidence(&report), &[0; 32], &required(min), &options).unwrap_err();
        assert!(
            matches!(err, AttestError::BindingMismatch),
            "{min:?}: {err}"
        );
    }
    // One level above the platform's in any component, or an FMC level
    // this Milan part does not have: refused, naming both.
    let up = |level: u8| level.saturating_add(1);
    let mut above = vec![
        SnpTcb {
            bootloader: up(tcb.bootloader),
            ..tcb
        },
        SnpTcb {
            tee: up(tcb.tee),
            ..tcb
        },
        SnpTcb {
            snp: up(tcb.snp),
            ..tcb
        },
        SnpTcb {
            microcode: up(tcb.microcode),
            ..tcb
        },
    ];
    above.retain(|min| *min != tcb);
    assert_eq!(above.len(), 4, "no level of the sample is 255: {tcb}");
    above.push(SnpTcb {
        fmc: Some(0),
        ..tcb
    });
    for min in above {
        let err = verify(&evidence(&report), &[0; 32], &required(Some(min)), &options).unwrap_err();
        match &err {
            AttestError::TcbBelowMinimum { proven, minimum } => {
                assert_eq!(proven, &tcb.to_string());
                assert_eq!(minimum, &min.to_string());
            }
            other => panic!("{min}: {other}"),
        }
        assert!(err.to_string().contains("below the minimum"), "{err}");
    }
}

#[test]
fn the_chip_id_in_the_report_is_the_one_the_vcek_names() {
    // The hwID extension of the real Milan VCEK is the report's CHIP_ID:
    // the check that refuses a VCEK of another chip compares exactly these.
    let report = report();
    let vcek = x509_cert::Certificate::from_der(MILAN_VCEK_DER).unwrap();
    let hw_id = vcek
        .tbs_certificate
        .extensions
        .unwrap()
        .into_iter()
        .find(|e| e.extn_id.to_string() == "1.3.6.1.4.1.3704.1.4")
        .unwrap();
    assert_eq!(
        hw_id.extn_value.as_bytes(),
        &report[CHIP_ID_AT..CHIP_ID_AT + 64]
    );
    // And the ARK in AMD's Milan chain is the built-in root, byte for byte.
    let (_, ark) = split(MILAN_CHAIN_PEM);
    let ark = x509_cert::Certificate::from_pem(ark.as_bytes())
        .unwrap()
        .to_der()
        .unwrap();
    assert!(amd_root_keys().contains(&ark));
}

#[test]
fn bento_attest_describes_an_snp_box_in_words() {
    // What `bento attest` prints for a box whose SNP evidence verified. The
    // real report cannot pass the binding for any request, so its verified
    // facts are put into a `Verified` as `verify` would.
    let facts = check(&report(), &milan_collateral(), VALID_AT).unwrap();
    let verified = Verified {
        kind: TeeKind::SevSnp,
        tee_measurement: Some(facts.measurement.clone()),
        signer: None,
        tcb_status: None,
        advisory_ids: vec![],
        snp: Some(facts.clone()),
        channel_key: [0x22; 32],
        onion_identity: [0x11; 32],
        identity_checked: true,
        software_digest: vec![],
    };
    let lines = verified.describe();
    assert_eq!(
        lines[0],
        "sev-snp: a genuine AMD SEV-SNP guest signed this evidence for your nonce"
    );
    assert_eq!(
        lines[1],
        format!(
            "measurement {} (compare with a reproducible build)",
            hex::encode(&facts.measurement)
        )
    );
    assert!(lines.contains(
        &"AMD Milan-B0 processor; firmware patch levels bootloader 3, TEE 0, SNP 8, microcode 115 \
          (certified by AMD in the VCEK; compare with AMD's security bulletins)"
            .to_owned()
    ));
    assert!(
        lines
            .contains(&"report requested at VMPL 0; guest policy 0x30000 forbids debugging".into())
    );
    assert!(lines.iter().any(|l| l.contains("timing, sizes")));
    assert!(lines.contains(&"bound to the onion address you dialed".into()));
}

/// The certificate table a hypervisor attaches to an extended report
/// (configfs-tsm's `auxblob`), encoded by VirTEE's `sev` (the kernel's
/// layout), holding `certs`.
#[cfg(target_os = "linux")]
fn cert_table(certs: Vec<(sev::firmware::host::CertType, Vec<u8>)>) -> Vec<u8> {
    use sev::firmware::host::CertTableEntry;
    let entries: Vec<CertTableEntry> = certs
        .into_iter()
        .map(|(kind, der)| CertTableEntry::new(kind, der))
        .collect();
    CertTableEntry::cert_table_to_vec_bytes(&entries).unwrap()
}

#[cfg(target_os = "linux")]
fn milan_chain_der() -> (Vec<u8>, Vec<u8>) {
    let (ask, ark) = split(MILAN_CHAIN_PEM);
    let der = |pem: &str| {
        x509_cert::Certificate::from_pem(pem.as_bytes())
            .unwrap()
            .to_der()
            .unwrap()
    };
    (der(&ask), der(&ark))
}

#[cfg(target_os = "linux")]
fn produce_reason(result: Result<Vec<u8>, AttestError>) -> String {
    match result {
        Err(AttestError::Produce {
            kind: TeeKind::SevSnp,
            reason,
        }) => reason,
        other => panic!("expected an sev-snp Produce error, got {other:?}"),
    }
}

#[test]
#[cfg(target_os = "linux")]
fn collateral_from_the_hosts_certificate_table_verifies_the_real_report() {
    use sev::firmware::host::CertType;
    let (ask, ark) = milan_chain_der();
    // The order in the table does not matter; another GUID is skipped.
    let table = cert_table(vec![
        (CertType::ARK, ark),
        (CertType::VCEK, MILAN_VCEK_DER.to_vec()),
        (CertType::CRL, vec![1, 2, 3]),
        (CertType::ASK, ask),
    ]);
    let collateral = bento_attest::snp_collateral_from_cert_table(&table).unwrap();
    let from_table = check(&report(), &collateral, VALID_AT).unwrap();
    let from_files = check(&report(), &milan_collateral(), VALID_AT).unwrap();
    assert_eq!(from_table.measurement, from_files.measurement);
    assert_eq!(from_table.report_data, from_files.report_data);
}

#[test]
#[cfg(target_os = "linux")]
fn a_hostile_or_incomplete_certificate_table_is_a_typed_error() {
    use bento_attest::snp_collateral_from_cert_table as parse;
    use sev::firmware::host::CertType;
    let (ask, ark) = milan_chain_der();
    let whole = cert_table(vec![
        (CertType::VCEK, MILAN_VCEK_DER.to_vec()),
        (CertType::ASK, ask.clone()),
        (CertType::ARK, ark.clone()),
    ]);
    // Cut inside the first entry: no closing entry. Cut after it: its
    // certificate lies outside what is left, or the closing entry is gone.
    for cut in [0, 10] {
        let reason = produce_reason(parse(&whole[..cut]));
        assert!(reason.contains("no closing entry"), "{cut}: {reason}");
    }
    for cut in [24, 95] {
        let reason = produce_reason(parse(&whole[..cut]));
        assert!(
            reason.contains("outside") || reason.contains("no closing entry"),
            "{cut}: {reason}"
        );
    }
    // A length reaching past the table (and one that would overflow).
    for len in [u32::MAX, (whole.len() as u32) + 1] {
        let mut bad = whole.clone();
        bad[20..24].copy_from_slice(&len.to_le_bytes());
        let reason = produce_reason(parse(&bad));
        assert!(reason.contains("outside"), "{reason}");
    }
    // Certificates cut off at the end of the table.
    let reason = produce_reason(parse(&whole[..whole.len() - 1]));
    assert!(reason.contains("outside"), "{reason}");
    // A VLEK instead of a VCEK.
    let vlek = cert_table(vec![
        (CertType::VLEK, MILAN_VCEK_DER.to_vec()),
        (CertType::ASK, ask.clone()),
        (CertType::ARK, ark.clone()),
    ]);
    let reason = produce_reason(parse(&vlek));
    assert!(
        reason.contains("no VCEK") && reason.contains("VLEK"),
        "{reason}"
    );
    // Not a certificate where the VCEK should be.
    let garbage = cert_table(vec![
        (CertType::VCEK, vec![0x30, 0x03, 1, 2, 3]),
        (CertType::ASK, ask),
        (CertType::ARK, ark),
    ]);
    let reason = produce_reason(parse(&garbage));
    assert!(reason.contains("VCEK is not a DER certificate"), "{reason}");
}
