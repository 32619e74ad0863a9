//! The first run from a clone: `config/demo.toml` as shipped (only its port
//! and data_dir moved, and for one test an event count set) on the real
//! binary. The demo source feeds both layers; the batch layer counts each of
//! its orders once; every curl line of the README answers with real numbers;
//! `/metrics` passes `promtool check metrics`; small HTTP truths hold (405
//! with `Allow`, one JSON object is one event, only configured sources are
//! listed).

mod common;

use common::{Daemon, demo_config, http, orders, post};
use serde_json::Value;
use std::time::{Duration, Instant};

fn get(daemon: &Daemon, path: &str) -> Value {
    let (code, body) = http("GET", &format!("{}{path}", daemon.base), None);
    assert_eq!(code, 200, "GET {path}: {body}");
    body
}

fn rejected(status: &Value) -> u64 {
    status["events_rejected"].as_object().map_or(0, |reasons| {
        reasons.values().filter_map(Value::as_u64).sum()
    })
}

#[test]
fn the_demo_feeds_both_layers_and_the_batch_counts_each_order_once() {
    const EVENTS: u64 = 4_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&demo_config(Some(EVENTS)), dir.path(), &[]);
    let totals = "/v1/views/sales_by_country/totals";
    let first = common::poll_until(Duration::from_secs(10), "orders in the speed layer", || {
        let seen = orders(&get(&daemon, totals));
        if seen > 0 { Ok(seen) } else { Err(seen) }
    });
    common::poll_until(Duration::from_secs(10), "the totals grow", || {
        let seen = orders(&get(&daemon, totals));
        if seen > first { Ok(seen) } else { Err(seen) }
    });
    let status = common::poll_until(Duration::from_secs(60), "the demo's events", || {
        let status = daemon.status();
        if status["sources"][0]["finished"] == true {
            Ok(status)
        } else {
            Err(status)
        }
    });
    // Only the configured sources, in config order.
    let names: Vec<(&str, &str)> = status["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|source| {
            (
                source["name"].as_str().unwrap_or(""),
                source["type"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(names, [("demo", "demo"), ("push", "http")], "{status}");

    let (code, body) = http(
        "POST",
        &format!("{}/v1/recompute?wait=true", daemon.base),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let status = daemon.status();
    let demo = &status["sources"][0];
    let (generated, accepted, duplicates) = (
        demo["generated"].as_u64().expect("generated"),
        demo["accepted"].as_u64().expect("accepted"),
        demo["duplicates"].as_u64().expect("duplicates"),
    );
    // What the flags ask for: some of each.
    assert!(duplicates > 0 && rejected(&status) > 0, "{status}");
    assert_eq!(generated, accepted + rejected(&status), "{status}");
    // Every line is one of the events or a second copy of one (valid or not).
    assert!(
        (EVENTS + duplicates..=EVENTS + duplicates + rejected(&status)).contains(&generated),
        "{status}"
    );
    let counted = accepted - duplicates;
    assert_eq!(status["snapshot"]["events"], counted, "{status}");
    assert_eq!(status["duplicates_dropped"], duplicates, "{status}");
    for view in ["sales_by_product", "sales_by_category", "sales_by_country"] {
        for layer in ["batch", "merged"] {
            let body = get(&daemon, &format!("/v1/views/{view}/totals?layer={layer}"));
            assert_eq!(orders(&body), counted, "{view} {layer}: {body}");
        }
    }
}

/// The README's curl lines (and the `tandem generate | curl` line), with
/// the quick start's address replaced by `base`.
fn readme_lines(base: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    readme
        .lines()
        .filter_map(|line| line.strip_prefix("    "))
        .filter(|line| {
            line.starts_with("curl ")
                || (line.starts_with("tandem generate") && line.contains("| curl"))
        })
        .map(|line| line.replace("http://127.0.0.1:8080", base))
        .collect()
}

/// Runs a shell line with the built `tandem` first on the PATH.
fn shell(line: &str) -> (bool, String) {
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tandem"));
    let bin_dir = binary.parent().expect("the binary's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .args(["-o", "pipefail", "-c", line])
        .env("PATH", path)
        .output()
        .expect("run bash");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Whether an answer carries real numbers: items, buckets, orders, accepted events.
fn has_numbers(answer: &Value) -> bool {
    let non_empty = |key: &str| answer[key].as_array().is_some_and(|list| !list.is_empty());
    if answer.get("error").is_some() {
        return false;
    }
    if answer.get("items").is_some() {
        return non_empty("items");
    }
    if answer.get("buckets").is_some() {
        return non_empty("buckets");
    }
    if answer.get("metrics").is_some() {
        return answer["metrics"]["orders"].as_u64().is_some_and(|n| n > 0);
    }
    if answer.get("accepted").is_some() {
        return answer["accepted"].as_u64().is_some_and(|n| n > 0);
    }
    if answer.get("events_accepted").is_some() {
        return answer["events_accepted"].as_u64().is_some_and(|n| n > 0);
    }
    if answer.get("views").is_some() {
        return non_empty("views");
    }
    true
}

#[test]
fn every_curl_line_of_the_readme_answers_the_quick_start_with_real_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&demo_config(None), dir.path(), &[]);
    let ready = Instant::now();
    let lines = readme_lines(&daemon.base);
    assert!(lines.len() >= 12, "README curl lines: {lines:#?}");
    // The quick start's own line: top products within 10 s of the start.
    let quick_start = &lines[0];
    assert!(quick_start.contains("/top?"), "{quick_start}");
    common::poll_until(Duration::from_secs(10), "top products", || {
        let (ok, out) = shell(quick_start);
        let answer: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if ok && has_numbers(&answer) {
            Ok(())
        } else {
            Err(out)
        }
    });
    eprintln!("top products {:?} after ready", ready.elapsed());
    // A batch exists before the lines that ask the batch layer.
    let (code, body) = http(
        "POST",
        &format!("{}/v1/recompute?wait=true", daemon.base),
        None,
    );
    assert_eq!(code, 200, "{body}");
    for line in &lines {
        let (ok, out) = shell(line);
        assert!(ok, "{line}: failed: {out}");
        match serde_json::from_str::<Value>(&out) {
            Ok(answer) => assert!(has_numbers(&answer), "{line}: {answer}"),
            Err(_) => assert!(out.contains("tandem_events_total"), "{line}: {out}"),
        }
    }
}

#[test]
fn metrics_pass_promtool_and_openmetrics_is_served_when_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&demo_config(None), dir.path(), &[]);
    let url = format!("{}/metrics", daemon.base);
    common::poll_until(
        Duration::from_secs(10),
        "events counted",
        || match common::scrape(&daemon.base, "tandem_events_total{source=\"demo\"}") {
            Some(n) if n > 0.0 => Ok(()),
            seen => Err(seen),
        },
    );
    let response = ureq::get(&url).call().expect("GET /metrics");
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let body = response.into_string().expect("body");
    assert!(
        !body.contains("in_process"),
        "only configured sources: {body}"
    );
    assert!(!body.contains("# EOF"), "no OpenMetrics in the 0.0.4 body");
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(body.as_bytes())
                .expect("write to promtool");
            let out = child.wait_with_output().expect("promtool");
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "promtool: {said}");
            assert!(said.trim().is_empty(), "promtool: {said}");
        }
        Err(err) => {
            common::missing("promtool (apt-get install prometheus)", err);
        }
    }
    let response = ureq::get(&url)
        .set("Accept", "application/openmetrics-text; version=1.0.0")
        .call()
        .expect("GET /metrics");
    assert_eq!(
        response.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let body = response.into_string().expect("body");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE tandem_events counter"), "{body}");
}

