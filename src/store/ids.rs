//! Which copy of an event id is the first in the master dataset.
//!
//! Both layers count the first copy of an id in log order and no other: the
//! batch run while it scans, the Recorder as it stages records (each `Durable`
//! reply names the copies that are not first, and the speed layer skips them).
//! The Recorder knows every id in the log (after a restart of its own it
//! reads back the ids of records a failed commit left): the records before a batch run's
//! `later_from` through that run's [`IdIndex`] (sorted ids in level files
//! behind binary fuse filters, about 1.15 bytes per distinct id in memory), and the records from there on
//! through [`FirstCopies`]' own set, which a newer index empties again.

use super::levels::{Level, merge_levels, write_level};
use super::{DataPaths, Result};
use crate::event::Seq;
use rustc_hash::FxHashSet;
use std::collections::VecDeque;
use std::sync::Arc;

/// The distinct ids of the records before `upto`; immutable once built.
///
/// Held as a few levels, each a level file (`store::levels`: sorted ids on
/// disk behind filters in memory): a batch run adds the ids it saw first
/// as a new level over the levels of the index before it, shared, rather
/// than rewriting every id. A new level is merged into the one below while
/// it is at least a quarter of its size (and the newest two are merged past
/// [`MAX_LEVELS`]), so a lookup probes a handful of filters, and an id is
/// rewritten a logarithmic number of times over the life of the data.
#[derive(Default, Clone)]
pub struct IdIndex {
    upto: Seq,
    /// Oldest (largest) first; no id in two of them.
    levels: Vec<Arc<Level>>,
}

/// The most levels an index keeps.
pub const MAX_LEVELS: usize = 6;

impl std::fmt::Debug for IdIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdIndex")
            .field("upto", &self.upto)
            .field("ids", &self.len())
            .field("levels", &self.names())
            .finish()
    }
}

impl IdIndex {
    /// The index of `ids`, the ids of every record before `upto` (in any
    /// order, repeats allowed), written as one level file under `paths`.
    ///
    /// # Errors
    /// The level file cannot be written.
    pub fn new(paths: &DataPaths, upto: Seq, mut ids: Vec<u64>) -> Result<IdIndex> {
        ids.sort_unstable();
        ids.dedup();
        ids.retain(|id| *id != 0);
        let level = write_level(paths, Seq(0), upto, ids.into_iter())?;
        Ok(IdIndex::of_level(upto, level))
    }

    /// The index of one level (or of none) covering the records before `upto`.
    pub fn of_level(upto: Seq, level: Option<Level>) -> IdIndex {
        IdIndex {
            upto,
            levels: level.into_iter().map(Arc::new).collect(),
        }
    }

