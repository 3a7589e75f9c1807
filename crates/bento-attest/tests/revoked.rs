//! Revoked SGX collateral is refused.
//!
//! A CRL that revokes a real PCK certificate can only be signed with
//! Intel's key, so the real SGX sample quote is moved under a test CA whose
//! keys the test holds: the same quote (its enclave report and the
//! attestation key's signature untouched), the same real TCB info and QE
//! identity JSON, and a PCK certificate carrying the real PCK certificate's
//! SGX extension (FMSPC, CPUSVN, PCESVN), all re-signed under a generated
//! root, given to the verifier through dcap-qvl's custom-root API
//! (`VerifyOptions::dcap_root_ca`). The un-revoked variant verifies in full,
//! so the only thing a revoked variant changes is a CRL entry.

// Test helpers outside #[test] functions unwrap too: a panic is a failure.
#![allow(clippy::unwrap_used)]

use bento_attest::{AttestError, TeeKind, VerifyOptions, verify_quote};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams,
    CustomExtension, DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber, date_time_ymd,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::Value;

const SGX_QUOTE: &[u8] = include_bytes!("data/sgx_quote");
const SGX_COLLATERAL: &str = include_str!("data/sgx_quote_collateral.json");

/// 2025-06-20T00:00:00Z: inside the real TCB info's and QE identity's
/// windows, and inside the test certificates' and CRLs'.
const VALID_AT: u64 = 1_750_377_600;

/// Intel's SGX extension of a PCK certificate.
const SGX_EXTENSION_OID: &[u64] = &[1, 2, 840, 113_741, 1, 13, 1];

/// SGX quote v3 layout: 48-byte header, 384-byte enclave report, u32
/// signature-data length, ECDSA signature (64), attestation key (64), QE
/// report (384), QE report signature (64), QE auth data (u16 length),
/// certification data (u16 type, u32 length, PEM chain).
const QE_REPORT_AT: usize = 48 + 384 + 4 + 64 + 64;
const QE_REPORT_LEN: usize = 384;
const QE_REPORT_SIGNATURE_AT: usize = QE_REPORT_AT + QE_REPORT_LEN;

/// Serial numbers of the test certificates.
const PCK_SERIAL: u8 = 0x31;
const PLATFORM_CA_SERIAL: u8 = 0x21;
const TCB_SIGNER_SERIAL: u8 = 0x11;

struct TestCa {
    root: Certificate,
    root_key: KeyPair,
    platform_ca: Certificate,
    platform_ca_key: KeyPair,
    tcb_signer: Certificate,
    tcb_signer_key: KeyPair,
    pck: Certificate,
    pck_key: KeyPair,
}

fn params(name: &str, serial: u8, ca: bool) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Bento test {name}"));
    params.serial_number = Some(SerialNumber::from(vec![serial]));
    params.not_before = date_time_ymd(2025, 1, 1);
    params.not_after = date_time_ymd(2026, 1, 1);
    params.use_authority_key_identifier_extension = true;
    if ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    }
    params
}

/// The SGX extension (DER) of the real PCK certificate in the quote's
/// certification data.
fn real_sgx_extension() -> Vec<u8> {
    let auth_len_at = QE_REPORT_SIGNATURE_AT + 64;
    let auth_len = usize::from(u16::from_le_bytes([
        SGX_QUOTE[auth_len_at],
        SGX_QUOTE[auth_len_at + 1],
    ]));
    let size_at = auth_len_at + 2 + auth_len + 2;
    let size = u32::from_le_bytes(SGX_QUOTE[size_at..size_at + 4].try_into().unwrap());
    let cert_data = &SGX_QUOTE[size_at + 4..size_at + 4 + size as usize];
    // The chain is NUL-terminated, as the quoting library writes it.
    let end = cert_data.iter().rposition(|b| *b != 0).unwrap() + 1;
    let pck = x509_cert::Certificate::load_pem_chain(&cert_data[..end]).unwrap();
    let oid = x509_cert::der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1");
    pck[0]
        .tbs_certificate
        .extensions
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.extn_id == oid)
        .unwrap()
        .extn_value
        .as_bytes()
        .to_vec()
}

