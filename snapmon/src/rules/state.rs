//! Rules support: bounded state for stateful rules (rates, sequences, dedupe). Every map has
//! a hard cap and forgets its oldest entries first, so no input can grow the agent.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

/// A map with a size cap; the oldest-inserted key goes first.
#[derive(Debug)]
pub struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    pub fn new(cap: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }
    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k)
    }
    pub fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }
    pub fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        // Keys removed explicitly leave stale order entries; keep the queue bounded too.
        if self.order.len() > self.cap * 2 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }
    pub fn entry_or(&mut self, k: K, f: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&k) {
            self.insert(k.clone(), f());
        }
        // Just inserted (or present); a cap of ≥1 keeps the newest key.
        self.map.get_mut(&k).expect("present after insert")
    }
    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k)
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
    /// Every entry, oldest first (to be re-keyed into another map).
    pub fn into_ordered(mut self) -> Vec<(K, V)> {
        let order = std::mem::take(&mut self.order);
        order
            .into_iter()
            .filter_map(|k| self.map.remove(&k).map(|v| (k, v)))
            .collect()
    }
    pub fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        self.map.retain(|k, v| f(k, v));
        let map = &self.map;
        self.order.retain(|k| map.contains_key(k));
    }
}

/// Occurrences inside a sliding window, each with the event that caused it and a label.
#[derive(Debug, Default)]
pub struct Rate {
    pub hits: VecDeque<(i128, u64, String)>,
}

/// Most occurrences a rate keeps (thresholds above this are capped by validation anyway).
pub const RATE_CAP: usize = 1024;

impl Rate {
    /// Add one occurrence; returns how many distinct labels are inside the window.
    pub fn add(&mut self, now: i128, window_ns: i128, seq: u64, label: String) -> usize {
        while self.hits.front().is_some_and(|h| now - h.0 > window_ns) {
            self.hits.pop_front();
        }
        self.hits.push_back((now, seq, label));
        while self.hits.len() > RATE_CAP {
            self.hits.pop_front();
        }
        self.distinct()
    }
    pub fn distinct(&self) -> usize {
        let mut v: Vec<&str> = self.hits.iter().map(|h| h.2.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    }
    pub fn seqs(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.hits.iter().map(|h| h.1).collect();
        v.dedup();
        v
    }
    pub fn labels(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for h in &self.hits {
            if !out.contains(&h.2) {
                out.push(h.2.clone());
            }
        }
        out
    }
    pub fn clear(&mut self) {
        self.hits.clear();
    }
    /// What fired: the distinct labels, first seen first, and the events behind them. The
    /// window restarts empty.
    pub fn take(&mut self) -> (Vec<String>, Vec<u64>) {
        let fired = (self.labels(), self.seqs());
        self.clear();
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_map_never_exceeds_its_cap() {
        let mut b = Bounded::new(100);
        for i in 0..100_000u64 {
            b.insert(i, i);
            if i % 3 == 0 {
                b.remove(&(i / 2));
            }
        }
        assert!(b.len() <= 100);
        assert!(b.order.len() <= 200);
        assert!(b.contains(&99_999));
    }

    #[test]
    fn rate_slides_and_caps() {
        let mut r = Rate::default();
        for i in 0..5000 {
            r.add(i * 1_000_000_000, 60_000_000_000, i as u64, format!("s{i}"));
        }
        assert!(r.hits.len() <= 61);
        let mut r = Rate::default();
        for i in 0..5000 {
            r.add(0, 60_000_000_000, i, "same".into());
        }
        assert_eq!(r.hits.len(), RATE_CAP);
        assert_eq!(r.distinct(), 1);
    }
}
