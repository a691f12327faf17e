//! The TLS 1.3 record layer of peer wire version 2 after the handshake
//! (RFC 8446 section 5), done in our own buffers: a record is sealed in
//! place where its plaintext was put and opened in place where its bytes
//! arrived, so that a block crosses user space once (rustls 0.23 copies
//! every record into a new allocation on both sides, and reads 4 KiB at a
//! time). rustls still does the whole handshake and derives the keys
//! ([`super::channel`] takes them with `dangerous_extract_secrets`, the
//! interface meant for kernel TLS); only the protection of application
//! records is here. Pure functions over byte slices, no I/O.
//!
//! A record on the wire: `0x17 0x03 0x03`, a 16-bit length, then the AEAD
//! ciphertext of `plaintext || inner type` and its 16-byte tag. The nonce
//! is the traffic IV XORed with the record's 64-bit sequence number, the
//! additional data is the 5-byte header. No padding is sent; padding
//! received is removed.

use std::ops::Range;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::{ConnectionTrafficSecrets, Error};

/// Bytes of a record header.
pub const HEADER: usize = 5;
/// Bytes of an AEAD tag (all three TLS 1.3 suites we offer).
pub const TAG: usize = 16;
/// The most plaintext one record carries (2^14).
pub const MAX_PLAIN: usize = 1 << 14;
/// The longest encrypted record body allowed (RFC 8446 5.2: 2^14 + 256).
pub const MAX_BODY: usize = MAX_PLAIN + 256;
/// Bytes a record adds to its plaintext: header, inner type, tag.
pub const OVERHEAD: usize = HEADER + 1 + TAG;

/// Outer type of every protected record.
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;

/// Records sealed with one AES-GCM key before the connection must end:
/// below the 2^24.5 confidentiality limit of RFC 8446 5.5 (with full
/// records, 256 GiB per direction and connection).
const AES_GCM_LIMIT: u64 = 1 << 24;

/// What an opened record holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Content {
    /// Application data, at this range of the buffer given.
    Data(Range<usize>),
    /// The peer closes cleanly (a close_notify alert).
    CloseNotify,
}

/// One direction's key, IV and record sequence number.
pub struct Keys {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
    limit: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("seq", &self.seq).finish()
    }
}

