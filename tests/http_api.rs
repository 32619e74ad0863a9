//! The daemon over HTTP: `tandem run` against the real RabbitMQ, fed with
//! `tandem publish`. Every route answers its documented shape; a caller's
//! mistake gets a 4xx with an error message; the batch and speed parts add up
//! to the merged answer, and a batch run moves every count into the batch
//! layer; SIGTERM in the middle of a publish loses nothing and counts nothing
//! twice, and the shutdown takes under 10 s.

mod common;

use common::{Daemon, http, orders as count, revenue_cents as cents};
use serde_json::Value;
use std::time::Duration;

const TOKEN: &str = "s3cret-token";

fn config(queue: &str, dead: &str) -> String {
    format!(
        r#"
data_dir = "DATA_DIR"
[event]
id = "order_id"
time = "ts"
{source}[batch]
interval = "1h"
[http]
listen = "LISTEN"
auth_token_env = "TANDEM_TEST_TOKEN"
[[view]]
name = "by_product"
key = ["product_id"]
bucket = "1m"
metrics = [
  {{ name = "orders", agg = "count" }},
  {{ name = "revenue", agg = "sum", field = "amount" }},
  {{ name = "p95", agg = "quantile", field = "amount", q = 0.95 }},
  {{ name = "smallest", agg = "min", field = "amount" }},
]
[[view]]
name = "by_pair"
key = ["country", "product_id"]
bucket = "1h"
metrics = [{{ name = "orders", agg = "count" }}]
"#,
        source = common::rabbitmq_source(queue, dead)
    )
}

fn get(daemon: &Daemon, path: &str) -> (u16, Value) {
    http("GET", &format!("{}{path}", daemon.base), Some(TOKEN))
}

fn broker_up() -> bool {
    actix::System::new().block_on(common::broker_available())
}

