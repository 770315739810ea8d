//! Subscribe / unsubscribe / publish, pushes, permissions, `#` and `$` channels,
//! presence, join/leave, subscription tokens.
mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn subscribe_reply_shape_and_publish_push() {
    let srv = Server::new();
    let mut a = srv.user("1").await;
    let mut b = srv.user("2").await;
    let r = a.subscribe("news").await;
    // default namespace has history + force_recovery → position returned.
    assert_eq!(r["recoverable"], json!(true), "{r}");
    assert!(r["epoch"].as_str().map(|e| !e.is_empty()).unwrap_or(false), "no epoch: {r}");
    assert_eq!(num(&r, "offset"), 0, "{r}");
    b.subscribe("news").await;

    let pr = b.publish("news", json!({"text": "hi"})).await;
    assert_eq!(pr, json!({}), "publish reply must be {{}}");
    let b_id = b.client_id.clone();
    for c in [&mut a, &mut b] {
        let p = c.expect_push("news", "pub").await;
        assert_eq!(p["data"], json!({"text": "hi"}), "{p}");
        assert_eq!(num(&p, "offset"), 1, "{p}");
        assert_eq!(p["info"]["user"], json!("2"), "{p}");
        assert_eq!(p["info"]["client"], json!(b_id), "{p}");
    }
    b.publish("news", json!({"text": "again"})).await;
    let p = a.expect_push("news", "pub").await;
    assert_eq!(num(&p, "offset"), 2, "{p}");
}

#[tokio::test]
async fn api_publication_has_no_client_info() {
    let srv = Server::new();
    let mut a = srv.user("1").await;
    a.subscribe("news").await;
    srv.api().publish("news", json!({"n": 1})).await;
    let p = a.expect_push("news", "pub").await;
    assert_eq!(p["data"], json!({"n": 1}), "{p}");
    assert!(p.get("info").map(|i| i.is_null()).unwrap_or(true), "API pub with info: {p}");
}

#[tokio::test]
async fn publish_to_unsubscribed_channel_reaches_subscribers() {
    let srv = Server::new();
    let mut a = srv.user("1").await;
    let mut b = srv.user("2").await;
    a.subscribe("c").await;
    b.publish("c", json!("plain string data")).await;
    let p = a.expect_push("c", "pub").await;
    assert_eq!(p["data"], json!("plain string data"), "{p}");
}

#[tokio::test]
async fn subscribe_errors() {
    let srv = Server::new();
    let mut c = srv.user("1").await;
    assert_eq!(c.err("subscribe", json!({"channel": ""})).await, 107, "empty channel");
    assert_eq!(c.err("subscribe", json!({})).await, 107, "missing channel");
    assert_eq!(c.err("subscribe", json!({"channel": "nosuchns:x"})).await, 102, "unknown ns");
    assert_eq!(c.err("subscribe", json!({"channel": "nosub:x"})).await, 103, "subscribe not allowed");
    c.subscribe("dup").await;
    assert_eq!(c.err("subscribe", json!({"channel": "dup"})).await, 105, "already subscribed");
    // The connection is still fine.
    c.subscribe("other").await;
}

#[tokio::test]
async fn publish_errors() {
    let srv = Server::new();
    let mut c = srv.user("1").await;
    assert_eq!(
        c.err("publish", json!({"channel": "nopub:x", "data": {}})).await,
        103,
        "allow_publish_for_client=false"
    );
    assert_eq!(c.err("publish", json!({"channel": "nosuchns:x", "data": {}})).await, 102);
    // allow_publish_for_subscriber: only once subscribed.
    let srv_sub = Server::builder()
        .ns(Ns::new("subpub")
            .set("allow_publish_for_client", "false")
            .set("allow_publish_for_subscriber", "true"))
        .start();
    let mut p = srv_sub.user("3").await;
    assert_eq!(p.err("publish", json!({"channel": "subpub:x", "data": {}})).await, 103, "not subscribed yet");
    p.subscribe("subpub:x").await;
    p.ok("publish", json!({"channel": "subpub:x", "data": {"n": 1}})).await;
    p.expect_push("subpub:x", "pub").await;
    p.ok("unsubscribe", json!({"channel": "subpub:x"})).await;
    assert_eq!(
        p.err("publish", json!({"channel": "subpub:x", "data": {}})).await,
        103,
        "no longer subscribed"
    );
    // The API can still publish into nopub.
    let mut s = srv.user("2").await;
    s.subscribe("nopub:x").await;
    srv.api().publish("nopub:x", json!({"ok": true})).await;
    s.expect_push("nopub:x", "pub").await;
}

