//! Write-ahead log: round trips, segments, preallocation, truncation, release, recovery from torn
//! tails (appended and preallocated) and damage, repair, group commit, and a committed fixture that
//! pins the on-disk format.

use std::fs;
use std::path::{Path, PathBuf};

use mini_etcd::wal::{repair, SnapshotMark, Wal, WalContents, WalOptions};
use mini_etcd::Error;
use raft::eraftpb::{ConfState, Entry, HardState};

const META: &[u8] = b"node=1;cluster=7";

fn small() -> WalOptions {
    WalOptions {
        segment_size: 512,
        ..WalOptions::default()
    }
}

fn big() -> WalOptions {
    WalOptions::default()
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("put key{index} value{index}-t{term}")
            .into_bytes()
            .into(),
        ..Default::default()
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn mark(index: u64, term: u64) -> SnapshotMark {
    SnapshotMark {
        index,
        term,
        conf_state: ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        },
    }
}

fn indexes(c: &WalContents) -> Vec<(u64, u64)> {
    c.entries.iter().map(|e| (e.index, e.term)).collect()
}

/// Segment files of `dir`, sorted by name (= by sequence).
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

/// Start offsets of the records in a segment, walking the documented header format up to the end of
/// the file or an all-zero header (unused, preallocated space).
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= bytes.len() && bytes[off..off + 16].iter().any(|&b| b != 0) {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        let pad = bytes[off + 5] as usize;
        if off + 16 + len + pad > bytes.len() {
            break;
        }
        out.push(off);
        off += 16 + len + pad;
    }
    out
}

/// End of the last record of a segment: its logical size, whatever space is preallocated after it.
fn logical_end(bytes: &[u8]) -> usize {
    let last = *record_offsets(bytes).last().unwrap();
    let len = u32::from_le_bytes(bytes[last..last + 4].try_into().unwrap()) as usize;
    last + 16 + len + bytes[last + 5] as usize
}

/// Asserts that `seg` holds at least `end` bytes and that everything after `end` is zero.
fn assert_zero_after(seg: &Path, end: u64) {
    let bytes = fs::read(seg).unwrap();
    assert!(
        bytes.len() as u64 >= end,
        "{} is shorter than {end}",
        seg.display()
    );
    assert!(
        bytes[end as usize..].iter().all(|&b| b == 0),
        "non-zero bytes after {end} in {}",
        seg.display()
    );
}

fn corrupt_text(err: Error) -> String {
    match err {
        Error::Corrupt(text) => text,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn round_trip_entries_hard_state_and_snapshot_mark() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    assert!(!Wal::exists(&dir));
    let mut wal = Wal::create(&dir, META, big()).unwrap();
    assert!(Wal::exists(&dir));
    wal.save_snapshot(&mark(0, 0)).unwrap();
    wal.save(Some(&hs(1, 1, 0)), &entries(1..=5, 1)).unwrap();
    wal.save(Some(&hs(2, 1, 4)), &entries(6..=8, 2)).unwrap();
    wal.save_snapshot(&mark(3, 1)).unwrap();
    drop(wal);

    let (_wal, c) = Wal::open(&dir, big()).unwrap();
    assert_eq!(c.metadata, META);
    assert_eq!(c.hard_state, hs(2, 1, 4));
    assert_eq!(c.snapshot, mark(3, 1));
    let mut want = entries(4..=5, 1);
    want.extend(entries(6..=8, 2));
    assert_eq!(c.entries, want);
    assert_eq!(c.repaired_tail, None);
}

#[test]
fn create_refuses_an_existing_wal_and_open_needs_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    assert!(Wal::open(&dir, big()).is_err());
    Wal::create(&dir, META, big()).unwrap();
    assert!(Wal::create(&dir, META, big()).is_err());
}

#[test]
fn many_segments_reopen_with_equal_contents() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, small()).unwrap();
    wal.save_snapshot(&mark(0, 0)).unwrap();
    for i in 1..=100 {
        wal.save(Some(&hs(1, 1, i - 1)), &[entry(i, 1)]).unwrap();
    }
    let count = wal.segment_count();
    assert!(count > 5, "only {count} segments");
    assert_eq!(segments(&dir).len(), count);
    drop(wal);

    let (mut wal, c) = Wal::open(&dir, small()).unwrap();
    assert_eq!(c.entries, entries(1..=100, 1));
    assert_eq!(c.hard_state, hs(1, 1, 99));
    assert_eq!(wal.segment_count(), count);
    // Appending after reopen continues the chain across the old and new segments.
    wal.save(None, &entries(101..=120, 1)).unwrap();
    drop(wal);
    let (_wal, c) = Wal::open(&dir, small()).unwrap();
    assert_eq!(c.entries, entries(1..=120, 1));
}

