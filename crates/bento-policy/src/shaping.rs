//! Traffic-analysis defenses a session may ask the box to shape its output
//! with, and the operator's bounds on them (`[shaping]` in the box policy).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// A named defense. Parameters are fixed by the box (see
/// `bento-shaping`), never by the user: everyone who picks `front` looks
/// alike on the wire, which is the point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Defense {
    /// FRONT (Gong and Wang, USENIX Security 2020): a Rayleigh-shaped burst
    /// of padding early in the session; never delays output.
    Front,
    /// Tamaraw (Cai et al., CCS 2014): output at one cell per 5 ms, padding
    /// when there is nothing to send, with a soft stop.
    Tamaraw,
    /// RegulaTor (Holland and Hopper, PETS 2022): a decaying send rate
    /// restarted on surges, with a padding budget.
    Regulator,
    /// Constant rate for as long as the session is attached: one cell per
    /// 10 ms whatever the function does (Cover without gaps).
    Constant,
}

impl Defense {
    /// Every defense, in the order documented.
    pub const ALL: [Defense; 4] = [
        Defense::Front,
        Defense::Tamaraw,
        Defense::Regulator,
        Defense::Constant,
    ];

    /// The name used on the wire (`Invoke`), in policies and on the command
    /// line.
    pub fn name(self) -> &'static str {
        match self {
            Defense::Front => "front",
            Defense::Tamaraw => "tamaraw",
            Defense::Regulator => "regulator",
            Defense::Constant => "constant",
        }
    }

    /// The defense with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl std::fmt::Display for Defense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Default of `[shaping] max_padding_mib`.
pub const DEFAULT_MAX_PADDING_MIB: u64 = 64;

/// The operator's bounds on shaping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingPolicy {
    /// Defenses a session may ask for (optional: all of them). An empty
    /// list turns shaping off.
    #[serde(default = "all_defenses")]
    pub defenses: BTreeSet<Defense>,
    /// Padding one attachment may send, MiB (optional: 64). Beyond it the
    /// defense keeps pacing real output but sends no more padding, so a
    /// session cannot make the box waste more bandwidth than this.
    #[serde(default = "default_max_padding_mib")]
    pub max_padding_mib: u64,
}

fn all_defenses() -> BTreeSet<Defense> {
    Defense::ALL.into_iter().collect()
}

fn default_max_padding_mib() -> u64 {
    DEFAULT_MAX_PADDING_MIB
}

impl Default for ShapingPolicy {
    fn default() -> Self {
        Self {
            defenses: all_defenses(),
            max_padding_mib: DEFAULT_MAX_PADDING_MIB,
        }
    }
}

impl ShapingPolicy {
    /// The padding cap in bytes.
    pub fn max_padding_bytes(&self) -> u64 {
        self.max_padding_mib.saturating_mul(1024 * 1024)
    }

    /// A manifest's `defense` (none: nothing to check), if this policy
    /// allows it: at store and start at the box, and in `bento policy
    /// check`.
    pub fn admit_manifest(&self, defense: Option<Defense>) -> Result<(), DefenseRefused> {
        match defense {
            Some(defense) if !self.defenses.contains(&defense) => {
                Err(DefenseRefused::NotAllowed { defense })
            }
            _ => Ok(()),
        }
    }

    /// The defense a session asked for by name, if this policy allows it.
    pub fn admit(&self, name: &str) -> Result<Defense, DefenseRefused> {
        let defense = Defense::from_name(name).ok_or_else(|| DefenseRefused::Unknown {
            name: name.chars().take(64).collect(),
        })?;
        if self.defenses.contains(&defense) {
            Ok(defense)
        } else {
            Err(DefenseRefused::NotAllowed { defense })
        }
    }
}

/// Why a session's defense was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefenseRefused {
    /// Not a defense this Bento knows.
    #[error("unknown defense {name:?}; known defenses: front, tamaraw, regulator, constant")]
    Unknown {
        /// The name asked for (at most 64 characters of it).
        name: String,
    },
    /// Known, but the box's policy does not allow it.
    #[error("this box's policy does not allow the defense {defense}")]
    NotAllowed {
        /// The defense.
        defense: Defense,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defense_name_round_trips() {
        for defense in Defense::ALL {
            assert_eq!(Defense::from_name(defense.name()), Some(defense));
            let toml_name: String = toml::Value::try_from(defense)
                .unwrap()
                .as_str()
                .unwrap()
                .into();
            assert_eq!(toml_name, defense.name());
        }
    }

    #[test]
    fn unknown_and_forbidden_defenses_are_refused_with_their_reason() {
        let policy = ShapingPolicy {
            defenses: [Defense::Front].into_iter().collect(),
            ..ShapingPolicy::default()
        };
        assert_eq!(policy.admit("front"), Ok(Defense::Front));
        assert_eq!(
            policy.admit("tamaraw"),
            Err(DefenseRefused::NotAllowed {
                defense: Defense::Tamaraw
            })
        );
        assert!(matches!(
            policy.admit("Front"),
            Err(DefenseRefused::Unknown { .. })
        ));
        // A manifest's defense is bounded by the same list.
        assert_eq!(policy.admit_manifest(None), Ok(()));
        assert_eq!(policy.admit_manifest(Some(Defense::Front)), Ok(()));
        assert_eq!(
            policy.admit_manifest(Some(Defense::Constant)),
            Err(DefenseRefused::NotAllowed {
                defense: Defense::Constant
            })
        );
        // A hostile name is not echoed in full.
        match policy.admit(&"x".repeat(200)) {
            Err(DefenseRefused::Unknown { name }) => assert_eq!(name.len(), 64),
            other => panic!("{other:?}"),
        }
    }
}
