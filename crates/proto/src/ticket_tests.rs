#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

const ROOT_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn root() -> [u8; 32] {
    let mut r = [0u8; 32];
    for (i, b) in r.iter_mut().enumerate() {
        *b = i as u8;
    }
    r
}

#[test]
fn vectors() {
    let t = Ticket::new("tracker.example.org", 7411, root());
    let s = format!("hayedik://tracker.example.org:7411/{ROOT_HEX}");
    assert_eq!(t.to_string(), s);
    assert_eq!(s.parse::<Ticket>(), Ok(t.clone()));
    assert_eq!(t.root_hex(), ROOT_HEX);
    assert_eq!(t.swarm_key(), crate::manifest::swarm_key(&root()));

    let v4 = Ticket::new("192.0.2.1", 1, root());
    assert_eq!(v4.to_string(), format!("hayedik://192.0.2.1:1/{ROOT_HEX}"));
    assert_eq!(v4.to_string().parse::<Ticket>(), Ok(v4));

    let v6 = Ticket::new("2001:db8::1", 65535, root());
    assert_eq!(
        v6.to_string(),
        format!("hayedik://[2001:db8::1]:65535/{ROOT_HEX}")
    );
    assert_eq!(v6.to_string().parse::<Ticket>(), Ok(v6));
}

#[test]
fn lenient_where_harmless() {
    // Uppercase root, surrounding whitespace, uppercase host, long IPv6 form.
    let s = format!(
        "  hayedik://[0:0:0:0:0:0:0:1]:7411/{}\n",
        ROOT_HEX.to_uppercase()
    );
    let t: Ticket = s.parse().unwrap();
    assert_eq!(t, Ticket::new("::1", 7411, root()));
    assert_eq!(t.to_string(), format!("hayedik://[::1]:7411/{ROOT_HEX}"));
    let t: Ticket = format!("hayedik://LocalHost:9/{ROOT_HEX}").parse().unwrap();
    assert_eq!(t.host, "localhost");
}

#[test]
fn errors() {
    let cases: Vec<(String, TicketError)> = vec![
        (format!("http://h:1/{ROOT_HEX}"), TicketError::Scheme),
        (format!("h:1/{ROOT_HEX}"), TicketError::Scheme),
        ("".into(), TicketError::Scheme),
        ("hayedik://h:1".into(), TicketError::MissingRoot),
        (format!("hayedik://h/{ROOT_HEX}"), TicketError::MissingPort),
        (format!("hayedik://h:/{ROOT_HEX}"), TicketError::MissingPort),
        (
            format!("hayedik://[::1]/{ROOT_HEX}"),
            TicketError::MissingPort,
        ),
        (
            format!("hayedik://h:0/{ROOT_HEX}"),
            TicketError::BadPort("0".into()),
        ),
        (
            format!("hayedik://h:65536/{ROOT_HEX}"),
            TicketError::BadPort("65536".into()),
        ),
        (
            format!("hayedik://h:+80/{ROOT_HEX}"),
            TicketError::BadPort("+80".into()),
        ),
        (
            format!("hayedik://h:x/{ROOT_HEX}"),
            TicketError::BadPort("x".into()),
        ),
        (format!("hayedik://:1/{ROOT_HEX}"), TicketError::EmptyHost),
        (format!("hayedik:///{ROOT_HEX}"), TicketError::EmptyHost),
        (
            format!("hayedik://::1:7411/{ROOT_HEX}"),
            TicketError::UnbracketedIpv6("::1:7411".into()),
        ),
        (
            format!("hayedik://[zz]:1/{ROOT_HEX}"),
            TicketError::BadHost("zz".into()),
        ),
        (
            format!("hayedik://[::1:1/{ROOT_HEX}"),
            TicketError::BadHost("[::1:1".into()),
        ),
        (
            format!("hayedik://999.1.1.1:1/{ROOT_HEX}"),
            TicketError::BadHost("999.1.1.1".into()),
        ),
        (
            format!("hayedik://1.2.3:1/{ROOT_HEX}"),
            TicketError::BadHost("1.2.3".into()),
        ),
        (
            format!("hayedik://-a.b:1/{ROOT_HEX}"),
            TicketError::BadHost("-a.b".into()),
        ),
        (
            format!("hayedik://a..b:1/{ROOT_HEX}"),
            TicketError::BadHost("a..b".into()),
        ),
        (
            format!("hayedik://a_b:1/{ROOT_HEX}"),
            TicketError::BadHost("a_b".into()),
        ),
        (
            format!("hayedik://user@h:1/{ROOT_HEX}"),
            TicketError::BadHost("user@h".into()),
        ),
        ("hayedik://h:1/".into(), TicketError::RootLength(0)),
        ("hayedik://h:1/abc".into(), TicketError::RootLength(3)),
        (
            format!("hayedik://h:1/{ROOT_HEX}0"),
            TicketError::RootLength(65),
        ),
        (
            format!("hayedik://h:1/{ROOT_HEX}/"),
            TicketError::RootLength(65),
        ),
        (
            format!("hayedik://h:1/{}g", &ROOT_HEX[..63]),
            TicketError::RootNotHex,
        ),
        (
            format!("hayedik://h:1/{}é", &ROOT_HEX[..63]),
            TicketError::RootNotHex,
        ),
    ];
    for (s, want) in cases {
        assert_eq!(s.parse::<Ticket>(), Err(want), "{s:?}");
    }
    // Messages show the expected shape.
    let msg = "nonsense".parse::<Ticket>().unwrap_err().to_string();
    assert!(msg.contains("hayedik://HOST:PORT/ROOT"), "{msg}");
    let long = format!("hayedik://{}:1/{ROOT_HEX}", "a".repeat(64));
    assert!(long.parse::<Ticket>().is_err());
}

#[test]
fn hex_helpers() {
    assert_eq!(hex(&[0x00, 0xAB, 0x7F]), "00ab7f");
    assert_eq!(parse_hex32(ROOT_HEX), Some(root()));
    assert_eq!(parse_hex32(&ROOT_HEX.to_uppercase()), Some(root()));
    assert_eq!(parse_hex32(&ROOT_HEX[..62]), None);
    assert_eq!(parse_hex32(&"x".repeat(64)), None);
}

fn arb_host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,5}[a-z0-9])?){0,3}",
        any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string()),
    ]
}

proptest! {
    #[test]
    fn roundtrip(host in arb_host(), port in 1u16.., root in any::<[u8; 32]>()) {
        let t = Ticket::new(host, port, root);
        let s = t.to_string();
        prop_assert_eq!(s.parse::<Ticket>(), Ok(t));
        prop_assert_eq!(s.to_uppercase().replace("HAYEDIK://", "hayedik://").parse::<Ticket>().map(|t| t.root), Ok(root));
    }

    #[test]
    fn truncations_are_errors(host in arb_host(), port in 1u16.., root in any::<[u8; 32]>()) {
        let s = Ticket::new(host, port, root).to_string();
        for cut in 0..s.len() {
            if s.is_char_boundary(cut) {
                prop_assert!(s[..cut].parse::<Ticket>().is_err(), "{}", &s[..cut]);
            }
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC{0,120}", t in "hayedik://[\\[\\]:0-9a-f.]{0,50}/[0-9a-fA-F]{60,66}") {
        for s in [&s, &t] {
            if let Ok(ticket) = s.parse::<Ticket>() {
                // What parses prints as something that parses to the same.
                prop_assert_eq!(ticket.to_string().parse::<Ticket>(), Ok(ticket));
            }
        }
    }
}
