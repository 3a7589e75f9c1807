//! Operations shared by the native and the legacy protocol: storing a
//! function and starting a session, with every check and cap applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bento_policy::{Capability, Grant, Limit, Manifest, StorageGrant, admit};
use bento_protocol::{ErrorCode, Frame, FunctionId, InvokeToken, ServiceToken, SessionToken};
use bento_worker_contract::{InstanceOutcome, SealedFunctionRef, StartCall, StartRequest};

use crate::box_state::BoxState;
use crate::function_store::{StoreError, StoredFunction, check_filename};
pub(crate) use crate::refusal::Refusal;
use crate::session::{OnionPublisher, Service, Session, SessionExtras};

/// The refusal a store's trial compile ends in, if any: an exception is
/// `invalid_function` with `exception(text)` as its message, any other
/// unusual end as [`outcome_refusal`] says.
pub(crate) fn trial_refusal<E: std::fmt::Display>(
    outcome: Result<InstanceOutcome, E>,
    exception: impl FnOnce(String) -> String,
) -> Result<(), Refusal> {
    match outcome {
        Ok(InstanceOutcome::Exception(text)) => {
            Err(Refusal::new(ErrorCode::InvalidFunction, exception(text)))
        }
        Ok(other) => outcome_refusal(&other).map_or(Ok(()), Err),
        Err(e) => Err(Refusal::new(ErrorCode::Internal, e.to_string())),
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
        InstanceOutcome::PolicyRefused(traceback) => {
            Refusal::new(ErrorCode::PolicyRefused, traceback.clone())
        }
        InstanceOutcome::Killed => Refusal::new(ErrorCode::Killed, "the session was killed"),
        InstanceOutcome::Trap(message) => Refusal::new(ErrorCode::FunctionTrapped, message.clone()),
        InstanceOutcome::WorkerCrashed => Refusal::new(
            ErrorCode::WorkerCrashed,
            "the sandbox worker running this session died; the box has replaced it",
        ),
        InstanceOutcome::SealRejected(reason) => {
            Refusal::new(ErrorCode::SealedRejected, reason.clone())
        }
    })
}

impl BoxState {
    /// Check a manifest against the box's policy: the grant, or a refusal
    /// listing every violation.
    pub(crate) fn admit_manifest(&self, manifest: &str) -> Result<Grant, Refusal> {
        let manifest = Manifest::from_toml(manifest)
            .map_err(|e| Refusal::new(ErrorCode::ManifestRejected, e.to_string()))?;
        crate::shaping::admit_manifest_defense(&self.config.policy.shaping, &manifest)?;
        admit(&manifest, &self.config.policy, &self.own_addresses).map_err(|violations| {
            let list: Vec<String> = violations.iter().map(|v| format!("  - {v}")).collect();
            Refusal::new(
                ErrorCode::ManifestRejected,
                format!(
                    "the manifest asks for more than this box allows:\n{}",
                    list.join("\n")
                ),
            )
        })
    }

    /// [`BoxState::store_function_for`] with the box's default lifetime,
    /// for the research prototype's protocol, which cannot carry one.
    pub(crate) async fn store_function(
        self: &Arc<Self>,
        filename: String,
        source: String,
        manifest: String,
    ) -> Result<(FunctionId, InvokeToken), Refusal> {
        self.store_function_for(filename, source, manifest, None)
            .await
            .map(|stored| (stored.function_id, stored.invoke_token))
    }

    /// The lifetime a client's request (seconds; 0 or absent for the
    /// default) resolves to under the policy, or `invalid_lifetime`.
    pub(crate) fn resolve_lifetime(&self, lifetime_s: Option<u64>) -> Result<Duration, Refusal> {
        let max = self.config.max_function_lifetime();
        match lifetime_s {
            None | Some(0) => Ok(self.config.default_function_lifetime()),
            Some(s) if s <= max.as_secs() => Ok(Duration::from_secs(s)),
            Some(s) => Err(Refusal::new(
                ErrorCode::InvalidLifetime,
                format!(
                    "a lifetime of {s} s was asked for; this box keeps stored functions at most {} s ({} h)",
                    max.as_secs(),
                    max.as_secs() / 3600
                ),
            )),
        }
    }

