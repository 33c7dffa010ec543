//! `p2p`: pairs of one publisher and one subscriber, each pair on its own topic.

use super::pubsub::{self, Plan, PubPlan, PubSubArgs, SubPlan};
use crate::{Env, Result, SimError};

/// Runs `p2p` (default 100 pairs; `--pairs N`).
pub async fn run(env: Env, args: PubSubArgs) -> Result<()> {
    let (pairs, subscribers) = args.counts(100, args.publishers.unwrap_or(100));
    if subscribers != pairs {
        return Err(SimError::Args(
            "p2p: --subscribers must equal --pairs".to_owned(),
        ));
    }
    let prefix = &env.prefix;
    let plan = Plan {
        scenario: "p2p",
        publishers: (0..pairs)
            .map(|i| PubPlan {
                topic: format!("{prefix}/p2p/{i}"),
                receivers: 1,
            })
            .collect(),
        subscribers: (0..pairs)
            .map(|i| SubPlan {
                filter: format!("{prefix}/p2p/{i}"),
                receiver: i,
            })
            .collect(),
        receivers: pairs,
    };
    pubsub::run(env, args, plan).await
}
