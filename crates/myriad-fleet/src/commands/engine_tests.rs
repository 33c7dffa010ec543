//! Engine rules with a fake clock.

use serde_json::{Value, json};

use super::*;
use crate::commands::breaker::BreakerState;
use crate::commands::limits::RateLimit;
use crate::commands::model::Payload;

struct Shadows(Option<Value>);

impl ShadowReader for Shadows {
    fn reported(&self, _device: &str) -> Option<Value> {
        self.0.clone()
    }
}

const NO_SHADOW: Shadows = Shadows(None);

fn config() -> CommandsConfig {
    CommandsConfig {
        retry_initial_ms: 100,
        retry_max_ms: 400,
        rate_l3: RateLimit::default(),
        rate_device: RateLimit::default(),
        ..CommandsConfig::default()
    }
}

fn spec(priority: Priority) -> CommandSpec {
    CommandSpec {
        name: "do".into(),
        payload: Payload::Json(json!({"x": 1})),
        priority,
        timeout_ms: 1_000,
        expires_at: None,
        read: false,
    }
}

fn published(effects: &[Effect]) -> Vec<CommandId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish(c) => Some(c.id.clone()),
            _ => None,
        })
        .collect()
}

fn alarms(effects: &[Effect]) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::Alarm(_)))
        .count()
}

fn submit(e: &mut Engine, device: &str, s: CommandSpec, now: u64) -> (Command, Vec<Effect>) {
    e.submit(device, s, None, now, &NO_SHADOW)
        .expect("accepted")
}

fn ok() -> Reply {
    Reply {
        success: true,
        in_progress: false,
        result: Some(json!("done")),
    }
}

fn err() -> Reply {
    Reply {
        success: false,
        in_progress: false,
        result: Some(json!({"code": 3})),
    }
}

#[test]
fn online_command_is_sent_delivered_and_succeeds() {
    let mut e = Engine::new(config(), 0);
    e.device_online("d", 0);
    let (c, fx) = submit(&mut e, "d", spec(Priority::L2), 10);
    assert_eq!(c.status, CommandStatus::Sent);
    assert_eq!(published(&fx), vec![c.id.clone()]);
    e.delivered(&c.id, "d", 12);
    assert_eq!(
        e.get(&c.id).map(|c| c.status),
        Some(CommandStatus::Delivered)
    );
    // A reply for another device is ignored.
    assert!(e.replied(&c.id, "other", ok(), 13).is_empty());
    let fx = e.replied(&c.id, "d", ok(), 15);
    let Some(Effect::Changed(done)) = fx.last() else {
        panic!("{fx:?}")
    };
    assert_eq!(done.status, CommandStatus::Succeeded);
    assert_eq!(done.result, Some(json!("done")));
    assert_eq!(done.source, Some(ResultSource::Device));
    let times: Vec<_> = done.timestamps.iter().map(|(s, t)| (*s, *t)).collect();
    assert_eq!(
        times,
        vec![
            (CommandStatus::Queued, 10),
            (CommandStatus::Sent, 10),
            (CommandStatus::Delivered, 12),
            (CommandStatus::Succeeded, 15)
        ]
    );
    assert_eq!(e.stats().active, 0);
    assert_eq!(e.stats().in_flight, 0);
}

#[test]
fn device_error_and_timeout() {
    let mut e = Engine::new(config(), 0);
    e.device_online("d", 0);
    let (a, _) = submit(&mut e, "d", spec(Priority::L2), 0);
    let fx = e.replied(&a.id, "d", err(), 5);
    assert!(
        matches!(fx.last(), Some(Effect::Changed(c)) if c.status == CommandStatus::Failed
        && c.reason.as_deref() == Some("device_error"))
    );
    let (b, _) = submit(&mut e, "d", spec(Priority::L3), 100);
    assert_eq!(e.next_deadline(), Some(1_100));
    assert!(e.tick(1_099, &NO_SHADOW).is_empty());
    let fx = e.tick(1_100, &NO_SHADOW);
    assert!(
        matches!(fx.last(), Some(Effect::Changed(c)) if c.id == b.id && c.status == CommandStatus::TimedOut)
    );
}

#[test]
fn offline_l1_is_queued_and_sent_in_order_on_reconnect() {
    let mut e = Engine::new(config(), 0);
    let (a, fx) = submit(&mut e, "d", spec(Priority::L1), 0);
    assert!(published(&fx).is_empty());
    assert_eq!(a.status, CommandStatus::Queued);
    let (b, _) = submit(&mut e, "d", spec(Priority::L1), 1);
    let fx = e.device_online("d", 10);
    assert_eq!(published(&fx), vec![a.id.clone()], "only the head");
    e.delivered(&a.id, "d", 11);
    let fx = e.replied(&a.id, "d", ok(), 12);
    assert_eq!(published(&fx), vec![b.id.clone()], "then the next");
    assert_eq!(alarms(&fx), 0);
}