#[test]
fn overwritten_entries_are_truncated_on_read_and_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, small()).unwrap();
    wal.save(None, &entries(1..=30, 1)).unwrap();
    // A new leader replaces 21.. with its own entries.
    wal.save(Some(&hs(2, 2, 20)), &entries(21..=22, 2)).unwrap();
    // The in-memory last index follows the truncation: the next cut names first index 23.
    wal.save(None, &entries(23..=24, 2)).unwrap();
    drop(wal);

    let (mut wal, c) = Wal::open(&dir, small()).unwrap();
    let mut want: Vec<(u64, u64)> = (1..=20).map(|i| (i, 1)).collect();
    want.extend((21..=24).map(|i| (i, 2)));
    assert_eq!(indexes(&c), want);
    // Truncate again, this time below a segment boundary, and reopen.
    wal.save(Some(&hs(3, 3, 5)), &entries(6..=7, 3)).unwrap();
    drop(wal);
    let (_wal, c) = Wal::open(&dir, small()).unwrap();
    let mut want: Vec<(u64, u64)> = (1..=5).map(|i| (i, 1)).collect();
    want.extend([(6, 3), (7, 3)]);
    assert_eq!(indexes(&c), want);
    assert_eq!(c.hard_state, hs(3, 3, 5));
}

fn retaining(from: u64) -> WalOptions {
    WalOptions {
        retain_from: from,
        ..small()
    }
}

#[test]
fn open_keeps_only_entries_from_retain_from_and_names_the_one_before() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, small()).unwrap();
    wal.save(None, &entries(1..=100, 1)).unwrap();
    drop(wal);

    let (_wal, c) = Wal::open(&dir, retaining(60)).unwrap();
    assert_eq!(c.entries, entries(60..=100, 1));
    assert_eq!(c.before_retained, Some((59, 1)));
    let (_wal, c) = Wal::open(&dir, retaining(0)).unwrap();
    assert_eq!(c.entries, entries(1..=100, 1));
    assert_eq!(c.before_retained, None);
}

#[test]
fn truncations_below_and_across_retain_from_are_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, small()).unwrap();
    wal.save(None, &entries(1..=50, 1)).unwrap();
    // A new leader replaces 40.. (below the window that will be kept) with its own entries.
    wal.save(Some(&hs(2, 2, 39)), &entries(40..=70, 2)).unwrap();
    drop(wal);

    let (_wal, c) = Wal::open(&dir, retaining(45)).unwrap();
    assert_eq!(c.entries, entries(45..=70, 2));
    assert_eq!(c.before_retained, Some((44, 2)));
    let (_wal, c) = Wal::open(&dir, retaining(30)).unwrap();
    let mut want: Vec<(u64, u64)> = (30..=39).map(|i| (i, 1)).collect();
    want.extend((40..=70).map(|i| (i, 2)));
    assert_eq!(indexes(&c), want);
    assert_eq!(c.before_retained, Some((29, 1)));
}

#[test]
fn retain_from_past_the_end_keeps_nothing_and_appends_after_the_last_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, small()).unwrap();
    wal.save(None, &entries(1..=20, 1)).unwrap();
    drop(wal);

    let (mut wal, c) = Wal::open(&dir, retaining(1_000)).unwrap();
    assert!(c.entries.is_empty());
    assert_eq!(c.before_retained, Some((20, 1)));
    wal.save(None, &entries(21..=25, 1)).unwrap();
    drop(wal);
    let (_wal, c) = Wal::open(&dir, small()).unwrap();
    assert_eq!(c.entries, entries(1..=25, 1));
}

#[test]
fn a_snapshot_mark_above_the_unretained_entries_forgets_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, small()).unwrap();
    wal.save(None, &entries(1..=30, 1)).unwrap();
    wal.save_snapshot(&mark(25, 1)).unwrap();
    drop(wal);

    let (_wal, c) = Wal::open(&dir, retaining(20)).unwrap();
    assert_eq!(c.entries, entries(26..=30, 1));
    assert_eq!(c.before_retained, None);
    let (_wal, c) = Wal::open(&dir, retaining(28)).unwrap();
    assert_eq!(c.entries, entries(28..=30, 1));
    assert_eq!(c.before_retained, Some((27, 1)));
}