#[test]
fn every_route_answers_its_shape_and_refuses_bad_input_with_a_4xx() {
    if !broker_up() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let jsonl = common::workload::generate(&[
        "--events",
        "3000",
        "--seed",
        "21",
        "--products",
        "80",
        "--dup-frac",
        "0.02",
        "--bad-frac",
        "0.03",
    ]);
    let file = dir.path().join("orders.jsonl");
    std::fs::write(&file, &jsonl).expect("write events");
    let lines = common::workload::lines(&jsonl);
    let expect = common::expected(&lines);
    let (queue, dead) = (
        common::unique_queue("http"),
        common::unique_queue("http-dead"),
    );
    let daemon = Daemon::start(
        &config(&queue, &dead),
        dir.path(),
        &[("TANDEM_TEST_TOKEN", TOKEN)],
    );
    common::tandem_publish(&queue, &file);
    daemon.wait_handled(Some(TOKEN), lines.len() as u64);

    // A second daemon on the same data_dir is refused, clearly, and the first keeps running.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["run", "--config"])
        .arg(dir.path().join("tandem.toml"))
        .output()
        .expect("run a second tandem");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is in use by another tandem process"),
        "{stderr}"
    );

    // Health checks need no token; everything else does.
    assert_eq!(
        http("GET", &format!("{}/healthz", daemon.base), None).0,
        200
    );
    assert_eq!(http("GET", &format!("{}/readyz", daemon.base), None).0, 200);
    let (code, body) = http("GET", &format!("{}/v1/views", daemon.base), None);
    assert_eq!(code, 401);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|error| error.contains("token")),
        "{body}"
    );
    assert_eq!(
        http("GET", &format!("{}/v1/views", daemon.base), Some("wrong")).0,
        401
    );

    let (code, views) = get(&daemon, "/v1/views");
    assert_eq!(code, 200);
    assert_eq!(views["views"][0]["name"], "by_product");
    assert_eq!(views["views"][0]["key"], serde_json::json!(["product_id"]));
    assert_eq!(views["views"][0]["bucket"], "1m");
    assert_eq!(views["views"][0]["metrics"][2]["agg"], "quantile");
    assert_eq!(views["views"][0]["metrics"][2]["q"], 0.95);

    // Batch and speed parts add up to the merged answer, before and after a batch run.
    let total_orders: u64 = expect.products.values().map(|(orders, _)| orders).sum();
    let total_cents: i64 = expect.products.values().map(|(_, cents)| cents).sum();
    // Handled means durable; the speed layer applies a batch just after, so
    // the parts are compared once the last one is in.
    common::poll_until(Duration::from_secs(30), "every order visible", || {
        let (_, merged) = get(&daemon, "/v1/views/by_product/totals");
        if count(&merged) == total_orders {
            Ok(())
        } else {
            Err(count(&merged))
        }
    });
    for round in 0..2 {
        let (code, merged) = get(&daemon, "/v1/views/by_product/totals");
        assert_eq!(code, 200, "{merged}");
        let (_, batch) = get(&daemon, "/v1/views/by_product/totals?layer=batch");
        let (_, speed) = get(&daemon, "/v1/views/by_product/totals?layer=speed");
        assert_eq!(
            count(&batch) + count(&speed),
            count(&merged),
            "round {round}"
        );
        assert_eq!(
            cents(&batch) + cents(&speed),
            cents(&merged),
            "round {round}"
        );
        if round == 0 {
            let (code, body) = http(
                "POST",
                &format!("{}/v1/recompute?wait=true", daemon.base),
                Some(TOKEN),
            );
            assert_eq!(code, 200, "{body}");
            assert!(
                body["batch_epoch"].as_u64() >= body["epoch"].as_u64(),
                "{body}"
            );
        } else {
            assert_eq!(
                count(&batch),
                total_orders,
                "after a batch run the batch layer holds every order once"
            );
            assert_eq!(cents(&batch), total_cents);
            assert_eq!(count(&speed), 0);
            assert!(
                merged["as_of"]["batch_epoch"].as_u64().is_some()
                    && merged["as_of"]["batch_at"].is_string(),
                "{merged}"
            );
            assert!(merged["as_of"]["speed_epochs"].is_array(), "{merged}");
        }
    }

    // One key: shape, and the oracle's numbers.
    let (product, (orders, revenue)) = expect
        .products
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), *v))
        .expect("a product");
    let (code, body) = get(&daemon, &format!("/v1/views/by_product/keys/{product}"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["view"].as_str(), body["key"].as_str()),
        (Some("by_product"), Some(product.as_str()))
    );
    assert_eq!((count(&body), cents(&body)), (orders, revenue));
    // A key with no events: count 0, nulls where undefined.
    let (code, body) = get(&daemon, "/v1/views/by_product/keys/no-such-product");
    assert_eq!(code, 200);
    assert_eq!(body["metrics"]["orders"], 0);
    assert_eq!(body["metrics"]["revenue"], 0.0);
    assert!(
        body["metrics"]["p95"].is_null() && body["metrics"]["smallest"].is_null(),
        "{body}"
    );
    // A composite key, URL-encoded.
    let (code, body) = get(&daemon, "/v1/views/by_pair/keys/DE%7Cno-product");
    assert_eq!((code, count(&body)), (200, 0));

    // Top: highest first, at most n.
    let (code, top) = get(&daemon, "/v1/views/by_product/top?metric=orders&n=5");
    assert_eq!(code, 200, "{top}");
    let items = top["items"].as_array().expect("items");
    assert_eq!(items.len(), 5);
    let counts: Vec<u64> = items.iter().map(count).collect();
    assert!(
        counts.windows(2).all(|pair| pair[0] >= pair[1]),
        "{counts:?}"
    );
    let best = expect
        .products
        .values()
        .map(|(orders, _)| *orders)
        .max()
        .unwrap_or(0);
    assert_eq!(counts[0], best);

    // Series: buckets ascending, RFC 3339 starts, adding up to the key's total.
    let (code, series) = get(
        &daemon,
        &format!("/v1/views/by_product/series?key={product}"),
    );
    assert_eq!(code, 200, "{series}");
    let buckets = series["buckets"].as_array().expect("buckets");
    let starts: Vec<&str> = buckets
        .iter()
        .map(|bucket| bucket["start"].as_str().expect("start"))
        .collect();
    assert!(
        starts.windows(2).all(|pair| pair[0] < pair[1])
            && starts.iter().all(|start| start.ends_with('Z')),
        "{starts:?}"
    );
    assert_eq!(buckets.iter().map(count).sum::<u64>(), orders);
    let (_, all) = get(&daemon, "/v1/views/by_product/series");
    assert_eq!(
        all["buckets"]
            .as_array()
            .expect("buckets")
            .iter()
            .map(count)
            .sum::<u64>(),
        total_orders
    );
    // A range: from/to in RFC 3339 and epoch milliseconds give the same answer.
    let first = all["buckets"][0]["start"].as_str().expect("start");
    let first_ms = chrono::DateTime::parse_from_rfc3339(first)
        .expect("rfc3339")
        .timestamp_millis();
    let to_ms = first_ms + 60_000;
    let (_, by_text) = get(
        &daemon,
        &format!("/v1/views/by_product/totals?from={first}&to={to_ms}"),
    );
    let (_, by_ms) = get(
        &daemon,
        &format!("/v1/views/by_product/totals?from={first_ms}&to={to_ms}"),
    );
    assert_eq!(by_text["metrics"], by_ms["metrics"]);
    assert_eq!(
        count(&by_ms),
        count(&all["buckets"][0]),
        "one minute from the first bucket is the first bucket"
    );

    // The caller's mistakes: 4xx with a message, never a 5xx.
    for (path, want) in [
        ("/v1/views/nope/totals", 404),
        ("/v1/views/by_product/top?metric=nope", 404),
        ("/v1/views/by_product/top?metric=orders&n=1001", 400),
        ("/v1/views/by_product/top?metric=orders&n=0", 400),
        ("/v1/views/by_product/top?metric=orders&n=ten", 400),
        ("/v1/views/by_product/top", 400),
        ("/v1/views/by_product/totals?from=yesterday", 400),
        ("/v1/views/by_product/totals?from=2000&to=1000", 400),
        ("/v1/views/by_product/totals?layer=fast", 400),
        ("/v1/views/by_product/totals?colour=red", 400),
        ("/v1/views/by_product/totals?at_epoch=soon", 400),
        ("/v1/views/by_product/totals?at_epoch=-1", 400),
        (
            "/v1/views/by_product/top?metric=orders&at_epoch=1&layer=merged",
            400,
        ),
        ("/v1/views/by_product/series?at_epoch=999999", 404),
        ("/v1/nothing-here", 404),
    ] {
        let (code, body) = get(&daemon, path);
        assert_eq!(code, want, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|error| !error.is_empty()),
            "{path}: {body}"
        );
    }

    let (code, body) = http(
        "POST",
        &format!("{}/v1/recompute?full=maybe", daemon.base),
        Some(TOKEN),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"], "full: \"maybe\" is not true or false");

    // A snapshot kept, asked for by its epoch, answers as the batch layer
    // did; an epoch not kept is refused with those that are.
    let (_, batch) = get(&daemon, "/v1/views/by_product/totals?layer=batch");
    let epoch = batch["as_of"]["batch_epoch"]
        .as_u64()
        .expect("a batch epoch");
    let (code, at) = get(
        &daemon,
        &format!("/v1/views/by_product/totals?at_epoch={epoch}"),
    );
    assert_eq!(code, 200, "{at}");
    assert_eq!(at["metrics"], batch["metrics"]);
    assert_eq!(at["as_of"]["batch_epoch"], epoch);
    assert_eq!(at["as_of"]["speed_epochs"], serde_json::json!([]));
    let (code, refused) = get(&daemon, "/v1/views/by_product/keys/p-1?at_epoch=999999");
    assert_eq!(code, 404, "{refused}");
    assert!(
        refused["retained"]
            .as_array()
            .is_some_and(|kept| kept.contains(&epoch.into())),
        "{refused}"
    );

    // Status: counters by reason, sources, the snapshot.
    let (code, status) = get(&daemon, "/v1/status");
    assert_eq!(code, 200);
    let dead_total = expect.dead.len() as u64;
    let rejected: u64 = status["events_rejected"]
        .as_object()
        .expect("reasons")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(rejected, dead_total, "{status}");
    assert_eq!(
        status["events_rejected"]
            .as_object()
            .map(|reasons| reasons.len()),
        Some(7)
    );
    assert_eq!(
        status["events_accepted"].as_u64(),
        Some(lines.len() as u64 - dead_total),
        "{status}"
    );
    assert!(
        status["sources"]
            .as_array()
            .expect("sources")
            .iter()
            .any(|source| source["name"] == "orders" && source["connected"] == true),
        "{status}"
    );
    assert_eq!(
        status["snapshot"]["events"].as_u64(),
        Some(total_orders),
        "{status}"
    );
    // A full run (the earlier ones started from the batch cache) reads
    // every record up to its seal, for every view: all of them.
    let (code, body) = http(
        "POST",
        &format!("{}/v1/recompute?wait=true&full=true", daemon.base),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    let status = common::poll_until(Duration::from_secs(30), "the batch run ends", || {
        let (_, status) = get(&daemon, "/v1/status");
        (status["recompute_running"] == false)
            .then_some(status.clone())
            .ok_or(status)
    });
    let progress = &status["recompute_progress"];
    assert_eq!(
        progress["records_read"], progress["records_total"],
        "{status}"
    );
    assert_eq!(
        progress["records_total"], status["events_accepted"],
        "{status}"
    );
    assert_eq!(progress["views_from_cache"], 0, "{status}");
    assert!(
        progress["views_from_master_dataset"].as_u64() >= Some(1),
        "{status}"
    );

    // Metrics in Prometheus text.
    let response = ureq::get(&format!("{}/metrics", daemon.base))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .expect("metrics");
    let text = response.into_string().expect("text");
    let gauge = |name: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
    };
    let records = progress["records_total"]
        .as_u64()
        .map(|records| records as f64);
    assert_eq!(gauge("tandem_recompute_records_read"), records, "{text}");
    assert_eq!(gauge("tandem_recompute_records_to_read"), records, "{text}");
    for name in [
        "tandem_events_total{source=\"orders\"}",
        "tandem_events_rejected_total",
        "tandem_durable_write_seconds",
        "tandem_ack_lag_seconds",
        "tandem_http_requests_total",
        "tandem_query_seconds",
        "tandem_snapshot_age_seconds",
        "tandem_speed_groups",
        "tandem_recompute_duration_seconds",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
    drop(daemon);
    actix::System::new().block_on(common::delete_queues(&[&queue, &dead]));
}

