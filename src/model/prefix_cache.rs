//! Reuse of computed keys and values across forward calls: recently computed [`KvCache`]s keyed
//! by their token ids, looked up by longest common prefix, least recently used evicted first.
//! The policy's generator uses it for prompts that extend earlier ones (a shared few-shot prompt,
//! the next step of a solution); the PPM for partial solutions that extend a scored parent.

use std::sync::Arc;

use super::transformer::KvCache;

/// Recently computed KV caches keyed by their tokens.
pub struct PrefixCache {
    entries: Vec<CacheEntry>,
    /// Most bytes of KV held by entries (their own buffers; shared prefixes counted once).
    budget: usize,
    clock: u64,
}

struct CacheEntry {
    tokens: Vec<u32>,
    cache: Arc<KvCache>,
    bytes: usize,
    used: u64,
}

impl PrefixCache {
    /// An empty cache holding at most `budget` bytes of KV (0: reuse off).
    pub fn new(budget: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            budget,
            clock: 0,
        }
    }

    /// The budget in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Changes the budget; 0 drops every entry and turns reuse off.
    pub fn set_budget(&mut self, bytes: usize) {
        self.budget = bytes;
        if bytes == 0 {
            self.entries.clear();
        }
        self.evict();
    }

    /// The entry sharing the longest prefix with `tokens`, and that length (at most
    /// `tokens.len() - 1`: the last token must run to give its logits or hidden state).
    pub fn lookup(&mut self, tokens: &[u32]) -> Option<(Arc<KvCache>, usize)> {
        let cap = tokens.len().saturating_sub(1);
        let mut best: Option<(usize, usize)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            let l = e
                .tokens
                .iter()
                .zip(tokens)
                .take_while(|(a, b)| a == b)
                .count()
                .min(cap);
            if l > 0 && best.is_none_or(|(_, bl)| l > bl) {
                best = Some((i, l));
            }
        }
        let (i, l) = best?;
        self.clock += 1;
        self.entries[i].used = self.clock;
        Some((self.entries[i].cache.clone(), l))
    }

    /// Keeps `cache`, whose positions hold exactly `tokens`.
    pub fn insert(&mut self, tokens: Vec<u32>, cache: Arc<KvCache>) {
        if self.budget == 0 || tokens.is_empty() {
            return;
        }
        self.clock += 1;
        // An entry that this one extends is now redundant for lookups.
        self.entries
            .retain(|e| !(e.tokens.len() <= tokens.len() && tokens.starts_with(&e.tokens)));
        let bytes = cache.own_bytes();
        self.entries.push(CacheEntry {
            tokens,
            cache,
            bytes,
            used: self.clock,
        });
        self.evict();
    }

    fn evict(&mut self) {
        while self.entries.iter().map(|e| e.bytes).sum::<usize>() > self.budget
            && self.entries.len() > 1
        {
            let oldest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].used)
                .unwrap_or(0);
            self.entries.swap_remove(oldest);
        }
    }
}
