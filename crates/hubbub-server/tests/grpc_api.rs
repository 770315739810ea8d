//! The gRPC server API over a real HTTP/2 connection to the real server, with the client
//! generated from the same proto/api.proto: every method, batch, idempotency, tags, the key
//! check and the refusal of fields Hubbub does not support.
mod common;

use common::*;
use hubbub_server::grpc_api::proto;
use proto::centrifugo_api_client::CentrifugoApiClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

const GRPC_KEY: &str = "grpc-test-key";

/// A server with the gRPC API on a free port, and a client of it.
async fn start() -> (Server, CentrifugoApiClient<Channel>, String) {
    let srv = Server::builder()
        .env("HUBBUB_GRPC_API_ENABLED", "true")
        .env("HUBBUB_GRPC_API_PORT", "0")
        .env("HUBBUB_GRPC_API_KEY", GRPC_KEY)
        .start();
    let addr = srv
        .stdout_lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.strip_prefix("hubbub grpc api listening on ").map(str::to_owned))
        .expect("the server prints the gRPC API's address");
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect");
    (srv, CentrifugoApiClient::new(channel), addr)
}

fn req<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("apikey {GRPC_KEY}").parse().unwrap());
    request
}

fn data(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"))
}

#[tokio::test]
async fn grpc_every_method() {
    let (srv, mut api, _) = start().await;
    let mut c = srv.user("g1").await;
    c.subscribe("gp").await;

    // publish, with tags: the subscriber gets both.
    let r = api
        .publish(req(proto::PublishRequest {
            channel: "gp".into(),
            data: data(json!({"n": 1})),
            tags: [("k".to_owned(), "v".to_owned())].into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");
    let result = r.result.unwrap();
    assert_eq!(result.offset, 1);
    assert!(!result.epoch.is_empty());
    let p = c.expect_push("gp", "pub").await;
    assert_eq!((p["data"].clone(), p["tags"].clone()), (json!({"n": 1}), json!({"k": "v"})), "{p}");

    // broadcast: one answer per channel, errors included.
    let r = api
        .broadcast(req(proto::BroadcastRequest {
            channels: vec!["gp".into(), "nosuchns:x".into()],
            data: data(json!({"n": 2})),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let responses = r.result.unwrap().responses;
    assert_eq!(responses[0].result.as_ref().unwrap().offset, 2);
    assert_eq!(responses[1].error.as_ref().unwrap().code, 102);
    assert_eq!(c.expect_push("gp", "pub").await["data"], json!({"n": 2}));

    // history, presence, presence_stats, channels, info.
    let h = api
        .history(req(proto::HistoryRequest { channel: "gp".into(), limit: -1, ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(h.offset, 2);
    assert_eq!(h.publications.len(), 2);
    assert_eq!(parse(&h.publications[0].data), json!({"n": 1}));
    assert_eq!(h.publications[0].tags.get("k").map(String::as_str), Some("v"));
    let p = api.presence(req(proto::PresenceRequest { channel: "gp".into() })).await.unwrap().into_inner();
    assert_eq!(p.result.unwrap().presence[&c.client_id].user, "g1");
    let s = api
        .presence_stats(req(proto::PresenceStatsRequest { channel: "gp".into() }))
        .await
        .unwrap()
        .into_inner();
    let s = s.result.unwrap();
    assert_eq!((s.num_clients, s.num_users), (1, 1));
    let ch = api.channels(req(proto::ChannelsRequest { pattern: "g*".into() })).await.unwrap().into_inner();
    assert_eq!(ch.result.unwrap().channels["gp"].num_clients, 1);
    let info = api.info(req(proto::InfoRequest {})).await.unwrap().into_inner().result.unwrap();
    assert_eq!(info.nodes.len(), 1);
    assert_eq!(info.nodes[0].num_clients, 1);

    // rpc: a registered method, and an unknown one.
    let r = api
        .rpc(req(proto::RpcRequest { method: "echo".into(), params: data(json!({"x": [1]})) }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(parse(&r.result.unwrap().data), json!({"x": [1]}));
    let r =
        api.rpc(req(proto::RpcRequest { method: "nope".into(), params: vec![] })).await.unwrap().into_inner();
    assert_eq!(r.error.unwrap().code, 104);

    // history_remove.
    let r = api
        .history_remove(req(proto::HistoryRemoveRequest { channel: "gp".into() }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none() && r.result.is_some(), "{r:?}");
    let h = api
        .history(req(proto::HistoryRequest { channel: "gp".into(), limit: -1, ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!(h.publications.is_empty(), "{h:?}");

    // subscribe, unsubscribe, refresh, disconnect reach the user's connection.
    let r = api
        .subscribe(req(proto::SubscribeRequest {
            user: "g1".into(),
            channel: "gs".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");
    c.expect_push("gs", "subscribe").await;
    api.unsubscribe(req(proto::UnsubscribeRequest {
        user: "g1".into(),
        channel: "gs".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    c.expect_push("gs", "unsubscribe").await;
    let r = api
        .refresh(req(proto::RefreshRequest {
            user: "g1".into(),
            expire_at: now() + 3600,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");
    assert!(c.still_open_after(QUIET).await);
    let r = api
        .disconnect(req(proto::DisconnectRequest {
            user: "g1".into(),
            disconnect: Some(proto::Disconnect { code: 4001, reason: "bye".into() }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(c.expect_close(4001, T).await, "bye");
}

#[tokio::test]
async fn grpc_batch_and_idempotency() {
    let (srv, mut api, _) = start().await;
    let publish = |channel: &str, key: &str| proto::Command {
        publish: Some(proto::PublishRequest {
            channel: channel.into(),
            data: data(json!({"k": key})),
            idempotency_key: key.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = api
        .batch(req(proto::BatchRequest {
            commands: vec![
                publish("gb", "a"),
                publish("gb", "a"),
                publish("gb", "b"),
                proto::Command {
                    history: Some(proto::HistoryRequest {
                        channel: "gb".into(),
                        limit: -1,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                proto::Command {
                    presence: Some(proto::PresenceRequest { channel: "nopres:x".into() }),
                    ..Default::default()
                },
            ],
            parallel: false,
        }))
        .await
        .unwrap()
        .into_inner();
    let offsets: Vec<u64> = r.replies[..3].iter().map(|r| r.publish.as_ref().unwrap().offset).collect();
    assert_eq!(offsets, [1, 1, 2], "the retry with key `a` is answered with the first result");
    let h = r.replies[3].history.as_ref().unwrap();
    assert_eq!(h.publications.len(), 2, "stored once: {h:?}");
    assert_eq!(r.replies[4].error.as_ref().unwrap().code, 108);

    // Parallel, and a command without a method.
    let r = api
        .batch(req(proto::BatchRequest {
            commands: vec![publish("gb2", ""), publish("gb3", "")],
            parallel: true,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.replies.iter().all(|r| r.publish.as_ref().map(|p| p.offset) == Some(1)), "{r:?}");
    let err = api
        .batch(req(proto::BatchRequest { commands: vec![proto::Command::default()], parallel: false }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // Over `api.batch_max_commands` (1000 by default).
    let many = (0..1001).map(|_| publish("gb4", "")).collect();
    let err = api.batch(req(proto::BatchRequest { commands: many, parallel: false })).await.unwrap_err();
    assert!(err.message().contains("api.batch_max_commands"), "{err:?}");
    drop(srv);
}

#[tokio::test]
async fn grpc_refuses_a_bad_key_and_unsupported_fields() {
    let (srv, mut api, _) = start().await;
    let mut request = tonic::Request::new(proto::InfoRequest {});
    request.metadata_mut().insert("authorization", "apikey wrong".parse().unwrap());
    assert_eq!(api.info(request).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert_eq!(
        api.info(tonic::Request::new(proto::InfoRequest {})).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    // The HTTP API's key is not the gRPC API's when `grpc_api.key` is set.
    let mut request = tonic::Request::new(proto::InfoRequest {});
    request.metadata_mut().insert("authorization", format!("apikey {API_KEY}").parse().unwrap());
    assert_eq!(api.info(request).await.unwrap_err().code(), tonic::Code::Unauthenticated);

    // Over `grpc_api.max_request_bytes` (2 MiB).
    let big = proto::PublishRequest {
        channel: "c".into(),
        data: data(json!("x".repeat(3 << 20))),
        ..Default::default()
    };
    let err = api.publish(req(big)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");

    for (what, response) in [
        (
            "delta",
            api.publish(req(proto::PublishRequest {
                channel: "c".into(),
                data: data(json!({})),
                delta: true,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .error,
        ),
        (
            "data",
            api.publish(req(proto::PublishRequest {
                channel: "c".into(),
                data: b"not json".to_vec(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .error,
        ),
        (
            "session",
            api.disconnect(req(proto::DisconnectRequest {
                user: "u".into(),
                session: "s".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .error,
        ),
        (
            "whitelist",
            api.disconnect(req(proto::DisconnectRequest {
                user: "u".into(),
                whitelist: vec!["c".into()],
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .error,
        ),
        (
            "recover_since",
            api.subscribe(req(proto::SubscribeRequest {
                user: "u".into(),
                channel: "c".into(),
                recover_since: Some(proto::StreamPosition { offset: 1, epoch: "e".into() }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .error,
        ),
    ] {
        let e = response.unwrap_or_else(|| panic!("`{what}` accepted"));
        assert_eq!(e.code, 107, "{what}: {e:?}");
        assert!(e.message.contains(what), "{what}: {e:?}");
    }
    drop(srv);
}
