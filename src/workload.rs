//! The reference e-commerce workload: order events as JSON lines, the same
//! bytes for the same parameters on every machine. `tandem generate` prints
//! it, the `demo` source feeds it into a running daemon, and the tests and
//! benchmarks use it as their input.
//!
//! One event (about 160 bytes):
//!
//! ```text
//! {"order_id":"o-000000042","ts":"2026-11-24T00:00:36.288Z","product_id":"p-01234","category":"c-017",
//!  "user_id":"u-0098765","amount":23.45,"qty":2,"country":"DE"}
//! ```
//!
//! Products are drawn Zipf-like (a few hot, most cold); amounts are
//! log-normal, quantities geometric. On request a share of events is late
//! (its time moved up to `late_max_ms` into the past), sent twice (the same
//! line again: an at-least-once redelivery) or malformed (one of
//! [`Malformed::ALL`], each caught by a different rejection reason).
//!
//! Determinism: the random numbers come from SplitMix64 and every
//! transcendental function from `libm`, so no platform math library can
//! change a byte.

use std::io::Write;

/// Countries, assigned by product.
const COUNTRIES: [&str; 12] = [
    "DE", "FR", "US", "GB", "JP", "BR", "IN", "ES", "IT", "NL", "SE", "PL",
];

/// The parameters of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Seed of the random numbers.
    pub seed: u64,
    /// Distinct products (`p-00000` .. ).
    pub products: u32,
    /// Distinct categories; a product's category is fixed.
    pub categories: u32,
    /// Distinct users (`u-0000000` .. ).
    pub users: u32,
    /// Zipf exponent of product popularity.
    pub zipf: f64,
    /// Event time of the first event, epoch milliseconds.
    pub start_ms: i64,
    /// Event time between two consecutive events, milliseconds.
    pub step_ms: f64,
    /// Share of events whose time lies up to `late_max_ms` in the past.
    pub late_frac: f64,
    /// How late a late event is at most, milliseconds.
    pub late_max_ms: f64,
    /// Share of events sent twice.
    pub dup_frac: f64,
    /// Share of events replaced by a malformed line.
    pub bad_frac: f64,
    /// Prefix of every order id, before the zero-padded event number.
    pub id_prefix: String,
}

/// `2026-11-24T00:00:00Z`: where the reference stream starts.
pub const DEFAULT_START_MS: i64 = 1_795_478_400_000;

impl Default for Workload {
    /// The reference stream: 100,000 events over one day from
    /// 2026-11-24T00:00:00Z, 2% late, 0.5% sent twice, none malformed.
    fn default() -> Workload {
        Workload {
            seed: 1,
            products: 100_000,
            categories: 200,
            users: 1_000_000,
            zipf: 1.1,
            start_ms: DEFAULT_START_MS,
            step_ms: 86_400_000.0 / 100_000.0,
            late_frac: 0.02,
            late_max_ms: 600_000.0,
            dup_frac: 0.005,
            bad_frac: 0.0,
            id_prefix: "o-".to_owned(),
        }
    }
}

/// What a generated line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A valid event, on time.
    Valid,
    /// A valid event whose time lies in the past.
    Late,
    /// The line before it again (valid or not).
    Duplicate,
    /// A malformed line.
    Malformed(Malformed),
}

/// The malformed lines the generator writes, one per rejection reason that a
/// line of ordinary size can earn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// A valid line cut short: `invalid_json`.
    Truncated,
    /// Bytes that are not UTF-8: `not_utf8`.
    NotUtf8,
    /// A JSON array: `not_an_object`.
    NotAnObject,
    /// `product_id` left out: `missing_field`.
    MissingProduct,
    /// `amount` as a word: `wrong_type`.
    AmountNotANumber,
    /// `ts` as a word: `bad_time`.
    BadTime,
}

impl Malformed {
    /// Every kind, in the order the generator draws them.
    pub const ALL: [Malformed; 6] = [
        Malformed::Truncated,
        Malformed::NotUtf8,
        Malformed::NotAnObject,
        Malformed::MissingProduct,
        Malformed::AmountNotANumber,
        Malformed::BadTime,
    ];
}

/// One generated line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The bytes, without a newline.
    pub bytes: Vec<u8>,
    /// What it is.
    pub kind: LineKind,
}

/// SplitMix64 (Steele, Lea and Flood): small, fast, and fixed forever, which
/// a library generator's "standard" algorithm is not.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n); n > 0.
    fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift; the bias (< n / 2^64) does not matter here.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal, by Box and Muller.
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * std::f64::consts::PI * u2)
    }
}

/// An endless stream of lines; take as many as wanted.
#[derive(Debug, Clone)]
pub struct Generator {
    workload: Workload,
    rng: SplitMix64,
    /// Cumulative product popularity, for a binary search.
    cdf: Vec<f64>,
    /// Number of the next event.
    next: u64,
    /// The copy of the last line, when it is to be sent twice.
    again: Option<Vec<u8>>,
}

impl Workload {
    /// The stream these parameters describe.
    pub fn generator(&self) -> Generator {
        let products = self.products.max(1);
        let weights: Vec<f64> = (1..=products)
            .map(|rank| 1.0 / libm::pow(f64::from(rank), self.zipf))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = weights
            .iter()
            .map(|weight| {
                acc += weight / total;
                acc
            })
            .collect();
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Generator {
            workload: self.clone(),
            rng: SplitMix64(self.seed),
            cdf,
            next: 0,
            again: None,
        }
    }

