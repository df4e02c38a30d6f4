//! Leadership fencing: before every record write and every action, the controller
//! asks the fence whether this replica may still act.
//!
//! With leader election, this replica may act only while the Lease names it as
//! holder and its last renewal is younger than the lease duration minus a safety
//! margin. The lease manager renews `GRACE` seconds before expiry; a standby may
//! take over only after the full duration. So a leader whose renewals fail stops
//! acting [`MARGIN`] before anyone else can start, and anything it still had in
//! flight is a conditional record write that fails against the new leader's.
//! The Lease is followed with a watch (no polling).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

/// Stop acting this long before the lease could be taken over.
pub const MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this replica does not hold the leader lease (or could not renew it in time); not acting")]
pub struct NotLeader;

#[derive(Debug, Clone)]
struct Held {
    holder: String,
    renewed: SystemTime,
    duration: Duration,
}

#[derive(Debug)]
enum Mode {
    Unfenced,
    Lease {
        identity: String,
        held: Mutex<Option<Held>>,
    },
}

#[derive(Debug, Clone)]
pub struct Fence {
    mode: Arc<Mode>,
}

impl Fence {
    /// No leader election: this is the only replica.
    pub fn unfenced() -> Self {
        Self {
            mode: Arc::new(Mode::Unfenced),
        }
    }

    /// Fenced by the Lease held under `identity`; closed until a Lease is observed.
    pub fn lease(identity: impl Into<String>) -> Self {
        Self {
            mode: Arc::new(Mode::Lease {
                identity: identity.into(),
                held: Mutex::new(None),
            }),
        }
    }

    /// Records what the Lease says now.
    pub fn observe(&self, lease: &Lease) {
        let Mode::Lease { held, .. } = self.mode.as_ref() else {
            return;
        };
        let spec = lease.spec.as_ref();
        let observed = spec.and_then(|s| {
            let holder = s.holder_identity.clone()?;
            let renewed = s.renew_time.as_ref()?.0;
            let secs = u64::try_from(s.lease_duration_seconds?).ok()?;
            let renewed = SystemTime::UNIX_EPOCH
                + Duration::from_millis(u64::try_from(renewed.as_millisecond()).ok()?);
            Some(Held {
                holder,
                renewed,
                duration: Duration::from_secs(secs),
            })
        });
        *held.lock().unwrap_or_else(PoisonError::into_inner) = observed;
    }

    /// Ok while this replica may act.
    pub fn check(&self) -> Result<(), NotLeader> {
        self.check_at(SystemTime::now())
    }

    fn check_at(&self, now: SystemTime) -> Result<(), NotLeader> {
        match self.mode.as_ref() {
            Mode::Unfenced => Ok(()),
            Mode::Lease { identity, held } => {
                let held = held.lock().unwrap_or_else(PoisonError::into_inner);
                match held.as_ref() {
                    Some(h)
                        if h.holder == *identity
                            && now < h.renewed + h.duration.saturating_sub(MARGIN) =>
                    {
                        Ok(())
                    }
                    _ => Err(NotLeader),
                }
            }
        }
    }

    /// Follows the Lease with a watch until the task is dropped.
    pub fn follow(&self, api: Api<Lease>, name: &str) -> tokio::task::JoinHandle<()> {
        let fence = self.clone();
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher::watcher(api, cfg).default_backoff());
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(Event::Apply(l) | Event::InitApply(l)) => fence.observe(&l),
                    Ok(Event::Delete(_)) => fence.observe(&Lease::default()),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "Lease watch interrupted; retrying"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: &str, renewed: SystemTime, secs: i32) -> Lease {
        let ms = renewed
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(
                    jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap()).unwrap(),
                )),
                lease_duration_seconds: Some(secs),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn unfenced_always_acts() {
        assert!(Fence::unfenced().check().is_ok());
    }

    #[test]
    fn a_lease_fence_is_closed_until_a_lease_names_us() {
        let f = Fence::lease("me");
        assert_eq!(f.check(), Err(NotLeader));
        let now = SystemTime::now();
        f.observe(&lease("other", now, 15));
        assert_eq!(f.check(), Err(NotLeader));
        f.observe(&lease("me", now, 15));
        assert!(f.check().is_ok());
    }

    #[test]
    fn the_fence_closes_before_the_lease_can_be_taken_over() {
        let f = Fence::lease("me");
        let renewed = SystemTime::now();
        f.observe(&lease("me", renewed, 15));
        let just_before = renewed + Duration::from_secs(15) - MARGIN - Duration::from_millis(1);
        assert!(f.check_at(just_before).is_ok());
        // Renewals failed: the fence closes MARGIN before a standby may take over.
        let closed = renewed + Duration::from_secs(15) - MARGIN;
        assert_eq!(f.check_at(closed), Err(NotLeader));
        assert_eq!(
            f.check_at(renewed + Duration::from_secs(15)),
            Err(NotLeader)
        );
    }
}
