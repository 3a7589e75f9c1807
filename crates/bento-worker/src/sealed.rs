//! The worker's end of the sealed channel: opening a sealed function and
//! call with the worker's channel secret, opening input records and sealing
//! output records and error text, so that the server process relays only
//! ciphertext (docs/attestation.md, "The sealed channel").

use std::sync::Mutex;

use bento_attest::{ChannelSecret, ReplySealer, SessionKeys};
use bytes::Bytes;

use bento_worker_contract::{InstanceOutcome, StartCall, StartRequest};

/// One sealed instance's keys and record counters.
pub(crate) struct SealedInstance {
    /// Store checks: seals the syntax error (sessions seal theirs with the
    /// session's outcome key).
    reply: Option<ReplySealer>,
    /// Invocations: the session's input and output keys.
    session: Option<SessionKeys>,
    state: Mutex<RecordState>,
}

#[derive(Default)]
struct RecordState {
    /// Offset in the session's output stream of the next record.
    output_offset: u64,
    /// Sequence number of the last input record opened.
    last_input: u64,
    /// Why the instance was stopped for bad sealed input.
    rejected: Option<String>,
}

/// Open `request`'s sealed parts in place (source, file name, call).
/// `Ok(None)` for an unsealed request; `Err` says why a sealed one cannot
/// run, without any plaintext.
pub(crate) fn open_request(
    secret: Option<&ChannelSecret>,
    request: &mut StartRequest,
) -> Result<Option<SealedInstance>, String> {
    let Some(sealed) = request.sealed.take() else {
        return match request.call {
            StartCall::SealedEntry { .. } => Err("a sealed call needs a sealed function".into()),
            _ => Ok(None),
        };
    };
    let Some(secret) = secret else {
        return Err("this worker holds no sealed-channel key".into());
    };
    let envelope =
        hex::decode(&sealed.envelope).map_err(|_| "the sealed function is not hex".to_owned())?;
    let (function, reply) = secret
        .open_function(&envelope, &sealed.manifest)
        .map_err(|e| format!("the sealed function: {e}"))?;
    request.source = function.source;
    request.filename = function.filename;
    let (reply, session) = match &request.call {
        StartCall::Check => (Some(reply), None),
        StartCall::SealedEntry { envelope } => {
            let envelope =
                hex::decode(envelope).map_err(|_| "the sealed call is not hex".to_owned())?;
            let (call, keys) = secret
                .open_call(&envelope)
                .map_err(|e| format!("the sealed call: {e}"))?;
            request.call = StartCall::Entry {
                entry: call.entry,
                args_json: call.args_json,
            };
            (None, Some(keys))
        }
        _ => return Err("a sealed function is invoked only with a sealed call".into()),
    };
    Ok(Some(SealedInstance {
        reply,
        session,
        state: Mutex::default(),
    }))
}

impl SealedInstance {
    fn state(&self) -> std::sync::MutexGuard<'_, RecordState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The output record for `data`, at the current stream offset.
    pub(crate) fn seal_output(&self, data: &[u8]) -> Bytes {
        let Some(keys) = &self.session else {
            // A store check has no session; nothing is ever sent.
            return Bytes::new();
        };
        let mut state = self.state();
        let record = keys.seal_output(state.output_offset, data);
        state.output_offset += record.len() as u64;
        Bytes::from(record)
    }

    /// The plaintext of an input record, or why it is refused (the
    /// instance is then stopped and ends with `SealRejected`).
    pub(crate) fn open_input(&self, record: &[u8]) -> Result<Bytes, String> {
        let Some(keys) = &self.session else {
            return Err("input for a store check".into());
        };
        let mut state = self.state();
        let mut last = state.last_input;
        match keys.open_input(&mut last, record) {
            Ok(plaintext) => {
                state.last_input = last;
                Ok(Bytes::from(plaintext))
            }
            Err(e) => {
                let reason = format!("sealed input refused: {e}");
                state.rejected.get_or_insert(reason.clone());
                Err(reason)
            }
        }
    }

    /// The outcome the server sees: text that may quote the source or
    /// arguments is sealed to the client; a rejection replaces the kill it
    /// caused.
    pub(crate) fn seal_outcome(&self, outcome: InstanceOutcome) -> InstanceOutcome {
        if let Some(reason) = self.state().rejected.clone() {
            return InstanceOutcome::SealRejected(reason);
        }
        let seal = |text: &str| match (&self.session, &self.reply) {
            (Some(keys), _) => keys.outcome().seal(text),
            (None, Some(reply)) => reply.seal(text),
            (None, None) => String::new(),
        };
        match outcome {
            InstanceOutcome::Exception(text) => InstanceOutcome::Exception(seal(&text)),
            InstanceOutcome::PolicyRefused(text) => InstanceOutcome::PolicyRefused(seal(&text)),
            InstanceOutcome::Trap(text) => InstanceOutcome::Trap(seal(&text)),
            other => other,
        }
    }
}
