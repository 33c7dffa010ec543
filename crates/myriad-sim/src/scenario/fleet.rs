//! stub
use crate::{Env, Result, SimError};
/// args
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {}
/// run
pub async fn run(_env: Env, _args: FleetArgs) -> Result<()> {
    Err(SimError::Args("todo".into()))
}
