//! The process-wide registries that let state survive a reload (a JWKS feed, an OAuth2 token
//! source, a KV client and its entries, a cluster meter's backend): keyed by what identifies
//! the thing, held weakly, so a thing lives exactly as long as some compiled config uses it and
//! a reload that keeps its key keeps the thing (its cache, its login, its thread).
use dashmap::DashMap;
use std::hash::Hash;
use std::sync::{Arc, Weak};

pub struct Registry<K, V> {
    map: DashMap<K, Weak<V>>,
}

impl<K: Eq + Hash, V> Default for Registry<K, V> {
    fn default() -> Self {
        Registry {
            map: DashMap::new(),
        }
    }
}

impl<K: Eq + Hash, V> Registry<K, V> {
    /// The live value for `key`, or a new one from `make` (registered under `key`).
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> Arc<V> {
        match self.try_get_or_insert_with(key, || Ok::<V, std::convert::Infallible>(make())) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// As `get_or_insert_with`, for a `make` that can fail (nothing is registered then).
    pub fn try_get_or_insert_with<E>(
        &self,
        key: K,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        let mut slot = self.map.entry(key).or_default();
        if let Some(v) = slot.upgrade() {
            return Ok(v);
        }
        let v = Arc::new(make()?);
        *slot = Arc::downgrade(&v);
        Ok(v)
    }

    /// Every value some config still uses (dead entries are dropped).
    pub fn live(&self) -> Vec<Arc<V>> {
        let mut out = Vec::new();
        self.map.retain(|_, w| match w.upgrade() {
            Some(v) => {
                out.push(v);
                true
            }
            None => false,
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_lives_while_used_and_is_shared_by_key() {
        let r: Registry<&str, u32> = Registry::default();
        let a = r.get_or_insert_with("a", || 1);
        assert_eq!(
            *r.get_or_insert_with("a", || 2),
            1,
            "same key: the live value"
        );
        assert_eq!(r.live().len(), 1);
        drop(a);
        assert!(r.live().is_empty(), "unused: gone");
        assert_eq!(*r.get_or_insert_with("a", || 3), 3, "a new one after that");
        let e: Result<Arc<u32>, &str> = r.try_get_or_insert_with("b", || Err("no"));
        assert_eq!(e.err(), Some("no"));
    }
}
