//! Which copy of an event id is the first in the master dataset.
//!
//! Both layers count the first copy of an id in log order and no other: the
//! batch run while it scans, the Recorder as it stages records (each `Durable`
//! reply names the copies that are not first, and the speed layer skips them).
//! The Recorder knows every id in the log (after a restart of its own it
//! reads back the ids of records a failed commit left): the records before a batch run's
//! `later_from` through that run's [`IdIndex`] (sorted ids behind a binary fuse
//! filter, about 9 bytes per distinct id), and the records from there on
//! through [`FirstCopies`]' own set, which a newer index empties again.

use crate::event::Seq;
use rustc_hash::FxHashSet;
use std::collections::VecDeque;
use std::sync::Arc;
use xorf::{BinaryFuse8, Filter};

/// The distinct ids of the records before `upto`; immutable once built.
#[derive(Default)]
pub struct IdIndex {
    upto: Seq,
    /// Sorted and unique.
    sorted: Vec<u64>,
    /// In front of `sorted`: an id it rules out (99.6% of new ids) costs no search.
    /// `None` for an empty index, or if the filter could not be built.
    filter: Option<BinaryFuse8>,
}

impl std::fmt::Debug for IdIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdIndex")
            .field("upto", &self.upto)
            .field("ids", &self.sorted.len())
            .finish()
    }
}

impl IdIndex {
    /// The index of `ids`, the ids of every record before `upto` (in any order,
    /// repeats allowed).
    pub fn new(upto: Seq, mut ids: Vec<u64>) -> IdIndex {
        ids.sort_unstable();
        ids.dedup();
        IdIndex::from_sorted(upto, ids)
    }

    /// The index of `sorted`, already sorted and unique (as [`IdIndex::ids`] gives them).
    pub fn from_sorted(upto: Seq, sorted: Vec<u64>) -> IdIndex {
        let filter = if sorted.is_empty() {
            None
        } else {
            // Construction fails only on repeated keys; the search alone is still exact.
            BinaryFuse8::try_from(sorted.as_slice()).ok()
        };
        IdIndex {
            upto,
            sorted,
            filter,
        }
    }

    /// Whether a record before [`IdIndex::upto`] has this id.
    pub fn contains(&self, id: u64) -> bool {
        if self
            .filter
            .as_ref()
            .is_some_and(|filter| !filter.contains(&id))
        {
            return false;
        }
        self.sorted.binary_search(&id).is_ok()
    }

    /// The records covered: every seq below this.
    pub fn upto(&self) -> Seq {
        self.upto
    }

    /// The ids, sorted and unique.
    pub fn ids(&self) -> &[u64] {
        &self.sorted
    }

    /// Number of distinct ids.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether no record before `upto` has an id.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

/// Decides, record by record in log order, whether a record holds the first
/// copy of its id. Decisions about staged records are taken back if their
/// commit fails ([`FirstCopies::rollback`]).
#[derive(Debug, Default)]
pub struct FirstCopies {
    index: Arc<IdIndex>,
    /// Ids first seen at or after `index.upto()`, in log order.
    later: VecDeque<(Seq, u64)>,
    later_set: FxHashSet<u64>,
    /// How many entries at the back of `later` are not committed yet.
    staged: usize,
}

impl FirstCopies {
    /// Nothing seen yet but what `index` holds.
    pub fn new(index: Arc<IdIndex>) -> FirstCopies {
        FirstCopies {
            index,
            ..FirstCopies::default()
        }
    }

    /// Whether the record at `seq` (the next in log order, at or after the
    /// index's `upto`) holds the first copy of `id`; remembers it. Records
    /// without an id (0) are always first.
    pub fn first(&mut self, seq: Seq, id: u64) -> bool {
        if id == 0 {
            return true;
        }
        if self.later_set.contains(&id) || self.index.contains(id) {
            return false;
        }
        self.later_set.insert(id);
        self.later.push_back((seq, id));
        self.staged += 1;
        true
    }

    /// The records decided since the last commit are durable.
    pub fn commit(&mut self) {
        self.staged = 0;
    }

    /// The records decided since the last commit are not in the log: forget them.
    pub fn rollback(&mut self) {
        for _ in 0..std::mem::take(&mut self.staged) {
            if let Some((_, id)) = self.later.pop_back() {
                self.later_set.remove(&id);
            }
        }
    }

    /// Takes a newer index: the ids it covers are no longer held here. An
    /// index older than the current one changes nothing.
    pub fn advance(&mut self, index: Arc<IdIndex>) {
        if index.upto() < self.index.upto() {
            return;
        }
        while let Some((seq, id)) = self.later.front().copied() {
            if seq >= index.upto() || self.later.len() <= self.staged {
                break;
            }
            self.later.pop_front();
            self.later_set.remove(&id);
        }
        if self.later.capacity() > 4 * self.later.len().max(1024) {
            self.later.shrink_to_fit();
            self.later_set.shrink_to_fit();
        }
        self.index = index;
    }

    /// Ids held in memory besides the index (the records since its `upto`).
    pub fn held(&self) -> usize {
        self.later.len()
    }

    /// The index in use.
    pub fn index(&self) -> &Arc<IdIndex> {
        &self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_holds_exactly_its_ids() {
        let ids: Vec<u64> = (0..10_000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let mut repeated = ids.clone();
        repeated.extend_from_slice(&ids[..100]);
        let index = IdIndex::new(Seq(10_100), repeated);
        assert_eq!(index.len(), 10_000);
        assert!(ids.iter().all(|id| index.contains(*id)));
        let strangers = (0..100_000u64)
            .map(|i| i.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1)
            .filter(|id| !ids.contains(id));
        assert!(strangers.into_iter().all(|id| !index.contains(id)));
        assert!(!IdIndex::default().contains(7));
    }

    #[test]
    fn the_first_copy_in_log_order_wins_across_the_index_and_memory() {
        let index = Arc::new(IdIndex::new(Seq(3), vec![10, 11, 10]));
        let mut first = FirstCopies::new(index);
        assert!(!first.first(Seq(3), 10), "a copy of an indexed id");
        assert!(first.first(Seq(4), 12));
        assert!(!first.first(Seq(5), 12), "a copy of a held id");
        assert!(first.first(Seq(6), 0), "no id: always counted");
        first.commit();
        assert!(first.first(Seq(7), 13));
        first.rollback();
        assert!(
            first.first(Seq(7), 13),
            "a rolled-back record was never in the log"
        );
        first.commit();
        assert_eq!(first.held(), 2);

        // A newer index covers seq 4 (id 12) but not seq 7 (id 13).
        first.advance(Arc::new(IdIndex::new(Seq(5), vec![10, 11, 12])));
        assert_eq!(first.held(), 1);
        assert!(!first.first(Seq(8), 12));
        assert!(!first.first(Seq(8), 13));
        // An older index is ignored.
        first.advance(Arc::new(IdIndex::new(Seq(1), vec![])));
        assert!(!first.first(Seq(8), 11));
    }

    #[test]
    fn staged_ids_survive_an_index_that_reaches_them() {
        let mut first = FirstCopies::new(Arc::new(IdIndex::default()));
        assert!(first.first(Seq(0), 5));
        first.advance(Arc::new(IdIndex::new(Seq(1), vec![5])));
        // Still staged: a failed commit must be able to take it back.
        first.rollback();
        assert_eq!(first.held(), 0);
    }
}