#[test]
fn sigterm_in_the_middle_of_a_publish_loses_nothing_and_counts_nothing_twice() {
    if !broker_up() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let jsonl = common::workload::generate(&[
        "--events",
        "30000",
        "--seed",
        "22",
        "--products",
        "300",
        "--dup-frac",
        "0.01",
    ]);
    let file = dir.path().join("orders.jsonl");
    std::fs::write(&file, &jsonl).expect("write events");
    let expect = common::expected(&common::workload::lines(&jsonl));
    let total_orders: u64 = expect.products.values().map(|(orders, _)| orders).sum();
    let total_cents: i64 = expect.products.values().map(|(_, cents)| cents).sum();
    let (queue, dead) = (
        common::unique_queue("sigterm"),
        common::unique_queue("sigterm-dead"),
    );
    let text = config(&queue, &dead);
    let env = [("TANDEM_TEST_TOKEN", TOKEN)];

    let mut daemon = Daemon::start(&text, dir.path(), &env);
    let mut publisher = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["publish", "--uri", &common::amqp_uri(), "--queue", &queue])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start tandem publish");
    daemon.wait_handled(Some(TOKEN), 3_000);
    let (code, took) = daemon.terminate();
    assert_eq!(code, Some(0), "{}", daemon.logs());
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert!(daemon.logs().contains("stopped"), "{}", daemon.logs());

    let daemon = Daemon::start(&text, dir.path(), &env);
    assert!(publisher.wait().expect("publisher").success());
    let batch = common::poll_until(
        Duration::from_secs(60),
        "the batch layer has every order",
        || {
            let (code, body) = http(
                "POST",
                &format!("{}/v1/recompute?wait=true", daemon.base),
                Some(TOKEN),
            );
            assert_eq!(code, 200, "{body}");
            let (_, batch) = get(&daemon, "/v1/views/by_product/totals?layer=batch");
            if count(&batch) >= total_orders {
                Ok(batch)
            } else {
                Err(count(&batch))
            }
        },
    );
    assert_eq!(
        (count(&batch), cents(&batch)),
        (total_orders, total_cents),
        "nothing lost, nothing twice"
    );
    for (product, expected) in expect.products.iter().take(50) {
        let (_, body) = get(
            &daemon,
            &format!("/v1/views/by_product/keys/{product}?layer=batch"),
        );
        assert_eq!((count(&body), cents(&body)), *expected, "{product}");
    }
    drop(daemon);
    actix::System::new().block_on(common::delete_queues(&[&queue, &dead]));
}
