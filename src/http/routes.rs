//! One handler per endpoint: parse the parameters, ask the system, answer JSON.

use super::{ApiError, ApiState};
use crate::actors::serving::{Answer, AsOf, Layer, MAX_TOP, Query, Question};
use crate::aggregate::{Body, Metrics, TimeRange};
use crate::config::format_duration;
use crate::event::Epoch;
use crate::metrics::Exposition;
use actix_web::{HttpResponse, web};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

type Params = web::Query<HashMap<String, String>>;

/// Registers every route. A known path asked with another method gets 405
/// and `Allow`; an unknown path 404.
///
/// A view's routes share one scope: actix's router matches a path with a
/// `{view}` segment by a regular expression, once for the scope, where one resource
/// per route would try each route's expression in turn (a tenth of a
/// series' CPU over HTTP, by `perf`).
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(get("/healthz").route(read().to(healthz)))
        .service(get("/readyz").route(read().to(readyz)))
        .service(get("/metrics").route(read().to(metrics)))
        .service(get("/v1/views").route(read().to(views)))
        .service(
            web::scope("/v1/views/{view}")
                .service(get("/totals").route(read().to(totals)))
                .service(get("/top").route(read().to(top)))
                .service(get("/series").route(read().to(series)))
                .service(get("/keys/{key}").route(read().to(key)))
                .default_service(web::to(no_such_route)),
        )
        .service(post("/v1/events").route(web::post().to(super::push::events)))
        .service(post("/v1/recompute").route(web::post().to(recompute)))
        .service(get("/v1/status").route(read().to(status)))
        .default_service(web::to(no_such_route));
}

async fn no_such_route() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

/// A resource that takes GET (and HEAD, which load balancers probe with).
pub(super) fn get(path: &str) -> actix_web::Resource {
    only_method(path, "GET, HEAD")
}

/// The route of a [`get`] resource: GET or HEAD (actix sends no body for HEAD).
pub(super) fn read() -> actix_web::Route {
    use actix_web::guard;
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// A resource that takes POST only.
fn post(path: &str) -> actix_web::Resource {
    only_method(path, "POST")
}

fn only_method(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow })
    }))
}

/// Refuses parameters a route does not take, naming them.
fn only(params: &Params, allowed: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&str> = params
        .keys()
        .map(String::as_str)
        .filter(|name| !allowed.contains(name))
        .collect();
    unknown.sort_unstable();
    match unknown.first() {
        Some(name) => Err(ApiError::BadRequest(format!(
            "unknown parameter {name:?}; this route takes {}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

/// `from`/`to`: RFC 3339 or epoch milliseconds.
fn time(params: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(text) = params.get(name) else {
        return Ok(None);
    };
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| Some(at.timestamp_millis()))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "{name}: {text:?} is neither RFC 3339 nor epoch milliseconds"
            ))
        })
}

fn range_and_layer(params: &Params) -> Result<(TimeRange, Layer), ApiError> {
    let range = TimeRange {
        from: time(params, "from")?,
        to: time(params, "to")?,
    };
    let at_epoch = match params.get("at_epoch") {
        None => None,
        Some(text) => Some(Epoch(text.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "at_epoch: {text:?} is not an epoch (a whole number, as in as_of.batch_epoch)"
            ))
        })?)),
    };
    let layer = match (params.get("layer").map(String::as_str), at_epoch) {
        (None | Some("batch"), Some(epoch)) => Layer::Snapshot(epoch),
        (Some(layer @ ("merged" | "speed")), Some(_)) => {
            return Err(ApiError::BadRequest(format!(
                "layer: at_epoch answers from that epoch's snapshot alone, so layer is batch or left out, not {layer:?}"
            )));
        }
        (None | Some("merged"), None) => Layer::Merged,
        (Some("batch"), None) => Layer::Batch,
        (Some("speed"), None) => Layer::Speed,
        (Some(other), _) => {
            return Err(ApiError::BadRequest(format!(
                "layer: {other:?} is not one of merged, batch, speed"
            )));
        }
    };
    Ok((range, layer))
}

fn rfc3339(ms: i64) -> Value {
    serde_json::to_value(Rfc3339(ms)).unwrap_or(Value::Null)
}

