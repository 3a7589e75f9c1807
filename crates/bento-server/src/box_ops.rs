//! Operations shared by the native and the legacy protocol: storing a
//! function and starting a session, with every check and cap applied.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bento_policy::Limit;
use bento_protocol::{ErrorCode, Frame, FunctionId, InvokeToken, SessionToken};
use bento_worker::{InstanceOutcome, StartCall, StartRequest};

use crate::BoxState;
use crate::connection::check_filename;
use crate::function_store::{StoreError, StoredFunction};
use crate::session::{GlobalCounters, Session};

/// A refusal, as the protocol reports it.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn into_frame(self) -> Frame {
        Frame::error(self.code, self.message)
    }
}

/// How an instance that did not return normally is reported; `None` when
/// it returned.
pub(crate) fn outcome_refusal(outcome: &InstanceOutcome) -> Option<Refusal> {
    Some(match outcome {
        InstanceOutcome::Returned => return None,
        InstanceOutcome::LimitExceeded { limit, detail } => {
            let code = match limit {
                Limit::Memory => ErrorCode::LimitMemory,
                Limit::Cpu => ErrorCode::LimitCpu,
                Limit::WallTime => ErrorCode::LimitWallTime,
                _ => ErrorCode::LimitStack,
            };
            Refusal::new(code, format!("{limit} exceeded: {detail}"))
        }
        InstanceOutcome::Exception(traceback) => {
            Refusal::new(ErrorCode::FunctionException, traceback.clone())
        }
        InstanceOutcome::Killed => Refusal::new(ErrorCode::Killed, "the session was killed"),
        InstanceOutcome::Trap(message) => Refusal::new(ErrorCode::FunctionTrapped, message.clone()),
        InstanceOutcome::WorkerCrashed => Refusal::new(
            ErrorCode::WorkerCrashed,
            "the sandbox worker running this session died; the box has replaced it",
        ),
    })
}

impl BoxState {
    /// Check (size, file name, compiles in the sandbox) and persist a function.
    pub(crate) async fn store_function(
        self: &Arc<Self>,
        filename: String,
        source: String,
    ) -> Result<(FunctionId, InvokeToken), Refusal> {
        let max = self.config.max_source_bytes;
        if source.len() > max {
            return Err(Refusal::new(
                ErrorCode::InvalidFunction,
                format!(
                    "the source is {} bytes; this box accepts at most {max}",
                    source.len()
                ),
            ));
        }
        check_filename(&filename)
            .map_err(|reason| Refusal::new(ErrorCode::InvalidFunction, reason))?;
        match self.pool.check(source.clone(), filename.clone()).await {
            Ok(InstanceOutcome::Exception(text)) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidFunction,
                    format!("the source does not compile:\n{text}"),
                ));
            }
            Ok(other) => {
                if let Some(refusal) = outcome_refusal(&other) {
                    return Err(refusal);
                }
            }
            Err(e) => return Err(Refusal::new(ErrorCode::Internal, e.to_string())),
        }
        let state = self.clone();
        let stored =
            tokio::task::spawn_blocking(move || state.store.store(&filename, &source, "")).await;
        match stored {
            Ok(Ok(stored)) => {
                tracing::info!("stored a function");
                Ok(stored)
            }
            Ok(Err(e @ StoreError::Full { .. })) => {
                Err(Refusal::new(ErrorCode::StorageFull, e.to_string()))
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot store a function");
                Err(Refusal::new(
                    ErrorCode::Internal,
                    "the box could not store the function",
                ))
            }
            Err(_) => Err(Refusal::new(
                ErrorCode::Internal,
                "the box could not store the function",
            )),
        }
    }

    /// Start a fresh instance of `function` as a new session under `token`,
    /// within the box's instance and buffer caps.
    pub(crate) async fn start_session(
        &self,
        function: &StoredFunction,
        call: StartCall,
        token: SessionToken,
        frames_messages: bool,
    ) -> Result<Arc<Session>, Refusal> {
        let limits = self.config.limits.clone();
        reserve(
            &self.counters,
            self.config.max_instances,
            limits.output_buffer_bytes,
            self.config.max_buffered_bytes,
        )?;
        let session = Session::new(
            token,
            self.counters.clone(),
            limits.output_buffer_bytes,
            frames_messages,
            limits.wall(),
        );
        let request = StartRequest {
            source: function.source.clone(),
            filename: function.filename.clone(),
            call,
            limits,
        };
        let started = self
            .pool
            .start_instance_patiently(request, session.clone(), bento_worker::RESPAWN_PATIENCE)
            .await;
        match started {
            Ok(handle) => session.set_handle(handle),
            Err(e) => {
                // Never started: undo the instance count; dropping the
                // session releases its buffer reservation.
                self.counters
                    .running_instances
                    .fetch_sub(1, Ordering::Relaxed);
                return Err(Refusal::new(ErrorCode::Internal, e.to_string()));
            }
        }
        self.sessions.insert(session.clone());
        tracing::info!("started a session");
        Ok(session)
    }
}

/// Count one more instance and reserve its output buffer, or refuse.
fn reserve(
    counters: &GlobalCounters,
    max_instances: u64,
    buffer: u64,
    max_buffered: u64,
) -> Result<(), Refusal> {
    let running = counters.running_instances.fetch_add(1, Ordering::Relaxed);
    if running >= max_instances {
        counters.running_instances.fetch_sub(1, Ordering::Relaxed);
        return Err(Refusal::new(
            ErrorCode::TooManyInstances,
            format!("the box runs at most {max_instances} instances at once; try again later"),
        ));
    }
    let reserved = counters
        .reserved_buffer_bytes
        .fetch_add(buffer, Ordering::Relaxed);
    if reserved + buffer > max_buffered {
        counters
            .reserved_buffer_bytes
            .fetch_sub(buffer, Ordering::Relaxed);
        counters.running_instances.fetch_sub(1, Ordering::Relaxed);
        return Err(Refusal::new(
            ErrorCode::BufferCapReached,
            format!(
                "the box buffers at most {max_buffered} bytes of session output and that is reserved; try again later"
            ),
        ));
    }
    Ok(())
}
