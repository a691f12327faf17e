//! One way to start tasks and one cancellation tree.
//!
//! Every task is spawned through [`spawn`], which names it in the logs and
//! tracks it in a [`Scope`]: the scope of the task that spawned it (a
//! task-local, so a session spawned by a listener spawned by `get` belongs
//! to that `get`), and always the process-wide [`root`] scope. A library
//! entry point (`get`, `share`, the tracker) runs its body with
//! [`Scope::run`] and, before it returns, waits for every task of its scope
//! with [`Scope::shutdown`]: a bounded wait, then the stragglers are named
//! in the log and aborted. So when `get` returns, nothing it started still
//! runs.
//!
//! Blocking work goes through [`spawn_blocking`], tracked the same way
//! (waited for, but it cannot be aborted once it runs). What a scope does
//! not see: std threads (the code that starts one must join it).
//!
//! The root [`CancellationToken`] is cancelled by the first Ctrl-C or SIGTERM
//! ([`cancel_on_signals`]); a second signal exits at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How long [`Scope::shutdown`] waits by default for tasks to end on their
/// own once their cancellation token fired, before aborting them.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

tokio::task_local! {
    /// The scope of the running task, inherited by what it spawns.
    static CURRENT: Scope;
}

static ROOT: LazyLock<Scope> = LazyLock::new(|| Scope::new("process"));
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The process-wide scope: every task spawned through [`spawn`] is in it.
pub fn root() -> &'static Scope {
    &ROOT
}

/// A set of tracked tasks that can be waited for and aborted. Cheap to
/// clone (clones share the set).
#[derive(Debug, Clone)]
pub struct Scope {
    inner: Arc<ScopeInner>,
}

#[derive(Debug)]
struct ScopeInner {
    name: String,
    tracker: TaskTracker,
    /// Live tasks by id: their name and a handle to abort them.
    live: Mutex<HashMap<u64, (String, Option<AbortHandle>)>>,
}

