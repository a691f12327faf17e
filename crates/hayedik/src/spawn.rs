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
/// status 130 on the second. The handlers are installed before this returns
/// (a SIGTERM right after start is not fatal), and once: a listener created
/// after a signal could see that same signal again.
pub fn cancel_on_signals(root: CancellationToken) {
    let mut signals = Signals::install();
    spawn("signals", async move {
        signals.recv().await;
        // Cancel first: nothing the log does may stand between a signal and
        // the shutdown it asks for.
        root.cancel();
        tracing::info!("stopping (send the signal again to exit at once)");
        signals.recv().await;
        std::process::exit(130);
    });
}

/// Ctrl-C and, on unix, SIGTERM.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.term) => {}
                _ = next(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