    /// Check (lifetime, size, file name, manifest against the policy,
    /// compiles in the sandbox) and persist a function for the lifetime
    /// asked for (seconds; 0 or `None` for the box's default).
    pub(crate) async fn store_function_for(
        self: &Arc<Self>,
        filename: String,
        source: String,
        manifest: String,
        lifetime_s: Option<u64>,
    ) -> Result<Stored, Refusal> {
        let result = self
            .store_checked(filename, source, manifest, lifetime_s)
            .await;
        if result.is_ok() {
            self.metrics.stores.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn store_checked(
        self: &Arc<Self>,
        filename: String,
        source: String,
        manifest: String,
        lifetime_s: Option<u64>,
    ) -> Result<Stored, Refusal> {
        let lifetime = self.resolve_lifetime(lifetime_s)?;
        self.check_upload(&filename, &source, &manifest)?;
        self.admit()?;
        trial_refusal(
            self.pool.check(source.clone(), filename.clone()).await,
            |text| format!("the source does not compile:\n{text}"),
        )?;
        self.persist(filename, source, manifest, lifetime).await
    }

    /// Persist a checked function for `lifetime`.
    pub(crate) async fn persist(
        self: &Arc<Self>,
        filename: String,
        source: String,
        manifest: String,
        lifetime: Duration,
    ) -> Result<Stored, Refusal> {
        let state = self.clone();
        let stored = tokio::task::spawn_blocking(move || {
            state.store.store(&filename, &source, &manifest, lifetime)
        })
        .await;
        match stored {
            Ok(Ok((function_id, invoke_token, _))) => {
                // Per-event lines make a timeline of users: debug only.
                tracing::debug!("stored a function");
                Ok(Stored {
                    function_id,
                    invoke_token,
                    lifetime,
                })
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

    /// The checks every upload passes, stored or run once: sizes, file
    /// name, and the manifest against the policy.
    pub(crate) fn check_upload(
        &self,
        filename: &str,
        source: &str,
        manifest: &str,
    ) -> Result<(), Refusal> {
        let max = self.config.max_source_bytes();
        if source.len() > max {
            return Err(Refusal::new(
                ErrorCode::InvalidFunction,
                format!(
                    "the source is {} bytes; this box accepts at most {max}",
                    source.len()
                ),
            ));
        }
        check_filename(filename)
            .map_err(|reason| Refusal::new(ErrorCode::InvalidFunction, reason))?;
        self.check_manifest(manifest)
    }

    /// The manifest of an upload, plain or sealed: its size, then what it
    /// asks for against the policy.
    pub(crate) fn check_manifest(&self, manifest: &str) -> Result<(), Refusal> {
        let max = self.config.max_source_bytes();
        if manifest.len() > max {
            return Err(Refusal::new(
                ErrorCode::ManifestRejected,
                format!(
                    "the manifest is {} bytes; this box accepts at most {max}",
                    manifest.len()
                ),
            ));
        }
        self.admit_manifest(manifest)?;
        Ok(())
    }

    /// Give the function under `token` a new lifetime (seconds from now; 0
    /// for the default); returns the lifetime granted.
    pub(crate) async fn renew_function(
        self: &Arc<Self>,
        token: InvokeToken,
        lifetime_s: u64,
    ) -> Result<Duration, Refusal> {
        let lifetime = self.resolve_lifetime(Some(lifetime_s))?;
        let state = self.clone();
        let renewed = tokio::task::spawn_blocking(move || state.store.renew(&token, lifetime))
            .await
            .map_err(|_| internal_store_refusal())?;
        renewed.map_err(store_refusal)?;
        self.metrics.renewals.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("renewed a stored function");
        Ok(lifetime)
    }

    /// Delete this store's record of the function under `token`.
    pub(crate) async fn delete_function(
        self: &Arc<Self>,
        token: InvokeToken,
    ) -> Result<(), Refusal> {
        let state = self.clone();
        let deleted = tokio::task::spawn_blocking(move || state.store.delete(&token))
            .await
            .map_err(|_| internal_store_refusal())?;
        deleted.map_err(store_refusal)?;
        self.metrics.deletions.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("deleted a stored function");
        Ok(())
    }

    /// A fresh session of `function` under a new token, its output shaped
    /// by `defense` (the invoke's) or by its manifest's (see
    /// `shaping::session_defense`): the `Invoked` reply, or the refusal as
    /// an error frame. What `Invoke`, `Run` and `SealedInvoke` answer.
    pub(crate) async fn start_invoked(
        &self,
        function: &StoredFunction,
        call: StartCall,
        defense: Option<bento_policy::Defense>,
    ) -> Frame {
        let sealed = matches!(call, StartCall::SealedEntry { .. });
        let defense = match crate::shaping::session_defense(defense, &function.manifest, sealed) {
            Ok(defense) => defense,
            Err(refusal) => return refusal.into_frame(),
        };
        let Ok(session_token) = SessionToken::generate() else {
            return Frame::error(ErrorCode::Internal, "cannot generate a token");
        };
        match self
            .start_session(function, call, session_token.clone(), false)
            .await
        {
            Ok((session, service_token)) => {
                if let Some(defense) = defense {
                    session.set_defense(defense);
                }
                Frame::Invoked {
                    session_token,
                    service_token,
                }
            }
            Err(e) => e.into_frame(),
        }
    }

    /// Start a fresh instance of `function` as a new session under `token`,
    /// with exactly what its manifest declared and within the box's caps.
    /// Returns the session and, if the function offers a service, the
    /// token clients connect to it with.
    pub(crate) async fn start_session(
        &self,
        function: &StoredFunction,
        call: StartCall,
        token: SessionToken,
        frames_messages: bool,
    ) -> Result<(Arc<Session>, Option<ServiceToken>), Refusal> {
        // The policy may have changed since the function was stored.
        let grant = self.admit_manifest(&function.manifest)?;
        self.admit()?;
        let limits = grant.instance_limits();
        // Onion-service streams arrive as channels too, so an instance
        // with either capability has channels; only `service` hands out a
        // token for them.
        let offers_service = grant.capabilities.contains(&Capability::Service);
        let has_channels = offers_service || grant.capabilities.contains(&Capability::OnionService);
        let service = if has_channels {
            let token = ServiceToken::generate()
                .map_err(|_| Refusal::new(ErrorCode::Internal, "cannot generate a token"))?;
            Some(token)
        } else {
            None
        };
        let tor = self
            .tor
            .clone()
            .filter(|_| grant.capabilities.contains(&Capability::OnionService))
            .map(|tor| tor as Arc<dyn OnionPublisher>);
        let storage = self.storage_for(&grant)?;
        // Each reservation is undone when its guard drops, unless kept:
        // a refusal or a failed start leaves the counters as they were.
        let counters = &self.counters;
        let max_instances = self.config.max_instances();
        let instance = Reservation::take(&counters.running_instances, 1, max_instances)
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::TooManyInstances,
                    format!(
                        "the box runs at most {max_instances} instances at once; try again later"
                    ),
                )
            })?;
        let max_buffered = self.config.max_buffered_bytes();
        let buffer = Reservation::take(
            &counters.reserved_buffer_bytes,
            limits.output_buffer_bytes,
            max_buffered,
        )
        .ok_or_else(|| {
            Refusal::new(
                ErrorCode::BufferCapReached,
                format!(
                    "the box buffers at most {max_buffered} bytes of session output and that is reserved; try again later"
                ),
            )
        })?;
        let max_storage = self.config.max_storage_bytes();
        let storage_reservation = Reservation::take(
            &counters.reserved_storage_bytes,
            storage.as_ref().map_or(0, |s| s.quota_bytes),
            max_storage,
        )
        .ok_or_else(|| {
            Refusal::new(
                ErrorCode::InstanceStorageFull,
                format!(
                    "the box reserves at most {max_storage} bytes of instance storage and that is taken; try again later"
                ),
            )
        })?;
        let session = Session::new(
            token,
            self.counters.clone(),
            limits.output_buffer_bytes,
            frames_messages,
            limits.wall(),
            SessionExtras {
                service: service.clone().map(Service::new),
                storage: storage.as_ref().map(|s| (s.dir.clone(), s.quota_bytes)),
                tor,
            },
        );
        // The session releases its buffer reservation when it is dropped.
        buffer.keep();
        let (source, filename, sealed) = start_parts(function);
        let request = StartRequest {
            source,
            filename,
            call,
            limits,
            grant: self.complete_grant(grant, storage),
            sealed,
        };
        let started = self
            .pool
            .start_instance_patiently(request, session.clone(), bento_pool::RESPAWN_PATIENCE)
            .await;
        match started {
            Ok(handle) => session.set_handle(handle),
            // Never started: the guards undo the instance and storage
            // counts; dropping the session releases its buffer.
            Err(e) => return Err(Refusal::new(ErrorCode::Internal, e.to_string())),
        }
        // From here the session gives the instance and its storage back
        // when the instance finishes.
        instance.keep();
        storage_reservation.keep();
        self.sessions.insert(session.clone());
        let service = service.filter(|_| offers_service);
        if service.is_some() {
            self.services.insert(&session);
        }
        self.metrics.invocations.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("started a session");
        Ok((session, service))
    }

    /// Admission control (`bento_pool::admission`): refuse a share of new
    /// instances, before anything is reserved, while the workers start
    /// them late.
    pub(crate) fn admit(&self) -> Result<(), Refusal> {
        if self.pool.admit() {
            Ok(())
        } else {
            Err(Refusal::new(
                ErrorCode::Overloaded,
                "the box has more work than its cores carry and refuses some new instances until it catches up; try again in a moment",
            ))
        }
    }

    /// A fresh storage directory for an instance granted storage.
    fn storage_for(&self, grant: &Grant) -> Result<Option<StorageGrant>, Refusal> {
        if !grant.capabilities.contains(&Capability::Storage) || grant.resources.storage_kib == 0 {
            return Ok(None);
        }
        // A random name: nothing on disk links storage to a session.
        let name = SessionToken::generate()
            .map_err(|_| Refusal::new(ErrorCode::Internal, "cannot generate a name"))?;
        Ok(Some(StorageGrant {
            dir: self.storage_root.join(&name.to_hex()[..32]),
            quota_bytes: grant.resources.storage_kib.saturating_mul(1024),
        }))
    }

    /// Complete an admitted `grant` with what the box adds to enforce it:
    /// the instance's storage, this worker's bandwidth share, trust anchors
    /// and the SocksPort.
    fn complete_grant(&self, grant: Grant, storage: Option<StorageGrant>) -> Grant {
        let policy = &self.config.policy;
        let workers = u64::try_from(self.config.workers.workers.max(1)).unwrap_or(1);
        Grant {
            storage,
            // Each worker enforces an equal share, so all together never
            // exceed the box's limit.
            box_bandwidth_bytes_per_s: policy.caps.bandwidth_kib_per_s.saturating_mul(1024)
                / workers,
            http_extra_roots_pem: self.config.http_extra_roots_pem.clone(),
            tor_socks: self.tor.as_ref().and_then(|t| t.socks),
            ..grant
        }
    }
}

/// What a `StartRequest` carries for `function`: source, file name and,
/// for a sealed function, the envelope (source and file name then empty:
/// the worker opens them).
fn start_parts(function: &StoredFunction) -> (String, String, Option<SealedFunctionRef>) {
    if function.is_sealed() {
        (
            String::new(),
            String::new(),
            Some(SealedFunctionRef {
                envelope: function.source.clone(),
                manifest: function.manifest.clone(),
            }),
        )
    } else {
        (function.source.clone(), function.filename.clone(), None)
    }
}

/// A stored function, as the box reports it to the client that stored it.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) function_id: FunctionId,
    pub(crate) invoke_token: InvokeToken,
    /// The lifetime granted.
    pub(crate) lifetime: Duration,
}

fn internal_store_refusal() -> Refusal {
    Refusal::new(
        ErrorCode::Internal,
        "the box could not update its stored functions",
    )
}

/// How a failed renewal or deletion is reported.
fn store_refusal(e: StoreError) -> Refusal {
    match e {
        StoreError::UnknownToken => Refusal::new(ErrorCode::UnknownInvokeToken, e.to_string()),
        other => {
            tracing::error!(error = %other, "cannot update a stored function");
            internal_store_refusal()
        }
    }
}

/// An amount reserved on a box-wide counter, given back when dropped unless
/// [`Reservation::keep`] hands it over to the session.
struct Reservation<'a> {
    counter: &'a AtomicU64,
    amount: u64,
}

impl<'a> Reservation<'a> {
    /// Add `amount` to `counter` if the total stays within `max`.
    fn take(counter: &'a AtomicU64, amount: u64, max: u64) -> Option<Self> {
        let before = counter.fetch_add(amount, Ordering::Relaxed);
        if amount > 0 && before.saturating_add(amount) > max {
            counter.fetch_sub(amount, Ordering::Relaxed);
            return None;
        }
        Some(Self { counter, amount })
    }

    /// Leave the amount reserved: its owner now gives it back.
    fn keep(mut self) {
        self.amount = 0;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.amount > 0 {
            self.counter.fetch_sub(self.amount, Ordering::Relaxed);
        }
    }
}
