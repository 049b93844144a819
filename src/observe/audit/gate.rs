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
//!   a call's record and waits for it before it releases the response head (`CallLog::
//!   durable`), so a `kill -9` or a power cut cannot lose the record of an answered call.
//!
//! A call held for an approval waits the same way, on [`AuditRing::ticket_now`] taken when its
//! approval's decision woke it: with `fsync = "always"`, the decision's record is on disk
//! before the held call goes upstream.
//!
//! A waiting call does not poll: it hands its waker (with its ticket) to the writer through a
//! channel and re-checks once (so a sync that happened in between is not missed); the writer
//! wakes the waiters whose ticket is synced (or lost, or all of them when writes fail) right
//! after each `fdatasync` and on every loop turn. A 1 ms timer re-check stays as a backstop.
//!
//! Tickets are ring positions: the ring is FIFO and the writer its one consumer, so the writer
//! knows each record's position by counting pops, and everything up to the last synced record
//! is synced. A record the writer had to drop (backlog overflow) raises `lost_through`; a
//! waiter whose ticket is not above it is told "lost" (conservatively: it may be a later one).
#![forbid(unsafe_code)]

use super::record::AuditRecord;
use super::ring::{OnFull, Ring};
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
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

/// A call waiting for its ticket: (ticket, waker).
type Waiter = (u64, Waker);

/// The ring of audit records and the writer's health; derefs to the [`Ring`].
pub struct AuditRing {
    ring: Ring<AuditRecord>,
    on_error: OnError,
    durable: bool,
    /// `fsync = "always"` (whatever `on_error`).
    fsync_always: bool,
    failing: AtomicBool,
    synced_through: AtomicU64,
    lost_through: AtomicU64,
    /// Waiters handed to the writer.
    waiters: (flume::Sender<Waiter>, flume::Receiver<Waiter>),
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
            fsync_always: durable,
            failing: AtomicBool::new(false),
            synced_through: AtomicU64::new(0),
            lost_through: AtomicU64::new(0),
            waiters: flume::unbounded(),
        }
    }

    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    /// Whether a call's record must be durable before its response is released.
    pub fn durable(&self) -> bool {
        self.durable
    }

    /// Whether every write is followed by an `fdatasync` (`fsync = "always"`).
    pub fn fsync_always(&self) -> bool {
        self.fsync_always
    }

    /// The ticket of the last record pushed so far (by any thread), `None` if none was. The
    /// ring is FIFO, so once this ticket is durable every record pushed before this call is:
    /// a held call waits on it for its approval's decision record, which the store thread
    /// pushed before it woke the call.
    pub fn ticket_now(&self) -> Option<u64> {
        Some(self.ring.pushed() as u64).filter(|t| *t > 0)
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
        if self.lost_through.load(Ordering::SeqCst) >= ticket {
            Durability::Lost
        } else if self.synced_through.load(Ordering::SeqCst) >= ticket {
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
        loop {
            match self.durability(t) {
                Durability::Durable => return true,
                Durability::Lost => return false,
                Durability::Pending => {}
            }
            let now = crate::util::clock::now();
            if self.failing() || now >= deadline {
                return false;
            }
            self.ring.force_wake_consumer();
            // woken by the writer; the timer is only a backstop
            let backstop = Duration::from_millis(1).min(deadline - now);
            let _ = monoio::time::timeout(
                backstop,
                Notified {
                    ring: self,
                    ticket: t,
                    sent: false,
                },
            )
            .await;
        }
    }

    // ---- the writer's side ----

    pub(crate) fn set_failing(&self, f: bool) {
        self.failing.store(f, Ordering::Relaxed);
    }

    pub(crate) fn set_synced_through(&self, t: u64) {
        self.synced_through.fetch_max(t, Ordering::SeqCst);
    }

    pub(crate) fn set_lost_through(&self, t: u64) {
        self.lost_through.fetch_max(t, Ordering::AcqRel);
    }

    /// Wakes the waiters that are done (synced or lost; all of them while writes fail). `parked`
    /// is the writer's list of waiters still pending.
    pub(crate) fn wake_waiters(&self, parked: &mut Vec<(u64, Waker)>) {
        parked.extend(self.waiters.1.try_iter());
        if parked.is_empty() {
            return;
        }
        let failing = self.failing();
        parked.retain(|(t, w)| {
            let done = failing || self.durability(*t) != Durability::Pending;
            if done {
                w.wake_by_ref();
            }
            !done
        });
    }
}

/// Ready once the writer wakes it (it re-checks the ticket after handing over its waker).
struct Notified<'a> {
    ring: &'a AuditRing,
    ticket: u64,
    sent: bool,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.sent {
            return Poll::Ready(());
        }
        self.sent = true;
        let _ = self.ring.waiters.0.send((self.ticket, cx.waker().clone()));
        // a sync between the caller's check and the hand-over would not wake us: look again
        if self.ring.failing() || self.ring.durability(self.ticket) != Durability::Pending {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}
