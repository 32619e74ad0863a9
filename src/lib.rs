//! tandem: a Lambda Architecture stream processor.
//!
//! Events arrive as JSON; each is recorded in an immutable master dataset (the
//! batch layer's truth) and applied to live per-key aggregates (the speed
//! layer). Queries merge a batch snapshot with the speed view, exactly.
//!
//! Layout:
//! - [`config`]: the TOML file, typed and validated, every error with its key path.
//! - [`event`]: one message parsed once into the fields the views use, or a [`event::Reject`].
//! - [`aggregate`]: metric states (count, sum, min, max, mean, distinct, quantile)
//!   and view states, written once and used by every layer.
//! - [`store`]: the master dataset (segments, sealed epochs) and snapshots on disk.
//! - [`actors`]: the running system: sources, recorder, speed partitions,
//!   supervisor, recompute and serving; [`start`] returns a [`Handle`].
//! - [`workload`]: the reference e-commerce order stream (`tandem generate`,
//!   the `demo` source, the tests and the benchmarks).
#![warn(clippy::unwrap_used)]

pub mod actors;
pub mod aggregate;
pub mod config;
pub mod event;
pub mod export;
pub mod faults;
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod spark;
pub mod store;
pub mod workload;

pub use actors::serving::{Answer, Layer, Query, Question};
pub use actors::{Feed, Handle, Options, start};
pub use config::Config;

/// Wall-clock time, epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// What a caught panic said (its message, when it gave one as text).
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// An error and its causes in one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their cause in their own text.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
