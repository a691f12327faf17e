//! The port mapper against fake NAT-PMP routers on loopback: one that
//! answers as a NAT-PMP router does (and records what it was asked), and
//! hostile ones.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

/// A router's answer to a request.
type Answer = fn(&[u8]) -> Vec<u8>;

/// A router for tests: `gw`, NAT-PMP/PCP only (nothing else is asked).
fn router(gw: Ipv4Addr) -> Router {
    Router {
        gateway: Some(gw),
        allowed: Allowed {
            pmp: true,
            upnp: false,
        },
        upnp: tokio::sync::Mutex::new(None),
    }
}

/// A NAT-PMP router on `ip`:5351 that refuses PCP (as NAT-PMP-only
/// routers do), maps any port to the same number at [`EXTERNAL`], and
/// records every mapping request as (opcode, internal port, lifetime).
/// `reply` may replace its answer (a hostile router).
fn fake_router(ip: Ipv4Addr, reply: Option<Answer>) -> Arc<Mutex<Vec<(u8, u16, u32)>>> {
    fake_router_granting(ip, reply, None)
}

/// [`fake_router`] granting leases of `grant` seconds whatever is asked.
fn fake_router_granting(
    ip: Ipv4Addr,
    reply: Option<Answer>,
    grant: Option<u32>,
) -> Arc<Mutex<Vec<(u8, u16, u32)>>> {
    let sock = UdpSocket::bind((ip, crab_nat::GATEWAY_PORT)).expect("binding the fake router");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("a read timeout");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1100];
        // Bounded: the test ends well within 30 s.
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < end {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let req = &buf[..n];
            let answer = match reply {
                Some(f) => f(req),
                None => natpmp_answer(req, &log, grant),
            };
            let _ = sock.send_to(&answer, from);
        }
    });
    seen
}

fn natpmp_answer(req: &[u8], log: &Mutex<Vec<(u8, u16, u32)>>, grant: Option<u32>) -> Vec<u8> {
    let (version, op) = (req[0], req.get(1).copied().unwrap_or(0));
    let mut out = vec![0, 128 | op];
    if version != 0 {
        // PCP: "unsupported version", NAT-PMP's answer.
        out = vec![0, 128 | (op & 0x7f), 0, 1, 0, 0, 0, 0];
        return out;
    }
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&77u32.to_be_bytes()); // epoch
    if op == 0 {
        out.extend_from_slice(&EXTERNAL.octets());
        return out;
    }
    let internal = u16::from_be_bytes([req[4], req[5]]);
    let lifetime = u32::from_be_bytes([req[8], req[9], req[10], req[11]]);
    log.lock().unwrap().push((op, internal, lifetime));
    let external = if lifetime == 0 { 0 } else { internal };
    let granted = if lifetime == 0 {
        0
    } else {
        grant.unwrap_or(lifetime)
    };
    out.extend_from_slice(&internal.to_be_bytes());
    out.extend_from_slice(&external.to_be_bytes());
    out.extend_from_slice(&granted.to_be_bytes());
    out
}

#[tokio::test]
async fn maps_renews_nothing_early_and_deletes_on_cancel() {
    let gw = Ipv4Addr::new(127, 53, 51, 1);
    let seen = fake_router(gw, None);
    let cancel = CancellationToken::new();
    let scope = crate::spawn::Scope::new("test");
    let r = router(gw);
    let mapped = scope
        .run(r.map(
            &[(Proto::Tcp, 4000), (Proto::Udp, 4001)],
            cancel.clone(),
            Events::discard(),
        ))
        .await
        .expect("the fake router maps");
    assert_eq!(mapped.len(), 2);
    assert_eq!(mapped[0].external, SocketAddr::from((EXTERNAL, 4000)));
    assert_eq!(mapped[0].method, Method::NatPmp);
    assert_eq!(mapped[0].proto, Proto::Tcp);
    assert_eq!(mapped[1].external, SocketAddr::from((EXTERNAL, 4001)));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(2, 4000, LEASE_SECS), (1, 4001, LEASE_SECS)],
        "one request each (TCP is opcode 2, UDP 1), the lease asked for"
    );
    cancel.cancel();
    assert_eq!(scope.shutdown(Duration::from_secs(5)).await, 0);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        &seen[2..],
        &[(2, 4000, 0), (1, 4001, 0)],
        "both deleted (lifetime 0) when cancelled: {seen:?}"
    );
}

#[tokio::test]
async fn hostile_routers_get_an_error_not_a_panic() {
    let answers: [Answer; 5] = [
        |_| Vec::new(),
        |_| vec![0xff; 3],
        |r| r.to_vec(),
        // A NAT-PMP success that maps to external port 0.
        |r| {
            let mut v = vec![0, 128 | r.get(1).copied().unwrap_or(0), 0, 0, 0, 0, 0, 1];
            v.extend_from_slice(&[0x0f, 0xa0, 0, 0, 0, 0, 0x1c, 0x20]);
            v
        },
        |_| vec![0x55; 1100],
    ];
    for (i, answer) in answers.into_iter().enumerate() {
        let gw = Ipv4Addr::new(127, 53, 52, 1 + i as u8);
        fake_router(gw, Some(answer));
        let cancel = CancellationToken::new();
        let start = std::time::Instant::now();
        let r = router(gw)
            .map(&[(Proto::Tcp, 4000)], cancel, Events::discard())
            .await;
        assert!(r.is_err(), "answer {i}: {r:?}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "answer {i} took {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn renews_at_half_the_lease_never_in_a_loop() {
    assert_eq!(renew_after(7200), Duration::from_secs(3600));
    assert_eq!(renew_after(1), Duration::from_secs(5));
    assert_eq!(renew_after(0), Duration::from_secs(5));
}

/// A router that grants a lease of 8 s is asked again at half of it (the
/// shortest renewal is 5 s), then the mapping is deleted on cancel.
#[tokio::test]
async fn renews_before_the_lease_ends() {
    let gw = Ipv4Addr::new(127, 53, 51, 2);
    let seen = fake_router_granting(gw, None, Some(8));
    let cancel = CancellationToken::new();
    let scope = crate::spawn::Scope::new("test");
    scope
        .run(router(gw).map(&[(Proto::Tcp, 4002)], cancel.clone(), Events::discard()))
        .await
        .expect("the fake router maps");
    // Renewed once by now (at 5 s), not yet twice (at 10 s).
    tokio::time::sleep(Duration::from_millis(7500)).await;
    cancel.cancel();
    assert_eq!(scope.shutdown(Duration::from_secs(5)).await, 0);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(2, 4002, LEASE_SECS), (2, 4002, 8), (2, 4002, 0)],
        "mapped, renewed for the lifetime granted, deleted"
    );
}
