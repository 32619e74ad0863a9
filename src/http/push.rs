//! `POST /v1/events`: the HTTP push source. The body is newline-delimited JSON
//! (one event a line) or a JSON array of events; the answer comes once every
//! accepted event is durable, with each rejection by line (or array index).

use super::{ApiError, ApiState};
use crate::actors::IngestError;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde_json::{Value, json, value::RawValue};

/// How the body holds its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// One event a line; blank lines are skipped; rejections name the 1-based line.
    Lines,
    /// A JSON array, or one JSON object; rejections name the 0-based index.
    Array,
}

const LINE_TYPES: [&str; 4] = [
    "application/x-ndjson",
    "application/jsonl",
    "application/x-jsonlines",
    "text/plain",
];

fn framing(request: &HttpRequest) -> Result<Framing, ApiError> {
    let given = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let essence = given.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(Framing::Array)
    } else if LINE_TYPES
        .iter()
        .any(|line_type| essence.eq_ignore_ascii_case(line_type))
    {
        Ok(Framing::Lines)
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {given:?} is not accepted: send newline-delimited JSON as \
             application/x-ndjson, or a JSON array of events (or one event) as application/json"
        )))
    }
}

/// Reads the body, refusing it once it passes `limit` bytes.
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|err| ApiError::BadRequest(format!("cannot read the body: {err}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(format!(
                "the body is larger than {limit} bytes (source max_body_bytes); split it"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The events of a body with the position each rejection will name.
pub(crate) fn split(body: &[u8], framing: Framing) -> Result<(Vec<Vec<u8>>, Vec<usize>), ApiError> {
    let mut messages = Vec::new();
    let mut positions = Vec::new();
    match framing {
        Framing::Lines => {
            for (index, line) in body.split(|byte| *byte == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                messages.push(line.to_vec());
                positions.push(index + 1);
            }
        }
        Framing::Array => {
            let body: &RawValue = serde_json::from_slice(body).map_err(|err| {
                ApiError::BadRequest(format!(
                    "the body is not one JSON value (a JSON array of events, or one event): {err}; \
                     send newline-delimited JSON as application/x-ndjson"
                ))
            })?;
            if body.get().starts_with('{') {
                // One JSON object: one event.
                messages.push(body.get().as_bytes().to_vec());
                positions.push(0);
            } else {
                let events: Vec<&RawValue> = serde_json::from_str(body.get()).map_err(|err| {
                    ApiError::BadRequest(format!(
                        "the body is neither a JSON array of events nor one event (a JSON object): {err}"
                    ))
                })?;
                for (index, event) in events.into_iter().enumerate() {
                    messages.push(event.get().as_bytes().to_vec());
                    positions.push(index);
                }
            }
        }
    }
    Ok((messages, positions))
}

/// `POST /v1/events`.
pub async fn events(
    state: web::Data<ApiState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let Some(push) = state.handle.http_push() else {
        return Err(ApiError::NotFound(
            "no source of type \"http\" is configured, so this daemon takes no pushed events"
                .into(),
        ));
    };
    if !request.query_string().is_empty() {
        return Err(ApiError::BadRequest(
            "this route takes no parameters".into(),
        ));
    }
    let framing = framing(&request)?;
    let body = read_body(payload, push.limits.max_body_bytes).await?;
    // Splitting up to max_body_bytes is CPU work: off the async threads.
    let (messages, positions) = web::block(move || split(&body, framing))
        .await
        .map_err(|_| ApiError::Unavailable("tandem is stopping".into()))??;
    if messages.len() > push.limits.max_events {
        return Err(ApiError::TooLarge(format!(
            "the body holds {} events, more than {} (source max_events); split it",
            messages.len(),
            push.limits.max_events
        )));
    }
    let outcome = push.pusher.push(messages).await.map_err(|err| match err {
        IngestError::Stopped => ApiError::Unavailable(err.to_string()),
        IngestError::NotDurable(cause) => {
            tracing::error!(source = %push.name, error = %cause, "pushed events are not durable");
            ApiError::Unavailable(format!(
                "{cause}: nothing of this request was accepted; retry later"
            ))
        }
    })?;
    let position_name = match framing {
        Framing::Lines => "line",
        Framing::Array => "index",
    };
    let schema = &state.handle.config().schema;
    let rejected: Vec<Value> = outcome
        .rejected
        .iter()
        .map(|(index, reject)| {
            let mut entry = serde_json::Map::new();
            entry.insert(position_name.into(), json!(positions[*index]));
            entry.insert("reason".into(), json!(reject.reason.as_str()));
            if let Some(field) = reject.field {
                entry.insert("field".into(), json!(schema.field_name(field)));
            }
            Value::Object(entry)
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "accepted": outcome.accepted, "rejected": rejected })))
}
