//! Channel names, namespaces and their options.
//!
//! A channel `ns:rest` belongs to namespace `ns`; a channel without `:` to the default
//! namespace (name `""`). A `#` limits a channel to the user ids listed after it
//! (`user#42`, `dm#7,42`), whatever its namespace allows. A `$` at the start of the name
//! (after the namespace prefix) makes the channel private: a subscription token is needed.

use crate::duration::serde_human;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// Options of one namespace. The defaults are those of the default namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// `""` for the default namespace.
    pub name: String,
    /// Keep track of who is subscribed (presence and presence_stats).
    pub presence: bool,
    /// Emit join and leave events (pushed to subscribers that ask for them).
    pub join_leave: bool,
    /// Push join and leave to every subscriber, whether it asked or not.
    pub force_push_join_leave: bool,
    /// Publications kept per channel for history and recovery; 0 turns history off.
    pub history_size: usize,
    /// How long a publication stays in history.
    #[serde(with = "serde_human")]
    pub history_ttl: Duration,
    /// Every subscription is recoverable, whether the client asked or not.
    pub force_recovery: bool,
    /// Every subscription is positioned (the client learns the stream position).
    pub force_positioning: bool,
    /// Any client may publish (without being subscribed).
    pub allow_publish_for_client: bool,
    /// A client subscribed to the channel may publish to it (Centrifugo's option of the
    /// same name; it changes nothing where `allow_publish_for_client` already allows).
    pub allow_publish_for_subscriber: bool,
    pub allow_subscribe_for_client: bool,
    pub allow_presence_for_subscriber: bool,
    pub allow_history_for_subscriber: bool,
    /// A publish is answered only once the publication is durable (the engine's log synced:
    /// with the memory engine, its batch's fsync), not as soon as it is delivered.
    pub durable_publish: bool,
    /// What a recovering subscriber gets: every missed publication (`"stream"`), or only
    /// the latest one (`"cache"`: the channel's last publication is its state).
    pub force_recovery_mode: RecoveryMode,
    /// Delta compressions a subscriber may ask for (`["fossil"]`); empty: none.
    pub allowed_delta_types: Vec<DeltaType>,
    /// Publications of the namespace go to delta subscribers as deltas against the channel's
    /// previous publication (Centrifugo's per-namespace `delta_publish`).
    pub delta_publish: bool,
    /// Subscribers may pass a tags filter (`tf`) and get only the publications it matches.
    pub allow_tags_filter: bool,
    /// The proxy (by its name in `proxies`) asked when a client subscribes without a token:
    /// it decides instead of `allow_subscribe_for_client` (Centrifugo's name).
    pub subscribe_proxy_name: String,
    /// The proxy asked when a client publishes: it decides instead of
    /// `allow_publish_for_client`, and may replace the data.
    pub publish_proxy_name: String,
    /// The proxy asked when a subscription its subscribe proxy gave an `expire_at` expires.
    pub sub_refresh_proxy_name: String,
}

/// How a subscriber recovers (`force_recovery_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryMode {
    /// The publications after the client's position, all of them.
    #[default]
    #[serde(alias = "")]
    Stream,
    /// The channel's latest publication only (unless the client already has it).
    Cache,
}

/// A delta compression of publications a subscriber may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaType {
    /// Fossil SCM's delta format, as centrifuge-js applies it.
    Fossil,
}

impl DeltaType {
    /// The name a client asks for in `SubscribeRequest::delta`.
    pub fn parse(name: &str) -> Option<DeltaType> {
        (name == "fossil").then_some(DeltaType::Fossil)
    }
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            name: String::new(),
            presence: true,
            join_leave: true,
            force_push_join_leave: false,
            history_size: 100,
            history_ttl: Duration::from_secs(600),
            force_recovery: true,
            force_positioning: false,
            allow_publish_for_client: true,
            allow_publish_for_subscriber: false,
            allow_subscribe_for_client: true,
            allow_presence_for_subscriber: true,
            allow_history_for_subscriber: true,
            durable_publish: false,
            force_recovery_mode: RecoveryMode::Stream,
            allowed_delta_types: Vec::new(),
            delta_publish: false,
            allow_tags_filter: false,
            subscribe_proxy_name: String::new(),
            publish_proxy_name: String::new(),
            sub_refresh_proxy_name: String::new(),
        }
    }
}