#[test]
fn undelivered_l1_is_resent_with_backoff_then_expires_with_an_alarm() {
    let mut e = Engine::new(config(), 0);
    e.device_online("d", 0);
    let mut s = spec(Priority::L1);
    s.expires_at = Some(1_000);
    let (a, fx) = submit(&mut e, "d", s, 0);
    assert_eq!(published(&fx).len(), 1);
    assert!(published(&e.tick(99, &NO_SHADOW)).is_empty());
    assert_eq!(
        published(&e.tick(100, &NO_SHADOW)),
        vec![a.id.clone()],
        "after 100 ms"
    );
    assert!(published(&e.tick(299, &NO_SHADOW)).is_empty());
    assert_eq!(
        published(&e.tick(300, &NO_SHADOW)).len(),
        1,
        "after 200 more"
    );
    assert_eq!(e.get(&a.id).map(|c| c.attempts), Some(3));
    let fx = e.tick(1_000, &NO_SHADOW);
    assert!(matches!(fx.last(), Some(Effect::Changed(c)) if c.status == CommandStatus::Expired));
    assert_eq!(alarms(&fx), 1);
}

#[test]
fn offline_l2_read_is_answered_from_the_shadow_and_l3_dropped() {
    let mut e = Engine::new(config(), 0);
    let shadows = Shadows(Some(json!({"temp": 21})));
    let mut read = spec(Priority::L2);
    read.read = true;
    let (c, _) = e.submit("d", read, None, 0, &shadows).expect("ok");
    assert_eq!(c.status, CommandStatus::Succeeded);
    assert_eq!(c.source, Some(ResultSource::Shadow));
    assert_eq!(c.result, Some(json!({"temp": 21})));
    assert_eq!(c.reason.as_deref(), Some("device_offline"));
    let (c, _) = e
        .submit("d", spec(Priority::L2), None, 0, &shadows)
        .expect("ok");
    assert_eq!(
        (c.status, c.reason.as_deref()),
        (CommandStatus::Failed, Some("device_offline"))
    );
    let (c, fx) = e
        .submit("d", spec(Priority::L3), None, 0, &shadows)
        .expect("ok");
    assert_eq!(c.status, CommandStatus::Failed);
    assert!(published(&fx).is_empty());
    assert_eq!(e.stats().active, 0);
}

#[test]
fn device_breaker_opens_fails_fast_and_recovers_through_half_open() {
    let mut cfg = config();
    cfg.breaker_device.consecutive_failures = 2;
    cfg.breaker_device.cool_down_ms = 500;
    let mut e = Engine::new(cfg, 0);
    e.device_online("d", 0);
    for t in 0..2 {
        let (c, _) = submit(&mut e, "d", spec(Priority::L2), t);
        e.replied(&c.id, "d", err(), t);
    }
    let (c, fx) = submit(&mut e, "d", spec(Priority::L2), 10);
    assert_eq!(
        (c.status, c.reason.as_deref()),
        (CommandStatus::Failed, Some("breaker_open"))
    );
    assert!(published(&fx).is_empty());
    let snapshot = e.breakers(10);
    assert_eq!(snapshot.devices.len(), 1);
    assert_eq!(snapshot.devices[0].breaker.state, BreakerState::Open);
    // Another device is not affected.
    e.device_online("other", 10);
    assert_eq!(
        submit(&mut e, "other", spec(Priority::L2), 10).0.status,
        CommandStatus::Sent
    );
    // After the cool-down one probe goes through; its success closes the breaker.
    let (probe, _) = submit(&mut e, "d", spec(Priority::L2), 600);
    assert_eq!(probe.status, CommandStatus::Sent);
    let (second, _) = submit(&mut e, "d", spec(Priority::L2), 601);
    assert_eq!(
        second.reason.as_deref(),
        Some("breaker_open"),
        "one probe at a time"
    );
    e.replied(&probe.id, "d", ok(), 650);
    assert_eq!(
        submit(&mut e, "d", spec(Priority::L2), 651).0.status,
        CommandStatus::Sent
    );
    assert!(
        e.breakers(651)
            .devices
            .iter()
            .all(|d| d.breaker.state == BreakerState::Closed)
    );
}

#[test]
fn rate_limits_refuse_with_retry_after_and_pressure_refuses_l3_first() {
    let mut cfg = config();
    cfg.rate_device = RateLimit {
        per_second: 2.0,
        burst: 2,
    };
    cfg.max_in_flight = 4;
    cfg.l3_pressure = 0.5;
    let mut e = Engine::new(cfg, 0);
    for d in ["a", "b", "c", "d", "e"] {
        e.device_online(d, 0);
    }
    submit(&mut e, "a", spec(Priority::L2), 0);
    submit(&mut e, "a", spec(Priority::L2), 0);
    let refused = e
        .submit("a", spec(Priority::L2), None, 0, &NO_SHADOW)
        .expect_err("limited");
    assert_eq!(refused.retry_after_ms(), 500);
    assert!(refused.to_string().contains("device a"), "{refused}");
    // Two in flight: L3 is refused (pressure 0.5 of 4), L2 still accepted.
    let refused = e
        .submit("b", spec(Priority::L3), None, 0, &NO_SHADOW)
        .expect_err("pressure");
    assert!(matches!(
        refused,
        Refused::Overloaded { priority: "l3", .. }
    ));
    submit(&mut e, "b", spec(Priority::L2), 0);
    submit(&mut e, "c", spec(Priority::L2), 0);
    assert!(
        e.submit("d", spec(Priority::L2), None, 0, &NO_SHADOW)
            .is_err()
    );
    // L1 is never refused for pressure: it waits.
    assert!(
        e.submit("d", spec(Priority::L1), None, 0, &NO_SHADOW)
            .is_ok()
    );
}

