//! The host side of the `capabilities` interface: what a function can do
//! beyond its session channel, each call checked against the instance's
//! [`Grant`].
//!
//! Errors reach Python as a typed [`HostError`], whose kind the runtime
//! turns into an exception class (`refused` → `DestinationRefused`, …).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bento_egress::{DestinationCheck, EgressError, HttpLimits, HttpRequest, TlsSettings};
use bento_policy::{Capability, Grant};
use bento_storage::InstanceStorage;
use bytes::Bytes;

use crate::host_error::{ErrorKind as HostErrorKind, HostError};
use crate::session_io::{SessionIo, WaitError};

/// How often blocked socket calls look for a kill or the deadline.
const SOCKET_POLL: Duration = Duration::from_millis(50);

/// How often `api.wait` looks at its sockets again while it waits.
const WAIT_SLICE: Duration = Duration::from_millis(2);
/// Most redirects an HTTP request follows.
const MAX_REDIRECTS: u32 = 5;

/// One open stream of an instance.
enum Stream {
    /// An outbound TCP connection (`api.connect`).
    Tcp(TcpStream),
    /// A service channel, by the box's channel id (`api.accept`).
    Service(u32),
}

/// Everything an instance's capabilities need, owned by its store.
pub(crate) struct Capabilities {
    grant: Grant,
    destinations: Option<DestinationCheck>,
    tls: Option<TlsSettings>,
    storage: Option<InstanceStorage>,
    storage_error: Option<HostError>,
    streams: HashMap<u32, Stream>,
    next_stream: u32,
    /// SOCKS credentials that give this instance its own Tor circuits
    /// (only instances granted `tor_connect` need them).
    tor_isolation: Option<String>,
    onion_services_created: u64,
}

