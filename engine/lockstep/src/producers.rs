//! The appender's table of idempotent producers: each producer's last accepted call, what
//! decides whether a call is new, a retry or refused, and the expiry of idle producers. Only
//! the appender thread touches it; `engine/docs/commit-protocol.md` (A4, §3b) says when.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockstep_core::store::ProducerState;
use lockstep_core::RecordId;

use crate::error::Error;

/// What an idempotent call is, against the producer's last accepted one.
#[derive(Debug)]
pub(crate) enum CallKind {
    /// Not seen before (or its producer is unknown): it gets new positions.
    New,
    /// The producer's last accepted call again: answered with these positions, not written.
    Retry(Vec<RecordId>),
    /// An older call, or the last call's sequence with other records.
    Refused(Error),
}

/// Most producers one group forgets: after a long pause, a server with many past clients
/// deletes their states over several groups instead of in one large write.
pub(crate) const EXPIRED_PER_GROUP_MAX: usize = 4096;

/// The last accepted call of every producer not yet expired.
pub(crate) struct Producers {
    /// Producers idle longer than this are forgotten (in milliseconds).
    expiry_ms: u64,
    states: BTreeMap<u64, ProducerState>,
    /// `(last append time, producer)` of every state, oldest first: what expires next.
    by_last_append: BTreeSet<(u64, u64)>,
    /// The latest time read from the system clock in this process: a clock stepped back while
    /// the engine runs neither dates a call before an earlier one nor delays expiry. (Across
    /// a restart, a clock stepped back only makes stored states expire late.)
    clock_unix_ms: u64,
}

/// Milliseconds since the Unix epoch by the system clock (0 for a clock set before 1970).
fn system_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

impl Producers {
    /// The table the stored states describe. A state with no time (written by format 1)
    /// counts as appended at `open_unix_ms`, the engine's open.
    pub(crate) fn new(stored: Vec<ProducerState>, expiry: Duration, open_unix_ms: u64) -> Self {
        let mut producers = Self {
            expiry_ms: expiry.as_millis().min(u128::from(u64::MAX)) as u64,
            states: BTreeMap::new(),
            by_last_append: BTreeSet::new(),
            clock_unix_ms: open_unix_ms,
        };
        for mut state in stored {
            if state.last_append_unix_ms == 0 {
                state.last_append_unix_ms = open_unix_ms;
            }
            producers
                .by_last_append
                .insert((state.last_append_unix_ms, state.producer));
            producers.states.insert(state.producer, state);
        }
        producers
    }

    /// The table as stored, with the system clock's time as the open; also the states that
    /// had no time (format 1), dated with the open, to be written back before the appender
    /// starts: otherwise every reopen would date them anew, and an engine restarted more
    /// often than the expiry would keep them forever.
    pub(crate) fn load(stored: Vec<ProducerState>, expiry: Duration) -> (Self, Vec<ProducerState>) {
        let open_unix_ms = system_unix_ms();
        let dated = stored
            .iter()
            .filter(|state| state.last_append_unix_ms == 0)
            .map(|state| ProducerState {
                last_append_unix_ms: open_unix_ms,
                ..state.clone()
            })
            .collect();
        (Self::new(stored, expiry, open_unix_ms), dated)
    }

    /// Advances the table's clock to the system clock (never backwards) and returns it.
    pub(crate) fn tick(&mut self) -> u64 {
        self.advance_to(system_unix_ms())
    }

    fn advance_to(&mut self, now_unix_ms: u64) -> u64 {
        self.clock_unix_ms = self.clock_unix_ms.max(now_unix_ms);
        self.clock_unix_ms
    }

    /// Forgets the producers whose last accepted call is more than the expiry before the
    /// table's clock, oldest first and at most `count_max` of them, and returns them in
    /// ascending id order (their stored states are to be deleted with the next write).
    pub(crate) fn expire(&mut self, count_max: usize) -> Vec<u64> {
        let Some(cutoff) = self.clock_unix_ms.checked_sub(self.expiry_ms) else {
            return Vec::new();
        };
        let mut expired = Vec::new();
        while let Some(&(last_append_unix_ms, producer)) = self.by_last_append.first() {
            if last_append_unix_ms >= cutoff || expired.len() >= count_max {
                break;
            }
            self.by_last_append.pop_first();
            self.states.remove(&producer);
            expired.push(producer);
        }
        expired.sort_unstable();
        expired
    }

    /// Whether `producer`'s call `sequence`, with content `digest`, is new, a retry or refused.
    pub(crate) fn classify(&self, producer: u64, sequence: u64, digest: u64) -> CallKind {
        let Some(last) = self.states.get(&producer) else {
            return CallKind::New;
        };
        if sequence == last.sequence && digest == last.digest {
            CallKind::Retry(last.ids.clone())
        } else if sequence == last.sequence {
            CallKind::Refused(Error::SequenceReused { producer, sequence })
        } else if sequence < last.sequence {
            CallKind::Refused(Error::StaleSequence {
                producer,
                sequence,
                last: last.sequence,
            })
        } else {
            CallKind::New
        }
    }