#[test]
fn cancel_releases_the_queue() {
    let mut e = Engine::new(config(), 0);
    let (a, _) = submit(&mut e, "d", spec(Priority::L1), 0);
    let (b, _) = submit(&mut e, "d", spec(Priority::L1), 0);
    let (cancelled, fx) = e.cancel(&a.id, 5).expect("active");
    assert_eq!(cancelled.status, CommandStatus::Cancelled);
    assert_eq!(alarms(&fx), 0);
    assert!(e.cancel(&a.id, 6).is_none(), "already final");
    assert_eq!(published(&e.device_online("d", 7)), vec![b.id]);
}

#[test]
fn restore_requeues_l1_and_ends_the_others() {
    let mut e = Engine::new(config(), 0);
    e.device_online("d", 0);
    let (l1, _) = submit(&mut e, "d", spec(Priority::L1), 0);
    let (l2, _) = submit(&mut e, "d", spec(Priority::L2), 0);
    let stored = vec![
        e.get(&l2.id).cloned().expect("l2"),
        e.get(&l1.id).cloned().expect("l1"),
    ];
    let mut fresh = Engine::new(config(), 100);
    let fx = fresh.restore(stored, 100);
    let statuses: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Changed(c) => Some((c.id.clone(), c.status)),
            _ => None,
        })
        .collect();
    assert!(statuses.contains(&(l1.id.clone(), CommandStatus::Queued)));
    assert!(statuses.contains(&(l2.id.clone(), CommandStatus::Failed)));
    assert_eq!(published(&fresh.device_online("d", 110)), vec![l1.id]);
}

#[test]
fn batch_progress_follows_statuses() {
    let mut e = Engine::new(config(), 0);
    let batch = BatchId::generate(0);
    e.batch_started(BatchProgress {
        id: batch.clone(),
        name: "do".into(),
        priority: Priority::L2,
        created_at: 0,
        dispatched: false,
        targets: 0,
        refused: 0,
        statuses: Default::default(),
        cancelled: false,
    });
    e.device_online("a", 0);
    let (c, _) = e
        .submit("a", spec(Priority::L2), Some(batch.clone()), 0, &NO_SHADOW)
        .expect("ok");
    e.submit("b", spec(Priority::L2), Some(batch.clone()), 0, &NO_SHADOW)
        .expect("ok");
    e.batch_refused(&batch);
    e.replied(&c.id, "a", ok(), 1);
    e.batch_dispatched(&batch);
    let p = e.batch(&batch).expect("followed");
    assert!(p.dispatched);
    assert_eq!((p.targets, p.refused), (3, 1));
    assert_eq!(p.statuses.get(&CommandStatus::Succeeded), Some(&1));
    assert_eq!(p.statuses.get(&CommandStatus::Failed), Some(&1));
    assert_eq!(
        p.statuses.get(&CommandStatus::Sent).copied().unwrap_or(0),
        0
    );
}

#[test]
fn cancelling_a_batch_cancels_its_open_commands_only() {
    let mut e = Engine::new(config(), 0);
    let batch = BatchId::generate(0);
    e.batch_started(BatchProgress {
        id: batch.clone(),
        name: "do".into(),
        priority: Priority::L1,
        created_at: 0,
        dispatched: false,
        targets: 0,
        refused: 0,
        statuses: Default::default(),
        cancelled: false,
    });
    let (queued, _) = e
        .submit("a", spec(Priority::L1), Some(batch.clone()), 0, &NO_SHADOW)
        .expect("ok");
    let (other, _) = e
        .submit("b", spec(Priority::L1), None, 0, &NO_SHADOW)
        .expect("ok");
    let effects = e.cancel_batch(&batch, "batch_cancelled", 5);
    assert!(e.batch_cancelled(&batch));
    let changed: Vec<&Command> = effects
        .iter()
        .filter_map(|ef| match ef {
            Effect::Changed(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].id, queued.id);
    assert_eq!(changed[0].status, CommandStatus::Cancelled);
    assert_eq!(changed[0].reason.as_deref(), Some("batch_cancelled"));
    assert!(!effects.iter().any(|ef| matches!(ef, Effect::Alarm(_))));
    assert!(e.get(&other.id).is_some(), "a command of no batch stays");
    let p = e.batch(&batch).expect("followed");
    assert_eq!(p.statuses.get(&CommandStatus::Cancelled), Some(&1));
}
