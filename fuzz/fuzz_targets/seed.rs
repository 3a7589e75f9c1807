//! Writes the starting corpus (`fuzz/corpus/<target>/`) from real
//! encodings: frames and IPC messages made by the real encoders, the default
//! box policy, the repository's function manifests. Run by
//! `scripts/fuzz.sh --seed`.
//!
//! It is built like the fuzz targets (their coverage instrumentation needs
//! libFuzzer's runtime), so it does its work in libFuzzer's initialisation
//! hook and exits before any fuzzing starts.
#![no_main]

use std::path::Path;

use bento_policy::DEFAULT_POLICY_TOML;
use bento_protocol::{
    ErrorCode, Frame, FunctionId, InvokeToken, PROTOCOL_VERSION, ServiceToken, SessionToken,
    TOKEN_BYTES,
};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;

fn frame_bytes(frames: &[Frame]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for frame in frames {
        frame.encode(&mut out);
    }
    out.to_vec()
}

fn frames() -> Vec<Vec<Frame>> {
    let token = |b: u8| [b; TOKEN_BYTES];
    let one = |frame: Frame| vec![frame];
    vec![
        one(Frame::Hello {
            min_version: 1,
            max_version: PROTOCOL_VERSION,
        }),
        one(Frame::Welcome {
            version: 1,
            software: "bento 0.1.0".into(),
        }),
        one(Frame::Store {
            filename: "hello.py".into(),
            source: "def main(name):\n    api.send(f'hello {name}')\n".into(),
            manifest: "version = 1\ncapabilities = [\"time\"]\n".into(),
            lifetime_s: None,
        }),
        one(Frame::Store {
            filename: "drop.py".into(),
            source: "def main():\n    api.send(api.recv())\n".into(),
            manifest: String::new(),
            lifetime_s: Some(7 * 24 * 3600),
        }),
        one(Frame::Stored {
            function_id: FunctionId(token(1)),
            invoke_token: InvokeToken::from_bytes(token(2)),
            lifetime_s: None,
        }),
        one(Frame::Stored {
            function_id: FunctionId(token(1)),
            invoke_token: InvokeToken::from_bytes(token(2)),
            lifetime_s: Some(3600),
        }),
        one(Frame::Renew {
            invoke_token: InvokeToken::from_bytes(token(2)),
            lifetime_s: 0,
        }),
        one(Frame::Renewed { lifetime_s: 86400 }),
        one(Frame::Delete {
            invoke_token: InvokeToken::from_bytes(token(2)),
        }),
        one(Frame::Deleted),
        one(Frame::Invoke {
            invoke_token: InvokeToken::from_bytes(token(2)),
            entry: "main".into(),
            args_json: "[\"world\", 1, {\"k\": null}]".into(),
            defense: None,
        }),
        one(Frame::Invoke {
            invoke_token: InvokeToken::from_bytes(token(2)),
            entry: "main".into(),
            args_json: "[]".into(),
            defense: Some("front".into()),
        }),
        one(Frame::Invoked {
            session_token: SessionToken::from_bytes(token(3)),
            service_token: None,
        }),
        one(Frame::Invoked {
            session_token: SessionToken::from_bytes(token(3)),
            service_token: Some(ServiceToken::from_bytes(token(4))),
        }),
        one(Frame::Attach {
            session_token: SessionToken::from_bytes(token(3)),
            resume_from: None,
        }),
        one(Frame::Attach {
            session_token: SessionToken::from_bytes(token(3)),
            resume_from: Some(4096),
        }),
        one(Frame::Attached { offset: 4096 }),
        one(Frame::Kill {
            session_token: SessionToken::from_bytes(token(3)),
        }),
        one(Frame::Killed),
        one(Frame::Connect {
            service_token: ServiceToken::from_bytes(token(4)),
        }),
        one(Frame::Connected),
        one(Frame::StatusRequest),
        one(Frame::Status {
            json: "{\"running\":\"0\"}".into(),
        }),
        one(Frame::Output {
            data: Bytes::from_static(b"hello world"),
        }),
        one(Frame::Input {
            data: Bytes::from_static(b"\x00\x01\x02"),
        }),
        one(Frame::InputEnd),
        one(Frame::Padding {
            data: Bytes::from_static(&[0; 64]),
        }),
        one(Frame::Ack { offset: 11 }),
        one(Frame::Detach),
        one(Frame::Detached { offset: 11 }),
        one(Frame::End),
        one(Frame::SealedStore {
            manifest: String::new(),
            lifetime_s: 0,
            envelope: Bytes::from_static(&[1; 64]),
        }),
        one(Frame::SealedInvoke {
            invoke_token: InvokeToken::from_bytes(token(2)),
            envelope: Bytes::from_static(&[1; 64]),
        }),
        one(Frame::error(ErrorCode::from_u16(1), "invalid token")),
        // A whole conversation, as a client sends it.
        vec![
            Frame::Hello {
                min_version: 1,
                max_version: PROTOCOL_VERSION,
            },
            Frame::Invoke {
                invoke_token: InvokeToken::from_bytes(token(2)),
                entry: "main".into(),
                args_json: "[]".into(),
                defense: None,
            },
            Frame::Input {
                data: Bytes::from_static(b"ping"),
            },
            Frame::Ack { offset: 4 },
            Frame::InputEnd,
            Frame::Detach,
        ],
    ]
}