#[tokio::test]
async fn too_many_channels_is_106() {
    let srv = Server::builder().client("max_channels", "2").start();
    let mut c = srv.user("1").await;
    c.subscribe("a").await;
    c.subscribe("b").await;
    assert_eq!(c.err("subscribe", json!({"channel": "c"})).await, 106);
    // Freeing one slot allows another subscription.
    c.ok("unsubscribe", json!({"channel": "a"})).await;
    c.subscribe("c").await;
}

#[tokio::test]
async fn unsubscribe_stops_publications() {
    let srv = Server::new();
    let mut a = srv.user("1").await;
    a.subscribe("c").await;
    let r = a.ok("unsubscribe", json!({"channel": "c"})).await;
    assert_eq!(r, json!({}), "unsubscribe reply must be {{}}");
    srv.api().publish("c", json!({"n": 1})).await;
    a.expect_no_push("c", "pub", QUIET).await;
    // Can subscribe again afterwards.
    a.subscribe("c").await;
    srv.api().publish("c", json!({"n": 2})).await;
    let p = a.expect_push("c", "pub").await;
    assert_eq!(p["data"], json!({"n": 2}));
}

#[tokio::test]
async fn user_limited_channel_single_user() {
    let srv = Server::new();
    let mut u42 = srv.user("42").await;
    let mut u7 = srv.user("7").await;
    u42.subscribe("user#42").await;
    assert_eq!(u7.err("subscribe", json!({"channel": "user#42"})).await, 103);
    assert_eq!(
        u7.err("publish", json!({"channel": "user#42", "data": {}})).await,
        103,
        "publish to a # channel by a user not listed"
    );
    u42.publish("user#42", json!({"self": true})).await;
    u42.expect_push("user#42", "pub").await;
}

#[tokio::test]
async fn user_limited_channel_two_users() {
    let srv = Server::new();
    let mut u7 = srv.user("7").await;
    let mut u42 = srv.user("42").await;
    let mut u9 = srv.user("9").await;
    u7.subscribe("dm#7,42").await;
    u42.subscribe("dm#7,42").await;
    assert_eq!(u9.err("subscribe", json!({"channel": "dm#7,42"})).await, 103);
    // Prefix of an id is not the id.
    let mut u4 = srv.user("4").await;
    assert_eq!(u4.err("subscribe", json!({"channel": "dm#7,42"})).await, 103);
    u7.publish("dm#7,42", json!({"from": 7})).await;
    let p = u42.expect_push("dm#7,42", "pub").await;
    assert_eq!(p["data"], json!({"from": 7}));
    // Works inside a namespace too.
    u7.subscribe("chat:room#1,7").await;
    assert_eq!(u42.err("subscribe", json!({"channel": "chat:room#1,7"})).await, 103);
}

#[tokio::test]
async fn user_limited_overrides_namespace_permissions() {
    // "whatever the namespace says": nosub forbids client subscribe, but user#ID is open to ID.
    let srv = Server::new();
    let mut u1 = srv.user("1").await;
    u1.subscribe("nosub:inbox#1").await;
    let mut u2 = srv.user("2").await;
    assert_eq!(u2.err("subscribe", json!({"channel": "nosub:inbox#1"})).await, 103);
}

