//! The command line (DESIGN.md's contract), parsed with clap derive.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::relay::RelayLimits;
use crate::tracker::limits::Limits;
use crate::tracker::TrackerConfig;

#[derive(Debug, Parser)]
#[command(
    name = "hayedik",
    version,
    about = "Lightweight peer-to-peer file sharing: share a file or a folder, get a ticket, download it from every peer that has it",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Also print logs on stderr (-v: info, -vv: debug; RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a central tracker that launches a swarm tracker per shared file.
    Tracker(TrackerArgs),
    /// Share a file or a folder: print its ticket, then serve it until interrupted.
    Share(ShareArgs),
    /// Download what a ticket names from every peer that has it, then seed it.
    Get(GetArgs),
    /// List what a ticket shares (files and sizes, from its verified
    /// manifest) without downloading it.
    Ls(LsArgs),
    /// Show the whole system on loopback: a tracker, a sharer, several downloaders.
    Demo(DemoArgs),
    /// Serve a local web page to share, get and watch transfers (see docs/ui.md).
    Ui(UiArgs),
    /// Run a Mainline DHT node that serves others (private networks,
    /// tests; see docs/dht.md).
    DhtNode(DhtNodeArgs),
    /// Print a shell completion script on stdout (e.g. `hayedik completions
    /// bash > /etc/bash_completion.d/hayedik`).
    Completions {
        /// The shell: bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout (e.g. `hayedik man | man -l -`).
    Man,
}

impl Command {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        match self {
            Command::Tracker(a) => a.json,
            Command::Share(a) => a.json,
            Command::Get(a) => a.json,
            Command::Ls(a) => a.json,
            Command::Ui(a) => a.json,
            Command::DhtNode(a) => a.json,
            Command::Demo(_) | Command::Completions { .. } | Command::Man => false,
        }
    }
}

fn parse_rate(s: &str) -> Result<u64, String> {
    crate::peer::rate::parse_rate(s)
}

/// A size in bytes, K, M, G suffixes (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    crate::peer::rate::parse_rate(s)
        .map_err(|_| format!("'{s}' is not a size: use bytes such as 500K, 64M or 1G"))
}

/// A ticket, forgiving what a chat or a sentence puts around it: spaces,
/// quotes, brackets, and a trailing `.`, `,` or `/` (a ticket ends in hex
/// digits and starts with its scheme, so none of these is ambiguous).
pub fn parse_ticket(s: &str) -> Result<hayedik_proto::ticket::Ticket, String> {
    let trimmed = s
        .trim()
        .trim_start_matches(|c: char| c.is_whitespace() || "\"'`<([{".contains(c))
        .trim_end_matches(|c: char| c.is_whitespace() || "\"'`>)]}.,;:!?/".contains(c));
    trimmed.parse().map_err(|e| format!("{e}"))
}

/// `IP:PORT`, or a bare `PORT` for every address (`0.0.0.0:PORT`).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    s.parse().map_err(|_| {
        format!("'{s}' is not an address: use IP:PORT (e.g. 0.0.0.0:7777, [::]:7777) or a port number alone")
    })
}

