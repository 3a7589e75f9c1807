//! Asking a box to prove what it runs, and refusing it when it does not
//! prove what the client requires, before anything is uploaded.

use std::time::{SystemTime, UNIX_EPOCH};

pub use bento_attest::{AttestError, Requirement, SnpTcb, TeeKind, TeeRequirement, Verified};
use bento_attest::{Evidence, VerifyOptions};
use bento_protocol::{ATTEST_NONCE_LEN, Frame};

use crate::{ClientError, Connection, Target, remote};

impl Connection {
    /// Ask the box for evidence bound to a fresh nonce and verify it against
    /// `requirement` now. The onion identity in the evidence must be the one
    /// in `target.server` when that is an onion address.
    ///
    /// Without a requirement the evidence is still checked (a box answering
    /// with evidence for another nonce or another onion identity is refused),
    /// and [`Verified::describe`] says what it proves.
    pub async fn attest(
        &mut self,
        target: &Target,
        requirement: &Requirement,
    ) -> Result<Verified, ClientError> {
        let mut nonce = [0u8; ATTEST_NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| ClientError::Io(std::io::Error::other(format!("no randomness: {e}"))))?;
        self.send(&Frame::Attest { nonce }).await?;
        let evidence = match self.recv().await? {
            Frame::Attested { evidence } => Evidence::decode(&evidence)?,
            other => return Err(remote(other)),
        };
        // A clock before 1970 verifies nothing: collateral checks fail.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut options = VerifyOptions::at(now);
        options.dialed_identity = bento_attest::onion_identity(&target.server);
        Ok(bento_attest::verify(
            &evidence,
            &nonce,
            requirement,
            &options,
        )?)
    }

    /// Connect, then [`attest`](Self::attest): a box that does not prove
    /// `requirement` is refused with [`ClientError::Attestation`] before the
    /// caller can send it anything.
    pub async fn connect_attested(
        target: &Target,
        requirement: &Requirement,
    ) -> Result<(Connection, Verified), ClientError> {
        let mut conn = Connection::connect(target).await?;
        let verified = conn.attest(target, requirement).await?;
        Ok((conn, verified))
    }
}
