//! The master dataset as Parquet: `tandem export`.
//!
//! Each sealed epoch becomes one file, `OUT/epoch=E/part-00000.parquet`
//! (Hive-style partitions, which DuckDB, Spark and Trino read as a column),
//! written under a temporary name, fsynced and renamed, so a reader never
//! sees half a file; one scan writes the epochs in turn, each finished as
//! soon as the scan passes its seal's end. Epoch E's file holds the log
//! between the seal before it and its own: the files up to E hold exactly
//! the records a batch run of epoch E reads (every record of an epoch <= E,
//! and the few of later epochs written before E's seal, which take part in
//! the first-copy rule). An export is incremental: an epoch whose file is
//! whole (its footer reads and holds the row count and the columns written
//! into its metadata) is skipped; any other is written again.
//!
//! One row per record, in log order, with the record as tandem stored it
//! (`seq`, `epoch` (the file's), `stamped_epoch` (the record's own),
//! `ingest_ms`, `event_ms`, `id_hash`, `raw`) and every field the views
//! use, read by the same parser a batch run uses: the id and key fields as
//! tandem's canonical text, number fields as DOUBLE, for each distinct
//! field `<field>__xxh3`, the 64-bit hash tandem's distinct sketches are
//! updated with (so an engine that sketches that column with DataSketches'
//! HLL builds the registers tandem builds), and for each quantile field
//! `<field>__bin`, the DDSketch bin tandem puts the value in. A record the
//! config's rules refuse has `rejected` set to the reason and its field
//! columns null: the batch layer never counts it. The batch layer's other
//! rule, the first copy of an id in log order, is `id_hash` and `seq`.

use crate::Config;
use crate::aggregate::{Agg, ViewSpec, quantile_bin};
use crate::event::{Epoch, Need, ParsedEvent, Schema, Seq, hash_text};
use crate::store::{self, DataPaths, RecordHeader, SealedEpoch};
use parquet::basic::{Compression, LogicalType, Repetition, Type as PhysicalType, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, DataType, DoubleType, Int32Type, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::{SerializedFileWriter, SerializedRowGroupWriter};
use parquet::schema::types::Type;
use std::fs::{self, File};
use std::io::BufWriter;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The key of the file metadata entry holding the rows written.
const ROWS_KEY: &str = "tandem.rows";
/// The key of the file metadata entry holding the column names, comma
/// separated: a file of other columns (the views changed) is written again.
const COLUMNS_KEY: &str = "tandem.columns";
/// The key of the file metadata entry holding the fingerprint of the rules
/// the rows were read with (the event schema and this layout): a file read
/// under other rules (another time field, other checks) is written again.
const RULES_KEY: &str = "tandem.rules";
/// The layout of the files: a change makes every file be written again.
const LAYOUT: u32 = 2;
/// Rows buffered before they are written as one row group.
const ROW_GROUP_ROWS: usize = 131_072;
/// The columns every export has, before the fields'.
pub const RECORD_COLUMNS: [&str; 8] = [
    "seq",
    "epoch",
    "stamped_epoch",
    "ingest_ms",
    "event_ms",
    "id_hash",
    "raw",
    "rejected",
];

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The master dataset or the epoch index cannot be read (corruption is
    /// named with its segment and offset), or a file or directory of the
    /// export cannot be written.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Writing Parquet failed.
    #[error("cannot write {}: {source}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A field the views use has the name of another column of the export.
    #[error(
        "the field {field:?} would be exported under the name of another column (the record's: {}; a field's `<field>__text`, `<field>__xxh3` and `<field>__bin`): rename it in the events, or leave it out of the views",
        RECORD_COLUMNS.join(", ")
    )]
    ColumnClash {
        /// The field.
        field: String,
    },
    /// The export was told to stop (the daemon is stopping); the epochs it
    /// was writing are left to the next export.
    #[error("stopped before it finished")]
    Stopped,
    /// An epoch's file is missing, cut, of other columns or event rules, or
    /// of another record count than its stretch of the log.
    #[error("{}: not the whole export of its epoch under this config (missing, cut, or written under other columns or event rules): export again", path.display())]
    NotWhole {
        /// The file.
        path: PathBuf,
    },
    /// `--upto-epoch` names an epoch that is not sealed.
    #[error("epoch {asked} is not sealed (the newest sealed epoch is {newest})")]
    NotSealed {
        /// The epoch asked for.
        asked: Epoch,
        /// The newest sealed epoch, if any.
        newest: String,
    },
}

