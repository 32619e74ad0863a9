//! `tandem publish`: sends a JSONL file, one event a line, either to a
//! RabbitMQ queue (`--queue`: persistent messages, publisher confirms) or to a
//! daemon's HTTP source (`--http`: batches posted to `/v1/events`, several in
//! flight); a progress bar on a terminal, and the final rate.

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, mpsc};

/// Messages published before their confirms are awaited.
const WINDOW: usize = 2_000;
/// Rejections printed one by one before only their count is.
const SHOWN_REJECTIONS: usize = 10;

/// The input's lines (empty ones skipped) with their 1-based line numbers,
/// and a progress bar that follows the bytes read.
struct Input {
    lines: Box<dyn BufRead>,
    progress: ProgressBar,
    line: usize,
    bytes: u64,
}

impl Input {
    fn open(file: &Path) -> anyhow::Result<Input> {
        let (lines, total): (Box<dyn BufRead>, _) = if file == Path::new("-") {
            (Box::new(std::io::stdin().lock()), None)
        } else {
            let opened = std::fs::File::open(file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let total = opened.metadata().ok().map(|meta| meta.len());
            (
                Box::new(std::io::BufReader::with_capacity(1 << 20, opened)),
                total,
            )
        };
        let progress = match (std::io::stderr().is_terminal(), total) {
            (true, Some(bytes)) => ProgressBar::new(bytes).with_style(
                ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            (true, None) => ProgressBar::new_spinner(),
            (false, _) => ProgressBar::hidden(),
        };
        Ok(Input {
            lines,
            progress,
            line: 0,
            bytes: 0,
        })
    }

    /// The next non-empty line and its number.
    fn next_line(&mut self) -> anyhow::Result<Option<(usize, Vec<u8>)>> {
        loop {
            let mut line = Vec::new();
            let read = self
                .lines
                .read_until(b'\n', &mut line)
                .context("cannot read the input")?;
            if read == 0 {
                return Ok(None);
            }
            self.line += 1;
            self.bytes += read as u64;
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if !line.is_empty() {
                return Ok(Some((self.line, line)));
            }
        }
    }

    fn report(&self, sent: u64) {
        self.progress.set_position(self.bytes);
        self.progress.set_message(format!("{sent} messages"));
    }
}

/// `uri` with its password, if any, replaced by `***`: fit for a terminal or a log.
fn redacted(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        _ => uri.to_owned(),
    }
}

fn rate(sent: u64, started: std::time::Instant) -> (f64, f64) {
    let seconds = started.elapsed().as_secs_f64();
    (seconds, sent as f64 / seconds.max(1e-9))
}

pub fn run(uri: &str, queue: &str, file: &Path) -> anyhow::Result<ExitCode> {
    let mut input = Input::open(file)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    runtime.block_on(async {
        let connection = Connection::connect(uri, ConnectionProperties::default())
            .await
            .with_context(|| format!("cannot connect to {}", redacted(uri)))?;
        let channel = connection
            .create_channel()
            .await
            .context("cannot open a channel")?;
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot declare queue {queue}"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("cannot enable publisher confirms")?;
        let started = std::time::Instant::now();
        let mut sent = 0u64;
        let mut confirms = Vec::with_capacity(WINDOW);
        while let Some((_, line)) = input.next_line()? {
            let properties = BasicProperties::default().with_delivery_mode(2);
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        &line,
                        properties,
                    )
                    .await?,
            );
            sent += 1;
            if confirms.len() >= WINDOW {
                await_confirms(&mut confirms).await?;
                input.report(sent);
            }
        }
        await_confirms(&mut confirms).await?;
        input.progress.finish_and_clear();
        connection.close(200, "done".into()).await.ok();
        let (seconds, per_second) = rate(sent, started);
        say!("published {sent} messages to {queue} in {seconds:.2} s ({per_second:.0} messages/s)");
        Ok(ExitCode::SUCCESS)
    })
}

async fn await_confirms(confirms: &mut Vec<lapin::PublisherConfirm>) -> anyhow::Result<()> {
    for confirm in confirms.drain(..) {
        let confirmation = confirm
            .await
            .context("the broker did not confirm a message")?;
        anyhow::ensure!(confirmation.is_ack(), "the broker refused a message (nack)");
    }
    Ok(())
}

/// How `--http` posts.
pub struct HttpOptions {
    /// Events per request.
    pub batch: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Bearer token, if any.
    pub token: Option<String>,
    /// For an https URL: PEM certificates to trust instead of the public roots.
    pub ca_cert: Option<std::path::PathBuf>,
}

