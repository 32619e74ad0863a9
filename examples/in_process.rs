//! tandem embedded in a Rust program, with no broker: start the system from a
//! config value, ingest events through the actor API, query the merged view,
//! run a batch and query again.
//!
//!     cargo run --example in_process

use tandem::aggregate::Body;
use tandem::{Config, Layer, Options, Query, Question};

const CONFIG: &str = r#"
data_dir = "unused"
[event]
id = "order_id"
time = "ts"
[[view]]
name = "sales_by_product"
key = ["product_id"]
bucket = "1m"
metrics = [
  { name = "orders",  agg = "count" },
  { name = "revenue", agg = "sum",      field = "amount" },
  { name = "buyers",  agg = "distinct", field = "user_id" },
]
"#;

fn print(label: &str, body: &Body) {
    match body {
        Body::Metrics(metrics) => println!(
            "{label}: {}",
            serde_json::to_string(metrics).unwrap_or_default()
        ),
        Body::Top(items) => {
            println!("{label}:");
            for item in items {
                println!(
                    "  {:<6} {}",
                    item.key,
                    serde_json::to_string(&item.metrics).unwrap_or_default()
                );
            }
        }
        Body::Series(buckets) => println!("{label}: {} buckets", buckets.len()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = std::env::temp_dir().join(format!("tandem-example-{}", std::process::id()));
    let mut config = Config::parse(CONFIG, "example.toml")?;
    config.data_dir = data_dir.clone();

    let outcome = actix::System::new().block_on(async move {
        let handle = tandem::start(config, Options::default()).await?;
        let orders = [
            r#"{"order_id":"o-1","ts":"2026-11-24T10:00:05Z","product_id":"p-1","user_id":"u-1","amount":20.00}"#,
            r#"{"order_id":"o-2","ts":"2026-11-24T10:00:17Z","product_id":"p-2","user_id":"u-2","amount":5.50}"#,
            r#"{"order_id":"o-3","ts":"2026-11-24T10:01:02Z","product_id":"p-1","user_id":"u-3","amount":12.25}"#,
            // A redelivery: the same id is counted once.
            r#"{"order_id":"o-3","ts":"2026-11-24T10:01:02Z","product_id":"p-1","user_id":"u-3","amount":12.25}"#,
            // Malformed: rejected with its reason, nothing else happens.
            r#"{"order_id":"o-4","ts":"2026-11-24T10:01:30Z","user_id":"u-4","amount":1}"#,
        ];
        for order in orders {
            let outcome = handle.ingest(order.as_bytes().to_vec()).await?;
            println!("ingest {order:.40}... -> {outcome:?}");
        }
        let top = Query::new("sales_by_product", Question::Top { metric: "revenue".into(), n: 10 });
        print("top products (speed layer, live)", &handle.query(top.clone()).await?.body);

        let epoch = handle.recompute_now().await?;
        println!("batch run covered epoch {epoch}");
        let answer = handle.query(Query { layer: Layer::Batch, ..top }).await?;
        print("top products (batch layer alone)", &answer.body);
        let totals = handle.query(Query::new("sales_by_product", Question::Totals)).await?;
        print("totals", &totals.body);
        handle.stop().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    std::fs::remove_dir_all(&data_dir).ok();
    outcome
}
