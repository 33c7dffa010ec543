//! End-to-end tests: the real `myriad serve` binary driven by rumqttc clients,
//! MQTT 3.1.1 (`rumqttc::{AsyncClient, MqttOptions}`) and MQTT 5.0 (`rumqttc::v5`).
//!
//! Each test starts its own broker on 127.0.0.1:0 (see `common::Broker`), so tests are
//! independent and can run in parallel. Every wait is bounded (`common::WAIT`).
//!
//! Note rumqttc#1060: in the v5 client a QoS 2 PUBREC carrying a failure reason code
//! leaks an inflight slot. These tests only use QoS 2 flows that succeed (there is
//! always a matching subscriber and nothing is denied).

mod common;

use common::{Broker, unique};

// ---------------------------------------------------------------------------------
// MQTT 3.1.1
// ---------------------------------------------------------------------------------
mod v311 {
    use super::*;
    use common::v4::{self, LastWill, QoS};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_subscribe_publish_qos0_1_2() {
        let broker = Broker::start().await;
        let prefix = unique("rt311");

        let (mut sub, ack) = v4::connect(v4::options(broker.port, &unique("sub311"))).await;
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
        assert!(
            !ack.session_present,
            "clean session must not report a session"
        );
        sub.subscribe_ok(&format!("{prefix}/#"), QoS::ExactlyOnce)
            .await;

        let (mut publisher, _) = v4::connect(v4::options(broker.port, &unique("pub311"))).await;
        publisher
            .publish(&format!("{prefix}/q0"), QoS::AtMostOnce, false, "zero")
            .await;
        publisher
            .publish(&format!("{prefix}/q1"), QoS::AtLeastOnce, false, "one")
            .await;
        publisher
            .publish(&format!("{prefix}/q2"), QoS::ExactlyOnce, false, "two")
            .await;

        let got = sub.recv_publishes(3).await;
        let summary: Vec<(String, QoS, Vec<u8>, bool)> = got
            .iter()
            .map(|p| (v4::topic(p), p.qos, v4::payload(p).to_vec(), p.retain))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    format!("{prefix}/q0"),
                    QoS::AtMostOnce,
                    b"zero".to_vec(),
                    false
                ),
                (
                    format!("{prefix}/q1"),
                    QoS::AtLeastOnce,
                    b"one".to_vec(),
                    false
                ),
                (
                    format!("{prefix}/q2"),
                    QoS::ExactlyOnce,
                    b"two".to_vec(),
                    false
                ),
            ]
        );
        sub.expect_no_publish().await;

        publisher.disconnect().await;
        sub.disconnect().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscription_qos_downgrades_delivery() {
        let broker = Broker::start().await;
        let topic = unique("downgrade311");

        let (mut sub, _) = v4::connect(v4::options(broker.port, &unique("sub311"))).await;
        sub.subscribe_ok(&topic, QoS::AtLeastOnce).await;
        let (mut publisher, _) = v4::connect(v4::options(broker.port, &unique("pub311"))).await;
        publisher
            .publish(&topic, QoS::ExactlyOnce, false, "q2 in, q1 out")
            .await;

        let p = sub.recv_publish().await;
        assert_eq!(
            p.qos,
            QoS::AtLeastOnce,
            "delivered QoS is min(publish, subscription)"
        );
        assert_eq!(&p.payload[..], b"q2 in, q1 out");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retained_message_delivered_on_later_subscribe() {
        let broker = Broker::start().await;
        let topic = unique("retain311");

        let (mut publisher, _) = v4::connect(v4::options(broker.port, &unique("pub311"))).await;
        publisher
            .publish(&topic, QoS::AtLeastOnce, true, "sticky")
            .await;
        publisher.disconnect().await;

        let (mut late, _) = v4::connect(v4::options(broker.port, &unique("late311"))).await;
        late.subscribe_ok(&topic, QoS::AtLeastOnce).await;
        let p = late.recv_publish().await;
        assert_eq!(v4::topic(&p), topic);
        assert_eq!(&p.payload[..], b"sticky");
        assert!(
            p.retain,
            "a retained message sent because of a new subscription has RETAIN=1"
        );

        // an empty retained payload clears it
        late.publish(&topic, QoS::AtLeastOnce, true, Vec::new())
            .await;
        let cleared = late.recv_publish().await; // the live delivery of the clearing publish
        assert!(cleared.payload.is_empty());
        late.disconnect().await;
        let (mut later, _) = v4::connect(v4::options(broker.port, &unique("later311"))).await;
        later.subscribe_ok(&topic, QoS::AtLeastOnce).await;
        later.expect_no_publish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persistent_session_receives_qos1_published_while_offline() {
        let broker = Broker::start().await;
        let topic = unique("offline311");
        let id = unique("persist311");

        let mut opts = v4::options(broker.port, &id);
        opts.set_clean_session(false);
        let (mut client, ack) = v4::connect(opts.clone()).await;
        assert!(
            !ack.session_present,
            "first connection has no stored session"
        );
        client.subscribe_ok(&topic, QoS::AtLeastOnce).await;
        client.disconnect().await;

        let (mut publisher, _) = v4::connect(v4::options(broker.port, &unique("pub311"))).await;
        for i in 0..3 {
            publisher
                .publish(&topic, QoS::AtLeastOnce, false, format!("offline {i}"))
                .await;
        }
        publisher.disconnect().await;

        let (mut client, ack) = v4::connect(opts).await;
        assert!(
            ack.session_present,
            "reconnect with clean_session=false resumes the session"
        );
        // no new SUBSCRIBE: the stored subscription and queued messages must be used
        let got = client.recv_publishes(3).await;
        let payloads: Vec<Vec<u8>> = got.iter().map(|p| p.payload.to_vec()).collect();
        assert_eq!(
            payloads,
            vec![
                b"offline 0".to_vec(),
                b"offline 1".to_vec(),
                b"offline 2".to_vec()
            ]
        );
        assert!(got.iter().all(|p| p.qos == QoS::AtLeastOnce));
        client.disconnect().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wildcard_subscriptions() {
        let broker = Broker::start().await;
        let root = unique("wild311");

        let (mut plus, _) = v4::connect(v4::options(broker.port, &unique("plus311"))).await;
        plus.subscribe_ok(&format!("{root}/+/temp"), QoS::AtLeastOnce)
            .await;
        let (mut hash, _) = v4::connect(v4::options(broker.port, &unique("hash311"))).await;
        hash.subscribe_ok(&format!("{root}/#"), QoS::AtLeastOnce)
            .await;

        let (mut publisher, _) = v4::connect(v4::options(broker.port, &unique("pub311"))).await;
        for t in ["a/temp", "a/b/temp", "a/hum"] {
            publisher
                .publish(&format!("{root}/{t}"), QoS::AtLeastOnce, false, t)
                .await;
        }
        // '#' also matches the parent level itself
        publisher
            .publish(&root, QoS::AtLeastOnce, false, "parent")
            .await;

        let p = plus.recv_publish().await;
        assert_eq!(v4::topic(&p), format!("{root}/a/temp"));
        plus.expect_no_publish().await;

        let got: Vec<String> = hash.recv_publishes(4).await.iter().map(v4::topic).collect();
        let mut want = vec![
            root.clone(),
            format!("{root}/a/b/temp"),
            format!("{root}/a/hum"),
            format!("{root}/a/temp"),
        ];
        want.sort();
        assert_eq!(got, want);
        hash.expect_no_publish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn last_will_published_on_abrupt_drop() {
        let broker = Broker::start().await;
        let will_topic = unique("will311");

        let (mut watcher, _) = v4::connect(v4::options(broker.port, &unique("watch311"))).await;
        watcher.subscribe_ok(&will_topic, QoS::AtLeastOnce).await;

        let mut opts = v4::options(broker.port, &unique("dying311"));
        opts.set_last_will(LastWill::new(&will_topic, "gone", QoS::AtLeastOnce, false));
        let (dying, _) = v4::connect(opts).await;
        dying.drop_abruptly().await; // socket closed, no DISCONNECT

        let p = watcher.recv_publish().await;
        assert_eq!(v4::topic(&p), will_topic);
        assert_eq!(&p.payload[..], b"gone");
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_last_will_after_clean_disconnect() {
        let broker = Broker::start().await;
        let will_topic = unique("nowill311");

        let (mut watcher, _) = v4::connect(v4::options(broker.port, &unique("watch311"))).await;
        watcher.subscribe_ok(&will_topic, QoS::AtLeastOnce).await;

        let mut opts = v4::options(broker.port, &unique("polite311"));
        opts.set_last_will(LastWill::new(&will_topic, "gone", QoS::AtLeastOnce, false));
        let (polite, _) = v4::connect(opts).await;
        polite.disconnect().await;

        watcher.expect_no_publish().await;
    }
}

// ---------------------------------------------------------------------------------
// MQTT 5.0
// ---------------------------------------------------------------------------------
mod v50 {
    use super::*;
    use common::v5::{self, LastWill, QoS};
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_subscribe_publish_qos0_1_2() {
        let broker = Broker::start().await;
        let prefix = unique("rt5");

        let (mut sub, ack) = v5::connect(v5::options(broker.port, &unique("sub5"))).await;
        assert_eq!(ack.code, ConnectReturnCode::Success);
        assert!(!ack.session_present);
        sub.subscribe_ok(&format!("{prefix}/#"), QoS::ExactlyOnce)
            .await;

        let (mut publisher, _) = v5::connect(v5::options(broker.port, &unique("pub5"))).await;
        publisher
            .publish(&format!("{prefix}/q0"), QoS::AtMostOnce, false, "zero")
            .await;
        publisher
            .publish(&format!("{prefix}/q1"), QoS::AtLeastOnce, false, "one")
            .await;
        publisher
            .publish(&format!("{prefix}/q2"), QoS::ExactlyOnce, false, "two")
            .await;

        let got = sub.recv_publishes(3).await;
        let summary: Vec<(String, QoS, Vec<u8>)> = got
            .iter()
            .map(|p| (v5::topic(p), p.qos, p.payload.to_vec()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (format!("{prefix}/q0"), QoS::AtMostOnce, b"zero".to_vec()),
                (format!("{prefix}/q1"), QoS::AtLeastOnce, b"one".to_vec()),
                (format!("{prefix}/q2"), QoS::ExactlyOnce, b"two".to_vec()),
            ]
        );
        sub.expect_no_publish().await;

        publisher.disconnect().await;
        sub.disconnect().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retained_message_delivered_on_later_subscribe() {
        let broker = Broker::start().await;
        let topic = unique("retain5");

        let (mut publisher, _) = v5::connect(v5::options(broker.port, &unique("pub5"))).await;
        publisher
            .publish(&topic, QoS::AtLeastOnce, true, "sticky5")
            .await;
        publisher.disconnect().await;

        let (mut late, _) = v5::connect(v5::options(broker.port, &unique("late5"))).await;
        late.subscribe_ok(&topic, QoS::AtLeastOnce).await;
        let p = late.recv_publish().await;
        assert_eq!(v5::topic(&p), topic);
        assert_eq!(&p.payload[..], b"sticky5");
        assert!(p.retain);
        late.disconnect().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persistent_session_receives_qos1_published_while_offline() {
        let broker = Broker::start().await;
        let topic = unique("offline5");
        let id = unique("persist5");

        let mut opts = v5::options(broker.port, &id);
        opts.set_clean_start(false);
        opts.set_session_expiry_interval(Some(300));
        let (mut client, ack) = v5::connect(opts.clone()).await;
        assert!(
            !ack.session_present,
            "first connection has no stored session"
        );
        client.subscribe_ok(&topic, QoS::AtLeastOnce).await;
        client.disconnect().await;

        let (mut publisher, _) = v5::connect(v5::options(broker.port, &unique("pub5"))).await;
        for i in 0..3 {
            publisher
                .publish(&topic, QoS::AtLeastOnce, false, format!("offline {i}"))
                .await;
        }
        publisher.disconnect().await;

        let (mut client, ack) = v5::connect(opts).await;
        assert!(
            ack.session_present,
            "clean start = false within the session expiry interval resumes the session"
        );
        let got = client.recv_publishes(3).await;
        let payloads: Vec<Vec<u8>> = got.iter().map(|p| p.payload.to_vec()).collect();
        assert_eq!(
            payloads,
            vec![
                b"offline 0".to_vec(),
                b"offline 1".to_vec(),
                b"offline 2".to_vec()
            ]
        );
        assert!(got.iter().all(|p| p.qos == QoS::AtLeastOnce));
        client.disconnect().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn session_expiry_zero_discards_session() {
        let broker = Broker::start().await;
        let id = unique("ephemeral5");

        let mut opts = v5::options(broker.port, &id);
        opts.set_clean_start(false);
        opts.set_session_expiry_interval(Some(0));
        let (mut client, _) = v5::connect(opts.clone()).await;
        client
            .subscribe_ok(&unique("ephemeral5-topic"), QoS::AtLeastOnce)
            .await;
        client.disconnect().await;

        let (client, ack) = v5::connect(opts).await;
        assert!(
            !ack.session_present,
            "session expiry 0 ends the session at disconnect"
        );
        client.disconnect().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wildcard_subscriptions() {
        let broker = Broker::start().await;
        let root = unique("wild5");

        let (mut sub, _) = v5::connect(v5::options(broker.port, &unique("sub5"))).await;
        sub.subscribe_ok(&format!("{root}/+/state"), QoS::AtLeastOnce)
            .await;
        let (mut publisher, _) = v5::connect(v5::options(broker.port, &unique("pub5"))).await;
        for t in ["dev1/state", "dev1/x/state", "dev2/state", "dev2/other"] {
            publisher
                .publish(&format!("{root}/{t}"), QoS::AtLeastOnce, false, t)
                .await;
        }
        let got: Vec<String> = sub.recv_publishes(2).await.iter().map(v5::topic).collect();
        assert_eq!(
            got,
            vec![format!("{root}/dev1/state"), format!("{root}/dev2/state")]
        );
        sub.expect_no_publish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn last_will_published_on_abrupt_drop() {
        let broker = Broker::start().await;
        let will_topic = unique("will5");

        let (mut watcher, _) = v5::connect(v5::options(broker.port, &unique("watch5"))).await;
        watcher.subscribe_ok(&will_topic, QoS::AtLeastOnce).await;

        let mut opts = v5::options(broker.port, &unique("dying5"));
        opts.set_last_will(LastWill::new(
            &will_topic,
            "gone5",
            QoS::AtLeastOnce,
            false,
            None,
        ));
        let (dying, _) = v5::connect(opts).await;
        dying.drop_abruptly().await; // socket closed, no DISCONNECT

        let p = watcher.recv_publish().await;
        assert_eq!(v5::topic(&p), will_topic);
        assert_eq!(&p.payload[..], b"gone5");
    }
}

#[test]
fn listening_line_parser() {
    assert_eq!(
        common::parse_listening_line("MQTT listening on 127.0.0.1:18830"),
        Some(18830)
    );
    assert_eq!(common::parse_listening_line("something else"), None);
}
