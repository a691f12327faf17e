//! The BitTorrent Mainline DHT (BEP 5) as a second way to find peers
//! (docs/dht.md), through the `mainline` crate:
//!
//! * [`peer`]: `share`/`get --dht` announce the swarm under [`info_hash`]
//!   and look it up, offering what they find to the connector
//!   (`Swarm::offer_peer`, `Found::Dht`); those peers are strangers that
//!   must pass the ticket's proof like any other.
//! * [`node`]: `hayedik dht-node`, a bounded DHT server for private
//!   networks and tests.
//!
//! The crate is IPv4-only.

use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};

pub mod node;
pub mod peer;

/// The derivation context of the DHT info hash: its own, so the hash is
/// neither the root nor the tracker's swarm key, and cannot be linked to
/// them without the ticket.
pub const INFO_HASH_CONTEXT: &str = "hayedik 2026 mainline info hash";

/// The 20-byte info hash a swarm is announced under in the DHT: the first
/// 20 bytes of `blake3::derive_key(INFO_HASH_CONTEXT, root)`.
pub fn info_hash(root: &[u8; 32]) -> [u8; 20] {
    let key = blake3::derive_key(INFO_HASH_CONTEXT, root);
    let mut out = [0u8; 20];
    out.copy_from_slice(&key[..20]);
    out
}

/// One `--dht-bootstrap HOST:PORT` value, resolved to its IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap(pub Vec<SocketAddrV4>);

/// Parses and resolves `HOST:PORT` (IPv4 only: the crate is).
pub fn parse_bootstrap(s: &str) -> Result<Bootstrap, String> {
    let s = s.trim();
    let bad = || format!("'{s}' is not a DHT node: use HOST:PORT, e.g. 10.0.0.5:6881 (IPv4)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    if let Ok(SocketAddr::V6(_)) = s.parse::<SocketAddr>() {
        return Err(format!(
            "'{s}' is an IPv6 address: the DHT is IPv4-only (the mainline crate)"
        ));
    }
    let addrs: Vec<SocketAddrV4> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("'{s}' cannot be resolved: {e}"))?
        .filter_map(|a| match a {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(_) => None,
        })
        .filter(|a| !a.ip().is_unspecified() && !a.ip().is_multicast() && !a.ip().is_broadcast())
        .take(8)
        .collect();
    if addrs.is_empty() {
        return Err(format!(
            "'{s}' has no usable IPv4 address (the DHT is IPv4-only)"
        ));
    }
    Ok(Bootstrap(addrs))
}

/// How `share`/`get` run the DHT, once flags and config are weighed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtConfig {
    /// The bootstrap nodes; `None`: the crate's public ones.
    pub bootstrap: Option<Vec<SocketAddrV4>>,
}

/// The command line's DHT flags.
#[derive(Debug, Clone, Default)]
pub struct DhtFlags {
    pub dht: bool,
    pub no_dht: bool,
    pub bootstrap: Vec<Bootstrap>,
}

/// Whether the DHT runs, and how: `--no-dht` wins; then `--dht` or
/// `--dht-bootstrap`; then the config file (`dht = true`, or a
/// `dht_bootstrap` list unless `dht = false`). Bootstrap nodes: the flags',
/// else the config's, else the public ones.
pub fn decide(
    flags: &DhtFlags,
    config: &crate::config::Config,
) -> Result<Option<DhtConfig>, String> {
    if flags.no_dht {
        return Ok(None);
    }
    let on = flags.dht
        || !flags.bootstrap.is_empty()
        || config.dht == Some(true)
        || (config.dht.is_none() && !config.dht_bootstrap.is_empty());
    if !on {
        return Ok(None);
    }
    let mut nodes: Vec<SocketAddrV4> = Vec::new();
    if !flags.bootstrap.is_empty() {
        nodes.extend(flags.bootstrap.iter().flat_map(|b| b.0.iter().copied()));
    } else {
        for b in &config.dht_bootstrap {
            nodes.extend(parse_bootstrap(b)?.0);
        }
    }
    nodes.dedup();
    Ok(Some(DhtConfig {
        bootstrap: (!nodes.is_empty()).then_some(nodes),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_info_hash_is_neither_root_nor_swarm_key() {
        let root = [7u8; 32];
        let h = info_hash(&root);
        assert_ne!(&h[..], &root[..20]);
        let key = hayedik_proto::manifest::swarm_key(&root);
        assert_ne!(&h[..], &key[..20]);
        assert_eq!(h, info_hash(&root), "stable");
        assert_ne!(h, info_hash(&[8u8; 32]));
    }

    #[test]
    fn bootstrap_addresses() {
        assert_eq!(
            parse_bootstrap("127.0.0.1:6881").unwrap().0,
            vec!["127.0.0.1:6881".parse::<SocketAddrV4>().unwrap()]
        );
        for bad in [
            "nowhere",
            "127.0.0.1",
            "127.0.0.1:0",
            ":6881",
            "[::1]:6881",
            "1.2.3.4:x",
        ] {
            assert!(parse_bootstrap(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_override_the_config() {
        let b = parse_bootstrap("127.0.0.1:9").unwrap();
        let on = Config {
            dht: Some(true),
            dht_bootstrap: vec!["127.0.0.2:9".into()],
        };
        let off = Config::default();
        let flags = |dht, no_dht, bootstrap: Vec<Bootstrap>| DhtFlags {
            dht,
            no_dht,
            bootstrap,
        };
        assert_eq!(decide(&flags(false, false, vec![]), &off).unwrap(), None);
        assert_eq!(
            decide(&flags(false, true, vec![b.clone()]), &on).unwrap(),
            None
        );
        assert_eq!(
            decide(&flags(true, false, vec![]), &off).unwrap(),
            Some(DhtConfig { bootstrap: None })
        );
        assert_eq!(
            decide(&flags(false, false, vec![]), &on)
                .unwrap()
                .unwrap()
                .bootstrap,
            Some(vec!["127.0.0.2:9".parse().unwrap()])
        );
        assert_eq!(
            decide(&flags(false, false, vec![b]), &on)
                .unwrap()
                .unwrap()
                .bootstrap,
            Some(vec!["127.0.0.1:9".parse().unwrap()])
        );
        let off_with_list = Config {
            dht: Some(false),
            dht_bootstrap: vec!["127.0.0.2:9".into()],
        };
        assert_eq!(
            decide(&flags(false, false, vec![]), &off_with_list).unwrap(),
            None
        );
    }
}
