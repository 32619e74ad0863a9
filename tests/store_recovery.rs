//! The master dataset survives crashes: a torn tail is cut back to the last
//! whole record, damage before the tail is reported with segment and offset,
//! sealed epochs and snapshots are durable, and `tandem inspect` tells which.

mod common;

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::process::Command;
use tandem::event::{Epoch, Seq};
use tandem::store::{
    self, DataDirLock, DataPaths, EpochIndex, LogPosition, MasterLog, NewRecord, SealedEpoch,
    scan_log, scan_segment,
};

const BIG: u64 = 1 << 30;

fn event(i: u64) -> Vec<u8> {
    // Records of varying length, so cuts fall at every kind of place.
    format!(
        r#"{{"order_id":"o-{i:09}","pad":"{}"}}"#,
        "x".repeat((i % 7) as usize * 11)
    )
    .into_bytes()
}

fn append(log: &mut MasterLog, range: std::ops::Range<u64>, epoch: u64) -> store::Appended {
    let raws: Vec<Vec<u8>> = range.clone().map(event).collect();
    log.append(raws.iter().zip(range).map(|(raw, i)| NewRecord {
        epoch: Epoch(epoch),
        ingest_ms: 1_000 + i as i64,
        event_ms: 2_000 + i as i64,
        id_hash: i + 1,
        raw,
    }))
    .expect("append")
}

/// Every record of the log: (seq, epoch, raw).
fn read_all(paths: &DataPaths) -> Vec<(u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for segment in store::list_segments(paths).expect("list") {
        let outcome = scan_segment(&segment, None, |header, raw| {
            out.push((header.seq.0, header.epoch.0, raw.to_vec()))
        })
        .expect("scan");
        assert_eq!(outcome.torn, None);
    }
    out
}

#[test]
fn a_cut_at_every_byte_keeps_exactly_the_whole_records_before_it() {
    let original = tempfile::tempdir().expect("tempdir");
    let paths = DataPaths::new(original.path());
    let (mut log, _) = MasterLog::open(&paths, BIG).expect("open");
    append(&mut log, 0..20, 1);
    let before_last = append(&mut log, 20..25, 1).end;
    append(&mut log, 25..28, 2);
    let full_len = log.end().offset;
    drop(log);
    let expected = read_all(&paths);
    assert_eq!(expected.len(), 28);

    // Where each record ends, from the record lengths.
    let mut boundaries = vec![store::SEGMENT_HEADER_BYTES];
    let mut size_sum = store::SEGMENT_HEADER_BYTES;
    for (_, _, raw) in &expected {
        size_sum += 12 + 40 + raw.len() as u64;
        boundaries.push(size_sum);
    }
    assert_eq!(size_sum, full_len);

    for cut in before_last.offset..full_len {
        let dir = tempfile::tempdir().expect("tempdir");
        common::copy_dir(original.path(), dir.path());
        let cut_paths = DataPaths::new(dir.path());
        OpenOptions::new()
            .write(true)
            .open(cut_paths.segment(0))
            .and_then(|file| file.set_len(cut))
            .expect("cut");
        let whole = boundaries.iter().filter(|end| **end <= cut).count() - 1;

        let (mut log, recovery) = MasterLog::open(&cut_paths, BIG).expect("reopen after a cut");
        assert_eq!(recovery.next_seq, Seq(whole as u64), "cut at {cut}");
        assert_eq!(recovery.torn_bytes, cut - boundaries[whole], "cut at {cut}");
        assert_eq!(read_all(&cut_paths), expected[..whole], "cut at {cut}");

        // Appends continue right after the last whole record.
        let appended = append(&mut log, 100..101, 3);
        assert_eq!(appended.first_seq, Seq(whole as u64));
        drop(log);
        let after = read_all(&cut_paths);
        assert_eq!(after.len(), whole + 1);
        assert_eq!(after[whole], (whole as u64, 3, event(100)));
    }
}

