//! Kind `none`: the same binding path, proving nothing, and the policy
//! checks that refuse it.

use bento_attest::{
    AttestError, Binding, EvidenceSource, NoTee, Requirement, TeeKind, TeeRequirement,
    VerifyOptions, verify,
};

const NOW: u64 = 1_800_000_000;

fn binding(nonce: u8) -> Binding {
    Binding {
        nonce: [nonce; 32],
        onion_identity: [0xaa; 32],
        channel_key: [0xbb; 32],
    }
}

#[test]
fn none_evidence_for_this_nonce_verifies_and_says_the_operator_can_read_everything() {
    let evidence = NoTee.evidence(&binding(1), &[0x5a; 32]).unwrap();
    let verified = verify(
        &evidence,
        &[1; 32],
        &Requirement::default(),
        &VerifyOptions::at(NOW),
    )
    .unwrap();
    assert_eq!(verified.kind, TeeKind::None);
    assert_eq!(verified.channel_key, [0xbb; 32]);
    assert_eq!(verified.tee_measurement, None);
    let words = verified.describe().join("\n");
    assert!(words.contains("operator can read"), "{words}");
    assert!(words.contains("unproven"), "{words}");
}

#[test]
fn none_evidence_replayed_for_another_nonce_is_refused() {
    let evidence = NoTee.evidence(&binding(1), &[]).unwrap();
    let err = verify(
        &evidence,
        &[2; 32],
        &Requirement::default(),
        &VerifyOptions::at(NOW),
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BindingMismatch), "{err}");
}

#[test]
fn none_evidence_with_a_swapped_channel_key_or_identity_is_refused() {
    let mut evidence = NoTee.evidence(&binding(1), &[]).unwrap();
    evidence.channel_key[0] ^= 1;
    let err = verify(
        &evidence,
        &[1; 32],
        &Requirement::default(),
        &VerifyOptions::at(NOW),
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BindingMismatch), "{err}");

    let evidence = NoTee.evidence(&binding(1), &[]).unwrap();
    let mut options = VerifyOptions::at(NOW);
    options.dialed_identity = Some([0xcc; 32]);
    let err = verify(&evidence, &[1; 32], &Requirement::default(), &options).unwrap_err();
    assert!(matches!(err, AttestError::IdentityMismatch { .. }), "{err}");
    options.dialed_identity = Some([0xaa; 32]);
    let verified = verify(&evidence, &[1; 32], &Requirement::default(), &options).unwrap();
    assert!(verified.identity_checked);
}

#[test]
fn requiring_a_tee_or_a_measurement_refuses_none_evidence() {
    let evidence = NoTee.evidence(&binding(1), &[]).unwrap();
    for tee in [TeeRequirement::AnyTee, TeeRequirement::Kind(TeeKind::Sgx)] {
        let requirement = Requirement {
            tee,
            measurement: None,
            min_snp_tcb: None,
        };
        let err = verify(&evidence, &[1; 32], &requirement, &VerifyOptions::at(NOW)).unwrap_err();
        assert!(
            matches!(
                err,
                AttestError::TeeRequired {
                    offered: TeeKind::None,
                    ..
                }
            ),
            "{err}"
        );
    }
    let requirement = Requirement {
        tee: TeeRequirement::NotRequired,
        measurement: Some(vec![0; 32]),
        min_snp_tcb: None,
    };
    let err = verify(&evidence, &[1; 32], &requirement, &VerifyOptions::at(NOW)).unwrap_err();
    assert!(
        matches!(err, AttestError::MeasurementMismatch { .. }),
        "{err}"
    );
    // Asking for kind none explicitly is allowed (and proves nothing).
    let requirement = Requirement {
        tee: TeeRequirement::Kind(TeeKind::None),
        measurement: None,
        min_snp_tcb: None,
    };
    verify(&evidence, &[1; 32], &requirement, &VerifyOptions::at(NOW)).unwrap();
}

#[test]
fn none_evidence_with_a_short_report_is_malformed() {
    let mut evidence = NoTee.evidence(&binding(1), &[]).unwrap();
    evidence.quote.truncate(10);
    let err = verify(
        &evidence,
        &[1; 32],
        &Requirement::default(),
        &VerifyOptions::at(NOW),
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::Malformed(_)), "{err}");
}
