//! `fanin`: many publishers, each on its own topic, one wildcard subscriber.

use super::pubsub::{self, Plan, PubPlan, PubSubArgs, SubPlan};
use crate::{Env, Result};

/// Runs `fanin` (default 16 publishers -> 1 subscriber of `PREFIX/fanin/+`).
pub async fn run(env: Env, args: PubSubArgs) -> Result<()> {
    let (publishers, subscribers) = args.counts(16, 1);
    let prefix = &env.prefix;
    let plan = Plan {
        scenario: "fanin",
        publishers: (0..publishers)
            .map(|i| PubPlan {
                topic: format!("{prefix}/fanin/{i}"),
                receivers: subscribers as u64,
            })
            .collect(),
        subscribers: (0..subscribers)
            .map(|receiver| SubPlan {
                filter: format!("{prefix}/fanin/+"),
                receiver,
            })
            .collect(),
        receivers: subscribers,
    };
    pubsub::run(env, args, plan).await
}