impl Capabilities {
    /// Set up what `grant` allows. Problems that only matter when a
    /// capability is used (a bad rule, storage that cannot be created) are
    /// reported by that use, never by failing the whole instance.
    pub(crate) fn new(grant: Grant) -> Self {
        let destinations = grant.reaches_out().then(|| DestinationCheck {
            grant: grant.destinations.clone(),
            policy: grant.policy_destinations.clone(),
            own: grant.own_addresses.clone(),
        });
        let tls = grant.has(Capability::Http).then(|| {
            grant
                .http_extra_roots_pem
                .as_deref()
                .and_then(|pem| TlsSettings::with_extra_roots_pem(pem.as_bytes()).ok())
                .unwrap_or_default()
        });
        let (storage, storage_error) = match (&grant.storage, grant.has(Capability::Storage)) {
            (Some(spec), true) => match InstanceStorage::create(spec.dir.clone(), spec.quota_bytes)
            {
                Ok(storage) => (Some(storage), None),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create instance storage");
                    (
                        None,
                        Some(HostError::io(format!(
                            "the box could not create storage: {e}"
                        ))),
                    )
                }
            },
            _ => (None, None),
        };
        let tor_isolation = grant
            .has(Capability::TorConnect)
            .then(crate::tor_stream::isolation_token);
        Self {
            grant,
            destinations,
            tls,
            storage,
            storage_error,
            streams: HashMap::new(),
            next_stream: 1,
            tor_isolation,
            onion_services_created: 0,
        }
    }

    /// The granted capabilities' names.
    pub(crate) fn granted(&self) -> Vec<String> {
        self.grant
            .capabilities
            .iter()
            .map(|c| c.name().to_owned())
            .collect()
    }

    fn require(&self, capability: Capability) -> Result<(), HostError> {
        if self.grant.has(capability) {
            Ok(())
        } else {
            Err(HostError::new(
                HostErrorKind::NotGranted,
                format!(
                    "this function was not granted the `{}` capability",
                    capability.name()
                ),
            ))
        }
    }

    fn add_stream(&mut self, stream: Stream) -> u32 {
        let id = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(1).max(1);
        self.streams.insert(id, stream);
        id
    }

    pub(crate) fn sleep(&self, io: &SessionIo, seconds: f64) -> Result<(), HostError> {
        self.require(Capability::Time)?;
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(HostError::invalid(
                "sleep() needs a finite, non-negative number of seconds",
            ));
        }
        let duration = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
        io.sleep(duration).map_err(stopped)
    }

    pub(crate) fn now(&self) -> f64 {
        if !self.grant.has(Capability::Time) {
            return f64::NAN;
        }
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    pub(crate) fn connect(
        &mut self,
        io: &SessionIo,
        host: &str,
        port: u16,
    ) -> Result<u32, HostError> {
        self.require(Capability::Connect)?;
        let check = self.destinations.as_ref().ok_or_else(no_rules)?;
        if !io.try_open_channel() {
            return Err(channel_limit(io));
        }
        match bento_egress::connect(check, host, port, io.deadline()) {
            Ok(stream) => Ok(self.add_stream(Stream::Tcp(stream))),
            Err(e) => {
                io.channel_released();
                Err(HostError::from(&e))
            }
        }
    }

    pub(crate) fn tor_connect(
        &mut self,
        io: &SessionIo,
        host: &str,
        port: u16,
        timeout: Option<f64>,
    ) -> Result<u32, HostError> {
        self.require(Capability::TorConnect)?;
        let until = until(timeout)?;
        let socks = self
            .grant
            .tor_socks
            .ok_or_else(|| HostError::io("this box has no Tor SocksPort configured"))?;
        if !io.try_open_channel() {
            return Err(channel_limit(io));
        }
        // Set whenever `tor_connect` is granted, which `require` checked.
        let isolation = self.tor_isolation.as_deref().unwrap_or_default();
        match crate::tor_stream::tor_connect(socks, isolation, host, port, until, io.deadline()) {
            Ok(stream) => Ok(self.add_stream(Stream::Tcp(stream))),
            Err(e) => {
                io.channel_released();
                Err(e)
            }
        }
    }

    pub(crate) fn onion_service(
        &mut self,
        io: &SessionIo,
        port: u16,
        key: Option<String>,
    ) -> Result<String, HostError> {
        self.require(Capability::OnionService)?;
        if port == 0 {
            return Err(HostError::invalid("the virtual port must be 1-65535"));
        }
        if self.onion_services_created >= self.grant.resources.onion_services {
            return Err(HostError::new(
                HostErrorKind::ChannelLimit,
                format!(
                    "this function may create at most {} onion services",
                    self.grant.resources.onion_services
                ),
            ));
        }
        let address = io.onion_request(port, key)?;
        self.onion_services_created += 1;
        Ok(address)
    }

    pub(crate) fn accept(
        &mut self,
        io: &SessionIo,
        timeout: Option<f64>,
    ) -> Result<Option<u32>, HostError> {
        // Onion-service streams arrive as channels too.
        if !self.grant.has(Capability::OnionService) {
            self.require(Capability::Service)?;
        }
        match io.accept(until(timeout)?) {
            Ok(channel) => Ok(Some(self.add_stream(Stream::Service(channel)))),
            Err(WaitError::TimedOut) => Ok(None),
            Err(WaitError::Stopped(reason)) => Err(stopped(reason)),
        }
    }

    pub(crate) fn stream_send(&mut self, io: &SessionIo, id: u32) -> Result<(), HostError> {
        let staged = io.take_staged()?;
        let data = &staged.data;
        match self.streams.get_mut(&id).ok_or_else(unknown_stream)? {
            Stream::Service(channel) => io.channel_send(*channel, data),
            Stream::Tcp(tcp) => {
                io.throttle(data.len() as u64).map_err(stopped)?;
                write_socket(io, tcp, data)
            }
        }
    }

    pub(crate) fn stream_recv(
        &mut self,
        io: &SessionIo,
        id: u32,
        max: u32,
        timeout: Option<f64>,
    ) -> Result<Option<u32>, HostError> {
        let max = usize::try_from(max.clamp(1, 1 << 20)).unwrap_or(1 << 20);
        let until = until(timeout)?;
        let data = match self.streams.get_mut(&id).ok_or_else(unknown_stream)? {
            Stream::Service(channel) => match io.channel_recv(*channel, max, until) {
                Ok(data) => data,
                Err(WaitError::TimedOut) => {
                    return Err(no_data());
                }
                Err(WaitError::Stopped(reason)) => return Err(reason.into()),
            },
            Stream::Tcp(tcp) => {
                let data = read_socket(io, tcp, max, until)?;
                if let Some(data) = &data {
                    io.throttle(data.len() as u64).map_err(stopped)?;
                }
                data
            }
        };
        match data {
            Some(data) => {
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                io.set_pending(data).map_err(stopped)?;
                Ok(Some(len))
            }
            None => Ok(None),
        }
    }

    /// `api.wait`: block until one of the staged stream ids is readable
    /// or, with `accept`, a channel waits to be accepted, or the timeout.
    /// The ready ids go to stdin; returns their count and the accept flag.
    pub(crate) fn wait(
        &mut self,
        io: &SessionIo,
        timeout: Option<f64>,
        accept: bool,
    ) -> Result<(u32, bool), HostError> {
        let staged = io.take_staged()?.data;
        if staged.len() % 4 != 0 {
            return Err(HostError::invalid("wait() takes a list of stream ids"));
        }
        let until = until(timeout)?;
        let mut tcp = Vec::new();
        let mut channels = Vec::new();
        for id in staged.chunks_exact(4) {
            let id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
            match self.streams.get(&id).ok_or_else(unknown_stream)? {
                Stream::Tcp(_) => tcp.push(id),
                Stream::Service(channel) => channels.push((id, *channel)),
            }
        }
        let channel_ids: Vec<u32> = channels.iter().map(|(_, c)| *c).collect();
        loop {
            check_stop(io)?;
            let mut ready: Vec<u32> = tcp
                .iter()
                .copied()
                .filter(
                    |id| matches!(self.streams.get(id), Some(Stream::Tcp(t)) if socket_readable(t)),
                )
                .collect();
            // Channels wake the wait at once; sockets are looked at again
            // every WAIT_SLICE (std has no portable poll over several).
            let now = Instant::now();
            let channel_until = if !ready.is_empty() {
                Some(now)
            } else if tcp.is_empty() {
                until
            } else {
                Some(until.map_or(now + WAIT_SLICE, |u| u.min(now + WAIT_SLICE)))
            };
            let (ready_channels, can_accept) = io
                .wait_channels(&channel_ids, accept, channel_until)
                .map_err(stopped)?;
            ready.extend(
                channels
                    .iter()
                    .filter(|(_, c)| ready_channels.contains(c))
                    .map(|(id, _)| *id),
            );
            if !ready.is_empty() || can_accept || until.is_some_and(|u| Instant::now() >= u) {
                let count = u32::try_from(ready.len()).unwrap_or(u32::MAX);
                let body: Vec<u8> = ready.iter().flat_map(|id| id.to_be_bytes()).collect();
                io.set_pending(Bytes::from(body)).map_err(stopped)?;
                return Ok((count, can_accept));
            }
        }
    }

    pub(crate) fn stream_close(&mut self, io: &SessionIo, id: u32) {
        match self.streams.remove(&id) {
            Some(Stream::Tcp(tcp)) => {
                let _ = tcp.shutdown(Shutdown::Both);
                io.channel_released();
            }
            Some(Stream::Service(channel)) => io.channel_close(channel),
            None => {}
        }
    }

    /// Close everything when the instance ends. Service channels are
    /// reported closed only when the function returned (`clean`): after a
    /// failure their clients learn of it from the instance's outcome
    /// instead of seeing an ordinary end.
    pub(crate) fn close_all(&mut self, io: &SessionIo, clean: bool) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            match self.streams.get(&id) {
                Some(Stream::Service(channel)) if !clean => {
                    io.channel_forget(*channel);
                    self.streams.remove(&id);
                }
                _ => self.stream_close(io, id),
            }
        }
    }

    pub(crate) fn http_request(
        &mut self,
        io: &SessionIo,
        method: String,
        url: String,
        headers_json: &str,
        timeout_ms: Option<u64>,
    ) -> Result<String, HostError> {
        self.require(Capability::Http)?;
        let staged = io.take_staged()?;
        let body = staged.data;
        let check = self.destinations.as_ref().ok_or_else(no_rules)?;
        let headers: Vec<(String, String)> = serde_json::from_str(headers_json)
            .map_err(|e| HostError::invalid(format!("headers must be name/value pairs: {e}")))?;
        let tls = self.tls.clone().unwrap_or_default();
        io.throttle(body.len() as u64).map_err(stopped)?;
        let request = HttpRequest {
            method,
            url,
            headers,
            body,
        };
        let limits = HttpLimits {
            max_redirects: MAX_REDIRECTS,
            max_response_bytes: self.grant.http_max_response_bytes(),
            deadline: request_deadline(io.deadline(), timeout_ms)?,
        };
        // The response body grows in the worker's heap as it arrives:
        // every chunk is counted in the instance's memory before it is
        // taken, so a large body stops the instance for memory instead of
        // growing the worker.
        let mut body_charge = io.reserve(0).map_err(stopped)?;
        let mut throttle = |bytes: usize| {
            let total = body_charge.bytes().saturating_add(bytes as u64);
            if body_charge.resize(total).is_err() {
                io.stop(crate::StopReason::Memory);
                return Err(EgressError::Stopped);
            }
            io.throttle(bytes as u64).map_err(|_| EgressError::Stopped)
        };
        let response = bento_egress::http_request(check, &tls, &request, &limits, &mut throttle)
            .map_err(|e| HostError::from(&e))?;
        // Redirects may have counted bodies that are gone; what stays is
        // counted again as the pending result.
        drop(body_charge);
        let meta = serde_json::json!({
            "status": response.status,
            "headers": response.headers,
            "url": response.url,
            "body_length": response.body.len(),
        });
        io.set_pending(Bytes::from(response.body))
            .map_err(stopped)?;
        Ok(meta.to_string())
    }

    fn storage(&mut self) -> Result<&mut InstanceStorage, HostError> {
        self.require(Capability::Storage)?;
        match (&mut self.storage, &self.storage_error) {
            (Some(storage), _) => Ok(storage),
            (None, Some(error)) => Err(error.clone()),
            (None, None) => Err(HostError::io("this instance has no storage")),
        }
    }

    pub(crate) fn storage_put(&mut self, io: &SessionIo, key: &str) -> Result<(), HostError> {
        let value = io.take_staged()?;
        self.storage()?
            .put(key, &value.data)
            .map_err(HostError::from)
    }

    pub(crate) fn storage_get(
        &mut self,
        io: &SessionIo,
        key: &str,
    ) -> Result<Option<u32>, HostError> {
        let value = self.storage()?.get(key).map_err(HostError::from)?;
        match value {
            Some(value) => {
                let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
                io.set_pending(Bytes::from(value)).map_err(stopped)?;
                Ok(Some(len))
            }
            None => Ok(None),
        }
    }

    pub(crate) fn storage_delete(&mut self, key: &str) -> Result<bool, HostError> {
        self.storage()?.delete(key).map_err(HostError::from)
    }

    pub(crate) fn storage_keys(&mut self) -> Result<Vec<String>, HostError> {
        Ok(self.storage()?.keys())
    }

    pub(crate) fn storage_usage(&mut self) -> Result<(u64, u64), HostError> {
        let storage = self.storage()?;
        Ok((storage.used(), storage.quota()))
    }
}

