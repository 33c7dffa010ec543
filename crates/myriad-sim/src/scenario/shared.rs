//! `shared`: publishers -> one shared subscription group; each message must
//! reach exactly one member.

use super::pubsub::{self, Plan, PubPlan, PubSubArgs, SubPlan};
use crate::{Env, Result, SimError};

/// Runs `shared` (default 4 publishers -> 4 members of `$share/GROUP/PREFIX/shared/+`).
pub async fn run(env: Env, args: PubSubArgs) -> Result<()> {
    let (publishers, subscribers) = args.counts(4, 4);
    if args.group.is_empty() || args.group.contains(['/', '+', '#']) {
        return Err(SimError::Args(
            "--group must be non-empty without '/', '+' or '#'".to_owned(),
        ));
    }
    let prefix = &env.prefix;
    let filter = format!("$share/{}/{prefix}/shared/+", args.group);
    let plan = Plan {
        scenario: "shared",
        publishers: (0..publishers)
            .map(|i| PubPlan {
                topic: format!("{prefix}/shared/{i}"),
                receivers: u64::from(subscribers > 0),
            })
            .collect(),
        subscribers: (0..subscribers)
            .map(|_| SubPlan {
                filter: filter.clone(),
                receiver: 0,
            })
            .collect(),
        receivers: 1,
    };
    pubsub::run(env, args, plan).await
}
