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

/// Publishes every line to `queue` (declared durable), persistent, and waits for all confirms.
pub async fn publish(queue: &str, lines: &[&[u8]]) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    let connection =
        lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declare");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for chunk in lines.chunks(1_000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for line in chunk {
            let properties = lapin::BasicProperties::default().with_delivery_mode(2);
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        line,
                        properties,
                    )
                    .await
                    .expect("publish"),
            );
        }
        for confirm in confirms {
            assert!(
                confirm.await.expect("confirm").is_ack(),
                "the broker refused a message"
            );
        }
    }
    connection.close(200, "done".into()).await.ok();
}

/// Messages ready in `queue` (not counting those delivered and unacked).
pub async fn ready_count(queue: &str) -> u32 {
    use lapin::options::QueueDeclareOptions;
    let connection =
        lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(queue.into(), options, lapin::types::FieldTable::default())
        .await
        .expect("passive declare");
    connection.close(200, "done".into()).await.ok();
    queue.message_count()
}

/// Takes every message from `queue`: (body, headers as strings).
pub async fn drain(queue: &str) -> Vec<(Vec<u8>, std::collections::BTreeMap<String, String>)> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let connection =
        lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("get")
    {
        let mut headers = std::collections::BTreeMap::new();
        if let Some(table) = message.delivery.properties.headers() {
            for (key, value) in table.inner() {
                if let lapin::types::AMQPValue::LongString(text) = value {
                    headers.insert(
                        key.to_string(),
                        String::from_utf8_lossy(text.as_bytes()).into_owned(),
                    );
                }
            }
        }
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        out.push((message.delivery.data.clone(), headers));
    }
    connection.close(200, "done".into()).await.ok();
    out
}

/// Deletes queues a test declared.
pub async fn delete_queues(queues: &[&str]) {
    use lapin::options::QueueDeleteOptions;
    let connection =
        lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    for queue in queues {
        channel
            .queue_delete((*queue).into(), QueueDeleteOptions::default())
            .await
            .ok();
    }
    connection.close(200, "done".into()).await.ok();
}