/// The worker-pipe and prototype seeds (plain bytes and the worker
/// contract's encoders: the light build makes them too).
mod ipc_and_legacy {
    use std::net::{IpAddr, Ipv4Addr};

    use bento_policy::{
        Capability, ExitPolicy, Grant, InstanceLimits, Limit, Resources, StorageGrant,
    };
    use bento_worker_contract::ipc::{FromWorker, ToWorker};
    use bento_worker_contract::{
        ChannelEvent, InstanceEvent, InstanceOutcome, OnionRequest, SessionEvent, StartCall,
        StartRequest,
    };
    use bytes::Bytes;

    use super::write;

    const ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    fn grant() -> Grant {
        let rules = |rules: &[&str]| ExitPolicy::parse(rules).unwrap_or_else(|_| unreachable!());
        Grant {
            resources: Resources {
                bandwidth_kib_per_s: 1024,
                channels: 16,
                ..Resources::default()
            },
            capabilities: [
                Capability::Storage,
                Capability::Time,
                Capability::TorConnect,
            ]
            .into_iter()
            .collect(),
            destinations: rules(&["accept 192.0.2.0/24:443"]),
            policy_destinations: rules(&["reject *:25", "accept *:*"]),
            own_addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))],
            storage: Some(StorageGrant {
                dir: "/var/lib/bento/storage/x".into(),
                quota_bytes: 1 << 20,
            }),
            box_bandwidth_bytes_per_s: 10 << 20,
            http_extra_roots_pem: None,
            tor_socks: Some("127.0.0.1:9050".parse().unwrap_or_else(|_| unreachable!())),
        }
    }

    fn to_worker() -> Vec<ToWorker> {
        let start = |call| StartRequest {
            source: "def main():\n    api.send(b'x')\n".into(),
            filename: "f.py".into(),
            call,
            limits: InstanceLimits::default(),
            grant: grant(),
            sealed: None,
        };
        vec![
            ToWorker::Start(1, Box::new(start(StartCall::Check))),
            ToWorker::Start(
                3,
                Box::new(start(StartCall::SealedEntry {
                    envelope: "01ab".into(),
                })),
            ),
            ToWorker::Start(
                2,
                Box::new(start(StartCall::Entry {
                    entry: "main".into(),
                    args_json: "[1]".into(),
                })),
            ),
            ToWorker::Start(3, Box::new(start(StartCall::Expression("main(1)".into())))),
            session(SessionEvent::Input(Bytes::from_static(b"ping"))),
            session(SessionEvent::InputEnd),
            session(SessionEvent::Credit(65536)),
            session(SessionEvent::Kill),
            session(SessionEvent::ChannelOpen(7)),
            session(SessionEvent::ChannelInput(
                7,
                Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
            )),
            session(SessionEvent::ChannelEnd(7, true)),
            session(SessionEvent::ChannelCredit(7, 4096)),
            session(SessionEvent::OnionReply(
                1,
                Ok("abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx".into()),
            )),
            session(SessionEvent::OnionReply(
                2,
                Err("onion services are not allowed".into()),
            )),
        ]
    }

    /// A message to instance 2, the seeds' running instance.
    fn session(event: SessionEvent) -> ToWorker {
        ToWorker::Session(2, event)
    }

    /// A message from instance 2.
    fn instance(event: InstanceEvent) -> FromWorker {
        FromWorker::Instance(2, event)
    }

    fn from_worker() -> Vec<FromWorker> {
        vec![
            FromWorker::Ready { channel_key: None },
            FromWorker::Ready {
                channel_key: Some([9; 32]),
            },
            FromWorker::Started(2),
            instance(InstanceEvent::Output(Bytes::from_static(b"hello"))),
            instance(InstanceEvent::InputConsumed(4)),
            instance(InstanceEvent::MessageStart(5)),
            instance(InstanceEvent::Finished(InstanceOutcome::Returned)),
            instance(InstanceEvent::Finished(InstanceOutcome::LimitExceeded {
                limit: Limit::Cpu,
                detail: "10000 ms".into(),
            })),
            instance(InstanceEvent::Finished(InstanceOutcome::Exception(
                "Traceback …\nValueError: x".into(),
            ))),
            instance(InstanceEvent::Finished(InstanceOutcome::Killed)),
            instance(InstanceEvent::Finished(InstanceOutcome::Trap(
                "unreachable".into(),
            ))),
            instance(InstanceEvent::Channel(7, ChannelEvent::Opened(true))),
            instance(InstanceEvent::Channel(
                7,
                ChannelEvent::Output(Bytes::from_static(b"HTTP/1.0 200 OK\r\n\r\n")),
            )),
            instance(InstanceEvent::Channel(7, ChannelEvent::Consumed(18))),
            instance(InstanceEvent::Channel(7, ChannelEvent::Closed)),
            instance(InstanceEvent::OnionRequest(
                1,
                OnionRequest {
                    port: 80,
                    key: None,
                },
            )),
        ]
    }

    fn legacy() -> Vec<Vec<u8>> {
        let with_kind = |kind: u8, body: &[u8]| [&[kind][..], body].concat();
        vec![
        with_kind(0, br#"{"name": "hello", "code": "def hello(x):\n    api.send(x)\n"}"#),
        with_kind(1, br#"{"call": "hello('world')", "token": "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}"#),
        with_kind(2, ID.as_bytes()),
        with_kind(3, ID.as_bytes()),
        with_kind(7, format!("{ID}some input").as_bytes()),
    ]
    }

    pub fn seed() {
        for (i, message) in to_worker().iter().enumerate() {
            write(
                "ipc",
                &format!("to-{i:02}"),
                &[&[1][..], &message.encode()].concat(),
            );
        }
        for (i, message) in from_worker().iter().enumerate() {
            let (head, payload) = message.encode_parts();
            write(
                "ipc",
                &format!("from-{i:02}"),
                &[&[0][..], &head, &payload].concat(),
            );
        }
        for (i, request) in legacy().iter().enumerate() {
            write("legacy", &format!("{i:02}"), request);
        }
    }
}

fn manifests() -> Vec<&'static str> {
    vec![
        include_str!("../../functions/browser/browser.toml"),
        include_str!("../../functions/cover/cover.toml"),
        include_str!("../../functions/dropbox/dropbox.toml"),
        include_str!("../../functions/examples/onion_echo.toml"),
        include_str!("../../functions/examples/tor_call.toml"),
        include_str!("../../functions/loadbalancer/front.toml"),
        include_str!("../../functions/loadbalancer/replica.toml"),
        include_str!("../../functions/proxy/proxy.toml"),
        include_str!("../../functions/shard/shard.toml"),
    ]
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join(format!("seed-{name}")), bytes));
    if let Err(e) = written {
        eprintln!("cannot write the {target} corpus: {e}");
        std::process::exit(1);
    }
}

fn seed() {
    for (i, list) in frames().iter().enumerate() {
        write(
            "frame",
            &format!("{i:02}"),
            &[&[7][..], &frame_bytes(list)].concat(),
        );
    }
    ipc_and_legacy::seed();
    write("policy", "default", DEFAULT_POLICY_TOML.as_bytes());
    let open = DEFAULT_POLICY_TOML
        .replace(r#"destinations = ["reject *:*"]"#, r#"destinations = ["reject 10.0.0.0/8:*", "accept [2001:db8::]/32:80-443", "accept *:443"]"#)
        .replace(r#"capabilities = ["#, r#"capabilities = ["connect", "http", "#);
    write("policy", "open", open.as_bytes());
    for (i, manifest) in manifests().iter().enumerate() {
        write("manifest", &format!("{i:02}"), manifest.as_bytes());
    }
    std::process::exit(0);
}

fuzz_target!(init: seed(), |_data: &[u8]| {});
