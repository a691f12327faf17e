//! `hayedik ui`: a local web page to share, get and watch transfers.
//!
//! One process serves one page (HTML, CSS and JavaScript compiled into the
//! binary) and runs shares and gets as tasks of its own ([`transfers`]),
//! through the same library calls and the same event stream as the CLI's
//! `share` and `get`; the page receives those events through server-sent
//! events, each tagged with its transfer's id.
//!
//! Safe by default ([`guard`]): 127.0.0.1 unless `--listen` says otherwise
//! (with a warning), a random token in the printed URL and required on
//! every request (a cookie after the first load), `Host` checked against
//! the bound address (DNS rebinding) and `Origin` on every state-changing
//! request (CSRF). Nothing is served from disk but the page itself; the
//! folder browser lists names ([`browse`]). docs/ui.md says more.

pub mod browse;
pub mod guard;
pub mod http;
mod routes;
pub mod transfers;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::events::{ErrorKind, Event, Events, Failure};
use transfers::Transfers;

/// Connections the page's server holds at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Event streams (open pages) served at once.
pub const MAX_SUBSCRIBERS: usize = 16;
/// Longest wait at exit for open requests to end.
pub const DRAIN: Duration = Duration::from_secs(2);

/// What `hayedik ui` was asked to do.
#[derive(Debug, Clone)]
pub struct UiOptions {
    pub listen: SocketAddr,
    /// The host put in the page's URL and in the tickets of its shares.
    pub public_host: Option<String>,
    /// Open the default browser on the page.
    pub open: bool,
}

/// What every request handler shares.
pub struct App {
    pub transfers: Arc<Transfers>,
    pub guard: guard::Guard,
    pub subscribers: Arc<tokio::sync::Semaphore>,
    pub cancel: CancellationToken,
}

/// Serves the page until `cancel` fires; every transfer is stopped before
/// this returns.
pub async fn run(opts: UiOptions, events: Events, cancel: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| {
            Failure::error(
                ErrorKind::Network,
                format!(
                    "cannot listen on {}: {e}: choose another address with --listen",
                    opts.listen
                ),
            )
        })?;
    let local = listener
        .local_addr()
        .context("reading the page's address")?;
    if !local.ip().is_loopback() {
        events.emit(Event::Warning {
            message: format!(
                "the page listens on {local}, not only on this machine: whoever can reach it and has its link can share your files and download into your folders; use --listen 127.0.0.1:PORT unless you mean it"
            ),
        });
    }
    let host = url_host(local.ip(), opts.public_host.as_deref());
    let guard = guard::Guard::new(local, opts.public_host.clone());
    let url = format!("http://{host}:{}/?token={}", local.port(), guard.token());
    events.emit(Event::Listening {
        addr: local.to_string(),
        http: None,
        url: Some(url.clone()),
    });
    if opts.open {
        open_browser(url, events.clone());
    }
    let cancel = cancel.child_token();
    let app = Arc::new(App {
        transfers: Transfers::new(cancel.clone(), opts.public_host.clone()),
        guard,
        subscribers: Arc::new(tokio::sync::Semaphore::new(MAX_SUBSCRIBERS)),
        cancel: cancel.clone(),
    });
    let router = routes::router(app);
    let server = axum::serve(
        http::BoundedListener::new(listener, MAX_CONNECTIONS),
        router,
    )
    .with_graceful_shutdown(cancel.clone().cancelled_owned());
    let served = async { server.await.context("serving the page") };
    tokio::pin!(served);
    tokio::select! {
        r = &mut served => r?,
        _ = cancel.cancelled() => {
            // Event streams end on cancel; a request still open after
            // DRAIN is dropped.
            let _ = tokio::time::timeout(DRAIN, &mut served).await;
        }
    }
    cancel.cancel();
    Ok(())
}

/// The host a browser on this machine uses to reach `ip`.
fn url_host(ip: IpAddr, public_host: Option<&str>) -> String {
    if let Some(h) = public_host {
        return h.to_string();
    }
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".into(),
        IpAddr::V6(v6) if v6.is_unspecified() => "[::1]".into(),
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Opens `url` in the default browser, on a thread of its own (the
/// opener may take its time); a failure is a warning.
fn open_browser(url: String, events: Events) {
    crate::spawn::spawn_blocking("open browser", move || {
        let mut cmd = if cfg!(target_os = "windows") {
            let mut c = std::process::Command::new("rundll32");
            c.args(["url.dll,FileProtocolHandler", &url]);
            c
        } else if cfg!(target_os = "macos") {
            let mut c = std::process::Command::new("open");
            c.arg(&url);
            c
        } else {
            let mut c = std::process::Command::new("xdg-open");
            c.arg(&url);
            c
        };
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            events.emit(Event::Warning {
                message: "could not open a browser: open the address above yourself".into(),
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts() {
        assert_eq!(url_host([0, 0, 0, 0].into(), None), "127.0.0.1");
        assert_eq!(url_host([127, 0, 0, 1].into(), Some("box.lan")), "box.lan");
        assert_eq!(
            url_host(std::net::Ipv6Addr::LOCALHOST.into(), None),
            "[::1]"
        );
    }
}
