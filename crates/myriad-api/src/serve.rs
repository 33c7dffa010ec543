//! Serving the API on a listener until told to stop.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::routes::router;
use crate::state::ApiState;

/// Serves [`router`] on `listener` until `shutdown` is cancelled, then
/// stops accepting connections and returns once the requests in flight
/// have been answered (graceful shutdown; a long import delays it, so the
/// caller may bound the wait with a timeout).
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_router(listener, router(state), shutdown).await
}

/// Like [`serve`], for a router built beforehand (e.g. by
/// [`crate::observed_router`], which adds `/metrics` and `/readyz`).
pub async fn serve_router(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