    /// Writes the first `events` events (and their duplicates) as JSON lines.
    ///
    /// # Errors
    /// The writer failed.
    pub fn write(&self, events: u64, out: &mut impl Write) -> std::io::Result<()> {
        let mut generator = self.generator();
        while !generator.has_emitted(events) {
            let line = generator.next_line();
            out.write_all(&line.bytes)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// The first `events` events (and their duplicates) as JSON lines.
    pub fn jsonl(&self, events: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(events as usize * 170);
        // Writing to a Vec cannot fail.
        self.write(events, &mut out).ok();
        out
    }
}

impl Generator {
    /// Events generated so far (duplicates not counted).
    pub fn events(&self) -> u64 {
        self.next
    }

    /// Whether the first `events` events and all their copies are out.
    pub fn has_emitted(&self, events: u64) -> bool {
        self.next >= events && self.again.is_none()
    }

    /// The next line.
    pub fn next_line(&mut self) -> Line {
        if let Some(bytes) = self.again.take() {
            return Line {
                bytes,
                kind: LineKind::Duplicate,
            };
        }
        let workload = &self.workload;
        let rng = &mut self.rng;
        let number = self.next;
        self.next += 1;
        let mut ts = workload.start_ms + (number as f64 * workload.step_ms) as i64;
        let late = rng.unit() < workload.late_frac;
        if late {
            ts -= (rng.unit() * workload.late_max_ms) as i64;
        }
        let popularity = rng.unit();
        let product = self.cdf.partition_point(|&p| p < popularity) as u64;
        let category = product * 7919 % u64::from(workload.categories.max(1));
        let user = rng.below(u64::from(workload.users.max(1)));
        let amount = libm::exp(3.0 + 0.8 * rng.normal());
        let quantity = 1 + (-libm::log(1.0 - rng.unit())) as u64;
        let country = COUNTRIES[(product % COUNTRIES.len() as u64) as usize];
        let time = chrono::DateTime::from_timestamp_millis(ts).map_or_else(
            || ts.to_string(),
            |at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        let order = |product: Option<u64>, ts: &str, amount: &str| {
            let product = product.map_or(String::new(), |product| {
                format!("\"product_id\":\"p-{product:05}\",")
            });
            format!(
                "{{\"order_id\":\"{}{number:09}\",\"ts\":\"{ts}\",{product}\"category\":\"c-{category:03}\",\
                 \"user_id\":\"u-{user:07}\",\"amount\":{amount},\"qty\":{quantity},\"country\":\"{country}\"}}",
                workload.id_prefix
            )
        };
        let amount_text = format!("{amount:.2}");
        let mut kind = if late {
            LineKind::Late
        } else {
            LineKind::Valid
        };
        let bytes = if rng.unit() < workload.bad_frac {
            let malformed = Malformed::ALL[rng.below(Malformed::ALL.len() as u64) as usize];
            kind = LineKind::Malformed(malformed);
            match malformed {
                Malformed::Truncated => {
                    let good = order(Some(product), &time, &amount_text).into_bytes();
                    let cut = 1 + rng.below(good.len() as u64 - 2) as usize;
                    good[..cut].to_vec()
                }
                Malformed::NotUtf8 => b"\xff\xfe not json at all".to_vec(),
                Malformed::NotAnObject => b"[1,2,3]".to_vec(),
                Malformed::MissingProduct => order(None, &time, &amount_text).into_bytes(),
                Malformed::AmountNotANumber => {
                    order(Some(product), &time, "\"twelve\"").into_bytes()
                }
                Malformed::BadTime => order(Some(product), "yesterday", &amount_text).into_bytes(),
            }
        } else {
            order(Some(product), &time, &amount_text).into_bytes()
        };
        if rng.unit() < workload.dup_frac {
            self.again = Some(bytes.clone());
        }
        Line { bytes, kind }
    }
}

impl Iterator for Generator {
    type Item = Line;

    fn next(&mut self) -> Option<Line> {
        Some(self.next_line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_start_is_2026_11_24() {
        let start = chrono::DateTime::parse_from_rfc3339("2026-11-24T00:00:00Z")
            .map(|at| at.timestamp_millis());
        assert_eq!(start, Ok(DEFAULT_START_MS));
    }

    #[test]
    fn a_duplicate_follows_its_original() {
        let workload = Workload {
            dup_frac: 0.5,
            ..Workload::default()
        };
        let lines: Vec<Line> = workload.generator().take(200).collect();
        let mut seen = 0;
        for pair in lines.windows(2) {
            if pair[1].kind == LineKind::Duplicate {
                assert_eq!(pair[0].bytes, pair[1].bytes);
                seen += 1;
            }
        }
        assert!(seen > 50, "{seen} duplicates in 200 lines at dup_frac 0.5");
    }

    #[test]
    fn write_ends_with_the_last_events_duplicate() {
        let workload = Workload {
            dup_frac: 1.0,
            ..Workload::default()
        };
        let text = workload.jsonl(3);
        assert_eq!(
            text.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
            6
        );
    }
}
