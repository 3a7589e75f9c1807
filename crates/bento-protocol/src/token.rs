//! Capability tokens and function identifiers.
//!
//! Tokens are 256-bit random values. They are compared in constant time and
//! never printed by `Debug`, so they cannot leak into logs by accident; only
//! [`InvokeToken::to_hex`] (for showing the token to its owner) reveals one.

use subtle::ConstantTimeEq;

/// Length of every token and identifier, in bytes.
pub const TOKEN_BYTES: usize = 32;

/// A token string that is not 64 hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {kind} is 64 hexadecimal digits; got {got_len} characters{hint}")]
pub struct TokenParseError {
    kind: &'static str,
    got_len: usize,
    hint: &'static str,
}

fn parse_hex(kind: &'static str, text: &str) -> Result<[u8; TOKEN_BYTES], TokenParseError> {
    let text = text.trim();
    let mut out = [0u8; TOKEN_BYTES];
    hex::decode_to_slice(text, &mut out).map_err(|_| TokenParseError {
        kind,
        got_len: text.chars().count(),
        hint: if text.len() == 2 * TOKEN_BYTES {
            " with a non-hexadecimal digit"
        } else {
            ""
        },
    })?;
    Ok(out)
}

macro_rules! secret_token {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name([u8; TOKEN_BYTES]);

        impl $name {
            /// A fresh random token from the operating system's CSPRNG.
            pub fn generate() -> Result<Self, getrandom::Error> {
                let mut bytes = [0u8; TOKEN_BYTES];
                getrandom::fill(&mut bytes)?;
                Ok(Self(bytes))
            }

            /// The token from its raw bytes.
            pub fn from_bytes(bytes: [u8; TOKEN_BYTES]) -> Self {
                Self(bytes)
            }

            /// The raw bytes (for hashing and for the wire).
            pub fn as_bytes(&self) -> &[u8; TOKEN_BYTES] {
                &self.0
            }

            /// The token as 64 lowercase hex digits, for its owner only.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parse 64 hex digits.
            pub fn from_hex(text: &str) -> Result<Self, TokenParseError> {
                parse_hex($kind, text).map(Self)
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0.ct_eq(&other.0).into()
            }
        }
        impl Eq for $name {}

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "(<secret>)"))
            }
        }
    };
}

secret_token!(
    /// Secret capability to invoke one stored function.
    InvokeToken,
    "invoke token"
);
secret_token!(
    /// Secret capability to attach to, and kill, one session.
    SessionToken,
    "session token"
);
secret_token!(
    /// Secret capability to open a channel to a running instance's service
    /// (`api.accept()`); its invoker hands it to whoever should connect.
    ServiceToken,
    "service token"
);

/// Public content hash identifying a stored function (SHA-256 of its
/// filename, source and manifest).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FunctionId(pub [u8; TOKEN_BYTES]);

impl FunctionId {
    /// The identifier as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, TokenParseError> {
        parse_hex("function id", text).map(Self)
    }
}

impl std::fmt::Debug for FunctionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FunctionId({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_differ_and_round_trip_through_hex() {
        let a = SessionToken::generate().unwrap();
        let b = SessionToken::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(SessionToken::from_hex(&a.to_hex()).unwrap(), a);
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let token = InvokeToken::from_bytes([0xab; TOKEN_BYTES]);
        let debug = format!("{token:?}");
        assert!(!debug.contains("ab"), "{debug}");
    }

    #[test]
    fn malformed_token_text_is_rejected_with_its_length() {
        let err = InvokeToken::from_hex("../../etc/passwd").unwrap_err();
        assert!(err.to_string().contains("64 hexadecimal digits"), "{err}");
        assert!(err.to_string().contains("got 16"), "{err}");
        assert!(InvokeToken::from_hex(&"g".repeat(64)).is_err());
    }
}