impl NamespaceConfig {
    pub fn history_enabled(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }
}

/// Why a channel name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("empty channel name")]
    Empty,
    #[error("channel name too long")]
    TooLong,
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),
}

/// The longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LENGTH: usize = 255;

/// All namespaces, looked up by name.
#[derive(Debug, Clone)]
pub struct Namespaces {
    by_name: HashMap<String, NamespaceConfig>,
}

impl Namespaces {
    /// Builds the lookup. When the list has no default namespace (`name = ""`), the
    /// default options are used for it.
    pub fn new(list: &[NamespaceConfig]) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        for ns in list {
            if ns.name.contains([':', '#', '$']) {
                return Err(format!("namespaces.name {:?}: must not contain ':', '#' or '$'", ns.name));
            }
            if by_name.insert(ns.name.clone(), ns.clone()).is_some() {
                return Err(format!("namespaces.name {:?}: defined twice", ns.name));
            }
        }
        by_name.entry(String::new()).or_default();
        Ok(Namespaces { by_name })
    }

    /// Finds the options for a channel.
    pub fn resolve<'a>(&self, channel: &'a str) -> Result<(&NamespaceConfig, ChannelName<'a>), ChannelError> {
        let name = ChannelName::parse(channel)?;
        self.by_name
            .get(name.namespace)
            .map(|ns| (ns, name))
            .ok_or_else(|| ChannelError::UnknownNamespace(name.namespace.to_owned()))
    }
}

/// A channel name split into the parts that decide who may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelName<'a> {
    pub namespace: &'a str,
    /// The part after the namespace prefix.
    pub rest: &'a str,
    /// The comma-separated user ids after `#`, if the channel is user-limited.
    pub allowed_users: Option<&'a str>,
}

impl<'a> ChannelName<'a> {
    pub fn parse(channel: &'a str) -> Result<Self, ChannelError> {
        if channel.is_empty() {
            return Err(ChannelError::Empty);
        }
        if channel.len() > MAX_CHANNEL_LENGTH {
            return Err(ChannelError::TooLong);
        }
        let (namespace, rest) = match channel.split_once(':') {
            Some((ns, rest)) => (ns, rest),
            None => ("", channel),
        };
        let allowed_users = channel.rsplit_once('#').map(|(_, users)| users);
        Ok(ChannelName { namespace, rest, allowed_users })
    }

    /// Private channels need a subscription token.
    pub fn is_private(&self) -> bool {
        self.rest.starts_with('$')
    }

    /// `None` when the channel is not user-limited; otherwise whether `user` is listed.
    pub fn user_allowed(&self, user: &str) -> Option<bool> {
        self.allowed_users.map(|users| !user.is_empty() && users.split(',').any(|u| u == user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_namespaces_and_user_limits() {
        let chat = NamespaceConfig { name: "chat".into(), presence: false, ..Default::default() };
        let ns = Namespaces::new(&[chat]).unwrap();
        assert!(ns.resolve("news").unwrap().0.presence);
        assert!(!ns.resolve("chat:room").unwrap().0.presence);
        assert_eq!(ns.resolve("nope:x").unwrap_err(), ChannelError::UnknownNamespace("nope".into()));
        assert_eq!(ns.resolve("").unwrap_err(), ChannelError::Empty);

        let dm = ChannelName::parse("dm#7,42").unwrap();
        assert_eq!(dm.user_allowed("7"), Some(true));
        assert_eq!(dm.user_allowed("42"), Some(true));
        assert_eq!(dm.user_allowed("4"), Some(false));
        assert_eq!(dm.user_allowed(""), Some(false));
        assert_eq!(ChannelName::parse("news").unwrap().user_allowed("1"), None);
        assert!(ChannelName::parse("chat:$secret").unwrap().is_private());
    }
}
