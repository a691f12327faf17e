//! `--port-mapping`: asks the local router to forward our ports (PCP, then
//! NAT-PMP, then UPnP-IGD), keeps the mappings alive, and removes them when
//! the command ends.
//!
//! A [`Router`] is found once per run ([`gateway`] says which one is
//! asked). [`Router::map`] maps a few ports and hands them to a keeper task
//! in the caller's scope: it renews each mapping at half its lease and,
//! when the run's cancellation token fires (the command ends, Ctrl-C,
//! SIGTERM), deletes them all within [`RELEASE_WAIT`], before the scope's
//! shutdown is over. A mapping the router refuses is an error value for the
//! caller to show as a warning: the run goes on without it.
//!
//! Bounds: a run maps at most three ports (the peer's TCP port, and for an
//! embedded tracker its central and swarm UDP ports); every exchange with
//! the router has a timeout (PCP/NAT-PMP: 4 tries over about 4 s; UPnP:
//! the search [`UPNP_SEARCH`], each request 10 s, a whole mapping
//! [`UPNP_LIMIT`], replies cut at 1 MiB by igd-next); a router's replies
//! are parsed by the crates, and a port 0 or an address of the wrong family
//! from them is refused here.

pub mod gateway;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMappingOptions, PortMappingType, TimeoutConfig};
use igd_next::aio::tokio::Tokio;
use igd_next::PortMappingProtocol;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, Events};

/// Restricts the protocols tried: `upnp`, or `pcp` (PCP, falling back to
/// NAT-PMP). For tests and for routers that answer one of them badly.
pub const ONLY_ENV: &str = "HAYEDIK_PORTMAP_ONLY";
/// The lease asked for (seconds): NAT-PMP's recommended two hours. UPnP
/// routers that only grant permanent leases refuse it; the mapping is
/// then retried as permanent and still deleted on exit.
pub const LEASE_SECS: u32 = 7200;
/// How long the UPnP-IGD search waits for the router's answer.
pub const UPNP_SEARCH: Duration = Duration::from_secs(3);
/// How long mapping one port by UPnP-IGD may take in all (igd-next tries
/// up to 20 random ports when the router refuses ours, each request with
/// its own 10 s timeout).
pub const UPNP_LIMIT: Duration = Duration::from_secs(20);
/// How long deleting the mappings at exit may take in all.
pub const RELEASE_WAIT: Duration = Duration::from_secs(3);
/// A renewal that failed is tried again after this long (while the lease
/// lasts, and after it: the router may come back).
const RETRY_RENEW: Duration = Duration::from_secs(30);
/// What the router's mapping table says made the mapping.
const DESCRIPTION: &str = "hayedik";
/// PCP/NAT-PMP retransmissions: 250 ms, then doubling up to 2 s, 4 tries.
const PMP_TIMEOUTS: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 3,
    max_retry_timeout: Some(Duration::from_secs(2)),
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The protocol that made a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Pcp,
    NatPmp,
    Upnp,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Pcp => "pcp",
            Method::NatPmp => "nat-pmp",
            Method::Upnp => "upnp",
        }
    }
}

/// One port the router forwards to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub proto: Proto,
    /// Our port.
    pub internal: u16,
    /// The router's external address and the port it forwards.
    pub external: SocketAddr,
    pub method: Method,
    /// The router asked.
    pub gateway: IpAddr,
}

