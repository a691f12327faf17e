//! The workspace's one hex codec: lowercase hex out, either case in. Roots
//! in tickets, in `--json` output and in the tracker's whitelist file are
//! written and read with it.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xF)]));
    }
    s
}

/// Exactly 64 hex digits (either case) as 32 bytes; `None` for anything
/// else.
pub fn decode32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vectors() {
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x00, 0xAB, 0x7F]), "00ab7f");
        let hex = "00ff10".repeat(10) + "abcd";
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate().take(30) {
            *b = [0x00, 0xff, 0x10][i % 3];
        }
        bytes[30..].copy_from_slice(&[0xab, 0xcd]);
        assert_eq!(decode32(&hex), Some(bytes));
        assert_eq!(decode32(&hex.to_uppercase()), Some(bytes));
        assert_eq!(decode32(&hex[..62]), None);
        assert_eq!(decode32(&format!("{hex}00")), None);
        assert_eq!(decode32(&"x".repeat(64)), None);
        assert_eq!(decode32(&format!("{}g", &hex[..63])), None);
        // 64 bytes, but not 64 ASCII digits.
        assert_eq!(decode32(&format!("{}é", &hex[..62])), None);
    }

    proptest! {
        #[test]
        fn round_trip(bytes in any::<[u8; 32]>()) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), 64);
            prop_assert!(s.bytes().all(|c| DIGITS.contains(&c)));
            prop_assert_eq!(decode32(&s), Some(bytes));
            prop_assert_eq!(decode32(&s.to_uppercase()), Some(bytes));
        }

        #[test]
        fn decode_never_panics(s in ".{0,70}") {
            let _ = decode32(&s);
        }
    }
}