fn stopped(reason: crate::StopReason) -> HostError {
    HostError::stopped(reason)
}

fn no_rules() -> HostError {
    HostError::refused("the box could not read this function's destination rules")
}

fn unknown_stream() -> HostError {
    HostError::closed("no such stream (it was closed)")
}

fn no_data() -> HostError {
    HostError::timeout("no data within the timeout")
}

fn channel_limit(io: &SessionIo) -> HostError {
    HostError::new(
        HostErrorKind::ChannelLimit,
        format!(
            "this function may have at most {} channels and connections open at once",
            io.channel_limit()
        ),
    )
}

fn until(timeout: Option<f64>) -> Result<Option<Instant>, HostError> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 => {
            Ok(Instant::now().checked_add(Duration::try_from_secs_f64(t).unwrap_or(Duration::MAX)))
        }
        Some(_) => Err(HostError::invalid(
            "a timeout must be a finite, non-negative number of seconds",
        )),
    }
}

/// The deadline of one HTTP request: the function's `timeout_ms` (any
/// value the guest likes, so checked here), never past the instance's own.
fn request_deadline(instance: Instant, timeout_ms: Option<u64>) -> Result<Instant, HostError> {
    match timeout_ms {
        None => Ok(instance),
        Some(0) => Err(HostError::invalid("the timeout must be more than 0 ms")),
        Some(ms) => Ok(Instant::now()
            .checked_add(Duration::from_millis(ms))
            .map_or(instance, |deadline| deadline.min(instance))),
    }
}

