//! Shaping an attached session's output (box → client) with the defense its
//! invoker chose: the narrow hook between `connection::attach` and
//! `bento-shaping`.
//!
//! The attach loop asks [`OutputShaper::due`] for the cells due now (padding,
//! or real output sent in place of padding), holds its ordinary output
//! while [`OutputShaper::holds_output`], reports what it sent, and sleeps
//! until [`OutputShaper::next_wakeup`] when it has nothing else to do.
//!
//! Nothing here logs the defense: which defense a session uses is as
//! private as its arguments.

use std::time::Instant;

use bento_policy::{Defense, Manifest, ShapingPolicy};
use bento_protocol::{ErrorCode, FrameType};
use bento_shaping::{CELL_LEN, Emit, Shaper, Side};
use bytes::{Bytes, BytesMut};

use crate::refusal::Refusal;
use crate::session::{Session, SessionState};

/// A manifest's `defense`, against the `[shaping]` policy: at store, at
/// `Run` and at every start (the policy may have changed since the store).
/// Refused with `defense_refused`, like an invoke's defense.
pub(crate) fn admit_manifest_defense(
    policy: &ShapingPolicy,
    manifest: &Manifest,
) -> Result<(), Refusal> {
    policy.admit_manifest(manifest.defense).map_err(|refused| {
        Refusal::new(
            ErrorCode::DefenseRefused,
            format!("the manifest asks for a defense: {refused}"),
        )
    })
}

/// The defense a new session is shaped with: the invoke's (`asked`, already
/// admitted by the policy) or the function's manifest's. The two must agree
/// when both are given: a function that asks to be shaped is never run
/// unshaped or otherwise shaped. A sealed session cannot be shaped yet (its
/// client reads sealed output frame by frame), so a sealed function whose
/// manifest asks for a defense is refused rather than run unshaped.
///
/// The messages never name a defense: they may end up in a log.
pub(crate) fn session_defense(
    asked: Option<Defense>,
    manifest: &str,
    sealed: bool,
) -> Result<Option<Defense>, Refusal> {
    // The manifest was admitted at store; a parse failure here is the
    // admission's to report, so it shapes nothing.
    let named = Manifest::from_toml(manifest)
        .ok()
        .and_then(|manifest| manifest.defense);
    match (asked, named) {
        (Some(asked), Some(named)) if asked != named => Err(Refusal::new(
            ErrorCode::DefenseRefused,
            "the function's manifest asks for another defense than this invoke; \
             ask for the same one, or none",
        )),
        (_, Some(_)) if sealed => Err(Refusal::new(
            ErrorCode::DefenseRefused,
            "the function's manifest asks for a defense, and sealed sessions cannot be shaped yet",
        )),
        (asked, named) => Ok(asked.or(named)),
    }
}

/// What the public status says about shaping: the defenses this box allows
/// (so clients can choose one) and its padding cap. Policy only: nothing
/// here depends on any session.
pub(crate) fn public_status(policy: &ShapingPolicy) -> serde_json::Value {
    serde_json::json!({
        "defenses": policy.defenses.iter().map(|d| d.name()).collect::<Vec<_>>(),
        "max_padding_mib": policy.max_padding_mib,
    })
}

/// One attachment's shaper.
pub(crate) struct OutputShaper {
    shaper: Shaper,
}

/// Cells due now, encoded, and the output bytes they carry.
pub(crate) struct DueCells {
    /// Wire bytes to write (whole cells).
    pub(crate) wire: BytesMut,
    /// Output bytes inside them, from the attachment's `sent` offset on.
    pub(crate) output_bytes: u64,
}

impl OutputShaper {
    /// A shaper for a new attachment; `opened` is when `Attached` went out
    /// (the first real cell, which starts the defenses' machines).
    pub(crate) fn new(
        defense: Defense,
        max_padding_bytes: u64,
        opened: Instant,
    ) -> Result<Self, bento_shaping::ShapingError> {
        let mut shaper = Shaper::new(defense, Side::Box, max_padding_bytes, opened)?;
        shaper.sent_normal(1, opened);
        Ok(Self { shaper })
    }

    /// Whether ordinary output must wait now (it still goes out inside
    /// [`OutputShaper::due`]'s cells).
    pub(crate) fn holds_output(&self, now: Instant) -> bool {
        self.shaper.is_blocking(now)
    }

    /// When the shaper next has cells due.
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        self.shaper.next_wakeup()
    }

    /// Ordinary frames of `wire_bytes` bytes went out.
    pub(crate) fn sent(&mut self, wire_bytes: usize, now: Instant) {
        self.shaper.sent_normal(wire_bytes, now);
    }

    /// The cells due by `now`, carrying output from offset `sent` of
    /// `state` where the defense lets real data take a padding slot.
    pub(crate) fn due(&mut self, now: Instant, state: &SessionState, sent: u64) -> DueCells {
        let waiting = state.produced().saturating_sub(sent);
        let emits = self.shaper.poll(now, waiting.div_ceil(CELL_LEN as u64));
        let mut wire = BytesMut::new();
        let data_cells = emits.iter().filter(|e| **e == Emit::Data).count();
        let mut output: Bytes = if data_cells > 0 {
            let chunks = Session::output_from(state, sent, data_cells * CELL_LEN);
            let mut joined = BytesMut::new();
            for chunk in chunks {
                joined.extend_from_slice(&chunk);
            }
            joined.freeze()
        } else {
            Bytes::new()
        };
        let mut output_bytes = 0u64;
        for emit in emits {
            match emit {
                Emit::Padding => bento_shaping::padding_cell(&mut wire),
                Emit::Data if !output.is_empty() => {
                    let n = bento_shaping::data_cell(&mut wire, FrameType::Output, &output);
                    let _ = output.split_to(n);
                    output_bytes += n as u64;
                }
                // The output the shaper counted on was already sent
                // otherwise: the slot is filled with padding instead.
                Emit::Data => bento_shaping::padding_cell(&mut wire),
            }
        }
        DueCells { wire, output_bytes }
    }
}
