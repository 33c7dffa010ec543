//! Activity stamps ([`Broker::activity`]): what the layer above samples
//! for a device's `last_seen`.

use super::*;

#[test]
fn activity_reports_the_connections_heard_from_since_a_moment() {
    let mut h = H::new();
    let a = h.connect(v5("a"));
    let b = h.connect(v311("b"));
    let mut all: Vec<ConnId> = h.broker.activity(None).iter().map(|x| x.conn).collect();
    all.sort();
    assert_eq!(all, vec![a, b]);
    let since = h.now;
    h.advance(5);
    assert!(h.broker.activity(Some(since)).is_empty(), "nothing since");
    h.packet(a, Packet::PingReq);
    let heard = h.broker.activity(Some(since));
    assert_eq!(heard.len(), 1);
    assert_eq!(
        (&*heard[0].client_id, heard[0].conn, heard[0].last_seen),
        ("a", a, h.now)
    );
    h.broker
        .handle_connection_lost(h.now, a, ConnectionLoss::Network);
    assert!(
        h.broker.activity(None).iter().all(|x| x.conn != a),
        "a closed connection is not reported"
    );
}
