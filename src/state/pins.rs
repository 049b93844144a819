//! Pinned MCP tool definitions (issue 15, rug-pull protection): the process-wide pin table
//! every worker and the admin API share. A worker filtering a `tools/list` answer asks
//! [`PinTable::observe`] with the digest of each tool's definition (`mcp::pins`): the first
//! sight pins it; a later, different digest is recorded as pending and the tool is hidden and
//! its calls refused (`tool_changed`) until an operator accepts it ([`PinTable::accept`]). A
//! `tools/call` costs one map lookup ([`PinTable::changed`]), like the learned tags beside it.
//!
//! Config pins (`[[proxies.tools]] pin`) take precedence and are never stored. Every other pin
//! is written through to the state store (`tool_pins`, embedded or Redis) by the store thread,
//! which loads them at start (so pins survive a restart) and, with Redis, re-reads them when
//! the shared pins generation moves (another replica pinned or accepted): within 200 ms. Without
//! `[state]` the pins live in this process only and a restart pins afresh.
// Pin changes are rare (first sight, a change, an accept), not per call: the write-through
// sender sits behind a std Mutex taken only then.
#![allow(clippy::disallowed_types)]
use super::schema::ToolPin;
use std::sync::{Mutex, OnceLock};

/// Most pins kept (a server listing more tools than this gets the rest unpinned, logged).
pub const MAX_PINS: usize = 1 << 20;

/// One tool's pin as this process knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub sha256: String,
    pub pinned_us: u64,
    /// A changed definition seen since, waiting for an operator.
    pub pending: Option<String>,
    /// The pin comes from `[[proxies.tools]] pin` (not stored, not accepted through the API).
    pub from_config: bool,
}

/// Why an accept did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptError {
    /// No pin for that proxy and tool.
    Unknown,
    /// The tool has no changed definition waiting.
    NothingPending,
    /// The pin is in the config: change the config instead.
    FromConfig,
}

/// The pin table (see the module header).
#[derive(Default)]
pub struct PinTable {
    map: dashmap::DashMap<String, Pin>,
    /// The store thread's queue, when a state store runs (write-through).
    sink: Mutex<Option<flume::Sender<super::Cmd>>>,
}

/// The process-wide table.
pub fn registry() -> &'static PinTable {
    static T: OnceLock<PinTable> = OnceLock::new();
    T.get_or_init(PinTable::default)
}

fn key(proxy: &str, tool: &str) -> String {
    let mut k = String::with_capacity(proxy.len() + tool.len() + 1);
    k.push_str(proxy);
    k.push('\0');
    k.push_str(tool);
    k
}

fn now_us() -> u64 {
    u64::try_from(crate::util::clock::unix_now().as_micros()).unwrap_or(u64::MAX)
}

