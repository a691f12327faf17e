//! The peer handshake inside the secure channel (docs/peer-protocol.md,
//! "Handshake"): Hellos, then proofs that each side holds the ticket's
//! root, bound to the TLS connection they travel on.
//!
//! What makes a proof worthless anywhere but on its own connection:
//! - it covers the channel binding (the TLS exporter value, different on
//!   every connection and known only to its two ends), the prover's role
//!   and both nonces (`handshake_proof`): a proof carried to another
//!   connection (reflection, replay, a relay between two honest peers)
//!   does not verify there;
//! - the side that accepted the connection says nothing, not even its
//!   Hello (which names the swarm), before a Hello for a swarm it serves;
//! - the side that dialled checks the responder's proof before it sends
//!   its own, so a listener that only knows the swarm key never gets one.
//!
//! The nonces of each swarm's handshakes in progress are still kept in
//! [`Nonces`] (one set per swarm, so the demo's peers in one process do not
//! take each other for themselves): reflection no longer needs them (the binding stops it), but
//! a Hello that carries one of our own nonces is how a peer that dialled
//! itself (its own listed address) finds out, and a session with oneself
//! would be useless.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hayedik_proto::peer::{
    handshake_proof, verify_proof, Message, PeerWireError, Role, EXPORTER_LEN, PROTOCOL_VERSION,
};

use super::session::SessionError;
use super::wire::{FrameReader, FrameWriter, WireError};

/// Nonces of one swarm's handshakes in progress (each peer node of a
/// process has its own: a demo runs several in one process, and they must
/// not take each other's Hellos for reflections). Bounded by the number of
/// connections (incoming and outgoing sessions are capped, see `node.rs`);
/// [`NonceGuard`] removes its nonce when dropped.
#[derive(Debug, Default)]
pub struct Nonces(Mutex<HashSet<[u8; 32]>>);

impl Nonces {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh nonce, registered until the guard is dropped.
    fn fresh(self: &Arc<Self>) -> NonceGuard {
        loop {
            let nonce: [u8; 32] = rand::random();
            if self.lock().insert(nonce) {
                return NonceGuard {
                    nonces: self.clone(),
                    nonce,
                };
            }
        }
    }

    fn is_ours(&self, nonce: &[u8; 32]) -> bool {
        self.lock().contains(nonce)
    }
}

/// One registered nonce.
struct NonceGuard {
    nonces: Arc<Nonces>,
    nonce: [u8; 32],
}

impl Drop for NonceGuard {
    fn drop(&mut self) {
        self.nonces.lock().remove(&self.nonce);
    }
}

/// What a session needs to know to shake hands: derived from the ticket.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `swarm_key(root)`: names the swarm in Hellos.
    pub swarm_key: [u8; 32],
    /// `peer_auth_key(root)`: keys the proofs.
    pub auth_key: [u8; 32],
    /// The TCP port we serve on (told to the remote, informational).
    pub listen_port: u16,
    /// The nonces of this swarm's handshakes in progress.
    pub nonces: Arc<Nonces>,
}

/// What the remote said in its Hello.
struct TheirHello {
    nonce: [u8; 32],
    listen_port: u16,
}

/// Why a handshake failed, and the Goodbye to send before closing (none
/// when saying anything would tell an unproven peer something).
#[derive(Debug)]
pub struct Failure {
    pub error: SessionError,
    /// The Goodbye's reason.
    pub goodbye: Option<String>,
}

impl Failure {
    fn silent(error: SessionError) -> Self {
        Self {
            error,
            goodbye: None,
        }
    }
}

/// The handshake as a state machine, without I/O: it takes the remote's
/// messages and says what to send, until both proofs verified. The order
/// (module doc) is what makes it safe: the responder says nothing before a
/// Hello for its swarm, the initiator proves only after the responder did.
pub struct Handshake<'k> {
    keys: &'k Keys,
    /// The channel binding of the connection (TLS exporter).
    binding: [u8; EXPORTER_LEN],
    role: Role,
    remote: SocketAddr,
    mine: NonceGuard,
    theirs: Option<TheirHello>,
}

