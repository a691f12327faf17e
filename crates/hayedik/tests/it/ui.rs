//! `hayedik ui` without a browser: the guard (token, cookie, Host,
//! Origin), the JSON API, and the event stream, against the real binary.
//! A share and a get started through the API end with a byte-identical
//! file, and the stream carries their `--json` events with their ids.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::http::{self, Response};
use crate::harness::{signal, BIN};
use crate::swarm_harness::{adopt, disown, scenario};

const LIMIT: Duration = Duration::from_secs(120);
/// Longest wait for an event of a transfer.
const WAIT: Duration = Duration::from_secs(30);

/// A running `hayedik ui --no-open --json --public-host 127.0.0.1`.
struct Ui {
    child: Child,
    addr: SocketAddr,
    host: String,
    token: String,
    url: String,
}

impl Ui {
    fn start() -> Ui {
        let mut child = Command::new(BIN)
            .env("HAYEDIK_HOME", crate::harness::isolated_home())
            .args([
                "ui",
                "--no-open",
                "--json",
                "--public-host",
                "127.0.0.1",
                "--listen",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting hayedik ui");
        adopt(child.id());
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).expect("reading the first event");
        // The rest of stdout is drained so the process never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let event: Value = serde_json::from_str(&line).expect("a JSON event");
        assert_eq!(event["event"], "listening", "{event}");
        let addr: SocketAddr = event["addr"].as_str().unwrap().parse().unwrap();
        let url = event["url"].as_str().unwrap().to_string();
        let token = url.split("token=").nth(1).unwrap().to_string();
        assert!(
            url.starts_with(&format!("http://127.0.0.1:{}/?token=", addr.port())),
            "{url}"
        );
        Ui {
            child,
            host: format!("127.0.0.1:{}", addr.port()),
            addr,
            token,
            url,
        }
    }

    fn cookie(&self) -> String {
        format!("hayedik_ui_{}={}", self.addr.port(), self.token)
    }

    fn origin(&self) -> String {
        format!("http://{}", self.host)
    }

    /// A request the page itself would send (cookie, and Origin on POST).
    fn call(&self, method: &str, path: &str, body: &str) -> Response {
        let cookie = self.cookie();
        let origin = self.origin();
        let mut headers = vec![("Cookie", cookie.as_str())];
        if method != "GET" {
            headers.push(("Origin", origin.as_str()));
        }
        http::request(self.addr, &self.host, method, path, &headers, body)
    }

    fn events(&self) -> http::EventReader {
        let cookie = self.cookie();
        http::events(self.addr, &self.host, "/api/events", &[("Cookie", &cookie)])
    }

    /// SIGTERM: `ui` exits 0.
    fn stop(mut self) {
        signal(self.child.id(), "TERM").expect("running kill");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("waiting") {
                break s;
            }
            assert!(Instant::now() < deadline, "ui did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "ui exited with {status} after SIGTERM");
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        disown(self.child.id());
    }
}

/// Waits for the first event of transfer `id` named `name`.
fn wait_event(events: &Receiver<Value>, id: u64, name: &str, seen: &mut Vec<Value>) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = events
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("waiting for {name} of transfer {id}: {e}; seen: {seen:?}"));
        seen.push(v.clone());
        if v["transfer"] == id && v["event"] == name {
            return v;
        }
    }
}

#[test]
fn ui_requires_the_token_then_a_cookie() {
    scenario(LIMIT, || {
        let ui = Ui::start();
        let get = |path: &str, headers: &[(&str, &str)]| {
            http::request(ui.addr, &ui.host, "GET", path, headers, "")
        };
        for path in [
            "/",
            "/app.js",
            "/api/transfers",
            "/api/events",
            "/api/browse",
        ] {
            let r = get(path, &[]);
            assert_eq!(r.status, 401, "{path} without the token: {r:?}");
            assert!(r.body.contains("token"), "{}", r.body);
        }
        assert_eq!(get("/?token=0123", &[]).status, 401);
        // The printed URL: a cookie, and the same page without the token.
        let path = &ui.url[ui.url.find("/?").unwrap()..];
        let first = get(path, &[]);
        assert_eq!(first.status, 303, "{first:?}");
        assert_eq!(first.header("location"), Some("/"));
        let cookie = first.header("set-cookie").expect("a cookie").to_string();
        assert!(cookie.starts_with(&ui.cookie()), "{cookie}");
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let with_cookie = [("Cookie", cookie.split(';').next().unwrap())];
        let page = get("/", &with_cookie);
        assert_eq!(page.status, 200);
        assert!(
            page.body.contains("<title>hayedik</title>"),
            "{}",
            page.body
        );
        assert!(page
            .header("content-security-policy")
            .is_some_and(|c| c.contains("script-src 'self'")));
        let script = get("/app.js", &with_cookie);
        assert_eq!(script.status, 200);
        assert!(script
            .header("content-type")
            .unwrap()
            .contains("javascript"));
        assert_eq!(
            get("/api/transfers", &with_cookie).json(),
            serde_json::json!([])
        );
        // Another token in the cookie is refused.
        let wrong = format!("hayedik_ui_{}=ffff", ui.addr.port());
        assert_eq!(get("/api/transfers", &[("Cookie", &wrong)]).status, 401);
        // The folder browser lists a folder typed in.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"abc").unwrap();
        let q = format!("/api/browse?path={}", dir.path().display());
        let listing = get(&q, &with_cookie).json();
        assert_eq!(listing["entries"][0]["name"], "a.txt", "{listing}");
        assert_eq!(listing["entries"][0]["bytes"], 3);
        ui.stop();
    });
}

