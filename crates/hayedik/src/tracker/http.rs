//! `tracker --http ADDR`: a status page (`/`), the same figures as JSON
//! (`/status.json`), and `/metrics` in the Prometheus text format
//! (through `prometheus-client`). No token: scrapers send none, and
//! nothing here changes anything. Bound to a loopback address, it answers
//! only requests whose `Host` names it (DNS rebinding).

use std::fmt::Write as _;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::stats::{Stats, View};
use crate::ui::http::{BoundedListener, HostCheck};

/// Connections the status server holds at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Swarms listed on the status page (the busiest first); `/metrics` and
/// `/status.json` give totals and every swarm.
pub const PAGE_SWARMS: usize = 500;

struct Http {
    stats: Arc<Stats>,
    /// `Some` when bound to loopback.
    hosts: Option<HostCheck>,
}

/// Serves the status page on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, stats: Arc<Stats>, cancel: CancellationToken) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("status page: {e}");
            return;
        }
    };
    let app = Arc::new(Http {
        stats,
        hosts: local
            .ip()
            .is_loopback()
            .then(|| HostCheck::new(local, None)),
    });
    let router = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/status.json", get(status))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app);
    let server = axum::serve(BoundedListener::new(listener, MAX_CONNECTIONS), router)
        .with_graceful_shutdown(cancel.clone().cancelled_owned())
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => if let Err(e) = r { tracing::error!("status page: {e}") },
        _ = cancel.cancelled() => {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut server).await;
        }
    }
}

async fn guard(State(app): State<Arc<Http>>, req: Request, next: Next) -> Response {
    if let Some(hosts) = &app.hosts {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !hosts.allows(host) {
            return (
                StatusCode::FORBIDDEN,
                format!("refused: this status page does not answer to the name '{host}'\n"),
            )
                .into_response();
        }
    }
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    r
}

async fn status(State(app): State<Arc<Http>>) -> Response {
    axum::Json(app.stats.view()).into_response()
}

async fn metrics(State(app): State<Arc<Http>>) -> Response {
    match encode_metrics(&app.stats.view()) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        )
            .into_response(),
    }
}

type Labels = Vec<(String, String)>;