#[test]
fn release_to_removes_only_wholly_below_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, small()).unwrap();
    wal.save_snapshot(&mark(0, 0)).unwrap();
    for i in 1..=60 {
        wal.save(None, &[entry(i, 1)]).unwrap();
    }
    let before = segments(&dir);
    // First indexes from the file names (the part after the dash).
    let firsts: Vec<u64> = before
        .iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_str().unwrap();
            u64::from_str_radix(name.split_once('-').unwrap().1, 16).unwrap()
        })
        .collect();
    // Release up to an index inside segment 3: segments 0..=2 hold only entries below it.
    let index = firsts[3] + 1;
    wal.save_snapshot(&mark(index, 1)).unwrap();
    let removed = wal.release_to(index).unwrap();
    assert_eq!(removed, 3);
    let after = segments(&dir);
    assert_eq!(after[0], before[3]);
    assert_eq!(wal.segment_count(), after.len());
    // Nothing more below the same index, and the current segment always stays.
    assert_eq!(wal.release_to(index).unwrap(), 0);
    assert_eq!(wal.release_to(u64::MAX).unwrap(), after.len() - 1);
    assert_eq!(wal.segment_count(), 1);
    wal.save(Some(&hs(1, 1, 60)), &entries(61..=62, 1)).unwrap();
    drop(wal);

    let (_wal, c) = Wal::open(&dir, small()).unwrap();
    assert_eq!(c.metadata, META);
    assert_eq!(c.snapshot, mark(index, 1));
    assert_eq!(c.hard_state, hs(1, 1, 60));
    assert_eq!(c.entries.last().map(|e| e.index), Some(62));
    assert!(c.entries.iter().all(|e| e.index > index));
}

#[test]
fn torn_tail_of_junk_bytes_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, big()).unwrap();
    wal.save(Some(&hs(1, 1, 3)), &entries(1..=3, 1)).unwrap();
    drop(wal);
    let seg = segments(&dir).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let good_len = logical_end(&bytes) as u64;
    // As a log that grows by appending leaves it: the file ends in a few bytes of a header.
    bytes.truncate(good_len as usize);
    bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x01]);
    fs::write(&seg, &bytes).unwrap();

    let (mut wal, c) = Wal::open(&dir, big()).unwrap();
    assert_eq!(c.repaired_tail, Some((seg.clone(), good_len)));
    assert_eq!(c.entries, entries(1..=3, 1));
    assert_zero_after(&seg, good_len);
    wal.save(None, &entries(4..=4, 1)).unwrap();
    drop(wal);
    let (_wal, c) = Wal::open(&dir, big()).unwrap();
    assert_eq!(c.repaired_tail, None);
    assert_eq!(c.entries, entries(1..=4, 1));
}

#[test]
fn torn_tail_of_a_short_last_record_is_cut_and_earlier_records_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, small()).unwrap();
    for i in 1..=40 {
        wal.save(Some(&hs(1, 1, i)), &[entry(i, 1)]).unwrap();
    }
    drop(wal);
    let seg = segments(&dir).pop().unwrap();
    let bytes = fs::read(&seg).unwrap();
    let last = *record_offsets(&bytes).last().unwrap();
    // Keep the last record's header and a few data bytes: its declared length runs past the end.
    fs::write(&seg, &bytes[..last + 20]).unwrap();

    let (_wal, c) = Wal::open(&dir, small()).unwrap();
    assert_eq!(c.repaired_tail, Some((seg.clone(), last as u64)));
    assert_zero_after(&seg, last as u64);
    // The last save wrote entry 40 then hard state commit 40; only the hard state record was torn.
    assert_eq!(c.entries, entries(1..=40, 1));
    assert_eq!(c.hard_state, hs(1, 1, 39));
}