#[test]
fn zeros_after_the_last_record_are_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = DataPaths::new(dir.path());
    let (mut log, _) = MasterLog::open(&paths, BIG).expect("open");
    append(&mut log, 0..5, 1);
    drop(log);
    let file = OpenOptions::new()
        .append(true)
        .open(paths.segment(0))
        .expect("open segment");
    file.set_len(file.metadata().expect("stat").len() + 4096)
        .expect("extend with zeros");
    let (_, recovery) = MasterLog::open(&paths, BIG).expect("reopen");
    assert_eq!(recovery.next_seq, Seq(5));
    assert_eq!(recovery.torn_bytes, 4096);
}

fn flip_byte(path: &Path, offset: u64) {
    common::xor_byte(path, offset, 0x20);
}

#[test]
fn a_flipped_byte_in_an_older_record_is_reported_with_segment_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = DataPaths::new(dir.path());
    let (mut log, _) = MasterLog::open(&paths, BIG).expect("open");
    append(&mut log, 0..10, 1);
    drop(log);
    // The third record starts after the header and two records.
    let third =
        store::SEGMENT_HEADER_BYTES + (0..2).map(|i| 52 + event(i).len() as u64).sum::<u64>();
    for (what, at) in [
        ("payload", third + 60),
        ("length", third + 1),
        ("crc", third + 9),
    ] {
        let damaged = tempfile::tempdir().expect("tempdir");
        common::copy_dir(dir.path(), damaged.path());
        let damaged_paths = DataPaths::new(damaged.path());
        flip_byte(&damaged_paths.segment(0), at);
        let err = MasterLog::open(&damaged_paths, BIG)
            .expect_err(what)
            .to_string();
        assert!(err.contains("segment-0000000000.log"), "{what}: {err}");
        assert!(err.contains(&format!("at offset {third}")), "{what}: {err}");
    }
}

/// Twenty records in tiny segments, five in each (every batch rolls to a
/// new one); answers the log's end.
fn four_segments_of_five(paths: &DataPaths) -> LogPosition {
    let (mut log, _) = MasterLog::open(paths, 64).expect("open");
    for batch in 0..4 {
        append(&mut log, batch * 5..batch * 5 + 5, 1);
    }
    log.end()
}

#[test]
fn damage_in_a_sealed_segment_is_found_by_a_full_scan_and_by_inspect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = DataPaths::new(dir.path());
    let end = four_segments_of_five(&paths);
    assert_eq!(store::list_segments(&paths).expect("list").len(), 4);
    assert_eq!(scan_log(&paths, end, |_, _| {}).expect("scan"), 20);

    let inspect = |dir: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["inspect", "--data"])
            .arg(dir)
            .output()
            .expect("run inspect");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, report) = inspect(dir.path());
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("records  20"), "{report}");

    flip_byte(&paths.segment(1), store::SEGMENT_HEADER_BYTES + 70);
    // The newest segment is whole, so opening works; a full scan does not.
    MasterLog::open(&paths, 64).expect("open ignores older segments");
    let err = scan_log(&paths, end, |_, _| {})
        .expect_err("scan must fail")
        .to_string();
    assert!(err.contains("segment-0000000001.log at offset 16"), "{err}");
    let (code, report) = inspect(dir.path());
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("segment-0000000001.log")
            && report.contains("DAMAGED")
            && report.contains("offset 16"),
        "{report}"
    );
}

#[test]
fn a_scan_stops_at_a_sealed_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = DataPaths::new(dir.path());
    let (mut log, _) = MasterLog::open(&paths, 300).expect("open");
    append(&mut log, 0..3, 1);
    let sealed = append(&mut log, 3..6, 1).end;
    append(&mut log, 6..9, 2);
    let mut seen = Vec::new();
    scan_log(&paths, sealed, |header, _| seen.push(header.seq.0)).expect("scan");
    assert_eq!(seen, (0..6).collect::<Vec<_>>());
}

/// A batch run whose worker failed stops reading: the scan ends after the
/// record its reader broke on, in whichever segment, and reads nothing after.
#[test]
fn a_scan_from_a_position_stops_when_its_reader_breaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = DataPaths::new(dir.path());
    let end = four_segments_of_five(&paths);
    let mut seen = Vec::new();
    let read = store::scan_log_from(&paths, Seq(3), end, |header, _| {
        seen.push(header.seq.0);
        if header.seq.0 == 12 {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    })
    .expect("scan");
    assert_eq!(seen, (3..=12).collect::<Vec<_>>());
    // Read (and checked): the whole segments before the one it stopped in,
    // and that one up to the record it stopped on.
    assert_eq!(read, 13);
}

