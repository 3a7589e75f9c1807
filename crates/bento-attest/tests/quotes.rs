//! Verification of real vendor-signed SGX and TDX quotes (tests/data).

use bento_attest::{
    AttestError, Binding, Evidence, Requirement, TeeKind, TeeRequirement, VerifyOptions, verify,
    verify_quote,
};

const SGX_QUOTE: &[u8] = include_bytes!("data/sgx_quote");
const SGX_COLLATERAL: &[u8] = include_bytes!("data/sgx_quote_collateral.json");
const TDX_QUOTE: &[u8] = include_bytes!("data/tdx_quote");
const TDX_COLLATERAL: &[u8] = include_bytes!("data/tdx_quote_collateral.json");
const TDX_OUTDATED_QUOTE: &[u8] = include_bytes!("data/tdx_quote_outdated");
const TDX_OUTDATED_COLLATERAL: &[u8] = include_bytes!("data/tdx_quote_outdated_collateral.json");

/// 2025-06-20T00:00:00Z: inside both samples' collateral windows.
const SAMPLES_VALID_AT: u64 = 1_750_377_600;
/// 2025-08-01T00:00:00Z: after the TCB info and QE identity expired.
const SAMPLES_EXPIRED_AT: u64 = 1_754_006_400;
/// 2026-02-20T00:00:00Z: inside the outdated sample's collateral window.
const OUTDATED_SAMPLE_VALID_AT: u64 = 1_771_545_600;

fn evidence(kind: TeeKind, quote: &[u8], collateral: &[u8]) -> Evidence {
    Evidence {
        kind,
        onion_identity: [0x11; 32],
        channel_key: [0x22; 32],
        software_digest: vec![],
        quote: quote.to_vec(),
        collateral: collateral.to_vec(),
    }
}

fn flip_bit(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= 0x01;
    out
}

#[test]
fn the_real_sgx_sample_quote_is_accepted_at_its_validity_time() {
    let facts = verify_quote(
        TeeKind::Sgx,
        SGX_QUOTE,
        SGX_COLLATERAL,
        &VerifyOptions::at(SAMPLES_VALID_AT),
    )
    .unwrap();
    assert_eq!(facts.tcb_status, "ConfigurationAndSWHardeningNeeded");
    assert_eq!(facts.measurement.len(), 32, "MRENCLAVE");
    assert!(facts.signer.is_some(), "MRSIGNER");
    // The report data the hardware signed is at its fixed offset in the
    // quote body (48-byte header + 320 bytes into the enclave report).
    assert_eq!(&facts.report_data[..], &SGX_QUOTE[48 + 320..48 + 384]);
}

#[test]
fn the_real_tdx_sample_quote_is_accepted_at_its_validity_time() {
    let facts = verify_quote(
        TeeKind::Tdx,
        TDX_QUOTE,
        TDX_COLLATERAL,
        &VerifyOptions::at(SAMPLES_VALID_AT),
    )
    .unwrap();
    assert_eq!(facts.measurement.len(), 48, "MRTD");
    assert!(facts.signer.is_none());
    // TD report 1.0: report data is the last 64 of its 584 bytes.
    assert_eq!(&facts.report_data[..], &TDX_QUOTE[48 + 520..48 + 584]);
}

#[test]
fn a_flipped_bit_anywhere_signed_is_rejected() {
    let options = VerifyOptions::at(SAMPLES_VALID_AT);
    // In the report data, in MRENCLAVE, in the header; then in the quote's
    // signature data (v3 layout after the 432 signed bytes and a u32
    // length): the ECDSA signature, the QE's report, the QE report's
    // signature.
    for at in [
        48 + 330,
        48 + 64,
        10,
        436 + 4,
        436 + 128 + 50,
        436 + 128 + 384 + 10,
    ] {
        let tampered = flip_bit(SGX_QUOTE, at);
        let err = verify_quote(TeeKind::Sgx, &tampered, SGX_COLLATERAL, &options).unwrap_err();
        assert!(
            matches!(
                err,
                AttestError::QuoteRejected {
                    kind: TeeKind::Sgx,
                    ..
                }
            ),
            "bit at {at}: {err}"
        );
    }
    for at in [48 + 200, 48 + 560] {
        let tampered = flip_bit(TDX_QUOTE, at);
        let err = verify_quote(TeeKind::Tdx, &tampered, TDX_COLLATERAL, &options).unwrap_err();
        assert!(
            matches!(err, AttestError::QuoteRejected { .. }),
            "bit at {at}: {err}"
        );
    }
}

