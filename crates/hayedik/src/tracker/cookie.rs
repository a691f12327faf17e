//! Stateless proofs of address: join cookies and connection ids.
//!
//! A value is SipHash-2-4 (a pseudorandom function made for short inputs,
//! keyed with 128 random bits) of a purpose tag, the requester's address (IP
//! and port), a scope (e.g. the swarm port) and a time window. Nothing is
//! stored per requester, so a flood of requests costs no memory. A value is
//! accepted in its own window and the next one only, so it lives between one
//! and two windows; values of future windows (or any other) never match.
//! Comparison is constant-time.

use std::net::{IpAddr, SocketAddr};

/// What a [`Stamp`] proves; keeps a cookie from ever passing as a connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    JoinCookie = 1,
    ConnectionId = 2,
}

/// Issues and checks stateless values for one purpose.
#[derive(Clone)]
pub struct Stamp {
    key: [u8; 16],
    purpose: Purpose,
    window_secs: u64,
}

impl std::fmt::Debug for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stamp")
            .field("purpose", &self.purpose)
            .field("window_secs", &self.window_secs)
            .finish_non_exhaustive()
    }
}

impl Stamp {
    /// `window_secs` is the minimum lifetime of an issued value.
    pub fn new(key: [u8; 16], purpose: Purpose, window_secs: u64) -> Self {
        Self {
            key,
            purpose,
            window_secs: window_secs.max(1),
        }
    }

    /// A fresh random key.
    pub fn random(purpose: Purpose, window_secs: u64) -> Self {
        Self::new(rand::random(), purpose, window_secs)
    }

    fn value(&self, addr: SocketAddr, scope: u64, window: u64) -> u64 {
        // The fields one after another, hashed in one call.
        let mut input = [0u8; 1 + 16 + 2 + 8 + 8];
        input[0] = self.purpose as u8;
        input[1..17].copy_from_slice(&match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        });
        input[17..19].copy_from_slice(&addr.port().to_be_bytes());
        input[19..27].copy_from_slice(&scope.to_be_bytes());
        input[27..].copy_from_slice(&window.to_be_bytes());
        let value = siphasher::sip::SipHasher24::new_with_key(&self.key).hash(&input);
        // 0 means "no cookie" on the wire: never issue it.
        value.max(1)
    }

    /// The value for `addr` at `now_secs` (seconds on any monotonic clock).
    pub fn issue(&self, addr: SocketAddr, scope: u64, now_secs: u64) -> u64 {
        self.value(addr, scope, now_secs / self.window_secs)
    }

    /// Whether `value` was issued to `addr` in this window or the previous one.
    pub fn check(&self, addr: SocketAddr, scope: u64, value: u64, now_secs: u64) -> bool {
        let window = now_secs / self.window_secs;
        let value = value.to_be_bytes();
        // The previous window's value is computed only when the current
        // one does not match. That shortcut tells a requester only what the
        // answer tells it anyway (its value is good); a value that matches
        // neither always costs both. Each comparison is constant-time.
        ct_eq(&self.value(addr, scope, window).to_be_bytes(), &value)
            || (window > 0 && ct_eq(&self.value(addr, scope, window - 1).to_be_bytes(), &value))
    }
}

/// Constant-time equality of two secrets of `N` bytes (cookies, connection
/// ids, offer tokens, swarm keys): the tracker's one constant-time compare,
/// that of the `constant_time_eq` crate (which BLAKE3 uses for its hashes).
pub(crate) fn ct_eq<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    constant_time_eq::constant_time_eq_n(a, b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn valid_for_one_to_two_windows() {
        let s = Stamp::random(Purpose::JoinCookie, 30);
        let a = addr("127.0.0.1:5000");
        let c = s.issue(a, 0, 100);
        assert!(s.check(a, 0, c, 100));
        assert!(s.check(a, 0, c, 119));
        assert!(s.check(a, 0, c, 90 + 30 + 29));
        assert!(!s.check(a, 0, c, 150), "expired after the next window");
    }

    #[test]
    fn future_and_foreign_values_refused() {
        let s = Stamp::random(Purpose::ConnectionId, 120);
        let a = addr("127.0.0.1:5000");
        let future = s.issue(a, 7, 1000 + 240);
        assert!(!s.check(a, 7, future, 1000));
        let c = s.issue(a, 7, 1000);
        assert!(!s.check(addr("127.0.0.1:5001"), 7, c, 1000), "other port");
        assert!(!s.check(addr("127.0.0.2:5000"), 7, c, 1000), "other ip");
        assert!(!s.check(a, 8, c, 1000), "other scope");
        let other_key = Stamp::random(Purpose::ConnectionId, 120);
        assert!(!other_key.check(a, 7, c, 1000));
        let cookie = Stamp::new(s.key, Purpose::JoinCookie, 120);
        assert!(!cookie.check(a, 7, c, 1000), "other purpose");
        assert_ne!(c, 0);
    }

    #[test]
    fn values_are_siphash_of_the_fields_in_order() {
        use std::hash::Hasher;
        // The primitive: the reference vector of the SipHash paper (key
        // 00..0f, message 00..0e).
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let message: Vec<u8> = (0..15).collect();
        let sip = siphasher::sip::SipHasher24::new_with_key(&key);
        assert_eq!(sip.hash(&message), 0xa129_ca61_49be_45e5);
        // The fields: purpose, IP (IPv4 mapped), port, scope, window.
        let s = Stamp::new(key, Purpose::ConnectionId, 60);
        for (a, scope, window) in [
            (addr("127.0.0.1:5000"), 7, 3u64),
            (addr("[2001:db8::1]:65535"), u64::MAX, 0),
        ] {
            let mut h = siphasher::sip::SipHasher24::new_with_key(&key);
            h.write(&[Purpose::ConnectionId as u8]);
            h.write(&match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            });
            h.write(&a.port().to_be_bytes());
            h.write(&scope.to_be_bytes());
            h.write(&window.to_be_bytes());
            assert_eq!(s.value(a, scope, window), h.finish().max(1));
        }
    }

    #[test]
    fn ct_eq_is_equality() {
        for (a, b) in [(0, 0), (1, 0), (u64::MAX, u64::MAX), (1 << 63, 0), (5, 5)] {
            assert_eq!(ct_eq(&u64::to_be_bytes(a), &u64::to_be_bytes(b)), a == b);
        }
        let mut key = [7u8; 32];
        assert!(ct_eq(&key, &[7; 32]));
        key[31] = 8;
        assert!(!ct_eq(&key, &[7; 32]));
    }
}