/// The figures of `view` as an OpenMetrics text exposition.
pub fn encode_metrics(view: &View) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("hayedik_tracker");
    let counter = |registry: &mut Registry, name: &str, help: &str, v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        registry.register(name, help, c);
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str, v: u64| {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        registry.register(name, help, g);
    };
    let (confirmed, pending) = view.swarms.iter().fold((0u64, 0u64), |(c, p), s| {
        if s.confirmed {
            (c + 1, p)
        } else {
            (c, p + 1)
        }
    });
    let swarms = Family::<Labels, Gauge>::default();
    swarms
        .get_or_create(&vec![("state".into(), "confirmed".into())])
        .set(i64::try_from(confirmed).unwrap_or(i64::MAX));
    swarms
        .get_or_create(&vec![("state".into(), "pending".into())])
        .set(i64::try_from(pending).unwrap_or(i64::MAX));
    registry.register("swarms", "Swarm trackers running, by state", swarms);
    let sum = |f: fn(&super::stats::SwarmView) -> u32| -> u64 {
        view.swarms.iter().map(|s| u64::from(f(s))).sum()
    };
    let peers = Family::<Labels, Gauge>::default();
    for (state, n) in [
        ("seeder", sum(|s| s.seeders)),
        ("partial", sum(|s| s.partials)),
    ] {
        peers
            .get_or_create(&vec![("state".into(), state.into())])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    registry.register(
        "peers",
        "Peers listed over every swarm: seeders and partial sources",
        peers,
    );
    let announces: u64 = view.swarms.iter().map(|s| s.announces).sum();
    counter(
        &mut registry,
        "announces",
        "ANNOUNCEs answered by the live swarms",
        announces,
    );
    counter(
        &mut registry,
        "swarms_created",
        "JOIN handshakes that launched a swarm tracker",
        view.created,
    );
    counter(
        &mut registry,
        "swarms_confirmed",
        "Swarms confirmed by their creator",
        view.confirmed,
    );
    counter(
        &mut registry,
        "swarms_reclaimed",
        "Swarms reclaimed for want of a CONFIRM",
        view.reclaimed,
    );
    counter(
        &mut registry,
        "swarms_retired",
        "Swarms retired after a silence",
        view.retired,
    );
    counter(
        &mut registry,
        "swarms_restored",
        "Swarms restored from the state directory",
        view.restored,
    );
    counter(
        &mut registry,
        "joins_refused",
        "JOINs refused by a limit",
        view.refused,
    );
    if let Some(r) = &view.relay {
        gauge(
            &mut registry,
            "relay_peers",
            "Peers registered with the relay",
            r.peers as u64,
        );
        gauge(
            &mut registry,
            "relay_sessions",
            "Relay sessions pending or spliced",
            r.sessions as u64,
        );
        counter(
            &mut registry,
            "relay_sessions_admitted",
            "Relay sessions admitted",
            r.sessions_total,
        );
        counter(
            &mut registry,
            "relay_refused",
            "Relay connections, registrations and sessions refused",
            r.refused,
        );
        counter(
            &mut registry,
            "relay_bytes",
            "Bytes carried by ended relay sessions",
            r.bytes,
        );
    }
    gauge(
        &mut registry,
        "uptime_seconds",
        "Seconds since the tracker started",
        view.uptime_seconds as u64,
    );
    if let Some(m) = view.memory_bytes {
        gauge(
            &mut registry,
            "resident_memory_bytes",
            "Resident memory of the tracker process",
            m,
        );
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

async fn page(State(app): State<Arc<Http>>) -> Response {
    let v = app.stats.view();
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        render_page(&v),
    )
        .into_response()
}

fn render_page(v: &View) -> String {
    let mut s = String::with_capacity(4096);
    let peers: u64 = v.swarms.iter().map(|s| u64::from(s.peers)).sum();
    let _ = write!(
        s,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5"><title>hayedik tracker</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2330;background:#f5f6f8}}
h1{{font-size:1.3rem}}.cards{{display:flex;flex-wrap:wrap;gap:.8rem}}
.card{{background:#fff;border:1px solid #dde1e8;border-radius:10px;padding:.7rem 1rem;min-width:9rem}}
.card b{{display:block;font-size:1.4rem}}.card span{{color:#667085;font-size:.85rem}}
table{{border-collapse:collapse;margin-top:1rem;background:#fff}}th,td{{padding:.3rem .7rem;border-bottom:1px solid #dde1e8;text-align:right}}
th{{color:#667085;font-weight:500}}td:first-child,th:first-child{{text-align:left}}
</style></head><body><h1>hayedik tracker</h1><div class="cards">"#
    );
    let mut card = |label: &str, value: String| {
        let _ = write!(
            s,
            r#"<div class="card"><b>{value}</b><span>{label}</span></div>"#
        );
    };
    card("swarms", v.swarms.len().to_string());
    card("peers listed", peers.to_string());
    card(
        "seeders",
        v.swarms
            .iter()
            .map(|s| u64::from(s.seeders))
            .sum::<u64>()
            .to_string(),
    );
    card(
        "partial sources",
        v.swarms
            .iter()
            .map(|s| u64::from(s.partials))
            .sum::<u64>()
            .to_string(),
    );
    card("handshakes (swarms created)", v.created.to_string());
    card("confirmed", v.confirmed.to_string());
    card("reclaimed", v.reclaimed.to_string());
    card("retired", v.retired.to_string());
    card("JOINs refused", v.refused.to_string());
    if let Some(r) = &v.relay {
        card("relay peers", r.peers.to_string());
        card("relay sessions", r.sessions.to_string());
        card("relayed", crate::events::human_bytes(r.bytes));
    }
    if let Some(m) = v.memory_bytes {
        card("memory", crate::events::human_bytes(m));
    }
    card("uptime", uptime(v.uptime_seconds));
    s.push_str("</div>");
    let mut busiest: Vec<_> = v.swarms.iter().collect();
    busiest.sort_by(|a, b| b.peers.cmp(&a.peers).then(a.port.cmp(&b.port)));
    s.push_str(r#"<table id="swarms"><tr><th>swarm port</th><th>state</th><th>peers</th><th>seeders</th><th>partial</th><th>announces</th></tr>"#);
    for w in busiest.iter().take(PAGE_SWARMS) {
        let _ = write!(
            s,
            r#"<tr class="swarm" data-port="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            w.port,
            w.port,
            if w.confirmed { "confirmed" } else { "pending" },
            w.peers,
            w.seeders,
            w.partials,
            w.announces
        );
    }
    s.push_str("</table>");
    if busiest.len() > PAGE_SWARMS {
        let _ = write!(
            s,
            "<p>{} more swarms: see /status.json</p>",
            busiest.len() - PAGE_SWARMS
        );
    }
    s.push_str(r#"<p><a href="/metrics">/metrics</a> · <a href="/status.json">/status.json</a></p></body></html>"#);
    s
}

fn uptime(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn metrics_and_page_show_the_figures() {
        let stats = Arc::new(Stats::default());
        stats
            .created
            .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let g = stats.swarm(4242, true);
        g.gauge.set_peers(3, 1, 2);
        let v = stats.view();
        let text = encode_metrics(&v).unwrap();
        assert!(
            text.contains("hayedik_tracker_swarms{state=\"confirmed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hayedik_tracker_peers{state=\"partial\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("hayedik_tracker_swarms_created_total 2"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        let page = render_page(&v);
        assert!(page.contains(r#"data-port="4242""#), "{page}");
    }
}
