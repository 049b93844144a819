//! Approval metrics, written by the store thread and rendered by `GET /metrics`: the pending
//! gauge, decisions by outcome, and the time from request to decision.
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the time-to-decision histogram.
pub const DECISION_BUCKETS_S: [u64; 10] = [1, 5, 15, 60, 300, 900, 3600, 14_400, 43_200, 86_400];

#[derive(Default)]
pub struct ApprovalStats {
    pub pending: AtomicU64,
    approved: AtomicU64,
    denied: AtomicU64,
    expired: AtomicU64,
    buckets: [AtomicU64; DECISION_BUCKETS_S.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl ApprovalStats {
    /// One decision (`approved` | `denied` | `expired`) `waited_us` after the request.
    pub fn decided(&self, outcome: &str, waited_us: u64) {
        match outcome {
            "approved" => &self.approved,
            "denied" => &self.denied,
            _ => &self.expired,
        }
        .fetch_add(1, Relaxed);
        if outcome == "expired" {
            return;
        }
        let secs = waited_us / 1_000_000;
        let i = DECISION_BUCKETS_S
            .iter()
            .position(|b| secs < *b)
            .unwrap_or(DECISION_BUCKETS_S.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(waited_us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP portcullis_approvals_pending Approvals waiting for a decision.\n# TYPE portcullis_approvals_pending gauge\nportcullis_approvals_pending {}",
            self.pending.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP portcullis_approval_decisions_total Approvals decided, by outcome.\n# TYPE portcullis_approval_decisions_total counter"
        );
        for (name, v) in [
            ("approved", &self.approved),
            ("denied", &self.denied),
            ("expired", &self.expired),
        ] {
            let _ = writeln!(
                out,
                "portcullis_approval_decisions_total{{outcome=\"{name}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_approval_decision_seconds Time from an approval's request to its decision.\n# TYPE portcullis_approval_decision_seconds histogram"
        );
        let mut cum = 0;
        for (i, b) in DECISION_BUCKETS_S.iter().enumerate() {
            cum += self.buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "portcullis_approval_decision_seconds_bucket{{le=\"{b}\"}} {cum}"
            );
        }
        cum += self.buckets[DECISION_BUCKETS_S.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "portcullis_approval_decision_seconds_bucket{{le=\"+Inf\"}} {cum}\nportcullis_approval_decision_seconds_sum {:.6}\nportcullis_approval_decision_seconds_count {}",
            self.sum_us.load(Relaxed) as f64 / 1e6,
            self.count.load(Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_text() {
        let s = ApprovalStats::default();
        s.decided("approved", 500_000);
        s.decided("denied", 70_000_000);
        s.decided("expired", 0);
        s.pending.store(3, Relaxed);
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("portcullis_approvals_pending 3\n"), "{out}");
        assert!(out.contains("portcullis_approval_decisions_total{outcome=\"approved\"} 1\n"));
        assert!(out.contains("portcullis_approval_decisions_total{outcome=\"expired\"} 1\n"));
        assert!(out.contains("portcullis_approval_decision_seconds_bucket{le=\"1\"} 1\n"));
        assert!(out.contains("portcullis_approval_decision_seconds_bucket{le=\"60\"} 1\n"));
        assert!(out.contains("portcullis_approval_decision_seconds_bucket{le=\"300\"} 2\n"));
        assert!(out.contains("portcullis_approval_decision_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(out.contains("portcullis_approval_decision_seconds_count 2\n"));
        assert!(out.contains("portcullis_approval_decision_seconds_sum 70.500000\n"));
    }
}
