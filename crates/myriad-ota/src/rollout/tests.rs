//! Planner tests: waves, retries, timeouts, abort, operator actions, restore.

use proptest::prelude::*;

use super::*;

const SECOND: u64 = 1000;
const T0: u64 = 1_700_000_000_000;

fn ids(n: u32) -> Vec<String> {
    (0..n).map(|i| format!("dev-{i:03}")).collect()
}

fn spec(waves: WavePlan) -> RolloutSpec {
    RolloutSpec {
        waves,
        in_progress_timeout_ms: 60 * SECOND,
        ..RolloutSpec::default()
    }
}

fn notified(effects: &[Effect]) -> Vec<(u32, u32)> {
    effects
        .iter()
        .filter_map(|e| match *e {
            Effect::Notify { device, attempt } => Some((device, attempt)),
            Effect::Cancel { .. } => None,
        })
        .collect()
}

fn canceled(effects: &[Effect]) -> Vec<u32> {
    effects
        .iter()
        .filter_map(|e| {
            if let Effect::Cancel { device } = *e {
                Some(device)
            } else {
                None
            }
        })
        .collect()
}

/// Walks device `i` through a whole successful update.
fn succeed(rollout: &mut Rollout, i: u32, now: u64) {
    let id = rollout.device_id(i).to_owned();
    for report in [
        DeviceReport::Downloading(Progress {
            done: 10,
            total: 10,
        }),
        DeviceReport::Verifying,
        DeviceReport::Installing,
        DeviceReport::Rebooting,
        DeviceReport::Succeeded,
    ] {
        rollout.report(&id, report, now).expect("report applies");
    }
}

fn fail(rollout: &mut Rollout, i: u32, now: u64) -> DeviceState {
    let id = rollout.device_id(i).to_owned();
    rollout
        .report(&id, DeviceReport::Failed("disk full".into()), now)
        .expect("report applies")
}

#[test]
fn waves_start_when_the_one_before_finished() {
    let mut rollout = Rollout::new(spec(WavePlan::Percent(vec![10, 40])), ids(20), T0).unwrap();
    assert_eq!(
        rollout.take_dirty().devices.len(),
        20,
        "a new rollout writes every record"
    );
    assert_eq!(notified(&rollout.tick(T0, 100)), vec![(0, 1), (1, 1)]);
    assert_eq!(rollout.counts().get(DeviceState::Notified), 2);
    assert!(
        rollout.tick(T0, 100).is_empty(),
        "nothing new until the wave finishes"
    );
    succeed(&mut rollout, 0, T0);
    assert!(
        rollout.tick(T0, 100).is_empty(),
        "half a wave is not enough at advance_percent 100"
    );
    succeed(&mut rollout, 1, T0);
    let second = notified(&rollout.tick(T0, 100));
    assert_eq!(second, (2..10).map(|i| (i, 1)).collect::<Vec<_>>());
    assert_eq!(rollout.record().waves_started, 2);
    for i in 2..10 {
        succeed(&mut rollout, i, T0);
    }
    assert_eq!(
        notified(&rollout.tick(T0, 100)).len(),
        10,
        "the remainder is the final wave"
    );
    for i in 10..20 {
        succeed(&mut rollout, i, T0);
    }
    rollout.tick(T0, 100);
    assert_eq!(rollout.status(), RolloutStatus::Completed);
    assert_eq!(rollout.counts().get(DeviceState::Succeeded), 20);
}

#[test]
fn advance_percent_lets_stragglers_finish_later() {
    let spec = RolloutSpec {
        advance_percent: 50,
        ..spec(WavePlan::Count(vec![4]))
    };
    let mut rollout = Rollout::new(spec, ids(8), T0).unwrap();
    assert_eq!(notified(&rollout.tick(T0, 100)).len(), 4);
    succeed(&mut rollout, 0, T0);
    assert!(rollout.tick(T0, 100).is_empty());
    succeed(&mut rollout, 3, T0);
    assert_eq!(
        notified(&rollout.tick(T0, 100)).len(),
        4,
        "two of four finished: next wave"
    );
}