/// A time in epoch milliseconds, serialized as RFC 3339 in UTC with
/// milliseconds (chrono's `to_rfc3339_opts(Millis, true)`), or null out of
/// chrono's range: written in place, as a series writes one per bucket.
struct Rfc3339(i64);

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use chrono::{Datelike, Timelike};
        let Some(at) = chrono::DateTime::from_timestamp_millis(self.0) else {
            return serializer.serialize_none();
        };
        let (date, time) = (at.date_naive(), at.time());
        let Some(year) = u32::try_from(date.year())
            .ok()
            .filter(|year| *year <= 9_999)
        else {
            // Signed or five-digit years, as chrono writes them.
            return serializer
                .serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        };
        let mut text = *b"0000-00-00T00:00:00.000Z";
        for (digits, value) in [
            (0..4, year),
            (5..7, date.month()),
            (8..10, date.day()),
            (11..13, time.hour()),
            (14..16, time.minute()),
            (17..19, time.second()),
            (20..23, at.timestamp_subsec_millis()),
        ] {
            let mut value = value;
            for digit in text[digits].iter_mut().rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        serializer.serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?)
    }
}

fn as_of(as_of: &AsOf) -> Value {
    json!({
        "batch_epoch": as_of.batch_epoch,
        "batch_at": as_of.batch_at.map_or(Value::Null, rfc3339),
        "speed_epochs": as_of.speed_epochs,
    })
}

async fn ask(state: &ApiState, query: Query, kind: &'static str) -> Result<Answer, ApiError> {
    let started = std::time::Instant::now();
    let answer = state.handle.query(query).await?;
    state
        .handle
        .metrics()
        .query
        .get_or_create(&vec![("kind", kind)])
        .observe(started.elapsed().as_secs_f64());
    Ok(answer)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "live" }))
}

async fn readyz(state: web::Data<ApiState>) -> HttpResponse {
    if state.ready.load(Ordering::Acquire) {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({ "status": "starting" }))
    }
}

async fn metrics(
    state: web::Data<ApiState>,
    request: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let accept = request
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = Exposition::negotiate(accept);
    let text = state
        .handle
        .metrics()
        .render(format)
        .map_err(|_| ApiError::Unavailable("cannot render metrics".into()))?;
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .body(text))
}

async fn views(state: web::Data<ApiState>, params: Params) -> Result<HttpResponse, ApiError> {
    only(&params, &[])?;
    let views: Vec<Value> = state
        .handle
        .config()
        .views
        .iter()
        .map(|view| {
            json!({
                "name": view.name,
                "key": view.key,
                "bucket": format_duration(Duration::from_millis(view.bucket_ms as u64)),
                "retention": view.retention_ms.map(|ms| format_duration(Duration::from_millis(ms as u64))),
                "metrics": view.metrics,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "views": views })))
}

async fn key(
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
    params: Params,
) -> Result<HttpResponse, ApiError> {
    only(&params, &["from", "to", "layer", "at_epoch"])?;
    let (view, key) = path.into_inner();
    let (range, layer) = range_and_layer(&params)?;
    let answer = ask(
        &state,
        Query {
            view,
            question: Question::Key(key.clone()),
            range,
            layer,
        },
        "key",
    )
    .await?;
    let Body::Metrics(metrics) = &answer.body else {
        return Err(ApiError::Unavailable("unexpected answer".into()));
    };
    Ok(HttpResponse::Ok().json(json!({ "view": answer.view, "key": key, "metrics": metrics, "as_of": as_of(&answer.as_of) })))
}

async fn totals(
    state: web::Data<ApiState>,
    view: web::Path<String>,
    params: Params,
) -> Result<HttpResponse, ApiError> {
    only(&params, &["from", "to", "layer", "at_epoch"])?;
    let (range, layer) = range_and_layer(&params)?;
    let answer = ask(
        &state,
        Query {
            view: view.into_inner(),
            question: Question::Totals,
            range,
            layer,
        },
        "totals",
    )
    .await?;
    let Body::Metrics(metrics) = &answer.body else {
        return Err(ApiError::Unavailable("unexpected answer".into()));
    };
    Ok(HttpResponse::Ok()
        .json(json!({ "view": answer.view, "metrics": metrics, "as_of": as_of(&answer.as_of) })))
}