impl PinTable {
    /// The store thread: pins are written through to it from now on.
    pub fn attach(&self, tx: flume::Sender<super::Cmd>) {
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Whether a store keeps the pins (else they live in memory only).
    pub fn durable(&self) -> bool {
        self.sink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn persist(&self, proxy: &str, tool: &str, p: &Pin) {
        if p.from_config {
            return;
        }
        let g = self.sink.lock().unwrap_or_else(|x| x.into_inner());
        if let Some(tx) = &*g
            && tx
                .try_send(super::Cmd::PinPut(ToolPin {
                    proxy: proxy.to_string(),
                    tool: tool.to_string(),
                    definition_sha256: p.sha256.clone(),
                    pinned_us: p.pinned_us,
                    pending_sha256: p.pending.clone(),
                }))
                .is_err()
        {
            tracing::warn!(
                proxy,
                tool,
                "state: the store queue is full; a tool pin is kept in memory only"
            );
        }
    }

    /// A list answer of `proxy` showed `tool` with definition digest `sha256` (`config`: the
    /// config pin, if any). `true`: it is the pinned definition (or was just pinned); `false`:
    /// it changed (recorded as pending; the tool must be hidden).
    pub fn observe(&self, proxy: &str, tool: &str, sha256: &str, config: Option<&str>) -> bool {
        let k = key(proxy, tool);
        if let Some(p) = self.map.get(&k) {
            let same_source =
                p.from_config == config.is_some() && config.is_none_or(|c| c == p.sha256);
            if same_source && p.sha256 == sha256 && p.pending.is_none() {
                return true; // the common case: a read lock only
            }
        }
        // (before the entry: `len` read-locks every shard, the entry write-locks one)
        let full = self.map.len() >= MAX_PINS;
        let mut e = self.map.entry(k);
        let (ok, changed) = match &mut e {
            dashmap::Entry::Occupied(o) => {
                let p = o.get_mut();
                // the config's pin wins over a stored one; a pin the config dropped is re-pinned
                if let Some(c) = config {
                    if !p.from_config || p.sha256 != c {
                        *p = Pin {
                            sha256: c.to_string(),
                            pinned_us: now_us(),
                            pending: None,
                            from_config: true,
                        };
                    }
                } else if p.from_config {
                    *p = Pin {
                        sha256: sha256.to_string(),
                        pinned_us: now_us(),
                        pending: None,
                        from_config: false,
                    };
                }
                if p.sha256 == sha256 {
                    let was = p.pending.take();
                    (true, was.is_some().then(|| p.clone()))
                } else if p.pending.as_deref() != Some(sha256) {
                    p.pending = Some(sha256.to_string());
                    tracing::warn!(
                        proxy,
                        tool,
                        pinned = %p.sha256,
                        pending = sha256,
                        "MCP tool definition changed since it was pinned: removed from lists and its calls refused until an operator accepts it"
                    );
                    (false, Some(p.clone()))
                } else {
                    (false, None)
                }
            }
            dashmap::Entry::Vacant(_) if full => {
                tracing::warn!(proxy, tool, "MCP tool not pinned: the pin table is full");
                return true;
            }
            dashmap::Entry::Vacant(_) => {
                let p = match config {
                    Some(c) => Pin {
                        sha256: c.to_string(),
                        pinned_us: now_us(),
                        pending: (c != sha256).then(|| sha256.to_string()),
                        from_config: true,
                    },
                    None => Pin {
                        sha256: sha256.to_string(),
                        pinned_us: now_us(),
                        pending: None,
                        from_config: false,
                    },
                };
                if p.pending.is_some() {
                    tracing::warn!(proxy, tool, pinned = %p.sha256, pending = sha256,
                        "MCP tool definition differs from its config pin: removed from lists and its calls refused");
                } else {
                    tracing::info!(proxy, tool, sha256, "MCP tool definition pinned");
                }
                (p.pending.is_none(), Some(p))
            }
        };
        if let Some(p) = changed {
            if let dashmap::Entry::Vacant(v) = e {
                v.insert(p.clone());
            } else {
                drop(e);
            }
            // the shard lock is released: the store queue is another lock
            self.persist(proxy, tool, &p);
        }
        ok
    }

    /// A `tools/call` of `tool` on `proxy` must be refused: its definition changed.
    pub fn changed(&self, proxy: &str, tool: &str) -> bool {
        self.map
            .get(&key(proxy, tool))
            .is_some_and(|p| p.pending.is_some())
    }

    /// An operator accepts the pending definition of `tool`: it becomes the pin.
    pub fn accept(&self, proxy: &str, tool: &str) -> Result<Pin, AcceptError> {
        let p = {
            let mut p = self
                .map
                .get_mut(&key(proxy, tool))
                .ok_or(AcceptError::Unknown)?;
            if p.from_config {
                return Err(AcceptError::FromConfig);
            }
            let new = p.pending.take().ok_or(AcceptError::NothingPending)?;
            p.sha256 = new;
            p.pinned_us = now_us();
            p.clone()
        };
        tracing::info!(proxy, tool, sha256 = %p.sha256, "MCP tool definition accepted");
        self.persist(proxy, tool, &p);
        Ok(p)
    }

    /// Every pin (of `proxy`, if given), sorted by proxy and tool.
    pub fn list(&self, proxy: Option<&str>) -> Vec<(String, String, Pin)> {
        let mut out: Vec<(String, String, Pin)> = self
            .map
            .iter()
            .filter_map(|e| {
                let (px, tool) = e.key().split_once('\0')?;
                proxy
                    .is_none_or(|want| want == px)
                    .then(|| (px.to_string(), tool.to_string(), e.value().clone()))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// The store thread: the stored pins (at start, and when another replica moved them).
    /// Config pins are kept; every stored pin replaces what this process had.
    pub fn load(&self, pins: Vec<ToolPin>) {
        for t in pins {
            let k = key(&t.proxy, &t.tool);
            if self.map.get(&k).is_some_and(|p| p.from_config) {
                continue;
            }
            if self.map.len() >= MAX_PINS && !self.map.contains_key(&k) {
                continue;
            }
            self.map.insert(
                k,
                Pin {
                    sha256: t.definition_sha256,
                    pinned_us: t.pinned_us,
                    pending: t.pending_sha256,
                    from_config: false,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sight_pins_a_change_waits_for_accept() {
        let t = PinTable::default();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        assert!(t.observe("p", "x", &a, None));
        assert!(!t.changed("p", "x"));
        assert!(t.observe("p", "x", &a, None));
        assert_eq!(t.accept("p", "x"), Err(AcceptError::NothingPending));
        assert_eq!(t.accept("p", "nope"), Err(AcceptError::Unknown));
        // another proxy's tool of the same name is another pin
        assert!(t.observe("q", "x", &b, None));
        assert!(!t.observe("p", "x", &b, None));
        assert!(t.changed("p", "x"));
        assert!(!t.changed("q", "x"));
        let l = t.list(Some("p"));
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].2.pending.as_deref(), Some(b.as_str()));
        // back to the pinned definition: nothing pending any more
        assert!(t.observe("p", "x", &a, None));
        assert!(!t.changed("p", "x"));
        assert!(!t.observe("p", "x", &b, None));
        let p = t.accept("p", "x").unwrap();
        assert_eq!((p.sha256.as_str(), p.pending), (b.as_str(), None));
        assert!(!t.changed("p", "x"));
        assert!(t.observe("p", "x", &b, None));
        assert!(!t.observe("p", "x", &a, None));
    }

    #[test]
    fn config_pins_win_and_are_not_accepted_through_the_api() {
        let t = PinTable::default();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        // stored pin a, config says b: the config wins, a is pending
        t.load(vec![ToolPin {
            proxy: "p".into(),
            tool: "x".into(),
            definition_sha256: a.clone(),
            pinned_us: 1,
            pending_sha256: None,
        }]);
        assert!(!t.observe("p", "x", &a, Some(&b)));
        assert!(t.changed("p", "x"));
        assert_eq!(t.accept("p", "x"), Err(AcceptError::FromConfig));
        assert!(t.observe("p", "x", &b, Some(&b)));
        assert!(!t.changed("p", "x"));
        // first sight against a config pin
        assert!(!t.observe("p", "y", &a, Some(&b)));
        assert!(t.changed("p", "y"));
        // a load does not replace a config pin
        t.load(vec![ToolPin {
            proxy: "p".into(),
            tool: "y".into(),
            definition_sha256: a.clone(),
            pinned_us: 1,
            pending_sha256: None,
        }]);
        assert!(t.changed("p", "y"));
    }
}