/// What an export did, per epoch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Exported {
    /// Epochs written, with their rows.
    pub written: Vec<(Epoch, u64)>,
    /// Epochs whose file was whole already, with their rows.
    pub skipped: Vec<(Epoch, u64)>,
}

/// The file of epoch `epoch` under `out`.
pub fn epoch_file(out: &Path, epoch: Epoch) -> PathBuf {
    out.join(format!("epoch={}", epoch.0))
        .join("part-00000.parquet")
}

/// Exports every sealed epoch up to `upto` (every sealed one when `None`)
/// of `config`'s data_dir to `out`, skipping those already exported whole.
/// Reads only sealed records, so it can run beside the daemon.
///
/// # Errors
/// See [`ExportError`]; epochs written before a failure stay written.
pub fn export(config: &Config, out: &Path, upto: Option<Epoch>) -> Result<Exported, ExportError> {
    export_until(config, out, upto, None, &AtomicBool::new(false))
}

/// As [`export`], taking the epochs up to `after` as exported without
/// reading their files (a caller that exported them already), and stopping
/// with [`ExportError::Stopped`] once `stop` is set (the files it was
/// writing are removed; those it finished stay).
///
/// # Errors
/// See [`ExportError`].
pub fn export_until(
    config: &Config,
    out: &Path,
    upto: Option<Epoch>,
    after: Option<Epoch>,
    stop: &AtomicBool,
) -> Result<Exported, ExportError> {
    let paths = DataPaths::new(&config.data_dir);
    let epochs = store::read_epochs(&paths)?;
    if let Some(asked) = upto
        && !epochs.iter().any(|sealed| sealed.epoch == asked)
    {
        return Err(ExportError::NotSealed {
            asked,
            newest: epochs
                .last()
                .map_or("none".to_owned(), |sealed| sealed.epoch.to_string()),
        });
    }
    let columns = Columns::of(&config.schema, &config.views)?;
    let mut exported = Exported::default();
    // Indexes into `epochs` of the epochs to write.
    let mut todo = Vec::new();
    for (at, sealed) in epochs.iter().enumerate() {
        if upto.is_some_and(|upto| sealed.epoch > upto) {
            break;
        }
        if after.is_some_and(|after| sealed.epoch <= after) {
            continue;
        }
        match rows_of_whole_file(out, &epochs, at, &columns) {
            Some(rows) => exported.skipped.push((sealed.epoch, rows)),
            None => todo.push(at),
        }
    }
    let (Some(&first), Some(&last)) = (todo.first(), todo.last()) else {
        return Ok(exported);
    };
    // The first file to write starts where the seal before it ended.
    let from = first
        .checked_sub(1)
        .map_or(Seq(0), |before| epochs[before].next_seq);
    let mut writing = Writing {
        config,
        columns: &columns,
        out,
        epochs: &epochs,
        todo: &todo,
        next: 0,
        open: Vec::new(),
        exported,
    };
    let mut failed = None;
    let scanned = store::scan_log_from(&paths, from, epochs[last].end, |header, raw| {
        let pushed = if stop.load(Ordering::Relaxed) {
            Err(ExportError::Stopped)
        } else {
            writing.push(header, raw)
        };
        match pushed {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                failed = Some(err);
                ControlFlow::Break(())
            }
        }
    });
    let finished = match scanned.map_err(ExportError::from) {
        Ok(_) => failed.map_or_else(|| writing.finish_upto(u64::MAX), Err),
        Err(err) => Err(err),
    };
    if let Err(err) = finished {
        for (_, file) in writing.open.drain(..) {
            file.abandon();
        }
        return Err(err);
    }
    Ok(writing.exported)
}

/// An export's scan: the files of the epochs to write, each opened at its
/// first record and finished (renamed into place) once the scan is past its
/// seal's end, so few are open at once whatever the number of epochs.
struct Writing<'a> {
    config: &'a Config,
    columns: &'a Columns,
    out: &'a Path,
    epochs: &'a [SealedEpoch],
    /// Indexes into `epochs` of the epochs to write, ascending.
    todo: &'a [usize],
    /// The first of `todo` not finished yet.
    next: usize,
    /// Files open, by their index into `todo`.
    open: Vec<(usize, EpochFile)>,
    exported: Exported,
}

