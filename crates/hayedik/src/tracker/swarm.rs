//! One swarm tracker: the state of a swarm on its own UDP port, and the task
//! that serves it.
//!
//! [`SwarmTracker::handle`] is synchronous and takes `now`: it applies one
//! datagram and writes the reply, if any, following PROTOCOL.md's order of
//! checks: length, magic, version, type, swarm state (ERROR 6), token or
//! connection id, body (ERROR 2), swarm key (ERROR 4). A reply to a source
//! that has not proved its address is never larger than its request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hayedik_proto::tracker::{
    decode_body, decode_header, encode_error_capped, encode_peers_head, Datagram, ErrorCode,
    ExtFlags, HeaderError, Kind, Message, PeerEntryX, PeersX, Probe, RelayAddr, MAX_PEERS_DATAGRAM,
    PEERS_FIXED_LEN,
};

use super::cookie::{ct_eq, Purpose, Stamp};
use super::peers::{PeerTable, Update};
use super::probe::Probes;

/// Peers sent when an ANNOUNCE asks for 0 (the tracker's default).
pub const DEFAULT_WANTED: usize = 50;
/// Minimum lifetime of a connection id (PROTOCOL.md: at least two minutes).
pub const CONNECTION_ID_WINDOW_SECS: u64 = 120;

/// Settings shared by every swarm tracker.
#[derive(Debug, Clone)]
pub struct SwarmSettings {
    /// Announce interval told to peers.
    pub interval: Duration,
    pub max_peers: usize,
    /// Peers listed from one IPv4 address or IPv6 /64.
    pub max_peers_per_source: usize,
    /// The relay told to peers in PEERS_X (`--relay`), or none.
    pub relay: RelayAddr,
    /// The embedded tracker's: where its own sharer is listed.
    pub external: Option<Arc<ExternalAddress>>,
    /// Peers listed in one answer at most (`--max-listed`).
    pub max_listed: usize,
}

/// The one rewrite of an embedded tracker (`share --port-mapping`): its
/// sharer announces from a local address nobody outside can reach; once
/// the router's external address is known, an ANNOUNCE_X with MAPPED from
/// that local IP is listed under the external IP (with the port it
/// announces, the mapped one). A plain `hayedik tracker` has none.
#[derive(Debug, Default)]
pub struct ExternalAddress(std::sync::RwLock<Option<(IpAddr, IpAddr)>>);

impl ExternalAddress {
    /// Lists MAPPED announces from `local` under `external` from now on.
    pub fn set(&self, local: IpAddr, external: IpAddr) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some((local, external));
    }

    /// The IP to list an announce from `ip` under.
    fn listed_ip(&self, ip: IpAddr) -> IpAddr {
        match *self.0.read().unwrap_or_else(|e| e.into_inner()) {
            Some((local, external)) if local == ip.to_canonical() => external,
            _ => ip,
        }
    }
}

/// When a confirmed swarm is retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retire {
    /// No ANNOUNCE for this long (wall clock, so it counts across restarts).
    pub after: Duration,
    /// No ANNOUNCE ever (the key never bound) this long after the swarm was
    /// confirmed or restored: nobody but the confirming address could bind
    /// it, and it did not, so the swarm only holds a port and a slot.
    pub unannounced: Duration,
}

/// The persistent identity of a confirmed swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmRecord {
    pub port: u16,
    /// Source IP of the JOIN that created it, for the per-IP caps.
    pub creator: Option<std::net::IpAddr>,
    pub token: u64,
    /// The address that sent the first valid CONFIRM.
    pub confirmer: Option<SocketAddr>,
    /// Bound by the first ANNOUNCE.
    pub key: Option<[u8; 32]>,
    /// Unix seconds of the last ANNOUNCE (or of the confirmation).
    pub last_announce_unix: u64,
}

/// What a datagram changed that the task must act on (persist, tell others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Nothing,
    /// The first valid CONFIRM: the swarm is now kept.
    Confirmed,
    /// The first ANNOUNCE bound the swarm key.
    KeyBound,
    /// An ANNOUNCE was answered.
    Announced,
}