#[test]
fn notifications_are_paced_by_the_budget() {
    let mut rollout = Rollout::new(RolloutSpec::default(), ids(10), T0).unwrap();
    assert_eq!(notified(&rollout.tick(T0, 3)), vec![(0, 1), (1, 1), (2, 1)]);
    assert_eq!(notified(&rollout.tick(T0, 3)), vec![(3, 1), (4, 1), (5, 1)]);
    assert_eq!(notified(&rollout.tick(T0, 0)), vec![]);
    assert_eq!(notified(&rollout.tick(T0, 100)).len(), 4);
}

#[test]
fn failures_are_retried_until_retries_run_out() {
    let spec = RolloutSpec {
        max_retries: 2,
        ..RolloutSpec::default()
    };
    let mut rollout = Rollout::new(spec, ids(2), T0).unwrap();
    rollout.tick(T0, 10);
    assert_eq!(fail(&mut rollout, 0, T0), DeviceState::Queued);
    assert_eq!(rollout.device(0).reason.as_deref(), Some("disk full"));
    assert_eq!(notified(&rollout.tick(T0, 10)), vec![(0, 2)]);
    assert_eq!(fail(&mut rollout, 0, T0), DeviceState::Queued);
    assert_eq!(notified(&rollout.tick(T0, 10)), vec![(0, 3)]);
    assert_eq!(fail(&mut rollout, 0, T0), DeviceState::Failed);
    assert!(rollout.tick(T0, 10).is_empty());
    // Rejections and roll-backs are never retried.
    let id = rollout.device_id(1).to_owned();
    assert_eq!(
        rollout.report(&id, DeviceReport::Rejected("bad signature".into()), T0),
        Ok(DeviceState::Rejected)
    );
    rollout.tick(T0, 10);
    assert_eq!(rollout.status(), RolloutStatus::Completed);
    let mut other = Rollout::new(
        RolloutSpec {
            max_retries: 2,
            ..RolloutSpec::default()
        },
        ids(1),
        T0,
    )
    .unwrap();
    other.tick(T0, 1);
    other
        .report("dev-000", DeviceReport::Rebooting, T0)
        .unwrap();
    assert_eq!(
        other.report("dev-000", DeviceReport::RolledBack("self-test".into()), T0),
        Ok(DeviceState::RolledBack)
    );
}

#[test]
fn silent_devices_time_out() {
    let spec = RolloutSpec {
        in_progress_timeout_ms: 60 * SECOND,
        pending_timeout_ms: Some(600 * SECOND),
        max_retries: 1,
        ..RolloutSpec::default()
    };
    let mut rollout = Rollout::new(spec, ids(2), T0).unwrap();
    rollout.tick(T0, 10);
    rollout
        .report(
            "dev-000",
            DeviceReport::Downloading(Progress { done: 1, total: 9 }),
            T0,
        )
        .unwrap();
    assert_eq!(rollout.next_deadline(), Some(T0 + 60 * SECOND));
    // Progress resets the in-progress timer.
    rollout
        .report(
            "dev-000",
            DeviceReport::Downloading(Progress { done: 5, total: 9 }),
            T0 + 50 * SECOND,
        )
        .unwrap();
    rollout.tick(T0 + 100 * SECOND, 10);
    assert_eq!(rollout.device(0).state, DeviceState::Downloading);
    assert_eq!(
        rollout.device(0).progress,
        Some(Progress { done: 5, total: 9 })
    );
    // Silent for 60 s: timed out, retried once, then timed out for good.
    assert_eq!(notified(&rollout.tick(T0 + 110 * SECOND, 10)), vec![(0, 2)]);
    assert_eq!(rollout.device(0).reason.as_deref(), Some("timed out"));
    assert_eq!(
        rollout.device(0).progress,
        None,
        "a new attempt starts without progress"
    );
    // The never-started device waits for the pending timeout.
    rollout.tick(T0 + 599 * SECOND, 10);
    assert_eq!(rollout.device(1).state, DeviceState::Notified);
    assert_eq!(notified(&rollout.tick(T0 + 600 * SECOND, 10)), vec![(1, 2)]);
    rollout.tick(T0 + 2000 * SECOND, 10);
    assert_eq!(rollout.device(0).state, DeviceState::TimedOut);
    assert_eq!(rollout.device(1).state, DeviceState::TimedOut);
    assert_eq!(rollout.status(), RolloutStatus::Completed);
}

