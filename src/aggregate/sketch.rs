//! The two approximate metrics, each exact while small and a sketch once large.
//!
//! Most (key, bucket) groups see a handful of values, so both start as a sorted
//! boxed slice (no spare capacity) and turn into a sketch only past a limit:
//! HyperLogLog++ (precision 14, about 0.8% standard error) for distinct counts,
//! DDSketch (1% relative error) for quantiles. This is the only file that names
//! the sketch crates.

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config as DdConfig, DDSketch};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinct values counted exactly up to this many; beyond, HyperLogLog++.
pub const DISTINCT_EXACT_LIMIT: usize = 512;
/// Values kept exactly up to this many for quantiles; beyond, DDSketch.
pub const QUANTILE_EXACT_LIMIT: usize = 128;
/// HyperLogLog++ precision: 2^14 registers, standard error 1.04 / 128 = 0.81%.
const HLL_PRECISION: u8 = 14;
/// DDSketch relative accuracy.
const DDSKETCH_ALPHA: f64 = 0.01;
/// DDSketch bin limit: with alpha 0.01 this spans about 36 orders of magnitude.
const DDSKETCH_MAX_BINS: u32 = 4096;
/// Values closer to zero than this count as zero in a DDSketch.
const DDSKETCH_MIN_VALUE: f64 = 1e-9;

/// Everything above that decides how a stored state reads, in one line: a
/// snapshot's view states are used only by a build with the same parameters
/// (they are part of a view's fingerprint), so a sketch never meets one it
/// cannot merge with.
pub fn parameters() -> String {
    format!(
        "distinct: exact to {DISTINCT_EXACT_LIMIT}, then HyperLogLog++ p{HLL_PRECISION}; \
         quantile: exact to {QUANTILE_EXACT_LIMIT}, then DDSketch alpha {DDSKETCH_ALPHA}, \
         {DDSKETCH_MAX_BINS} bins, min {DDSKETCH_MIN_VALUE:e}"
    )
}

/// Passes a value that is already a 64-bit hash through unchanged.
///
/// Values are hashed once with [`crate::event::hash_text`]; the sketch must
/// not hash them again with a seeded hasher, or sketches built in different
/// processes would not merge.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PassThrough;

/// The hasher behind [`PassThrough`].
#[derive(Debug, Default)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;

    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

type Hll = HyperLogLogPlus<u64, PassThrough>;

/// A HyperLogLog++ sketch and its last estimate. An estimate reads all 2^14
/// registers (and `hyperloglogplus` wants `&mut` for it, to fold its insert
/// buffer), while most sketches are read far more often than they change: a
/// snapshot's, or a closed bucket's. So the estimate is kept until the next
/// insert or merge, and reads stay shared.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HllSketch {
    hll: Hll,
    /// The estimate since the last change; [`HllSketch::UNKNOWN`] when none.
    #[serde(skip, default = "HllSketch::unknown")]
    estimate: Estimate,
}

/// A sketch's cached estimate, rounded; written by readers.
#[derive(Debug)]
struct Estimate(AtomicU64);

impl Clone for Estimate {
    fn clone(&self) -> Self {
        Estimate(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

impl HllSketch {
    const UNKNOWN: u64 = u64::MAX;

    fn unknown() -> Estimate {
        Estimate(AtomicU64::new(Self::UNKNOWN))
    }

    fn new<'a>(hashes: impl IntoIterator<Item = &'a u64>) -> Box<HllSketch> {
        let mut hll = HyperLogLogPlus::new(HLL_PRECISION, PassThrough)
            .expect("precision 14 lies within 4..=18");
        for hash in hashes {
            hll.insert(hash);
        }
        Box::new(HllSketch {
            hll,
            estimate: Self::unknown(),
        })
    }

    fn insert(&mut self, hash: &u64) {
        self.hll.insert(hash);
        *self.estimate.0.get_mut() = Self::UNKNOWN;
    }

    fn merge(&mut self, other: &HllSketch) -> Result<(), hyperloglogplus::HyperLogLogError> {
        *self.estimate.0.get_mut() = Self::UNKNOWN;
        self.hll.merge(&other.hll)
    }

    fn count(&self) -> u64 {
        let known = self.estimate.0.load(Ordering::Relaxed);
        if known != Self::UNKNOWN {
            return known;
        }
        // Folding the insert buffer needs `&mut`: a copy keeps reads shared,
        // and it is made once per change.
        let estimate = self.hll.clone().count().round() as u64;
        self.estimate.0.store(estimate, Ordering::Relaxed);
        estimate
    }
}

/// Distinct count state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Distinct {
    /// Exactly one value hash, held inline: most groups see few values.
    One(u64),
    /// Sorted, unique value hashes; exact. Empty when no value was seen.
    Exact(Box<[u64]>),
    /// HyperLogLog++ once past [`DISTINCT_EXACT_LIMIT`].
    Sketch(Box<HllSketch>),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Exact(Box::default())
    }
}