thread_local! {
    /// The sampled entries (table indices) of the PEERS being built on this
    /// thread, kept between answers (no allocation per answer) but not per
    /// swarm (issue 16, point 7: an idle swarm holds no buffer).
    static SCRATCH: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One swarm's state.
#[derive(Debug)]
pub struct SwarmTracker {
    pub record: SwarmRecord,
    confirmed: bool,
    /// Set while shutting down for retirement: CONNECT and ANNOUNCE get ERROR 6.
    retiring: bool,
    /// When the first CONFIRM came, or, for a swarm restored confirmed, the
    /// `epoch` it was restored with.
    confirmed_at: Option<Instant>,
    peers: PeerTable,
    conn_ids: Stamp,
    settings: SwarmSettings,
    /// Zero of the clock used for connection id windows.
    epoch: Instant,
    rng: rand::rngs::SmallRng,
    probes: Probes,
    /// A probe the last datagram asked the task to start.
    probe_to_start: Option<SocketAddr>,
    /// Whether an ANNOUNCE was ever answered (or, for a restored swarm,
    /// its key is bound): one that never was is retired after
    /// `Retire::unannounced`.
    announced: bool,
    /// Peers opted in to hole punching; INTRODUCE's rate limits.
    introducer: super::introduce::Introducer,
    /// The INTRODUCED for the target of the last INTRODUCE (the
    /// requester's is in `out`): the task sends it.
    second: Option<(SocketAddr, Vec<u8>)>,
}

impl SwarmTracker {
    pub fn new(
        record: SwarmRecord,
        confirmed: bool,
        settings: SwarmSettings,
        epoch: Instant,
    ) -> Self {
        use rand::SeedableRng;
        let record_bound = record.key.is_some();
        Self {
            peers: PeerTable::new(settings.max_peers, settings.max_peers_per_source),
            conn_ids: Stamp::random(Purpose::ConnectionId, CONNECTION_ID_WINDOW_SECS),
            record,
            confirmed,
            confirmed_at: confirmed.then_some(epoch),
            retiring: false,
            settings,
            epoch,
            rng: rand::rngs::SmallRng::from_entropy(),
            probes: Probes::default(),
            probe_to_start: None,
            announced: record_bound,
            introducer: Default::default(),
            second: None,
        }
    }

    /// Overrides whether the swarm counts as announced to: a swarm created
    /// by a CLAIM is bound to its key before anyone announced.
    pub fn set_announced(&mut self, announced: bool) {
        self.announced = announced;
    }

    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    pub fn set_retiring(&mut self) {
        self.retiring = true;
    }

    /// Whether a confirmed swarm is due for retirement at `now` (and
    /// `now_unix`, the wall clock): never announced to within
    /// `retire.unannounced` of its confirmation or restoration, or silent for
    /// `retire.after` since its last ANNOUNCE. A pending swarm never is (it
    /// is reclaimed instead).
    pub fn retire_due(&self, now: Instant, now_unix: u64, retire: Retire) -> bool {
        let Some(confirmed_at) = self.confirmed_at.filter(|_| self.confirmed) else {
            return false;
        };
        if !self.announced && now.saturating_duration_since(confirmed_at) > retire.unannounced {
            return true;
        }
        let silent = now_unix.saturating_sub(self.record.last_announce_unix);
        Duration::from_secs(silent) > retire.after
    }

    /// Reads, with loads that do not wait on each other, the state that
    /// answering an announce reads: called for the swarm served next while
    /// this one is, so that its cache misses come together, early, instead
    /// of one after another while it is served.
    pub fn warm_ahead(&self) {
        std::hint::black_box((
            self.record.port,
            self.record.key.map(|k| k[0]),
            self.confirmed,
            self.retiring,
            self.conn_ids.clone(),
            self.settings.max_listed,
            self.rng.clone(),
        ));
        self.peers.warm_ahead();
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Seeders and partial sources listed (for the status page).
    pub fn peer_counts(&self) -> (u32, u32) {
        self.peers.counts(None)
    }

    /// Drops peers silent for more than twice the announce interval, and
    /// old probe results.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.probes.expire(now);
        self.introducer.expire(now, self.settings.interval * 2);
        self.peers.expire(now, self.settings.interval * 2)
    }

    /// The probe the last [`SwarmTracker::handle`] asked for, if any: the
    /// task runs it and reports with [`SwarmTracker::probe_finished`].
    pub fn take_probe(&mut self) -> Option<SocketAddr> {
        self.probe_to_start.take()
    }

    /// The second INTRODUCED of the last [`SwarmTracker::handle`], if
    /// any, and where to send it.
    pub fn take_second(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.second.take()
    }

    /// A probe ended (`None`: it could not be run).
    pub fn probe_finished(&mut self, addr: SocketAddr, reached: Option<bool>, now: Instant) {
        self.probes.finished(addr, reached, now);
    }

    fn secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// The connection id that `src` would get now (for tests and benches).
    pub fn connection_id(&self, src: SocketAddr, now: Instant) -> u64 {
        self.conn_ids
            .issue(src, u64::from(self.record.port), self.secs(now))
    }

    /// Applies one datagram from `src`; the reply, if any, is left in `out`.
    pub fn handle(
        &mut self,
        src: SocketAddr,
        buf: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Effect {
        out.clear();
        let cap = buf.len();
        let (header, body) = match decode_header(buf) {
            Ok(x) => x,
            Err(HeaderError::Drop) => return Effect::Nothing,
            Err(HeaderError::UnsupportedVersion { tid, .. }) => {
                encode_error_capped(
                    out,
                    tid,
                    ErrorCode::UnsupportedVersion,
                    "unsupported version: this tracker speaks version 1",
                    cap,
                );
                return Effect::Nothing;
            }
        };
        let tid = header.tid;
        match header.kind {
            Kind::Confirm => {
                if !ct_eq(
                    &header.token.to_be_bytes(),
                    &self.record.token.to_be_bytes(),
                ) {
                    return Effect::Nothing;
                }
                if decode_body(&header, body).is_err() {
                    encode_error_capped(
                        out,
                        tid,
                        ErrorCode::Malformed,
                        "CONFIRM has an empty body",
                        cap,
                    );
                    return Effect::Nothing;
                }
                Datagram::new(tid, Message::Confirmed).encode(out);
                if self.confirmed {
                    return Effect::Nothing;
                }
                self.confirmed = true;
                self.confirmed_at = Some(now);
                self.record.confirmer = Some(src);
                Effect::Confirmed
            }
            Kind::Connect => {
                if let Some(e) = self.unavailable() {
                    encode_error_capped(out, tid, ErrorCode::NotConfirmed, e, cap);
                    return Effect::Nothing;
                }
                if decode_body(&header, body).is_err() {
                    encode_error_capped(
                        out,
                        tid,
                        ErrorCode::Malformed,
                        "CONNECT has an empty body",
                        cap,
                    );
                    return Effect::Nothing;
                }
                let connection_id = self.connection_id(src, now);
                Datagram::new(tid, Message::Connected { connection_id }).encode(out);
                Effect::Nothing
            }
            Kind::Announce | Kind::AnnounceX => self.announce(src, &header, body, now, out),
            Kind::Introduce => {
                self.introduce(src, &header, body, now, out);
                Effect::Nothing
            }
            _ => Effect::Nothing,
        }
    }

    fn unavailable(&self) -> Option<&'static str> {
        if !self.confirmed {
            Some("swarm not confirmed yet")
        } else if self.retiring {
            Some("swarm is being retired")
        } else {
            None
        }
    }

    fn announce(
        &mut self,
        src: SocketAddr,
        header: &hayedik_proto::tracker::Header,
        body: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Effect {
        let (tid, cap) = (header.tid, hayedik_proto::tracker::HEADER_LEN + body.len());
        if let Some(e) = self.unavailable() {
            encode_error_capped(out, tid, ErrorCode::NotConfirmed, e, cap);
            return Effect::Nothing;
        }
        self.peers.warm();
        if !self.conn_ids.check(
            src,
            u64::from(self.record.port),
            header.token,
            self.secs(now),
        ) {
            encode_error_capped(
                out,
                tid,
                ErrorCode::BadConnectionId,
                "bad or expired connection id: CONNECT again",
                cap,
            );
            return Effect::Nothing;
        }
        // From here on the source has proved its address: no size cap.
        let (announce, ext) = match decode_body(header, body) {
            Ok(Message::Announce { announce, .. }) => (announce, None),
            Ok(Message::AnnounceX {
                announce, flags, ..
            }) => (announce, Some(flags)),
            _ => {
                encode_error_capped(
                    out,
                    tid,
                    ErrorCode::Malformed,
                    "malformed ANNOUNCE",
                    usize::MAX,
                );
                return Effect::Nothing;
            }
        };
        let mut effect = Effect::Announced;
        match self.record.key {
            Some(key) if !ct_eq(&key, &announce.swarm_key) => {
                encode_error_capped(
                    out,
                    tid,
                    ErrorCode::WrongSwarmKey,
                    "wrong swarm key for this port",
                    usize::MAX,
                );
                return Effect::Nothing;
            }
            Some(_) => {}
            None => {
                if self.record.confirmer != Some(src) {
                    encode_error_capped(
                        out,
                        tid,
                        ErrorCode::WrongSwarmKey,
                        "swarm not bound yet: only the confirming address may announce first",
                        usize::MAX,
                    );
                    return Effect::Nothing;
                }
                self.record.key = Some(announce.swarm_key);
                effect = Effect::KeyBound;
            }
        }
        let udp_src = src;
        // The address this announce is listed under: its source, or for
        // an embedded tracker's own mapped sharer, the router's.
        let src = match (&self.settings.external, ext) {
            (Some(x), Some(f)) if f.mapped => SocketAddr::new(x.listed_ip(src.ip()), src.port()),
            _ => src,
        };
        self.announced = true;
        let me = (src.ip(), announce.port);
        let marks = (
            ext.is_some_and(|f| f.relayed),
            ext.is_some_and(|f| f.mapped),
        );
        let (update, listed_at) =
            self.peers
                .announce_listed(src, announce.port, announce.state, marks, now);
        let refusal = match update {
            Update::Full => Some("swarm is full"),
            Update::SourceFull => Some("swarm is full for your address: too many ports listed"),
            // Another socket may not delist or downgrade an entry: answered
            // as usual, the entry left as it was.
            Update::Listed => {
                let punch = ext.is_some_and(|f| f.punch);
                self.introducer.set(me, udp_src, punch, now);
                None
            }
            Update::NotListed => {
                self.introducer.set(me, udp_src, false, now);
                None
            }
            Update::NotOwner => None,
        };
        if let Some(message) = refusal {
            encode_error_capped(out, tid, ErrorCode::RateLimited, message, usize::MAX);
            return effect_if_bound(effect);
        }
        let (seeders, partials) = self.peers.counts_without(listed_at);
        let wanted = match announce.wanted {
            0 => DEFAULT_WANTED,
            n => usize::from(n),
        }
        .min(self.settings.max_listed);
        let interval = u16::try_from(self.settings.interval.as_secs()).unwrap_or(u16::MAX);
        if let Some(flags) = ext {
            let observed = SocketAddr::new(src.ip(), announce.port);
            self.reply_x(
                tid,
                flags,
                observed,
                announce,
                (wanted, listed_at),
                (seeders, partials),
                now,
                out,
            );
            return effect;
        }
        encode_peers_head(out, tid, interval, seeders, partials);
        if announce.state == hayedik_proto::tracker::PeerState::Leaving {
            return effect;
        }
        let room = MAX_PEERS_DATAGRAM - PEERS_FIXED_LEN;
        if self
            .peers
            .put_sample(listed_at, wanted, &mut self.rng, room, out)
        {
            return effect;
        }
        let mut entries = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        entries.clear();
        let mut room = room;
        self.peers
            .sample_without(listed_at, wanted, &mut self.rng, &mut entries, |len| {
                let fits = len <= room;
                room = room.saturating_sub(len);
                fits
            });
        for &g in &entries {
            self.peers.put_entry(g, out);
        }
        SCRATCH.with(|s| *s.borrow_mut() = entries);
        effect
    }
}

impl SwarmTracker {
    /// The PEERS_X answer to an ANNOUNCE_X already applied to the table
    /// (the requester's entry at `listed_at`, left out of the sample).
    #[allow(clippy::too_many_arguments)]
    fn reply_x(
        &mut self,
        tid: u32,
        flags: ExtFlags,
        observed: SocketAddr,
        announce: hayedik_proto::tracker::Announce,
        (wanted, listed_at): (usize, Option<usize>),
        (seeders, partials): (u32, u32),
        now: Instant,
        out: &mut Vec<u8>,
    ) {
        let probe = if flags.probe && announce.port != 0 {
            let (result, start) = self.probes.ask(observed, now);
            if start {
                self.probe_to_start = Some(observed);
            }
            result
        } else {
            Probe::NotAsked
        };
        let relay = self.settings.relay;
        let mut sample = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        sample.clear();
        if announce.state != hayedik_proto::tracker::PeerState::Leaving {
            let mut room = MAX_PEERS_DATAGRAM - PeersX::fixed_len(&observed, &relay);
            self.peers
                .sample_without(listed_at, wanted, &mut self.rng, &mut sample, |len| {
                    // And its flags.
                    let len = len + 1;
                    let fits = len <= room;
                    room = room.saturating_sub(len);
                    fits
                });
        }
        let peers = sample
            .iter()
            .map(|&g| {
                let entry = self.peers.entry(g);
                let (relayed, mapped) = self.peers.relayed_mapped(g);
                PeerEntryX {
                    relayed,
                    mapped,
                    // Shown only to a requester that opted in itself.
                    punchable: flags.punch
                        && self
                            .introducer
                            .is_punchable((entry.addr.ip(), entry.addr.port())),
                    entry,
                }
            })
            .collect();
        SCRATCH.with(|s| *s.borrow_mut() = sample);
        let reply = PeersX {
            interval: u16::try_from(self.settings.interval.as_secs()).unwrap_or(u16::MAX),
            seeders,
            partials,
            probe,
            observed,
            relay,
            peers,
        };
        Datagram::new(tid, Message::PeersX(reply)).encode(out);
    }
}

impl SwarmTracker {
    /// INTRODUCE: both sides get INTRODUCED (the requester in `out`, the
    /// target in [`SwarmTracker::take_second`]), or nobody gets anything:
    /// an unavailable swarm, a bad connection id, a malformed body, a side
    /// not opted in, or a rate limit.
    fn introduce(
        &mut self,
        src: SocketAddr,
        header: &hayedik_proto::tracker::Header,
        body: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) {
        self.second = None;
        if self.unavailable().is_some()
            || !self.conn_ids.check(
                src,
                u64::from(self.record.port),
                header.token,
                self.secs(now),
            )
        {
            return;
        }
        let Ok(Message::Introduce { port, target, .. }) = decode_body(header, body) else {
            return;
        };
        let Some((mine, theirs)) = self.introducer.introduce(src, port, target, now) else {
            return;
        };
        let tid = header.tid;
        Datagram::new(
            tid,
            Message::Introduced {
                peer: SocketAddr::new(theirs.ip(), target.port()),
                udp_port: theirs.port(),
            },
        )
        .encode(out);
        let mut second = Vec::with_capacity(41);
        Datagram::new(
            tid,
            Message::Introduced {
                peer: SocketAddr::new(mine.ip(), port),
                udp_port: mine.port(),
            },
        )
        .encode(&mut second);
        self.second = Some((theirs, second));
    }
}

fn effect_if_bound(effect: Effect) -> Effect {
    match effect {
        Effect::KeyBound => Effect::KeyBound,
        _ => Effect::Nothing,
    }
}

#[cfg(test)]
#[path = "swarm_tests.rs"]
mod tests;