#[test]
fn without_a_pending_timeout_offline_devices_are_waited_for() {
    let mut rollout = Rollout::new(RolloutSpec::default(), ids(1), T0).unwrap();
    rollout.tick(T0, 10);
    rollout.tick(T0 + 40 * 24 * 3600 * SECOND, 10);
    assert_eq!(rollout.device(0).state, DeviceState::Notified);
    assert_eq!(rollout.next_deadline(), None);
}

#[test]
fn the_abort_threshold_stops_notifying_and_cancels_the_waiting() {
    let spec = RolloutSpec {
        abort: Some(AbortThreshold {
            max_failure_percent: 25,
            min_finished: 4,
        }),
        advance_percent: 100,
        ..spec(WavePlan::Count(vec![6]))
    };
    let mut rollout = Rollout::new(spec, ids(10), T0).unwrap();
    rollout.tick(T0, 100);
    rollout
        .report("dev-005", DeviceReport::Installing, T0)
        .unwrap();
    fail(&mut rollout, 0, T0);
    fail(&mut rollout, 1, T0);
    succeed(&mut rollout, 2, T0);
    assert!(
        rollout.tick(T0, 100).is_empty(),
        "3 finished: below min_finished"
    );
    assert_eq!(rollout.status(), RolloutStatus::Running);
    succeed(&mut rollout, 3, T0);
    let effects = rollout.tick(T0, 100);
    assert_eq!(
        rollout.status(),
        RolloutStatus::Aborted,
        "2 of 4 failed > 25%"
    );
    assert_eq!(canceled(&effects), vec![4], "notified, not started: told");
    assert!(notified(&effects).is_empty(), "the next wave never starts");
    assert_eq!(rollout.counts().get(DeviceState::Canceled), 5);
    // The device already installing finishes and its report counts.
    assert_eq!(
        rollout.report("dev-005", DeviceReport::Succeeded, T0),
        Ok(DeviceState::Succeeded)
    );
    assert_eq!(
        rollout.report("dev-004", DeviceReport::Verifying, T0),
        Err(ReportError::Finished(DeviceState::Canceled))
    );
    rollout.tick(T0, 100);
    assert_eq!(
        rollout.status(),
        RolloutStatus::Aborted,
        "stays aborted when every device finished"
    );
}

#[test]
fn pause_resume_cancel() {
    let mut rollout = Rollout::new(spec(WavePlan::Count(vec![1])), ids(3), T0).unwrap();
    rollout.tick(T0, 10);
    rollout.pause(T0).unwrap();
    assert_eq!(
        rollout.pause(T0),
        Err(RolloutError::Status(RolloutStatus::Paused))
    );
    succeed(&mut rollout, 0, T0);
    assert!(
        rollout.tick(T0, 10).is_empty(),
        "paused: reports count, no wave starts"
    );
    rollout.resume(T0).unwrap();
    assert_eq!(
        rollout.resume(T0),
        Err(RolloutError::Status(RolloutStatus::Running))
    );
    assert_eq!(notified(&rollout.tick(T0, 10)), vec![(1, 1), (2, 1)]);
    rollout
        .report(
            "dev-001",
            DeviceReport::Downloading(Progress { done: 0, total: 5 }),
            T0,
        )
        .unwrap();
    rollout.take_dirty();
    assert!(!rollout.is_dirty());
    rollout.cancel(T0).unwrap();
    assert!(rollout.is_dirty(), "the cancel is a change to write");
    assert!(
        rollout.has_pending_effects(),
        "cancel notices wait for the tick"
    );
    let effects = rollout.tick(T0, 10);
    assert!(!rollout.has_pending_effects());
    assert_eq!(
        canceled(&effects),
        vec![1, 2],
        "downloading and notified devices are told"
    );
    assert_eq!(rollout.status(), RolloutStatus::Canceled);
    assert_eq!(
        rollout.devices().nth(1).unwrap().1.state,
        DeviceState::Canceled
    );
    assert_eq!(
        rollout.cancel(T0),
        Err(RolloutError::Status(RolloutStatus::Canceled))
    );
    assert_eq!(
        rollout.report("dev-001", DeviceReport::Failed("late".into()), T0),
        Err(ReportError::Finished(DeviceState::Canceled)),
        "a canceled device's late report is refused"
    );
}

