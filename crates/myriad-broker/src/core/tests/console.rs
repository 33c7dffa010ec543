//! The console's queries: a session as held, pages of retained messages,
//! deleting one retained message.

use super::*;

#[test]
fn an_offline_session_shows_its_subscriptions_and_queue() {
    let mut h = H::new();
    let c = h.connect(v5("dev").resume().expiry(3600));
    h.subscribe(c, "b/#", QoS::AtLeastOnce);
    h.subscribe(c, "a/+", QoS::AtMostOnce);
    h.subscribe(c, "c", QoS::ExactlyOnce);
    let online = h.broker.session_view("dev", 10).expect("session");
    assert!(online.connected);
    assert_eq!(online.protocol, Some(5));
    assert_eq!(online.clean_start, Some(false));
    h.disconnect(c);
    h.drain();
    h.inject(msg_q("b/1", "hello", QoS::AtLeastOnce, 0));
    h.inject(msg_q("b/2", "world!", QoS::AtLeastOnce, 0));
    let view = h.broker.session_view("dev", 2).expect("session");
    assert!(!view.connected);
    assert_eq!(view.protocol, None);
    assert_eq!(view.expiry_secs, 3600);
    assert_eq!(view.queued_messages, 2);
    assert!(view.queued_bytes >= "b/1hello".len() + "b/2world!".len());
    assert_eq!(view.inflight, 0);
    let filters: Vec<(&str, QoS)> = view
        .subscriptions
        .iter()
        .map(|s| (&*s.filter, s.qos))
        .collect();
    assert_eq!(
        filters,
        [("a/+", QoS::AtMostOnce), ("b/#", QoS::AtLeastOnce)]
    );
    assert!(view.subscriptions_truncated);
    assert!(
        !h.broker
            .session_view("dev", 3)
            .expect("session")
            .subscriptions_truncated
    );
    assert!(h.broker.session_view("nobody", 3).is_none());
}

fn topics(page: &crate::core::console::RetainedPage) -> Vec<&str> {
    page.items.iter().map(|m| &*m.topic).collect()
}

#[test]
fn retained_pages_are_in_topic_order_under_a_prefix() {
    let mut h = H::new();
    for topic in ["s/b", "s/a/x", "s/a", "sa/z", "t/q", "s/c/d/e", "$sys/x"] {
        h.inject(retained(topic, "v"));
    }
    let now = h.now;
    let page = h.broker.retained_page("s/", None, 2, now);
    assert_eq!(topics(&page), ["s/a", "s/a/x"]);
    assert!(page.more);
    let page = h.broker.retained_page("s/", Some("s/a/x"), 2, now);
    assert_eq!(topics(&page), ["s/b", "s/c/d/e"]);
    assert!(!page.more);
    let page = h.broker.retained_page("s", None, 10, now);
    assert_eq!(topics(&page), ["s/a", "s/a/x", "s/b", "s/c/d/e", "sa/z"]);
    let page = h.broker.retained_page("s/a/", None, 10, now);
    assert_eq!(topics(&page), ["s/a/x"]);
    let page = h.broker.retained_page("", None, 100, now);
    assert_eq!(page.items.len(), 7);
    assert_eq!(topics(&page)[0], "$sys/x");
    assert!(
        h.broker
            .retained_page("nothing/", None, 10, now)
            .items
            .is_empty()
    );
}

#[test]
fn deleting_a_retained_message_takes_its_topic_literally() {
    let mut h = H::new();
    h.inject(retained("r/1", "one"));
    h.inject(retained("r/2", "two"));
    assert!(!h.broker.delete_retained("r/+"));
    assert!(!h.broker.delete_retained("r"));
    assert!(h.broker.delete_retained("r/1"));
    assert!(!h.broker.delete_retained("r/1"));
    let c = h.connect(v5("late"));
    h.subscribe(c, "r/#", QoS::AtMostOnce);
    assert_eq!(h.payloads(c), vec!["two"]);
}

#[test]
fn the_topic_index_follows_sets_clears_and_evictions() {
    let mut h = H::new();
    for topic in ["x/1", "x/2", "x/3/deep", "y"] {
        h.inject(retained(topic, "v"));
    }
    h.inject(retained("x/1", "replaced"));
    h.inject(retained("x/2", ""));
    assert!(h.broker.delete_retained("y"));
    let evicted = h.broker.evict(
        h.now,
        &crate::core::evict::Eviction {
            clear_retained: vec!["x/3/#".into()],
            ..crate::core::evict::Eviction::disconnect("nobody", ReasonCode::NotAuthorized)
        },
    );
    assert_eq!(evicted.retained_cleared, 1);
    let now = h.now;
    let page = h.broker.retained_page("", None, 10, now);
    assert_eq!(topics(&page), ["x/1"]);
    assert_eq!(&page.items[0].payload[..], b"replaced");
    assert_eq!(h.broker.retained_count(), 1);
}
