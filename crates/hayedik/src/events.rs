//! What the user sees: JSON lines on stdout with `--json`, readable lines
//! otherwise. Every event of DESIGN.md is one variant of [`Event`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::output::{self, Priority};

/// One event; serialized with an `"event"` field naming the variant.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Error {
        message: String,
    },
    Listening {
        addr: String,
    },
    SwarmCreated {
        port: u16,
    },
    SwarmConfirmed {
        port: u16,
    },
    SwarmReclaimed {
        port: u16,
    },
    SwarmRestored {
        port: u16,
    },
    SwarmRetired {
        port: u16,
    },
    Ticket {
        ticket: String,
        root: String,
        bytes: u64,
        pieces: u64,
        /// The shared file's or folder's name.
        name: String,
        /// Regular files shared (1 for a file).
        files: u64,
        /// True when a folder is shared.
        folder: bool,
    },
    Manifest {
        name: String,
        bytes: u64,
        pieces: u64,
    },
    Progress {
        bytes_done: u64,
        bytes_total: u64,
        peers: usize,
        rate: u64,
    },
    Done {
        path: String,
        bytes: u64,
        seconds: f64,
        reused: u64,
        from: BTreeMap<String, u64>,
    },
    Seeding,
    Stopped {
        #[serde(skip_serializing_if = "Option::is_none")]
        uploaded: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        downloaded: Option<u64>,
    },
}

impl Event {
    /// A one-line human rendering.
    pub fn human(&self) -> String {
        match self {
            Event::Error { message } => format!("error: {message}"),
            Event::Listening { addr } => format!("listening on {addr}"),
            Event::SwarmCreated { port } => format!("swarm created on port {port}"),
            Event::SwarmConfirmed { port } => format!("swarm confirmed on port {port}"),
            Event::SwarmReclaimed { port } => {
                format!("swarm on port {port} reclaimed (not confirmed in time)")
            }
            Event::SwarmRestored { port } => format!("swarm restored on port {port}"),
            Event::SwarmRetired { port } => {
                format!("swarm on port {port} retired (no announce for too long)")
            }
            Event::Ticket {
                ticket,
                bytes,
                pieces,
                name,
                files,
                folder,
                ..
            } => {
                let what = if *folder {
                    format!("{name}/: {files} files, ")
                } else {
                    format!("{name}: ")
                };
                format!("sharing {what}{bytes} bytes in {pieces} pieces\nticket: {ticket}")
            }
            Event::Manifest {
                name,
                bytes,
                pieces,
            } => {
                format!("{name}: {bytes} bytes in {pieces} pieces")
            }
            Event::Progress {
                bytes_done,
                bytes_total,
                peers,
                rate,
            } => format!("{bytes_done}/{bytes_total} bytes from {peers} peers at {rate} B/s"),
            Event::Done {
                path,
                bytes,
                seconds,
                reused,
                from,
            } => {
                let rate = if *seconds > 0.0 {
                    *bytes as f64 / seconds / 1_048_576.0
                } else {
                    0.0
                };
                format!(
                    "done: {path} ({bytes} bytes in {seconds:.2} s, {rate:.1} MiB/s, {reused} reused, from {} peers)",
                    from.len()
                )
            }
            Event::Seeding => "seeding: press Ctrl-C to stop".to_string(),
            Event::Stopped {
                uploaded,
                downloaded,
            } => match (uploaded, downloaded) {
                (Some(u), Some(d)) => format!("stopped ({u} bytes uploaded, {d} downloaded)"),
                _ => "stopped".to_string(),
            },
        }
    }
}

/// Where events go. Cheap to clone.
#[derive(Debug, Clone, Copy)]
pub struct Events {
    json: bool,
    quiet: bool,
}

impl Events {
    pub fn new(json: bool) -> Self {
        Self { json, quiet: false }
    }

    /// Events that go nowhere (an embedded tracker inside `share`).
    pub fn quiet() -> Self {
        Self {
            json: false,
            quiet: true,
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Emits one event: a JSON line on stdout, or a human line (stdout for
    /// what the user acts on, the log for the rest). Never blocks and never
    /// fails: lines go through [`crate::output`], which drops them once
    /// their reader is gone (and drops `progress` first when it is slow).
    pub fn emit(&self, event: Event) {
        if self.quiet {
            tracing::debug!("{}", event.human());
            return;
        }
        let priority = match event {
            Event::Progress { .. } => Priority::Lossy,
            _ => Priority::Essential,
        };
        if self.json {
            if let Ok(line) = serde_json::to_string(&event) {
                output::stdout(line + "\n", priority);
            }
            return;
        }
        match &event {
            Event::Ticket { .. } | Event::Done { .. } | Event::Listening { .. } => {
                output::stdout(event.human() + "\n", priority);
            }
            Event::Error { .. } => {}
            _ => tracing::info!("{}", event.human()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_shapes_match_design() {
        let j = |e: Event| serde_json::to_value(e).unwrap();
        assert_eq!(
            j(Event::SwarmCreated { port: 9 }),
            serde_json::json!({"event": "swarm_created", "port": 9})
        );
        assert_eq!(
            j(Event::Stopped {
                uploaded: None,
                downloaded: None
            }),
            serde_json::json!({"event": "stopped"})
        );
        assert_eq!(j(Event::Seeding), serde_json::json!({"event": "seeding"}));
        let done = j(Event::Done {
            path: "x".into(),
            bytes: 1,
            seconds: 0.5,
            reused: 0,
            from: [("127.0.0.1:5".to_string(), 1)].into(),
        });
        assert_eq!(done["from"]["127.0.0.1:5"], 1);
        assert_eq!(done["event"], "done");
    }
}