#[test]
fn a_device_past_its_download_finishes_after_a_cancel() {
    let mut rollout = Rollout::new(spec(WavePlan::Count(vec![2])), ids(2), T0).unwrap();
    rollout.tick(T0, 10);
    rollout
        .report("dev-000", DeviceReport::Installing, T0)
        .unwrap();
    rollout.cancel(T0).unwrap();
    assert_eq!(canceled(&rollout.tick(T0, 10)), vec![1]);
    assert_eq!(
        fail(&mut rollout, 0, T0),
        DeviceState::Failed,
        "no retries once canceled"
    );
}

#[test]
fn bad_reports_are_refused_by_name() {
    let mut rollout = Rollout::new(spec(WavePlan::Count(vec![1])), ids(2), T0).unwrap();
    rollout.tick(T0, 10);
    assert_eq!(
        rollout.report("nobody", DeviceReport::Verifying, T0),
        Err(ReportError::UnknownDevice)
    );
    assert_eq!(
        rollout.report("dev-001", DeviceReport::Verifying, T0),
        Err(ReportError::NotNotified)
    );
    let past = DeviceReport::Downloading(Progress { done: 6, total: 5 });
    assert_eq!(
        rollout.report("dev-000", past, T0),
        Err(ReportError::BadProgress { done: 6, total: 5 })
    );
    assert_eq!(
        rollout.device(0).state,
        DeviceState::Notified,
        "a refused report changes nothing"
    );
    succeed(&mut rollout, 0, T0);
    assert_eq!(
        rollout.report("dev-000", DeviceReport::Succeeded, T0),
        Err(ReportError::Finished(DeviceState::Succeeded))
    );
    let long = "x".repeat(10 * MAX_REASON_BYTES);
    rollout.tick(T0, 10);
    rollout
        .report("dev-001", DeviceReport::Rejected(long), T0)
        .unwrap();
    assert_eq!(
        rollout.device(1).reason.as_ref().map(String::len),
        Some(MAX_REASON_BYTES)
    );
}

#[test]
fn new_rollouts_are_bounded() {
    let ok = RolloutSpec::default();
    assert_eq!(
        Rollout::new(ok.clone(), vec![], T0).err(),
        Some(RolloutError::NoDevices)
    );
    let dup = vec!["a".to_owned(), "b".to_owned(), "a".to_owned()];
    assert_eq!(
        Rollout::new(ok.clone(), dup, T0).err(),
        Some(RolloutError::DuplicateDevice("a".into()))
    );
    assert_eq!(
        Rollout::new(ok.clone(), vec![String::new()], T0).err(),
        Some(RolloutError::DeviceId(0))
    );
    let long = vec!["x".repeat(MAX_DEVICE_ID_BYTES + 1)];
    assert_eq!(
        Rollout::new(ok.clone(), long, T0).err(),
        Some(RolloutError::DeviceId(257))
    );
    let too_many = (0..=MAX_ROLLOUT_DEVICES).map(|i| i.to_string()).collect();
    assert_eq!(
        Rollout::new(ok.clone(), too_many, T0).err(),
        Some(RolloutError::TooManyDevices(1_000_001))
    );
    let bad_spec = RolloutSpec {
        advance_percent: 0,
        ..ok
    };
    assert_eq!(
        Rollout::new(bad_spec, ids(1), T0).err(),
        Some(RolloutError::Spec(SpecError::AdvancePercent(0)))
    );
}

