//! The two approximate metrics, each exact while small and a sketch once large.
//!
//! Most (key, bucket) groups see a handful of values, so both start as a sorted
//! boxed slice (no spare capacity) and turn into a sketch only past a limit:
//! HyperLogLog (Apache DataSketches, lgK 14, about 0.8% standard error) for
//! distinct counts, DDSketch (1% relative error) for quantiles. This is the
//! only file that names the sketch crates.

use datasketches::hll::{HllSketch as DsHll, HllType, HllUnion};
use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config as DdConfig, DDSketch};
use std::sync::OnceLock;

/// Distinct values counted exactly up to this many; beyond, HyperLogLog.
pub const DISTINCT_EXACT_LIMIT: usize = 512;
/// Values kept exactly up to this many for quantiles; beyond, DDSketch.
pub const QUANTILE_EXACT_LIMIT: usize = 128;
/// HyperLogLog size: 2^14 registers, standard error 1.04 / 128 = 0.81%.
pub const HLL_LG_K: u8 = 14;
/// What merging a sketch into another costs, in values inserted one by one
/// (about what raising 16,384 registers, or adding a DDSketch's bins, takes).
pub const SKETCH_MERGE_WEIGHT: usize = 128;
/// DDSketch relative accuracy.
const DDSKETCH_ALPHA: f64 = 0.01;
/// DDSketch bin limit: with alpha 0.01 this spans about 36 orders of magnitude.
const DDSKETCH_MAX_BINS: u32 = 4096;
/// Values closer to zero than this count as zero in a DDSketch (their bin
/// is none: see [`quantile_bin`]).
pub const DDSKETCH_MIN_VALUE: f64 = 1e-9;

/// Everything above that decides how a stored state reads, in one line: a
/// snapshot's view states are used only by a build with the same parameters
/// (they are part of a view's fingerprint), so a sketch never meets one it
/// cannot merge with.
pub fn parameters() -> String {
    format!(
        "distinct: exact to {DISTINCT_EXACT_LIMIT}, then DataSketches HLL_8 lgK {HLL_LG_K}; \
         quantile: exact to {QUANTILE_EXACT_LIMIT}, then DDSketch alpha {DDSKETCH_ALPHA}, \
         {DDSKETCH_MAX_BINS} bins, min {DDSKETCH_MIN_VALUE:e}"
    )
}

/// A HyperLogLog sketch (Apache DataSketches, lgK 14, 8-bit registers) and
/// its last estimate.
///
/// The estimate is the composite one, a function of the registers alone:
/// sketches merged in any order, or stored and loaded again, answer the
/// same. It reads every register, while most sketches are read far more
/// often than they change (a snapshot's, a closed bucket's), so it is kept
/// until the next change. So are the coupons of a sketch in list or set
/// form, which a merge into a register array reads.
#[derive(Debug)]
pub struct HllSketch {
    registers: Registers,
    /// The estimate since the last change.
    estimate: OnceLock<u64>,
    /// The coupons (each a register's slot and value) of registers in list
    /// or set form since the last change: DataSketches gives them only in
    /// its image, whose writing cost more than the rest of a merge of a
    /// closed bucket's sketch into a register array, done at every query
    /// that reads that bucket. Four bytes a coupon, less than the set's own
    /// table (at most three quarters full); kept only once a merge read them.
    coupons: OnceLock<Box<[u32]>>,
}

/// A copy is usually changed next, so the coupons are not copied.
impl Clone for HllSketch {
    fn clone(&self) -> Self {
        HllSketch {
            registers: self.registers.clone(),
            estimate: self.estimate.clone(),
            coupons: OnceLock::new(),
        }
    }
}

/// The number of registers.
const HLL_K: usize = 1 << HLL_LG_K;
/// The preamble's length in 4-byte words, the first byte of a DataSketches
/// HLL image: it says which form follows (a coupon list from byte 8, a
/// coupon set from byte 12, a register array from byte 40).
const HLL_LIST_WORDS: u8 = 2;
const HLL_SET_WORDS: u8 = 3;
const HLL_ARRAY_WORDS: u8 = 10;