#[tokio::test]
async fn dollar_channel_needs_subscription_token() {
    let srv = Server::new();
    let mut c = srv.user("42").await;
    assert_eq!(c.err("subscribe", json!({"channel": "$private"})).await, 103, "no token");
    assert_eq!(
        c.err("subscribe", json!({"channel": "$private", "token": "garbage"})).await,
        103,
        "invalid sub token"
    );
    assert_eq!(
        c.err("subscribe", json!({"channel": "$private", "token": sub_token("7", "$private")})).await,
        103,
        "sub token for another user"
    );
    assert_eq!(
        c.err("subscribe", json!({"channel": "$private", "token": sub_token("42", "$other")})).await,
        103,
        "sub token for another channel"
    );
    assert_eq!(
        c.err(
            "subscribe",
            json!({"channel": "$private", "token": jwt_with_secret(json!({"sub":"42","channel":"$private"}), "wrong")})
        )
        .await,
        103,
        "wrongly signed sub token"
    );
    assert_eq!(
        c.err("subscribe", json!({"channel": "$private", "token": sub_token_exp("42", "$private", -60)}))
            .await,
        109,
        "expired sub token"
    );
    // Still connected after all those errors; a good token works.
    c.subscribe_with(json!({"channel": "$private", "token": sub_token("42", "$private")})).await;
    srv.api().publish("$private", json!({"p": 1})).await;
    c.expect_push("$private", "pub").await;
}

#[tokio::test]
async fn dollar_after_namespace_prefix_needs_token() {
    let srv = Server::new();
    let mut c = srv.user("42").await;
    assert_eq!(c.err("subscribe", json!({"channel": "chat:$vip"})).await, 103);
    c.subscribe_with(json!({"channel": "chat:$vip", "token": sub_token("42", "chat:$vip")})).await;
}

#[tokio::test]
async fn sub_token_info_becomes_chan_info() {
    let srv = Server::new();
    let mut c = srv.user("42").await;
    let info = json!({"role": "admin"});
    c.subscribe_with(json!({
        "channel": "$room",
        "token": jwt(json!({"sub": "42", "channel": "$room", "info": info}))
    }))
    .await;
    let p = c.ok("presence", json!({"channel": "$room"})).await;
    let e = &p["presence"][c.client_id.as_str()];
    assert_eq!(e["chan_info"], info, "{p}");
    assert_eq!(e["user"], json!("42"), "{p}");
}

#[tokio::test]
async fn sub_refresh_returns_expires_ttl() {
    let srv = Server::new();
    let mut c = srv.user("42").await;
    c.subscribe_with(json!({"channel": "$s", "token": sub_token_exp("42", "$s", 60)})).await;
    let r = c.ok("sub_refresh", json!({"channel": "$s", "token": sub_token_exp("42", "$s", 7200)})).await;
    assert_eq!(r["expires"], json!(true), "{r}");
    let ttl = num(&r, "ttl");
    assert!((7180..=7200).contains(&ttl), "ttl {ttl} not ≈ 7200: {r}");
}