impl Mapped {
    /// The `port_mapped` event for it.
    pub fn event(&self) -> Event {
        Event::PortMapped {
            protocol: self.proto.as_str().to_string(),
            port: self.internal,
            addr: self.external.to_string(),
            method: self.method.as_str().to_string(),
            gateway: self.gateway.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PortmapError {
    #[error("no router to ask: {0}")]
    NoGateway(String),
    #[error("{0}")]
    Refused(String),
}

/// Which protocols may be tried.
#[derive(Debug, Clone, Copy)]
struct Allowed {
    pmp: bool,
    upnp: bool,
}

/// A mapping and what renews or deletes it.
enum Lease {
    Pmp(crab_nat::PortMapping),
    Upnp {
        gateway: Box<igd_next::aio::Gateway<Tokio>>,
        proto: PortMappingProtocol,
        local: SocketAddr,
        external_port: u16,
        /// Seconds granted; 0 = permanent (nothing to renew).
        secs: u32,
    },
}

struct Live {
    mapped: Mapped,
    lease: Lease,
    renew_at: Option<Instant>,
}

/// The router of this network, as far as we know it.
pub struct Router {
    /// Its address, when known without asking the network.
    gateway: Option<Ipv4Addr>,
    allowed: Allowed,
    /// The UPnP-IGD device, once found.
    upnp: tokio::sync::Mutex<Option<igd_next::aio::Gateway<Tokio>>>,
}

impl Router {
    /// The router to ask (see [`gateway`]); nothing is sent yet.
    pub fn find() -> Result<Router, PortmapError> {
        let gateway = gateway::configured_or_default().map_err(PortmapError::NoGateway)?;
        let allowed = match std::env::var(ONLY_ENV).as_deref() {
            Err(_) | Ok("") => Allowed {
                pmp: true,
                upnp: true,
            },
            Ok("upnp") => Allowed {
                pmp: false,
                upnp: true,
            },
            Ok("pcp") | Ok("nat-pmp") => Allowed {
                pmp: true,
                upnp: false,
            },
            Ok(other) => {
                return Err(PortmapError::NoGateway(format!(
                    "{ONLY_ENV}={other}: expected upnp or pcp"
                )))
            }
        };
        Ok(Router {
            gateway,
            allowed,
            upnp: tokio::sync::Mutex::new(None),
        })
    }

    /// Maps each of `ports` (all or none: what was mapped before a refusal
    /// is deleted again), and keeps them until `cancel` fires; then
    /// deletes them. Warnings about renewals go to `events`.
    pub async fn map(
        &self,
        ports: &[(Proto, u16)],
        cancel: CancellationToken,
        events: Events,
    ) -> Result<Vec<Mapped>, PortmapError> {
        let mut live: Vec<Live> = Vec::with_capacity(ports.len());
        for &(proto, port) in ports {
            let made = tokio::select! {
                _ = cancel.cancelled() => Err(PortmapError::Refused("stopped".into())),
                m = self.map_one(proto, port) => m,
            };
            match made {
                Ok(l) => live.push(l),
                Err(e) => {
                    release(live).await;
                    return Err(e);
                }
            }
        }
        let mapped: Vec<Mapped> = live.iter().map(|l| l.mapped.clone()).collect();
        crate::spawn::spawn("port mapping", keep(live, cancel, events));
        Ok(mapped)
    }

    async fn map_one(&self, proto: Proto, port: u16) -> Result<Live, PortmapError> {
        let port = NonZeroU16::new(port)
            .ok_or_else(|| PortmapError::Refused("cannot map port 0".into()))?;
        let mut why = Vec::new();
        if let (true, Some(gw)) = (self.allowed.pmp, self.gateway) {
            match map_pmp(gw, proto, port).await {
                Ok(l) => return Ok(l),
                Err(e) => why.push(format!("PCP/NAT-PMP at {gw}: {e}")),
            }
        }
        if self.allowed.upnp {
            match tokio::time::timeout(UPNP_LIMIT, self.map_upnp(proto, port)).await {
                Ok(Ok(l)) => return Ok(l),
                Ok(Err(e)) => why.push(format!("UPnP-IGD: {e}")),
                Err(_) => why.push(format!("UPnP-IGD: no mapping within {UPNP_LIMIT:?}")),
            }
        }
        if why.is_empty() {
            why.push("no router known to ask with the allowed protocols".into());
        }
        Err(PortmapError::Refused(why.join("; ")))
    }

    async fn map_upnp(&self, proto: Proto, port: NonZeroU16) -> Result<Live, String> {
        let mut cached = self.upnp.lock().await;
        let device = match cached.as_ref() {
            Some(d) => d.clone(),
            None => {
                let d = search_upnp(self.gateway).await?;
                *cached = Some(d.clone());
                d
            }
        };
        drop(cached);
        let gw_ip = match device.addr.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) => return Err(format!("the IGD at {ip} is IPv6; we map IPv4 ports")),
        };
        let local = gateway::local_ip_towards(gw_ip).map_err(|e| e.to_string())?;
        let external_ip = match device.get_external_ip().await {
            Ok(IpAddr::V4(ip)) if !ip.is_unspecified() => ip,
            Ok(other) => return Err(format!("the router's external address is {other}")),
            Err(e) => return Err(format!("asking its external address: {e}")),
        };
        let igd_proto = match proto {
            Proto::Tcp => PortMappingProtocol::TCP,
            Proto::Udp => PortMappingProtocol::UDP,
        };
        let local_addr = SocketAddr::new(IpAddr::V4(local), port.get());
        let mut secs = LEASE_SECS;
        // The same port number outside when it is free, so the numbers a
        // user sees match; any port otherwise.
        let mut same = device
            .add_port(igd_proto, port.get(), local_addr, secs, DESCRIPTION)
            .await;
        if let Err(igd_next::AddPortError::OnlyPermanentLeasesSupported) = same {
            secs = 0;
            same = device
                .add_port(igd_proto, port.get(), local_addr, secs, DESCRIPTION)
                .await;
        }
        let external_port = match same {
            Ok(()) => port.get(),
            Err(_) => device
                .add_any_port(igd_proto, local_addr, secs, DESCRIPTION)
                .await
                .map_err(|e| format!("adding the mapping: {e}"))?,
        };
        if external_port == 0 {
            return Err("the router answered with external port 0".into());
        }
        Ok(Live {
            mapped: Mapped {
                proto,
                internal: port.get(),
                external: SocketAddr::new(IpAddr::V4(external_ip), external_port),
                method: Method::Upnp,
                gateway: IpAddr::V4(gw_ip),
            },
            renew_at: (secs > 0).then(|| Instant::now() + renew_after(secs)),
            lease: Lease::Upnp {
                gateway: Box::new(device),
                proto: igd_proto,
                local: local_addr,
                external_port,
                secs,
            },
        })
    }
}

/// `--port-mapping` for a command: maps `ports` on the router, says what
/// was mapped (`port_mapped`), and keeps the mappings until `cancel`. A
/// failure is a warning and `None`: the command goes on without them.
pub async fn map_or_warn(
    ports: &[(Proto, u16)],
    cancel: &CancellationToken,
    events: &Events,
) -> Option<Vec<Mapped>> {
    let result = match Router::find() {
        Ok(router) => router.map(ports, cancel.clone(), events.clone()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(mapped) => {
            for m in &mapped {
                events.emit(m.event());
            }
            Some(mapped)
        }
        Err(e) => {
            if !cancel.is_cancelled() {
                events.emit(Event::Warning {
                    message: format!(
                        "port mapping failed ({e}); going on without it: peers outside your network may not reach this machine"
                    ),
                });
            }
            None
        }
    }
}

/// Finds the UPnP-IGD device: asked directly (unicast SSDP) when the
/// router is known, else by SSDP multicast on the local network.
async fn search_upnp(gateway: Option<Ipv4Addr>) -> Result<igd_next::aio::Gateway<Tokio>, String> {
    let mut opts = igd_next::SearchOptions::default();
    if let Some(gw) = gateway {
        let local = gateway::local_ip_towards(gw).map_err(|e| e.to_string())?;
        opts.bind_addr = SocketAddr::new(IpAddr::V4(local), 0);
        opts.broadcast_address = SocketAddr::new(IpAddr::V4(gw), 1900);
    }
    opts.timeout = Some(UPNP_SEARCH);
    opts.single_search_timeout = Some(UPNP_SEARCH);
    let search = igd_next::aio::tokio::search_gateway(opts);
    match tokio::time::timeout(UPNP_SEARCH + Duration::from_secs(1), search).await {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(format!("no Internet Gateway Device answered: {e}")),
        Err(_) => Err("no Internet Gateway Device answered in time".into()),
    }
}

async fn map_pmp(gw: Ipv4Addr, proto: Proto, port: NonZeroU16) -> Result<Live, String> {
    let local = gateway::local_ip_towards(gw).map_err(|e| e.to_string())?;
    let p = match proto {
        Proto::Tcp => InternetProtocol::Tcp,
        Proto::Udp => InternetProtocol::Udp,
    };
    let opts = PortMappingOptions {
        external_port: Some(port),
        lifetime_seconds: Some(LEASE_SECS),
        timeout_config: Some(PMP_TIMEOUTS),
    };
    let m = crab_nat::PortMapping::new(gw.into(), IpAddr::V4(local), p, port, opts)
        .await
        .map_err(|e| e.to_string())?;
    let (method, external_ip) = match m.mapping_type() {
        PortMappingType::Pcp { external_ip, .. } => (Method::Pcp, external_ip.to_canonical()),
        PortMappingType::NatPmp => {
            match crab_nat::natpmp::external_address(gw.into(), Some(PMP_TIMEOUTS)).await {
                Ok(ip) => (Method::NatPmp, IpAddr::V4(ip)),
                Err(e) => {
                    let _ = m.try_drop().await;
                    return Err(format!("asking its external address: {e}"));
                }
            }
        }
    };
    if !external_ip.is_ipv4() || external_ip.is_unspecified() {
        let _ = m.try_drop().await;
        return Err(format!("the router's external address is {external_ip}"));
    }
    let lifetime = m.lifetime();
    Ok(Live {
        mapped: Mapped {
            proto,
            internal: port.get(),
            external: SocketAddr::new(external_ip, m.external_port().get()),
            method,
            gateway: IpAddr::V4(gw),
        },
        renew_at: Some(Instant::now() + renew_after(lifetime)),
        lease: Lease::Pmp(m),
    })
}

/// When to renew a lease of `secs` seconds: at half of it, not sooner
/// than 5 s (a router that grants seconds is not asked in a loop).
pub fn renew_after(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs / 2).max(5))
}

