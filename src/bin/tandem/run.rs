//! `tandem run --config FILE`: the daemon. Recovers the data_dir, serves the
//! HTTP API (HTTPS with `[http.tls]`; SIGHUP reads the certificate and the
//! token files again),
//! and on SIGINT or SIGTERM stops consuming, lets the batches in
//! flight become durable and acknowledged (every push queued before the
//! signal is answered), answers 503 for `http.shutdown_grace`, stops the HTTP
//! server and exits 0.

use anyhow::Context as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tandem::http::{ApiState, Tls, Tokens};
use tandem::{Config, Options};

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => return Ok(super::check::report(path, &errors)),
    };
    let listen = config.http.listen;
    // Checked before anything else, creating and binding nothing: an API
    // that would be open to the network by mistake (an address that is not
    // loopback with no token, or a [[http.token]] without a value), the TLS
    // files, a data_dir in use by another daemon, then a busy port; each
    // refused in one line.
    let tokens =
        Tokens::read(&config.http).map_err(|err| anyhow::anyhow!("cannot start: {err}"))?;
    if tokens.is_open() && config.http.allow_unauthenticated && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "the API is open to anyone who can reach it (http.allow_unauthenticated)");
    }
    let tls = match &config.http.tls {
        Some(files) => Some(Tls::load(files).context("cannot start")?),
        None => None,
    };
    if tls.is_none() && !tokens.is_open() && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "bearer tokens cross the network in plain text: set [http.tls] to serve HTTPS");
    }
    tandem::store::DataDirLock::check_free(&tandem::store::DataPaths::new(&config.data_dir))
        .context("cannot start")?;
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen} (http.listen)"))?;
    actix::System::new().block_on(async move {
        let started = std::time::Instant::now();
        // Before the start, which can take a while: a SIGHUP meanwhile (a
        // certificate renewed) is then answered, instead of ending the process.
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for signals")?;
        let data_dir = config.data_dir.clone();
        let started_up = tandem::start(config, Options::default()).await.map_err(|err| match &err {
            tandem::actors::StartError::Store(store) if store.is_damage() => anyhow::anyhow!(
                "{err}; `tandem inspect --data {}` lists the damage; restore the file from a backup or replica",
                data_dir.display()
            ),
            _ => anyhow::Error::new(err),
        });
        let handle = Arc::new(started_up.context("cannot start")?);
        let grace = handle.config().http.shutdown_grace;
        let ready = Arc::new(AtomicBool::new(false));
        // A clone shares the tokens: a reload replaces them for the API.
        let tokens_in_use = tokens.clone();
        let state = ApiState { handle: Arc::clone(&handle), tokens, ready: Arc::clone(&ready) };
        let server = tandem::http::serve_on(state, listener, tls.as_ref())
            .with_context(|| format!("cannot listen on {listen}"))?;
        let server_handle = server.handle();
        let serving = actix::spawn(server);
        ready.store(true, Ordering::Release);
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%listen, scheme, took_ms = started.elapsed().as_millis() as u64, "tandem is serving");

        let reload = Reload { http: handle.config().http.clone(), tokens: tokens_in_use, tls };
        let signal = shutdown_signal(&mut hangup, &reload)
            .await
            .context("cannot listen for signals")?;
        let stopping = std::time::Instant::now();
        tracing::info!(signal, "stopping: finishing the batches in flight");
        ready.store(false, Ordering::Release);
        handle.shutdown().await;
        // Lame duck, a timer of http.shutdown_grace: the sources have
        // drained, so every push now gets 503 with Retry-After (and /readyz
        // fails) instead of a refused connection, until the port closes.
        tokio::time::sleep(grace).await;
        server_handle.stop(true).await;
        serving.await.ok();
        tracing::info!(took_ms = stopping.elapsed().as_millis() as u64, "stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// What SIGHUP reads again: the TLS certificate and key, and the bearer
/// tokens' files (a rotated secret); the variables of a running process do
/// not change.
struct Reload {
    http: tandem::config::HttpConfig,
    tokens: Tokens,
    tls: Option<Arc<Tls>>,
}

impl Reload {
    /// Reads them again on the blocking pool; what fails to read is kept as
    /// it was, and said.
    async fn run(&self) {
        let (http, tls) = (self.http.clone(), self.tls.clone());
        let read =
            tokio::task::spawn_blocking(move || (Tokens::read(&http), tls.map(|tls| tls.reload())))
                .await;
        let (tokens, tls) = match read {
            Ok(read) => read,
            Err(err) => {
                tracing::error!(error = %err, "SIGHUP: the reload did not finish; kept the tokens and certificate in use");
                return;
            }
        };
        match tokens {
            Ok(fresh) => {
                self.tokens.replace(&fresh);
                tracing::info!(tokens = fresh.count(), "SIGHUP: reloaded the bearer tokens");
            }
            Err(err) => tracing::error!(error = %err, "SIGHUP: kept the bearer tokens in use"),
        }
        match tls {
            Some(Ok(())) => tracing::info!("SIGHUP: reloaded the TLS certificate and key"),
            Some(Err(err)) => {
                tracing::error!(error = %err, "SIGHUP: kept the TLS certificate in use")
            }
            None => {}
        }
    }
}

/// Waits for SIGINT or SIGTERM; answers which. On each SIGHUP meanwhile,
/// reloads (see [`Reload`]).
async fn shutdown_signal(
    hangup: &mut tokio::signal::unix::Signal,
    reload: &Reload,
) -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok("SIGTERM"),
            _ = interrupt.recv() => return Ok("SIGINT"),
            _ = hangup.recv() => reload.run().await,
        }
    }
}