/// A sketch's registers: built by inserts (or loaded), a plain sketch, which
/// a union reads without a copy; once merged into while every side is a
/// coupon list or set, DataSketches' union, which takes further sketches in
/// place; once merged with a register array, or sent exact values by a
/// merge while DataSketches holds them as one, the registers themselves.
#[derive(Debug, Clone)]
enum Registers {
    Sketch(DsHll),
    Union(HllUnion),
    /// One byte per register, the maximum over every sketch merged in and
    /// every value inserted (raised by its [`coupon`]). A union of register
    /// arrays recomputes its estimator's sums over all 16,384 registers at
    /// every merge; here a merge is one pass of `max`, an insert raises one
    /// register, and the sums are computed once, when the estimate is read.
    Dense(Box<[u8]>),
}

/// The seed of DataSketches' hash of an inserted value.
const HLL_SEED: u64 = 9001;

/// The register an inserted value hash raises, and the value it raises it
/// to: DataSketches' coupon of the hash (MurmurHash3 x64 128 of its 8 bytes,
/// as `Hash` writes them, under seed 9001; the low word's last bits pick the
/// register, the high word's leading zeros plus one, at most 63, are the
/// value), so that registers raised here equal those of a DataSketches
/// sketch that was sent the same hashes.
fn coupon(hash: u64) -> (usize, u8) {
    // The crate lays the two words out in memory in order (low first),
    // whatever the byte order.
    let both = fastmurmur3::murmur3_x64_128(&hash.to_ne_bytes(), HLL_SEED).to_ne_bytes();
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&both[at..at + 8]);
        u64::from_ne_bytes(bytes)
    };
    let (low, high) = (word(0), word(8));
    let value = high.leading_zeros().min(62) + 1;
    (low as usize & (HLL_K - 1), value as u8)
}

impl Registers {
    /// Whether DataSketches holds these as a register array (the largest
    /// coupon set of lgK 14, 2^11 coupons of 4 bytes, is half its size).
    fn is_array(&self) -> bool {
        match self {
            Registers::Sketch(sketch) => sketch.estimated_size() >= HLL_K,
            Registers::Union(union) => union.estimated_size() >= HLL_K,
            Registers::Dense(_) => true,
        }
    }

    /// Merges these registers into `union`.
    fn merge_into(&self, union: &mut HllUnion) {
        match self {
            Registers::Sketch(sketch) => union.update(sketch),
            Registers::Union(other) => union.update(&other.to_sketch(HllType::Hll8)),
            Registers::Dense(_) => union.update(&self.to_sketch()),
        }
    }

    /// DataSketches' image of these registers, as it writes it.
    fn serialize(&self) -> Vec<u8> {
        match self {
            Registers::Sketch(sketch) => sketch.serialize(),
            Registers::Union(union) => union.to_sketch(HllType::Hll8).serialize(),
            Registers::Dense(registers) => array_image(registers),
        }
    }

    /// These registers as a DataSketches sketch (for dense registers, read
    /// from the image DataSketches would write for them).
    fn to_sketch(&self) -> DsHll {
        match self {
            Registers::Sketch(sketch) => sketch.clone(),
            Registers::Union(union) => union.to_sketch(HllType::Hll8),
            Registers::Dense(_) => {
                let image = canonical_hll(self.serialize());
                DsHll::deserialize(&image).expect("a register array's image reads back")
            }
        }
    }
}

/// The image DataSketches writes of an HLL_8 register array of lgK 14 (its
/// preamble, taken once from a sketch of its own, then the registers); its
/// estimator's fields are left to [`canonical_hll`].
fn array_image(registers: &[u8]) -> Vec<u8> {
    static PREAMBLE: OnceLock<Vec<u8>> = OnceLock::new();
    let preamble = PREAMBLE.get_or_init(|| {
        let mut sketch = DsHll::new(HLL_LG_K, HllType::Hll8).expect("lgK 14 lies within 4..=21");
        let mut value = 0u64;
        while sketch.estimated_size() < HLL_K {
            sketch.update(value);
            value += 1;
        }
        let image = sketch.serialize();
        image[..image.len() - HLL_K].to_vec()
    });
    let mut image = Vec::with_capacity(preamble.len() + HLL_K);
    image.extend_from_slice(preamble);
    image.extend_from_slice(registers);
    image
}

/// The coupons of a DataSketches HLL image of lgK 14 in list or set form
/// (each a register's value in its upper 6 bits and its slot in the lower
/// 26, as the image format defines them); none for any other image.
fn image_coupons(image: &[u8]) -> Box<[u32]> {
    let from = match image.first().copied() {
        Some(HLL_LIST_WORDS) => 8,
        Some(HLL_SET_WORDS) => 12,
        other => {
            debug_assert!(false, "an HLL image of preamble {other:?}");
            image.len()
        }
    };
    image
        .get(from..)
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|word| u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
        .filter(|coupon| *coupon != 0)
        .collect()
}

