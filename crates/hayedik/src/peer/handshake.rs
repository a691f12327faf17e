//! The peer handshake (docs/peer-protocol.md, "Handshake"): Hellos, then
//! proofs that each side holds the ticket's root.
//!
//! What makes a proof worthless anywhere but on its own connection:
//! - it covers the prover's role and both nonces (`handshake_proof`);
//! - every nonce we are using in a handshake is held in [`Nonces`], and a
//!   Hello that carries one of them is refused: otherwise a peer that knows
//!   only the swarm key could open a second connection to us with our own
//!   nonce and carry our proofs from one connection to the other
//!   (reflection), authenticating both without the root;
//! - the side that accepted the connection says nothing, not even its
//!   Hello (which names the swarm), before a Hello for a swarm it serves;
//! - the side that dialled checks the responder's proof before it sends
//!   its own, so a listener that only knows the swarm key never gets one.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use hayedik_proto::peer::{handshake_proof, verify_proof, Message, Role, PROTOCOL_VERSION};

use super::session::SessionError;
use super::swarm::Swarm;
use super::wire::{FrameReader, FrameWriter};

/// Nonces of this process's handshakes in progress. Bounded by the number
/// of connections (incoming and outgoing sessions are capped, see
/// `node.rs`); [`NonceGuard`] removes its nonce when dropped.
struct Nonces(Mutex<HashSet<[u8; 32]>>);

fn nonces() -> &'static Nonces {
    static NONCES: OnceLock<Nonces> = OnceLock::new();
    NONCES.get_or_init(|| Nonces(Mutex::new(HashSet::new())))
}

impl Nonces {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh nonce, registered until the guard is dropped.
    fn fresh(&'static self) -> NonceGuard {
        loop {
            let nonce: [u8; 32] = rand::random();
            if self.lock().insert(nonce) {
                return NonceGuard {
                    nonces: self,
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
    nonces: &'static Nonces,
    nonce: [u8; 32],
}

impl Drop for NonceGuard {
    fn drop(&mut self) {
        self.nonces.lock().remove(&self.nonce);
    }
}

/// What the remote said in its Hello.
struct TheirHello {
    nonce: [u8; 32],
    listen_port: u16,
}

/// Runs the handshake as `role`. Returns the port the remote serves on (0
/// if it does not say).
pub async fn handshake(
    swarm: &Swarm,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    remote: SocketAddr,
    role: Role,
) -> Result<u16, SessionError> {
    let wire = |source| SessionError::Wire {
        peer: remote,
        source,
    };
    let mine = nonces().fresh();
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        swarm: swarm.swarm_key,
        nonce: mine.nonce,
        listen_port: swarm.listen_port,
    };
    let my_proof = |theirs: &TheirHello| Message::Proof {
        mac: handshake_proof(&swarm.auth_key, role, &theirs.nonce, &mine.nonce),
    };
    match role {
        Role::Initiator => {
            writer.send(&hello).await.map_err(wire)?;
            let theirs = their_hello(swarm, reader, writer, remote).await?;
            their_proof(swarm, reader, writer, remote, role, &mine.nonce, &theirs).await?;
            writer.send(&my_proof(&theirs)).await.map_err(wire)?;
            Ok(theirs.listen_port)
        }
        Role::Responder => {
            // Nothing leaves before a valid Hello for a swarm we serve.
            let theirs = their_hello(swarm, reader, writer, remote).await?;
            writer.send(&hello).await.map_err(wire)?;
            writer.send(&my_proof(&theirs)).await.map_err(wire)?;
            their_proof(swarm, reader, writer, remote, role, &mine.nonce, &theirs).await?;
            Ok(theirs.listen_port)
        }
    }
}

/// Reads the remote's Hello and checks its swarm and nonce.
async fn their_hello(
    swarm: &Swarm,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    remote: SocketAddr,
) -> Result<TheirHello, SessionError> {
    let m = reader.next().await.map_err(|source| SessionError::Wire {
        peer: remote,
        source,
    })?;
    match m {
        Message::Hello {
            swarm: key,
            nonce,
            listen_port,
            ..
        } => {
            if key != swarm.swarm_key {
                let _ = writer
                    .send(&Message::goodbye("this peer does not serve that swarm"))
                    .await;
                return Err(SessionError::OtherSwarm { peer: remote });
            }
            if nonces().is_ours(&nonce) {
                // Our own nonce coming back: a reflection, or we dialled
                // ourselves. Nothing more is said either way.
                return Err(SessionError::Protocol {
                    peer: remote,
                    what: "its Hello carries a nonce of ours (a reflected handshake, or ourselves)"
                        .into(),
                });
            }
            Ok(TheirHello { nonce, listen_port })
        }
        Message::Goodbye { reason } => Err(SessionError::Goodbye {
            peer: remote,
            reason,
        }),
        other => Err(SessionError::Protocol {
            peer: remote,
            what: format!("expected Hello, got {:?}", other.kind()),
        }),
    }
}

/// Reads the remote's Proof and verifies it.
async fn their_proof(
    swarm: &Swarm,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    remote: SocketAddr,
    role: Role,
    mine: &[u8; 32],
    theirs: &TheirHello,
) -> Result<(), SessionError> {
    let m = reader.next().await.map_err(|source| SessionError::Wire {
        peer: remote,
        source,
    })?;
    match m {
        Message::Proof { mac } => {
            if verify_proof(&swarm.auth_key, role.other(), mine, &theirs.nonce, &mac) {
                Ok(())
            } else {
                let _ = writer.send(&Message::goodbye("wrong proof")).await;
                Err(SessionError::BadProof { peer: remote })
            }
        }
        Message::Goodbye { reason } => Err(SessionError::Goodbye {
            peer: remote,
            reason,
        }),
        other => Err(SessionError::Protocol {
            peer: remote,
            what: format!("expected Proof, got {:?}", other.kind()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_ours_while_its_guard_lives() {
        let guard = nonces().fresh();
        let n = guard.nonce;
        assert!(nonces().is_ours(&n));
        drop(guard);
        assert!(!nonces().is_ours(&n));
    }
}