impl Keys {
    /// The keys rustls derived, starting at sequence number `seq`.
    pub fn new(seq: u64, secrets: &ConnectionTrafficSecrets) -> Result<Keys, Error> {
        let (alg, key, iv, limit) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (&aead::AES_128_GCM, key, iv, AES_GCM_LIMIT)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (&aead::AES_256_GCM, key, iv, AES_GCM_LIMIT)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, u64::MAX)
            }
            _ => return Err(Error::General("unexpected cipher suite".into())),
        };
        let key = UnboundKey::new(alg, key.as_ref())
            .map_err(|_| Error::General("bad traffic key".into()))?;
        let iv: [u8; NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| Error::General("bad traffic IV".into()))?;
        Ok(Keys {
            key: LessSafeKey::new(key),
            iv,
            seq,
            limit,
        })
    }

    /// The next record's nonce, and the sequence number moved on.
    fn next_nonce(&mut self) -> Result<Nonce, Error> {
        if self.seq >= self.limit {
            return Err(Error::EncryptError);
        }
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *n ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Seals the record laid out in `record`: [`HEADER`] bytes to fill,
    /// then `len` bytes of plaintext, then [`OVERHEAD`] - [`HEADER`] bytes
    /// of room. `inner` is the content type (23 for data, 21 for an
    /// alert). Returns the record's length on the wire.
    pub fn seal(&mut self, record: &mut [u8], len: usize, inner: u8) -> Result<usize, Error> {
        if len > MAX_PLAIN || record.len() < len + OVERHEAD {
            return Err(Error::EncryptError);
        }
        let body = len + 1 + TAG;
        let header = record_header(body);
        record[..HEADER].copy_from_slice(&header);
        record[HEADER + len] = inner;
        let nonce = self.next_nonce()?;
        let (sealed, tag) = record[HEADER..HEADER + body].split_at_mut(len + 1);
        let t = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), sealed)
            .map_err(|_| Error::EncryptError)?;
        tag.copy_from_slice(t.as_ref());
        Ok(HEADER + body)
    }

    /// Opens the whole record at the start of `buf` (its length read from
    /// [`body_len`]) in place. Damaged, reordered or replayed records fail
    /// to decrypt; an alert other than close_notify and any handshake
    /// message (a key update, which we never ask for) are errors too.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Content, Error> {
        let body = body_len(buf)?.ok_or(Error::DecryptError)?;
        let header: [u8; HEADER] = buf[..HEADER].try_into().map_err(|_| Error::DecryptError)?;
        let record = buf
            .get_mut(HEADER..HEADER + body)
            .ok_or(Error::DecryptError)?;
        let nonce = self.next_nonce().map_err(|_| Error::DecryptError)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(header), record)
            .map_err(|_| Error::DecryptError)?;
        // The inner type is the last non-zero byte (zeros after it are
        // padding).
        let end = plain
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(Error::General("a record without a content type".into()))?;
        match plain[end] {
            APPLICATION_DATA => Ok(Content::Data(HEADER..HEADER + end)),
            ALERT => match plain[..end] {
                [_, 0] => Ok(Content::CloseNotify),
                [_, d] => Err(Error::AlertReceived(d.into())),
                _ => Err(Error::General("a malformed alert".into())),
            },
            HANDSHAKE => Err(Error::General(
                "a handshake message after the handshake (a key update: not supported)".into(),
            )),
            t => Err(Error::General(format!("a record of content type {t}"))),
        }
    }
}

/// The header of a protected record whose body is `body` bytes.
fn record_header(body: usize) -> [u8; HEADER] {
    let [hi, lo] = (body as u16).to_be_bytes();
    [APPLICATION_DATA, 3, 3, hi, lo]
}

/// The body length of the record starting `buf`, once its header is
/// there (`None` before). A header that is not a protected record's, or a
/// length above [`MAX_BODY`], is an error before its body arrives.
pub fn body_len(buf: &[u8]) -> Result<Option<usize>, Error> {
    let Some(h) = buf.get(..HEADER) else {
        return Ok(None);
    };
    if h[0] != APPLICATION_DATA || h[1] != 3 {
        return Err(Error::General(format!(
            "a record of outer type {} after the handshake",
            h[0]
        )));
    }
    let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
    if len > MAX_BODY {
        return Err(Error::PeerSentOversizedRecord);
    }
    if len < 1 + TAG {
        return Err(Error::DecryptError);
    }
    Ok(Some(len))
}

