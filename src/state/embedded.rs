//! The embedded backend: one redb file, `DIR/state.redb`.
//!
//! Why redb (and not SQLite through rusqlite): it is pure Rust (no C toolchain in a build that
//! is already slow on two cores, nothing `unsafe` on our side), it is made for exactly this
//! (typed key-value tables in one file), and its commits are crash-safe by construction: a
//! copy-on-write B-tree whose commit is one fsync'd root swap (with `Durability::Immediate`,
//! the default, a committed write survives kill -9 and power loss; an interrupted one leaves
//! the previous root). The store thread is its only user, so its single-writer model costs
//! nothing. SQL would buy nothing here: every access is by key or a scan of a small table.
// Control plane: this file runs on the store thread only.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
use super::schema::ToolPin;
use super::schema::{Approval, Binding, ManagedAgent, SCHEMA_VERSION};
use super::{Backend, StoreError};
use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::HashMap;
use std::path::Path;

const APPROVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("approvals");
const BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("approval_bodies");
const BINDINGS: TableDefinition<&[u8], &str> = TableDefinition::new("approval_bindings");
const TOTP: TableDefinition<&str, u64> = TableDefinition::new("totp_steps");
/// Managed agents (issue 16), their "last seen" times, and (reserved) revoked keys.
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const AGENT_SEEN: TableDefinition<&str, u64> = TableDefinition::new("agent_seen");
const REVOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("revocations");
/// Pinned MCP tool definitions (issue 15, `state::pins`).
const TOOL_PINS: TableDefinition<&str, &[u8]> = TableDefinition::new("tool_pins");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Every access goes through a write transaction (the store thread is the only user, so the
/// single writer lock costs nothing). Inside a group commit (`begin_batch` .. `end_batch`) all
/// reads and writes of the batch share one transaction, committed once with an fsync: the
/// batch's writes are seen by its later reads, and memory holds one transaction's dirty pages.
/// (One non-durable commit per write, as first built, kept every commit's copied pages until the
/// batch's durable commit: about 4 KiB per held approval, measured in perf.md.)
pub struct Embedded {
    db: Database,
    /// Inside a group commit.
    batch: bool,
    /// The batch's transaction (opened by its first access).
    tx: Option<WriteTransaction>,
    /// A write happened in this batch.
    dirty: bool,
    /// A storage error aborted the batch's transaction: its earlier writes are lost.
    aborted: bool,
}

fn e(err: impl Into<redb::Error>) -> StoreError {
    StoreError(err.into().to_string())
}

impl Embedded {
    /// Opens (or creates) `dir/state.redb`, creating every table and checking the schema.
    pub fn open(dir: &Path) -> Result<Embedded, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|x| StoreError(format!("cannot create {}: {x}", dir.display())))?;
        let path = dir.join("state.redb");
        let db = Database::create(&path)
            .map_err(|x| StoreError(format!("cannot open {}: {x}", path.display())))?;
        let tx = db.begin_write().map_err(e)?;
        {
            let mut meta = tx.open_table(META).map_err(e)?;
            let v = meta.get("schema").map_err(e)?.map(|g| g.value());
            match v {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError(format!(
                        "{} has schema version {v}, newer than this binary's {SCHEMA_VERSION}",
                        path.display()
                    )));
                }
                Some(_) => {}
                None => {
                    meta.insert("schema", SCHEMA_VERSION).map_err(e)?;
                }
            }
            tx.open_table(APPROVALS).map_err(e)?;
            tx.open_table(BODIES).map_err(e)?;
            tx.open_table(BINDINGS).map_err(e)?;
            tx.open_table(TOTP).map_err(e)?;
            tx.open_table(AGENTS).map_err(e)?;
            tx.open_table(AGENT_SEEN).map_err(e)?;
            tx.open_table(REVOCATIONS).map_err(e)?;
            tx.open_table(TOOL_PINS).map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(Embedded {
            db,
            batch: false,
            tx: None,
            dirty: false,
            aborted: false,
        })
    }
}

fn decode(bytes: &[u8]) -> Result<Approval, StoreError> {
    serde_json::from_slice(bytes).map_err(|x| StoreError(format!("corrupt approval record: {x}")))
}