impl Scope {
    pub fn new(name: &str) -> Scope {
        Scope {
            inner: Arc::new(ScopeInner {
                name: name.to_string(),
                tracker: TaskTracker::new(),
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn live(&self) -> MutexGuard<'_, HashMap<u64, (String, Option<AbortHandle>)>> {
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tasks of this scope still running.
    pub fn len(&self) -> usize {
        self.inner.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.tracker.is_empty()
    }

    /// The names of the tasks still running, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.live().values().map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }

    /// Runs `fut` with this scope as the current one: what it spawns
    /// (directly or through its tasks) is tracked here.
    pub async fn run<F: Future>(&self, fut: F) -> F::Output {
        CURRENT.scope(self.clone(), fut).await
    }

    /// Waits up to `limit` for every task of this scope to end, then aborts
    /// the rest (naming them in the log) and waits for the aborts to land.
    /// Returns how many had to be aborted. The scope stays usable: call
    /// this after cancelling what its tasks watch.
    pub async fn shutdown(&self, limit: Duration) -> usize {
        let tracker = &self.inner.tracker;
        tracker.close();
        let ended = tokio::time::timeout(limit, tracker.wait()).await.is_ok();
        let aborted = if ended {
            0
        } else {
            let live: Vec<(String, Option<AbortHandle>)> = self.live().values().cloned().collect();
            let names: Vec<&str> = live.iter().map(|(n, _)| n.as_str()).collect();
            tracing::warn!(
                "{}: {} task(s) still running {limit:?} after shutdown, aborting: {}",
                self.inner.name,
                live.len(),
                names.join(", ")
            );
            live.iter()
                .filter_map(|(_, h)| h.as_ref())
                .for_each(|h| h.abort());
            // An aborted task ends at its next poll: soon, unless a worker
            // thread is stuck in blocking code.
            let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
            live.len()
        };
        tracker.reopen();
        aborted
    }

    /// Names task `id` before it exists, so that its end (which forgets
    /// it) cannot come before its registration.
    fn announce(&self, id: u64, name: &str) {
        self.live().insert(id, (name.to_string(), None));
    }

    /// Gives the live task `id` its abort handle (unless it already ended).
    fn register(&self, id: u64, handle: AbortHandle) {
        if let Some(entry) = self.live().get_mut(&id) {
            entry.1 = Some(handle);
        }
    }

    fn is_inner(&self) -> bool {
        !Arc::ptr_eq(&self.inner, &root().inner)
    }

    fn forget_on_drop(&self, id: u64) -> Forget {
        Forget {
            scope: self.clone(),
            id,
        }
    }
}

/// Removes a task from its scope's live set when the task ends or is
/// dropped (aborted, or its runtime shut down).
struct Forget {
    scope: Scope,
    id: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.scope.live().remove(&self.id);
    }
}

/// Spawns `fut` as a task named `name` (visible in every log line it emits),
/// tracked in the current [`Scope`] (inherited by what it spawns) and in the
/// [`root`] scope.
pub fn spawn<F>(name: &str, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (scope, id, guards) = enter(name);
    let fut = CURRENT.scope(scope.clone(), async move {
        let _guards = guards;
        fut.await
    });
    let handle = scope
        .inner
        .tracker
        .spawn(fut.instrument(tracing::info_span!("task", name = %name)));
    register(&scope, id, handle.abort_handle());
    handle
}

/// [`tokio::task::spawn_blocking`], tracked like [`spawn`]: a scope's
/// [`Scope::shutdown`] waits for it (it cannot be aborted once running).
/// What it spawns belongs to its scope, as for a task.
pub fn spawn_blocking<F, R>(name: &str, f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (scope, id, guards) = enter(name);
    let inherited = scope.clone();
    let handle = scope.inner.tracker.spawn_blocking(move || {
        let _guards = guards;
        CURRENT.sync_scope(inherited, f)
    });
    register(&scope, id, handle.abort_handle());
    handle
}

/// What keeps a task counted: its entries in its scope and, for an inner
/// scope, in the root (dropped with the task).
type Guards = (
    Forget,
    Option<(tokio_util::task::task_tracker::TaskTrackerToken, Forget)>,
);

/// Names a new task `name` in the current scope (and the root): its scope,
/// id, and the guards the task must hold.
fn enter(name: &str) -> (Scope, u64, Guards) {
    let scope = CURRENT
        .try_with(|s| s.clone())
        .unwrap_or_else(|_| root().clone());
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    scope.announce(id, name);
    let forget = scope.forget_on_drop(id);
    // A task of an inner scope counts in the root too.
    let in_root = scope.is_inner().then(|| {
        root().announce(id, name);
        (root().inner.tracker.token(), root().forget_on_drop(id))
    });
    (scope, id, (forget, in_root))
}

fn register(scope: &Scope, id: u64, handle: AbortHandle) {
    if scope.is_inner() {
        root().register(id, handle.clone());
    }
    scope.register(id, handle);
}

/// Cancels `root` on the first Ctrl-C or SIGTERM (on Windows also
/// Ctrl-Break or the console closing); exits the process with status 128
/// plus the second signal's number on the second. The handlers are
/// installed before this returns (a SIGTERM right after start is not
/// fatal), and once: a listener created after a signal could see that
/// same signal again.
pub fn cancel_on_signals(root: CancellationToken) {
    let mut signals = Signals::install();
    spawn("signals", async move {
        let first = signals.recv().await;
        RECEIVED.store(first, std::sync::atomic::Ordering::Relaxed);
        // Cancel first: nothing the log does may stand between a signal and
        // the shutdown it asks for.
        root.cancel();
        tracing::info!("stopping (send the signal again to exit at once)");
        // Whoever pressed Ctrl-C at a terminal is told what happens now,
        // whatever the log level; scripts reading a pipe are not.
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            crate::output::stderr(
                "stopping... (press Ctrl-C again to exit at once)\n".to_string(),
                crate::output::Priority::Essential,
            );
        }
        let second = signals.recv().await;
        std::process::exit(128 + i32::from(second));
    });
}

/// The number of the first stopping signal received (0: none yet).
static RECEIVED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// SIGINT's number (Ctrl-C, also what Windows' Ctrl-C stands for here).
pub const SIGINT: u8 = 2;
/// SIGTERM's number (also what Windows' Ctrl-Break, console close and
/// shutdown stand for here).
pub const SIGTERM: u8 = 15;

/// The first stopping signal this process received ([`SIGINT`] or
/// [`SIGTERM`]), if any: `get` exits with 128 plus it when interrupted.
pub fn received_signal() -> Option<u8> {
    match RECEIVED.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

/// Ctrl-C and SIGTERM. On Windows, SIGTERM's counterparts: Ctrl-Break,
/// the console window closing, and the system shutting down. Windows ends
/// the process a few seconds after a close or a shutdown (tokio's handler
/// holds it until then), which leaves the shutdown that much time.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(windows)]
    c: Option<tokio::signal::windows::CtrlC>,
    #[cfg(windows)]
    brk: Option<tokio::signal::windows::CtrlBreak>,
    #[cfg(windows)]
    close: Option<tokio::signal::windows::CtrlClose>,
    #[cfg(windows)]
    shutdown: Option<tokio::signal::windows::CtrlShutdown>,
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
        #[cfg(windows)]
        {
            use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close, ctrl_shutdown};
            Self {
                c: ctrl_c().ok(),
                brk: ctrl_break().ok(),
                close: ctrl_close().ok(),
                shutdown: ctrl_shutdown().ok(),
            }
        }
        #[cfg(not(any(unix, windows)))]
        {
            Self {}
        }
    }

