//! Coalescing of webhook-triggered fetches (pure): a leading-edge fetch at
//! once, then at most one trailing fetch per `window`.
//!
//! The first webhook after a quiet `window` fetches at once (a push shows up
//! within a second). Webhooks arriving within `window` of the last fetch are
//! folded into one fetch scheduled at the end of that window: it still runs
//! after every one of them, so a push announced by any of them is seen, but N
//! webhooks in a window cost at most one extra fetch. Fetches triggered this
//! way are therefore at least `window` apart, whatever the request rate.

use std::time::Duration;

use tokio::time::Instant;

/// What to do with one webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Trigger a fetch now.
    FetchNow,
    /// Schedule one fetch at this time (the caller arranges a timer and calls
    /// [`Coalescer::fire_scheduled`] then).
    ScheduleAt(Instant),
    /// A fetch is already scheduled at this time and will cover this webhook.
    Coalesced(Instant),
}

#[derive(Debug)]
pub struct Coalescer {
    window: Duration,
    last_fetch: Option<Instant>,
    scheduled: Option<Instant>,
}

impl Coalescer {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            last_fetch: None,
            scheduled: None,
        }
    }

    /// One accepted webhook at `now`.
    pub fn request(&mut self, now: Instant) -> Decision {
        if let Some(at) = self.scheduled {
            return Decision::Coalesced(at);
        }
        match self.last_fetch {
            Some(last) if now < last + self.window => {
                let at = last + self.window;
                self.scheduled = Some(at);
                Decision::ScheduleAt(at)
            }
            _ => {
                self.last_fetch = Some(now);
                Decision::FetchNow
            }
        }
    }

    /// The scheduled fetch is being triggered (at `now`, at or after its time).
    pub fn fire_scheduled(&mut self, now: Instant) {
        self.scheduled = None;
        self.last_fetch = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W: Duration = Duration::from_secs(5);

    #[test]
    fn leading_fetch_then_one_trailing_fetch_per_window() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = Coalescer::new(W);
        assert_eq!(c.request(t0), Decision::FetchNow);
        assert_eq!(c.request(t0 + s(1)), Decision::ScheduleAt(t0 + W));
        for n in 2..5 {
            assert_eq!(c.request(t0 + s(n)), Decision::Coalesced(t0 + W));
        }
        c.fire_scheduled(t0 + W);
        // A webhook right after the trailing fetch waits a window again.
        assert_eq!(c.request(t0 + W + s(1)), Decision::ScheduleAt(t0 + W + W));
        c.fire_scheduled(t0 + W + W);
        // After a quiet window: at once again.
        assert_eq!(c.request(t0 + s(100)), Decision::FetchNow);
    }

    proptest! {
        /// For any arrival pattern: fetches are at least `window` apart, every
        /// webhook is followed by a fetch no later than `window` after it,
        /// and the number of fetches is at most one plus the elapsed time
        /// divided by the window.
        #[test]
        fn fetches_are_spaced_and_no_webhook_is_lost(
            gaps_ms in proptest::collection::vec(0u64..12_000, 1..200),
        ) {
            let t0 = Instant::now();
            let mut c = Coalescer::new(W);
            let mut fetches: Vec<Instant> = Vec::new();
            let mut pending: Option<Instant> = None;
            let mut now = t0;
            let mut arrivals = Vec::new();
            for gap in gaps_ms {
                now += Duration::from_millis(gap);
                // The timer of a scheduled fetch fires before later arrivals.
                if let Some(at) = pending.filter(|at| *at <= now) {
                    c.fire_scheduled(at);
                    fetches.push(at);
                    pending = None;
                }
                arrivals.push(now);
                match c.request(now) {
                    Decision::FetchNow => fetches.push(now),
                    Decision::ScheduleAt(at) => {
                        prop_assert!(pending.is_none());
                        prop_assert!(at > now && at <= now + W);
                        pending = Some(at);
                    }
                    Decision::Coalesced(at) => prop_assert_eq!(Some(at), pending),
                }
            }
            if let Some(at) = pending {
                c.fire_scheduled(at);
                fetches.push(at);
            }
            for pair in fetches.windows(2) {
                prop_assert!(pair[1] >= pair[0] + W, "{:?}", pair);
            }
            for a in &arrivals {
                prop_assert!(
                    fetches.iter().any(|f| f >= a && *f <= *a + W),
                    "webhook at {:?} not followed by a fetch", a.duration_since(t0)
                );
            }
            let span = fetches.last().map_or(Duration::ZERO, |l| l.duration_since(t0));
            let bound = 1 + span.as_millis() / W.as_millis();
            prop_assert!(fetches.len() as u128 <= bound);
        }
    }
}
