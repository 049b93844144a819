//! Managed agents (issue 16) as the data plane sees them: agents issued, rotated and revoked
//! through the admin API live in the store (`agents` keyspace, key hashes only); the store
//! thread publishes each change as a new immutable [`Published`] snapshot and bumps a
//! generation counter. Each worker keeps its own copy ([`Local`]) and, per call, does one
//! atomic load of the generation: only when it moved does the worker copy the new snapshot
//! (so a revocation reaches every worker with its next call). With `[state] redis` the store
//! thread polls the shared generation every 250 ms, so a change made through another replica
//! is published here within that.
//!
//! "Last seen" is coarse: a call stores the time into the agent's shared cell only when it
//! is more than [`SEEN_GRAIN_S`] newer than what the cell holds (a relaxed load otherwise),
//! and the store thread writes the changed cells to the store in one batch every few seconds.
// The publication slot is written by the store thread and read by a worker only when the
// generation moved (a reload-like event, not a per-call lock).
#![allow(clippy::disallowed_types)]
use super::schema::ManagedAgent;
use crate::identity::{Agent, AuthnError};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A call moves an agent's "last seen" only when it is this much newer (seconds).
pub const SEEN_GRAIN_S: u64 = 5;

/// One key of a managed agent, as published.
#[derive(Clone)]
struct KeyEntry {
    agent: Arc<Agent>,
    /// The key is refused from this instant (µs since the epoch): a rotated key's grace end.
    not_after_us: Option<u64>,
    seen: Arc<AtomicU64>,
}

/// A snapshot of the managed agents, built by the store thread.
#[derive(Default)]
pub struct Published {
    keys: HashMap<[u8; 32], KeyEntry>,
    /// Some managed agent exists (even revoked): calls then need a credential.
    any: bool,
}

/// The publication point shared by the store thread and the workers.
#[derive(Default)]
pub struct Shared {
    generation: AtomicU64,
    slot: Mutex<Arc<Published>>,
    /// "Last seen" cells by agent id (kept across snapshots).
    seen: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Shared {
    /// The generation of the published snapshot (one atomic load: the per-call cost).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> Arc<Published> {
        self.slot
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Store thread: publishes the agents `list` (revoked ones included: they keep credentials
    /// required) and bumps the generation.
    pub fn publish(&self, list: &[ManagedAgent]) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys = HashMap::new();
        for a in list {
            let cell = seen.entry(a.id.clone()).or_default().clone();
            if a.revoked_us.is_some() {
                continue;
            }
            let agent = Arc::new(Agent {
                id: a.id.clone(),
                roles: a.roles.clone(),
                expires_at: a
                    .expires_us
                    .map(|us| i64::try_from(us / 1_000_000).unwrap_or(i64::MAX)),
            });
            if let Some(h) = crate::util::hex::decode32(a.key_sha256.as_bytes()) {
                keys.insert(
                    h,
                    KeyEntry {
                        agent: agent.clone(),
                        not_after_us: None,
                        seen: cell.clone(),
                    },
                );
            }
            if let (Some(p), Some(until)) = (&a.prev_key_sha256, a.prev_until_us)
                && let Some(h) = crate::util::hex::decode32(p.as_bytes())
            {
                keys.entry(h).or_insert(KeyEntry {
                    agent,
                    not_after_us: Some(until),
                    seen: cell,
                });
            }
        }
        drop(seen);
        let p = Arc::new(Published {
            keys,
            any: !list.is_empty(),
        });
        *self.slot.lock().unwrap_or_else(|x| x.into_inner()) = p;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Store thread: the "last seen" cells (unix seconds, 0 = never) by agent id.
    pub fn seen(&self) -> Vec<(String, u64)> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .map(|(id, c)| (id.clone(), c.load(Ordering::Relaxed)))
            .filter(|(_, s)| *s > 0)
            .collect()
    }
}

/// One key in a worker's copy: the agent, the key's grace end (µs), the "last seen" cell.
type LocalKey = (Rc<Agent>, Option<u64>, Arc<AtomicU64>);

/// A [`Local`] at a time, as the authentication stage asks it.
pub struct LocalAt<'a>(pub &'a Local, pub u64);

impl crate::identity::MoreKeys for LocalAt<'_> {
    fn required(&self) -> bool {
        self.0.required()
    }

    fn lookup(&self, hash: &[u8; 32]) -> Option<Result<Rc<Agent>, AuthnError>> {
        self.0.lookup(hash, self.1)
    }
}

