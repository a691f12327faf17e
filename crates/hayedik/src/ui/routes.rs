//! The page's routes: the page itself, the JSON API it calls, and the
//! event stream. Every route is behind [`super::guard::middleware`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::transfers::{RefusedError, Request};
use super::{browse, App};

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        // No icon: an empty answer rather than a 404 in the console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/transfers", get(list))
        .route("/api/share", post(share))
        .route("/api/get", post(get_ticket))
        .route("/api/transfers/{id}/stop", post(stop))
        .route("/api/transfers/{id}/resume", post(resume))
        .route("/api/transfers/{id}/remove", post(remove))
        .route("/api/transfers/{id}/qr.svg", get(qr))
        .route("/api/browse", get(browse_folder))
        .route("/api/events", get(events))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            super::guard::middleware,
        ))
        .with_state(app)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// An error the page shows as is: `{"error": "..."}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message: String = message.into();
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn refused(e: RefusedError) -> Response {
    let status = match e {
        RefusedError::Unknown(_) => StatusCode::NOT_FOUND,
        RefusedError::Full => StatusCode::TOO_MANY_REQUESTS,
        RefusedError::Running(_) | RefusedError::AlreadyRunning(_) => StatusCode::CONFLICT,
    };
    error(status, e.to_string())
}

async fn list(State(app): State<Arc<App>>) -> Response {
    Json(app.transfers.snapshot()).into_response()
}

#[derive(Deserialize)]
struct ShareBody {
    path: String,
    /// A central tracker's `HOST:PORT`; empty: one runs in this process.
    #[serde(default)]
    tracker: String,
}

async fn share(State(app): State<Arc<App>>, Json(body): Json<ShareBody>) -> Response {
    if body.path.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "choose a file or a folder to share",
        );
    }
    let path = match browse::resolve(&body.path) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = std::fs::metadata(&path) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("cannot share {}: {e}", path.display()),
        );
    }
    let tracker = match body.tracker.trim() {
        "" => None,
        t => match crate::peer::share::split_host_port(t) {
            Ok(_) => Some(t.to_string()),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
        },
    };
    added(app.transfers.add(Request::Share { path, tracker }))
}

#[derive(Deserialize)]
struct GetBody {
    ticket: String,
    dir: String,
}

async fn get_ticket(State(app): State<Arc<App>>, Json(body): Json<GetBody>) -> Response {
    let ticket = match crate::cli::parse_ticket(&body.ticket) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a ticket: {e}")),
    };
    if body.dir.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "choose a folder to download into");
    }
    let dir = match browse::resolve(&body.dir) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = crate::peer::get::check_destination(&dir) {
        return error(StatusCode::BAD_REQUEST, format!("{e:#}"));
    }
    added(app.transfers.add(Request::Get {
        ticket: ticket.to_string(),
        dir,
    }))
}

fn added(r: Result<u64, RefusedError>) -> Response {
    match r {
        Ok(id) => (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response(),
        Err(e) => refused(e),
    }
}

fn done(r: Result<(), RefusedError>) -> Response {
    match r {
        Ok(()) => Json(serde_json::json!({ "ok": true })).into_response(),
        Err(e) => refused(e),
    }
}

async fn stop(State(app): State<Arc<App>>, Path(id): Path<u64>) -> Response {
    done(app.transfers.stop(id))
}

async fn resume(State(app): State<Arc<App>>, Path(id): Path<u64>) -> Response {
    done(app.transfers.resume(id))
}

async fn remove(State(app): State<Arc<App>>, Path(id): Path<u64>) -> Response {
    done(app.transfers.remove(id))
}

async fn qr(State(app): State<Arc<App>>, Path(id): Path<u64>) -> Response {
    let Some(ticket) = app.transfers.ticket(id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("transfer {id} has no ticket"),
        );
    };
    match qrcode::QrCode::new(ticket.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color>()
                .min_dimensions(200, 200)
                .quiet_zone(true)
                .build();
            ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("no QR code: {e}"),
        ),
    }
}

#[derive(Deserialize)]
struct BrowseQuery {
    #[serde(default)]
    path: String,
}

async fn browse_folder(Query(q): Query<BrowseQuery>) -> Response {
    let dir = match browse::resolve(&q.path) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let listed = tokio::task::spawn_blocking(move || browse::list(&dir)).await;
    match listed {
        Ok(Ok(listing)) => Json(listing).into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("listing: {e}")),
    }
}

/// Every transfer's events, as `--json` prints them plus `transfer` (the
/// id), one server-sent event each; `{"event":"dropped"}` when this
/// subscriber fell behind (the page then reloads the state).
async fn events(State(app): State<Arc<App>>) -> Response {
    let Ok(permit) = app.subscribers.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many open pages ({}): close one",
                super::MAX_SUBSCRIBERS
            ),
        );
    };
    let rx = app.transfers.subscribe();
    let cancel = app.cancel.clone();
    let hello = serde_json::json!({"event": "hello"}).to_string();
    let first =
        futures_util::stream::once(
            async move { Ok::<_, Infallible>(SseEvent::default().data(hello)) },
        );
    let rest = futures_util::stream::unfold(
        (rx, cancel, permit),
        |(mut rx, cancel, permit)| async move {
            let data = tokio::select! {
                _ = cancel.cancelled() => return None,
                got = rx.recv() => match got {
                    Ok(line) => line.to_string(),
                    Err(RecvError::Lagged(n)) => {
                        serde_json::json!({"event": "dropped", "events": n}).to_string()
                    }
                    Err(RecvError::Closed) => return None,
                },
            };
            Some((
                Ok::<_, Infallible>(SseEvent::default().data(data)),
                (rx, cancel, permit),
            ))
        },
    );
    use futures_util::StreamExt;
    Sse::new(first.chain(rest))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