/// Raises `registers` to the value of each coupon in its slot.
fn raise_coupons(coupons: &[u32], registers: &mut [u8]) {
    const COUPON_VALUE_SHIFT: u32 = 26;
    for coupon in coupons {
        let slot = *coupon as usize & (HLL_K - 1);
        let value = (coupon >> COUPON_VALUE_SHIFT) as u8;
        registers[slot] = registers[slot].max(value);
    }
}

/// Raises `registers` to the registers of a register array's DataSketches
/// image of lgK 14 (its last 2^14 bytes).
fn raise_to_array(image: &[u8], registers: &mut [u8]) {
    let theirs = &image[image.len().saturating_sub(HLL_K)..];
    for (register, theirs) in registers.iter_mut().zip(theirs) {
        *register = (*register).max(*theirs);
    }
}

impl HllSketch {
    fn from_registers(registers: Registers) -> Box<HllSketch> {
        Box::new(HllSketch {
            registers,
            estimate: OnceLock::new(),
            coupons: OnceLock::new(),
        })
    }

    /// Raises `registers` to these registers where they are higher.
    fn max_into(&self, registers: &mut [u8]) {
        match &self.registers {
            Registers::Dense(mine) => {
                for (register, mine) in registers.iter_mut().zip(mine.iter()) {
                    *register = (*register).max(*mine);
                }
            }
            held => {
                if let Some(coupons) = self.coupons.get() {
                    return raise_coupons(coupons, registers);
                }
                let image = held.serialize();
                match image.first().copied() {
                    Some(HLL_ARRAY_WORDS) => raise_to_array(&image, registers),
                    _ => raise_coupons(
                        self.coupons.get_or_init(|| image_coupons(&image)),
                        registers,
                    ),
                }
            }
        }
    }

    /// These registers as one array.
    fn to_array(&self) -> Box<[u8]> {
        let mut registers = vec![0u8; HLL_K].into_boxed_slice();
        self.max_into(&mut registers);
        registers
    }

    fn new<'a>(hashes: impl IntoIterator<Item = &'a u64>) -> Box<HllSketch> {
        let mut sketch = DsHll::new(HLL_LG_K, HllType::Hll8).expect("lgK 14 lies within 4..=21");
        for hash in hashes {
            sketch.update(*hash);
        }
        Self::from_registers(Registers::Sketch(sketch))
    }

    fn changed(&mut self) {
        self.estimate.take();
        self.coupons.take();
    }

    fn insert(&mut self, hash: &u64) {
        match &mut self.registers {
            Registers::Sketch(sketch) => sketch.update(*hash),
            Registers::Union(union) => union.update_value(*hash),
            Registers::Dense(registers) => {
                let (slot, value) = coupon(*hash);
                registers[slot] = registers[slot].max(value);
            }
        }
        self.changed();
    }

    /// Inserts every hash of `hashes`. Registers in array form take them as
    /// a register array (a coupon and a `max` each), which holds the same
    /// registers as DataSketches' array would, at a fraction of its cost;
    /// a coupon list or set stays DataSketches' own.
    fn insert_all(&mut self, hashes: &[u64]) {
        // Nothing changes: the estimate is kept (a merge with an empty state
        // is how a query starts).
        if hashes.is_empty() {
            return;
        }
        if !matches!(self.registers, Registers::Dense(_)) && self.registers.is_array() {
            self.registers = Registers::Dense(self.to_array());
        }
        match &mut self.registers {
            Registers::Sketch(sketch) => hashes.iter().for_each(|hash| sketch.update(*hash)),
            Registers::Union(union) => hashes.iter().for_each(|hash| union.update_value(*hash)),
            Registers::Dense(registers) => {
                for hash in hashes {
                    let (slot, value) = coupon(*hash);
                    registers[slot] = registers[slot].max(value);
                }
            }
        }
        self.changed();
    }

    fn merge(&mut self, other: &HllSketch) {
        if let Registers::Dense(registers) = &mut self.registers {
            other.max_into(registers);
        } else if self.registers.is_array() || other.registers.is_array() {
            let mut registers = self.to_array();
            other.max_into(&mut registers);
            self.registers = Registers::Dense(registers);
        } else if let Registers::Union(union) = &mut self.registers {
            other.registers.merge_into(union);
        } else if let Registers::Sketch(sketch) = &self.registers {
            let mut union = HllUnion::new(HLL_LG_K).expect("lgK 14 lies within 4..=21");
            union.update(sketch);
            other.registers.merge_into(&mut union);
            self.registers = Registers::Union(union);
        }
        self.changed();
    }

    fn count(&self) -> u64 {
        *self.estimate.get_or_init(|| {
            let estimate = match &self.registers {
                Registers::Sketch(sketch) => sketch.composite_estimate(),
                Registers::Union(union) => union.composite_estimate(),
                Registers::Dense(_) => self.registers.to_sketch().composite_estimate(),
            };
            estimate.round() as u64
        })
    }
}

