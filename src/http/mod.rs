//! The HTTP API (actix-web): routes, bearer-token auth and request metrics.
//! It holds the system's handle (addresses), never state of its own.

mod error;
mod push;
mod routes;
mod ui;

pub use error::ApiError;

use crate::actors::Handle;
use actix_web::body::EitherBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpServer, web};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares.
pub struct ApiState {
    /// The running system.
    pub handle: Arc<Handle>,
    /// The bearer token every route but the health checks requires, if set.
    pub token: Option<String>,
    /// Set once restart recovery is done and the system serves.
    pub ready: Arc<AtomicBool>,
}

/// Compares in constant time, so the time taken does not tell an attacker
/// how much of a guessed token was right (only whether its length was).
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.ct_eq(expected).into()
}

fn authorized(request: &ServiceRequest, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    if matches!(request.path(), "/healthz" | "/readyz") || ui::is_asset(request.path()) {
        return true;
    }
    request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| same_token(given.as_bytes(), token.as_bytes()))
}

/// Starts the HTTP server on `listen`. It does not handle signals: the
/// daemon stops it.
///
/// # Errors
/// The address cannot be bound.
pub fn serve(state: ApiState, listen: SocketAddr) -> std::io::Result<Server> {
    serve_on(state, std::net::TcpListener::bind(listen)?)
}

/// Starts the HTTP server on a bound listener, so that a caller can bind
/// before it starts anything else (the daemon does, to refuse a busy port
/// before it touches the data_dir).
///
/// # Errors
/// The listener cannot be used.
pub fn serve_on(state: ApiState, listener: std::net::TcpListener) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        let state = state.clone();
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|err, _| ApiError::BadRequest(err.to_string()).into()),
            )
            .app_data(
                web::PathConfig::default()
                    .error_handler(|err, _| ApiError::BadRequest(err.to_string()).into()),
            )
            .wrap_fn(move |request, service| {
                let metrics = Arc::clone(state.handle.metrics());
                let allowed = authorized(&request, state.token.as_deref());
                let route = request
                    .match_pattern()
                    .unwrap_or_else(|| "unmatched".to_owned());
                let response = if allowed {
                    Some(actix_web::dev::Service::call(service, request))
                } else {
                    None
                };
                async move {
                    let response: ServiceResponse<EitherBody<_>> = match response {
                        Some(response) => response.await?.map_into_left_body(),
                        None => {
                            return Err(ApiError::Unauthorized.into());
                        }
                    };
                    let labels = vec![
                        ("route", route),
                        ("status", response.status().as_u16().to_string()),
                    ];
                    metrics.http.get_or_create(&labels).inc();
                    Ok::<_, actix_web::Error>(response)
                }
            })
            .configure(ui::configure)
            .configure(routes::configure)
    })
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    Ok(server)
}