fn check_stop(io: &SessionIo) -> Result<(), HostError> {
    if let Some(reason) = io.stop_reason() {
        return Err(stopped(reason));
    }
    if Instant::now() >= io.deadline() {
        io.stop(crate::StopReason::WallTime);
        return Err(stopped(crate::StopReason::WallTime));
    }
    Ok(())
}

/// Write all of `data`, giving up when the instance is stopped.
fn write_socket(io: &SessionIo, tcp: &mut TcpStream, data: &[u8]) -> Result<(), HostError> {
    let _ = tcp.set_write_timeout(Some(SOCKET_POLL));
    let mut rest = data;
    while !rest.is_empty() {
        check_stop(io)?;
        match tcp.write(rest) {
            Ok(0) => return Err(HostError::closed("the connection was closed")),
            Ok(n) => rest = &rest[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(HostError::closed(format!("the connection failed: {e}"))),
        }
    }
    Ok(())
}

/// Read what is available (up to `max`), waiting for at least one byte
/// until `until`; `None` at end of stream. A timeout that has already
/// passed (e.g. 0) still takes what is there.
fn read_socket(
    io: &SessionIo,
    tcp: &mut TcpStream,
    max: usize,
    until: Option<Instant>,
) -> Result<Option<Bytes>, HostError> {
    // The read buffer is the instance's memory until it becomes the
    // pending result (counted again there).
    let _charge = io.reserve(max as u64).map_err(stopped)?;
    let mut buf = vec![0u8; max];
    loop {
        check_stop(io)?;
        let slice = until.map_or(SOCKET_POLL, |u| {
            u.saturating_duration_since(Instant::now()).min(SOCKET_POLL)
        });
        let result = if slice.is_zero() {
            let _ = tcp.set_nonblocking(true);
            let result = tcp.read(&mut buf);
            let _ = tcp.set_nonblocking(false);
            result
        } else {
            let _ = tcp.set_read_timeout(Some(slice));
            tcp.read(&mut buf)
        };
        match result {
            Ok(0) => return Ok(None),
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(Bytes::from(buf)));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if slice.is_zero() {
                    return Err(no_data());
                }
            }
            Err(e) => return Err(HostError::closed(format!("the connection failed: {e}"))),
        }
    }
}

