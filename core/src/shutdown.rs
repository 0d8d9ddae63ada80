//! SIGTERM / Ctrl-C as a cancellation token, so every long-lived task can
//! stop in order.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT. The handlers are
/// installed before this returns: if that is impossible the process must
/// not start, since it could then never be stopped gracefully.
pub fn on_signal() -> std::io::Result<CancellationToken> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("Ctrl-C received, shutting down"),
        }
        t.cancel();
    });
    Ok(token)
}
