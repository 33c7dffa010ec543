//! stub
/// run
pub async fn run(env: crate::Env, args: super::pubsub::PubSubArgs) -> crate::Result<()> {
    super::pubsub::run(env, args).await
}