#[tokio::test]
async fn subscription_expiry_closes_3006() {
    let srv = Server::builder().client("expired_close_delay", "\"1s\"").start();
    let mut c = srv.user("42").await;
    c.subscribe_with(json!({"channel": "$s", "token": sub_token_exp("42", "$s", 2)})).await;
    c.expect_close(3006, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn sub_refresh_prevents_subscription_expiry() {
    let srv = Server::builder().client("expired_close_delay", "\"1s\"").start();
    let mut c = srv.user("42").await;
    c.subscribe_with(json!({"channel": "$s", "token": sub_token_exp("42", "$s", 2)})).await;
    c.ok("sub_refresh", json!({"channel": "$s", "token": sub_token_exp("42", "$s", 3600)})).await;
    assert!(c.still_open_after(Duration::from_secs(4)).await, "closed despite sub_refresh: {:?}", c.close);
    srv.api().publish("$s", json!({"still": "subscribed"})).await;
    c.expect_push("$s", "pub").await;
}

#[tokio::test]
async fn presence_and_presence_stats() {
    let srv = Server::new();
    let mut a = srv.user("1").await;
    let mut b = srv.user("2").await;
    let mut b2 = srv.user("2").await;
    for c in [&mut a, &mut b, &mut b2] {
        c.subscribe("room").await;
    }
    let p = a.ok("presence", json!({"channel": "room"})).await;
    let map = p["presence"].as_object().unwrap_or_else(|| panic!("no presence map: {p}"));
    assert_eq!(map.len(), 3, "{p}");
    for (cl, user) in [(&a.client_id, "1"), (&b.client_id, "2"), (&b2.client_id, "2")] {
        let e = &map[cl.as_str()];
        assert_eq!(e["user"], json!(user), "{p}");
        assert_eq!(e["client"], json!(cl), "{p}");
    }
    let s = a.ok("presence_stats", json!({"channel": "room"})).await;
    assert_eq!(num(&s, "num_clients"), 3, "{s}");
    assert_eq!(num(&s, "num_users"), 2, "{s}");

    // Leaving updates presence.
    b2.close_now().await;
    drop(b2);
    b.ok("unsubscribe", json!({"channel": "room"})).await;
    let got = eventually(Duration::from_secs(5), || {
        let api = srv.api();
        async move {
            let s = api.ok("presence_stats", json!({"channel": "room"})).await;
            (num(&s, "num_clients") == 1 && num(&s, "num_users") == 1).then_some(s)
        }
    })
    .await;
    assert!(got.is_some(), "presence_stats did not drop to 1 client / 1 user");
    let p = a.ok("presence", json!({"channel": "room"})).await;
    assert_eq!(p["presence"].as_object().map(|m| m.len()), Some(1), "{p}");
}

#[tokio::test]
async fn presence_errors() {
    let srv = Server::new();
    let mut c = srv.user("1").await;
    c.subscribe("nopres:x").await;
    assert_eq!(c.err("presence", json!({"channel": "nopres:x"})).await, 108);
    assert_eq!(c.err("presence_stats", json!({"channel": "nopres:x"})).await, 108);
    // Not subscribed → 103.
    assert_eq!(c.err("presence", json!({"channel": "elsewhere"})).await, 103);
    assert_eq!(c.err("presence_stats", json!({"channel": "elsewhere"})).await, 103);
    // allow_presence_for_subscriber = false → 103 even when subscribed.
    c.subscribe("noperm:x").await;
    assert_eq!(c.err("presence", json!({"channel": "noperm:x"})).await, 103);
}

#[tokio::test]
async fn join_leave_pushes_only_to_those_who_asked() {
    let srv = Server::new();
    let mut watcher = srv.user("1").await;
    watcher.subscribe_with(json!({"channel": "room", "join_leave": true})).await;
    let mut quiet = srv.user("3").await;
    quiet.subscribe("room").await;

    let mut b = srv.user("2").await;
    b.subscribe("room").await;
    let j = watcher.expect_presence_push("room", "join", "2").await;
    assert_eq!(j["info"]["client"], json!(b.client_id.clone()), "{j}");

    b.ok("unsubscribe", json!({"channel": "room"})).await;
    let l = watcher.expect_presence_push("room", "leave", "2").await;
    assert_eq!(l["info"]["client"], json!(b.client_id.clone()), "{l}");

    // Leave on disconnect as well.
    let mut d = srv.user("4").await;
    d.subscribe("room").await;
    let j = watcher.expect_presence_push("room", "join", "4").await;
    assert!(j["info"]["client"].is_string(), "{j}");
    d.close_now().await;
    drop(d);
    watcher.expect_presence_push("room", "leave", "4").await;

    quiet.expect_no_push("room", "join", QUIET).await;
    quiet.expect_no_push("room", "leave", Duration::from_millis(10)).await;
}

#[tokio::test]
async fn force_push_join_leave_reaches_everyone() {
    let srv = Server::new();
    let mut a = srv.user("1").await;
    a.subscribe("fjl:room").await;
    let mut b = srv.user("2").await;
    b.subscribe("fjl:room").await;
    a.expect_presence_push("fjl:room", "join", "2").await;
    b.ok("unsubscribe", json!({"channel": "fjl:room"})).await;
    a.expect_presence_push("fjl:room", "leave", "2").await;
}

#[tokio::test]
async fn namespace_join_leave_off_means_no_join_pushes() {
    let srv = Server::new();
    let mut a = srv.user("1").await;
    a.subscribe_with(json!({"channel": "nojl:room", "join_leave": true})).await;
    let mut b = srv.user("2").await;
    b.subscribe("nojl:room").await;
    a.expect_no_push("nojl:room", "join", QUIET).await;
}

#[tokio::test]
async fn force_positioning_namespace_reports_positioned() {
    let srv = Server::new();
    let mut c = srv.user("1").await;
    let r = c.subscribe("pos:x").await;
    assert_eq!(r["positioned"], json!(true), "{r}");
    let r = c.subscribe_with(json!({"channel": "y", "positioned": true, "recoverable": true})).await;
    assert_eq!(r["positioned"], json!(true), "{r}");
    assert_eq!(r["recoverable"], json!(true), "{r}");
}

#[tokio::test]
async fn server_side_subscribe_and_unsubscribe_pushes() {
    let srv = Server::new();
    let mut c = srv.user("42").await;
    let mut other = srv.user("43").await;
    let api = srv.api();

    let r = api.ok("subscribe", json!({"user": "42", "channel": "alerts"})).await;
    assert_eq!(r, json!({}));
    let s = c.expect_push("alerts", "subscribe").await;
    assert!(s.is_object(), "{s}");
    other.expect_no_push("alerts", "subscribe", Duration::from_millis(200)).await;
    api.publish("alerts", json!({"a": 1})).await;
    let p = c.expect_push("alerts", "pub").await;
    assert_eq!(p["data"], json!({"a": 1}));

    let r = api.ok("unsubscribe", json!({"user": "42", "channel": "alerts"})).await;
    assert_eq!(r, json!({}));
    let u = c.expect_push("alerts", "unsubscribe").await;
    assert_eq!(num(&u, "code"), 2000, "{u}");
    assert_eq!(u["reason"], json!("server unsubscribe"), "{u}");
    api.publish("alerts", json!({"a": 2})).await;
    c.expect_no_push("alerts", "pub", QUIET).await;
}

#[tokio::test]
async fn api_unsubscribe_of_client_side_subscription() {
    let srv = Server::new();
    let mut c = srv.user("42").await;
    c.subscribe("c").await;
    srv.api().ok("unsubscribe", json!({"user": "42", "channel": "c"})).await;
    let u = c.expect_push("c", "unsubscribe").await;
    assert_eq!(num(&u, "code"), 2000, "{u}");
    // Re-subscribing works again (the subscription was really removed).
    c.subscribe("c").await;
}

#[tokio::test]
async fn api_subscribe_targets_one_client() {
    let srv = Server::new();
    let mut c1 = srv.user("42").await;
    let mut c2 = srv.user("42").await;
    srv.api()
        .ok("subscribe", json!({"user": "42", "channel": "only1", "client": c1.client_id.clone()}))
        .await;
    c1.expect_push("only1", "subscribe").await;
    c2.expect_no_push("only1", "subscribe", QUIET).await;
}

#[tokio::test]
async fn api_disconnect_default_and_custom_code() {
    let srv = Server::new();
    let mut a = srv.user("42").await;
    let mut b = srv.user("42").await;
    let mut keep = srv.user("43").await;
    let r = srv.api().ok("disconnect", json!({"user": "42", "client": a.client_id.clone()})).await;
    assert_eq!(r, json!({}));
    a.expect_close(3503, T).await;
    assert!(b.still_open_after(Duration::from_millis(200)).await, "other client of the user closed");

    srv.api()
        .ok("disconnect", json!({"user": "42", "disconnect": {"code": 4321, "reason": "go away"}}))
        .await;
    let reason = b.expect_close(4321, T).await;
    assert_eq!(reason, "go away");
    assert!(keep.still_open_after(Duration::from_millis(200)).await);
    keep.ok("rpc", json!({"method": "echo", "data": {}})).await;
}

/// Channel names are the client's choice and become keys of the hub's and the engine's
/// maps: longer than 255 bytes is refused (107) on every command that names one.
#[tokio::test]
async fn channel_names_over_255_bytes_are_refused() {
    let srv = Server::new();
    let mut c = srv.user("42").await;
    let long = "x".repeat(256);
    for (method, params) in [
        ("subscribe", json!({ "channel": long })),
        ("publish", json!({ "channel": long, "data": {} })),
        ("history", json!({ "channel": long, "limit": 1 })),
    ] {
        assert_eq!(c.err(method, params).await, 107, "{method}");
    }
    c.subscribe(&"x".repeat(255)).await;
}