    /// Opens the level files `names` (as [`IdIndex::names`] gave them), the
    /// index of the records before `upto`.
    ///
    /// # Errors
    /// A level file is missing, damaged or unreadable (named).
    pub fn open(paths: &DataPaths, upto: Seq, names: &[String]) -> Result<IdIndex> {
        let levels = names
            .iter()
            .map(|name| Level::open(paths, name).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(IdIndex { upto, levels })
    }

    /// This index and `later`, the level of the ids of the records from
    /// [`IdIndex::upto`] to `upto` that this index does not hold, as the
    /// index of the records before `upto`. This index's levels are shared;
    /// merged ones are written anew under `paths`.
    ///
    /// # Errors
    /// A merged level cannot be read or written.
    pub fn extended(&self, paths: &DataPaths, upto: Seq, later: Option<Level>) -> Result<IdIndex> {
        let mut levels = self.levels.clone();
        let Some(mut newest) = later else {
            return Ok(IdIndex { upto, levels });
        };
        while let Some(below) = levels.last() {
            let small = newest.len() * 4 < below.len();
            if small && levels.len() < MAX_LEVELS {
                break;
            }
            newest = merge_levels(paths, below, &newest)?;
            levels.pop();
        }
        levels.push(Arc::new(newest));
        Ok(IdIndex { upto, levels })
    }

    /// Whether a record before [`IdIndex::upto`] has this id.
    ///
    /// # Errors
    /// A level's page cannot be read.
    pub fn contains(&self, id: u64) -> Result<bool> {
        for level in &self.levels {
            if level.contains(id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The records covered: every seq below this.
    pub fn upto(&self) -> Seq {
        self.upto
    }

    /// The names of its level files, oldest first: what a snapshot and the
    /// batch cache store to open it again.
    pub fn names(&self) -> Vec<String> {
        self.levels
            .iter()
            .map(|level| level.name().to_owned())
            .collect()
    }

    /// The ids, sorted and unique (read from every level).
    ///
    /// # Errors
    /// A level cannot be read.
    pub fn sorted(&self) -> Result<Vec<u64>> {
        let mut all = Vec::with_capacity(self.len());
        for level in &self.levels {
            for id in level.ids() {
                all.push(id?);
            }
        }
        all.sort_unstable();
        Ok(all)
    }

    /// Number of distinct ids.
    pub fn len(&self) -> usize {
        self.levels.iter().map(|level| level.len() as usize).sum()
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
    ///
    /// # Errors
    /// The index's files cannot be read: nothing is remembered.
    pub fn first(&mut self, seq: Seq, id: u64) -> Result<bool> {
        if id == 0 {
            return Ok(true);
        }
        if self.later_set.contains(&id) || self.index.contains(id)? {
            return Ok(false);
        }
        self.remember(seq, id);
        Ok(true)
    }

    /// Remembers that the record at `seq` holds `id`, without deciding
    /// whether it is the first copy (a record already in the log whose
    /// decision could not be taken): no later copy is counted.
    pub fn remember(&mut self, seq: Seq, id: u64) {
        if id != 0 && self.later_set.insert(id) {
            self.later.push_back((seq, id));
            self.staged += 1;
        }
    }

    /// How many decisions are staged: [`FirstCopies::rollback_to`] takes
    /// back those made after it.
    pub fn mark(&self) -> usize {
        self.staged
    }

    /// Forgets the decisions staged since `mark`.
    pub fn rollback_to(&mut self, mark: usize) {
        while self.staged > mark {
            if let Some((_, id)) = self.later.pop_back() {
                self.later_set.remove(&id);
            }
            self.staged -= 1;
        }
    }

    /// The records decided since the last commit are durable.
    pub fn commit(&mut self) {
        self.staged = 0;
    }

    /// The records decided since the last commit are not in the log: forget them.
    pub fn rollback(&mut self) {
        self.rollback_to(0);
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

    fn index(paths: &DataPaths, upto: u64, ids: Vec<u64>) -> Arc<IdIndex> {
        Arc::new(IdIndex::new(paths, Seq(upto), ids).expect("index"))
    }

    #[test]
    fn the_index_holds_exactly_its_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = DataPaths::new(dir.path());
        let ids: Vec<u64> = (0..10_000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
            .collect();
        let mut repeated = ids.clone();
        repeated.extend_from_slice(&ids[..100]);
        let index = IdIndex::new(&paths, Seq(10_100), repeated).expect("index");
        assert_eq!(index.len(), 10_000);
        assert!(ids.iter().all(|id| index.contains(*id).expect("lookup")));
        let strangers = (0..100_000u64)
            .map(|i| i.wrapping_mul(0xD1B5_4A32_D192_ED03) & !1)
            .filter(|id| !ids.contains(id));
        assert!(
            strangers
                .into_iter()
                .all(|id| !index.contains(id).expect("lookup"))
        );
        assert!(!IdIndex::default().contains(7).expect("lookup"));
        let reopened = IdIndex::open(&paths, Seq(10_100), &index.names()).expect("open");
        assert_eq!(
            reopened.sorted().expect("ids"),
            index.sorted().expect("ids")
        );
    }

    /// An index extended run after run holds exactly the ids given, in few
    /// levels, sharing the levels of the index it extends.
    #[test]
    fn an_extended_index_holds_exactly_its_ids_in_few_levels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = DataPaths::new(dir.path());
        let id = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut index =
            IdIndex::new(&paths, Seq(100_000), (0..100_000).map(id).collect()).expect("index");
        let mut next = 100_000;
        for run in 0..60u64 {
            let size = [1_000, 30_000, 5][run as usize % 3];
            let mut later: Vec<u64> = (next..next + size).map(id).collect();
            later.sort_unstable();
            let level =
                write_level(&paths, Seq(next), Seq(next + size), later.into_iter()).expect("level");
            let before = Arc::new(index);
            index = before
                .extended(&paths, Seq(next + size), level)
                .expect("extended");
            next += size;
            assert!(index.levels() <= MAX_LEVELS, "{index:?}");
            assert_eq!(index.len() as u64, next);
            assert!(
                before.len() as u64 == next - size,
                "the index extended is unchanged"
            );
        }
        let all: Vec<u64> = (0..next).map(id).collect();
        assert!(all.iter().all(|id| index.contains(*id).expect("lookup")));
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert_eq!(index.sorted().expect("ids"), sorted);
        let strangers = (0..100_000u64).map(|i| i.wrapping_mul(0xD1B5_4A32_D192_ED03) & !1);
        assert!(
            strangers
                .into_iter()
                .all(|id| !index.contains(id).expect("lookup"))
        );
        let reopened = IdIndex::open(&paths, index.upto(), &index.names()).expect("open");
        assert_eq!(reopened.len(), index.len());
    }

    #[test]
    fn the_first_copy_in_log_order_wins_across_the_index_and_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = DataPaths::new(dir.path());
        let mut first = FirstCopies::new(index(&paths, 3, vec![10, 11, 10]));
        let first_at =
            |first: &mut FirstCopies, seq, id| first.first(Seq(seq), id).expect("lookup");
        assert!(!first_at(&mut first, 3, 10), "a copy of an indexed id");
        assert!(first_at(&mut first, 4, 12));
        assert!(!first_at(&mut first, 5, 12), "a copy of a held id");
        assert!(first_at(&mut first, 6, 0), "no id: always counted");
        first.commit();
        assert!(first_at(&mut first, 7, 13));
        first.rollback();
        assert!(
            first_at(&mut first, 7, 13),
            "a rolled-back record was never in the log"
        );
        let mark = first.mark();
        assert!(first_at(&mut first, 8, 14));
        first.rollback_to(mark);
        assert!(first_at(&mut first, 8, 14), "taken back to the mark");
        first.rollback_to(mark);
        first.commit();
        assert_eq!(first.held(), 2);

        // A newer index covers seq 4 (id 12) but not seq 7 (id 13).
        first.advance(index(&paths, 5, vec![10, 11, 12]));
        assert_eq!(first.held(), 1);
        assert!(!first_at(&mut first, 8, 12));
        assert!(!first_at(&mut first, 8, 13));
        // An older index is ignored.
        first.advance(Arc::new(IdIndex::of_level(Seq(1), None)));
        assert!(!first_at(&mut first, 8, 11));
    }

    #[test]
    fn staged_ids_survive_an_index_that_reaches_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = DataPaths::new(dir.path());
        let mut first = FirstCopies::new(Arc::new(IdIndex::default()));
        assert!(first.first(Seq(0), 5).expect("lookup"));
        first.advance(index(&paths, 1, vec![5]));
        // Still staged: a failed commit must be able to take it back.
        first.rollback();
        assert_eq!(first.held(), 0);
    }
}