async fn top(
    state: web::Data<ApiState>,
    view: web::Path<String>,
    params: Params,
) -> Result<HttpResponse, ApiError> {
    only(&params, &["metric", "n", "from", "to", "layer", "at_epoch"])?;
    let (range, layer) = range_and_layer(&params)?;
    let metric = params
        .get("metric")
        .cloned()
        .ok_or_else(|| ApiError::BadRequest("metric: required (the metric to rank by)".into()))?;
    let n = match params.get("n") {
        None => 10,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_TOP).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "n: {text:?} is not a whole number within 1..={MAX_TOP}"
                ))
            })?,
    };
    let answer = ask(
        &state,
        Query {
            view: view.into_inner(),
            question: Question::Top {
                metric: metric.clone(),
                n,
            },
            range,
            layer,
        },
        "top",
    )
    .await?;
    let Body::Top(items) = &answer.body else {
        return Err(ApiError::Unavailable("unexpected answer".into()));
    };
    Ok(HttpResponse::Ok().json(json!({ "view": answer.view, "metric": metric, "items": items, "as_of": as_of(&answer.as_of) })))
}

async fn series(
    state: web::Data<ApiState>,
    view: web::Path<String>,
    params: Params,
) -> Result<HttpResponse, ApiError> {
    only(&params, &["key", "from", "to", "layer", "at_epoch"])?;
    let (range, layer) = range_and_layer(&params)?;
    let key = params.get("key").cloned();
    let answer = ask(
        &state,
        Query {
            view: view.into_inner(),
            question: Question::Series(key.clone()),
            range,
            layer,
        },
        "series",
    )
    .await?;
    let Body::Series(buckets) = &answer.body else {
        return Err(ApiError::Unavailable("unexpected answer".into()));
    };
    // Written straight from the answer: a series can hold thousands of
    // buckets, too many to build as a JSON tree first.
    #[derive(serde::Serialize)]
    struct Series<'a> {
        view: &'a str,
        key: Option<String>,
        buckets: Vec<SeriesBucket<'a>>,
        as_of: Value,
    }
    #[derive(serde::Serialize)]
    struct SeriesBucket<'a> {
        start: Rfc3339,
        metrics: &'a Metrics,
    }
    let series = Series {
        view: &answer.view,
        key,
        buckets: buckets
            .iter()
            .map(|bucket| SeriesBucket {
                start: Rfc3339(bucket.start),
                metrics: &bucket.metrics,
            })
            .collect(),
        as_of: as_of(&answer.as_of),
    };
    // Sized for every bucket at once (about 32 bytes for its start and 32
    // per metric), not grown by doubling.
    let mut body = Vec::with_capacity(256 + 32 * buckets.len() * (1 + metrics_per_bucket(buckets)));
    match serde_json::to_writer(&mut body, &series) {
        Ok(()) => Ok(HttpResponse::Ok()
            .content_type(actix_web::http::header::ContentType::json())
            .body(body)),
        Err(err) => Ok(HttpResponse::InternalServerError().body(err.to_string())),
    }
}

/// How many metrics a series' buckets hold.
fn metrics_per_bucket(buckets: &[crate::aggregate::Bucket]) -> usize {
    buckets.first().map_or(0, |bucket| bucket.metrics.len())
}

async fn recompute(state: web::Data<ApiState>, params: Params) -> Result<HttpResponse, ApiError> {
    only(&params, &["wait", "timeout", "full"])?;
    let flag = |name: &str| match params.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "{name}: {other:?} is not true or false"
        ))),
    };
    let wait = flag("wait")?;
    let mode = if flag("full")? {
        crate::actors::RunMode::Full
    } else {
        crate::actors::RunMode::Incremental
    };
    let timeout = match params.get("timeout") {
        None => DEFAULT_RECOMPUTE_TIMEOUT,
        Some(_) if !wait => {
            return Err(ApiError::BadRequest("timeout: only with wait=true".into()));
        }
        Some(text) => match crate::config::parse_duration(text) {
            Ok(timeout) if timeout > Duration::ZERO && timeout <= MAX_RECOMPUTE_TIMEOUT => timeout,
            Ok(_) => {
                return Err(ApiError::BadRequest(format!(
                    "timeout: {text:?} is out of range: must lie within 1ms..=1h"
                )));
            }
            Err(problem) => return Err(ApiError::BadRequest(format!("timeout: {problem}"))),
        },
    };
    let epoch = state.handle.start_epoch(mode).await?;
    if !wait {
        return Ok(HttpResponse::Accepted().json(json!({ "epoch": epoch })));
    }
    let failed =
        |err: crate::actors::supervisor::RecomputeFailed| ApiError::BatchFailed(err.to_string());
    match tokio::time::timeout(timeout, state.handle.wait_served(epoch)).await {
        Ok(covered) => {
            let covered = covered.map_err(failed)?;
            Ok(HttpResponse::Ok().json(json!({ "epoch": epoch, "batch_epoch": covered })))
        }
        Err(_) => Err(ApiError::Timeout(format!(
            "no snapshot covering epoch {epoch} within {}; the batch run goes on",
            crate::config::format_duration(timeout)
        ))),
    }
}

