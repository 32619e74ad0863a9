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
///
/// Held as a few levels, each sorted ids behind their filter: a batch run
/// adds the ids it saw first as a new level over the levels of the index
/// before it, shared, rather than rebuilding a filter over every id. A new
/// level is merged into the one below while it is at least a quarter of its
/// size (and the newest two are merged past [`MAX_LEVELS`]), so a lookup
/// probes a handful of filters, and an id is rebuilt into a filter a
/// logarithmic number of times over the life of the data.
#[derive(Default)]
pub struct IdIndex {
    upto: Seq,
    /// Oldest (largest) first; no id in two of them.
    levels: Vec<Arc<Level>>,
}

/// The most levels an index keeps.
pub const MAX_LEVELS: usize = 6;

/// Sorted, unique ids behind a binary fuse filter.
struct Level {
    sorted: Vec<u64>,
    /// In front of `sorted`: an id it rules out (99.6% of new ids) costs no search.
    /// `None` if the filter could not be built.
    filter: Option<BinaryFuse8>,
}

/// The filter of a level, built apart from the level (from a borrowed list,
/// while the list is still written elsewhere).
pub struct IdFilter(Option<BinaryFuse8>);

impl IdFilter {
    /// The filter of `sorted` (sorted and unique).
    pub fn of(sorted: &[u64]) -> IdFilter {
        // The keys are unique, for which construction does not fail; were it
        // to, the search alone is still exact.
        IdFilter(if sorted.is_empty() {
            None
        } else {
            BinaryFuse8::try_from(sorted).ok()
        })
    }
}

impl Level {
    fn new(sorted: Vec<u64>) -> Level {
        let IdFilter(filter) = IdFilter::of(&sorted);
        Level { sorted, filter }
    }

    fn contains(&self, id: u64) -> bool {
        if self
            .filter
            .as_ref()
            .is_some_and(|filter| !filter.contains(&id))
        {
            return false;
        }
        self.sorted.binary_search(&id).is_ok()
    }
}

impl std::fmt::Debug for IdIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdIndex")
            .field("upto", &self.upto)
            .field("ids", &self.len())
            .field("levels", &self.levels.len())
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

    /// The index of `sorted`, already sorted and unique, in one level.
    pub fn from_sorted(upto: Seq, sorted: Vec<u64>) -> IdIndex {
        let levels = if sorted.is_empty() {
            Vec::new()
        } else {
            vec![Arc::new(Level::new(sorted))]
        };
        IdIndex { upto, levels }
    }

    /// The index of `sorted` (sorted and unique) in one level, with its
    /// filter built already ([`IdFilter::of`] the same ids).
    pub fn from_sorted_filtered(upto: Seq, sorted: Vec<u64>, filter: IdFilter) -> IdIndex {
        let levels = if sorted.is_empty() {
            Vec::new()
        } else {
            vec![Arc::new(Level {
                sorted,
                filter: filter.0,
            })]
        };
        IdIndex { upto, levels }
    }

    /// This index and `later`, the ids of the records from [`IdIndex::upto`]
    /// to `upto` that this index does not hold (sorted and unique), as the
    /// index of the records before `upto`. This index's levels are shared.
    pub fn extended(&self, upto: Seq, later: Vec<u64>) -> IdIndex {
        let mut levels = self.levels.clone();
        let mut newest = later;
        while let Some(below) = levels.last() {
            let small = newest.len() * 4 < below.sorted.len();
            if small && levels.len() < MAX_LEVELS {
                break;
            }
            newest = merge_sorted(&below.sorted, &newest);
            levels.pop();
        }
        if !newest.is_empty() {
            levels.push(Arc::new(Level::new(newest)));
        }
        IdIndex { upto, levels }
    }

    /// Whether a record before [`IdIndex::upto`] has this id.
    pub fn contains(&self, id: u64) -> bool {
        self.levels.iter().any(|level| level.contains(id))
    }

    /// The records covered: every seq below this.
    pub fn upto(&self) -> Seq {
        self.upto
    }

    /// The ids, sorted and unique (a copy, merged from the levels).
    pub fn sorted(&self) -> Vec<u64> {
        self.levels.iter().fold(Vec::new(), |merged, level| {
            merge_sorted(&merged, &level.sorted)
        })
    }

    /// Number of distinct ids.
    pub fn len(&self) -> usize {
        self.levels.iter().map(|level| level.sorted.len()).sum()
    }

    /// Whether no record before `upto` has an id.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// Number of levels.
    pub fn levels(&self) -> usize {
        self.levels.len()
    }
}

/// Two sorted lists of unique ids as one (an id in both, once).
pub fn merge_sorted(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                merged.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                merged.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                merged.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    merged.extend_from_slice(&a[i..]);
    merged.extend_from_slice(&b[j..]);
    merged
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

    /// An index extended run after run holds exactly the ids given, in few
    /// levels, sharing the levels of the index it extends.
    #[test]
    fn an_extended_index_holds_exactly_its_ids_in_few_levels() {
        let id = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut index = IdIndex::new(Seq(100_000), (0..100_000).map(id).collect());
        let mut next = 100_000;
        for run in 0..60u64 {
            let size = [1_000, 30_000, 5][run as usize % 3];
            let mut later: Vec<u64> = (next..next + size).map(id).collect();
            later.sort_unstable();
            let before = Arc::new(index);
            index = before.extended(Seq(next + size), later);
            next += size;
            assert!(index.levels() <= MAX_LEVELS, "{index:?}");
            assert_eq!(index.len() as u64, next);
            assert!(
                before.len() as u64 == next - size,
                "the index extended is unchanged"
            );
        }
        let all: Vec<u64> = (0..next).map(id).collect();
        assert!(all.iter().all(|id| index.contains(*id)));
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert_eq!(index.sorted(), sorted);
        let strangers = (0..100_000u64).map(|i| i.wrapping_mul(0xD1B5_4A32_D192_ED03) & !1);
        assert!(strangers.into_iter().all(|id| !index.contains(id)));
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