#[test]
fn zero_filled_tail_is_unused_space() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, big()).unwrap();
    wal.save(None, &entries(1..=3, 1)).unwrap();
    drop(wal);
    let seg = segments(&dir).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let good_len = logical_end(&bytes) as u64;
    // Zeros after the last record but short of the segment size, as a log with a zero tail written
    // without preallocation leaves it.
    bytes.truncate(good_len as usize);
    bytes.resize(bytes.len() + 4096, 0);
    fs::write(&seg, &bytes).unwrap();

    let (mut wal, c) = Wal::open(&dir, big()).unwrap();
    assert_eq!(c.repaired_tail, None);
    assert_eq!(c.entries, entries(1..=3, 1));
    assert_zero_after(&seg, good_len);
    wal.save(None, &entries(4..=5, 1)).unwrap();
    drop(wal);
    let (_wal, c) = Wal::open(&dir, big()).unwrap();
    assert_eq!(c.entries, entries(1..=5, 1));
}

fn mid() -> WalOptions {
    WalOptions {
        segment_size: 64 * 1024,
        ..WalOptions::default()
    }
}

/// An entry whose data is `n` non-zero bytes, long enough to span several 512-byte sectors.
fn big_entry(index: u64, term: u64, n: usize) -> Entry {
    Entry {
        index,
        term,
        data: (0..n)
            .map(|i| (i % 251 + 1) as u8)
            .collect::<Vec<u8>>()
            .into(),
        ..Default::default()
    }
}

#[cfg(target_os = "linux")]
#[test]
fn segments_are_preallocated_and_finished_ones_end_at_their_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let wal = Wal::create(&dir, META, mid()).unwrap();
    let seg = segments(&dir).pop().unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len(), mid().segment_size);
    drop(wal);

    let dir = tmp.path().join("small");
    let mut wal = Wal::create(&dir, META, small()).unwrap();
    for i in 1..=60 {
        wal.save(Some(&hs(1, 1, i - 1)), &[entry(i, 1)]).unwrap();
    }
    drop(wal);
    let segs = segments(&dir);
    assert!(segs.len() > 3);
    for (k, seg) in segs.iter().enumerate() {
        let bytes = fs::read(seg).unwrap();
        let end = logical_end(&bytes);
        if k + 1 < segs.len() {
            assert_eq!(bytes.len(), end, "{} keeps unused space", seg.display());
        } else {
            assert_eq!(bytes.len() as u64, small().segment_size.max(end as u64));
            assert_zero_after(seg, end as u64);
        }
    }
}

/// A log whose last save was one entry of 2000 bytes; returns its segment and the offset of that
/// entry's record, and the offset just past it.
fn wal_ending_in_a_big_record(dir: &Path) -> (PathBuf, usize, usize) {
    let mut wal = Wal::create(dir, META, mid()).unwrap();
    wal.save(Some(&hs(1, 1, 0)), &entries(1..=3, 1)).unwrap();
    wal.save(None, &[big_entry(4, 1, 2000)]).unwrap();
    drop(wal);
    let seg = segments(dir).pop().unwrap();
    let bytes = fs::read(&seg).unwrap();
    let victim = *record_offsets(&bytes).last().unwrap();
    (seg, victim, logical_end(&bytes))
}

#[test]
fn torn_write_into_preallocated_space_is_cut_and_earlier_records_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let (seg, victim, end) = wal_ending_in_a_big_record(&dir);
    // The crash left the record's header and first half; its second half never reached the disk.
    let mut bytes = fs::read(&seg).unwrap();
    bytes[victim + (end - victim) / 2..end].fill(0);
    fs::write(&seg, &bytes).unwrap();

    let (mut wal, c) = Wal::open(&dir, mid()).unwrap();
    assert_eq!(c.repaired_tail, Some((seg.clone(), victim as u64)));
    assert_eq!(c.entries, entries(1..=3, 1));
    assert_eq!(c.hard_state, hs(1, 1, 0));
    assert_zero_after(&seg, victim as u64);
    // open -> save -> crash (drop without anything else) -> open.
    wal.save(Some(&hs(1, 1, 3)), &[big_entry(4, 1, 2000)])
        .unwrap();
    drop(wal);
    let (_wal, c) = Wal::open(&dir, mid()).unwrap();
    assert_eq!(c.repaired_tail, None);
    let mut want = entries(1..=3, 1);
    want.push(big_entry(4, 1, 2000));
    assert_eq!(c.entries, want);
    assert_eq!(c.hard_state, hs(1, 1, 3));
}

