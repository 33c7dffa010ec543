//! stub
use crate::{Env, Result, SimError};
/// args
#[derive(Debug, Clone, clap::Args)]
pub struct PubSubArgs {}
/// run
pub async fn run(_env: Env, _args: PubSubArgs) -> Result<()> {
    Err(SimError::Args("todo".into()))
}
