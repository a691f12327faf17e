//! The content of a swarm once its manifest is known and its storage open:
//! what sessions serve from and the disk thread writes into.

use std::sync::Arc;

use hayedik_proto::manifest::Manifest;

use super::guard::ServeGuard;
use super::pieces::SharedPieces;
use crate::storage::{Download, PieceLayout, Storage};

/// A verified manifest and its canonical encoding.
pub type VerifiedManifest = (Arc<Manifest>, Arc<Vec<u8>>);

/// The content once the manifest is known and storage is open.
pub struct Content {
    pub manifest: Manifest,
    /// The manifest's pieces; piece `i` is at `i * piece_size` in `storage`.
    pub layout: PieceLayout,
    /// The manifest's canonical encoding, served to peers that ask.
    pub manifest_bytes: Vec<u8>,
    pub storage: Arc<dyn Storage>,
    /// Resume bookkeeping while downloading; `None` for a complete copy.
    pub download: Option<Arc<Download>>,
    /// Re-verifies pieces on disk before they are served.
    pub guard: ServeGuard,
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Content")
            .field("pieces", &self.manifest.piece_count())
            .finish_non_exhaustive()
    }
}

impl Content {
    /// A piece newly held: it needs no re-hash before serving, and the next
    /// save of the resume state records it.
    pub fn mark_verified(&self, piece: u32) {
        self.guard.mark(piece);
        if let Some(d) = &self.download {
            d.mark_verified(piece);
        }
    }

    /// A held piece no longer matches on disk: stop serving it, forget it
    /// in the resume state, and fetch it again while downloading.
    pub fn piece_lost(&self, pieces: &SharedPieces, piece: u32) {
        let was = pieces.lock().lost(piece, self.download.is_some());
        if !was {
            return;
        }
        if let Some(d) = &self.download {
            d.mark_lost(piece);
        }
        tracing::warn!(
            piece,
            "piece no longer matches the ticket on disk: not serving it"
        );
    }
}