impl<'k> Handshake<'k> {
    /// A handshake as `role`, and what to send first (the initiator's
    /// Hello; nothing for the responder).
    pub fn new(
        keys: &'k Keys,
        binding: [u8; EXPORTER_LEN],
        role: Role,
        remote: SocketAddr,
    ) -> (Self, Vec<Message>) {
        let h = Self {
            keys,
            binding,
            role,
            remote,
            mine: keys.nonces.fresh(),
            theirs: None,
        };
        let first = match role {
            Role::Initiator => vec![h.hello()],
            Role::Responder => Vec::new(),
        };
        (h, first)
    }

    fn hello(&self) -> Message {
        Message::Hello {
            version: PROTOCOL_VERSION,
            swarm: self.keys.swarm_key,
            nonce: self.mine.nonce,
            listen_port: self.keys.listen_port,
        }
    }

    fn my_proof(&self, theirs: &TheirHello) -> Message {
        Message::Proof {
            mac: handshake_proof(
                &self.keys.auth_key,
                &self.binding,
                self.role,
                &theirs.nonce,
                &self.mine.nonce,
            ),
        }
    }

    /// The remote's next message: what to send now, and the port the
    /// remote serves on (0 if it does not say) once the handshake is done.
    pub fn on_message(&mut self, m: Message) -> Result<(Vec<Message>, Option<u16>), Failure> {
        let remote = self.remote;
        match (m, self.theirs.take()) {
            (Message::Goodbye { reason }, _) => Err(Failure::silent(SessionError::Goodbye {
                peer: remote,
                reason,
            })),
            (
                Message::Hello {
                    swarm,
                    nonce,
                    listen_port,
                    ..
                },
                None,
            ) => {
                if swarm != self.keys.swarm_key {
                    return Err(Failure {
                        error: SessionError::OtherSwarm { peer: remote },
                        goodbye: Some("this peer does not serve that swarm".into()),
                    });
                }
                if self.mine.nonces.is_ours(&nonce) {
                    // Our own nonce coming back: we dialled ourselves (or
                    // a reflection, which the binding stops anyway).
                    return Err(Failure::silent(SessionError::Protocol {
                        peer: remote,
                        what: "its Hello carries a nonce of ours (a reflected handshake, or ourselves)"
                            .into(),
                    }));
                }
                let theirs = TheirHello { nonce, listen_port };
                let send = match self.role {
                    // Nothing leaves before a valid Hello for our swarm.
                    Role::Responder => vec![self.hello(), self.my_proof(&theirs)],
                    // We prove only once the responder has.
                    Role::Initiator => Vec::new(),
                };
                self.theirs = Some(theirs);
                Ok((send, None))
            }
            (Message::Proof { mac }, Some(theirs)) => {
                let role = self.role;
                let auth = &self.keys.auth_key;
                let binding = &self.binding;
                let mine = &self.mine.nonce;
                if !verify_proof(auth, binding, role.other(), mine, &theirs.nonce, &mac) {
                    return Err(Failure {
                        error: SessionError::BadProof { peer: remote },
                        goodbye: Some("wrong proof".into()),
                    });
                }
                let send = match role {
                    Role::Initiator => vec![self.my_proof(&theirs)],
                    Role::Responder => Vec::new(),
                };
                Ok((send, Some(theirs.listen_port)))
            }
            (other, theirs) => {
                let expected = if theirs.is_some() { "Proof" } else { "Hello" };
                Err(Failure::silent(SessionError::Protocol {
                    peer: remote,
                    what: format!("expected {expected}, got {:?}", other.kind()),
                }))
            }
        }
    }

