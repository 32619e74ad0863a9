//! The HTTP API (actix-web): routes, bearer tokens with roles (read, ingest,
//! admin), request metrics and optional HTTPS.
//! It holds the system's handle (addresses), never state of its own.

mod error;
pub(crate) mod push;
mod routes;
mod tls;
mod ui;

pub use error::ApiError;
pub use tls::{Tls, TlsError};

use crate::actors::Handle;
use crate::config::{HttpConfig, Role};
use actix_web::body::EitherBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpServer, web};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares.
pub struct ApiState {
    /// The running system.
    pub handle: Arc<Handle>,
    /// The bearer tokens and their roles; none: the API is open.
    pub tokens: Tokens,
    /// Set once restart recovery is done and the system serves.
    pub ready: Arc<AtomicBool>,
}

/// The bearer tokens the API accepts, each with its role. Clones share
/// them: [`Tokens::replace`] (the daemon does on SIGHUP) changes what every
/// clone accepts, from the next request on.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Arc<RwLock<Vec<(Role, String)>>>);

impl Tokens {
    /// No token: every route is open.
    pub fn open() -> Tokens {
        Tokens::default()
    }

    /// One token that may do everything.
    pub fn admin(token: impl Into<String>) -> Tokens {
        Tokens(Arc::new(RwLock::new(vec![(Role::Admin, token.into())])))
    }

    /// The tokens `config` names, read from their variables and files.
    ///
    /// # Errors
    /// One line naming the problem: a `[[http.token]]` cannot be read or is
    /// empty; or no token is configured ([`HttpConfig::exposure`]) or none
    /// has a value (`http.auth_token_env` names a variable that is not set)
    /// while the API listens on an address that is not loopback, without
    /// `http.allow_unauthenticated`.
    pub fn read(config: &HttpConfig) -> Result<Tokens, String> {
        if let Some(problem) = config.exposure() {
            return Err(format!("http.listen: {problem}"));
        }
        let mut tokens = Vec::with_capacity(config.tokens.len());
        let mut unset = Vec::new();
        for spec in &config.tokens {
            match spec.read() {
                Ok(token) => tokens.push((spec.role, token)),
                Err(problem) if spec.optional => unset.push(problem),
                Err(problem) => return Err(problem),
            }
        }
        let open = tokens.is_empty() && !config.tokens.is_empty();
        if open && !config.listen.ip().is_loopback() && !config.allow_unauthenticated {
            return Err(format!(
                "http.listen: {} is not a loopback address and no token has a value ({}): \
                 set it, or set http.allow_unauthenticated = true to accept that knowingly",
                config.listen,
                unset.join("; ")
            ));
        }
        for problem in unset {
            tracing::warn!(%problem, "the API is open to anyone who can reach {}", config.listen);
        }
        Ok(Tokens(Arc::new(RwLock::new(tokens))))
    }

    /// Accepts the tokens of `fresh` from now on, in place of these (in
    /// every clone).
    pub fn replace(&self, fresh: &Tokens) {
        let tokens = fresh.list().clone();
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokens;
    }

    /// How many tokens there are.
    pub fn count(&self) -> usize {
        self.list().len()
    }

    /// Whether the API is open (no token).
    pub fn is_open(&self) -> bool {
        self.list().is_empty()
    }

    fn list(&self) -> std::sync::RwLockReadGuard<'_, Vec<(Role, String)>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The role of `given`, if it is one of the tokens. Every token is
    /// compared in constant time, so the time taken does not tell how much
    /// of a guessed token was right (only whether its length was).
    fn role_of(&self, given: &[u8]) -> Option<Role> {
        use subtle::ConstantTimeEq;
        let mut role = None;
        for (candidate, token) in self.list().iter() {
            if bool::from(given.ct_eq(token.as_bytes())) && role.is_none() {
                role = Some(*candidate);
            }
        }
        role
    }
}

/// The role a request needs: none for the health checks and the
/// dashboard's page, ingest to push events, read for any other GET or HEAD,
/// admin for anything else (what changes state).
fn needed_role(request: &ServiceRequest) -> Option<Role> {
    let path = request.path();
    if matches!(path, "/healthz" | "/readyz") || ui::is_asset(path) {
        return None;
    }
    let method = request.method();
    // The route the router matched, however the path was spelled.
    let route = request.match_pattern();
    let route = route.as_deref().unwrap_or(path);
    Some(
        if route == "/v1/events" && method == actix_web::http::Method::POST {
            Role::Ingest
        } else if matches!(
            *method,
            actix_web::http::Method::GET | actix_web::http::Method::HEAD
        ) {
            Role::Read
        } else {
            Role::Admin
        },
    )
}

/// Whether `request` may go on: 401 without a known token, 403 with a
/// token whose role does not allow it.
fn authorize(request: &ServiceRequest, tokens: &Tokens) -> Result<(), ApiError> {
    let Some(needed) = needed_role(request).filter(|_| !tokens.is_open()) else {
        return Ok(());
    };
    let role = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|given| tokens.role_of(given.as_bytes()))
        .ok_or(ApiError::Unauthorized)?;
    if role.allows(needed) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "this token's role is {}; {} {} needs a token of the {} or admin role",
            role.as_str(),
            request.method(),
            request.path(),
            needed.as_str()
        )))
    }
}

/// Starts the HTTP server on `listen`. It does not handle signals: the
/// daemon stops it.
///
/// # Errors
/// The address cannot be bound.
pub fn serve(state: ApiState, listen: SocketAddr) -> std::io::Result<Server> {
    serve_on(state, std::net::TcpListener::bind(listen)?, None)
}

/// Starts the HTTP server on a bound listener, so that a caller can bind
/// before it starts anything else (the daemon does, to refuse a busy port
/// before it touches the data_dir). With `tls`, it speaks HTTPS only: a
/// plain-HTTP client fails the handshake and gets no answer.
///
/// # Errors
/// The listener cannot be used.
pub fn serve_on(
    state: ApiState,
    listener: std::net::TcpListener,
    tls: Option<&Arc<Tls>>,
) -> std::io::Result<Server> {
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
                let allowed = authorize(&request, &state.tokens);
                let route = request
                    .match_pattern()
                    .unwrap_or_else(|| "unmatched".to_owned());
                let response = allowed.map(|()| actix_web::dev::Service::call(service, request));
                async move {
                    let response: ServiceResponse<EitherBody<_>> = match response {
                        Ok(response) => response.await?.map_into_left_body(),
                        Err(refused) => return Err(refused.into()),
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
    .shutdown_timeout(5);
    let server = match tls {
        Some(tls) => {
            let config = tls.server_config().map_err(std::io::Error::other)?;
            server.listen_rustls_0_23(listener, config)?
        }
        None => server.listen(listener)?,
    };
    Ok(server.run())
}
