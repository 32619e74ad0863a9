//! The broker goes away: `rabbitmqctl stop_app` for 10 s while tandem runs,
//! and a broker that is down when tandem starts. tandem stays up and ready,
//! answers queries, says the source is disconnected (and why) in /v1/status
//! and /metrics, reconnects by itself, and after the stream ends and a
//! recompute every product equals the oracle.
//!
//! These tests stop the shared broker, so they live in a test target of their
//! own (cargo runs test targets one after another) and take turns here.

mod common;

use common::Daemon;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One outage at a time.
static BROKER: Mutex<()> = Mutex::new(());

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run rabbitmqctl {args:?}: {err}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The broker's app stopped; started again when dropped, even if the test fails.
struct Outage;

impl Outage {
    fn begin() -> Outage {
        rabbitmqctl(&["stop_app"]);
        Outage
    }

    fn end(self) {
        drop(self);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    }
}

fn workload() -> (Vec<u8>, Vec<u8>) {
    let args = |seed: &'static str| {
        [
            "--events",
            "4000",
            "--seed",
            seed,
            "--products",
            "60",
            "--dup-frac",
            "0.05",
            "--bad-frac",
            "0.03",
        ]
    };
    (
        common::workload::generate(&args("51")),
        common::workload::generate(&args("52")),
    )
}

/// The source's entry in /v1/status, once `connected` is as wanted.
fn source_once(daemon: &Daemon, connected: bool) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let status = daemon.status();
        let source = status["sources"]
            .as_array()
            .and_then(|sources| sources.iter().find(|source| source["name"] == "orders"))
            .cloned()
            .unwrap_or_default();
        if source["connected"] == connected
            && common::scrape(&daemon.base, "tandem_source_connected{source=\"orders\"}")
                == Some(f64::from(u8::from(connected)))
        {
            return source;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "source never became connected={connected}: {source}\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// For `span`, the daemon keeps answering: ready, status, and a key query.
fn keeps_answering(daemon: &Daemon, span: Duration) {
    let started = Instant::now();
    let mut answers = 0u32;
    while started.elapsed() < span {
        let (ready, _) = common::http("GET", &format!("{}/readyz", daemon.base), None);
        assert_eq!(ready, 200, "not ready while the broker is away");
        let (code, body) = common::http(
            "GET",
            &format!("{}/v1/views/by_product/totals", daemon.base),
            None,
        );
        assert_eq!(code, 200, "{body}");
        answers += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answers > 10, "only {answers} answers in {span:?}");
}

#[test]
fn a_broker_restart_costs_nothing() {
    let _turn = BROKER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if !runtime.block_on(common::broker_available()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = common::unique_queue("outage");
    let dead = format!("{queue}.dead");
    let _queues = common::Queues::new(&[&queue, &dead]);
    let (first, second) = workload();
    let (first, second) = (
        common::workload::lines(&first),
        common::workload::lines(&second),
    );
    let config = common::orders_config(&common::rabbitmq_source(&queue, &dead), "1s");
    let daemon = Daemon::start(&config, dir.path(), &[]);
    runtime.block_on(common::publish(&queue, &first));
    daemon.wait_handled(None, first.len() as u64);

    let outage = Outage::begin();
    let source = source_once(&daemon, false);
    assert!(
        source["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "no reason given: {source}"
    );
    keeps_answering(&daemon, Duration::from_secs(10));
    outage.end();
    let back = Instant::now();
    source_once(&daemon, true);
    let reconnect = back.elapsed();

    runtime.block_on(common::publish(&queue, &second));
    let all: Vec<&[u8]> = first.iter().chain(&second).copied().collect();
    daemon.wait_handled(None, all.len() as u64);
    common::assert_every_product(&daemon, &common::expected(&all));
    println!(
        "broker restart: reconnected {} ms after the broker was back; lost 0, counted twice 0",
        reconnect.as_millis()
    );
}

#[test]
fn a_broker_down_at_start_is_waited_for() {
    let _turn = BROKER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if !runtime.block_on(common::broker_available()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = common::unique_queue("outage-start");
    let dead = format!("{queue}.dead");
    let _queues = common::Queues::new(&[&queue, &dead]);
    let (jsonl, _) = workload();
    let lines = common::workload::lines(&jsonl);
    let config = common::orders_config(&common::rabbitmq_source(&queue, &dead), "1s");

    let outage = Outage::begin();
    let daemon = Daemon::start(&config, dir.path(), &[]);
    let source = source_once(&daemon, false);
    assert!(
        source["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "no reason given: {source}"
    );
    keeps_answering(&daemon, Duration::from_secs(3));
    outage.end();
    source_once(&daemon, true);
    runtime.block_on(common::publish(&queue, &lines));
    daemon.wait_handled(None, lines.len() as u64);
    common::assert_every_product(&daemon, &common::expected(&lines));
}