impl Writing<'_> {
    /// Adds one record to the file of the first seal after it in the log.
    fn push(&mut self, header: &RecordHeader, raw: &[u8]) -> Result<(), ExportError> {
        self.finish_upto(header.seq.0)?;
        let covering = self
            .epochs
            .partition_point(|sealed| sealed.next_seq <= header.seq);
        let Ok(at) = self.todo.binary_search(&covering) else {
            return Ok(());
        };
        let position = match self.open.iter().position(|(open, _)| *open == at) {
            Some(position) => position,
            None => {
                let epoch = self.epochs[covering].epoch;
                let file = EpochFile::create(self.out, epoch, self.columns)?;
                self.open.push((at, file));
                self.open.len() - 1
            }
        };
        self.open[position]
            .1
            .push(self.config, self.columns, header, raw)
    }

    /// Finishes, in order, every epoch to write whose records all lie before
    /// `seq` (an epoch without records gets a file without rows).
    fn finish_upto(&mut self, seq: u64) -> Result<(), ExportError> {
        while let Some(&at) = self.todo.get(self.next) {
            let sealed = self.epochs[at];
            if sealed.next_seq.0 > seq {
                break;
            }
            let file = match self.open.iter().position(|(open, _)| *open == self.next) {
                Some(position) => self.open.swap_remove(position).1,
                None => EpochFile::create(self.out, sealed.epoch, self.columns)?,
            };
            let rows = file.finish(self.columns)?;
            self.exported.written.push((sealed.epoch, rows));
            self.next += 1;
        }
        Ok(())
    }
}

/// Checks that `out` holds the export of every sealed epoch up to `upto`,
/// whole and written under `config`'s rules: what an engine that read those
/// files computed is what the batch layer computes.
///
/// # Errors
/// The epochs cannot be read, `upto` is not sealed, or an epoch's file is
/// missing, cut, of other columns or rules, or of another record count
/// ([`ExportError::NotWhole`]).
pub fn check_export(config: &Config, out: &Path, upto: Epoch) -> Result<(), ExportError> {
    let epochs = store::read_epochs(&DataPaths::new(&config.data_dir))?;
    let columns = Columns::of(&config.schema, &config.views)?;
    let mut found = false;
    for (at, sealed) in epochs.iter().enumerate() {
        if sealed.epoch > upto {
            break;
        }
        found |= sealed.epoch == upto;
        if rows_of_whole_file(out, &epochs, at, &columns).is_none() {
            return Err(ExportError::NotWhole {
                path: epoch_file(out, sealed.epoch),
            });
        }
    }
    if !found {
        return Err(ExportError::NotSealed {
            asked: upto,
            newest: epochs
                .last()
                .map_or("none".to_owned(), |sealed| sealed.epoch.to_string()),
        });
    }
    Ok(())
}

/// The rows of the file of `epochs[at]` under `out` when it is whole: its
/// footer reads, holds the row count, the columns and the rules written
/// into its metadata, and as many rows as the log holds between the seal
/// before and its own.
fn rows_of_whole_file(
    out: &Path,
    epochs: &[SealedEpoch],
    at: usize,
    columns: &Columns,
) -> Option<u64> {
    let sealed = epochs.get(at)?;
    let from = at
        .checked_sub(1)
        .map_or(0, |before| epochs[before].next_seq.0);
    let records = sealed.next_seq.0.checked_sub(from)?;
    let path = epoch_file(out, sealed.epoch);
    let reader = SerializedFileReader::try_from(path.as_path()).ok()?;
    let meta = reader.metadata().file_metadata();
    let said = |key: &str| {
        meta.key_value_metadata()?
            .iter()
            .find(|kv| kv.key == key)?
            .value
            .clone()
    };
    let promised = said(ROWS_KEY)?.parse::<u64>().ok()?;
    (said(COLUMNS_KEY)? == columns.names.join(",")
        && said(RULES_KEY)? == columns.rules
        && promised == records
        && u64::try_from(meta.num_rows()).ok()? == promised)
        .then_some(promised)
}

/// The column a field's canonical text is exported as: its name, or
/// `<field>__text` for a field also read as a number (whose number has the
/// name).
pub fn text_column(field: &str, number: bool) -> String {
    if number {
        format!("{field}__text")
    } else {
        field.to_owned()
    }
}

/// The field columns: per schema slot, what is written of it.
struct Columns {
    schema: Arc<Type>,
    /// The fingerprint of the event rules the rows are read with.
    rules: String,
    /// Every column's name, in order.
    names: Vec<String>,
    fields: Vec<FieldColumns>,
}

