//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (chromedriver) against the real daemon fed from the real RabbitMQ. The page
//! shows the same totals and top-10 keys as the HTTP API, split into final
//! (batch) and provisional (speed); a recompute clicked on the page moves the
//! provisional part to final; a wrong token gets a clear message.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium`
//! and `chromium-driver`); their absence fails the test unless
//! `TANDEM_SKIP_SERVICES=1`.
//! `TANDEM_UPDATE_SCREENSHOT=1` also writes the screenshot to `docs/dashboard.png`.

mod common;

use common::{Daemon, http, orders, revenue_cents};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "dashboard-token";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn browser_available() -> bool {
    let present =
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if !present {
        common::missing(
            &format!("{CHROMIUM} or {CHROMEDRIVER}"),
            "apt-get install chromium chromium-driver",
        );
    }
    present
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = common::free_port();
        let child = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        common::poll_until(Duration::from_secs(20), "chromedriver answers", || {
            ureq::get(&format!("{url}/status"))
                .call()
                .map(drop)
                .map_err(|err| err.to_string())
        });
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100", "--lang=en-US"],
        }),
    );
    // chromedriver listens on loopback: plain HTTP, no TLS stack needed.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("connect to chromedriver")
}

/// Polls the page until `probe` answers `Some`, or fails naming `what`.
async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let what = format!("the page shows {what}");
    common::eventually(Duration::from_secs(30), &what, async || {
        probe().await.ok_or("not yet")
    })
    .await
}

async fn attribute(client: &Client, css: &str, name: &str) -> Option<String> {
    let element = client.find(Locator::Css(css)).await.ok()?;
    element.attr(name).await.ok().flatten()
}