    /// Records `producer`'s new call, accepted at the table's clock; returns the state to
    /// write with its records.
    pub(crate) fn accept(
        &mut self,
        producer: u64,
        sequence: u64,
        ids: Vec<RecordId>,
        digest: u64,
    ) -> ProducerState {
        if let Some(previous) = self.states.get(&producer) {
            self.by_last_append
                .remove(&(previous.last_append_unix_ms, producer));
        }
        let state = ProducerState {
            producer,
            sequence,
            ids,
            digest,
            last_append_unix_ms: self.clock_unix_ms,
        };
        self.by_last_append.insert((self.clock_unix_ms, producer));
        self.states.insert(producer, state.clone());
        state
    }

    /// Producers remembered.
    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn id(offset: u64) -> RecordId {
        RecordId {
            depot_id: 1,
            partition: 0,
            offset,
        }
    }

    fn state(producer: u64, sequence: u64, last_append_unix_ms: u64) -> ProducerState {
        ProducerState {
            producer,
            sequence,
            ids: vec![id(sequence)],
            digest: 7,
            last_append_unix_ms,
        }
    }

    #[test]
    fn calls_are_new_retries_or_refused_against_the_last_one() {
        let mut producers = Producers::new(Vec::new(), HOUR, 1_000);
        assert!(matches!(producers.classify(9, 5, 7), CallKind::New));
        producers.accept(9, 5, vec![id(3)], 7);
        assert!(matches!(producers.classify(9, 5, 7), CallKind::Retry(ids) if ids == vec![id(3)]));
        assert!(matches!(
            producers.classify(9, 5, 8),
            CallKind::Refused(Error::SequenceReused {
                producer: 9,
                sequence: 5
            })
        ));
        assert!(matches!(
            producers.classify(9, 4, 7),
            CallKind::Refused(Error::StaleSequence { last: 5, .. })
        ));
        assert!(matches!(producers.classify(9, 6, 7), CallKind::New));
        assert!(matches!(producers.classify(10, 0, 7), CallKind::New));
    }

    /// A producer expires once its last accepted call is more than the expiry old, and not a
    /// millisecond earlier; a new call restarts its time; expired producers are unknown.
    #[test]
    fn idle_producers_expire_and_active_ones_stay() {
        let expiry = Duration::from_millis(100);
        let mut producers =
            Producers::new(vec![state(1, 3, 1_000), state(2, 8, 1_050)], expiry, 1_060);
        producers.advance_to(1_100);
        assert_eq!(producers.expire(usize::MAX), Vec::<u64>::new());
        producers.advance_to(1_101);
        producers.accept(2, 9, vec![id(9)], 7);
        assert_eq!(producers.expire(usize::MAX), vec![1]);
        assert_eq!(producers.len(), 1);
        assert!(matches!(producers.classify(1, 0, 7), CallKind::New));
        producers.advance_to(1_201);
        assert_eq!(producers.expire(usize::MAX), Vec::<u64>::new());
        producers.advance_to(1_202);
        assert_eq!(producers.expire(usize::MAX), vec![2]);
        assert_eq!(producers.len(), 0);
    }

    /// States written before times were kept count from the open; the clock never goes back,
    /// so a call made after a clock step back is not dated before an earlier one.
    #[test]
    fn untimed_states_count_from_the_open_and_the_clock_never_goes_back() {
        let expiry = Duration::from_millis(10);
        let mut producers = Producers::new(vec![state(4, 1, 0)], expiry, 5_000);
        producers.advance_to(5_010);
        assert_eq!(producers.expire(usize::MAX), Vec::<u64>::new());
        assert_eq!(producers.advance_to(4_000), 5_010);
        let accepted = producers.accept(5, 1, vec![id(1)], 7);
        assert_eq!(accepted.last_append_unix_ms, 5_010);
        producers.advance_to(5_011);
        assert_eq!(producers.expire(usize::MAX), vec![4]);
    }

    /// Expired producers come out in id order; a capped expiry takes the oldest first and
    /// leaves the rest for the next group.
    #[test]
    fn expired_producers_come_out_oldest_first_in_id_order() {
        let stored = vec![
            state(30, 1, 100),
            state(10, 1, 300),
            state(20, 1, 200),
            state(40, 1, 400),
        ];
        let mut producers = Producers::new(stored, Duration::from_millis(1), 1_000);
        assert_eq!(producers.expire(2), vec![20, 30]);
        assert_eq!(producers.expire(usize::MAX), vec![10, 40]);
    }
}
