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

use bento_policy::Defense;
use bento_protocol::FrameType;
use bento_shaping::{CELL_LEN, Emit, Shaper, Side};
use bytes::{Bytes, BytesMut};

use crate::session::{Session, SessionState};

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