async fn text(client: &Client, css: &str) -> Option<String> {
    client.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

async fn visible(client: &Client, css: &str) -> bool {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

/// Each top-10 row's merged value and its final and provisional parts, read in
/// one go (the page redraws every second); empty while a part is missing.
async fn top_split(client: &Client) -> Vec<(f64, f64, f64)> {
    let rows = client
        .execute(
            "return [...document.querySelectorAll('#top tbody tr')]\
               .map((row) => [row.dataset.value, row.dataset.final, row.dataset.provisional].map(Number))",
            vec![],
        )
        .await
        .expect("read the top rows");
    serde_json::from_value(rows).unwrap_or_default()
}

/// Types `token` into the page's token form and submits it.
async fn sign_in(client: &Client, token: &str) {
    client
        .find(Locator::Css("#token"))
        .await
        .expect("token field")
        .send_keys(token)
        .await
        .expect("type the token");
    client
        .find(Locator::Css("#login button"))
        .await
        .expect("submit button")
        .click()
        .await
        .expect("submit");
}

/// Thousands separators, as the page writes whole numbers.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn config(queue: &str, dead: &str) -> String {
    format!(
        r#"
data_dir = "DATA_DIR"
[event]
id = "order_id"
time = "ts"
{}
[batch]
interval = "1h"
[http]
listen = "LISTEN"
auth_token_env = "TANDEM_TEST_TOKEN"
[[view]]
name = "sales_by_product"
key = ["product_id"]
bucket = "1m"
metrics = [
  {{ name = "orders", agg = "count" }},
  {{ name = "revenue", agg = "sum", field = "amount" }},
  {{ name = "buyers", agg = "distinct", field = "user_id" }},
  {{ name = "p95_amount", agg = "quantile", field = "amount", q = 0.95 }},
]
[[view]]
name = "sales_by_country"
key = ["country"]
bucket = "1h"
metrics = [{{ name = "orders", agg = "count" }}, {{ name = "revenue", agg = "sum", field = "amount" }}]
"#,
        common::rabbitmq_source(queue, dead)
    )
}

#[test]
fn the_dashboard_shows_what_the_api_answers_and_a_recompute_makes_it_final() {
    if !browser_available() || !actix::System::new().block_on(common::broker_available()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let jsonl = common::workload::generate(&[
        "--events",
        "4000",
        "--seed",
        "51",
        "--products",
        "60",
        "--dup-frac",
        "0.02",
        "--bad-frac",
        "0.02",
    ]);
    let file = dir.path().join("orders.jsonl");
    std::fs::write(&file, &jsonl).expect("write events");
    let lines = common::workload::lines(&jsonl);
    let (queue, dead) = (common::unique_queue("ui"), common::unique_queue("ui-dead"));
    let daemon = Daemon::start(
        &config(&queue, &dead),
        dir.path(),
        &[("TANDEM_TEST_TOKEN", TOKEN)],
    );
    common::tandem_publish(&queue, &file);
    let api = |path: &str| -> Value {
        let (code, body) = http("GET", &format!("{}{path}", daemon.base), Some(TOKEN));
        assert_eq!(code, 200, "{path}: {body}");
        body
    };
    daemon.wait_handled(Some(TOKEN), lines.len() as u64);

    // The page is one small self-contained deployment: no token to load it,
    // nothing fetched from elsewhere, under 200 KB.
    let mut bytes = 0;
    for asset in ["/", "/ui/app.js", "/ui/style.css"] {
        let (code, body) = http("GET", &format!("{}{asset}", daemon.base), None);
        assert_eq!(code, 200, "{asset}");
        let text = body.as_str().expect("text").to_owned();
        assert!(
            !text.contains("src=\"http")
                && !text.contains("href=\"http")
                && !text.contains("url(http"),
            "{asset} loads from elsewhere"
        );
        bytes += text.len();
    }
    assert!(bytes < 200_000, "the page weighs {bytes} bytes");

    let driver = Driver::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = browser(&driver).await;
        client.goto(&daemon.base).await.expect("open the page");

        // A wrong token: a clear message, the form again, no broken page.
        until("the token form", async || {
            visible(&client, "#login").await.then_some(())
        })
        .await;
        sign_in(&client, "wrong-token").await;
        let message = until("the refusal", async || {
            text(&client, "#message")
                .await
                .filter(|message| message.contains("refused"))
        })
        .await;
        assert!(message.contains("401"), "{message}");
        assert!(visible(&client, "#login").await && !visible(&client, "#main").await);

        sign_in(&client, TOKEN).await;
        until("the data", async || {
            attribute(&client, "body", "data-loaded")
                .await
                .filter(|v| v == "true")
        })
        .await;
        assert!(
            !visible(&client, "#message").await,
            "no error once the token is right"
        );

        // Totals: the merged value and its final / provisional parts, as the API answers them.
        let merged = api("/v1/views/sales_by_product/totals");
        let speed = api("/v1/views/sales_by_product/totals?layer=speed");
        let batch = api("/v1/views/sales_by_product/totals?layer=batch");
        assert!(
            orders(&speed) > 0 && orders(&batch) == 0,
            "all provisional before a batch run"
        );
        let card = "#totals .metric[data-metric=orders]";
        let shown = until("the orders total", async || {
            attribute(&client, card, "data-value")
                .await
                .filter(|v| v.parse::<u64>().ok() == Some(orders(&merged)))
        })
        .await;
        assert_eq!(shown, orders(&merged).to_string());
        assert_eq!(
            text(&client, &format!("{card} .value")).await,
            Some(grouped(orders(&merged)))
        );
        assert_eq!(
            attribute(&client, card, "data-provisional").await,
            Some(orders(&speed).to_string())
        );
        assert_eq!(
            attribute(&client, card, "data-final").await,
            Some("0".to_owned())
        );
        let revenue_shown: f64 = attribute(
            &client,
            "#totals .metric[data-metric=revenue]",
            "data-value",
        )
        .await
        .and_then(|v| v.parse().ok())
        .expect("revenue");
        assert_eq!(
            (revenue_shown * 100.0).round() as i64,
            revenue_cents(&merged)
        );

        // The top 10 by revenue, key for key and value for value.
        let top = api("/v1/views/sales_by_product/top?metric=revenue&n=10");
        let expected: Vec<(String, String)> = top["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|item| {
                (
                    item["key"].as_str().expect("key").to_owned(),
                    item["metrics"]["revenue"].to_string(),
                )
            })
            .collect();
        assert_eq!(expected.len(), 10);
        let rows = client
            .find_all(Locator::Css("#top tbody tr"))
            .await
            .expect("rows");
        let mut seen = Vec::new();
        for row in rows {
            let key = row.attr("data-key").await.expect("attr").expect("data-key");
            let value = row
                .attr("data-value")
                .await
                .expect("attr")
                .expect("data-value");
            seen.push((key, value));
        }
        assert_eq!(seen, expected);

        // Each bar is split as the totals are: all provisional before a batch run.
        let split = until("the top bars split", async || {
            let split = top_split(&client).await;
            let complete = split.len() == 10
                && split
                    .iter()
                    .all(|(value, final_part, provisional)| {
                        value.is_finite() && final_part.is_finite() && provisional.is_finite()
                    });
            complete.then_some(split)
        })
        .await;
        for (value, final_part, provisional) in &split {
            assert_eq!(*final_part, 0.0, "{split:?}");
            assert!((provisional - value).abs() < 1e-6, "{split:?}");
        }

        // Clicking a key charts it.
        let first_key = expected[0].0.clone();
        client
            .find(Locator::Css(&format!(
                "#top tbody tr[data-key='{first_key}']"
            )))
            .await
            .expect("row")
            .click()
            .await
            .expect("click");
        until("the key's series", async || {
            text(&client, "#series-key")
                .await
                .filter(|k| *k == first_key)
        })
        .await;
        let buckets: usize = until("bars", async || {
            attribute(&client, "#series", "data-buckets")
                .await
                .and_then(|n| n.parse().ok())
                .filter(|n| *n > 0)
        })
        .await;
        let series = api(&format!(
            "/v1/views/sales_by_product/series?key={first_key}"
        ));
        assert_eq!(
            buckets,
            series["buckets"]
                .as_array()
                .expect("buckets")
                .len()
                .min(120)
        );

        // The time axis: a few labelled ticks, none overlapping the next.
        let ticks = client
            .execute(
                "return [...document.querySelectorAll('#series text.tick')]\
                   .map((tick) => { const box = tick.getBBox(); return [box.x, box.x + box.width]; })",
                vec![],
            )
            .await
            .expect("read the ticks");
        let ticks: Vec<(f64, f64)> = serde_json::from_value(ticks).expect("tick boxes");
        assert!((1..=6).contains(&ticks.len()), "{ticks:?}");
        assert!(
            ticks.windows(2).all(|pair| pair[0].1 < pair[1].0),
            "{ticks:?}"
        );

        // Recompute from the page: the provisional part becomes final.
        client
            .find(Locator::Css("#recompute"))
            .await
            .expect("button")
            .click()
            .await
            .expect("click");
        until("everything final", async || {
            let final_part = attribute(&client, card, "data-final").await?;
            let provisional = attribute(&client, card, "data-provisional").await?;
            (final_part == orders(&merged).to_string() && provisional == "0").then_some(())
        })
        .await;
        let batch = api("/v1/views/sales_by_product/totals?layer=batch");
        assert_eq!(orders(&batch), orders(&merged), "the API agrees: all final");
        until("the top bars all final", async || {
            let split = top_split(&client).await;
            let all_final = split
                .iter()
                .all(|(value, final_part, provisional)| *provisional == 0.0 && final_part == value);
            (split.len() == 10 && all_final).then_some(())
        })
        .await;
        let epoch = until("the batch epoch", async || {
            attribute(&client, "#asof", "data-batch-epoch")
                .await
                .filter(|epoch| epoch != "null")
        })
        .await;
        assert_eq!(epoch, api("/v1/status")["batch_epoch"].to_string());

        // Pipeline health names the source and says it is connected.
        let sources = text(&client, "#sources").await.expect("sources");
        assert!(
            sources.contains("orders") && sources.contains("connected") && sources.contains(&queue),
            "{sources}"
        );
        // A RabbitMQ source has a dead-letter queue, so the page may say so.
        let rejected = text(&client, "#rejected-total").await.expect("rejected tile");
        assert!(rejected.contains("dead-lettered"), "{rejected}");

        // Some new events, so the picture shows both parts.
        let more =
            common::workload::generate(&["--events", "1500", "--seed", "52", "--products", "60"]);
        let more_file = dir.path().join("more.jsonl");
        let renamed = String::from_utf8(more)
            .expect("utf-8")
            .replace("\"order_id\":\"o-", "\"order_id\":\"m-");
        std::fs::write(&more_file, renamed).expect("write");
        common::tandem_publish(&queue, &more_file);
        until("new provisional events", async || {
            attribute(&client, card, "data-provisional")
                .await
                .filter(|n| n != "0")
        })
        .await;
        client
            .execute("window.scrollTo(0, 0)", vec![])
            .await
            .expect("scroll");
        let png = client.screenshot().await.expect("screenshot");
        let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
        std::fs::write(&out, &png).expect("write screenshot");
        if std::env::var_os("TANDEM_UPDATE_SCREENSHOT").is_some() {
            std::fs::write(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png"),
                &png,
            )
            .expect("write docs/dashboard.png");
        }
        client.close().await.expect("close");
    });
    drop(daemon);
    actix::System::new().block_on(common::delete_queues(&[&queue, &dead]));
}