impl Distinct {
    /// The exact values, unless this is a sketch.
    fn exact(&self) -> Option<&[u64]> {
        match self {
            Distinct::One(hash) => Some(std::slice::from_ref(hash)),
            Distinct::Exact(hashes) => Some(hashes),
            Distinct::Sketch(_) => None,
        }
    }

    /// The smallest form holding these sorted, unique hashes.
    fn from_sorted(hashes: Vec<u64>) -> Distinct {
        match hashes.as_slice() {
            [one] => Distinct::One(*one),
            _ if hashes.len() <= DISTINCT_EXACT_LIMIT => Distinct::Exact(hashes.into_boxed_slice()),
            _ => Distinct::Sketch(HllSketch::new(&hashes)),
        }
    }

    /// Adds one value hash.
    pub fn insert(&mut self, hash: u64) {
        // The common case, grown in place: an exact set that stays exact.
        if let Distinct::Exact(hashes) = self
            && (1..DISTINCT_EXACT_LIMIT).contains(&hashes.len())
        {
            if let Err(at) = hashes.binary_search(&hash) {
                *hashes = grow_at(std::mem::take(hashes), at, hash);
            }
            return;
        }
        match self.exact() {
            Some(hashes) => {
                if let Err(at) = hashes.binary_search(&hash) {
                    *self = Distinct::from_sorted(insert_at(hashes, at, hash));
                }
            }
            None => {
                if let Distinct::Sketch(hll) = self {
                    hll.insert(&hash);
                }
            }
        }
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Distinct) {
        match (self.exact(), other.exact()) {
            (Some(mine), Some(theirs)) => {
                *self = Distinct::from_sorted(sorted_union(mine, theirs, u64::cmp, true))
            }
            (Some(mine), None) => {
                if let Distinct::Sketch(theirs) = other {
                    let mut hll = theirs.clone();
                    for hash in mine {
                        hll.insert(hash);
                    }
                    *self = Distinct::Sketch(hll);
                }
            }
            (None, theirs) => {
                if let Distinct::Sketch(hll) = self {
                    match (theirs, other) {
                        (Some(theirs), _) => theirs.iter().for_each(|hash| hll.insert(hash)),
                        (None, Distinct::Sketch(sketch)) => {
                            // Both come from this build (see `parameters`); a
                            // mismatch is a bug, reported, never a crash.
                            if let Err(err) = hll.merge(sketch) {
                                tracing::error!(error = %err, "distinct sketches of different precisions; one is left out");
                            }
                        }
                        (None, _) => {}
                    }
                }
            }
        }
    }

    /// The number of distinct values: exact while small, estimated beyond.
    pub fn count(&self) -> u64 {
        match self {
            Distinct::Sketch(hll) => hll.count(),
            exact => exact.exact().map_or(0, |hashes| hashes.len() as u64),
        }
    }
}

/// Quantile state.
#[derive(Clone, Serialize, Deserialize)]
pub enum Quantiles {
    /// Exactly one value, held inline.
    One(f64),
    /// Sorted values; exact. Empty when no value was seen.
    Exact(Box<[f64]>),
    /// DDSketch once past [`QUANTILE_EXACT_LIMIT`].
    Sketch(Box<DDSketch>),
}

impl std::fmt::Debug for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quantiles::One(value) => f.debug_tuple("One").field(value).finish(),
            Quantiles::Exact(values) => f.debug_tuple("Exact").field(values).finish(),
            Quantiles::Sketch(sketch) => write!(f, "Sketch({} values)", sketch.count()),
        }
    }
}

impl Default for Quantiles {
    fn default() -> Self {
        Quantiles::Exact(Box::default())
    }
}

