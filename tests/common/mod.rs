//! Helpers shared by the integration tests: configs over temporary data_dirs,
//! unique queue names, the broker address, and polling with a deadline.
#![allow(dead_code)]

pub mod workload;

use std::time::{Duration, Instant};
use tandem::Config;

/// A config from TOML text, with `data_dir` set to `dir`.
pub fn config(text: &str, dir: &std::path::Path) -> Config {
    let mut config =
        Config::parse(text, "test.toml").unwrap_or_else(|errors| panic!("test config: {errors}"));
    config.data_dir = dir.to_path_buf();
    config
}

/// The broker tests use: `TANDEM_TEST_AMQP_URI`, or the local default.
pub fn amqp_uri() -> String {
    std::env::var("TANDEM_TEST_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A queue name no other test uses.
pub fn unique_queue(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "tandem-test.{prefix}.{}.{nanos}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether the broker answers; with `CI=true` a missing broker fails the test.
/// Outside CI the caller skips with the printed reason.
pub async fn broker_available() -> bool {
    match lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default()).await {
        Ok(connection) => {
            connection.close(200, "probe".into()).await.ok();
            true
        }
        Err(err) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "RabbitMQ is required in CI and is not reachable at {}: {err}",
                amqp_uri()
            );
            eprintln!(
                "skipping: RabbitMQ is not reachable at {}: {err}",
                amqp_uri()
            );
            false
        }
    }
}

/// Polls `probe` until it returns `Some`, failing with `what` and the last
/// value seen once `deadline` has passed.
pub async fn eventually<T, S: std::fmt::Debug>(
    deadline: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, S>,
) -> T {
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) if started.elapsed() > deadline => {
                panic!("{what}: not reached within {deadline:?}; last seen: {seen:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