#[test]
fn one_json_object_is_one_event_and_a_wrong_method_gets_405_with_allow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&demo_config(Some(1)), dir.path(), &[]);
    let url = format!("{}/v1/events", daemon.base);
    let event =
        br#"{"order_id":"x-1","ts":"2026-12-01T12:00:00Z","product_id":"p-x","category":"c-x","user_id":"u-x","amount":2.5,"qty":1,"country":"DE"}"#;
    let (code, body) = post(&url, None, "application/json", event);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    let (code, body) = post(&url, None, "application/json", br#" {"order_id":"x-2"} "#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["accepted"], 0, "{body}");
    assert_eq!(body["rejected"][0]["index"], 0, "{body}");
    assert_eq!(body["rejected"][0]["reason"], "missing_field", "{body}");
    let key = get(&daemon, "/v1/views/sales_by_product/keys/p-x");
    assert_eq!(orders(&key), 1, "{key}");

    for (method, path, allow) in [
        ("DELETE", "/v1/views", "GET, HEAD"),
        ("GET", "/v1/events", "POST"),
        ("PUT", "/v1/recompute", "POST"),
        ("POST", "/metrics", "GET, HEAD"),
        ("POST", "/", "GET, HEAD"),
        ("POST", "/v1/views/sales_by_product/totals", "GET, HEAD"),
        ("PUT", "/v1/views/sales_by_product/keys/p-x", "GET, HEAD"),
    ] {
        let response = match ureq::request(method, &format!("{}{path}", daemon.base)).call() {
            Err(ureq::Error::Status(_, response)) | Ok(response) => response,
            Err(err) => panic!("{method} {path}: {err}"),
        };
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.header("allow"), Some(allow), "{method} {path}");
    }
    for path in ["/v1/nothing", "/v1/views/sales_by_product/nothing"] {
        let (code, _) = http("GET", &format!("{}{path}", daemon.base), None);
        assert_eq!(code, 404, "{path}");
    }
    // A load balancer's HEAD probe: 200 and no body.
    for path in ["/healthz", "/readyz", "/v1/status"] {
        let response = ureq::head(&format!("{}{path}", daemon.base))
            .call()
            .expect("HEAD");
        assert_eq!(response.status(), 200, "HEAD {path}");
        assert_eq!(response.into_string().expect("body"), "", "HEAD {path}");
    }
}