/// Whether a read on `tcp` would return at once (data, end of stream or an
/// error), without consuming anything.
fn socket_readable(tcp: &TcpStream) -> bool {
    let _ = tcp.set_nonblocking(true);
    let ready = match tcp.peek(&mut [0u8; 1]) {
        Ok(_) => true,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
    };
    let _ = tcp.set_nonblocking(false);
    ready
}

#[cfg(test)]
mod tests {
    use super::request_deadline;
    use crate::host_error::ErrorKind as HostErrorKind;
    use std::time::{Duration, Instant};

    #[test]
    fn a_request_timeout_shortens_the_deadline_but_never_extends_it() {
        let instance = Instant::now() + Duration::from_secs(60);
        assert_eq!(request_deadline(instance, None).ok(), Some(instance));
        let short = request_deadline(instance, Some(1000)).unwrap_or(instance);
        assert!(short < instance);
        assert_eq!(
            request_deadline(instance, Some(3_600_000)).ok(),
            Some(instance)
        );
        // A guest may pass any u64: the largest must not overflow the clock.
        assert_eq!(
            request_deadline(instance, Some(u64::MAX)).ok(),
            Some(instance)
        );
    }

    #[test]
    fn a_zero_request_timeout_is_refused_as_invalid() {
        let refused = request_deadline(Instant::now(), Some(0));
        assert!(refused.is_err_and(|e| e.kind == HostErrorKind::InvalidArgument));
    }
}