#[test]
fn ui_refuses_a_foreign_host_and_a_foreign_origin() {
    scenario(LIMIT, || {
        let ui = Ui::start();
        let cookie = ui.cookie();
        let port = ui.addr.port();
        // DNS rebinding: the right address and token, a name not ours.
        let rebound = format!("rebind.example:{port}");
        let r = http::request(
            ui.addr,
            &rebound,
            "GET",
            "/api/transfers",
            &[("Cookie", &cookie)],
            "",
        );
        assert_eq!(r.status, 403, "{r:?}");
        assert!(r.body.contains("rebind.example"), "{}", r.body);
        // localhost names the same server.
        let local = format!("localhost:{port}");
        let r = http::request(
            ui.addr,
            &local,
            "GET",
            "/api/transfers",
            &[("Cookie", &cookie)],
            "",
        );
        assert_eq!(r.status, 200, "{r:?}");
        // CSRF: a page elsewhere posting with the user's cookie.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret.txt");
        std::fs::write(&file, b"secret").unwrap();
        let body = serde_json::json!({ "path": file }).to_string();
        for (name, value) in [
            ("Origin", "http://evil.example"),
            ("Origin", "null"),
            ("Sec-Fetch-Site", "cross-site"),
        ] {
            let r = http::request(
                ui.addr,
                &ui.host,
                "POST",
                "/api/share",
                &[("Cookie", &cookie), (name, value)],
                &body,
            );
            assert_eq!(r.status, 403, "{name}: {value}: {r:?}");
        }
        assert_eq!(
            ui.call("GET", "/api/transfers", "").json(),
            serde_json::json!([])
        );
        // The page's own origin passes the check; a bad request is a
        // clear error, and nothing starts.
        let r = ui.call("POST", "/api/share", r#"{"path": "/no/such/path/here"}"#);
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.json()["error"]
            .as_str()
            .unwrap()
            .contains("/no/such/path/here"));
        let r = ui.call(
            "POST",
            "/api/get",
            r#"{"ticket": "not a ticket", "dir": "/tmp"}"#,
        );
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.json()["error"].as_str().unwrap().contains("ticket"));
        let r = ui.call("POST", "/api/transfers/99/stop", "");
        assert_eq!(r.status, 404, "{r:?}");
        assert_eq!(
            ui.call("GET", "/api/transfers", "").json(),
            serde_json::json!([])
        );
        ui.stop();
    });
}

#[test]
fn ui_event_streams_are_bounded() {
    scenario(LIMIT, || {
        let ui = Ui::start();
        let open: Vec<_> = (0..16).map(|_| ui.events()).collect();
        for s in &open {
            assert_eq!(s.status, 200);
            let hello = s.events.recv_timeout(WAIT).expect("the first event");
            assert_eq!(hello["event"], "hello");
        }
        let refused = ui.events();
        assert_eq!(refused.status, 503);
        drop(open);
        // Closed streams free their slots (the server notices on its next
        // write at the latest: the keep-alive, every 15 s).
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let again = ui.events();
            if again.status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "slots were not freed");
            std::thread::sleep(Duration::from_millis(500));
        }
        ui.stop();
    });
}

fn write_pattern(path: &Path, len: usize) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(path, data).unwrap();
}