#[derive(Debug, Args)]
pub struct ShareArgs {
    /// The file or folder to share. A folder is shared whole, under one
    /// ticket (its files and empty folders; symbolic links are not followed).
    pub path: PathBuf,
    /// Exit 0 once N other peers hold a verified copy (counted when they
    /// tell the tracker or finish downloading from this sharer, whether or
    /// not they stay online).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub until_replicated: Option<u32>,
    /// Also show the ticket as a QR code.
    #[arg(long)]
    pub qr: bool,
    /// Share a folder even when some names in it could not be written on
    /// other systems (`a:b.txt`, `CON`...): leave those out, and say which.
    #[arg(long)]
    pub skip_unportable: bool,
    /// Central tracker HOST:PORT; without it a tracker runs inside this process.
    #[arg(long, value_name = "HOST:PORT")]
    pub tracker: Option<String>,
    /// Host name or address to put in the ticket (default: this machine's address).
    #[arg(long, value_name = "HOST")]
    pub public_host: Option<String>,
    /// TCP address to serve pieces on: IP:PORT, or PORT for every address
    /// (port 0: any).
    #[arg(long, default_value = "0.0.0.0:0", value_name = "ADDR", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Upload cap in bytes per second (K, M, G suffixes), e.g. 20M.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub max_upload: Option<u64>,
    /// Incoming sessions allowed from one IPv4 address or IPv6 /64 (when
    /// every slot is taken, the longest-idle session makes room).
    #[arg(long, default_value_t = crate::peer::slots::DEFAULT_PER_ADDRESS as u16, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_peers_per_ip: u16,
    #[command(flatten)]
    pub dht: DhtArgs,
    /// Ask the router (PCP, NAT-PMP, UPnP-IGD) to forward our TCP port (and,
    /// with the embedded tracker, its UDP ports)
    /// while this runs, renewing it, and remove it on exit. Off by
    /// default: it changes the router's settings.
    #[arg(long)]
    pub port_mapping: bool,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The ticket: hayedik://HOST:PORT/ROOT
    #[arg(value_parser = parse_ticket)]
    pub ticket: hayedik_proto::ticket::Ticket,
    /// Directory to write into (created if missing).
    #[arg(short = 'o', long = "output", default_value = ".", value_name = "DIR")]
    pub out: PathBuf,
    /// TCP address to serve pieces on: IP:PORT, or PORT for every address
    /// (port 0: any).
    #[arg(long, default_value = "0.0.0.0:0", value_name = "ADDR", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Exit when done instead of seeding.
    #[arg(long)]
    pub no_seed: bool,
    /// Give up when nothing progresses for SECS (0: wait forever).
    #[arg(long, default_value = "120", value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Duration,
    /// Upload cap in bytes per second (K, M, G suffixes), e.g. 20M.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub max_upload: Option<u64>,
    /// Download cap in bytes per second (K, M, G suffixes).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub max_download: Option<u64>,
    /// Of a shared folder, download only the files matching GLOB, as
    /// gitignore matches: against paths inside the folder (as `ls` prints
    /// them); without a '/' at any depth ('*.txt' takes docs/readme.txt),
    /// with one from the top ('docs/*.md'); '**' crosses folders; a folder
    /// matched is taken whole. Repeatable; a later get without it completes
    /// the rest.
    #[arg(long, value_name = "GLOB", value_parser = parse_glob)]
    pub only: Vec<String>,
    /// Incoming sessions allowed from one IPv4 address or IPv6 /64 (when
    /// every slot is taken, the longest-idle session makes room).
    #[arg(long, default_value_t = crate::peer::slots::DEFAULT_PER_ADDRESS as u16, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_peers_per_ip: u16,
    #[command(flatten)]
    pub dht: DhtArgs,
    /// Ask the router (PCP, NAT-PMP, UPnP-IGD) to forward our TCP port
    /// while this runs, renewing it, and remove it on exit. Off by
    /// default: it changes the router's settings.
    #[arg(long)]
    pub port_mapping: bool,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Checks a `--only` pattern.
fn parse_glob(s: &str) -> Result<String, String> {
    crate::peer::select::compile(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// The DHT flags of `share` and `get` (docs/dht.md).
#[derive(Debug, Clone, Default, Args)]
pub struct DhtArgs {
    /// Also announce and find peers in the BitTorrent Mainline DHT (IPv4
    /// only), under a hash derived from the root. Off by default (the
    /// config file can turn it on: docs/dht.md).
    #[arg(long)]
    pub dht: bool,
    /// A DHT node to join instead of the public bootstrap nodes
    /// (repeatable; implies --dht).
    #[arg(long, value_name = "HOST:PORT", value_parser = crate::dht::parse_bootstrap)]
    pub dht_bootstrap: Vec<crate::dht::Bootstrap>,
    /// Leave the DHT off, whatever the config file says.
    #[arg(long, conflicts_with_all = ["dht", "dht_bootstrap"])]
    pub no_dht: bool,
}

impl DhtArgs {
    /// Whether and how the DHT runs, with the config file weighed in.
    pub fn decide(
        &self,
        config: &crate::config::Config,
    ) -> Result<Option<crate::dht::DhtConfig>, String> {
        crate::dht::decide(
            &crate::dht::DhtFlags {
                dht: self.dht,
                no_dht: self.no_dht,
                bootstrap: self.dht_bootstrap.clone(),
            },
            config,
        )
    }
}

#[derive(Debug, Args)]
pub struct DhtNodeArgs {
    /// UDP address to serve the DHT on: IPv4:PORT, or PORT for every
    /// address (port 0: any).
    #[arg(long, default_value = "0.0.0.0:6881", value_name = "ADDR", value_parser = crate::dht::node::parse_listen)]
    pub listen: std::net::SocketAddrV4,
    /// A DHT node to join (repeatable); without it, this node starts a
    /// network of its own (it never joins the public DHT unless told).
    #[arg(long, value_name = "HOST:PORT", value_parser = crate::dht::parse_bootstrap)]
    pub dht_bootstrap: Vec<crate::dht::Bootstrap>,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// The ticket: hayedik://HOST:PORT/ROOT
    #[arg(value_parser = parse_ticket)]
    pub ticket: hayedik_proto::ticket::Ticket,
    /// Give up when no peer gave the manifest within SECS (0: wait forever).
    #[arg(long, default_value = "60", value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Duration,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UiArgs {
    /// TCP address of the page: IP:PORT, or PORT for every address (port
    /// 0: any). Anything but a loopback address exposes the page to the
    /// network (a warning says so).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Host name or address to put in the page's URL and in the tickets of
    /// its shares (default: this machine's address in tickets, the bound
    /// address in the URL).
    #[arg(long, value_name = "HOST")]
    pub public_host: Option<String>,
    /// Print the page's address without opening a browser.
    #[arg(long)]
    pub no_open: bool,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size of the demo file in bytes (K, M, G suffixes).
    #[arg(long, default_value = "64M", value_name = "BYTES", value_parser = parse_size)]
    pub size: u64,
    /// Where to write the demo's files (default: a temporary folder, removed
    /// at the end).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Parses `LOW-HIGH` into an inclusive port range.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (low, high) = s
        .split_once('-')
        .ok_or_else(|| format!("'{s}' is not a port range: use LOW-HIGH, e.g. 40000-40999"))?;
    let low: u16 = low
        .trim()
        .parse()
        .map_err(|_| format!("'{low}' is not a port number"))?;
    let high: u16 = high
        .trim()
        .parse()
        .map_err(|_| format!("'{high}' is not a port number"))?;
    if low == 0 || low > high {
        return Err(format!(
            "'{s}' is not a port range: LOW must be at least 1 and not above HIGH"
        ));
    }
    Ok((low, high))
}

/// Parses seconds, fractions allowed.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !v.is_finite() || !(0.0..=1e10).contains(&v) {
        return Err(format!("'{s}' is not a number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[derive(Debug, Args)]
pub struct TrackerArgs {
    /// UDP address of the central tracker.
    #[arg(long, default_value = "0.0.0.0:7410", value_name = "ADDR", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Keep confirmed swarms in DIR so they survive a restart (same ports, same keys).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Take swarm ports from this range (e.g. 40000-40999) instead of ephemeral ports.
    #[arg(long, value_name = "LOW-HIGH", value_parser = parse_port_range)]
    pub swarm_ports: Option<(u16, u16)>,
    /// Reclaim a new swarm that is not confirmed within SECS.
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = parse_secs)]
    pub confirm_timeout: Duration,
    /// Announce interval told to peers; a peer silent for twice this is dropped.
    #[arg(long, default_value = "60", value_name = "SECS", value_parser = parse_secs)]
    pub announce_interval: Duration,
    /// Retire a swarm nobody announced to for SECS (default 30 days).
    #[arg(long, default_value = "2592000", value_name = "SECS", value_parser = parse_secs)]
    pub retire_after: Duration,
    /// Retire a confirmed swarm that gets no announce at all within SECS of
    /// its confirmation (or of its restoration from --state).
    #[arg(long, default_value = "600", value_name = "SECS", value_parser = parse_secs)]
    pub retire_unannounced: Duration,
    /// Swarm-creating JOINs allowed per second per source IP.
    #[arg(long, default_value_t = Limits::default().joins_per_ip_per_sec, value_name = "N")]
    pub max_joins_per_ip_per_sec: f64,
    /// Burst of swarm-creating JOINs allowed per source IP.
    #[arg(long, default_value_t = Limits::default().join_burst, value_name = "N")]
    pub join_burst: u32,
    /// Swarms waiting for confirmation, in total.
    #[arg(long, default_value_t = Limits::default().max_pending, value_name = "N")]
    pub max_pending: usize,
    /// Swarms waiting for confirmation, per source IP.
    #[arg(long, default_value_t = Limits::default().max_pending_per_ip, value_name = "N")]
    pub max_pending_per_ip: usize,
    /// Swarms in total.
    #[arg(long, default_value_t = Limits::default().max_swarms, value_name = "N")]
    pub max_swarms: usize,
    /// Swarms created per source IP.
    #[arg(long, default_value_t = Limits::default().max_swarms_per_ip, value_name = "N")]
    pub max_swarms_per_ip: usize,
    /// Swarms created from one IPv4 /24.
    #[arg(long, default_value_t = Limits::default().max_swarms_per_24, value_name = "N")]
    pub max_swarms_per_24: usize,
    /// Swarms created from one IPv6 /64.
    #[arg(long, default_value_t = Limits::default().max_swarms_per_64, value_name = "N")]
    pub max_swarms_per_64: usize,
    /// Peers listed in one swarm.
    #[arg(long, default_value_t = Limits::default().max_peers_per_swarm, value_name = "N")]
    pub max_peers_per_swarm: usize,
    /// Peers (TCP ports) listed in one swarm from one IPv4 address or IPv6 /64.
    #[arg(long, default_value_t = Limits::default().max_peers_per_ip, value_name = "N")]
    pub max_peers_per_ip: usize,
    /// Peers listed in one answer at most, whatever a peer asks for (default:
    /// as many as fit in the 1,200-byte datagram).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_listed: Option<u16>,
    /// Also serve a relay on TCP for peers that others cannot reach (see docs/relay.md).
    #[arg(long)]
    pub relay: bool,
    #[command(flatten)]
    pub relay_limits: RelayArgs,
    /// Serve a status page and /metrics (Prometheus text format) over HTTP
    /// on ADDR (IP:PORT, or PORT for every address); no token (scrapers
    /// send none), so bind it where only trusted eyes reach.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub http: Option<SocketAddr>,
    /// One JSON object per line on stdout instead of logs.
    #[arg(long)]
    pub json: bool,
}

/// The relay's address and limits (`tracker --relay`).
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// TCP address of the relay [default: the central tracker's IP and port number].
    #[arg(long, value_name = "ADDR", requires = "relay")]
    pub relay_listen: Option<SocketAddr>,
    /// Relay: peers registered (reachable through the relay), in total.
    #[arg(long, default_value_t = RelayLimits::default().max_peers, value_name = "N")]
    pub relay_max_peers: usize,
    /// Relay: peers registered from one IP.
    #[arg(long, default_value_t = RelayLimits::default().max_peers_per_ip, value_name = "N")]
    pub relay_max_peers_per_ip: usize,
    /// Relay: sessions (waiting or spliced), in total.
    #[arg(long, default_value_t = RelayLimits::default().max_sessions, value_name = "N")]
    pub relay_max_sessions: usize,
    /// Relay: sessions dialed from one IP.
    #[arg(long, default_value_t = RelayLimits::default().max_sessions_per_ip, value_name = "N")]
    pub relay_max_sessions_per_ip: usize,
    /// Relay: bytes one session may carry, both ways (K/M/G suffixes).
    #[arg(long, default_value = "16G", value_name = "BYTES", value_parser = parse_rate)]
    pub relay_session_bytes: u64,
    /// Relay: seconds one session may last.
    #[arg(long, default_value = "21600", value_name = "SECS", value_parser = parse_secs)]
    pub relay_session_time: Duration,
    /// Relay: close a session or a registration silent for SECS (at least 20).
    #[arg(long, default_value = "60", value_name = "SECS", value_parser = parse_secs)]
    pub relay_idle: Duration,
    /// Relay: new connections accepted per second from one IP.
    #[arg(long, default_value_t = RelayLimits::default().conns_per_ip_per_sec, value_name = "N")]
    pub relay_conns_per_ip_per_sec: f64,
    /// Relay: burst of new connections from one IP.
    #[arg(long, default_value_t = RelayLimits::default().conn_burst, value_name = "N")]
    pub relay_conn_burst: u32,
}

impl RelayArgs {
    fn limits(&self) -> Result<RelayLimits, String> {
        if self.relay_idle < Duration::from_secs(20) {
            return Err(
                "--relay-idle must be at least 20 seconds (peers send a keepalive every 15 s)"
                    .into(),
            );
        }
        if self.relay_conns_per_ip_per_sec.is_nan()
            || self.relay_conns_per_ip_per_sec <= 0.0
            || self.relay_conn_burst == 0
        {
            return Err(
                "--relay-conns-per-ip-per-sec and --relay-conn-burst must be above 0".into(),
            );
        }
        Ok(RelayLimits {
            max_peers: self.relay_max_peers,
            max_peers_per_ip: self.relay_max_peers_per_ip,
            max_sessions: self.relay_max_sessions,
            max_sessions_per_ip: self.relay_max_sessions_per_ip,
            session_bytes: self.relay_session_bytes,
            session_time: self.relay_session_time,
            idle: self.relay_idle,
            conns_per_ip_per_sec: self.relay_conns_per_ip_per_sec,
            conn_burst: self.relay_conn_burst,
        })
    }
}

impl TrackerArgs {
    pub fn config(&self) -> Result<TrackerConfig, String> {
        if self.announce_interval < Duration::from_secs(1)
            || self.announce_interval > Duration::from_secs(u64::from(u16::MAX))
        {
            return Err("--announce-interval must be between 1 and 65535 seconds".into());
        }
        if self.max_joins_per_ip_per_sec.is_nan()
            || self.max_joins_per_ip_per_sec <= 0.0
            || self.join_burst == 0
        {
            return Err("--max-joins-per-ip-per-sec and --join-burst must be above 0".into());
        }
        Ok(TrackerConfig {
            swarm_ports: self.swarm_ports,
            confirm_timeout: self.confirm_timeout,
            announce_interval: self.announce_interval,
            retire_after: self.retire_after,
            retire_unannounced: self.retire_unannounced,
            state_dir: self.state.clone(),
            http: self.http,
            external: None,
            max_listed: self.max_listed.unwrap_or(u16::MAX),
            relay: match self.relay {
                true => Some(crate::tracker::RelayConfig {
                    listen: self.relay_limits.relay_listen,
                    limits: self.relay_limits.limits()?,
                }),
                false => None,
            },
            limits: Limits {
                joins_per_ip_per_sec: self.max_joins_per_ip_per_sec,
                join_burst: self.join_burst,
                max_pending: self.max_pending,
                max_pending_per_ip: self.max_pending_per_ip,
                max_swarms: self.max_swarms,
                max_swarms_per_ip: self.max_swarms_per_ip,
                max_swarms_per_24: self.max_swarms_per_24,
                max_swarms_per_64: self.max_swarms_per_64,
                max_peers_per_swarm: self.max_peers_per_swarm,
                max_peers_per_ip: self.max_peers_per_ip,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("40000-40010"), Ok((40000, 40010)));
        assert!(parse_port_range("5-4").is_err());
        assert!(parse_port_range("0-4").is_err());
        assert!(parse_port_range("70000-70001").is_err());
        assert!(parse_port_range("4000").is_err());
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("NaN").is_err());
        assert!(parse_secs("x").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
