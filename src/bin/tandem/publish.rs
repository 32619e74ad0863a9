//! `tandem publish --uri URI --queue Q FILE|-`: sends a JSONL file, one
//! persistent message a line, with publisher confirms; a progress bar on a
//! terminal, and the final rate.

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::process::ExitCode;

/// Messages published before their confirms are awaited.
const WINDOW: usize = 2_000;

pub fn run(uri: &str, queue: &str, file: &Path) -> anyhow::Result<ExitCode> {
    let input: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let opened =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        Box::new(std::io::BufReader::with_capacity(1 << 20, opened))
    };
    let total = if file == Path::new("-") {
        None
    } else {
        std::fs::metadata(file).ok().map(|meta| meta.len())
    };
    let progress = match (std::io::stderr().is_terminal(), total) {
        (true, Some(bytes)) => ProgressBar::new(bytes).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        (true, None) => ProgressBar::new_spinner(),
        (false, _) => ProgressBar::hidden(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    runtime.block_on(async {
        let connection = Connection::connect(uri, ConnectionProperties::default())
            .await
            .with_context(|| format!("cannot connect to {uri}"))?;
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
        let (mut sent, mut bytes) = (0u64, 0u64);
        let mut confirms = Vec::with_capacity(WINDOW);
        for line in input.split(b'\n') {
            let line = line.context("cannot read the input")?;
            bytes += line.len() as u64 + 1;
            if line.is_empty() {
                continue;
            }
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
                progress.set_position(bytes);
                progress.set_message(format!("{sent} messages"));
            }
        }
        await_confirms(&mut confirms).await?;
        progress.finish_and_clear();
        connection.close(200, "done".into()).await.ok();
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "published {sent} messages to {queue} in {seconds:.2} s ({:.0} messages/s)",
            sent as f64 / seconds.max(1e-9)
        );
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