fn test_ca() -> TestCa {
    let root_key = KeyPair::generate().unwrap();
    let root = params("root CA", 1, true).self_signed(&root_key).unwrap();
    let platform_ca_key = KeyPair::generate().unwrap();
    let platform_ca = params("PCK platform CA", PLATFORM_CA_SERIAL, true)
        .signed_by(&platform_ca_key, &root, &root_key)
        .unwrap();
    let tcb_signer_key = KeyPair::generate().unwrap();
    let tcb_signer = params("TCB signer", TCB_SIGNER_SERIAL, false)
        .signed_by(&tcb_signer_key, &root, &root_key)
        .unwrap();
    let pck_key = KeyPair::generate().unwrap();
    let mut pck_params = params("PCK", PCK_SERIAL, false);
    pck_params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            SGX_EXTENSION_OID,
            real_sgx_extension(),
        ));
    let pck = pck_params
        .signed_by(&pck_key, &platform_ca, &platform_ca_key)
        .unwrap();
    TestCa {
        root,
        root_key,
        platform_ca,
        platform_ca_key,
        tcb_signer,
        tcb_signer_key,
        pck,
        pck_key,
    }
}

/// ECDSA P-256 over `message`, as Intel writes it: r || s, 64 bytes.
fn sign(key: &KeyPair, message: &[u8]) -> Vec<u8> {
    let rng = SystemRandom::new();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
            .unwrap();
    pair.sign(&rng, message).unwrap().as_ref().to_vec()
}

/// A CRL by `issuer` revoking `serials`.
fn crl(issuer: &Certificate, key: &KeyPair, serials: &[u8]) -> Vec<u8> {
    CertificateRevocationListParams {
        this_update: date_time_ymd(2025, 6, 1),
        next_update: date_time_ymd(2025, 12, 1),
        crl_number: SerialNumber::from(vec![1]),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from(vec![*serial]),
                revocation_time: date_time_ymd(2025, 6, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer, key)
    .unwrap()
    .der()
    .to_vec()
}

/// The quote with its QE report re-signed by the test PCK key, and the
/// collateral under the test CA, with the CRLs revoking what is asked.
fn under_test_ca(ca: &TestCa, root_revokes: &[u8], platform_revokes: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut quote = SGX_QUOTE.to_vec();
    let qe_report = &SGX_QUOTE[QE_REPORT_AT..QE_REPORT_AT + QE_REPORT_LEN];
    quote[QE_REPORT_SIGNATURE_AT..QE_REPORT_SIGNATURE_AT + 64]
        .copy_from_slice(&sign(&ca.pck_key, qe_report));

    let mut collateral: Value = serde_json::from_str(SGX_COLLATERAL).unwrap();
    let tcb_info = collateral["tcb_info"].as_str().unwrap().to_owned();
    let qe_identity = collateral["qe_identity"].as_str().unwrap().to_owned();
    let root = ca.root.pem();
    let signer_chain = format!("{}{root}", ca.tcb_signer.pem());
    collateral["tcb_info_signature"] =
        hex::encode(sign(&ca.tcb_signer_key, tcb_info.as_bytes())).into();
    collateral["qe_identity_signature"] =
        hex::encode(sign(&ca.tcb_signer_key, qe_identity.as_bytes())).into();
    collateral["tcb_info_issuer_chain"] = signer_chain.clone().into();
    collateral["qe_identity_issuer_chain"] = signer_chain.into();
    collateral["pck_crl_issuer_chain"] = format!("{}{root}", ca.platform_ca.pem()).into();
    collateral["root_ca_crl"] = hex::encode(crl(&ca.root, &ca.root_key, root_revokes)).into();
    collateral["pck_crl"] =
        hex::encode(crl(&ca.platform_ca, &ca.platform_ca_key, platform_revokes)).into();
    // dcap-qvl prefers this chain to the one in the quote.
    collateral["pck_certificate_chain"] =
        format!("{}{}{root}", ca.pck.pem(), ca.platform_ca.pem()).into();
    (quote, serde_json::to_vec(&collateral).unwrap())
}

fn options(ca: &TestCa) -> VerifyOptions {
    let mut options = VerifyOptions::at(VALID_AT);
    options.dcap_root_ca = Some(ca.root.der().to_vec());
    options
}

fn rejection(ca: &TestCa, root_revokes: &[u8], platform_revokes: &[u8]) -> String {
    let (quote, collateral) = under_test_ca(ca, root_revokes, platform_revokes);
    match verify_quote(TeeKind::Sgx, &quote, &collateral, &options(ca)) {
        Err(AttestError::QuoteRejected {
            kind: TeeKind::Sgx,
            reason,
        }) => reason,
        other => panic!("expected QuoteRejected, got {other:?}"),
    }
}

#[test]
fn the_real_quote_moved_under_a_test_ca_verifies_when_nothing_is_revoked() {
    // The control: without a revocation the construction is a valid chain,
    // so the refusals below are the CRL entries' doing.
    let ca = test_ca();
    let (quote, collateral) = under_test_ca(&ca, &[], &[]);
    let facts = verify_quote(TeeKind::Sgx, &quote, &collateral, &options(&ca)).unwrap();
    assert_eq!(facts.tcb_status, "ConfigurationAndSWHardeningNeeded");
    assert_eq!(&facts.report_data[..], &SGX_QUOTE[48 + 320..48 + 384]);
    // The same collateral is refused by a client trusting Intel's root only.
    let err = verify_quote(
        TeeKind::Sgx,
        &quote,
        &collateral,
        &VerifyOptions::at(VALID_AT),
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::QuoteRejected { .. }), "{err}");
}