#[test]
fn flipped_byte_in_a_preallocated_last_record_is_corrupt_not_torn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let (seg, victim, _) = wal_ending_in_a_big_record(&dir);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[victim + 16 + 1000] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();
    let text = corrupt_text(Wal::open(&dir, mid()).unwrap_err());
    assert!(text.contains(&seg.display().to_string()), "{text}");
    assert!(text.contains(&format!("byte offset {victim}:")), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
}

#[test]
fn zero_sector_with_written_bytes_after_it_is_corrupt_not_torn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let (seg, victim, end) = wal_ending_in_a_big_record(&dir);
    // A whole zero sector inside the record, but the record's later bytes are there.
    let sector = (victim + 16).next_multiple_of(512);
    assert!(sector + 512 + 16 < end);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[sector..sector + 512].fill(0);
    fs::write(&seg, &bytes).unwrap();
    let text = corrupt_text(Wal::open(&dir, mid()).unwrap_err());
    assert!(text.contains(&format!("byte offset {victim}:")), "{text}");
}

#[test]
fn zeroed_record_in_the_middle_of_the_last_segment_is_corrupt_not_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, mid()).unwrap();
    for i in 1..=20 {
        wal.save(Some(&hs(1, 1, i)), &[entry(i, 1)]).unwrap();
    }
    drop(wal);
    let seg = segments(&dir).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let offsets = record_offsets(&bytes);
    assert!(offsets.len() > 30, "{offsets:?}");
    // A whole record in the middle reads as zeros (a lost sector), with acknowledged records after.
    let (victim, next) = (offsets[10], offsets[11]);
    bytes[victim..next].fill(0);
    fs::write(&seg, &bytes).unwrap();

    let text = corrupt_text(Wal::open(&dir, mid()).unwrap_err());
    assert!(text.contains(&format!("byte offset {victim}:")), "{text}");
    assert!(text.contains("with a record after them"), "{text}");
    assert!(text.contains("repair"), "{text}");
    // Nothing was cut: the records after the zeros are still in the file.
    assert_eq!(fs::read(&seg).unwrap()[next..], bytes[next..]);

    // Repair cuts there, keeping a copy, and the records before the zeros open.
    let report = repair(&dir).unwrap().expect("something to repair");
    assert_eq!(report.offset, victim as u64);
    let (_wal, c) = Wal::open(&dir, mid()).unwrap();
    assert!(!c.entries.is_empty());
    assert_eq!(c.entries, entries(1..=c.entries.len() as u64, 1));
}

#[test]
fn later_sector_of_a_write_whose_first_sector_was_lost_is_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, mid()).unwrap();
    wal.save(None, &entries(1..=3, 1)).unwrap();
    drop(wal);
    let seg = segments(&dir).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let end = logical_end(&bytes);
    bytes[end + 600..end + 700].fill(0x5a);
    fs::write(&seg, &bytes).unwrap();

    let (_wal, c) = Wal::open(&dir, mid()).unwrap();
    assert_eq!(c.repaired_tail, Some((seg.clone(), end as u64)));
    assert_eq!(c.entries, entries(1..=3, 1));
    assert_zero_after(&seg, end as u64);
}

#[test]
fn header_across_a_sector_boundary_with_its_second_sector_unwritten_is_a_torn_tail() {
    use protobuf::Message;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, mid()).unwrap();
    let seg = segments(&dir).pop().unwrap();
    let end_now = || logical_end(&fs::read(&seg).unwrap());
    // Fill with one entry sized so that the next record starts 504 bytes past a sector boundary.
    wal.save(None, &entries(1..=3, 1)).unwrap();
    let mut need = (504 + 512 - end_now() % 512) % 512;
    if need < 64 {
        need += 512;
    }
    let filler = (0..need)
        .map(|n| big_entry(4, 1, n))
        .find(|e| 16 + (e.compute_size() as usize).next_multiple_of(8) == need)
        .expect("a filler size");
    wal.save(None, std::slice::from_ref(&filler)).unwrap();
    let victim = end_now();
    assert_eq!(victim % 512, 504);
    wal.save(None, &[entry(5, 1)]).unwrap();
    drop(wal);
    // The first 8 header bytes landed in one sector; the next sector never did.
    let mut bytes = fs::read(&seg).unwrap();
    bytes[victim + 8..].fill(0);
    fs::write(&seg, &bytes).unwrap();

    let (_wal, c) = Wal::open(&dir, mid()).unwrap();
    assert_eq!(c.repaired_tail, Some((seg.clone(), victim as u64)));
    let mut want = entries(1..=3, 1);
    want.push(filler);
    assert_eq!(c.entries, want);
}

