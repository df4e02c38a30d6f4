//! A keyed work queue with the semantics of controller-runtime's: a key is
//! queued at most once (the earliest requested time wins), a key is never
//! handed to two workers at once (a key touched while running is run again right
//! after), and delayed entries become due on their own.
//!
//! kube-runtime's `Controller` has the same scheduler inside, but reconciles only
//! objects present in its store; nodewave's unit of work is a DaemonSet declared
//! in Git that may not exist yet, so it keeps its own queue over watch-fed
//! indexes (see the README's architecture section).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

struct Inner<K> {
    due: HashMap<K, Instant>,
    running: HashSet<K>,
    /// Touched while running: due again at this time once the run ends.
    again: HashMap<K, Instant>,
    closed: bool,
}

pub struct Queue<K> {
    inner: Mutex<Inner<K>>,
    changed: Notify,
}

impl<K: Clone + Eq + Hash> Default for Queue<K> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                due: HashMap::new(),
                running: HashSet::new(),
                again: HashMap::new(),
                closed: false,
            }),
            changed: Notify::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> Queue<K> {
    fn lock(&self) -> MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `key` to run at `at` (or earlier if it is already queued earlier).
    pub fn schedule(&self, key: K, at: Instant) {
        {
            let mut g = self.lock();
            let slot = if g.running.contains(&key) {
                g.again.entry(key).or_insert(at)
            } else {
                g.due.entry(key).or_insert(at)
            };
            if at < *slot {
                *slot = at;
            }
        }
        self.changed.notify_waiters();
    }

    /// Queues `key` to run now.
    pub fn touch(&self, key: K) {
        self.schedule(key, Instant::now());
    }

    /// Waits for the next due key that is not running and marks it running.
    /// Returns `None` once the queue is closed.
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.changed.notified();
            let wait_until = {
                let mut g = self.lock();
                if g.closed {
                    return None;
                }
                let now = Instant::now();
                let earliest = g
                    .due
                    .iter()
                    .filter(|(k, _)| !g.running.contains(*k))
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, at)| (k.clone(), *at));
                match earliest {
                    Some((k, at)) if at <= now => {
                        g.due.remove(&k);
                        g.running.insert(k.clone());
                        return Some(k);
                    }
                    Some((_, at)) => Some(at),
                    None => None,
                }
            };
            match wait_until {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` finished. It runs again at `next` (if given), or at once if it
    /// was touched while running.
    pub fn done(&self, key: &K, next: Option<Instant>) {
        {
            let mut g = self.lock();
            g.running.remove(key);
            let again = g.again.remove(key);
            let at = match (again, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(at) = at {
                let slot = g.due.entry(key.clone()).or_insert(at);
                if at < *slot {
                    *slot = at;
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Stops handing out keys; waiters return `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    /// Number of keys queued (due now or later), for metrics.
    pub fn len(&self) -> usize {
        self.lock().due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_key_is_queued_once_and_the_earliest_time_wins() {
        let q: Queue<&str> = Queue::default();
        let t0 = Instant::now();
        q.schedule("a", t0 + Duration::from_secs(10));
        q.schedule("a", t0 + Duration::from_secs(2));
        q.schedule("a", t0 + Duration::from_secs(5));
        assert_eq!(q.len(), 1);
        let k = q.next().await;
        assert_eq!(k, Some("a"));
        assert_eq!(Instant::now() - t0, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn due_keys_come_out_in_time_order() {
        let q: Queue<u32> = Queue::default();
        let t0 = Instant::now();
        q.schedule(3, t0 + Duration::from_secs(3));
        q.schedule(1, t0 + Duration::from_secs(1));
        q.schedule(2, t0 + Duration::from_secs(2));
        for want in [1, 2, 3] {
            assert_eq!(q.next().await, Some(want));
            q.done(&want, None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_key_is_not_handed_out_twice_and_reruns_after() {
        let q = Arc::new(Queue::<&str>::default());
        q.touch("a");
        assert_eq!(q.next().await, Some("a"));
        // Touched while running: not handed out to a second worker...
        q.touch("a");
        q.touch("b");
        assert_eq!(q.next().await, Some("b"));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.next().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "a must wait while it is running");
        // ...but runs again as soon as the first run ends.
        q.done(&"a", Some(Instant::now() + Duration::from_secs(60)));
        assert_eq!(waiter.await.unwrap(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_after_done_and_close() {
        let q: Queue<&str> = Queue::default();
        q.touch("a");
        assert_eq!(q.next().await, Some("a"));
        let t = Instant::now();
        q.done(&"a", Some(t + Duration::from_secs(7)));
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(Instant::now() - t, Duration::from_secs(7));
        q.done(&"a", None);
        assert!(q.is_empty());
        q.close();
        assert_eq!(q.next().await, None);
    }
}
