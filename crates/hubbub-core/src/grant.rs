//! What a connection is granted when it connects: who it is, what it carries and which
//! channels the server subscribes it to. One struct, filled either from a connection token
//! ([`crate::auth::Tokens::verify_connect`]) or from the answer of a connect proxy, and read
//! by the session in one place, so both ways of connecting grant exactly the same things.

use hubbub_protocol::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything a connection is granted at connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectGrant {
    /// The user id; empty for an anonymous connection.
    pub user: String,
    /// Becomes `conn_info` in presence, join/leave and client publications.
    pub info: Option<Json>,
    /// Channels the server subscribes the connection to at connect.
    pub channels: Vec<String>,
    /// Server-side subscriptions with options (the `subs` claim); subscribed after
    /// `channels`, a channel in both takes these options.
    pub subs: BTreeMap<String, SubscribeOptions>,
    /// Kept on the server with the connection, never sent to clients; handed to proxies.
    pub meta: Option<Json>,
    /// When the connection expires, Unix seconds; `None`: never.
    pub expire_at: Option<u64>,
}

impl ConnectGrant {
    /// An anonymous connection: no user, nothing granted.
    pub fn anonymous() -> Self {
        ConnectGrant::default()
    }

    /// Every server-side subscription of the grant in order (`channels` first, then
    /// `subs`), each channel once, with its options.
    pub fn server_side_subscriptions(&self) -> Vec<(String, SubscribeOptions)> {
        let mut out: Vec<(String, SubscribeOptions)> = Vec::new();
        for channel in &self.channels {
            if !self.subs.contains_key(channel) && !out.iter().any(|(c, _)| c == channel) {
                out.push((channel.clone(), SubscribeOptions::default()));
            }
        }
        out.extend(self.subs.iter().map(|(c, o)| (c.clone(), o.clone())));
        out
    }
}

/// Options of one server-side subscription (Centrifugo's `SubscribeOptions` of the `subs`
/// claim and of the connect proxy's result). `b64info`/`b64data` are decoded into `info`
/// and `data` by whoever reads the claim.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscribeOptions {
    /// Becomes `chan_info` of this subscription.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64info: Option<String>,
    /// Sent to the client in the connect reply's `subs[channel].data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64data: Option<String>,
    /// Per-connection overrides of the namespace's options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#override: Option<SubscribeOverride>,
}

impl SubscribeOptions {
    /// The `override` as the session applies it (the same as a subscribe proxy's).
    pub fn overrides(&self) -> crate::proxy::SubscribeOverride {
        let o = self.r#override.clone().unwrap_or_default();
        let v = |b: Option<BoolValue>| b.map(|b| b.value);
        crate::proxy::SubscribeOverride {
            presence: v(o.presence),
            join_leave: v(o.join_leave),
            force_recovery: v(o.force_recovery),
            force_positioning: v(o.force_positioning),
            force_push_join_leave: v(o.force_push_join_leave),
        }
    }
}

/// Namespace options a server-side subscription may override, each `{"value": bool}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscribeOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<BoolValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_leave: Option<BoolValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_recovery: Option<BoolValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_positioning: Option<BoolValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_push_join_leave: Option<BoolValue>,
}

/// A boolean wrapped as protobuf's `BoolValue` is in JSON: `{"value": true}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BoolValue {
    pub value: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_side_subscriptions_once_each_subs_win() {
        let options: SubscribeOptions =
            serde_json::from_str(r#"{"data":{"welcome":1},"override":{"presence":{"value":false}}}"#)
                .unwrap();
        let grant = ConnectGrant {
            channels: vec!["a".into(), "b".into(), "a".into()],
            subs: [("b".to_string(), options.clone())].into(),
            ..Default::default()
        };
        let subs = grant.server_side_subscriptions();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].0, "a");
        assert!(subs[0].1.data.is_none());
        assert_eq!(subs[1].0, "b");
        assert_eq!(subs[1].1.data.as_ref().unwrap().as_json().unwrap(), r#"{"welcome":1}"#);
        let presence = subs[1].1.r#override.as_ref().unwrap().presence;
        assert_eq!(presence, Some(BoolValue { value: false }));
        assert!(serde_json::from_str::<SubscribeOptions>(r#"{"nope":1}"#).is_err());
    }
}