#[test]
fn ui_share_and_get_through_the_api_make_an_identical_file() {
    scenario(LIMIT, || {
        let ui = Ui::start();
        let stream = ui.events();
        assert_eq!(stream.status, 200);
        let events = &stream.events;
        let mut seen = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.bin");
        write_pattern(&file, 5 * 1024 * 1024 + 123);
        let r = ui.call(
            "POST",
            "/api/share",
            &serde_json::json!({ "path": file }).to_string(),
        );
        assert_eq!(r.status, 201, "{r:?}");
        let share = r.json()["id"].as_u64().unwrap();
        let ticket = wait_event(events, share, "ticket", &mut seen);
        let ticket = ticket["ticket"].as_str().unwrap().to_string();
        assert!(ticket.starts_with("hayedik://127.0.0.1:"), "{ticket}");

        let out = dir.path().join("out");
        let body = serde_json::json!({ "ticket": ticket, "dir": out }).to_string();
        let r = ui.call("POST", "/api/get", &body);
        assert_eq!(r.status, 201, "{r:?}");
        let get = r.json()["id"].as_u64().unwrap();
        assert_ne!(get, share);
        let manifest = wait_event(events, get, "manifest", &mut seen);
        assert_eq!(manifest["name"], "data.bin");
        let done = wait_event(events, get, "done", &mut seen);
        assert_eq!(done["bytes"], 5 * 1024 * 1024 + 123);
        let from = done["from"].as_object().unwrap();
        assert_eq!(from.len(), 1, "{done}");
        let peer = from.keys().next().unwrap();
        assert_eq!(done["via"][peer], "direct", "{done}");
        wait_event(events, get, "seeding", &mut seen);
        assert_eq!(
            std::fs::read(out.join("data.bin")).unwrap(),
            std::fs::read(&file).unwrap(),
            "the file got through the page differs"
        );

        // The state a reloaded page reads.
        let list = ui.call("GET", "/api/transfers", "").json();
        let by_id = |id: u64| -> Value {
            list.as_array()
                .unwrap()
                .iter()
                .find(|t| t["id"] == id)
                .cloned()
                .unwrap_or_else(|| panic!("no transfer {id} in {list}"))
        };
        let s = by_id(share);
        assert_eq!(s["status"], "sharing", "{s}");
        assert_eq!(s["ticket"], ticket.as_str());
        let g = by_id(get);
        assert_eq!(g["status"], "seeding", "{g}");
        assert_eq!(g["bytes_done"], g["bytes_total"]);
        assert_eq!(g["from"][peer], 5 * 1024 * 1024 + 123, "{g}");
        assert_eq!(g["via"][peer], "direct");
        assert!(g["map"].as_array().unwrap().iter().all(|p| p == 100), "{g}");
        let qr = ui.call("GET", &format!("/api/transfers/{share}/qr.svg"), "");
        assert_eq!(qr.status, 200);
        assert!(qr.body.contains("<svg"), "{}", qr.body);

        // Stop and resume: the get stops (its `stopped` event), then
        // finds its verified copy again.
        let r = ui.call("POST", &format!("/api/transfers/{get}/stop"), "");
        assert_eq!(r.status, 200, "{r:?}");
        let stopped = wait_event(events, get, "stopped", &mut seen);
        assert_eq!(stopped["complete"], true, "{stopped}");
        let ended = wait_event(events, get, "ended", &mut seen);
        assert_eq!(ended["status"], "stopped");
        let r = ui.call("POST", &format!("/api/transfers/{share}/remove"), "");
        assert_eq!(r.status, 409, "a running share cannot be removed: {r:?}");
        let r = ui.call("POST", &format!("/api/transfers/{get}/resume"), "");
        assert_eq!(r.status, 200, "{r:?}");
        wait_event(events, get, "started", &mut seen);
        let again = wait_event(events, get, "done", &mut seen);
        assert_eq!(again["reused"], 5 * 1024 * 1024 + 123, "{again}");
        let r = ui.call("POST", &format!("/api/transfers/{get}/stop"), "");
        assert_eq!(r.status, 200);
        wait_event(events, get, "ended", &mut seen);
        let r = ui.call("POST", &format!("/api/transfers/{get}/remove"), "");
        assert_eq!(r.status, 200, "{r:?}");
        wait_event(events, get, "removed", &mut seen);
        let list = ui.call("GET", "/api/transfers", "").json();
        assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
        // Every event the stream carried is tagged with its transfer.
        assert!(
            seen.iter()
                .all(|v| v["event"] == "hello" || v["transfer"].is_u64()),
            "{seen:?}"
        );
        ui.stop();
    });
}