/// How long `recompute?wait=true` waits without a `timeout`.
const DEFAULT_RECOMPUTE_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest `timeout` it takes.
const MAX_RECOMPUTE_TIMEOUT: Duration = Duration::from_secs(3_600);

async fn status(state: web::Data<ApiState>, params: Params) -> Result<HttpResponse, ApiError> {
    only(&params, &[])?;
    let handle = &state.handle;
    let runs = handle.runs().await?;
    let batch = handle.batch().await?;
    let rejected: serde_json::Map<String, Value> = crate::event::Reason::ALL
        .iter()
        .zip(handle.rejected_total())
        .map(|(reason, count)| (reason.as_str().to_owned(), json!(count)))
        .collect();
    let sources: Vec<Value> = handle
        .sources()
        .iter()
        .filter(|source| source.listed())
        .map(|source| {
            let stats = &source.stats;
            let mut entry = json!({
                "name": source.name,
                "type": source.kind,
                "queue": source.queue,
                "connected": stats.connected.load(Ordering::Relaxed),
                "accepted": stats.accepted.load(Ordering::Relaxed),
                "last_error": stats.last_error.get(),
                "disconnects": stats.disconnects.load(Ordering::Relaxed),
                "restarts": stats.restarts.load(Ordering::Relaxed),
            });
            if let (Some(demo), Value::Object(entry)) = (&stats.demo, &mut entry) {
                entry.insert(
                    "generated".into(),
                    json!(demo.generated.load(Ordering::Relaxed)),
                );
                entry.insert(
                    "duplicates".into(),
                    json!(demo.duplicates.load(Ordering::Relaxed)),
                );
                entry.insert(
                    "finished".into(),
                    json!(demo.finished.load(Ordering::Relaxed)),
                );
            }
            entry
        })
        .collect();
    let shared = handle.shared();
    let store_error = shared.store_error.get();
    let (records_read, records_total) = shared.recompute_progress.get();
    let (views_from_cache, views_from_master_dataset) = shared.recompute_progress.views();
    let snapshot = batch.meta.map_or(Value::Null, |meta| {
        json!({ "epoch": meta.epoch, "events": batch.stats.counted, "created_at": rfc3339(meta.created_ms), "took_ms": batch.took_ms })
    });
    Ok(HttpResponse::Ok().json(json!({
        "epoch": runs.epoch,
        "batch_epoch": batch.epoch,
        "recompute_running": runs.running,
        "recompute_progress": {
            "records_read": records_read,
            "records_total": records_total,
            "views_from_cache": views_from_cache,
            "views_from_master_dataset": views_from_master_dataset,
        },
        "snapshot": snapshot,
        "events_accepted": shared.durable_records.load(Ordering::Relaxed),
        "events_rejected": rejected,
        "duplicates_dropped": batch.stats.duplicates,
        "sources": sources,
        "store": {
            "writable": store_error.is_none(),
            "error": store_error,
            "write_failures": shared.store_write_failures.load(Ordering::Relaxed),
        },
        "recompute_error": shared.recompute_error.get(),
        "export": {
            "epochs": shared.exported_epochs.load(Ordering::Relaxed),
            "failures": shared.export_failures.load(Ordering::Relaxed),
            "error": shared.export_error.get(),
        },
        "recompute_failing": {
            "runs": shared.recompute_failing.load(Ordering::Relaxed),
            "since": match shared.recompute_failing_since_ms.load(Ordering::Relaxed) {
                0 => Value::Null,
                since => json!(rfc3339(since)),
            },
        },
        "speed": { "groups": shared.speed_groups_total() },
        "dedup": {
            "ids_held": shared.ids_held.load(Ordering::Relaxed),
            "ids_indexed": shared.ids_indexed.load(Ordering::Relaxed),
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A time is written as chrono writes it, in and out of four-digit
        /// years, before 1970 and out of chrono's range.
        #[test]
        fn rfc3339_is_chronos_text(ms in prop_oneof![
            -62_167_219_200_000i64..253_402_300_800_000,
            any::<i64>(),
            Just(253_402_300_799_999i64),
            Just(253_402_300_800_000i64),
            Just(-62_167_219_200_001i64),
            Just(-1i64),
        ]) {
            let chrono = chrono::DateTime::from_timestamp_millis(ms).map_or(Value::Null, |at| {
                Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            });
            prop_assert_eq!(rfc3339(ms), chrono);
        }
    }
}
