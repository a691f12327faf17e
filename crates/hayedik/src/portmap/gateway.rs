//! Which router to ask: the gateway's address and ours as it sees us.
//!
//! The gateway is, in order: `HAYEDIK_PORTMAP_GATEWAY` (an IP; the tests
//! set it to the router of their lab, so nothing is ever asked of another
//! one), else the default IPv4 route of the system (read from
//! `/proc/net/route` on Linux). Elsewhere the UPnP-IGD search (SSDP
//! multicast on the local network) finds the router, and NAT-PMP/PCP are
//! then asked at the address that answered.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Names the router to ask (an IP address): for tests and for machines
/// with more than one gateway.
pub const GATEWAY_ENV: &str = "HAYEDIK_PORTMAP_GATEWAY";

/// The gateway to ask, if one is known without asking the network.
pub fn configured_or_default() -> Result<Option<Ipv4Addr>, String> {
    if let Some(v) = std::env::var_os(GATEWAY_ENV) {
        let s = v.to_string_lossy();
        return match s.trim().parse::<Ipv4Addr>() {
            Ok(ip) => Ok(Some(ip)),
            Err(_) => Err(format!(
                "{GATEWAY_ENV}={s} is not an IPv4 address (port mapping asks an IPv4 router)"
            )),
        };
    }
    Ok(default_route())
}

#[cfg(target_os = "linux")]
fn default_route() -> Option<Ipv4Addr> {
    // A few hundred bytes a route: read at most 64 KiB of it.
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open("/proc/net/route")
        .ok()?
        .take(64 * 1024)
        .read_to_string(&mut text)
        .ok()?;
    parse_proc_route(&text)
}

#[cfg(not(target_os = "linux"))]
fn default_route() -> Option<Ipv4Addr> {
    None
}

/// The gateway of the first default route in `/proc/net/route`'s format
/// (hexadecimal fields in the kernel's byte order).
pub fn parse_proc_route(text: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, gw, flags, mask) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(7)?);
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let flags = u16::from_str_radix(flags, 16).ok().map(u32::from)?;
        if hex(dest)? != 0
            || hex(mask)? != 0
            || flags & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY
        {
            return None;
        }
        let ip = Ipv4Addr::from(hex(gw)?.to_ne_bytes());
        (!ip.is_unspecified()).then_some(ip)
    })
}

/// Our address on the link to `gateway` (what it sees as the source of
/// our requests): a UDP socket "connected" to it, which sends nothing.
pub fn local_ip_towards(gateway: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.connect(SocketAddr::new(IpAddr::V4(gateway), 9))?;
    match s.local_addr()?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Ok(ip),
        other => Err(std::io::Error::other(format!(
            "no IPv4 address of ours leads to {gateway} (got {other})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TABLE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t00000000\t0101000A\t0003\t0\t0\t0\t00000000\t0\t0\t0
";

    #[test]
    fn finds_the_default_route() {
        let want = Ipv4Addr::from(u32::from_str_radix("0101000A", 16).unwrap().to_ne_bytes());
        assert_eq!(parse_proc_route(TABLE), Some(want));
        if cfg!(target_endian = "little") {
            assert_eq!(want, Ipv4Addr::new(10, 0, 1, 1));
        }
    }

    #[test]
    fn ignores_what_is_not_a_default_route() {
        // A link route, a default route without RTF_GATEWAY, one that is
        // down, garbage, short lines, nothing at all.
        let t = "h\neth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                 eth0\t00000000\t0101000A\t0001\t0\t0\t0\t00000000\n\
                 eth0\t00000000\t0101000A\t0002\t0\t0\t0\t00000000\n\
                 eth0\tzz\t0101000A\t0003\t0\t0\t0\t00000000\neth0\t00000000\n";
        assert_eq!(parse_proc_route(t), None);
        assert_eq!(parse_proc_route(""), None);
        assert_eq!(parse_proc_route("\u{0}\u{ffff}\n\n\t\t\t"), None);
    }
}