impl Embedded {
    /// Runs `f` in the batch's transaction (or, outside a batch, in its own: committed if
    /// `writes`, else aborted). A storage error inside a batch aborts the batch's transaction.
    fn run<R>(
        &mut self,
        writes: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if !self.batch {
            let tx = self.db.begin_write().map_err(e)?;
            let r = f(&tx)?;
            if writes {
                tx.commit().map_err(e)?;
            } else {
                tx.abort().map_err(e)?;
            }
            return Ok(r);
        }
        let tx = match self.tx.take() {
            Some(tx) => tx,
            None => self.db.begin_write().map_err(e)?,
        };
        match f(&tx) {
            Ok(r) => {
                self.tx = Some(tx);
                self.dirty |= writes;
                Ok(r)
            }
            Err(x) => {
                let _ = tx.abort();
                self.aborted |= self.dirty;
                self.dirty = false;
                Err(x)
            }
        }
    }
}

impl Backend for Embedded {
    fn begin_batch(&mut self) {
        self.batch = true;
        self.dirty = false;
        self.aborted = false;
    }

    fn end_batch(&mut self) -> Result<(), StoreError> {
        self.batch = false;
        let aborted = std::mem::take(&mut self.aborted);
        if let Some(mut tx) = self.tx.take() {
            if std::mem::take(&mut self.dirty) {
                tx.set_durability(Durability::Immediate)
                    .map_err(|x| StoreError(x.to_string()))?;
                tx.commit().map_err(e)?;
            } else {
                tx.abort().map_err(e)?;
            }
        }
        if aborted {
            return Err(StoreError(
                "a storage error aborted a group commit: its earlier writes were lost".into(),
            ));
        }
        Ok(())
    }

    fn get(&mut self, id: &str) -> Result<Option<Approval>, StoreError> {
        let raw = self.run(false, |tx| {
            let t = tx.open_table(APPROVALS).map_err(e)?;
            Ok(t.get(id).map_err(e)?.map(|g| g.value().to_vec()))
        })?;
        raw.map(|b| decode(&b)).transpose()
    }

    fn body(&mut self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(false, |tx| {
            let t = tx.open_table(BODIES).map_err(e)?;
            Ok(t.get(id).map_err(e)?.map(|g| g.value().to_vec()))
        })
    }

    fn bound(&mut self, b: &Binding) -> Result<Option<String>, StoreError> {
        self.run(false, |tx| {
            let t = tx.open_table(BINDINGS).map_err(e)?;
            Ok(t.get(&b[..]).map_err(e)?.map(|g| g.value().to_string()))
        })
    }

    fn put(
        &mut self,
        a: &Approval,
        prev: Option<&Approval>,
        body: Option<&[u8]>,
        bind: Option<&Binding>,
        unbind: Option<&Binding>,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_vec(a).map_err(|x| StoreError(x.to_string()))?;
        // compare-and-set: read first (no write), then write only if the record is unchanged
        if let Some(prev) = prev {
            let cur = self.run(false, |tx| {
                let t = tx.open_table(APPROVALS).map_err(e)?;
                Ok(t.get(a.id.as_str()).map_err(e)?.map(|g| g.value().to_vec()))
            })?;
            // an unreadable stored record is "changed": nothing is overwritten
            if !matches!(cur.map(|b| decode(&b)), Some(Ok(c)) if c == *prev) {
                return Ok(false);
            }
        }
        self.run(true, |tx| {
            let mut t = tx.open_table(APPROVALS).map_err(e)?;
            t.insert(a.id.as_str(), &json[..]).map_err(e)?;
            if let Some(body) = body {
                let mut t = tx.open_table(BODIES).map_err(e)?;
                t.insert(a.id.as_str(), body).map_err(e)?;
            }
            let mut t = tx.open_table(BINDINGS).map_err(e)?;
            if let Some(b) = unbind {
                t.remove(&b[..]).map_err(e)?;
            }
            if let Some(b) = bind {
                t.insert(&b[..], a.id.as_str()).map_err(e)?;
            }
            Ok(true)
        })
    }

    fn remove(&mut self, a: &Approval, binding: Option<&Binding>) -> Result<(), StoreError> {
        self.run(true, |tx| {
            tx.open_table(APPROVALS)
                .map_err(e)?
                .remove(a.id.as_str())
                .map_err(e)?;
            tx.open_table(BODIES)
                .map_err(e)?
                .remove(a.id.as_str())
                .map_err(e)?;
            if let Some(b) = binding {
                let mut t = tx.open_table(BINDINGS).map_err(e)?;
                let mine = t.get(&b[..]).map_err(e)?.is_some_and(|g| g.value() == a.id);
                if mine {
                    t.remove(&b[..]).map_err(e)?;
                }
            }
            Ok(())
        })
    }