/// A TLS client that trusts only the certificates in the PEM file `path`
/// (a daemon's self-signed certificate, or a private CA).
fn trusting(path: &Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let context = || format!("--ca-cert {}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).with_context(context)? {
        roots
            .add(cert.with_context(context)?)
            .with_context(context)?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "--ca-cert {}: no CERTIFICATE block in the file",
        path.display()
    );
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// One request's events: the body and the input line of each event.
struct Chunk {
    body: Vec<u8>,
    lines: Vec<usize>,
}

/// What the posters found.
#[derive(Default)]
struct Tally {
    accepted: u64,
    rejected: BTreeMap<String, u64>,
    shown: Vec<String>,
}

/// The `/v1/events` answer.
#[derive(serde::Deserialize)]
struct PushAnswer {
    accepted: u64,
    rejected: Vec<Rejection>,
}

#[derive(serde::Deserialize)]
struct Rejection {
    line: usize,
    reason: String,
    field: Option<String>,
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    chunk: &Chunk,
) -> anyhow::Result<PushAnswer> {
    let mut request = agent.post(url).set("Content-Type", "application/x-ndjson");
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let first = chunk.lines.first().copied().unwrap_or(0);
    match request.send_bytes(&chunk.body) {
        Ok(response) => response.into_json().with_context(|| {
            format!(
                "{url} answered lines from {first} with something other than the /v1/events answer"
            )
        }),
        Err(ureq::Error::Status(status, response)) => {
            let text = response.into_string().unwrap_or_default();
            let error = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|value| {
                    value
                        .get("error")
                        .and_then(|e| e.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or(text);
            anyhow::bail!("{url} refused lines from {first} with {status}: {error}")
        }
        Err(err) => {
            // ureq names the URL in its own text too: say it once.
            let text = err.to_string();
            let cause = text.strip_prefix(&format!("{url}: ")).unwrap_or(&text);
            anyhow::bail!("cannot post lines from {first} to {url}: {cause}")
        }
    }
}

pub fn run_http(base: &str, options: &HttpOptions, file: &Path) -> anyhow::Result<ExitCode> {
    let url = if base.trim_end_matches('/').ends_with("/v1/events") {
        base.to_owned()
    } else {
        format!("{}/v1/events", base.trim_end_matches('/'))
    };
    let mut agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(120));
    if let Some(path) = &options.ca_cert {
        agent = agent.tls_config(Arc::new(trusting(path)?));
    }
    let agent = agent.build();
    let mut input = Input::open(file)?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (send, receive) = mpsc::sync_channel::<Chunk>(options.concurrency);
    // Only the posters hold the receiver: once every one of them has stopped
    // (on an error), sending fails and reading stops instead of blocking.
    let receive = Arc::new(Mutex::new(receive));
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    let outcome = std::thread::scope(|scope| {
        let posters: Vec<_> = (0..options.concurrency)
            .map(|_| {
                let (agent, url, receive, tally) = (&agent, &url, Arc::clone(&receive), &tally);
                let token = options.token.as_deref();
                scope.spawn(move || -> anyhow::Result<()> {
                    loop {
                        let next = receive
                            .lock()
                            .map_err(|_| anyhow::anyhow!("a poster failed"))?
                            .recv();
                        let Ok(chunk) = next else { return Ok(()) };
                        let answer = post(agent, url, token, &chunk)?;
                        let mut tally = tally
                            .lock()
                            .map_err(|_| anyhow::anyhow!("a poster failed"))?;
                        tally.accepted += answer.accepted;
                        for rejection in answer.rejected {
                            let line = chunk
                                .lines
                                .get(rejection.line.wrapping_sub(1))
                                .copied()
                                .unwrap_or(0);
                            let reason = match rejection.field {
                                Some(field) => format!("{}: {field}", rejection.reason),
                                None => rejection.reason,
                            };
                            if tally.shown.len() < SHOWN_REJECTIONS {
                                tally.shown.push(format!("line {line}: {reason}"));
                            }
                            *tally.rejected.entry(reason).or_default() += 1;
                        }
                    }
                })
            })
            .collect();
        drop(receive);
        let mut reading = || -> anyhow::Result<()> {
            let mut chunk = Chunk {
                body: Vec::new(),
                lines: Vec::new(),
            };
            while let Some((number, line)) = input.next_line()? {
                chunk.body.extend_from_slice(&line);
                chunk.body.push(b'\n');
                chunk.lines.push(number);
                sent += 1;
                if chunk.lines.len() >= options.batch {
                    let full = std::mem::replace(
                        &mut chunk,
                        Chunk {
                            body: Vec::new(),
                            lines: Vec::new(),
                        },
                    );
                    if send.send(full).is_err() {
                        // Every poster stopped: their error says why.
                        return Ok(());
                    }
                    input.report(sent);
                }
            }
            if !chunk.lines.is_empty() {
                send.send(chunk).ok();
            }
            Ok(())
        };
        let read = reading();
        drop(send);
        // Join every poster; the first error, if any, says why posting stopped.
        let mut posted = Ok(());
        for poster in posters {
            let joined = poster
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a poster panicked")));
            posted = posted.and(joined);
        }
        read.and(posted)
    });
    input.progress.finish_and_clear();
    outcome?;
    let tally = tally
        .lock()
        .map_err(|_| anyhow::anyhow!("a poster failed"))?;
    let (seconds, per_second) = rate(sent, started);
    let rejected: u64 = tally.rejected.values().sum();
    say!(
        "posted {sent} events to {url} in {seconds:.2} s ({per_second:.0} events/s): {} accepted, {rejected} rejected",
        tally.accepted
    );
    for shown in &tally.shown {
        eprintln!("  rejected {shown}");
    }
    for (reason, count) in &tally.rejected {
        eprintln!("  {count} rejected as {reason}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(
            redacted("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redacted("amqps://user:p@ss@host/vhost?heartbeat=10"),
            "amqps://user:***@host/vhost?heartbeat=10"
        );
        assert_eq!(redacted("amqp://host:5672/%2f"), "amqp://host:5672/%2f");
        assert_eq!(redacted("amqp://user@host/"), "amqp://user@host/");
    }
}