#[test]
fn sealed_epochs_are_durable_in_order_and_a_torn_entry_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = DataPaths::new(dir.path());
    let mut index = EpochIndex::open(&paths).expect("open");
    let seal = |epoch: u64, offset: u64| SealedEpoch {
        epoch: Epoch(epoch),
        end: LogPosition { segment: 0, offset },
        later_from: Seq(epoch * 5),
        next_seq: Seq(epoch * 10),
        sealed_at_ms: 1_700_000_000_000 + epoch as i64,
    };
    index.seal(seal(1, 100)).expect("seal 1");
    index.seal(seal(2, 200)).expect("seal 2");
    assert!(index.seal(seal(2, 300)).is_err(), "an epoch is sealed once");
    assert!(
        index.seal(seal(3, 50)).is_err(),
        "the log position never goes back"
    );
    drop(index);

    let path = paths.epochs();
    let len = fs::metadata(&path).expect("stat").len();
    OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|file| file.set_len(len + 20))
        .expect("torn entry");
    let mut index = EpochIndex::open(&paths).expect("reopen");
    assert_eq!(index.entries(), &[seal(1, 100), seal(2, 200)]);
    index.seal(seal(3, 300)).expect("seal after the cut");
    assert_eq!(store::read_epochs(&paths).expect("read").len(), 3);
}

#[test]
fn the_newest_two_snapshots_are_kept_and_a_damaged_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = DataPaths::new(dir.path());
    assert!(
        store::load_newest::<Vec<String>>(&paths)
            .expect("load")
            .is_none(),
        "no snapshot yet"
    );
    for epoch in 1..=3u64 {
        let data = vec![format!("state after epoch {epoch}")];
        store::write_snapshot(
            &paths,
            Epoch(epoch),
            epoch * 100,
            1_700_000_000_000,
            &data,
            2,
        )
        .expect("write");
    }
    let listed: Vec<Epoch> = store::list_snapshots(&paths)
        .expect("list")
        .into_iter()
        .map(|(epoch, _)| epoch)
        .collect();
    assert_eq!(listed, [Epoch(3), Epoch(2)]);

    let loaded = store::load_newest::<Vec<String>>(&paths)
        .expect("load")
        .expect("a snapshot");
    assert_eq!(loaded.meta.epoch, Epoch(3));
    assert_eq!(loaded.meta.records, 300);
    assert_eq!(loaded.data, ["state after epoch 3"]);
    assert!(loaded.refused.is_empty());

    // A flipped payload byte: refused with the file named, and epoch 2 is used.
    let newest = paths.snapshot(Epoch(3));
    let len = fs::metadata(&newest).expect("stat").len();
    flip_byte(&newest, len - 3);
    let loaded = store::load_newest::<Vec<String>>(&paths)
        .expect("load")
        .expect("the older snapshot");
    assert_eq!(loaded.meta.epoch, Epoch(2));
    assert_eq!(loaded.refused.len(), 1);
    let reason = loaded.refused[0].to_string();
    assert!(
        reason.contains("snapshot-00000000000000000003.snap") && reason.contains("crc mismatch"),
        "{reason}"
    );

    // A truncated one is refused too.
    OpenOptions::new()
        .write(true)
        .open(paths.snapshot(Epoch(2)))
        .and_then(|file| file.set_len(30))
        .expect("truncate");
    assert!(
        store::load_newest::<Vec<String>>(&paths)
            .expect("load")
            .is_none()
    );
    assert!(
        store::verify_snapshot(&paths.snapshot(Epoch(2)))
            .expect_err("short")
            .to_string()
            .contains("shorter than its header")
    );
}

#[test]
fn one_process_holds_a_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = DataPaths::new(dir.path().join("data"));
    let lock = DataDirLock::acquire(&paths).expect("first lock");
    let err = DataDirLock::acquire(&paths)
        .expect_err("second lock")
        .to_string();
    assert!(err.contains("in use by another tandem process"), "{err}");
    drop(lock);
    DataDirLock::acquire(&paths).expect("free again");
}