    /// The connection failed or sent bytes that are not a message. A
    /// Hello of another protocol version gets a Goodbye saying so.
    pub fn on_wire_error(&self, source: WireError) -> Failure {
        let goodbye = match &source {
            WireError::Frame(PeerWireError::UnsupportedVersion(_)) => Some(format!(
                "unsupported protocol version: this peer speaks version {PROTOCOL_VERSION}"
            )),
            _ => None,
        };
        Failure {
            error: SessionError::Wire {
                peer: self.remote,
                source,
            },
            goodbye,
        }
    }
}

/// Runs the handshake as `role` on a secure channel whose binding is
/// `binding`. Returns the port the remote serves on (0 if it does not say).
pub async fn run(
    keys: &Keys,
    binding: [u8; EXPORTER_LEN],
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    remote: SocketAddr,
    role: Role,
) -> Result<u16, SessionError> {
    let wire = |source| SessionError::Wire {
        peer: remote,
        source,
    };
    let (mut h, first) = Handshake::new(keys, binding, role, remote);
    for m in &first {
        writer.send(m).await.map_err(wire)?;
    }
    loop {
        let step = match reader.next().await {
            Ok(m) => h.on_message(m),
            Err(e) => Err(h.on_wire_error(e)),
        };
        match step {
            Ok((send, done)) => {
                for m in &send {
                    writer.send(m).await.map_err(wire)?;
                }
                if let Some(port) = done {
                    return Ok(port);
                }
            }
            Err(Failure { error, goodbye }) => {
                if let Some(reason) = goodbye {
                    let _ = writer.send(&Message::goodbye(&reason)).await;
                }
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hayedik_proto::manifest::{peer_auth_key, swarm_key};

    fn keys(root: u8, port: u16) -> Keys {
        Keys {
            swarm_key: swarm_key(&[root; 32]),
            auth_key: peer_auth_key(&[root; 32]),
            listen_port: port,
            nonces: Arc::default(),
        }
    }

    /// The channel binding both sides of one connection see.
    const TLS: [u8; EXPORTER_LEN] = [0x42; EXPORTER_LEN];

    fn addr() -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 7000))
    }

    /// Delivers `msgs` to `h`: what it sends, whether it is done.
    fn feed(
        h: &mut Handshake<'_>,
        msgs: Vec<Message>,
    ) -> Result<(Vec<Message>, Option<u16>), Failure> {
        let mut out = Vec::new();
        let mut done = None;
        for m in msgs {
            let (send, d) = h.on_message(m)?;
            out.extend(send);
            done = done.or(d);
        }
        Ok((out, done))
    }

    #[test]
    fn a_nonce_is_ours_while_its_guard_lives() {
        let nonces = Arc::new(Nonces::default());
        let guard = nonces.fresh();
        let n = guard.nonce;
        assert!(nonces.is_ours(&n));
        drop(guard);
        assert!(!nonces.is_ours(&n));
    }

    #[test]
    fn two_ticket_holders_complete_it_in_order() {
        let (ka, kb) = (keys(1, 1111), keys(1, 2222));
        let (mut a, first) = Handshake::new(&ka, TLS, Role::Initiator, addr());
        let (mut b, nothing) = Handshake::new(&kb, TLS, Role::Responder, addr());
        assert!(nothing.is_empty(), "the responder speaks second");
        assert!(matches!(first[..], [Message::Hello { .. }]));
        let (to_a, done_b) = feed(&mut b, first).unwrap();
        assert!(matches!(
            to_a[..],
            [Message::Hello { .. }, Message::Proof { .. }]
        ));
        assert_eq!(done_b, None);
        let (to_b, done_a) = feed(&mut a, to_a).unwrap();
        assert!(matches!(to_b[..], [Message::Proof { .. }]));
        assert_eq!(done_a, Some(2222));
        let (rest, done_b) = feed(&mut b, to_b).unwrap();
        assert!(rest.is_empty());
        assert_eq!(done_b, Some(1111));
    }

    #[test]
    fn the_responder_says_nothing_to_another_swarm() {
        let (ka, kb) = (keys(1, 1), keys(2, 2));
        let (_a, first) = Handshake::new(&ka, TLS, Role::Initiator, addr());
        let (mut b, _) = Handshake::new(&kb, TLS, Role::Responder, addr());
        let f = feed(&mut b, first).unwrap_err();
        assert!(matches!(f.error, SessionError::OtherSwarm { .. }));
        // A Goodbye only: no Hello naming its swarm, no proof.
        assert!(f.goodbye.is_some());
    }

    #[test]
    fn the_initiator_never_proves_to_a_peer_without_the_root() {
        // Same swarm key (public), different auth key: a peer that read an
        // announce but does not hold the ticket.
        let ka = keys(1, 1);
        let mut kb = keys(1, 2);
        kb.auth_key = peer_auth_key(&[9; 32]);
        let (mut a, first) = Handshake::new(&ka, TLS, Role::Initiator, addr());
        let (mut b, _) = Handshake::new(&kb, TLS, Role::Responder, addr());
        let (to_a, _) = feed(&mut b, first).unwrap();
        let f = feed(&mut a, to_a).unwrap_err();
        assert!(matches!(f.error, SessionError::BadProof { .. }));
        assert!(f.goodbye.is_some());
    }

    #[test]
    fn our_own_nonce_coming_back_is_refused_silently() {
        // The same swarm's keys, hence its nonces: one peer node.
        let k = keys(1, 1);
        let (a, first) = Handshake::new(&k, TLS, Role::Initiator, addr());
        // A second connection to us replays our Hello (we dialled
        // ourselves).
        let (mut b, _) = Handshake::new(&k, TLS, Role::Responder, addr());
        let f = feed(&mut b, first).unwrap_err();
        assert!(matches!(f.error, SessionError::Protocol { .. }));
        assert!(f.goodbye.is_none());
        drop(a);
    }

    #[test]
    fn anything_out_of_order_ends_it() {
        let k = keys(1, 1);
        let (mut b, _) = Handshake::new(&k, TLS, Role::Responder, addr());
        let f = feed(&mut b, vec![Message::Proof { mac: [0; 32] }]).unwrap_err();
        assert!(matches!(f.error, SessionError::Protocol { .. }));
        let (mut b, _) = Handshake::new(&k, TLS, Role::Responder, addr());
        let f = feed(&mut b, vec![Message::ManifestRequest]).unwrap_err();
        assert!(matches!(f.error, SessionError::Protocol { .. }));
        let (mut a, first) = Handshake::new(&k, TLS, Role::Initiator, addr());
        let k2 = keys(1, 2);
        let (mut b2, _) = Handshake::new(&k2, TLS, Role::Responder, addr());
        let (to_a, _) = feed(&mut b2, first).unwrap();
        // A second Hello where the proof is due.
        let f = feed(&mut a, vec![to_a[0].clone(), to_a[0].clone()]).unwrap_err();
        assert!(matches!(f.error, SessionError::Protocol { .. }));
    }

    #[test]
    fn a_proof_from_another_connection_does_not_verify() {
        // The responder's proof made on a connection with another binding
        // (a relay in the middle terminates two connections).
        let (ka, kb) = (keys(1, 1), keys(1, 2));
        let (mut a, first) = Handshake::new(&ka, TLS, Role::Initiator, addr());
        let (mut b, _) = Handshake::new(&kb, [0x43; EXPORTER_LEN], Role::Responder, addr());
        let (to_a, _) = feed(&mut b, first).unwrap();
        let f = feed(&mut a, to_a).unwrap_err();
        assert!(matches!(f.error, SessionError::BadProof { .. }));
    }

    #[test]
    fn another_version_is_told_so() {
        let k = keys(1, 1);
        let (b, _) = Handshake::new(&k, TLS, Role::Responder, addr());
        let f = b.on_wire_error(WireError::Frame(PeerWireError::UnsupportedVersion(2)));
        match f.goodbye {
            Some(reason) => assert!(reason.contains("unsupported protocol version"), "{reason}"),
            None => panic!("no goodbye"),
        }
    }
}
