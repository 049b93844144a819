//! The bounded lock-free queue between the workers (producers) and the audit writer thread (the
//! one consumer). **The only `unsafe` code in the crate**; each block says why it is sound.
//!
//! # Shape: one Vyukov bounded MPMC queue, used as MPSC
//!
//! Dmitry Vyukov's bounded queue: a power-of-two array of slots, each with a sequence number;
//! a producer claims position `p` by CAS on `enqueue_pos` when slot `p & mask` has `seq == p`,
//! writes the value and publishes it with `seq = p + 1` (Release); the consumer takes position `p`
//! when `seq == p + 1` and frees the slot for the next lap with `seq = p + capacity`.
//!
//! Chosen over per-worker SPSC rings because: one queue gives the writer one total order close
//! to completion order (no k-way merge, no starvation of a quiet worker's ring), one drop counter
//! and one depth gauge, and a capacity that is shared by whichever worker is busy instead of
//! being split per core. The cost is one CAS on a shared cache line per record — tens of
//! nanoseconds even when contended by a few cores, against a per-call budget of microseconds.
//! `pop` is MPMC-correct too (it also CASes), so a second consumer would be safe, not just wrong.
//!
//! # Full queue
//!
//! [`Ring::try_push`] never waits. [`Ring::push`] applies the [`OnFull`] policy: `Drop` counts
//! the record in [`Ring::dropped`] at once; `Block` spins, then yields, retrying for at most
//! [`Ring::block_budget`] (50 ms by default) before counting the drop — it never blocks forever,
//! but note it stalls the worker thread (every connection on that core) while it waits, so it is
//! for deployments where losing a record is worse than a latency spike.
//!
//! # Waking the consumer
//!
//! The consumer parks in [`Ring::wait`] when the queue is empty; a producer unparks it only if
//! it announced it is going to sleep (one relaxed load per push in the common case). A
//! `SeqCst` fence on both sides (Dekker-style) makes a lost wake-up impossible; the consumer
//! also parks with a timeout as a second line of defence.
#![allow(unsafe_code)]

use crate::util::clock;
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::thread::Thread;
use std::time::Duration;

/// What [`Ring::push`] does when the ring is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Spin/yield up to the block budget, then count a drop.
    Block,
    /// Count a drop at once.
    #[default]
    Drop,
}

impl OnFull {
    /// `"block"` or `"drop"` (the `[audit] on_full` key).
    pub fn parse(s: &str) -> Option<OnFull> {
        match s {
            "block" => Some(OnFull::Block),
            "drop" => Some(OnFull::Drop),
            _ => None,
        }
    }
}

/// Default bound on how long a `Block` push may wait.
pub const DEFAULT_BLOCK_BUDGET: Duration = Duration::from_millis(50);

#[repr(align(128))]
struct CachePadded<T>(T);

struct Slot<T> {
    seq: AtomicUsize,
    val: UnsafeCell<MaybeUninit<T>>,
}

/// A bounded multi-producer queue; see the module docs.
pub struct Ring<T> {
    slots: Box<[Slot<T>]>,
    mask: usize,
    enqueue_pos: CachePadded<AtomicUsize>,
    dequeue_pos: CachePadded<AtomicUsize>,
    dropped: CachePadded<AtomicU64>,
    sleeping: CachePadded<AtomicBool>,
    consumer: OnceLock<Thread>,
    on_full: OnFull,
    block_budget: Duration,
}

