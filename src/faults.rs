//! Crash points and panic points: named places where the fault tests stop
//! the process dead, or make one thread panic.
//!
//! With `TANDEM_CRASH_AT=NAME` (or `NAME:N`, the Nth time that point is
//! reached) the process aborts there, as `kill -9` would: no destructor runs
//! and nothing buffered is flushed. Without the variable a crash point costs
//! one load of a cached value. The points:
//!
//! - `commit.mid_write`: half of a group commit's bytes written, not fsynced;
//! - `seal.after`: an epoch's seal is durable, nobody has been told yet;
//! - `recompute.mid_run`: a batch run has read the master dataset, no snapshot yet;
//! - `snapshot.mid_write`: half of a snapshot's temporary file written;
//! - `cache.mid_write`: a batch cache file's temporary file written in part
//!   (all of a small one, its header not yet);
//! - `ids.before_rename`: an id level file written whole under its
//!   temporary name, not yet renamed.
//!
//! With `TANDEM_PANIC_AT=NAME:N` the thread that reaches panic point NAME
//! for the Nth time panics there (`NAME:N+`: the Nth time and every time
//! after), as a bug would. The points:
//!
//! - `recompute.worker`: a recompute worker is handed a batch of records;
//! - `rabbitmq.acknowledger`: a RabbitMQ session's acknowledger has the
//!   store's answer for a batch (a durable batch is then in the speed
//!   layer), before it acks the batch.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms one crash point.
pub const CRASH_AT: &str = "TANDEM_CRASH_AT";
/// The environment variable that arms one panic point.
pub const PANIC_AT: &str = "TANDEM_PANIC_AT";

struct Armed {
    name: String,
    nth: u64,
    /// Every visit from the Nth on, not the Nth alone.
    onwards: bool,
    seen: AtomicU64,
}

impl Armed {
    /// The point armed by `var`, if it is set and reads `NAME[:N[+]]`.
    fn from_env(var: &str) -> Option<Armed> {
        let spec = std::env::var(var).ok()?;
        let (name, nth) = spec.split_once(':').unwrap_or((spec.as_str(), "1"));
        let (nth, onwards) = match nth.strip_suffix('+') {
            Some(nth) => (nth, true),
            None => (nth, false),
        };
        let Ok(nth) = nth.parse() else {
            eprintln!("{var}={spec:?} is not NAME[:N[+]]: no point is armed");
            return None;
        };
        Some(Armed {
            name: name.to_owned(),
            nth,
            onwards,
            seen: AtomicU64::new(0),
        })
    }

    /// Whether this visit of `name` is one the point fires at.
    fn fires(armed: Option<&Armed>, name: &str) -> bool {
        armed.is_some_and(|armed| {
            if armed.name != name {
                return false;
            }
            let visit = armed.seen.fetch_add(1, Ordering::Relaxed) + 1;
            visit == armed.nth || (armed.onwards && visit > armed.nth)
        })
    }
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| Armed::from_env(CRASH_AT)).as_ref()
}

/// Aborts the process if `name` is the armed crash point and this is its Nth visit.
pub fn crash_point(name: &str) {
    if Armed::fires(armed(), name) {
        eprintln!("crash point {name} reached: aborting");
        std::process::abort();
    }
}

/// Panics if `name` is the armed panic point and this visit is one it fires at.
pub fn panic_point(name: &str) {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    if Armed::fires(
        ARMED.get_or_init(|| Armed::from_env(PANIC_AT)).as_ref(),
        name,
    ) {
        panic!("panic point {name} reached");
    }
}

/// Whether `name` is the armed crash point (so a caller can prepare for it).
pub fn is_armed(name: &str) -> bool {
    armed().is_some_and(|armed| armed.name == name)
}