fn new_ddsketch<'a>(values: impl IntoIterator<Item = &'a f64>) -> Box<DDSketch> {
    let mut sketch = Box::new(DDSketch::new(DdConfig::new(
        DDSKETCH_ALPHA,
        DDSKETCH_MAX_BINS,
        DDSKETCH_MIN_VALUE,
    )));
    for value in values {
        sketch.add(*value);
    }
    sketch
}

impl Quantiles {
    /// The exact values, unless this is a sketch.
    fn exact(&self) -> Option<&[f64]> {
        match self {
            Quantiles::One(value) => Some(std::slice::from_ref(value)),
            Quantiles::Exact(values) => Some(values),
            Quantiles::Sketch(_) => None,
        }
    }

    /// The smallest form holding these sorted values.
    fn from_sorted(values: Vec<f64>) -> Quantiles {
        match values.as_slice() {
            [one] => Quantiles::One(*one),
            _ if values.len() <= QUANTILE_EXACT_LIMIT => {
                Quantiles::Exact(values.into_boxed_slice())
            }
            _ => Quantiles::Sketch(new_ddsketch(&values)),
        }
    }

    /// Adds one value.
    pub fn insert(&mut self, value: f64) {
        // The common case, grown in place: exact values that stay exact.
        if let Quantiles::Exact(values) = self
            && (1..QUANTILE_EXACT_LIMIT).contains(&values.len())
        {
            let at = values.partition_point(|v| v.total_cmp(&value).is_le());
            *values = grow_at(std::mem::take(values), at, value);
            return;
        }
        match self.exact() {
            Some(values) => {
                let at = values.partition_point(|v| v.total_cmp(&value).is_le());
                *self = Quantiles::from_sorted(insert_at(values, at, value));
            }
            None => {
                if let Quantiles::Sketch(sketch) = self {
                    sketch.add(value);
                }
            }
        }
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Quantiles) {
        match (self.exact(), other.exact()) {
            (Some(mine), Some(theirs)) => {
                *self = Quantiles::from_sorted(sorted_union(mine, theirs, f64::total_cmp, false));
            }
            (Some(mine), None) => {
                if let Quantiles::Sketch(theirs) = other {
                    let mut sketch = theirs.clone();
                    mine.iter().for_each(|value| sketch.add(*value));
                    *self = Quantiles::Sketch(sketch);
                }
            }
            (None, theirs) => {
                if let Quantiles::Sketch(sketch) = self {
                    match (theirs, other) {
                        (Some(theirs), _) => theirs.iter().for_each(|value| sketch.add(*value)),
                        (None, Quantiles::Sketch(other)) => {
                            if let Err(err) = sketch.merge(other) {
                                tracing::error!(error = %err, "quantile sketches of different configurations; one is left out");
                            }
                        }
                        (None, _) => {}
                    }
                }
            }
        }
    }

    /// The value at rank `floor(q * (n - 1))`, as DDSketch defines it; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let q = q.clamp(0.0, 1.0);
        match self {
            Quantiles::Sketch(sketch) => sketch.quantile(q).ok().flatten(),
            exact => {
                let values = exact.exact()?;
                let rank = (q * values.len().checked_sub(1)? as f64) as usize;
                values.get(rank).copied()
            }
        }
    }
}

/// `values` with `value` inserted at `at`, reallocated in place where the
/// allocator can (no spare capacity is kept: a group's states stay compact).
fn grow_at<T: Copy>(values: Box<[T]>, at: usize, value: T) -> Box<[T]> {
    let mut grown = values.into_vec();
    grown.reserve_exact(1);
    grown.insert(at, value);
    grown.into_boxed_slice()
}

fn insert_at<T: Copy>(values: &[T], at: usize, value: T) -> Vec<T> {
    let mut grown = Vec::with_capacity(values.len() + 1);
    grown.extend_from_slice(&values[..at]);
    grown.push(value);
    grown.extend_from_slice(&values[at..]);
    grown
}

/// Merges two sorted slices; `dedup` drops values present in both.
fn sorted_union<T: Copy>(
    a: &[T],
    b: &[T],
    cmp: impl Fn(&T, &T) -> std::cmp::Ordering,
    dedup: bool,
) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match cmp(&a[i], &b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                if dedup {
                    j += 1;
                }
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}
