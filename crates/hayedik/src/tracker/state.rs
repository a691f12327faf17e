//! Persistence of confirmed swarms (`--state DIR`), in a redb database.
//!
//! One table maps a swarm port to its record (confirmation token, confirming
//! address, swarm key, creator IP, last announce). redb commits are atomic and
//! durable (fsync before a commit returns), so a crash at any moment leaves
//! either the old or the new record. Peer lists are soft state and are not
//! stored: peers re-announce.
//!
//! Records are encoded by hand in a small versioned layout, so a damaged
//! record is detected and reported, never half-trusted.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use hayedik_proto::codec::{Reader, Writer};
use redb::{ReadableTable, TableDefinition};

use super::swarm::SwarmRecord;

const SWARMS: TableDefinition<u16, &[u8]> = TableDefinition::new("swarms");
const RECORD_VERSION: u8 = 1;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use state directory {dir}: {err}")]
    Dir { dir: PathBuf, err: std::io::Error },
    #[error(
        "cannot open tracker state {path}: {err} (move the file away to start with an empty state)"
    )]
    Open {
        path: PathBuf,
        err: Box<redb::DatabaseError>,
    },
    #[error("tracker state {path}: {what}: {detail}")]
    Db {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("tracker state {path}: record for port {port} is damaged (move the file away to start with an empty state)")]
    BadRecord { path: PathBuf, port: u16 },
}

/// The store of confirmed swarms.
#[derive(Debug)]
pub struct Store {
    db: redb::Database,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `DIR/tracker.redb`.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        std::fs::create_dir_all(dir).map_err(|err| StateError::Dir {
            dir: dir.to_path_buf(),
            err,
        })?;
        let path = dir.join("tracker.redb");
        let db = redb::Database::create(&path).map_err(|e| StateError::Open {
            path: path.clone(),
            err: Box::new(e),
        })?;
        let store = Store { db, path };
        // Create the table so that reads of an empty store work.
        store.write(|_| Ok(()))?;
        Ok(store)
    }

    fn db_err(&self, what: &'static str) -> impl Fn(String) -> StateError + '_ {
        move |detail| StateError::Db {
            path: self.path.clone(),
            what,
            detail,
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, u16, &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<(), StateError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| self.db_err("begin write")(e.to_string()))?;
        {
            let mut table = txn
                .open_table(SWARMS)
                .map_err(|e| self.db_err("open table")(e.to_string()))?;
            f(&mut table).map_err(|e| self.db_err("write")(e.to_string()))?;
        }
        txn.commit()
            .map_err(|e| self.db_err("commit")(e.to_string()))
    }

    /// Inserts or replaces the record of `record.port`; durable on return.
    pub fn put(&self, record: &SwarmRecord) -> Result<(), StateError> {
        self.put_all(std::slice::from_ref(record))
    }

    /// Inserts or replaces every record of `records` in one transaction;
    /// durable on return.
    pub fn put_all(&self, records: &[SwarmRecord]) -> Result<(), StateError> {
        self.write(|t| {
            for record in records {
                t.insert(record.port, encode(record).as_slice())?;
            }
            Ok(())
        })
    }

    /// Removes the record of `port`.
    pub fn remove(&self, port: u16) -> Result<(), StateError> {
        self.write(|t| t.remove(port).map(|_| ()))
    }

    /// Every stored record, by port.
    pub fn load(&self) -> Result<Vec<SwarmRecord>, StateError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.db_err("begin read")(e.to_string()))?;
        let table = txn
            .open_table(SWARMS)
            .map_err(|e| self.db_err("open table")(e.to_string()))?;
        let mut out = Vec::new();
        for item in table
            .iter()
            .map_err(|e| self.db_err("read")(e.to_string()))?
        {
            let (k, v) = item.map_err(|e| self.db_err("read")(e.to_string()))?;
            let port = k.value();
            let record = decode(port, v.value()).ok_or_else(|| StateError::BadRecord {
                path: self.path.clone(),
                port,
            })?;
            out.push(record);
        }
        Ok(out)
    }
}

fn put_addr(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.put_u8(4);
            out.put_bytes(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.put_u8(6);
            out.put_bytes(&v6.octets());
        }
    }
}

fn get_addr(r: &mut Reader<'_>) -> Option<IpAddr> {
    match r.u8().ok()? {
        4 => Some(IpAddr::from(r.array::<4>().ok()?)),
        6 => Some(IpAddr::from(r.array::<16>().ok()?)),
        _ => None,
    }
}

fn encode(rec: &SwarmRecord) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    out.put_u64(rec.token);
    out.put_u64(rec.last_announce_unix);
    let mut flags = 0u8;
    flags |= u8::from(rec.creator.is_some());
    flags |= u8::from(rec.confirmer.is_some()) << 1;
    flags |= u8::from(rec.key.is_some()) << 2;
    out.put_u8(flags);
    if let Some(ip) = rec.creator {
        put_addr(&mut out, ip);
    }
    if let Some(a) = rec.confirmer {
        put_addr(&mut out, a.ip());
        out.put_u16(a.port());
    }
    if let Some(k) = rec.key {
        out.put_bytes(&k);
    }
    let check = blake3::hash(&out);
    out.put_bytes(&check.as_bytes()[..8]);
    out
}

fn decode(port: u16, bytes: &[u8]) -> Option<SwarmRecord> {
    let (body, check) = bytes.split_at(bytes.len().checked_sub(8)?);
    if blake3::hash(body).as_bytes()[..8] != *check {
        return None;
    }
    let mut r = Reader::new(body);
    if r.u8().ok()? != RECORD_VERSION {
        return None;
    }
    let token = r.u64().ok()?;
    let last_announce_unix = r.u64().ok()?;
    let flags = r.u8().ok()?;
    let creator = if flags & 1 != 0 {
        Some(get_addr(&mut r)?)
    } else {
        None
    };
    let confirmer = if flags & 2 != 0 {
        let ip = get_addr(&mut r)?;
        Some(SocketAddr::new(ip, r.u16().ok()?))
    } else {
        None
    };
    let key = if flags & 4 != 0 {
        Some(r.array::<32>().ok()?)
    } else {
        None
    };
    if !r.is_empty() || flags > 7 {
        return None;
    }
    Some(SwarmRecord {
        port,
        creator,
        token,
        confirmer,
        key,
        last_announce_unix,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(port: u16) -> SwarmRecord {
        SwarmRecord {
            port,
            creator: Some("127.0.0.1".parse().unwrap()),
            token: 0xDEAD_BEEF,
            confirmer: Some("[::1]:999".parse().unwrap()),
            key: Some([7; 32]),
            last_announce_unix: 1_700_000_000,
        }
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put(&record(4000)).unwrap();
            s.put(&SwarmRecord {
                key: None,
                confirmer: None,
                creator: None,
                ..record(4001)
            })
            .unwrap();
            s.put(&record(4002)).unwrap();
            s.remove(4002).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let all = s.load().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], record(4000));
        assert_eq!(all[1].key, None);
    }

    #[test]
    fn damaged_records_are_detected() {
        let mut bytes = encode(&record(1));
        assert_eq!(decode(1, &bytes), Some(record(1)));
        bytes[3] ^= 1;
        assert_eq!(decode(1, &bytes), None);
        for cut in 0..bytes.len() {
            assert_eq!(decode(1, &bytes[..cut]), None);
        }
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tracker.redb"), vec![0x5A; 10_000]).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tracker.redb"), "{err}");
    }

    #[test]
    fn state_path_that_is_a_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = Store::open(&file).unwrap_err().to_string();
        assert!(err.contains("state directory"), "{err}");
    }
}
