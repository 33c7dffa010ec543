//! Who may publish and subscribe where.
//!
//! # The device topic namespace
//!
//! `{id}` is a device id: 1 to 128 bytes of `[A-Za-z0-9_.:-]`, so it never
//! contains `/`, `+`, `#` or `$` and always fills exactly one topic level.
//! System topics start with `$`, so a filter starting with `#` or `+` never
//! matches them (MQTT-4.7.2-1).
//!
//! | topic | direction | what |
//! |---|---|---|
//! | `devices/{id}/telemetry` | device -> platform | telemetry: JSON object of metric -> number |
//! | `devices/{id}/...` | device <-> apps | the device's own free-form topics |
//! | `$shadow/{id}/update` | device -> platform | reported state (and desired, from apps) |
//! | `$shadow/{id}/get` | device -> platform | ask for the whole shadow |
//! | `$shadow/{id}/update/accepted`, `.../rejected`, `$shadow/{id}/update/delta`, `$shadow/{id}/get/accepted`, `.../rejected` | platform -> device | shadow replies |
//! | `$commands/{id}/{name}` | platform -> device | a command |
//! | `$commands/{id}/reply/{command_id}` | device -> platform | MQTT 3.1.1 command replies (MQTT 5 devices use the response topic) |
//! | `$ota/{id}/notify` | platform -> device | an update is available |
//! | `$ota/{id}/progress` | device -> platform | update progress |
//! | `$events/presence/{id}` | platform -> apps | online/offline events (see [`crate::presence`]) |
//!
//! # Rules
//!
//! A device `{id}` may **publish** to exactly:
//! - `devices/{id}` and anything below it (`devices/{id}/#`),
//! - `$shadow/{id}/update` and `$shadow/{id}/get`,
//! - `$commands/{id}/reply` and anything below it,
//! - `$ota/{id}/progress`.
//!
//! It may **subscribe** to any filter that lies inside `devices/{id}/#`,
//! `$shadow/{id}/#`, `$commands/{id}/#` or `$ota/{id}/#`: the first two
//! levels must be literally the namespace and its own id (`+` or `#` in
//! the id position would reach other devices and is refused); wildcards
//! are fine below that. Nothing else: not `#`, not `$events/#`, not
//! another device's topics.
//!
//! An **application** client may publish to topics matched by one of its
//! `publish` filters and subscribe to filters lying inside one of its
//! `subscribe` filters ([`myriad_mqtt::topic::filter_covers`]). Note that
//! a granted `#` does not reach `$` topics; grant `$shadow/#` etc.
//! explicitly. An **admin** client may publish and subscribe anywhere.
//!
//! A shared subscription `$share/{group}/{filter}` is judged on `{filter}`;
//! a malformed `$share` filter is refused. Invalid topics and filters are
//! refused for everyone.

use myriad_mqtt::topic::{
    filter_covers, matches, parse_shared, valid_topic_filter, valid_topic_name,
};

use crate::registry::{AppClient, AppId, DeviceId};

/// Who is connected, as far as the ACL cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A device: its own namespace only.
    Device(DeviceId),
    /// An application client: its configured filters.
    App {
        /// The app's id.
        id: AppId,
        /// Filters of the topics it may publish to.
        publish: Vec<String>,
        /// Filters it may subscribe within.
        subscribe: Vec<String>,
    },
    /// An admin client: everything.
    Admin(String),
}

impl Principal {
    /// The principal of a registered app client ([`Principal::Admin`] if it
    /// is an admin).
    pub fn from_app(app: &AppClient) -> Principal {
        if app.admin {
            Principal::Admin(app.id.as_str().to_string())
        } else {
            Principal::App {
                id: app.id.clone(),
                publish: app.publish.clone(),
                subscribe: app.subscribe.clone(),
            }
        }
    }
}

/// Splits `s` into its first level, its second level and the rest (after
/// the second `/`, if any).
fn split2(s: &str) -> (&str, Option<&str>, Option<&str>) {
    let mut parts = s.splitn(3, '/');
    let first = parts.next().unwrap_or("");
    (first, parts.next(), parts.next())
}

/// Whether `rest` is `level` or starts with `level/`.
fn is_or_below(rest: &str, level: &str) -> bool {
    rest.strip_prefix(level)
        .is_some_and(|after| after.is_empty() || after.starts_with('/'))
}

