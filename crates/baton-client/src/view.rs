//! One view type for both primitives, converted from the wire in one place.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proto::atomix::primitive::election::Term;
use crate::proto::atomix::primitive::leader::Latch;
use crate::proto::atomix::primitive::meta::{
    object_meta, Epoch, ObjectMeta, PhysicalTimestamp, Revision,
};

/// Which kind of primitive a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A leader latch (`atomix.primitive.leader.LeaderLatchService`).
    Latch,
    /// A leader election (`atomix.primitive.election.LeaderElectionService`).
    Election,
}

impl Kind {
    /// The primitive type name the wire carries in `PrimitiveId.type`.
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Latch => "LeaderLatch",
            Kind::Election => "Election",
        }
    }
}

/// The state of a latch or an election at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    /// Leadership epoch: raised on every change of leader, never lowered
    /// (but a deleted primitive, used again, starts again from 0). The
    /// fencing token of the leader it names.
    pub epoch: u64,
    /// The leading client id, if any.
    pub leader: Option<String>,
    /// Every member (latch participants, election candidates) in order.
    pub members: Vec<String>,
    /// When the current leader took over, by the cluster's clock (for a
    /// latch: when it last changed).
    pub leader_since: Option<SystemTime>,
}

impl View {
    /// Whether `client_id` leads in this view.
    pub fn is_led_by(&self, client_id: &str) -> bool {
        self.leader.as_deref() == Some(client_id)
    }
}

fn time_of(timestamp: &prost_types::Timestamp) -> Option<SystemTime> {
    let seconds = u64::try_from(timestamp.seconds).ok()?;
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

fn leader_of(leader: String) -> Option<String> {
    (!leader.is_empty()).then_some(leader)
}

impl From<Term> for View {
    fn from(term: Term) -> Self {
        View {
            epoch: term.id.map(|e| e.num).unwrap_or_default(),
            leader_since: term.timestamp.as_ref().and_then(time_of),
            leader: leader_of(term.leader),
            members: term.candidates,
        }
    }
}

impl From<Latch> for View {
    fn from(latch: Latch) -> Self {
        let meta = latch.meta.unwrap_or_default();
        let leader_since = match &meta.timestamp {
            Some(object_meta::Timestamp::PhysicalTimestamp(p)) => p.time.as_ref().and_then(time_of),
            _ => None,
        };
        View {
            epoch: meta.revision.map(|r| r.num).unwrap_or_default(),
            leader_since,
            leader: leader_of(latch.leader),
            members: latch.participants,
        }
    }
}

fn timestamp_of(time: SystemTime) -> prost_types::Timestamp {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or_default(),
    }
}

impl From<&View> for Term {
    fn from(view: &View) -> Self {
        Term {
            id: Some(Epoch { num: view.epoch }),
            timestamp: view.leader_since.map(timestamp_of),
            leader: view.leader.clone().unwrap_or_default(),
            candidates: view.members.clone(),
        }
    }
}

impl From<&View> for Latch {
    fn from(view: &View) -> Self {
        Latch {
            meta: Some(ObjectMeta {
                revision: Some(Revision { num: view.epoch }),
                timestamp: view.leader_since.map(|time| {
                    object_meta::Timestamp::PhysicalTimestamp(PhysicalTimestamp {
                        time: Some(timestamp_of(time)),
                    })
                }),
            }),
            leader: view.leader.clone().unwrap_or_default(),
            participants: view.members.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_survives_the_round_trip_through_both_wire_types() {
        let view = View {
            epoch: 7,
            leader: Some("a".into()),
            members: vec!["a".into(), "b".into()],
            leader_since: UNIX_EPOCH.checked_add(Duration::from_millis(1_234_567)),
        };
        assert_eq!(View::from(Term::from(&view)), view);
        assert_eq!(View::from(Latch::from(&view)), view);
        assert_eq!(View::from(Term::default()), View::default());
    }
}
