//! Running synchronous work (store calls, Argon2) off the async workers.

use crate::error::ApiError;

/// Runs `work` on tokio's blocking pool and returns its result; a task that
/// panicked or was cancelled becomes a 500.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => Err(ApiError::Internal(format!(
            "a background task failed: {error}"
        ))),
    }
}
