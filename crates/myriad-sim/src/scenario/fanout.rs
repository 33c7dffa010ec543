//! `fanout`: few publishers on one topic, many subscribers of it.

use super::pubsub::{self, Plan, PubPlan, PubSubArgs, SubPlan};
use crate::{Env, Result};

/// Runs `fanout` (default 1 publisher -> 100 subscribers of `PREFIX/fanout`).
pub async fn run(env: Env, args: PubSubArgs) -> Result<()> {
    let (publishers, subscribers) = args.counts(1, 100);
    let topic = format!("{}/fanout", env.prefix);
    let plan = Plan {
        scenario: "fanout",
        publishers: (0..publishers)
            .map(|_| PubPlan {
                topic: topic.clone(),
                receivers: subscribers as u64,
            })
            .collect(),
        subscribers: (0..subscribers)
            .map(|receiver| SubPlan {
                filter: topic.clone(),
                receiver,
            })
            .collect(),
        receivers: subscribers,
    };
    pubsub::run(env, args, plan).await
}