/// Stored as DataSketches' own serialization of the registers (a byte
/// sequence), which any DataSketches library reads, made canonical: the same
/// values give the same bytes whatever order they came in and however the
/// sketch was merged (see [`canonical_hll`]).
impl Serialize for HllSketch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.image().serialize(serializer)
    }
}

impl HllSketch {
    /// DataSketches' image of the registers, made canonical.
    fn image(&self) -> Vec<u8> {
        canonical_hll(self.registers.serialize())
    }
}

/// DataSketches' HLL image with what depends on history rather than on the
/// values made canonical. Coupon lists and sets are written in table order,
/// here sorted; a register array carries the HIP estimator (an accumulation in
/// update order, here cleared with the out-of-order flag set, as a union
/// leaves it: tandem reads only the composite estimate, a function of the
/// registers) and register sums accumulated in update order (here summed
/// again in slot order, as DataSketches rebuilds them after a merge). An image
/// of another shape is returned as it is.
fn canonical_hll(mut bytes: Vec<u8>) -> Vec<u8> {
    const OUT_OF_ORDER: u8 = 16;
    let sort_coupons = |bytes: &mut [u8], from: usize| {
        let Some(coupons) = bytes.get_mut(from..) else {
            return;
        };
        let mut words: Vec<u32> = coupons
            .chunks_exact(4)
            .map(|word| u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
            .collect();
        words.sort_unstable();
        for (slot, word) in coupons.chunks_exact_mut(4).zip(words) {
            slot.copy_from_slice(&word.to_le_bytes());
        }
    };
    match bytes.first().copied() {
        Some(HLL_LIST_WORDS) => sort_coupons(&mut bytes, 8),
        Some(HLL_SET_WORDS) => sort_coupons(&mut bytes, 12),
        Some(HLL_ARRAY_WORDS) if bytes.len() > 40 => {
            let (kxq0, kxq1, zeros) = register_sums(&bytes[40..]);
            bytes[5] |= OUT_OF_ORDER;
            bytes[8..16].copy_from_slice(&0f64.to_le_bytes());
            bytes[16..24].copy_from_slice(&kxq0.to_le_bytes());
            bytes[24..32].copy_from_slice(&kxq1.to_le_bytes());
            bytes[32..36].copy_from_slice(&zeros.to_le_bytes());
        }
        _ => {}
    }
    bytes
}

/// DataSketches' sums over HLL registers, as it rebuilds them after a merge
/// by adding in slot order: `kxq0`, the sum of 2^-v over registers of value
/// v < 32 (a zero adds 1), `kxq1` that over the others (a value above 63
/// counts as 63), and the number of zeros.
///
/// Each term of `kxq0` is a multiple of 2^-31 and their sum at most 2^14, so
/// every partial sum has at most 46 significant bits and is exact in an f64,
/// whatever the order of the additions; likewise `kxq1`, multiples of 2^-63
/// up to 2^-18. Summed here as integers, then scaled: the same bits, without
/// a chain of floating-point additions 16,384 long.
fn register_sums(registers: &[u8]) -> (f64, f64, u32) {
    #[cfg(target_arch = "x86_64")]
    let (low, high, zeros) = if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, as just checked.
        unsafe { shifted_sums_avx2(registers) }
    } else {
        table_sums(registers)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (low, high, zeros) = table_sums(registers);
    scaled((low, high, zeros))
}

/// Integer sums (see [`table_sums`]) as `kxq0` and `kxq1`. Exact: the sums
/// have at most 46 significant bits (see [`register_sums`]), and scaling by
/// a power of two is exact.
fn scaled((low, high, zeros): (u64, u64, u32)) -> (f64, f64, u32) {
    (
        low as f64 / (1u64 << 31) as f64,
        high as f64 / (1u64 << 63) as f64,
        zeros,
    )
}

/// [`register_sums`] in units of 2^-31 (`kxq0`) and 2^-63 (`kxq1`), each
/// register's terms read from a table.
fn table_sums(registers: &[u8]) -> (u64, u64, u32) {
    /// Per register value, its term of `kxq0` in units of 2^-31 and of
    /// `kxq1` in units of 2^-63.
    const TERMS: [(u64, u64); 256] = {
        let mut terms = [(0, 0); 256];
        let mut value = 0;
        while value < 256 {
            terms[value] = if value < 32 {
                (1 << (31 - value), 0)
            } else {
                (0, 1 << (63 - if value < 63 { value } else { 63 }))
            };
            value += 1;
        }
        terms
    };
    let (mut low, mut high, mut zeros) = (0u64, 0u64, 0u32);
    for &value in registers {
        let (kxq0, kxq1) = TERMS[usize::from(value)];
        low += kxq0;
        high += kxq1;
        zeros += u32::from(value == 0);
    }
    (low, high, zeros)
}

/// [`table_sums`] by shifts: in any sketch of fewer than about 2^40 values
/// every register is below 32, so `kxq1` is 0 and each term of `kxq0` is
/// one shifted left by 31 less the register. A compiler turns each pass
/// into operations on many registers at once, the shifts too where the CPU
/// shifts lanes by different amounts (x86's AVX2, see
/// [`shifted_sums_avx2`]); without that a table read a register at a time
/// is faster.
#[inline(always)]
fn shifted_sums(registers: &[u8]) -> (u64, u64, u32) {
    // Below 32 each, exactly when no register has a bit from 32 up.
    if registers.iter().fold(0u8, |bits, value| bits | value) >= 32 {
        return table_sums(registers);
    }
    let zeros = registers.iter().map(|value| u32::from(*value == 0)).sum();
    let low = registers
        .iter()
        .map(|value| 1u64 << (31 - u32::from(*value)))
        .sum();
    (low, 0, zeros)
}

/// [`shifted_sums`] compiled for AVX2: a register array's sums in a
/// fraction of the table's time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn shifted_sums_avx2(registers: &[u8]) -> (u64, u64, u32) {
    shifted_sums(registers)
}