/// The close_notify alert's plaintext.
pub const CLOSE_NOTIFY: [u8; 2] = [1, 0];
/// The inner content type of an alert.
pub const INNER_ALERT: u8 = ALERT;
/// The inner content type of application data.
pub const INNER_DATA: u8 = APPLICATION_DATA;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn secrets(seed: u8) -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([seed; 32]),
            iv: Iv::from([seed ^ 0x5A; 12]),
        }
    }

    /// Two keys from the same secrets. (Built one statement each: in a
    /// closure that takes the secrets by value, the second call read a
    /// key already zeroed by the first's drop in a release build.)
    fn pair(seed: u8) -> (Keys, Keys) {
        let tx = Keys::new(0, &secrets(seed)).unwrap();
        let rx = Keys::new(0, &secrets(seed)).unwrap();
        (tx, rx)
    }

    fn sealed(tx: &mut Keys, data: &[u8], inner: u8) -> Vec<u8> {
        let mut rec = vec![0; HEADER + data.len() + 1 + TAG];
        rec[HEADER..HEADER + data.len()].copy_from_slice(data);
        let n = tx.seal(&mut rec, data.len(), inner).unwrap();
        assert_eq!(n, rec.len());
        rec
    }

    #[test]
    fn records_open_in_order_and_damage_is_refused() {
        let (mut tx, mut rx) = pair(7);
        let a = sealed(&mut tx, b"first", INNER_DATA);
        let b = sealed(&mut tx, &[9; MAX_PLAIN], INNER_DATA);
        let mut a1 = a.clone();
        assert_eq!(rx.open(&mut a1).unwrap(), Content::Data(HEADER..HEADER + 5));
        assert_eq!(&a1[HEADER..HEADER + 5], b"first");
        // Replayed: the sequence number moved on.
        assert_eq!(rx.open(&mut a.clone()), Err(Error::DecryptError));

        let (mut tx, mut rx) = pair(7);
        let _ = sealed(&mut tx, b"first", INNER_DATA);
        let b2 = sealed(&mut tx, &[9; MAX_PLAIN], INNER_DATA);
        assert_eq!(b, b2, "the same keys and sequence seal the same");
        // Reordered: the second first.
        assert_eq!(rx.open(&mut b2.clone()), Err(Error::DecryptError));

        let (mut tx, mut rx) = pair(7);
        let mut flipped = sealed(&mut tx, b"first", INNER_DATA);
        flipped[HEADER + 2] ^= 1;
        assert_eq!(rx.open(&mut flipped), Err(Error::DecryptError));
        let (mut tx, mut rx) = pair(7);
        let mut header = sealed(&mut tx, b"first", INNER_DATA);
        header[2] = 1;
        assert_eq!(rx.open(&mut header), Err(Error::DecryptError));
    }

    #[test]
    fn alerts_and_other_types() {
        let (mut tx, mut rx) = pair(1);
        let mut c = sealed(&mut tx, &CLOSE_NOTIFY, INNER_ALERT);
        assert_eq!(rx.open(&mut c).unwrap(), Content::CloseNotify);
        let mut bad = sealed(&mut tx, &[2, 20], INNER_ALERT);
        assert!(matches!(rx.open(&mut bad), Err(Error::AlertReceived(_))));
        let mut hs = sealed(&mut tx, &[24, 0, 0, 1, 1], HANDSHAKE);
        assert!(matches!(rx.open(&mut hs), Err(Error::General(_))));
        // Padding after the type is removed; only zeros is no type.
        let mut padded = sealed(&mut tx, &[b'x', INNER_DATA, 0, 0], 0);
        assert_eq!(
            rx.open(&mut padded).unwrap(),
            Content::Data(HEADER..HEADER + 1)
        );
        let mut zeros = sealed(&mut tx, &[0, 0], 0);
        assert!(rx.open(&mut zeros).is_err());
    }

    #[test]
    fn headers_are_checked_before_bodies() {
        assert_eq!(body_len(&[23, 3, 3]), Ok(None));
        assert_eq!(body_len(&[23, 3, 3, 0, 17]), Ok(Some(17)));
        assert_eq!(
            body_len(&[23, 3, 3, 0x41, 0x01]),
            Err(Error::PeerSentOversizedRecord)
        );
        assert_eq!(body_len(&[23, 3, 3, 0, 16]), Err(Error::DecryptError));
        assert!(body_len(&[22, 3, 3, 0, 40]).is_err());
        assert!(body_len(&[23, 1, 3, 0, 40]).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let (_, mut rx) = pair(3);
        for len in 0..64 {
            let mut junk: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            if junk.len() > 4 {
                junk[0] = 23;
                junk[1] = 3;
            }
            let _ = rx.open(&mut junk);
        }
    }

    #[test]
    fn the_sequence_limit_ends_the_connection() {
        let (mut tx, _) = pair(2);
        tx.seq = tx.limit;
        let mut rec = vec![0; 64];
        assert_eq!(tx.seal(&mut rec, 1, INNER_DATA), Err(Error::EncryptError));
    }
}