fn device_may_publish(id: &str, topic: &str) -> bool {
    let (namespace, device, rest) = split2(topic);
    if device != Some(id) {
        return false;
    }
    match (namespace, rest) {
        ("devices", _) => true,
        ("$shadow", Some(rest)) => matches!(rest, "update" | "get" | "delete"),
        ("$commands", Some(rest)) => is_or_below(rest, "reply"),
        ("$ota", Some(rest)) => matches!(rest, "progress" | "get"),
        _ => false,
    }
}

fn device_may_subscribe(id: &str, filter: &str) -> bool {
    let (namespace, device, _) = split2(filter);
    device == Some(id) && matches!(namespace, "devices" | "$shadow" | "$commands" | "$ota")
}

/// Whether `principal` may publish to `topic` (see the
/// [module documentation](self)).
pub fn may_publish(principal: &Principal, topic: &str) -> bool {
    if !valid_topic_name(topic) {
        return false;
    }
    match principal {
        Principal::Device(id) => device_may_publish(id.as_str(), topic),
        Principal::App { publish, .. } => publish.iter().any(|f| matches(f, topic)),
        Principal::Admin(_) => true,
    }
}

/// Whether `principal` may subscribe to `filter` (see the
/// [module documentation](self)); `$share/{group}/{f}` is judged on `f`.
pub fn may_subscribe(principal: &Principal, filter: &str) -> bool {
    let inner = match parse_shared(filter) {
        Ok(Some(shared)) => shared.filter,
        Ok(None) => filter,
        Err(_) => return false,
    };
    if !valid_topic_filter(inner) {
        return false;
    }
    match principal {
        Principal::Device(id) => device_may_subscribe(id.as_str(), inner),
        Principal::App { subscribe, .. } => subscribe.iter().any(|f| filter_covers(f, inner)),
        Principal::Admin(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev(id: &str) -> Principal {
        Principal::Device(DeviceId::new(id).unwrap())
    }

    #[test]
    fn device_publishes_in_its_namespace_only() {
        let d = dev("d1");
        for ok in [
            "devices/d1",
            "devices/d1/telemetry",
            "devices/d1/a/b/c",
            "devices/d1/",
            "$shadow/d1/update",
            "$shadow/d1/get",
            "$commands/d1/reply",
            "$commands/d1/reply/42",
            "$commands/d1/reply/42/x",
            "$ota/d1/progress",
            "$ota/d1/get",
        ] {
            assert!(may_publish(&d, ok), "{ok}");
        }
        for bad in [
            "devices/d1x/telemetry",
            "devices/d/telemetry",
            "devices/d2/telemetry",
            "devices",
            "devices/",
            "telemetry/d1",
            "$shadow/d1/update/delta",
            "$shadow/d1/update/accepted",
            "$shadow/d1/get/accepted",
            "$shadow/d1",
            "$shadow/d2/update",
            "$commands/d1/reboot",
            "$commands/d1/replyx",
            "$commands/d1",
            "$ota/d1/notify",
            "$ota/d1/progress/x",
            "$events/presence/d1",
            "d1",
            "",
            "devices/+/telemetry",
            "devices/d1/#",
            "$share/g/devices/d1/x",
            "Devices/d1/telemetry",
        ] {
            assert!(!may_publish(&d, bad), "{bad}");
        }
    }

    #[test]
    fn device_subscribes_in_its_namespace_only() {
        let d = dev("d1");
        for ok in [
            "$shadow/d1/#",
            "$shadow/d1/update/delta",
            "$shadow/d1/+/accepted",
            "$commands/d1/#",
            "$commands/d1/+",
            "$ota/d1/notify",
            "$ota/d1/#",
            "devices/d1/#",
            "devices/d1",
            "devices/d1/+/x",
            "$share/grp/$commands/d1/#",
            "$share/grp/devices/d1/telemetry",
        ] {
            assert!(may_subscribe(&d, ok), "{ok}");
        }
        for bad in [
            "#",
            "+/#",
            "+/d1/#",
            "$shadow/+/update/delta",
            "$shadow/#",
            "$commands/#",
            "devices/+/telemetry",
            "devices/#",
            "devices/d1x/#",
            "devices/d/#",
            "$events/#",
            "$events/presence/d1",
            "$share/g/#",
            "$share/g/devices/d2/#",
            "$share//devices/d1/#",
            "$share/g",
            "$share/+/devices/d1/#",
            "devices/d1/#/x",
            "devices/d1+/x",
            "",
        ] {
            assert!(!may_subscribe(&d, bad), "{bad}");
        }
    }

    #[test]
    fn ids_with_dots_colons_and_dashes() {
        let d = dev("a.b:c-d_e");
        assert!(may_publish(&d, "devices/a.b:c-d_e/telemetry"));
        assert!(!may_publish(&d, "devices/a.b:c-d_e2/telemetry"));
        assert!(may_subscribe(&d, "$commands/a.b:c-d_e/#"));
        assert!(!may_subscribe(&d, "$commands/a.b:c-d_/#"));
    }

    #[test]
    fn app_filters() {
        let app = Principal::App {
            id: AppId::new("dash").unwrap(),
            publish: vec!["$commands/+/reboot".into(), "ops/#".into()],
            subscribe: vec!["devices/+/telemetry".into(), "$events/#".into(), "#".into()],
        };
        assert!(may_publish(&app, "$commands/d1/reboot"));
        assert!(may_publish(&app, "ops/x/y"));
        assert!(!may_publish(&app, "$commands/d1/reply/1"));
        assert!(!may_publish(&app, "devices/d1/telemetry"));
        assert!(may_subscribe(&app, "devices/+/telemetry"));
        assert!(may_subscribe(&app, "devices/d7/telemetry"));
        assert!(may_subscribe(&app, "$events/presence/+"));
        assert!(may_subscribe(&app, "$share/workers/$events/#"));
        assert!(may_subscribe(&app, "anything/at/all"));
        // `#` does not reach `$` topics.
        assert!(!may_subscribe(&app, "$shadow/d1/#"));
        assert!(!may_subscribe(&app, "$share/w/$shadow/#"));
    }

    #[test]
    fn admin_goes_anywhere_valid() {
        let admin = Principal::Admin("root".into());
        assert!(may_publish(&admin, "$shadow/d1/update/delta"));
        assert!(may_subscribe(&admin, "#"));
        assert!(may_subscribe(&admin, "$share/g/$events/#"));
        assert!(!may_publish(&admin, "a/+"));
        assert!(!may_subscribe(&admin, "a/#/b"));
    }

    #[test]
    fn principal_from_app() {
        let app = crate::registry::NewAppClient {
            id: AppId::new("ops").unwrap(),
            name: String::new(),
            publish: vec![],
            subscribe: vec![],
            admin: true,
        }
        .into_app(0)
        .unwrap();
        assert_eq!(Principal::from_app(&app), Principal::Admin("ops".into()));
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("d1".to_string()),
            Just("d1x".to_string()),
            Just("d".to_string()),
            Just("+".to_string()),
            Just("#".to_string()),
            Just("devices".to_string()),
            Just("$shadow".to_string()),
            Just("$commands".to_string()),
            Just("$ota".to_string()),
            Just("$events".to_string()),
            Just("reply".to_string()),
            Just("update".to_string()),
            Just(String::new()),
        ]
    }

    proptest! {
        /// The hand-written subscribe rule agrees with `filter_covers` over
        /// the four namespaces.
        #[test]
        fn subscribe_rule_is_filter_covers(levels in proptest::collection::vec(level(), 1..5)) {
            let filter = levels.join("/");
            let expected = valid_topic_filter(&filter)
                && ["devices/d1/#", "$shadow/d1/#", "$commands/d1/#", "$ota/d1/#"]
                    .iter()
                    .any(|outer| filter_covers(outer, &filter));
            prop_assert_eq!(may_subscribe(&dev("d1"), &filter), expected, "{}", filter);
        }

        /// The hand-written publish rule agrees with `matches` over the
        /// listed filters.
        #[test]
        fn publish_rule_is_matches(levels in proptest::collection::vec(level(), 1..5)) {
            let topic = levels.join("/");
            let expected = valid_topic_name(&topic)
                && ["devices/d1/#", "$shadow/d1/update", "$shadow/d1/get",
                    "$commands/d1/reply/#", "$ota/d1/progress"]
                    .iter()
                    .any(|f| matches(f, &topic));
            prop_assert_eq!(may_publish(&dev("d1"), &topic), expected, "{}", topic);
        }
    }
}
