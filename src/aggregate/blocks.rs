//! Time-aligned blocks of buckets kept merged once a range read needed them:
//! the live layer's answer to ranges over many buckets. A block of size `s`
//! holds the buckets starting in `[k·s·b, (k+1)·s·b)` for bucket length `b`;
//! a range read visits the largest blocks lying whole in the range and the
//! buckets outside them, at most one block of each size and one bucket at
//! each end of the range besides the blocks of the largest size. An event
//! drops the blocks holding its bucket, and the next read merges them again.
use super::{KeyGroups, MetricState, ViewSpec, merge_states};
use std::collections::BTreeMap;

/// Sizes, in buckets, of the blocks kept: each twice the one before.
pub const BLOCK_SIZES: [i64; 8] = [2, 4, 8, 16, 32, 64, 128, 256];

/// Buckets of one epoch, ascending by start, as [`Blocks`] reads them.
pub trait BucketSource {
    /// The first bucket starting in `[from, to)`, with its states.
    fn first_in(&self, from: i64, to: i64) -> Option<(i64, &[MetricState])>;
}

/// Buckets by start, each with its states (an epoch's totals per bucket).
impl<T: AsRef<[MetricState]>> BucketSource for BTreeMap<i64, T> {
    fn first_in(&self, from: i64, to: i64) -> Option<(i64, &[MetricState])> {
        (from < to)
            .then(|| self.range(from..to).next())
            .flatten()
            .map(|(start, states)| (*start, states.as_ref()))
    }
}

/// One key's groups, of a view of `n` metrics.
pub struct KeyBuckets<'a> {
    /// The groups.
    pub groups: &'a KeyGroups,
    /// The view's number of metrics.
    pub n: usize,
}

impl BucketSource for KeyBuckets<'_> {
    fn first_in(&self, from: i64, to: i64) -> Option<(i64, &[MetricState])> {
        let buckets = self.groups.buckets();
        let at = buckets.partition_point(|start| *start < from);
        buckets
            .get(at)
            .filter(|start| **start < to)
            .map(|start| (*start, self.groups.states(self.n, at)))
    }
}

/// The blocks of one epoch's buckets kept merged; see the module.
#[derive(Debug, Default)]
pub struct Blocks {
    /// Per size of [`BLOCK_SIZES`], by the start of the block's first
    /// bucket: its states, or `None` for a block lighter than the weight
    /// the reader keeps (see [`Blocks::each_in`]).
    levels: [BTreeMap<i64, Option<Box<[MetricState]>>>; BLOCK_SIZES.len()],
}

impl Blocks {
    /// Drops the blocks holding the bucket starting at `bucket`, which an
    /// event landed in (the view's buckets are `step` long).
    pub fn landed(&mut self, step: i64, bucket: i64) {
        for (level, size) in self.levels.iter_mut().zip(BLOCK_SIZES) {
            if !level.is_empty() {
                level.remove(&(bucket - bucket.rem_euclid(size * step)));
            }
        }
    }

    /// Drops the blocks starting before `cutoff`, once the buckets before it
    /// are dropped: reads start at the first bucket held, so they would not
    /// be read again (a block starting later holds none of the dropped).
    pub fn retain_from(&mut self, cutoff: i64) {
        for level in &mut self.levels {
            *level = level.split_off(&cutoff);
        }
    }

    /// Calls `visit` with states that together hold each bucket of `source`
    /// starting in `[from, to)` exactly once: the largest blocks lying whole
    /// in it, merged now unless kept since an event last landed in them, and
    /// the buckets outside them. A block whose buckets would insert fewer than
    /// `weight` values when merged ([`MetricState::merge_weight`]) is not
    /// kept: its buckets, or the smaller blocks in it, are visited instead.
    pub fn each_in(
        &mut self,
        spec: &ViewSpec,
        source: &dyn BucketSource,
        weight: usize,
        (from, to): (i64, i64),
        visit: &mut dyn FnMut(&[MetricState]),
    ) {
        let read = Read {
            spec,
            source,
            weight,
        };
        self.parts(&read, BLOCK_SIZES.len(), (from, to), visit);
    }

    /// [`Blocks::each_in`] reading the blocks of the first `levels` sizes.
    fn parts(
        &mut self,
        read: &Read<'_>,
        levels: usize,
        (mut from, to): (i64, i64),
        visit: &mut dyn FnMut(&[MetricState]),
    ) {
        let Some(level) = levels.checked_sub(1) else {
            let mut at = from;
            while let Some((bucket, states)) = read.source.first_in(at, to) {
                visit(states);
                at = bucket + 1;
            }
            return;
        };
        let span = BLOCK_SIZES[level] * read.spec.bucket_ms;
        // The first block starting at or after `from`.
        let mut start = from.saturating_add((span - from.rem_euclid(span)) % span);
        while start.saturating_add(span) <= to {
            // On to the block holding the next bucket.
            let Some((bucket, _)) = read.source.first_in(start, to) else {
                break;
            };
            let holding = bucket - bucket.rem_euclid(span);
            if holding > start {
                start = holding;
                continue;
            }
            if self.kept(read, level, start) {
                // The block before the smaller parts ahead of it: a sketch
                // merged into takes the form of the largest part first
                // (a register array takes values and small sketches at the
                // cost of a register each).
                if let Some(Some(states)) = self.levels[level].get(&start) {
                    visit(states);
                }
                self.parts(read, level, (from, start), visit);
                from = start + span;
            }
            start += span;
        }
        self.parts(read, level, (from, to), visit);
    }

