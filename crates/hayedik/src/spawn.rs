//! One way to start tasks and one cancellation tree.
//!
//! Every task is spawned through [`spawn`], which names it in the logs. The
//! root [`CancellationToken`] is cancelled by the first Ctrl-C or SIGTERM
//! ([`cancel_on_signals`]); a second signal exits at once.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Spawns `fut` as a task named `name` (visible in every log line it emits).
pub fn spawn<F>(name: &str, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut.instrument(tracing::info_span!("task", name = %name)))
}

/// Cancels `root` on the first Ctrl-C or SIGTERM; exits the process with
/// status 130 on the second.
pub fn cancel_on_signals(root: CancellationToken) {
    spawn("signals", async move {
        wait_signal().await;
        tracing::info!("stopping (send the signal again to exit at once)");
        root.cancel();
        wait_signal().await;
        std::process::exit(130);
    });
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
