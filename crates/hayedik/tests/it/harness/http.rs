//! A tiny HTTP/1.1 client for the tests of the web faces (`ui`, `tracker
//! --http`): one request per connection, chunked bodies decoded, and a
//! server-sent event reader on a thread. Loopback only, with timeouts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

use serde_json::Value;

/// How long a request may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A response: status, headers (names lowercase), body as text.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

fn head(method: &str, path: &str, host: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req
}

/// Sends one request to `addr` with `Host: host`, reads the whole response.
pub fn request(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connecting");
    s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    s.write_all(head(method, path, host, headers, body).as_bytes())
        .expect("sending the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let (status, headers) = parse_head(&String::from_utf8_lossy(&raw[..split]));
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut d = Dechunk::default();
        d.feed(rest)
    } else {
        rest.to_vec()
    };
    Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn parse_head(text: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// Decodes a chunked body as it arrives.
#[derive(Default)]
struct Dechunk {
    buf: Vec<u8>,
}

impl Dechunk {
    /// Adds `bytes`; returns the body bytes now complete.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&self.buf[..eol]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            if self.buf.len() < eol + 2 + size + 2 {
                break;
            }
            out.extend_from_slice(&self.buf[eol + 2..eol + 2 + size]);
            self.buf.drain(..eol + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
        out
    }
}

/// An open event stream: its status, and its events (the JSON of every
/// `data:` line) on a channel, read by a thread until the stream ends.
pub struct EventReader {
    pub status: u16,
    pub events: Receiver<Value>,
    stream: Option<TcpStream>,
}

impl Drop for EventReader {
    /// Closes the connection (the reading thread then ends).
    fn drop(&mut self) {
        if let Some(s) = &self.stream {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Opens `GET path` as a server-sent event stream.
pub fn events(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> EventReader {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connecting");
    s.write_all(head("GET", path, host, headers, "").as_bytes())
        .expect("sending the request");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            _ => panic!("the event stream closed in its head: {raw:?}"),
        }
    }
    let (status, _) = parse_head(&String::from_utf8_lossy(&raw));
    let (tx, events) = mpsc::channel();
    if status != 200 {
        return EventReader {
            status,
            events,
            stream: None,
        };
    }
    let closer = s.try_clone().expect("cloning the stream");
    thread::spawn(move || {
        let mut d = Dechunk::default();
        let mut text = String::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&d.feed(&buf[..n])));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                for line in block.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        let v = serde_json::from_str(data.trim())
                            .unwrap_or_else(|_| Value::String(data.to_string()));
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    EventReader {
        status,
        events,
        stream: Some(closer),
    }
}
