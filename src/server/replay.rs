//! Webhook replay detection (pure): the delivery keys seen in the last
//! `window`, in bounded memory.
//!
//! The keys come from [`crate::source::webhook::replay_keys`] (fixed-size
//! digests of delivery ids and signed content). Only authenticated requests
//! are recorded, so filling the cache needs the webhook secret. When more
//! than `capacity` deliveries arrive within one window the oldest are
//! forgotten first: a replay of those is treated as new, and the fetch
//! coalescing ([`super::coalesce`]) still bounds what it can cost.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::source::webhook::ReplayKey;

/// Keys remembered at most (a GitHub delivery has two): 16,384 × about 100
/// bytes (32-byte key and time in the queue, the key again in the set) is
/// about 1.6 MiB. That is 8,192 GitHub deliveries, 13 per second sustained
/// over the default 10-minute window.
pub const CAPACITY: usize = 16_384;

#[derive(Debug)]
pub struct ReplayCache {
    window: Duration,
    capacity: usize,
    /// Keys in the order they were recorded (times never decrease).
    order: VecDeque<(Instant, ReplayKey)>,
    seen: HashSet<ReplayKey>,
}

impl ReplayCache {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.max(1),
            order: VecDeque::new(),
            seen: HashSet::new(),
        }
    }

    /// Whether a delivery with these keys was seen within the window; if not,
    /// records them (so of two identical deliveries exactly one is new). No
    /// keys: the delivery cannot be recognised and is always new.
    pub fn check_and_record(&mut self, keys: &[ReplayKey], now: Instant) -> bool {
        self.expire(now);
        if keys.iter().any(|k| self.seen.contains(k)) {
            return true;
        }
        for key in keys {
            if self.seen.insert(*key) {
                self.order.push_back((now, *key));
            }
        }
        while self.order.len() > self.capacity {
            if let Some((_, key)) = self.order.pop_front() {
                self.seen.remove(&key);
            }
        }
        false
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            self.seen.remove(key);
            self.order.pop_front();
        }
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u16) -> ReplayKey {
        let mut k = [0u8; 32];
        k[..2].copy_from_slice(&n.to_be_bytes());
        k
    }

    const W: Duration = Duration::from_mins(10);

    #[test]
    fn a_delivery_is_a_replay_within_the_window_only() {
        let t0 = Instant::now();
        let mut c = ReplayCache::new(W, 100);
        assert!(!c.check_and_record(&[key(1), key(2)], t0));
        assert!(c.check_and_record(&[key(1)], t0 + Duration::from_secs(1)));
        // Any shared key is enough (a replay under a new delivery id).
        assert!(c.check_and_record(&[key(9), key(2)], t0 + Duration::from_secs(2)));
        // ... and a replay records nothing new.
        assert!(!c.check_and_record(&[key(9)], t0 + Duration::from_secs(3)));
        assert!(c.check_and_record(&[key(1)], t0 + W - Duration::from_millis(1)));
        assert!(!c.check_and_record(&[key(1)], t0 + W));
        // No keys: never a replay, nothing remembered.
        let mut empty = ReplayCache::new(W, 100);
        assert!(!empty.check_and_record(&[], t0));
        assert!(!empty.check_and_record(&[], t0));
        assert!(empty.is_empty());
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_go_first() {
        let t0 = Instant::now();
        let mut c = ReplayCache::new(W, 3);
        for n in 0..10 {
            assert!(!c.check_and_record(&[key(n)], t0));
            assert!(c.len() <= 3);
        }
        assert!(c.check_and_record(&[key(9)], t0));
        assert!(c.check_and_record(&[key(7)], t0));
        assert!(!c.check_and_record(&[key(0)], t0), "evicted, so new again");
    }

    proptest! {
        /// Against a model that remembers every delivery: with a capacity
        /// large enough never to evict, a delivery is a replay exactly when
        /// it shares a key with a recorded (new) delivery less than `window`
        /// old; with any capacity, memory stays within it.
        #[test]
        fn matches_a_model(
            steps in proptest::collection::vec(
                (0u64..30, proptest::collection::vec(0u16..12, 0..3)),
                1..80,
            ),
            capacity in 1usize..8,
        ) {
            let window = Duration::from_secs(20);
            let t0 = Instant::now();
            let mut big = ReplayCache::new(window, 10_000);
            let mut small = ReplayCache::new(window, capacity);
            let mut recorded: Vec<(Instant, u16)> = Vec::new();
            let mut requested: Vec<(Instant, u16)> = Vec::new();
            let mut now = t0;
            for (advance, ids) in steps {
                now += Duration::from_secs(advance);
                let keys: Vec<ReplayKey> = ids.iter().map(|&n| key(n)).collect();
                let expected = ids.iter().any(|n| {
                    recorded.iter().any(|(at, m)| m == n && now.duration_since(*at) < window)
                });
                prop_assert_eq!(big.check_and_record(&keys, now), expected);
                if !expected {
                    recorded.extend(ids.iter().map(|&n| (now, n)));
                }
                // A cache that forgets (small capacity) may miss replays,
                // but never calls a delivery a replay unless a request with
                // one of its keys came within the window.
                let small_says = small.check_and_record(&keys, now);
                let seen_recently = ids.iter().any(|n| {
                    requested.iter().any(|(at, m)| m == n && now.duration_since(*at) < window)
                });
                prop_assert!(!small_says || seen_recently);
                prop_assert!(small.len() <= capacity);
                requested.extend(ids.iter().map(|&n| (now, n)));
            }
        }
    }
}