// SAFETY: a slot's value is accessed only by the one thread that won the CAS for its position
// (the producer writing it, later the consumer reading it), and the hand-over is ordered by the
// slot's `seq` (Release store / Acquire load). So sharing `&Ring<T>` between threads only ever
// moves `T`s from one thread to another, which `T: Send` permits.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    /// A ring holding `capacity` items (rounded up to a power of two, at least 2).
    pub fn new(capacity: usize, on_full: OnFull) -> Self {
        let cap = capacity.clamp(2, 1 << 30).next_power_of_two();
        let slots = (0..cap)
            .map(|i| Slot {
                seq: AtomicUsize::new(i),
                val: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Ring {
            slots,
            mask: cap - 1,
            enqueue_pos: CachePadded(AtomicUsize::new(0)),
            dequeue_pos: CachePadded(AtomicUsize::new(0)),
            dropped: CachePadded(AtomicU64::new(0)),
            sleeping: CachePadded(AtomicBool::new(false)),
            consumer: OnceLock::new(),
            on_full,
            block_budget: DEFAULT_BLOCK_BUDGET,
        }
    }

    /// Changes how long a `Block` push may wait (tests, config).
    pub fn with_block_budget(mut self, budget: Duration) -> Self {
        self.block_budget = budget;
        self
    }

    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    pub fn on_full(&self) -> OnFull {
        self.on_full
    }

    pub fn block_budget(&self) -> Duration {
        self.block_budget
    }

    /// Records refused because the ring was full (monotonic; the writer turns increases into gap
    /// records).
    pub fn dropped(&self) -> u64 {
        self.dropped.0.load(Ordering::Relaxed)
    }

    /// Approximate number of queued items (for the queue-depth gauge).
    pub fn len(&self) -> usize {
        // two unsynchronised reads: racing pushes and pops can make the difference briefly
        // negative or larger than the ring; clamp both ways
        let head = self.dequeue_pos.0.load(Ordering::Relaxed);
        let tail = self.enqueue_pos.0.load(Ordering::Relaxed);
        let d = tail.wrapping_sub(head) as isize;
        d.clamp(0, self.capacity() as isize) as usize
    }

    /// Positions claimed by producers so far (items pushed, or being written into their slot).
    pub fn pushed(&self) -> usize {
        self.enqueue_pos.0.load(Ordering::SeqCst)
    }

    /// Whether the next `pop` would find nothing (exact for the consumer).
    pub fn is_empty(&self) -> bool {
        let pos = self.dequeue_pos.0.load(Ordering::Relaxed);
        let slot = &self.slots[pos & self.mask];
        slot.seq.load(Ordering::Acquire) != pos.wrapping_add(1)
    }

    /// Enqueues `v` if there is room; never waits, never counts.
    pub fn try_push(&self, v: T) -> Result<(), T> {
        self.try_push_pos(v).map(|_| ())
    }

    /// Like [`Ring::try_push`], returning the position `v` took (0 for the first item ever;
    /// the consumer pops positions in order).
    pub fn try_push_pos(&self, v: T) -> Result<usize, T> {
        let mut pos = self.enqueue_pos.0.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos & self.mask];
            let seq = slot.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos) as isize;
            if diff == 0 {
                match self.enqueue_pos.0.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: winning the CAS for `pos` while `seq == pos` makes this thread
                        // the only one that may touch the slot until it publishes `pos + 1`: other
                        // producers now race for `pos + 1`, and the consumer waits for
                        // `seq == pos + 1`. The slot is empty (it was freed by the consumer with
                        // `seq = pos`, or never used), so writing does not leak a value.
                        unsafe { (*slot.val.get()).write(v) };
                        slot.seq.store(pos.wrapping_add(1), Ordering::Release);
                        self.wake_consumer();
                        return Ok(pos);
                    }
                    Err(actual) => pos = actual,
                }
            } else if diff < 0 {
                return Err(v);
            } else {
                pos = self.enqueue_pos.0.load(Ordering::Relaxed);
            }
        }
    }

    /// Enqueues `v`, applying the [`OnFull`] policy when full. `Err(v)` means the record was
    /// dropped and counted.
    pub fn push(&self, v: T) -> Result<(), T> {
        self.push_pos(v).map(|_| ())
    }

    /// Like [`Ring::push`], returning the position the item took.
    pub fn push_pos(&self, v: T) -> Result<usize, T> {
        let v = match self.try_push_pos(v) {
            Ok(p) => return Ok(p),
            Err(v) => v,
        };
        match self.on_full {
            OnFull::Drop => {
                self.dropped.0.fetch_add(1, Ordering::Relaxed);
                Err(v)
            }
            OnFull::Block => self.push_blocking(v),
        }
    }

    #[cold]
    fn push_blocking(&self, mut v: T) -> Result<usize, T> {
        let deadline = clock::now() + self.block_budget;
        let mut spins = 0u32;
        loop {
            self.force_wake_consumer();
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            spins = spins.wrapping_add(1);
            match self.try_push_pos(v) {
                Ok(p) => return Ok(p),
                Err(back) => v = back,
            }
            if spins.is_multiple_of(16) && clock::now() >= deadline {
                self.dropped.0.fetch_add(1, Ordering::Relaxed);
                return Err(v);
            }
        }
    }

    /// Dequeues the oldest item, if any.
    pub fn pop(&self) -> Option<T> {
        let mut pos = self.dequeue_pos.0.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos & self.mask];
            let seq = slot.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos.wrapping_add(1)) as isize;
            if diff == 0 {
                match self.dequeue_pos.0.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: `seq == pos + 1` (Acquire) means the producer that claimed `pos`
                        // has fully written the value (its Release store), and winning the CAS for
                        // `pos` makes this the only reader. The value is read out exactly once;
                        // storing `pos + capacity` below hands the now-logically-empty slot to the
                        // producer of the next lap, which overwrites without dropping.
                        let v = unsafe { (*slot.val.get()).assume_init_read() };
                        slot.seq
                            .store(pos.wrapping_add(self.mask + 1), Ordering::Release);
                        return Some(v);
                    }
                    Err(actual) => pos = actual,
                }
            } else if diff < 0 {
                return None;
            } else {
                pos = self.dequeue_pos.0.load(Ordering::Relaxed);
            }
        }
    }

    /// Registers the calling thread as the consumer that [`Ring::wait`] parks and producers wake.
    pub fn register_consumer(&self) {
        let _ = self.consumer.set(std::thread::current());
    }

    /// Consumer side: parks until an item may be available or `timeout` passes. Returns at once
    /// if the ring is not empty. Spurious returns are possible; callers loop.
    pub fn wait(&self, timeout: Duration) {
        self.sleeping.0.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.is_empty() {
            std::thread::park_timeout(timeout);
        }
        self.sleeping.0.store(false, Ordering::Relaxed);
    }

    /// Wakes the consumer (shutdown, tests).
    pub fn force_wake_consumer(&self) {
        self.sleeping.0.store(false, Ordering::Relaxed);
        if let Some(t) = self.consumer.get() {
            t.unpark();
        }
    }

    #[inline]
    fn wake_consumer(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.0.load(Ordering::Relaxed)
            && self.sleeping.0.swap(false, Ordering::AcqRel)
            && let Some(t) = self.consumer.get()
        {
            t.unpark();
        }
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashSet, VecDeque};
    use std::sync::Arc;

    #[test]
    fn fifo_and_full() {
        let r = Ring::new(3, OnFull::Drop);
        assert_eq!(r.capacity(), 4);
        assert!(r.is_empty());
        for i in 0..4 {
            assert!(r.push(i).is_ok());
        }
        assert_eq!(r.len(), 4);
        assert_eq!(r.push(9), Err(9));
        assert_eq!(r.dropped(), 1);
        assert_eq!(r.try_push(9), Err(9));
        assert_eq!(r.dropped(), 1);
        assert_eq!(r.pop(), Some(0));
        assert!(r.push(4).is_ok());
        assert_eq!(
            (1..5).map(|_| r.pop().unwrap()).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(r.pop(), None);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn block_policy_waits_bounded_then_drops() {
        let r = Ring::new(2, OnFull::Block).with_block_budget(Duration::from_millis(20));
        r.push(1).unwrap();
        r.push(2).unwrap();
        let t0 = clock::now();
        assert_eq!(r.push(3), Err(3));
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(20), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        assert_eq!(r.dropped(), 1);
    }

    #[test]
    fn block_policy_succeeds_when_consumer_frees_room() {
        let r = Arc::new(Ring::new(2, OnFull::Block).with_block_budget(Duration::from_secs(10)));
        r.push(1).unwrap();
        r.push(2).unwrap();
        let c = {
            let r = r.clone();
            std::thread::spawn(move || {
                r.register_consumer();
                let mut got = Vec::new();
                while got.len() < 3 {
                    match r.pop() {
                        Some(v) => got.push(v),
                        None => r.wait(Duration::from_millis(5)),
                    }
                }
                got
            })
        };
        assert!(r.push(3).is_ok());
        assert_eq!(c.join().unwrap(), [1, 2, 3]);
        assert_eq!(r.dropped(), 0);
    }

    #[test]
    fn drop_releases_queued_values() {
        let v = Arc::new(());
        {
            let r = Ring::new(8, OnFull::Drop);
            for _ in 0..5 {
                r.push(v.clone()).unwrap();
            }
            r.pop();
        }
        assert_eq!(Arc::strong_count(&v), 1);
    }

    /// 4 producers × 100k through a small ring: every item arrives exactly once, in per-producer
    /// order, and nothing is dropped under the block policy with a consumer running.
    #[test]
    fn stress_mpsc_exactly_once_in_order() {
        const P: usize = 4;
        const N: u64 = 100_000;
        let r = Arc::new(Ring::new(1024, OnFull::Block).with_block_budget(Duration::from_secs(30)));
        let consumer = {
            let r = r.clone();
            std::thread::spawn(move || {
                r.register_consumer();
                let mut next = [0u64; P];
                let mut total = 0u64;
                while total < P as u64 * N {
                    match r.pop() {
                        Some((p, i)) => {
                            let p: usize = p;
                            assert_eq!(i, next[p], "producer {p} out of order");
                            next[p] += 1;
                            total += 1;
                        }
                        None => r.wait(Duration::from_millis(10)),
                    }
                }
                next
            })
        };
        let producers: Vec<_> = (0..P)
            .map(|p| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..N {
                        let mut item = (p, i);
                        loop {
                            match r.push(item) {
                                Ok(()) => break,
                                Err(back) => item = back,
                            }
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let next = consumer.join().unwrap();
        assert_eq!(next, [N; P]);
        assert!(r.is_empty());
        assert_eq!(r.pop(), None);
    }

    /// Drop policy under pressure: delivered + dropped == pushed, no duplicates.
    #[test]
    fn stress_drop_policy_accounts_every_item() {
        const P: u64 = 4;
        const N: u64 = 50_000;
        let r = Arc::new(Ring::new(64, OnFull::Drop));
        let done = Arc::new(AtomicBool::new(false));
        let consumer = {
            let (r, done) = (r.clone(), done.clone());
            std::thread::spawn(move || {
                let mut seen = HashSet::new();
                loop {
                    match r.pop() {
                        Some(v) => assert!(seen.insert(v)),
                        None if done.load(Ordering::Acquire) && r.is_empty() => break,
                        None => std::thread::yield_now(),
                    }
                }
                seen.len() as u64
            })
        };
        let producers: Vec<_> = (0..P)
            .map(|p| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..N {
                        let _ = r.push(p * N + i);
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        done.store(true, Ordering::Release);
        let delivered = consumer.join().unwrap();
        assert_eq!(delivered + r.dropped(), P * N);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u32),
        Pop,
    }

    proptest! {
        #[test]
        fn sequential_matches_vecdeque(
            cap in 1usize..20,
            ops in proptest::collection::vec(
                prop_oneof![any::<u32>().prop_map(Op::Push), Just(Op::Pop)], 0..400)
        ) {
            let r = Ring::new(cap, OnFull::Drop);
            let cap = r.capacity();
            let mut model = VecDeque::new();
            let mut dropped = 0u64;
            for op in ops {
                match op {
                    Op::Push(v) => {
                        let res = r.push(v);
                        if model.len() < cap {
                            prop_assert_eq!(res, Ok(()));
                            model.push_back(v);
                        } else {
                            prop_assert_eq!(res, Err(v));
                            dropped += 1;
                        }
                    }
                    Op::Pop => prop_assert_eq!(r.pop(), model.pop_front()),
                }
                prop_assert_eq!(r.len(), model.len());
                prop_assert_eq!(r.is_empty(), model.is_empty());
                prop_assert_eq!(r.dropped(), dropped);
            }
        }
    }
}