impl<'de> Deserialize<'de> for HllSketch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = Vec::<u8>::deserialize(deserializer)?;
        Self::from_image(&bytes)
            .map(|sketch| *sketch)
            .map_err(serde::de::Error::custom)
    }
}

impl HllSketch {
    /// About the bytes it holds on the heap besides itself.
    fn heap_bytes(&self) -> usize {
        let registers = match &self.registers {
            Registers::Sketch(sketch) => sketch.estimated_size(),
            Registers::Union(_) => HLL_K,
            Registers::Dense(registers) => registers.len(),
        };
        registers + self.coupons.get().map_or(0, |coupons| 4 * coupons.len())
    }

    /// The sketch of a DataSketches HLL image (any library's) of lgK 14 and
    /// 8-bit registers; anything else is refused, saying what it is.
    fn from_image(bytes: &[u8]) -> Result<Box<HllSketch>, String> {
        let sketch = DsHll::deserialize(bytes).map_err(|err| err.to_string())?;
        if sketch.lg_config_k() != HLL_LG_K || sketch.target_type() != HllType::Hll8 {
            return Err(format!(
                "a distinct sketch of lgK {} ({:?}), not {HLL_LG_K} (Hll8)",
                sketch.lg_config_k(),
                sketch.target_type()
            ));
        }
        Ok(Self::from_registers(Registers::Sketch(sketch)))
    }
}

