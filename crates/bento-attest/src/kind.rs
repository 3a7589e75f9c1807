//! The kinds of evidence a box can offer.

use std::fmt;
use std::str::FromStr;

/// A trusted execution environment, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TeeKind {
    /// No TEE: the operator can read and change everything the worker does.
    None,
    /// Intel SGX enclave (DCAP quote), e.g. the worker under Gramine.
    Sgx,
    /// Intel TDX trust domain (DCAP quote): a confidential VM.
    Tdx,
    /// AMD SEV-SNP confidential VM (attestation report signed by the VCEK).
    SevSnp,
}

/// A kind name that is none of `none`, `sgx`, `tdx`, `sev-snp`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TEE kind {0:?} (expected none, sgx, tdx or sev-snp)")]
pub struct UnknownTeeKind(pub String);

impl TeeKind {
    /// Every kind, in wire-code order.
    pub const ALL: [TeeKind; 4] = [TeeKind::None, TeeKind::Sgx, TeeKind::Tdx, TeeKind::SevSnp];

    /// The kind's byte in the evidence layout.
    pub fn code(self) -> u8 {
        match self {
            TeeKind::None => 0,
            TeeKind::Sgx => 1,
            TeeKind::Tdx => 2,
            TeeKind::SevSnp => 3,
        }
    }

    /// The kind with this evidence byte.
    pub fn from_code(code: u8) -> Option<TeeKind> {
        TeeKind::ALL.into_iter().find(|kind| kind.code() == code)
    }

    /// The kind's name on the command line and in docs.
    pub fn name(self) -> &'static str {
        match self {
            TeeKind::None => "none",
            TeeKind::Sgx => "sgx",
            TeeKind::Tdx => "tdx",
            TeeKind::SevSnp => "sev-snp",
        }
    }

    /// Whether this kind is a TEE at all.
    pub fn is_tee(self) -> bool {
        self != TeeKind::None
    }
}

impl fmt::Display for TeeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TeeKind {
    type Err = UnknownTeeKind;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        TeeKind::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownTeeKind(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name_and_code() {
        for kind in TeeKind::ALL {
            assert_eq!(kind.name().parse::<TeeKind>(), Ok(kind));
            assert_eq!(TeeKind::from_code(kind.code()), Some(kind));
        }
        assert!("sev".parse::<TeeKind>().is_err());
        assert_eq!(TeeKind::from_code(4), None);
    }
}