/// Renews `live` at half its leases until `cancel`, then deletes them.
async fn keep(mut live: Vec<Live>, cancel: CancellationToken, events: Events) {
    loop {
        let next = live.iter().filter_map(|l| l.renew_at).min();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sleep_until(next) => {}
        }
        let now = Instant::now();
        for l in live
            .iter_mut()
            .filter(|l| l.renew_at.is_some_and(|t| t <= now))
        {
            match renew(&mut l.lease).await {
                Ok(secs) => l.renew_at = Some(Instant::now() + renew_after(secs)),
                Err(e) => {
                    events.emit(Event::Warning {
                        message: format!(
                            "renewing the port mapping {} on the router {}: {e}; trying again in {} s",
                            l.mapped.external,
                            l.mapped.gateway,
                            RETRY_RENEW.as_secs()
                        ),
                    });
                    l.renew_at = Some(Instant::now() + RETRY_RENEW);
                }
            }
        }
    }
    release(live).await;
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Renews one lease; the seconds granted.
async fn renew(lease: &mut Lease) -> Result<u32, String> {
    match lease {
        Lease::Pmp(m) => {
            tokio::time::timeout(Duration::from_secs(10), m.renew())
                .await
                .map_err(|_| "no answer".to_string())?
                .map_err(|e| e.to_string())?;
            Ok(m.lifetime())
        }
        Lease::Upnp {
            gateway,
            proto,
            local,
            external_port,
            secs,
        } => {
            // Adding the same mapping again refreshes its lease.
            gateway
                .add_port(*proto, *external_port, *local, *secs, DESCRIPTION)
                .await
                .map_err(|e| e.to_string())?;
            Ok(*secs)
        }
    }
}

/// Deletes every mapping of `live`, within [`RELEASE_WAIT`] in all.
async fn release(live: Vec<Live>) {
    let all = async {
        for l in live {
            let what = format!("{} {}", l.mapped.proto.as_str(), l.mapped.external);
            let r = match l.lease {
                Lease::Pmp(m) => m.try_drop().await.map_err(|(e, _)| e.to_string()),
                Lease::Upnp { gateway, proto, .. } => gateway
                    .remove_port(proto, l.mapped.external.port())
                    .await
                    .map_err(|e| e.to_string()),
            };
            match r {
                Ok(()) => tracing::info!("port mapping {what} deleted"),
                Err(e) => tracing::warn!("deleting the port mapping {what}: {e}"),
            }
        }
    };
    if tokio::time::timeout(RELEASE_WAIT, all).await.is_err() {
        tracing::warn!(
            "the router did not confirm deleting the port mappings within {RELEASE_WAIT:?}; they expire with their lease"
        );
    }
}

#[cfg(test)]
mod tests;