#[test]
fn a_pck_certificate_on_the_pck_crl_is_rejected() {
    let ca = test_ca();
    let reason = rejection(&ca, &[], &[PCK_SERIAL]);
    assert!(reason.contains("Revoked"), "{reason}");
    // Another serial on the same CRL revokes nothing here.
    let (quote, collateral) = under_test_ca(&ca, &[], &[PCK_SERIAL + 1]);
    assert!(verify_quote(TeeKind::Sgx, &quote, &collateral, &options(&ca)).is_ok());
}

#[test]
fn a_revoked_platform_ca_or_tcb_signer_is_rejected() {
    let ca = test_ca();
    // The CA that issued the PCK certificate, on the root's CRL.
    let reason = rejection(&ca, &[PLATFORM_CA_SERIAL], &[]);
    assert!(reason.contains("Revoked"), "{reason}");
    // The certificate that signs the TCB info and QE identity.
    let reason = rejection(&ca, &[TCB_SIGNER_SERIAL], &[]);
    assert!(reason.contains("Revoked"), "{reason}");
}

#[test]
fn a_pck_crl_not_signed_by_the_platform_ca_is_rejected() {
    // A box that swaps the PCK CRL for one that omits the revocation but is
    // issued by another CA (here the root) gives no authoritative CRL for
    // the PCK certificate: its status is unknown, and that is refused.
    let ca = test_ca();
    let (quote, collateral) = under_test_ca(&ca, &[], &[PCK_SERIAL]);
    let mut collateral: Value = serde_json::from_slice(&collateral).unwrap();
    collateral["pck_crl"] = hex::encode(crl(&ca.root, &ca.root_key, &[])).into();
    let collateral = serde_json::to_vec(&collateral).unwrap();
    let err = verify_quote(TeeKind::Sgx, &quote, &collateral, &options(&ca)).unwrap_err();
    assert!(matches!(err, AttestError::QuoteRejected { .. }), "{err}");
}
