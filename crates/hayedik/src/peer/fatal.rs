//! What stops a whole download (as opposed to one session): a value that
//! travels from where it happened (the disk thread, a session, the resume
//! saver) to `get`, which decides from its variant what to tell the user.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::storage::StorageError;

/// Why a download cannot go on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Fatal {
    /// Writing, syncing or saving failed (a full disk...): every verified
    /// piece is kept.
    #[error("{0}")]
    Storage(Arc<StorageError>),
    /// The thread that writes pieces could not start or stopped.
    #[error("the disk writer thread {0}")]
    DiskThread(String),
    /// A task that should not fail did (a bug): what was verified is kept.
    #[error("internal error: {0}")]
    Internal(String),
    /// The manifest the ticket names is authentic but cannot be stored here
    /// (a hostile name...): no peer can do better.
    #[error("the ticket names content whose manifest is unusable: {0}; nothing was written")]
    UnusableManifest(String),
}

impl Fatal {
    /// Whether running the same command again may get further (and so
    /// whether to say so).
    pub fn resumable(&self) -> bool {
        match self {
            Fatal::Storage(e) => !matches!(
                **e,
                StorageError::UnsafePaths { .. }
                    | StorageError::InvalidName(_)
                    | StorageError::Layout(_)
                    | StorageError::DestinationExists { .. }
            ),
            Fatal::DiskThread(_) | Fatal::Internal(_) => true,
            Fatal::UnusableManifest(_) => false,
        }
    }

    /// The message for the user: the error, and that a rerun resumes when
    /// it does and the message does not say so already.
    pub fn message(&self) -> String {
        // A full disk's message says what to do, rerunning included.
        let says_it = matches!(self, Fatal::Storage(e) if e.is_disk_full());
        if self.resumable() && !says_it {
            format!("{self}; what was verified is kept: rerun the same command to resume")
        } else {
            self.to_string()
        }
    }
}

impl From<StorageError> for Fatal {
    fn from(e: StorageError) -> Self {
        Fatal::Storage(Arc::new(e))
    }
}

/// The first [`Fatal`] of a download, and the token it cancels.
#[derive(Debug)]
pub struct FatalSlot {
    first: Mutex<Option<Fatal>>,
    cancel: CancellationToken,
}

impl FatalSlot {
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            first: Mutex::new(None),
            cancel,
        }
    }

    /// Records `fatal` (unless one came first) and stops everything.
    pub fn fail(&self, fatal: Fatal) {
        self.first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(fatal);
        self.cancel.cancel();
    }

    pub fn get(&self) -> Option<Fatal> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Op;
    use std::path::Path;

    #[test]
    fn the_hint_to_rerun_is_given_once_and_only_where_it_helps() {
        let full: Fatal = StorageError::io(
            Op::Writing,
            Path::new("/x/f"),
            std::io::Error::from_raw_os_error(28),
        )
        .into();
        assert_eq!(full.message().matches("rerun").count(), 1);
        let io: Fatal = StorageError::io(
            Op::Writing,
            Path::new("/x/f"),
            std::io::Error::from_raw_os_error(5),
        )
        .into();
        assert!(io.message().ends_with("rerun the same command to resume"));
        let unusable = Fatal::UnusableManifest("bad name".into());
        assert!(!unusable.message().contains("rerun"));
        let unsafe_paths: Fatal = StorageError::UnsafePaths {
            dir: "/x".into(),
            reason: "a link".into(),
        }
        .into();
        assert!(!unsafe_paths.message().contains("rerun"));
    }

    #[test]
    fn the_first_fatal_wins_and_cancels() {
        let cancel = CancellationToken::new();
        let slot = FatalSlot::new(cancel.clone());
        slot.fail(Fatal::DiskThread("stopped".into()));
        slot.fail(Fatal::UnusableManifest("x".into()));
        assert!(cancel.is_cancelled());
        assert!(matches!(slot.get(), Some(Fatal::DiskThread(_))));
    }
}