/// Distinct count state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Distinct {
    /// Exactly one value hash, held inline: most groups see few values.
    One(u64),
    /// Sorted, unique value hashes; exact. Empty when no value was seen.
    Exact(Box<[u64]>),
    /// HyperLogLog once past [`DISTINCT_EXACT_LIMIT`].
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
                    hll.insert_all(mine);
                    *self = Distinct::Sketch(hll);
                }
            }
            (None, theirs) => {
                if let Distinct::Sketch(hll) = self {
                    match (theirs, other) {
                        (Some(theirs), _) => hll.insert_all(theirs),
                        (None, Distinct::Sketch(sketch)) => hll.merge(sketch),
                        (None, _) => {}
                    }
                }
            }
        }
    }

    /// The state of these value hashes (in any order, repeats allowed), as
    /// inserting them one by one builds it.
    pub fn from_hashes(mut hashes: Vec<u64>) -> Distinct {
        hashes.sort_unstable();
        hashes.dedup();
        Distinct::from_sorted(hashes)
    }

    /// The state of more than [`DISTINCT_EXACT_LIMIT`] values, from a
    /// DataSketches HLL image of lgK 14 with 8-bit registers built from
    /// their hashes (as Spark's `hll_sketch_agg(col, 14)` builds it).
    ///
    /// # Errors
    /// The bytes are not such an image; the message says what they are.
    pub fn from_datasketches_image(bytes: &[u8]) -> Result<Distinct, String> {
        HllSketch::from_image(bytes).map(Distinct::Sketch)
    }

    /// DataSketches' serialized image of the sketch, as snapshots store it
    /// (any DataSketches library reads it: Java, C++, Python, Spark's
    /// `hll_sketch_agg`); `None` while the values are counted exactly.
    pub fn datasketches_image(&self) -> Option<Vec<u8>> {
        match self {
            Distinct::Sketch(hll) => Some(hll.image()),
            _ => None,
        }
    }

    /// What merging this state into a sketch costs, in values inserted one
    /// by one (a sketch's registers count as [`SKETCH_MERGE_WEIGHT`]).
    pub fn merge_weight(&self) -> usize {
        self.exact().map_or(SKETCH_MERGE_WEIGHT, <[u64]>::len)
    }

    /// About the bytes it holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Distinct::One(_) => 0,
            Distinct::Exact(hashes) => std::mem::size_of_val(&**hashes),
            Distinct::Sketch(hll) => std::mem::size_of::<HllSketch>() + hll.heap_bytes(),
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
    Sketch(Box<QuantileSketch>),
}

/// A DDSketch and its first answer since it last changed, kept until it
/// changes again: finding a rank walks the sketch's bins, and most sketches
/// are read far more often than they change (a snapshot's, a closed
/// bucket's), always for the one `q` of their metric.
#[derive(Clone)]
pub struct QuantileSketch {
    sketch: DDSketch,
    /// The first quantile asked since the last change (its `q` as bits) and
    /// the answer; another `q` is answered afresh.
    cached: OnceLock<(u64, Option<f64>)>,
}

impl QuantileSketch {
    fn add(&mut self, value: f64) {
        self.sketch.add(value);
        self.cached.take();
    }

    fn merge(&mut self, other: &QuantileSketch) {
        if let Err(err) = self.sketch.merge(&other.sketch) {
            tracing::error!(error = %err, "quantile sketches of different configurations; one is left out");
        }
        self.cached.take();
    }

    fn quantile(&self, q: f64) -> Option<f64> {
        let answer = || self.sketch.quantile(q).ok().flatten();
        match self.cached.get_or_init(|| (q.to_bits(), answer())) {
            (asked, value) if *asked == q.to_bits() => *value,
            _ => answer(),
        }
    }
}

/// Stored as the DDSketch alone, made canonical: the same values give the
/// same bytes whatever order they came in and however the sketch was merged.
/// The crate's own form holds two things that depend on history: each store's
/// bins are an allocation around the keys seen, centred as it grew (here cut
/// to the keys seen), and the sum of the values is a float accumulated in
/// update order (here zero: tandem never reads it; a mean is the exact sum
/// over the count). The canonical form has the crate's layout, so it loads
/// as a `DDSketch`.
impl Serialize for QuantileSketch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut image: DdImage = postcard::to_allocvec(&self.sketch)
            .ok()
            .and_then(|bytes| postcard::from_bytes(&bytes).ok())
            .ok_or_else(|| serde::ser::Error::custom("a quantile sketch did not encode"))?;
        image.store.trim();
        image.negative_store.trim();
        image.sum = 0.0;
        image.serialize(serializer)
    }
}

/// `sketches_ddsketch::DDSketch` field for field, as its serde derive writes it.
#[derive(Serialize, Deserialize)]
struct DdImage {
    config: DdConfigImage,
    store: DdStoreImage,
    negative_store: DdStoreImage,
    min: f64,
    max: f64,
    sum: f64,
    zero_count: u64,
}

/// `sketches_ddsketch::Config` field for field.
#[derive(Serialize, Deserialize)]
struct DdConfigImage {
    max_num_bins: u32,
    gamma: f64,
    gamma_ln: f64,
    min_value: f64,
    offset: i32,
}

