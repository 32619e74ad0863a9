//! tandem's distinct sketches are Apache DataSketches' HLL_8 sketches of
//! lgK 14, updated with the 64-bit xxh3 hash of each value's text (the
//! `<field>__xxh3` column of `tandem export`), so a sketch another
//! DataSketches library builds from that column holds the same registers.
//!
//! The expected figures come from Apache DataSketches' C++ library through
//! its Python binding (`pip install datasketches xxhash`, datasketches
//! 5.2.0), not from this code:
//!
//! ```python
//! import datasketches as ds, xxhash, struct
//! def h(i):  # the hash as the signed 64-bit integer the library takes
//!     v = xxhash.xxh3_64_intdigest(f"u-{i:07}".encode())
//!     return v - 2**64 if v >= 2**63 else v
//! for n in (20000, 700):
//!     s = ds.hll_sketch(14, ds.tgt_hll_type.HLL_8)
//!     for i in range(n): s.update(h(i))
//!     b = s.serialize_updatable() if n == 20000 else s.serialize_compact()
//!     if b[0] == 10:  # a register array, from byte 40
//!         regs = b[40:40 + 16384]
//!         print(sum((i + 1) * r for i, r in enumerate(regs)), sum(1 for r in regs if r))
//!     else:           # a coupon set, from byte 12
//!         c = struct.unpack_from('<%dI' % ((len(b) - 12) // 4), b, 12)
//!         print(len(c), sum(c), sum((x * x) % (2**61 - 1) for x in c) % (2**61 - 1))
//! ```
//!
//! which printed `231139880 11572` and `700 118483376471 1520158378366454652`.

use tandem::aggregate::{Agg, Distinct, Input, MetricState};
use tandem::event::hash_text;

/// The DataSketches image of the distinct state of `u-0000000`.. `u-{n-1}`,
/// built by updates, or merged from two overlapping halves.
fn image(n: u64, merged: bool) -> Vec<u8> {
    let build = |values: std::ops::Range<u64>| {
        let mut state = MetricState::empty(&Agg::Distinct);
        for i in values {
            state.update(Input::Hash(hash_text(&format!("u-{i:07}"))));
        }
        state
    };
    let state = if merged {
        let mut state = build(0..n * 2 / 3);
        state.merge(&build(n / 3..n));
        state
    } else {
        build(0..n)
    };
    match state {
        MetricState::Distinct(distinct @ Distinct::Sketch(_)) => distinct
            .datasketches_image()
            .expect("a sketch has an image"),
        other => panic!("{n} values stayed exact: {other:?}"),
    }
}

#[test]
fn registers_are_the_datasketches_registers_of_the_same_hashes() {
    for merged in [false, true] {
        let image = image(20_000, merged);
        assert_eq!(image[0], 10, "a register array");
        let registers = &image[40..40 + 16_384];
        let weighted: u64 = registers
            .iter()
            .enumerate()
            .map(|(slot, value)| (slot as u64 + 1) * u64::from(*value))
            .sum();
        let set = registers.iter().filter(|value| **value != 0).count();
        assert_eq!((weighted, set), (231_139_880, 11_572), "merged: {merged}");
    }
}

#[test]
fn coupons_are_the_datasketches_coupons_of_the_same_hashes() {
    const P: u128 = (1 << 61) - 1;
    for merged in [false, true] {
        let image = image(700, merged);
        assert_eq!(image[0], 3, "a coupon set");
        let coupons: Vec<u64> = image[12..]
            .chunks_exact(4)
            .map(|word| u64::from(u32::from_le_bytes([word[0], word[1], word[2], word[3]])))
            .filter(|coupon| *coupon != 0)
            .collect();
        let sum: u64 = coupons.iter().sum();
        let squares = coupons
            .iter()
            .map(|coupon| (u128::from(*coupon) * u128::from(*coupon)) % P)
            .sum::<u128>()
            % P;
        assert_eq!(
            (coupons.len(), sum, squares),
            (700, 118_483_376_471, 1_520_158_378_366_454_652),
            "merged: {merged}"
        );
    }
}