    fn scan(&mut self, visit: &mut dyn FnMut(Approval)) -> Result<(), StoreError> {
        let rows = self.run(false, |tx| {
            let t = tx.open_table(APPROVALS).map_err(e)?;
            let mut rows = Vec::new();
            for row in t.iter().map_err(e)? {
                let (_, v) = row.map_err(e)?;
                rows.push(v.value().to_vec());
            }
            Ok(rows)
        })?;
        for v in rows {
            match decode(&v) {
                Ok(a) => visit(a),
                Err(x) => tracing::warn!(error = %x.0, "state: skipping an unreadable approval"),
            }
        }
        Ok(())
    }

    fn set_totp_step(&mut self, admin: &str, step: u64) -> Result<bool, StoreError> {
        let newer = self.run(false, |tx| {
            let t = tx.open_table(TOTP).map_err(e)?;
            Ok(t.get(admin).map_err(e)?.is_none_or(|g| g.value() < step))
        })?;
        if !newer {
            return Ok(false);
        }
        self.run(true, |tx| {
            tx.open_table(TOTP)
                .map_err(e)?
                .insert(admin, step)
                .map_err(e)?;
            Ok(true)
        })
    }

    fn agents(&mut self) -> Result<Vec<ManagedAgent>, StoreError> {
        let rows = self.run(false, |tx| {
            let t = tx.open_table(AGENTS).map_err(e)?;
            let mut rows = Vec::new();
            for row in t.iter().map_err(e)? {
                let (_, v) = row.map_err(e)?;
                rows.push(v.value().to_vec());
            }
            Ok(rows)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for v in rows {
            match serde_json::from_slice(&v) {
                Ok(a) => out.push(a),
                Err(x) => tracing::warn!(error = %x, "state: skipping an unreadable agent record"),
            }
        }
        Ok(out)
    }

    fn put_agent(&mut self, a: &ManagedAgent, create: bool) -> Result<bool, StoreError> {
        let json = serde_json::to_vec(a).map_err(|x| StoreError(x.to_string()))?;
        if create {
            let taken = self.run(false, |tx| {
                let t = tx.open_table(AGENTS).map_err(e)?;
                Ok(t.get(a.id.as_str()).map_err(e)?.is_some())
            })?;
            if taken {
                return Ok(false);
            }
        }
        self.run(true, |tx| {
            tx.open_table(AGENTS)
                .map_err(e)?
                .insert(a.id.as_str(), &json[..])
                .map_err(e)?;
            Ok(true)
        })
    }

    fn agents_seen(&mut self) -> Result<HashMap<String, u64>, StoreError> {
        self.run(false, |tx| {
            let t = tx.open_table(AGENT_SEEN).map_err(e)?;
            let mut out = HashMap::new();
            for row in t.iter().map_err(e)? {
                let (k, v) = row.map_err(e)?;
                out.insert(k.value().to_string(), v.value());
            }
            Ok(out)
        })
    }

    fn pins(&mut self) -> Result<Vec<ToolPin>, StoreError> {
        let rows = self.run(false, |tx| {
            let t = tx.open_table(TOOL_PINS).map_err(e)?;
            let mut rows = Vec::new();
            for row in t.iter().map_err(e)? {
                let (_, v) = row.map_err(e)?;
                rows.push(v.value().to_vec());
            }
            Ok(rows)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for v in rows {
            match serde_json::from_slice(&v) {
                Ok(p) => out.push(p),
                Err(x) => tracing::warn!(error = %x, "state: skipping an unreadable tool pin"),
            }
        }
        Ok(out)
    }

    fn put_pin(&mut self, p: &ToolPin) -> Result<(), StoreError> {
        let json = serde_json::to_vec(p).map_err(|x| StoreError(x.to_string()))?;
        let k = format!("{}\0{}", p.proxy, p.tool);
        self.run(true, |tx| {
            tx.open_table(TOOL_PINS)
                .map_err(e)?
                .insert(k.as_str(), &json[..])
                .map_err(e)?;
            Ok(())
        })
    }

    fn put_agents_seen(&mut self, seen: &[(String, u64)]) -> Result<(), StoreError> {
        self.run(true, |tx| {
            let mut t = tx.open_table(AGENT_SEEN).map_err(e)?;
            for (id, s) in seen {
                let cur = t.get(id.as_str()).map_err(e)?.map(|g| g.value());
                if cur.is_none_or(|c| c < *s) {
                    t.insert(id.as_str(), *s).map_err(e)?;
                }
            }
            Ok(())
        })
    }
}