    /// Waits for the next signal; returns its number.
    async fn recv(&mut self) -> u8 {
        /// Waits for `s`'s next notification; forever when there is no `s`.
        macro_rules! next {
            ($s:expr) => {
                async {
                    match $s {
                        Some(s) => {
                            s.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                }
            };
        }
        #[cfg(unix)]
        {
            let Self { term, int } = self;
            tokio::select! {
                _ = next!(term) => SIGTERM,
                _ = next!(int) => SIGINT,
            }
        }
        #[cfg(windows)]
        {
            let Self {
                c,
                brk,
                close,
                shutdown,
            } = self;
            tokio::select! {
                _ = next!(brk) => SIGTERM,
                _ = next!(close) => SIGTERM,
                _ = next!(shutdown) => SIGTERM,
                _ = next!(c) => SIGINT,
            }
        }
        #[cfg(not(any(unix, windows)))]
        {
            let _ = tokio::signal::ctrl_c().await;
            SIGINT
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn children_inherit_the_scope_and_shutdown_waits_then_aborts() {
        let scope = Scope::new("test");
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        scope
            .run(async move {
                spawn("parent", async move {
                    // A grandchild that ends when cancelled, and one that
                    // never does.
                    let c2 = c.clone();
                    spawn("polite", async move { c2.cancelled().await });
                    spawn("stuck", std::future::pending::<()>());
                    c.cancelled().await;
                });
            })
            .await;
        tokio::task::yield_now().await;
        assert_eq!(scope.names(), ["parent", "polite", "stuck"]);
        cancel.cancel();
        let aborted = scope.shutdown(Duration::from_millis(200)).await;
        assert_eq!(aborted, 1);
        assert!(scope.is_empty(), "{:?}", scope.names());
        assert!(scope.names().is_empty());
    }

    #[tokio::test]
    async fn blocking_work_is_waited_for() {
        let scope = Scope::new("test");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        scope
            .run(async move {
                spawn_blocking("blocking", move || rx.recv());
            })
            .await;
        assert_eq!(scope.names(), ["blocking"]);
        assert!(root().names().contains(&"blocking".to_string()));
        let waiting = tokio::spawn({
            let scope = scope.clone();
            async move { scope.shutdown(Duration::from_secs(60)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "shutdown waits for blocking work");
        tx.send(()).unwrap();
        assert_eq!(waiting.await.unwrap(), 0);
        assert!(scope.is_empty());
    }

    /// A task spawned from blocking work (the tracker's swarm loop starts
    /// its writes so) belongs to that work's scope, not to the root only.
    #[tokio::test]
    async fn blocking_work_spawns_into_its_scope() {
        let scope = Scope::new("test");
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        scope
            .run(async move {
                let started = spawn_blocking("loop", move || {
                    spawn("child", async move { c.cancelled().await });
                });
                started.await.unwrap();
            })
            .await;
        assert_eq!(scope.names(), ["child"]);
        cancel.cancel();
        assert_eq!(scope.shutdown(Duration::from_secs(5)).await, 0);
        assert!(scope.is_empty());
    }
}