/// Builds a log over several segments and flips one data byte of a record in the middle of the
/// second segment. Returns the damaged file and the offset of the damaged record.
fn damaged_wal(dir: &Path) -> (PathBuf, usize) {
    let mut wal = Wal::create(dir, META, small()).unwrap();
    for i in 1..=60 {
        wal.save(None, &[entry(i, 1)]).unwrap();
    }
    drop(wal);
    let seg = segments(dir)[1].clone();
    let mut bytes = fs::read(&seg).unwrap();
    let offsets = record_offsets(&bytes);
    let victim = offsets[offsets.len() / 2];
    bytes[victim + 16 + 3] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();
    (seg, victim)
}

#[test]
fn flipped_byte_in_an_earlier_record_is_corrupt_naming_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let (seg, victim) = damaged_wal(&dir);
    let text = corrupt_text(Wal::open(&dir, small()).unwrap_err());
    assert!(text.contains(&seg.display().to_string()), "{text}");
    assert!(text.contains(&format!("byte offset {victim}:")), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    assert!(text.contains("mini-etcd repair --data-dir"), "{text}");
}

#[test]
fn crc_mismatch_on_the_last_record_is_corrupt_not_torn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, big()).unwrap();
    wal.save(None, &entries(1..=3, 1)).unwrap();
    drop(wal);
    let seg = segments(&dir).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let last = *record_offsets(&bytes).last().unwrap();
    bytes[last + 17] ^= 1;
    fs::write(&seg, &bytes).unwrap();
    let text = corrupt_text(Wal::open(&dir, big()).unwrap_err());
    assert!(text.contains(&format!("byte offset {last}:")), "{text}");
}

#[test]
fn flipped_byte_then_repair_opens_with_the_records_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let (seg, victim) = damaged_wal(&dir);
    let all = segments(&dir);
    let report = repair(&dir).unwrap().expect("something to repair");
    assert_eq!(report.file, seg);
    assert_eq!(report.offset, victim as u64);
    assert!(report.bytes_dropped > 0);
    // The damaged segment (the second) and every one after it.
    assert_eq!(report.broken_copies.len(), all.len() - 1);
    for copy in &report.broken_copies {
        assert!(copy.to_str().unwrap().ends_with(".wal.broken"), "{copy:?}");
        assert!(copy.exists());
    }
    assert_eq!(segments(&dir), all[..2].to_vec());
    assert_eq!(fs::metadata(&seg).unwrap().len(), victim as u64);

    let (mut wal, c) = Wal::open(&dir, small()).unwrap();
    // Every entry before the damaged record survives, in order, and nothing after it.
    let n = c.entries.len() as u64;
    assert!(n > 0);
    assert_eq!(c.entries, entries(1..=n, 1));
    wal.save(None, &[entry(n + 1, 2)]).unwrap();
    drop(wal);
    assert_eq!(repair(&dir).unwrap(), None);
    let (_wal, c) = Wal::open(&dir, small()).unwrap();
    assert_eq!(c.entries.last(), Some(&entry(n + 1, 2)));
}

#[test]
fn incomplete_record_in_an_earlier_segment_is_corrupt_not_torn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, small()).unwrap();
    for i in 1..=40 {
        wal.save(None, &[entry(i, 1)]).unwrap();
    }
    drop(wal);
    let first = segments(&dir)[0].clone();
    let bytes = fs::read(&first).unwrap();
    let last = *record_offsets(&bytes).last().unwrap();
    fs::write(&first, &bytes[..last + 20]).unwrap();
    let text = corrupt_text(Wal::open(&dir, small()).unwrap_err());
    assert!(text.contains(&format!("byte offset {last}:")), "{text}");
    assert!(text.contains("not the last"), "{text}");
}

#[test]
fn unfinished_segment_from_a_crash_during_cut_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, big()).unwrap();
    wal.save(None, &entries(1..=3, 1)).unwrap();
    drop(wal);
    let tmp_seg = dir.join("0000000000000001-0000000000000004.wal.tmp");
    fs::write(&tmp_seg, b"half a segment").unwrap();
    let (_wal, c) = Wal::open(&dir, big()).unwrap();
    assert_eq!(c.entries, entries(1..=3, 1));
    assert!(!tmp_seg.exists());
}

