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
#![warn(clippy::unwrap_used)]

pub mod aggregate;
pub mod config;
pub mod event;
pub mod store;

pub use config::Config;
