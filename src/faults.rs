//! Crash points: named places where the fault tests stop the process dead.
//!
//! With `TANDEM_CRASH_AT=NAME` (or `NAME:N`, the Nth time that point is
//! reached) the process aborts there, as `kill -9` would: no destructor runs
//! and nothing buffered is flushed. Without the variable a crash point costs
//! one load of a cached value. The points:
//!
//! - `commit.mid_write`: half of a group commit's bytes written, not fsynced;
//! - `seal.after`: an epoch's seal is durable, nobody has been told yet;
//! - `recompute.mid_run`: a batch run has read the master dataset, no snapshot yet;
//! - `snapshot.mid_write`: half of a snapshot's temporary file written.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms one crash point.
pub const CRASH_AT: &str = "TANDEM_CRASH_AT";

struct Armed {
    name: String,
    nth: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(CRASH_AT).ok()?;
            let (name, nth) = match spec.split_once(':') {
                Some((name, nth)) => (name, nth.parse().ok()?),
                None => (spec.as_str(), 1),
            };
            Some(Armed {
                name: name.to_owned(),
                nth,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process if `name` is the armed crash point and this is its Nth visit.
pub fn crash_point(name: &str) {
    if let Some(armed) = armed()
        && armed.name == name
        && armed.seen.fetch_add(1, Ordering::Relaxed) + 1 == armed.nth
    {
        eprintln!("crash point {name} reached: aborting");
        std::process::abort();
    }
}

/// Whether `name` is the armed crash point (so a caller can prepare for it).
pub fn is_armed(name: &str) -> bool {
    armed().is_some_and(|armed| armed.name == name)
}