/// A worker's copy of the published snapshot (`Rc`s: nothing shared on lookup but the "last
/// seen" cell, written at most every [`SEEN_GRAIN_S`]).
pub struct Local {
    pub generation: u64,
    keys: HashMap<[u8; 32], LocalKey>,
    any: bool,
}

impl Local {
    /// Copies the snapshot published now (call when `shared.generation()` moved).
    pub fn copy(shared: &Shared) -> Local {
        // the generation first: a snapshot published meanwhile is copied on the next call
        let generation = shared.generation();
        let p = shared.snapshot();
        let mut by_id: HashMap<&str, Rc<Agent>> = HashMap::new();
        let keys = p
            .keys
            .iter()
            .map(|(h, e)| {
                let a = by_id
                    .entry(e.agent.id.as_str())
                    .or_insert_with(|| Rc::new((*e.agent).clone()))
                    .clone();
                (*h, (a, e.not_after_us, e.seen.clone()))
            })
            .collect();
        Local {
            generation,
            keys,
            any: p.any,
        }
    }

    /// Some managed agent exists: every call needs a credential.
    pub fn required(&self) -> bool {
        self.any
    }

    /// The managed agent a key (by its SHA-256) belongs to, if any: `Some(Err)` when it is
    /// expired (`CredentialExpired`) or past its rotation grace (`Unauthenticated`).
    pub fn lookup(&self, hash: &[u8; 32], now_us: u64) -> Option<Result<Rc<Agent>, AuthnError>> {
        let (agent, not_after, seen) = self.keys.get(hash)?;
        if not_after.is_some_and(|t| now_us >= t) {
            return Some(Err(AuthnError::Unauthenticated));
        }
        let now_s = now_us / 1_000_000;
        if let Some(exp) = agent.expires_at
            && i64::try_from(now_s).unwrap_or(i64::MAX) >= exp
        {
            return Some(Err(AuthnError::CredentialExpired));
        }
        if seen.load(Ordering::Relaxed) + SEEN_GRAIN_S <= now_s {
            seen.store(now_s, Ordering::Relaxed);
        }
        Some(Ok(agent.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, key: &str) -> ManagedAgent {
        ManagedAgent {
            id: id.into(),
            key_sha256: crate::identity::key_sha256_hex(key),
            roles: vec!["support".into()],
            created_us: 1,
            expires_us: None,
            revoked_us: None,
            prev_key_sha256: None,
            prev_until_us: None,
            created_by: None,
        }
    }

    fn h(key: &str) -> [u8; 32] {
        crate::identity::key_sha256(key.as_bytes())
    }

    #[test]
    fn publish_revoke_rotate_expire() {
        let s = Shared::default();
        let l = Local::copy(&s);
        assert!(!l.required());
        assert!(l.lookup(&h("pcs_a"), 10).is_none());
        let mut a = agent("a", "pcs_a");
        s.publish(std::slice::from_ref(&a));
        assert_ne!(s.generation(), l.generation);
        let l = Local::copy(&s);
        assert!(l.required());
        let got = l.lookup(&h("pcs_a"), 10_000_000).unwrap().unwrap();
        assert_eq!((got.id.as_str(), got.roles.len()), ("a", 1));
        assert_eq!(s.seen(), vec![("a".to_string(), 10)]);
        // rotation: the old key works until its grace ends, the new one at once
        a.prev_key_sha256 = Some(a.key_sha256.clone());
        a.prev_until_us = Some(20_000_000);
        a.key_sha256 = crate::identity::key_sha256_hex("pcs_b");
        s.publish(std::slice::from_ref(&a));
        let l = Local::copy(&s);
        assert!(l.lookup(&h("pcs_a"), 19_999_999).unwrap().is_ok());
        assert_eq!(
            l.lookup(&h("pcs_a"), 20_000_000).unwrap().unwrap_err(),
            AuthnError::Unauthenticated
        );
        assert!(l.lookup(&h("pcs_b"), 30_000_000).unwrap().is_ok());
        // expiry
        a.expires_us = Some(40_000_000);
        s.publish(std::slice::from_ref(&a));
        let l = Local::copy(&s);
        assert_eq!(
            l.lookup(&h("pcs_b"), 40_000_000).unwrap().unwrap_err(),
            AuthnError::CredentialExpired
        );
        // revocation: no key of it is known, credentials still required
        a.revoked_us = Some(5);
        s.publish(std::slice::from_ref(&a));
        let l = Local::copy(&s);
        assert!(l.lookup(&h("pcs_b"), 30_000_000).is_none());
        assert!(l.required());
    }
}