/// What one field of the schema is exported as.
struct FieldColumns {
    slot: usize,
    /// Its canonical text (id, key and distinct fields).
    text: bool,
    /// Its number (number fields).
    number: bool,
    /// Its DDSketch bin (quantile fields).
    bin: bool,
    /// The hash of its text that distinct sketches take.
    hash: bool,
}

/// Checks that the fields `views` use give an export whose columns all have
/// names of their own (a field named like a record column, or like another
/// field's `__text` or `__xxh3` column, would not).
///
/// # Errors
/// [`ExportError::ColumnClash`], naming the field.
pub fn check_columns(schema: &Schema, views: &[Arc<ViewSpec>]) -> Result<(), ExportError> {
    Columns::of(schema, views).map(drop)
}

impl Columns {
    fn of(schema: &Schema, views: &[Arc<ViewSpec>]) -> Result<Columns, ExportError> {
        let rules = format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(format!("{schema:?}; layout {LAYOUT}").as_bytes())
        );
        let slots_of = |wanted: fn(&Agg) -> bool| -> Vec<usize> {
            views
                .iter()
                .flat_map(|view| &view.metrics)
                .filter(|metric| wanted(&metric.agg))
                .filter_map(|metric| metric.slot)
                .collect()
        };
        let distinct = slots_of(|agg| matches!(agg, Agg::Distinct));
        let quantile = slots_of(|agg| matches!(agg, Agg::Quantile { .. }));
        let mut names: Vec<String> = RECORD_COLUMNS
            .iter()
            .map(|name| (*name).to_owned())
            .collect();
        let mut types = vec![
            (PhysicalType::INT64, Repetition::REQUIRED, None),
            (PhysicalType::INT64, Repetition::REQUIRED, None),
            (PhysicalType::INT64, Repetition::REQUIRED, None),
            (PhysicalType::INT64, Repetition::REQUIRED, None),
            (PhysicalType::INT64, Repetition::REQUIRED, None),
            (PhysicalType::INT64, Repetition::REQUIRED, None),
            (
                PhysicalType::BYTE_ARRAY,
                Repetition::REQUIRED,
                Some(LogicalType::String),
            ),
            (
                PhysicalType::BYTE_ARRAY,
                Repetition::OPTIONAL,
                Some(LogicalType::String),
            ),
        ];
        let mut fields = Vec::new();
        for (slot, field) in schema.fields().iter().enumerate() {
            let column = FieldColumns {
                slot,
                text: field.text,
                number: field.need == Need::Number,
                hash: distinct.contains(&slot),
                bin: quantile.contains(&slot),
            };
            let mut add = |name: String, physical, logical| {
                if names.contains(&name) {
                    return Err(ExportError::ColumnClash {
                        field: field.name.clone(),
                    });
                }
                names.push(name);
                types.push((physical, Repetition::OPTIONAL, logical));
                Ok(())
            };
            // A field read both ways (a number also counted distinct) is
            // exported as its number, and its text under `<field>__text`.
            if column.number {
                add(field.name.clone(), PhysicalType::DOUBLE, None)?;
            }
            if column.text {
                let name = text_column(&field.name, column.number);
                add(name, PhysicalType::BYTE_ARRAY, Some(LogicalType::String))?;
            }
            if column.hash {
                add(format!("{}__xxh3", field.name), PhysicalType::INT64, None)?;
            }
            if column.bin {
                add(format!("{}__bin", field.name), PhysicalType::INT32, None)?;
            }
            fields.push(column);
        }
        let schema_error = |source| ExportError::Parquet {
            path: PathBuf::from("<schema>"),
            source,
        };
        let types = names
            .iter()
            .zip(types)
            .map(|(name, (physical, repetition, logical))| {
                Type::primitive_type_builder(name, physical)
                    .with_repetition(repetition)
                    .with_logical_type(logical)
                    .build()
                    .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(schema_error)?;
        let schema = Type::group_type_builder("tandem_record")
            .with_fields(types)
            .build()
            .map_err(schema_error)?;
        Ok(Columns {
            rules,
            schema: Arc::new(schema),
            names,
            fields,
        })
    }
}

/// One epoch's file being written: its rows buffered by column, written a
/// row group at a time.
struct EpochFile {
    epoch: Epoch,
    path: PathBuf,
    tmp: PathBuf,
    writer: SerializedFileWriter<BufWriter<File>>,
    rows: u64,
    buffer: Buffer,
}

/// Buffered rows, one vector per column (optional columns: the values
/// present and a definition level per row).
#[derive(Default)]
struct Buffer {
    seq: Vec<i64>,
    epoch: Vec<i64>,
    stamped_epoch: Vec<i64>,
    ingest_ms: Vec<i64>,
    event_ms: Vec<i64>,
    id_hash: Vec<i64>,
    raw: Vec<ByteArray>,
    rejected: (Vec<ByteArray>, Vec<i16>),
    /// Per field, in schema order: numbers, texts, hashes, bins.
    numbers: Vec<(Vec<f64>, Vec<i16>)>,
    texts: Vec<(Vec<ByteArray>, Vec<i16>)>,
    hashes: Vec<(Vec<i64>, Vec<i16>)>,
    bins: Vec<(Vec<i32>, Vec<i16>)>,
}

impl EpochFile {
    fn create(out: &Path, epoch: Epoch, columns: &Columns) -> Result<EpochFile, ExportError> {
        let path = epoch_file(out, epoch);
        let dir = path.parent().unwrap_or(out).to_owned();
        fs::create_dir_all(&dir).map_err(|source| store::Error::io("create", &dir, source))?;
        // Another exporter (the CLI beside the daemon) writes a name of its own.
        let tmp = path.with_extension(format!("parquet.{}.tmp", std::process::id()));
        let file = File::create(&tmp).map_err(|source| store::Error::io("create", &tmp, source))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_created_by(format!("tandem {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = SerializedFileWriter::new(
            BufWriter::with_capacity(1 << 20, file),
            Arc::clone(&columns.schema),
            Arc::new(properties),
        )
        .map_err(|source| ExportError::Parquet {
            path: tmp.clone(),
            source,
        })?;
        Ok(EpochFile {
            epoch,
            path,
            tmp,
            writer,
            rows: 0,
            buffer: Buffer::new(columns),
        })
    }

    /// Adds one record, parsed as a batch run parses it.
    fn push(
        &mut self,
        config: &Config,
        columns: &Columns,
        header: &RecordHeader,
        raw: &[u8],
    ) -> Result<(), ExportError> {
        let parsed = config.schema.parse(raw, header.ingest_ms);
        let buffer = &mut self.buffer;
        buffer.seq.push(header.seq.0 as i64);
        buffer.epoch.push(self.epoch.0 as i64);
        buffer.stamped_epoch.push(header.epoch.0 as i64);
        buffer.ingest_ms.push(header.ingest_ms);
        // The time the views bucket the event by, as this config reads it.
        buffer.event_ms.push(
            parsed
                .as_ref()
                .map_or(header.event_ms, |event| event.event_ms),
        );
        buffer.id_hash.push(header.id_hash as i64);
        buffer.raw.push(ByteArray::from(
            String::from_utf8_lossy(raw).as_bytes().to_vec(),
        ));
        let event: Option<&ParsedEvent> = match &parsed {
            Ok(event) => {
                buffer.rejected.1.push(0);
                Some(event)
            }
            Err(reject) => {
                buffer
                    .rejected
                    .0
                    .push(ByteArray::from(config.schema.describe(reject).as_str()));
                buffer.rejected.1.push(1);
                None
            }
        };
        for (at, field) in columns.fields.iter().enumerate() {
            let text = event.map(|event| event.text(field.slot));
            if field.number {
                push_optional(
                    &mut buffer.numbers[at],
                    event.map(|event| event.number(field.slot)),
                );
            }
            if field.text {
                push_optional(&mut buffer.texts[at], text.map(ByteArray::from));
            }
            if field.hash {
                push_optional(
                    &mut buffer.hashes[at],
                    text.map(|text| hash_text(text) as i64),
                );
            }
            if field.bin {
                push_optional(
                    &mut buffer.bins[at],
                    event.and_then(|event| quantile_bin(event.number(field.slot))),
                );
            }
        }
        self.rows += 1;
        if buffer.seq.len() >= ROW_GROUP_ROWS {
            self.flush(columns)?;
        }
        Ok(())
    }

    /// Writes the buffered rows as one row group.
    fn flush(&mut self, columns: &Columns) -> Result<(), ExportError> {
        if self.buffer.seq.is_empty() {
            return Ok(());
        }
        let tmp = self.tmp.clone();
        let parquet = |source| ExportError::Parquet {
            path: tmp.clone(),
            source,
        };
        let buffer = std::mem::replace(&mut self.buffer, Buffer::new(columns));
        let mut group = self.writer.next_row_group().map_err(parquet)?;
        let mut write = || -> parquet::errors::Result<()> {
            for values in [
                &buffer.seq,
                &buffer.epoch,
                &buffer.stamped_epoch,
                &buffer.ingest_ms,
                &buffer.event_ms,
                &buffer.id_hash,
            ] {
                write_column::<Int64Type>(&mut group, values, None)?;
            }
            write_column::<ByteArrayType>(&mut group, &buffer.raw, None)?;
            let (values, levels) = &buffer.rejected;
            write_column::<ByteArrayType>(&mut group, values, Some(levels))?;
            for (at, field) in columns.fields.iter().enumerate() {
                if field.number {
                    let (values, levels) = &buffer.numbers[at];
                    write_column::<DoubleType>(&mut group, values, Some(levels))?;
                }
                if field.text {
                    let (values, levels) = &buffer.texts[at];
                    write_column::<ByteArrayType>(&mut group, values, Some(levels))?;
                }
                if field.hash {
                    let (values, levels) = &buffer.hashes[at];
                    write_column::<Int64Type>(&mut group, values, Some(levels))?;
                }
                if field.bin {
                    let (values, levels) = &buffer.bins[at];
                    write_column::<Int32Type>(&mut group, values, Some(levels))?;
                }
            }
            Ok(())
        };
        write().map_err(parquet)?;
        group.close().map_err(parquet)?;
        Ok(())
    }

    /// Removes the temporary file of an export that did not finish.
    fn abandon(self) {
        let tmp = self.tmp.clone();
        drop(self.writer);
        if let Err(err) = fs::remove_file(&tmp) {
            tracing::warn!(file = %tmp.display(), error = %err, "cannot remove an unfinished export file");
        }
    }

    /// Writes what is buffered and the footer (with the rows written in its
    /// metadata), fsyncs the file, renames it to its name and fsyncs its
    /// directory; answers the rows.
    fn finish(mut self, columns: &Columns) -> Result<u64, ExportError> {
        self.flush(columns)?;
        self.writer
            .append_key_value_metadata(KeyValue::new(ROWS_KEY.to_owned(), self.rows.to_string()));
        self.writer.append_key_value_metadata(KeyValue::new(
            COLUMNS_KEY.to_owned(),
            columns.names.join(","),
        ));
        self.writer
            .append_key_value_metadata(KeyValue::new(RULES_KEY.to_owned(), columns.rules.clone()));
        let tmp = self.tmp;
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| ExportError::Store(store::Error::io(op, &path, source))
        };
        let file = self
            .writer
            .into_inner()
            .map_err(|source| ExportError::Parquet {
                path: tmp.clone(),
                source,
            })?
            .into_inner()
            .map_err(|err| io("write", &tmp)(err.into_error()))?;
        file.sync_all().map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, &self.path).map_err(io("rename", &tmp))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io("fsync", dir))?;
        }
        Ok(self.rows)
    }
}

impl Buffer {
    fn new(columns: &Columns) -> Buffer {
        let n = columns.fields.len();
        Buffer {
            numbers: (0..n).map(|_| Default::default()).collect(),
            texts: (0..n).map(|_| Default::default()).collect(),
            hashes: (0..n).map(|_| Default::default()).collect(),
            bins: (0..n).map(|_| Default::default()).collect(),
            ..Buffer::default()
        }
    }
}

/// Writes the next column of a row group.
fn write_column<T: DataType>(
    group: &mut SerializedRowGroupWriter<'_, BufWriter<File>>,
    values: &[T::T],
    levels: Option<&[i16]>,
) -> parquet::errors::Result<()> {
    let mut column = group.next_column()?.ok_or_else(|| {
        parquet::errors::ParquetError::General("more columns than the schema has".into())
    })?;
    column.typed::<T>().write_batch(values, levels, None)?;
    column.close()
}

/// Appends an optional value: the value when present, and its definition
/// level (1 present, 0 null).
fn push_optional<T>((values, levels): &mut (Vec<T>, Vec<i16>), value: Option<T>) {
    match value {
        Some(value) => {
            values.push(value);
            levels.push(1);
        }
        None => levels.push(0),
    }
}