fn stored(rollout: &Rollout) -> (RolloutRecord, Vec<(String, DeviceRecord)>) {
    let devices = rollout
        .devices()
        .map(|(id, record)| (id.to_owned(), record.clone()))
        .collect();
    (rollout.record().clone(), devices)
}

#[test]
fn inconsistent_stored_records_are_refused() {
    let mut rollout = Rollout::new(spec(WavePlan::Count(vec![1])), ids(3), T0).unwrap();
    rollout.tick(T0, 10);
    let (record, devices) = stored(&rollout);
    let cases: Vec<(RolloutRecord, Vec<(String, DeviceRecord)>)> = vec![
        (
            RolloutRecord {
                waves_started: 4,
                ..record.clone()
            },
            devices.clone(),
        ),
        (
            RolloutRecord {
                waves_started: u32::MAX,
                ..record.clone()
            },
            devices.clone(),
        ),
        (record.clone(), {
            let mut d = devices.clone();
            d[2].1.state = DeviceState::Downloading;
            d[2].1.attempts = 1;
            d
        }),
        (record.clone(), {
            let mut d = devices.clone();
            d[0].1.attempts = 0;
            d
        }),
        (record.clone(), {
            let mut d = devices.clone();
            d[0].1.attempts = 2;
            d
        }),
        (record.clone(), {
            let mut d = devices.clone();
            d[0].1.progress = Some(Progress { done: 2, total: 1 });
            d
        }),
        (record.clone(), {
            let mut d = devices.clone();
            d[0].1.reason = Some("x".repeat(MAX_REASON_BYTES + 1));
            d
        }),
    ];
    for (record, devices) in cases {
        assert!(
            matches!(
                Rollout::restore(record.clone(), devices.clone()),
                Err(RestoreError::Inconsistent(_))
            ),
            "{record:?} {devices:?}"
        );
    }
    let mut dup = devices.clone();
    dup[1].0 = dup[0].0.clone();
    assert!(matches!(
        Rollout::restore(record.clone(), dup),
        Err(RestoreError::Rollout(RolloutError::DuplicateDevice(_)))
    ));
    let bad_spec = RolloutRecord {
        spec: RolloutSpec {
            max_retries: 99,
            ..record.spec.clone()
        },
        ..record.clone()
    };
    assert!(matches!(
        Rollout::restore(bad_spec, devices.clone()),
        Err(RestoreError::Rollout(RolloutError::Spec(_)))
    ));
    assert!(Rollout::restore(record, devices).is_ok());
}

#[derive(Debug, Clone)]
enum Op {
    Tick { advance_ms: u64, budget: usize },
    Report { device: u32, report: u8 },
    Pause,
    Resume,
    Cancel,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..90_000, 0usize..6).prop_map(|(advance_ms, budget)| Op::Tick { advance_ms, budget }),
        8 => (0u32..12, 0u8..8).prop_map(|(device, report)| Op::Report { device, report }),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        1 => Just(Op::Cancel),
    ]
}

fn spec_strategy() -> impl Strategy<Value = RolloutSpec> {
    let waves = prop_oneof![
        proptest::collection::vec(1u8..=33, 1..4).prop_map(WavePlan::Percent),
        proptest::collection::vec(1u32..5, 1..4).prop_map(WavePlan::Count),
        (1u32..3, 1u32..4).prop_map(|(first, factor)| WavePlan::Exponential { first, factor }),
    ];
    let abort = proptest::option::of((0u8..=100, 0u32..5).prop_map(
        |(max_failure_percent, min_finished)| AbortThreshold {
            max_failure_percent,
            min_finished,
        },
    ));
    (
        waves,
        1u8..=100,
        abort,
        proptest::option::of(5_000u64..100_000),
        0u32..3,
    )
        .prop_map(
            |(waves, advance_percent, abort, pending_timeout_ms, max_retries)| RolloutSpec {
                waves,
                advance_percent,
                abort,
                in_progress_timeout_ms: 30_000,
                pending_timeout_ms,
                max_retries,
            },
        )
}

