//! The share ticket: `hayedik://HOST:SWARMPORT/ROOT`.
//!
//! HOST is the tracker's DNS name or IP address (IPv6 in brackets), SWARMPORT
//! the UDP port of the swarm tracker, ROOT the content root
//! ([`crate::manifest::Manifest::root`]) as 64 hex digits: lowercase when
//! printed, either case when parsed. Surrounding whitespace is ignored (a
//! pasted ticket often carries a newline); anything else that is not exactly
//! this shape is refused with a message that shows the expected shape.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The workspace's hex codec ([`crate::hex`]) under the names this module
/// first gave it, which the fuzz target and the tests use.
pub use crate::hex::{decode32 as parse_hex32, encode as hex};

/// The scheme every ticket starts with.
pub const SCHEME: &str = "hayedik://";

const SHAPE: &str = "a ticket looks like hayedik://HOST:PORT/ROOT, ROOT being 64 hex digits";

/// What a downloader needs: where the swarm tracker is, and what content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ticket {
    /// A DNS name (lowercase), an IPv4 address, or an IPv6 address without
    /// brackets (as `Ipv6Addr` prints it).
    pub host: String,
    /// The swarm tracker's UDP port.
    pub port: u16,
    /// The content root.
    pub root: [u8; 32],
}

/// Why a ticket did not parse. Each message names what was wrong and shows
/// what a ticket looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("a ticket starts with \"hayedik://\" ({shape})", shape = SHAPE)]
    Scheme,
    #[error("the ticket has no \"/ROOT\" after the address ({shape})", shape = SHAPE)]
    MissingRoot,
    #[error("the ticket has no \":PORT\" after the host ({shape})", shape = SHAPE)]
    MissingPort,
    #[error("the ticket's port {0:?} is not a number from 1 to 65535 ({shape})", shape = SHAPE)]
    BadPort(String),
    #[error("the ticket has no host ({shape})", shape = SHAPE)]
    EmptyHost,
    #[error("the ticket's host {0:?} is not a DNS name or an IP address ({shape})", shape = SHAPE)]
    BadHost(String),
    #[error("the ticket's host {0:?} looks like an IPv6 address: put it in brackets, as in hayedik://[::1]:7411/ROOT")]
    UnbracketedIpv6(String),
    #[error("the ticket's root has {0} characters, not 64 ({shape})", shape = SHAPE)]
    RootLength(usize),
    #[error("the ticket's root is not hexadecimal (only 0-9 and a-f) ({shape})", shape = SHAPE)]
    RootNotHex,
}

impl Ticket {
    pub fn new(host: impl Into<String>, port: u16, root: [u8; 32]) -> Ticket {
        Ticket {
            host: host.into(),
            port,
            root,
        }
    }

    /// The swarm key announced to the tracker and sent in a peer Hello.
    pub fn swarm_key(&self) -> [u8; 32] {
        crate::manifest::swarm_key(&self.root)
    }

    /// The root as 64 lowercase hex digits.
    pub fn root_hex(&self) -> String {
        hex(&self.root)
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(
                f,
                "{SCHEME}[{}]:{}/{}",
                self.host,
                self.port,
                hex(&self.root)
            )
        } else {
            write!(f, "{SCHEME}{}:{}/{}", self.host, self.port, hex(&self.root))
        }
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Ticket, TicketError> {
        let rest = s.trim().strip_prefix(SCHEME).ok_or(TicketError::Scheme)?;
        let (authority, root) = rest.split_once('/').ok_or(TicketError::MissingRoot)?;
        let (host, port) = split_authority(authority)?;
        let port = parse_port(port)?;
        let root = parse_root(root)?;
        Ok(Ticket { host, port, root })
    }
}

/// Splits `HOST:PORT` or `[IPV6]:PORT`; checks and normalises the host.
fn split_authority(authority: &str) -> Result<(String, &str), TicketError> {
    if let Some(inner) = authority.strip_prefix('[') {
        let (addr, after) = inner
            .split_once(']')
            .ok_or_else(|| TicketError::BadHost(authority.to_owned()))?;
        let ip: Ipv6Addr = addr
            .parse()
            .map_err(|_| TicketError::BadHost(addr.to_owned()))?;
        let port = after.strip_prefix(':').ok_or(TicketError::MissingPort)?;
        return Ok((ip.to_string(), port));
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        if authority.is_empty() {
            return Err(TicketError::EmptyHost);
        }
        return Err(TicketError::MissingPort);
    };
    if host.contains(':') {
        return Err(TicketError::UnbracketedIpv6(authority.to_owned()));
    }
    Ok((parse_host(host)?, port))
}

/// An IPv4 address or a DNS name (returned lowercase).
fn parse_host(host: &str) -> Result<String, TicketError> {
    if host.is_empty() {
        return Err(TicketError::EmptyHost);
    }
    let bad = || TicketError::BadHost(host.to_owned());
    let last = host.rsplit('.').next().unwrap_or(host);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        // A name whose last label is numeric can only be an IPv4 address.
        let ip: Ipv4Addr = host.parse().map_err(|_| bad())?;
        return Ok(ip.to_string());
    }
    if host.len() > 253 {
        return Err(bad());
    }
    for label in host.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(host.to_ascii_lowercase())
}

fn parse_port(port: &str) -> Result<u16, TicketError> {
    if port.is_empty() {
        return Err(TicketError::MissingPort);
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(TicketError::BadPort(port.to_owned())),
    }
}

fn parse_root(root: &str) -> Result<[u8; 32], TicketError> {
    let len = root.chars().count();
    if len != 64 {
        return Err(TicketError::RootLength(len));
    }
    parse_hex32(root).ok_or(TicketError::RootNotHex)
}

#[cfg(test)]
#[path = "ticket_tests.rs"]
mod tests;
