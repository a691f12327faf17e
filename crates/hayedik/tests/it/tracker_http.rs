//! `hayedik tracker --http`: the `listening` event names the status
//! page's address; `/metrics` (Prometheus text) and the page show a swarm
//! once a share created and announced it, with the relay's counters
//! under `--relay`; a foreign `Host` is refused on a loopback address.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::http;
use crate::swarm_harness::{scenario, write_random, Node, MIB};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn tracker_http_serves_metrics_and_the_status_page() {
    scenario(LIMIT, || {
        let mut tracker = Node::spawn(
            "tracker",
            &[
                "tracker",
                "--listen",
                "127.0.0.1:0",
                "--json",
                "--http",
                "127.0.0.1:0",
                "--relay",
            ],
        );
        let listening = tracker.wait_event("listening");
        let central = listening["addr"].as_str().unwrap().to_string();
        let web: SocketAddr = listening["http"]
            .as_str()
            .unwrap_or_else(|| panic!("no http in {listening}"))
            .parse()
            .unwrap();
        let host = web.to_string();
        let get = |path: &str| http::request(web, &host, "GET", path, &[], "");

        let metrics = get("/metrics");
        assert_eq!(metrics.status, 200, "{metrics:?}");
        assert!(metrics
            .header("content-type")
            .unwrap()
            .contains("openmetrics-text"));
        assert!(
            metrics
                .body
                .contains("hayedik_tracker_swarms{state=\"confirmed\"} 0"),
            "{}",
            metrics.body
        );
        assert!(
            metrics.body.contains("hayedik_tracker_uptime_seconds"),
            "{}",
            metrics.body
        );

        let dir = tempfile::tempdir().unwrap();
        let (file, _) = write_random(dir.path(), "f.bin", MIB, 7);
        let mut share = Node::share("share", &file, &["--tracker", &central]);
        let ticket = share.ticket();
        let port: u16 = ticket["ticket"]
            .as_str()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .1
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // The sharer's first announce lists it as a seeder.
        let deadline = Instant::now() + Duration::from_secs(20);
        let swarm = loop {
            let status = get("/status.json").json();
            let found = status["swarms"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["port"] == port && s["seeders"] == 1)
                .cloned();
            if let Some(s) = found {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "no announced swarm {port} in {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(swarm["confirmed"], true, "{swarm}");
        let metrics = get("/metrics").body;
        for line in [
            "hayedik_tracker_swarms{state=\"confirmed\"} 1",
            "hayedik_tracker_peers{state=\"seeder\"} 1",
            "hayedik_tracker_swarms_created_total 1",
            "hayedik_tracker_swarms_confirmed_total 1",
            // With --relay, the relay's counters too.
            "hayedik_tracker_relay_sessions 0",
            "hayedik_tracker_relay_bytes_total 0",
        ] {
            assert!(metrics.contains(line), "no {line} in\n{metrics}");
        }
        let page = get("/");
        assert_eq!(page.status, 200);
        assert!(
            page.body.contains(&format!("data-port=\"{port}\"")),
            "{}",
            page.body
        );

        let rebound = format!("rebind.example:{}", web.port());
        let r = http::request(web, &rebound, "GET", "/metrics", &[], "");
        assert_eq!(r.status, 403, "{r:?}");
        let r = http::request(
            web,
            &format!("localhost:{}", web.port()),
            "GET",
            "/metrics",
            &[],
            "",
        );
        assert_eq!(r.status, 200, "{r:?}");

        share.stop();
        tracker.stop();
    });
}
