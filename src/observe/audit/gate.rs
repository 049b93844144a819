//! The data plane's side of the audit trail: [`AuditRing`] is the ring the workers push into,
//! plus the writer's health as the workers need it for `[audit] on_error`:
//!
//! - [`AuditRing::accepting`]: under `on_error = "refuse"`, `false` while the writer's last
//!   write failed or the ring is full — the pipeline then answers `503 audit_unavailable`
//!   before anything goes upstream. The writer clears the flag on its next successful write,
//!   so the gateway recovers by itself.
//! - [`AuditRing::push_record`] returns a ticket (the record's ring position + 1), and
//!   [`AuditRing::wait_durable`] waits until the writer's `fdatasync` covered that ticket. With
//!   `fsync = "always"` and `on_error = "refuse"` ([`AuditRing::durable`]) the pipeline commits
//!   a call's record and waits for it before it releases the response head (`Exchange::
//!   durable`), so a `kill -9` or a power cut cannot lose the record of an answered call.
//!
//! Tickets are ring positions: the ring is FIFO and the writer its one consumer, so the writer
//! knows each record's position by counting pops, and everything up to the last synced record
//! is synced. A record the writer had to drop (backlog overflow) raises `lost_through`; a
//! waiter whose ticket is not above it is told "lost" (conservatively: it may be a later one).
#![forbid(unsafe_code)]

use super::record::AuditRecord;
use super::ring::{OnFull, Ring};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// `[audit] on_error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnError {
    /// Serve calls whatever happens to the trail (losses become gap records).
    #[default]
    Continue,
    /// No record, no call: refuse calls while records cannot be written.
    Refuse,
}

impl OnError {
    pub fn parse(s: &str) -> Option<OnError> {
        match s {
            "continue" => Some(OnError::Continue),
            "refuse" => Some(OnError::Refuse),
            _ => None,
        }
    }
}

/// The ring of audit records and the writer's health; derefs to the [`Ring`].
pub struct AuditRing {
    ring: Ring<AuditRecord>,
    on_error: OnError,
    durable: bool,
    failing: AtomicBool,
    synced_through: AtomicU64,
    lost_through: AtomicU64,
}

impl Deref for AuditRing {
    type Target = Ring<AuditRecord>;
    fn deref(&self) -> &Ring<AuditRecord> {
        &self.ring
    }
}

/// What became of a ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    Durable,
    Pending,
    Lost,
}

impl AuditRing {
    pub fn new(capacity: usize, on_full: OnFull, on_error: OnError, durable: bool) -> Self {
        AuditRing {
            ring: Ring::new(capacity, on_full),
            on_error,
            durable: durable && on_error == OnError::Refuse,
            failing: AtomicBool::new(false),
            synced_through: AtomicU64::new(0),
            lost_through: AtomicU64::new(0),
        }
    }

    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    /// Whether a call's record must be durable before its response is released.
    pub fn durable(&self) -> bool {
        self.durable
    }

    /// Whether the writer's last attempt to write failed (cleared by the next success).
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Whether a call may go ahead: always under `continue`; under `refuse` only while the
    /// writer is writing and the ring has room.
    pub fn accepting(&self) -> bool {
        self.on_error == OnError::Continue
            || (!self.failing() && self.ring.len() < self.ring.capacity())
    }

    /// Pushes a record (applying `on_full`); its ticket, or `None` if it was dropped.
    pub fn push_record(&self, r: AuditRecord) -> Option<u64> {
        self.ring.push_pos(r).ok().map(|p| p as u64 + 1)
    }

    pub fn durability(&self, ticket: u64) -> Durability {
        if self.lost_through.load(Ordering::Acquire) >= ticket {
            Durability::Lost
        } else if self.synced_through.load(Ordering::Acquire) >= ticket {
            Durability::Durable
        } else {
            Durability::Pending
        }
    }

    /// Waits (on the worker's timer, never blocking its thread) until `ticket` is synced.
    /// `false` if the record was dropped, the writer is failing, or `timeout` passed first.
    pub async fn wait_durable(&self, ticket: Option<u64>, timeout: Duration) -> bool {
        let Some(t) = ticket else { return false };
        let deadline = crate::util::clock::now() + timeout;
        let mut pause = Duration::from_micros(50);
        loop {
            match self.durability(t) {
                Durability::Durable => return true,
                Durability::Lost => return false,
                Durability::Pending => {}
            }
            if self.failing() || crate::util::clock::now() >= deadline {
                return false;
            }
            self.ring.force_wake_consumer();
            monoio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    // ---- the writer's side ----

    pub(crate) fn set_failing(&self, f: bool) {
        self.failing.store(f, Ordering::Relaxed);
    }

    pub(crate) fn set_synced_through(&self, t: u64) {
        self.synced_through.fetch_max(t, Ordering::AcqRel);
    }

    pub(crate) fn set_lost_through(&self, t: u64) {
        self.lost_through.fetch_max(t, Ordering::AcqRel);
    }
}