/// `sketches_ddsketch::Store` field for field: `bins[i]` counts key `offset + i`,
/// keys `min_key..=max_key` are those seen.
#[derive(Serialize, Deserialize)]
struct DdStoreImage {
    bins: Vec<u64>,
    count: u64,
    min_key: i32,
    max_key: i32,
    offset: i32,
    bin_limit: usize,
    is_collapsed: bool,
}

impl DdStoreImage {
    /// The store holding `bins` (`(key, values)`), bins past its limit
    /// folded into the lowest key kept.
    fn fill(&mut self, bins: &[(i32, u64)]) -> Result<(), String> {
        let mut bins = bins.to_vec();
        bins.sort_unstable();
        if bins.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            return Err("a quantile bin given twice".to_owned());
        }
        let (Some(&(first, _)), Some(&(last, _))) = (bins.first(), bins.last()) else {
            return Ok(());
        };
        let limit = i32::try_from(self.bin_limit).unwrap_or(i32::MAX).max(1);
        let lowest = first.max(last.saturating_sub(limit - 1));
        let mut counts =
            vec![0u64; usize::try_from(i64::from(last) - i64::from(lowest) + 1).unwrap_or(0)];
        for (key, values) in bins {
            let at = usize::try_from(i64::from(key.max(lowest)) - i64::from(lowest)).unwrap_or(0);
            counts[at] += values;
        }
        self.count = counts.iter().sum();
        self.bins = counts;
        (self.min_key, self.max_key, self.offset) = (lowest, last, lowest);
        self.is_collapsed = lowest > first;
        Ok(())
    }

    /// The bins cut to the keys seen (none for an empty store, as a new one has).
    fn trim(&mut self) {
        if self.count == 0 {
            self.bins.clear();
            (self.min_key, self.max_key, self.offset) = (i32::MAX, i32::MIN, 0);
            return;
        }
        let from = usize::try_from(self.min_key - self.offset).ok();
        let to = usize::try_from(self.max_key - self.offset).ok();
        if let (Some(from), Some(to)) = (from, to)
            && from <= to
            && to < self.bins.len()
        {
            self.bins.truncate(to + 1);
            self.bins.drain(..from);
            self.offset = self.min_key;
        }
    }
}

impl<'de> Deserialize<'de> for QuantileSketch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(QuantileSketch {
            sketch: DDSketch::deserialize(deserializer)?,
            cached: OnceLock::new(),
        })
    }
}

/// The DDSketch bin of a value: the key of its magnitude in the store of
/// its sign, `ceil(ln |value| / ln γ)`; `None` for the values the sketch
/// counts as zero. Computed here once for both sides of a batch run done
/// elsewhere (`tandem export` writes it): a JVM's logarithm and this
/// build's can differ in the last bit, and a value within a bit of a bin's
/// edge would then fall in the next bin.
pub fn quantile_bin(value: f64) -> Option<i32> {
    let config = dd_config();
    (value.abs() > config.min_possible()).then(|| config.key(value.abs()))
}

/// The configuration every quantile sketch is built with.
fn dd_config() -> DdConfig {
    static CONFIG: OnceLock<DdConfig> = OnceLock::new();
    *CONFIG.get_or_init(|| DdConfig::new(DDSKETCH_ALPHA, DDSKETCH_MAX_BINS, DDSKETCH_MIN_VALUE))
}

impl std::fmt::Debug for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quantiles::One(value) => f.debug_tuple("One").field(value).finish(),
            Quantiles::Exact(values) => f.debug_tuple("Exact").field(values).finish(),
            Quantiles::Sketch(sketch) => write!(f, "Sketch({} values)", sketch.sketch.count()),
        }
    }
}

impl Default for Quantiles {
    fn default() -> Self {
        Quantiles::Exact(Box::default())
    }
}

