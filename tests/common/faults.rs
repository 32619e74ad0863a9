//! Faults the tests apply from outside: the broker's app stopped, a
//! connection closed by the broker, a small disk that can be filled; and a
//! producer that goes on publishing through them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Runs `rabbitmqctl` with `args`; fails the test if it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run rabbitmqctl {args:?}: {err}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The broker's app stopped; started again when dropped, even if the test fails.
pub struct Outage;

impl Outage {
    pub fn begin() -> Outage {
        rabbitmqctl(&["stop_app"]);
        Outage
    }

    pub fn end(self) {
        drop(self);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    }
}

/// A tmpfs of `mib` MiB mounted at a path; unmounted when dropped.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    /// Mounts it; if it cannot (not root, no mount) the test fails, or skips
    /// with `TANDEM_SKIP_SERVICES=1`.
    pub fn mount(at: &Path, mib: u32) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(SmallDisk(at.to_owned())),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(err) => err.to_string(),
                };
                super::missing("a small tmpfs (mount needs root)", why.trim());
                None
            }
        }
    }

    /// Fills the disk with a ballast file until a write fails for lack of space.
    pub fn fill(&self) -> PathBuf {
        let path = self.0.join("ballast");
        let mut file = std::fs::File::create(&path).expect("ballast");
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if let Err(err) = file.write_all(&chunk) {
                assert_eq!(err.raw_os_error(), Some(28), "ENOSPC, got {err}");
                return path;
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status()
            .ok();
    }
}

/// The pid of the broker connection named `name`.
pub fn connection_pid(name: &str) -> Option<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "--no-table-headers",
            "--quiet",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|line| line.contains(name))
        .and_then(|line| line.split('\t').next())
        .map(str::to_owned)
}

/// Publishes `lines` to `queue` at `rate` a second, in batches with
/// publisher confirms; a batch not confirmed (the broker stopped, the
/// connection closed) is sent again whole on a new connection, so every line
/// before `published` is in the queue at least once, and no line after it.
pub struct Producer {
    stop: Arc<AtomicBool>,
    published: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

const PRODUCER_BATCH: usize = 50;

impl Producer {
    pub fn start(queue: String, lines: Arc<Vec<Vec<u8>>>, rate: u64) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicUsize::new(0));
        let (stopping, done) = (Arc::clone(&stop), Arc::clone(&published));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(produce(&queue, &lines, rate, &stopping, &done));
        });
        Producer {
            stop,
            published,
            thread,
        }
    }

    /// Lines published (confirmed) so far.
    pub fn published(&self) -> usize {
        self.published.load(Ordering::Acquire)
    }

    /// Stops after the batch in flight is confirmed; answers how many lines
    /// were published.
    pub fn finish(self) -> usize {
        self.stop.store(true, Ordering::Release);
        super::poll_until(
            Duration::from_secs(120),
            "the producer's last batch confirmed",
            || {
                if self.thread.is_finished() {
                    Ok(())
                } else {
                    Err("publishing")
                }
            },
        );
        self.thread.join().expect("the producer panicked");
        self.published.load(Ordering::Acquire)
    }
}

async fn produce(
    queue: &str,
    lines: &[Vec<u8>],
    rate: u64,
    stop: &AtomicBool,
    published: &AtomicUsize,
) {
    let started = Instant::now();
    let mut next = 0;
    // A batch sent is sent again until confirmed, even once told to stop:
    // no line at or after `published` reaches the queue.
    let mut unconfirmed = false;
    'connect: while next < lines.len() && (unconfirmed || !stop.load(Ordering::Acquire)) {
        let Ok((_connection, channel)) = super::confirming_channel(queue).await else {
            // A backoff while the broker is away.
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        while next < lines.len() && (unconfirmed || !stop.load(Ordering::Acquire)) {
            let batch = &lines[next..(next + PRODUCER_BATCH).min(lines.len())];
            unconfirmed = true;
            let mut confirms = Vec::with_capacity(batch.len());
            for line in batch {
                match super::publish_persistent(&channel, queue, line).await {
                    Ok(confirm) => confirms.push(confirm),
                    Err(_) => continue 'connect,
                }
            }
            for confirm in confirms {
                match confirm.await {
                    Ok(confirmation) if confirmation.is_ack() => {}
                    _ => continue 'connect,
                }
            }
            next += batch.len();
            unconfirmed = false;
            published.store(next, Ordering::Release);
            // The pace (a timer): line `next` is due at next / rate seconds.
            let due = Duration::from_secs_f64(next as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
    }
}