const SPARE: &str = "spare.wal.tmp";

#[test]
fn the_next_segment_is_made_ahead_and_open_replaces_a_used_or_stale_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, small()).unwrap();
    let spare = dir.join(SPARE);
    assert_eq!(fs::metadata(&spare).unwrap().len(), 512, "preallocated");
    wal.save(None, &entries(1..=3, 1)).unwrap();
    drop(wal);
    // A crash during a cut that had written into the spare but not renamed it.
    fs::write(&spare, b"half a segment header").unwrap();
    let (mut wal, c) = Wal::open(&dir, small()).unwrap();
    assert_eq!(c.entries, entries(1..=3, 1));
    assert_eq!(segments(&dir).len(), 1);
    let bytes = fs::read(&spare).unwrap();
    assert!(
        bytes.iter().all(|&b| b == 0),
        "a fresh spare, not the old one"
    );
    // Cuts use the spare and make the next one.
    for i in 4..=60 {
        wal.save(None, &[entry(i, 1)]).unwrap();
    }
    assert!(wal.segment_count() >= 3);
    assert_eq!(segments(&dir).len(), wal.segment_count());
    assert!(spare.exists());
    drop(wal);
    let (_wal, c) = Wal::open(&dir, small()).unwrap();
    assert_eq!(c.entries, entries(1..=60, 1));
}

/// Set in the child process that [`a_cut_with_no_descriptor_left_uses_the_spare_segment`] starts.
const EMFILE_CHILD: &str = "WAL_TEST_EMFILE_CHILD";

fn set_soft_nofile(limit: libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = limit.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// The process runs out of descriptors (a soft RLIMIT_NOFILE of 0: every open fails with EMFILE,
/// even into a descriptor a cut closes) before a save that fills the segment: the cut still happens, in the spare made
/// ahead; the next full segment, with no spare to be had, grows instead of failing the save; once
/// descriptors are back, a spare is made and the cut follows. Runs in a child process, since the
/// limit is the whole process's.
#[test]
fn a_cut_with_no_descriptor_left_uses_the_spare_segment() {
    if std::env::var_os(EMFILE_CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_cut_with_no_descriptor_left_uses_the_spare_segment",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(EMFILE_CHILD, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the child ran no test: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, small()).unwrap();
    wal.save(None, &entries(1..=2, 1)).unwrap();
    assert_eq!(wal.segment_count(), 1);
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
        0
    );

    set_soft_nofile(0);
    let err = fs::File::open(&dir).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
    // Fills segment 0: cut into the spare.
    wal.save(Some(&hs(1, 1, 1)), &entries(3..=12, 1)).unwrap();
    assert_eq!(wal.segment_count(), 2);
    // Fills segment 1, with no spare: it grows.
    wal.save(Some(&hs(1, 1, 2)), &entries(13..=30, 1)).unwrap();
    wal.save(None, &[entry(31, 1)]).unwrap();
    assert_eq!(wal.segment_count(), 2);

    set_soft_nofile(hard.rlim_cur);
    let seg1 = segments(&dir)[1].clone();
    // The spare is tried again at most once a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    wal.save(None, &[entry(32, 1)]).unwrap();
    assert_eq!(
        wal.segment_count(),
        3,
        "the overdue cut, once a spare could be made"
    );
    assert!(
        fs::metadata(&seg1).unwrap().len() > 512,
        "segment 1 grew past the size"
    );
    drop(wal);
    let (_wal, c) = Wal::open(&dir, small()).unwrap();
    assert_eq!(c.entries, entries(1..=32, 1));
    assert_eq!(c.hard_state, hs(1, 1, 2));
}

#[test]
fn missing_segment_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, small()).unwrap();
    wal.save(None, &entries(1..=60, 1)).unwrap();
    for i in 61..=100 {
        wal.save(None, &[entry(i, 1)]).unwrap();
    }
    drop(wal);
    let segs = segments(&dir);
    assert!(segs.len() >= 3);
    fs::remove_file(&segs[1]).unwrap();
    let text = corrupt_text(Wal::open(&dir, small()).unwrap_err());
    assert!(text.contains(&segs[2].display().to_string()), "{text}");
    assert!(text.contains("missing"), "{text}");
}