    /// Whether the block of size `BLOCK_SIZES[level]` starting at `start` is
    /// kept, merging it now unless it was merged (or found too light) since
    /// an event last landed in it.
    fn kept(&mut self, read: &Read<'_>, level: usize, start: i64) -> bool {
        if let Some(block) = self.levels[level].get(&start) {
            return block.is_some();
        }
        let end = start + BLOCK_SIZES[level] * read.spec.bucket_ms;
        let heavy = read.weight == 0 || {
            let (mut at, mut weight) = (start, 0);
            while let Some((bucket, states)) = read.source.first_in(at, end) {
                weight += states.iter().map(MetricState::merge_weight).sum::<usize>();
                at = bucket + 1;
            }
            weight >= read.weight
        };
        let block = heavy.then(|| {
            let mut states = read.spec.empty_states();
            self.parts(read, level, (start, end), &mut |part| {
                merge_states(&mut states, part)
            });
            states
        });
        self.levels[level].insert(start, block);
        heavy
    }
}

/// What a read of [`Blocks`] reads.
struct Read<'a> {
    spec: &'a ViewSpec,
    source: &'a dyn BucketSource,
    weight: usize,
}

#[cfg(test)]
impl Blocks {
    /// How many blocks are kept merged.
    pub fn kept_count(&self) -> usize {
        self.levels
            .iter()
            .flatten()
            .filter(|(_, block)| block.is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Input;
    use crate::config::Config;
    use proptest::prelude::*;

    proptest! {
        /// Whatever was read, landed in and kept before, a read visits each
        /// bucket starting in its range exactly once: each event adds its
        /// own bit to its bucket's count, and the counts visited add up to
        /// the bits of the events in range (a bucket visited twice, or a
        /// block kept past an event, adds up to something else). Blocks of
        /// up to 256 buckets, on both sides of 0, ranges ending before they
        /// start, and weights that keep every block, some, or none.
        #[test]
        fn a_read_visits_each_bucket_in_range_once(
            steps in proptest::collection::vec(
                (
                    proptest::collection::vec((prop_oneof![-40..40i64, -300..300i64], 0..6u64), 0..12),
                    -310..310i64,
                    prop_oneof![1..80i64, -5..600i64],
                ),
                1..6,
            ),
            weight in prop_oneof![Just(0usize), 1..12usize, Just(usize::MAX)],
        ) {
            let config = Config::parse(crate::aggregate::COUNT_AND_USERS_CONFIG, "test.toml").expect("config");
            let spec = &config.views[0];
            let (mut held, mut blocks, mut bit) = (BTreeMap::<i64, Box<[MetricState]>>::new(), Blocks::default(), 0u32);
            let mut events: Vec<(i64, u64)> = Vec::new();
            for (landed, from, width) in steps {
                for (minute, users) in landed {
                    if bit == 64 {
                        break;
                    }
                    let start = minute * spec.bucket_ms;
                    let states = held.entry(start).or_insert_with(|| spec.empty_states());
                    // The count takes the event's bit; the distinct state a
                    // few values, so that blocks weigh differently.
                    if let MetricState::Count(count) = &mut states[0] {
                        *count += 1 << bit;
                    }
                    for user in 0..users {
                        states[1].update(Input::Hash(user * 1_000 + u64::from(bit)));
                    }
                    blocks.landed(spec.bucket_ms, start);
                    events.push((start, 1 << bit));
                    bit += 1;
                }
                let (from, to) = (from * spec.bucket_ms, (from + width) * spec.bucket_ms);
                let mut visited = 0u64;
                blocks.each_in(spec, &held, weight, (from, to), &mut |states| {
                    if let MetricState::Count(count) = states[0] {
                        visited = visited.wrapping_add(count);
                    }
                });
                let expected: u64 = events
                    .iter()
                    .filter(|(start, _)| (from..to).contains(start))
                    .map(|(_, bit)| bit)
                    .sum();
                prop_assert_eq!(visited, expected, "over [{}, {})", from, to);
            }
            if weight == usize::MAX {
                prop_assert_eq!(blocks.kept_count(), 0, "no block weighs that much");
            }
        }
    }
}