#[test]
fn tampered_collateral_is_rejected() {
    let options = VerifyOptions::at(SAMPLES_VALID_AT);
    // Upgrade the platform's TCB status in the signed TCB info: Intel's
    // signature over it no longer verifies.
    let text = std::str::from_utf8(SGX_COLLATERAL).unwrap();
    let tampered = text.replacen("OutOfDate", "UpToDate", 1);
    assert_ne!(tampered, text);
    let err = verify_quote(TeeKind::Sgx, SGX_QUOTE, tampered.as_bytes(), &options).unwrap_err();
    assert!(matches!(err, AttestError::QuoteRejected { .. }), "{err}");
    // Collateral for another platform (the TDX one) does not verify the SGX quote.
    let err = verify_quote(TeeKind::Sgx, SGX_QUOTE, TDX_COLLATERAL, &options).unwrap_err();
    assert!(matches!(err, AttestError::QuoteRejected { .. }), "{err}");
    // Not collateral at all: a typed error, not a panic.
    let err = verify_quote(TeeKind::Sgx, SGX_QUOTE, b"not json", &options).unwrap_err();
    assert!(matches!(err, AttestError::Malformed(_)), "{err}");
    let err = verify_quote(TeeKind::Sgx, SGX_QUOTE, b"", &options).unwrap_err();
    assert!(
        matches!(err, AttestError::MissingCollateral(TeeKind::Sgx)),
        "{err}"
    );
}

#[test]
fn expired_collateral_is_rejected_when_verifying_at_a_later_time() {
    let later = VerifyOptions::at(SAMPLES_EXPIRED_AT);
    let err = verify_quote(TeeKind::Sgx, SGX_QUOTE, SGX_COLLATERAL, &later).unwrap_err();
    assert!(matches!(err, AttestError::QuoteRejected { .. }), "{err}");
    let err = verify_quote(TeeKind::Tdx, TDX_QUOTE, TDX_COLLATERAL, &later).unwrap_err();
    assert!(matches!(err, AttestError::QuoteRejected { .. }), "{err}");
}

#[test]
fn a_platform_older_than_every_tcb_level_intel_lists_is_rejected() {
    // This real TDX quote comes from a platform whose TCB matches none of
    // the levels in Intel's (real, current) TCB info: Intel no longer
    // recognises that firmware at all.
    let options = VerifyOptions::at(OUTDATED_SAMPLE_VALID_AT);
    let err = verify_quote(
        TeeKind::Tdx,
        TDX_OUTDATED_QUOTE,
        TDX_OUTDATED_COLLATERAL,
        &options,
    )
    .unwrap_err();
    match err {
        AttestError::QuoteRejected { reason, .. } => {
            assert!(reason.contains("TCB level"), "{reason}")
        }
        other => panic!("expected QuoteRejected, got {other}"),
    }
}

#[test]
fn a_tcb_status_the_client_does_not_accept_is_refused() {
    // The SGX sample's platform is ConfigurationAndSWHardeningNeeded with
    // two advisories; a client accepting only UpToDate refuses it.
    let mut options = VerifyOptions::at(SAMPLES_VALID_AT);
    options.accepted_tcb = vec!["UpToDate".into()];
    match verify_quote(TeeKind::Sgx, SGX_QUOTE, SGX_COLLATERAL, &options).unwrap_err() {
        AttestError::TcbNotAccepted {
            status, advisories, ..
        } => {
            assert_eq!(status, "ConfigurationAndSWHardeningNeeded");
            assert_eq!(advisories, "INTEL-SA-00289,INTEL-SA-00615");
        }
        other => panic!("expected TcbNotAccepted, got {other}"),
    }
}

