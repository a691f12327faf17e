//! Who may use the page: every request must name this server in `Host`
//! (DNS rebinding), carry the token (in the URL's `token` parameter or the
//! cookie set when the page was first loaded with it), and, when it
//! changes something (any method but GET and HEAD), come from the page
//! itself (`Origin`, `Sec-Fetch-Site`: CSRF). Refusals are plain-text
//! lines saying why.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::http::HostCheck;
use super::App;

/// The checks and the secret they compare with.
#[derive(Debug, Clone)]
pub struct Guard {
    hosts: HostCheck,
    token: String,
    /// The cookie's name: per port, since cookies ignore ports and two
    /// `ui` processes may run side by side.
    cookie: String,
}

/// What a request lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Host(String),
    Origin(String),
    Token,
}

impl Guard {
    pub fn new(bound: SocketAddr, public_host: Option<String>) -> Self {
        let bytes: [u8; 32] = rand::random();
        Self {
            hosts: HostCheck::new(bound, public_host),
            token: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            cookie: format!("hayedik_ui_{}", bound.port()),
        }
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Checks a request; `Ok(true)` when it carried the token in its URL
    /// (the page then sets the cookie).
    pub fn check(
        &self,
        method: &Method,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<bool, Refusal> {
        let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let host = text(header::HOST).unwrap_or("");
        if !self.hosts.allows(host) {
            return Err(Refusal::Host(host.to_string()));
        }
        if !matches!(*method, Method::GET | Method::HEAD) {
            if let Some(origin) = headers.get(header::ORIGIN) {
                let origin = origin.to_str().unwrap_or("(not text)");
                if !self.hosts.allows_origin(origin) {
                    return Err(Refusal::Origin(origin.to_string()));
                }
            }
            let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
            if matches!(site, Some("cross-site" | "same-site")) {
                return Err(Refusal::Origin(format!(
                    "Sec-Fetch-Site: {}",
                    site.unwrap_or("")
                )));
            }
        }
        let in_url = query.is_some_and(|q| {
            q.split('&')
                .filter_map(|kv| kv.strip_prefix("token="))
                .any(|t| self.matches(t))
        });
        let in_cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().strip_prefix(self.cookie.as_str()))
            .filter_map(|rest| rest.strip_prefix('='))
            .any(|t| self.matches(t));
        if in_url || in_cookie {
            Ok(in_url)
        } else {
            Err(Refusal::Token)
        }
    }

    fn matches(&self, given: &str) -> bool {
        constant_time_eq::constant_time_eq(given.as_bytes(), self.token.as_bytes())
    }

    fn set_cookie(&self) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            self.cookie, self.token
        )
    }
}

/// The middleware: refuses what [`Guard::check`] refuses; a page loaded
/// with the token in its URL gets the cookie and is sent to the same page
/// without it (so the token leaves the address bar and the history).
pub async fn middleware(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let checked = app
        .guard
        .check(req.method(), req.uri().query(), req.headers());
    let mut response = match checked {
        Err(refusal) => refuse(refusal),
        Ok(true) if req.method() == Method::GET && req.uri().path() == "/" => {
            let mut r = (StatusCode::SEE_OTHER, "").into_response();
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/"));
            if let Ok(v) = HeaderValue::from_str(&app.guard.set_cookie()) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Ok(_) => next.run(req).await,
    };
    harden(response.headers_mut());
    response
}

fn refuse(refusal: Refusal) -> Response {
    let (status, why) = match refusal {
        Refusal::Host(host) => (
            StatusCode::FORBIDDEN,
            format!("refused: this server does not answer to the name '{host}' (Host header); use the address hayedik ui printed\n"),
        ),
        Refusal::Origin(origin) => (
            StatusCode::FORBIDDEN,
            format!("refused: a request from another site ({origin}) may not change anything here\n"),
        ),
        Refusal::Token => (
            StatusCode::UNAUTHORIZED,
            "refused: open the address hayedik ui printed, with its token\n".to_string(),
        ),
    };
    (status, why).into_response()
}

/// Headers on every response: nothing cached, nothing framed, no script
/// nor style from anywhere but the page.
fn harden(h: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, "cache-control", "no-store");
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "no-referrer");
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn token_host_origin() {
        let g = Guard::new("127.0.0.1:5000".parse().unwrap(), None);
        let t = g.token().to_string();
        assert_eq!(t.len(), 64);
        let host = ("host", "127.0.0.1:5000");
        let q = format!("token={t}");
        assert_eq!(g.check(&Method::GET, Some(&q), &headers(&[host])), Ok(true));
        assert_eq!(
            g.check(&Method::GET, None, &headers(&[host])),
            Err(Refusal::Token)
        );
        assert_eq!(
            g.check(&Method::GET, Some("token=nope"), &headers(&[host])),
            Err(Refusal::Token)
        );
        let cookie = format!("a=b; hayedik_ui_5000={t}");
        assert_eq!(
            g.check(&Method::GET, None, &headers(&[host, ("cookie", &cookie)])),
            Ok(false)
        );
        // Another port's cookie is not ours.
        let other = format!("hayedik_ui_5001={t}");
        assert_eq!(
            g.check(&Method::GET, None, &headers(&[host, ("cookie", &other)])),
            Err(Refusal::Token)
        );
        assert!(matches!(
            g.check(
                &Method::GET,
                Some(&q),
                &headers(&[("host", "evil.example:5000")])
            ),
            Err(Refusal::Host(_))
        ));
        assert!(matches!(
            g.check(&Method::GET, Some(&q), &headers(&[])),
            Err(Refusal::Host(_))
        ));
        let post = |extra: (&'static str, &str)| {
            g.check(&Method::POST, Some(&q), &headers(&[host, extra]))
        };
        assert_eq!(post(("origin", "http://127.0.0.1:5000")), Ok(true));
        assert_eq!(post(("origin", "http://localhost:5000")), Ok(true));
        assert!(matches!(
            post(("origin", "http://evil.example")),
            Err(Refusal::Origin(_))
        ));
        assert!(matches!(post(("origin", "null")), Err(Refusal::Origin(_))));
        assert!(matches!(
            post(("sec-fetch-site", "cross-site")),
            Err(Refusal::Origin(_))
        ));
        assert_eq!(post(("sec-fetch-site", "same-origin")), Ok(true));
        // A GET may come from anywhere (it changes nothing) but still
        // needs the token.
        assert_eq!(
            g.check(
                &Method::GET,
                Some(&q),
                &headers(&[host, ("origin", "http://evil.example")])
            ),
            Ok(true)
        );
    }
}