#[test]
fn segment_from_another_log_breaks_the_crc_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let build = |name: &str, term: u64| {
        let dir = tmp.path().join(name);
        let mut wal = Wal::create(&dir, META, small()).unwrap();
        for i in 1..=40 {
            wal.save(None, &[entry(i, term)]).unwrap();
        }
        dir
    };
    let a = build("a", 1);
    let b = build("b", 2);
    let (sa, sb) = (segments(&a), segments(&b));
    assert_eq!(sa[1].file_name(), sb[1].file_name());
    fs::copy(&sb[1], &sa[1]).unwrap();
    let text = corrupt_text(Wal::open(&a, small()).unwrap_err());
    assert!(text.contains(&sa[1].display().to_string()), "{text}");
    assert!(text.contains("byte offset 0:"), "{text}");
    assert!(text.contains("chain"), "{text}");
}

#[test]
fn group_commit_one_save_of_1000_entries_is_one_fsync() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, META, big()).unwrap();
    let before = wal.sync_count();
    wal.save(Some(&hs(1, 1, 0)), &entries(1..=1000, 1)).unwrap();
    assert_eq!(wal.sync_count() - before, 1);
    wal.save(None, &[]).unwrap();
    assert_eq!(wal.sync_count() - before, 1, "an empty save writes nothing");
    drop(wal);
    let (_wal, c) = Wal::open(&dir, big()).unwrap();
    assert_eq!(c.entries.len(), 1000);
}

// ---- fixture: a small WAL committed to git, so any change to the on-disk format is noticed ----

const FIXTURE: &str = "tests/fixtures/wal/basic";

/// The fixture's history: snapshot, writes, a truncation by a new leader, a later snapshot.
fn write_fixture(dir: &Path) {
    let mut wal = Wal::create(dir, META, small()).unwrap();
    wal.save_snapshot(&mark(0, 0)).unwrap();
    wal.save(Some(&hs(2, 1, 15)), &entries(1..=20, 2)).unwrap();
    wal.save(Some(&hs(3, 2, 17)), &entries(18..=19, 3)).unwrap();
    wal.save_snapshot(&mark(10, 2)).unwrap();
    for i in 20..=22 {
        wal.save(Some(&hs(3, 2, i - 1)), &[entry(i, 3)]).unwrap();
    }
}

/// The files of a WAL directory with their bytes, but for the spare segment (`spare.wal.tmp`, empty
/// space that open removes): it is not part of the format.
fn dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|x| x != "tmp"))
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            (name, fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn fixture_bytes_are_unchanged() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().join("wal");
    write_fixture(&fresh);
    if std::env::var_os("WAL_FIXTURE_REGEN").is_some() {
        let _ = fs::remove_dir_all(&fixture);
        fs::create_dir_all(&fixture).unwrap();
        for (name, bytes) in dir_files(&fresh) {
            fs::write(fixture.join(name), bytes).unwrap();
        }
    }
    let want = dir_files(&fixture);
    let got = dir_files(&fresh);
    assert_eq!(
        want.iter().map(|f| &f.0).collect::<Vec<_>>(),
        got.iter().map(|f| &f.0).collect::<Vec<_>>(),
        "segment names changed; if the format change is intended, rerun with WAL_FIXTURE_REGEN=1"
    );
    for ((name, want), (_, got)) in want.iter().zip(&got) {
        // The last segment is preallocated: the fixture's bytes, then zeros up to the segment size.
        let (got, tail) = got.split_at(want.len().min(got.len()));
        assert!(
            tail.iter().all(|&b| b == 0),
            "{name} has non-zero bytes after the fixture's end"
        );
        assert!(
            want == got,
            "{name} differs from the fixture: the on-disk format changed. If intended, rerun \
             with WAL_FIXTURE_REGEN=1 and bump nothing silently"
        );
    }
}

#[test]
fn fixture_opens_with_its_exact_contents() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in dir_files(&fixture) {
        fs::write(dir.join(name), bytes).unwrap();
    }
    assert!(segments(&dir).len() >= 2, "the fixture spans segments");
    let (_wal, c) = Wal::open(&dir, small()).unwrap();
    assert_eq!(c.metadata, META);
    assert_eq!(c.snapshot, mark(10, 2));
    assert_eq!(c.hard_state, hs(3, 2, 21));
    let mut want = entries(11..=17, 2);
    want.extend(entries(18..=22, 3));
    assert_eq!(c.entries, want);
    assert_eq!(c.repaired_tail, None);
}