/// Applies `op`; returns the effects of the tick that follows it.
fn apply(rollout: &mut Rollout, op: &Op, now: &mut u64) -> Vec<Effect> {
    match *op {
        Op::Tick { advance_ms, budget } => {
            *now += advance_ms;
            return rollout.tick(*now, budget);
        }
        Op::Report { device, report } => {
            let Some(id) = (device < rollout.len()).then(|| rollout.device_id(device).to_owned())
            else {
                return rollout.tick(*now, 4);
            };
            let report = match report {
                0 => DeviceReport::Downloading(Progress {
                    done: u64::from(device),
                    total: 11,
                }),
                1 => DeviceReport::Verifying,
                2 => DeviceReport::Installing,
                3 => DeviceReport::Rebooting,
                4 | 5 => DeviceReport::Succeeded,
                6 => DeviceReport::Failed("failed".into()),
                _ => DeviceReport::Rejected("rejected".into()),
            };
            let _ = rollout.report(&id, report, *now);
        }
        Op::Pause => {
            let _ = rollout.pause(*now);
        }
        Op::Resume => {
            let _ = rollout.resume(*now);
        }
        Op::Cancel => {
            let _ = rollout.cancel(*now);
        }
    }
    rollout.tick(*now, 4)
}

fn check_invariants(rollout: &Rollout) {
    let mut counts = [0u32; 12];
    for (_, record) in rollout.devices() {
        counts[record.state.index()] += 1;
        assert!(record.attempts <= rollout.record().spec.max_retries + 1);
    }
    for state in DeviceState::ALL {
        assert_eq!(
            rollout.counts().get(state),
            counts[state.index()],
            "{state:?}"
        );
    }
    if rollout.status() == RolloutStatus::Completed {
        assert!(rollout.devices().all(|(_, r)| r.state.is_terminal()));
    }
    if rollout.status().is_finished() {
        assert_eq!(
            rollout.counts().get(DeviceState::Queued),
            0,
            "{:?}",
            rollout.status()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Any sequence of reports, ticks and operator actions keeps the counts true, and a
    /// rollout restored from its records at any point behaves exactly as the original.
    #[test]
    fn restored_rollouts_continue_as_the_original(
        spec in spec_strategy(),
        n in 1u32..12,
        ops in proptest::collection::vec(op(), 0..80),
        split in 0usize..80,
    ) {
        let mut now = T0;
        let mut original = Rollout::new(spec, ids(n), now).unwrap();
        let mut restored: Option<Rollout> = None;
        for (step, op) in ops.iter().enumerate() {
            if step == split {
                let (record, devices) = stored(&original);
                restored = Some(Rollout::restore(record, devices).unwrap());
            }
            let mut restored_now = now;
            let effects = apply(&mut original, op, &mut now);
            check_invariants(&original);
            if let Some(copy) = restored.as_mut() {
                prop_assert_eq!(apply(copy, op, &mut restored_now), effects);
                prop_assert_eq!(copy.record(), original.record());
                prop_assert!(copy.devices().eq(original.devices()));
            }
        }
        // Resumed, ticked with a generous budget and every working device succeeding, the
        // rollout always ends.
        let _ = original.resume(now);
        for _ in 0..200 {
            if original.status().is_finished() {
                break;
            }
            now += 1000;
            original.tick(now, 100);
            for device in 0..original.len() {
                if original.device(device).state.is_active() {
                    succeed(&mut original, device, now);
                }
            }
            check_invariants(&original);
        }
        prop_assert!(original.status().is_finished(), "{:?}", original.counts());
    }
}