#[test]
fn a_quote_labelled_with_the_wrong_kind_is_rejected() {
    let options = VerifyOptions::at(SAMPLES_VALID_AT);
    let err = verify_quote(TeeKind::Tdx, SGX_QUOTE, SGX_COLLATERAL, &options).unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::QuoteRejected {
                kind: TeeKind::Tdx,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_wrong_expected_measurement_is_rejected_and_the_right_one_reaches_the_binding_check() {
    let options = VerifyOptions::at(SAMPLES_VALID_AT);
    let real = verify_quote(TeeKind::Sgx, SGX_QUOTE, SGX_COLLATERAL, &options)
        .unwrap()
        .measurement;
    let mut wrong = real.clone();
    wrong[0] ^= 0xff;
    let evidence = evidence(TeeKind::Sgx, SGX_QUOTE, SGX_COLLATERAL);
    let required = |m: Vec<u8>| Requirement {
        tee: TeeRequirement::Kind(TeeKind::Sgx),
        measurement: Some(m),
        min_snp_tcb: None,
    };

    let err = verify(&evidence, &[0; 32], &required(wrong), &options).unwrap_err();
    assert!(
        matches!(err, AttestError::MeasurementMismatch { .. }),
        "{err}"
    );
    // With the real MRENCLAVE the measurement passes; the sample's report
    // data was not made for this nonce, so the binding refuses it.
    let err = verify(&evidence, &[0; 32], &required(real), &options).unwrap_err();
    assert!(matches!(err, AttestError::BindingMismatch), "{err}");

    // Same for TDX and MRTD.
    let real = verify_quote(TeeKind::Tdx, TDX_QUOTE, TDX_COLLATERAL, &options)
        .unwrap()
        .measurement;
    let mut wrong = real.clone();
    wrong[47] ^= 1;
    let evidence = crate::evidence(TeeKind::Tdx, TDX_QUOTE, TDX_COLLATERAL);
    let required = Requirement {
        tee: TeeRequirement::AnyTee,
        measurement: Some(wrong),
        min_snp_tcb: None,
    };
    let err = verify(&evidence, &[0; 32], &required, &options).unwrap_err();
    assert!(
        matches!(err, AttestError::MeasurementMismatch { .. }),
        "{err}"
    );
}

#[test]
fn real_quotes_are_refused_for_a_wrong_nonce_or_another_boxs_key() {
    // The binding check runs against the quote's real, signed report data:
    // whatever nonce, identity or channel key a client expects, a quote
    // made for another request does not carry their hash.
    let options = VerifyOptions::at(SAMPLES_VALID_AT);
    for (kind, quote, collateral) in [
        (TeeKind::Sgx, SGX_QUOTE, SGX_COLLATERAL),
        (TeeKind::Tdx, TDX_QUOTE, TDX_COLLATERAL),
    ] {
        let facts = verify_quote(kind, quote, collateral, &options).unwrap();
        let base = evidence(kind, quote, collateral);
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
            assert_ne!(binding.report_data(), facts.report_data);
            let err = verify(evidence, &nonce, &Requirement::default(), &options).unwrap_err();
            assert!(
                matches!(err, AttestError::BindingMismatch),
                "{kind} {what}: {err}"
            );
        }
    }
}

#[test]
fn sev_snp_evidence_without_its_vcek_chain_is_refused() {
    let evidence = evidence(TeeKind::SevSnp, &[0; 1184], b"");
    let err = verify(
        &evidence,
        &[0; 32],
        &Requirement::default(),
        &VerifyOptions::at(SAMPLES_VALID_AT),
    )
    .unwrap_err();
    assert!(
        matches!(err, AttestError::MissingCollateral(TeeKind::SevSnp)),
        "{err}"
    );
}