fn new_ddsketch<'a>(values: impl IntoIterator<Item = &'a f64>) -> Box<QuantileSketch> {
    let mut sketch = DDSketch::new(dd_config());
    for value in values {
        sketch.add(*value);
    }
    Box::new(QuantileSketch {
        sketch,
        cached: OnceLock::new(),
    })
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
                        (None, Quantiles::Sketch(other)) => sketch.merge(other),
                        (None, _) => {}
                    }
                }
            }
        }
    }

    /// The state of these values (in any order), as inserting them one by
    /// one builds it.
    pub fn from_values(mut values: Vec<f64>) -> Quantiles {
        values.sort_by(f64::total_cmp);
        Quantiles::from_sorted(values)
    }

    /// The state of more than [`QUANTILE_EXACT_LIMIT`] values given as
    /// their DDSketch bins ([`quantile_bin`]): `(key, values)` of the
    /// positive values, of the negative values (by their magnitude), the
    /// values counted as zero, and the smallest and largest value. Equal to
    /// the state inserts build unless the keys of one sign span more than
    /// the sketch's bin limit (values over some 35 orders of magnitude):
    /// then the lowest keys are folded into the lowest one kept, as the
    /// sketch folds them, whatever order they came in.
    ///
    /// # Errors
    /// A key repeated, or no value at all.
    pub fn from_bins(
        positive: &[(i32, u64)],
        negative: &[(i32, u64)],
        zero: u64,
        (min, max): (f64, f64),
    ) -> Result<Quantiles, String> {
        let fresh = new_ddsketch(&[]);
        let mut image: DdImage = postcard::to_allocvec(&fresh.sketch)
            .ok()
            .and_then(|bytes| postcard::from_bytes(&bytes).ok())
            .ok_or("a quantile sketch did not encode")?;
        image.store.fill(positive)?;
        image.negative_store.fill(negative)?;
        image.zero_count = zero;
        (image.min, image.max) = (min, max);
        if image.store.count + image.negative_store.count + zero == 0 {
            return Err("a quantile sketch of no values".to_owned());
        }
        let sketch = postcard::to_allocvec(&image)
            .ok()
            .and_then(|bytes| postcard::from_bytes::<DDSketch>(&bytes).ok())
            .ok_or("a quantile sketch did not decode")?;
        Ok(Quantiles::Sketch(Box::new(QuantileSketch {
            sketch,
            cached: OnceLock::new(),
        })))
    }

    /// What merging this state into a sketch costs, in values inserted one
    /// by one (a sketch's bins count as [`SKETCH_MERGE_WEIGHT`]).
    pub fn merge_weight(&self) -> usize {
        self.exact().map_or(SKETCH_MERGE_WEIGHT, <[f64]>::len)
    }

    /// About the bytes it holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Quantiles::One(_) => 0,
            Quantiles::Exact(values) => std::mem::size_of_val(&**values),
            Quantiles::Sketch(sketch) => {
                std::mem::size_of::<QuantileSketch>() + 8 * sketch.sketch.length()
            }
        }
    }

    /// The value at rank `floor(q * (n - 1))`, as DDSketch defines it; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let q = q.clamp(0.0, 1.0);
        match self {
            Quantiles::Sketch(sketch) => sketch.quantile(q),
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

#[cfg(test)]
mod tests {
    use super::{register_sums, scaled, shifted_sums, table_sums};
    use proptest::prelude::*;

    /// The sums as DataSketches computes them: floating-point additions in
    /// slot order.
    fn summed_in_order(registers: &[u8]) -> (f64, f64, u32) {
        let (mut kxq0, mut kxq1, mut zeros) = (0.0f64, 0.0f64, 0u32);
        for &value in registers {
            match value {
                0 => {
                    kxq0 += 1.0;
                    zeros += 1;
                }
                1..32 => kxq0 += 0.5f64.powi(i32::from(value)),
                _ => kxq1 += 0.5f64.powi(i32::from(value.min(63))),
            }
        }
        (kxq0, kxq1, zeros)
    }

    proptest! {
        /// The integer sums give the bits of the floating-point ones, for
        /// register arrays of every kind: mostly low values (a sketch of
        /// few values), mostly high ones, any byte at all.
        #[test]
        fn register_sums_are_the_floating_point_sums_bit_for_bit(
            registers in prop_oneof![
                proptest::collection::vec(0..4u8, 16_384),
                proptest::collection::vec(0..40u8, 16_384),
                proptest::collection::vec(30..64u8, 16_384),
                proptest::collection::vec(any::<u8>(), 16_384),
                proptest::collection::vec(any::<u8>(), 0..100),
            ],
        ) {
            let (expected0, expected1, expected_zeros) = summed_in_order(&registers);
            // Whichever way this CPU takes, and each way there is.
            for (way, (kxq0, kxq1, zeros)) in [
                ("this CPU's", register_sums(&registers)),
                ("the table's", scaled(table_sums(&registers))),
                ("the shifts'", scaled(shifted_sums(&registers))),
            ] {
                prop_assert_eq!(kxq0.to_bits(), expected0.to_bits(), "{}", way);
                prop_assert_eq!(kxq1.to_bits(), expected1.to_bits(), "{}", way);
                prop_assert_eq!(zeros, expected_zeros, "{}", way);
            }
        }
    }
}
