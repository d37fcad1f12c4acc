//! The WAL: record frames and payloads, and whole segments through `Wal::open` and `wal::repair`.

use mini_etcd::fuzzing::wal::{self as codec, Frame};
use mini_etcd::wal::{repair, Wal, WalOptions};

/// Segment size for the segment target: small, so that preallocation costs little.
const SEGMENT_SIZE: u64 = 16 * 1024;

/// `wal_record`: the input is scanned as a segment would be, frame by frame from every offset, and
/// read as `[type byte][payload]` for the payload decoder.
///
/// Checks: no panic; a frame found lies inside the buffer and ends past its start; a payload that
/// decodes encodes again to a frame that decodes to the same record; framing any payload gives a
/// frame that decodes back to it with the chained crc, and no shorter prefix of it is a record.
pub fn wal_record(data: &[u8]) {
    for off in 0..data.len() {
        if let Some(Frame::Record {
            ty,
            data: payload,
            crc: _,
            end,
        }) = codec::decode_frame(data, off)
        {
            assert!(
                end > off && end <= data.len(),
                "frame at {off} ends at {end}"
            );
            let _ = codec::decode_record(ty, payload);
        }
    }

    let Some((&ty, payload)) = data.split_first() else {
        return;
    };
    let prev = codec::chain(0, 1, payload).unwrap_or(0);
    if let Some(Ok(rec)) = codec::decode_record(ty, payload) {
        let (buf, crc) = rec.encode(prev).expect("a decoded record encodes");
        let (ty2, d2, crc2, end) = whole_record(&buf, "an encoded record");
        assert_eq!((ty2, crc2, end), (ty, crc, buf.len()));
        let again = codec::decode_record(ty2, d2).expect("known type");
        assert_eq!(again.as_ref(), Ok(&rec), "record changed by a round trip");
    }
    if let Some(framed) = codec::encode(prev, ty, payload) {
        let (buf, crc) = framed.expect("payload under 4 GiB");
        assert_eq!(buf.len() % 8, 0, "frames are 8-byte aligned");
        assert_eq!(codec::chain(prev, ty, payload), Some(crc));
        assert_eq!(
            whole_record(&buf, "a framed payload"),
            (ty, payload, crc, buf.len())
        );
        let cut = payload.len() % buf.len();
        if cut > 0 {
            let short = codec::decode_frame(&buf[..cut], 0);
            assert!(
                !matches!(short, Some(Frame::Record { .. })),
                "a record cut to {cut} bytes still decodes"
            );
        }
    }
}

/// The record frame at the start of `buf` (type byte, data, crc, end); panics, naming `what`, if
/// it is anything else.
fn whole_record<'a>(buf: &'a [u8], what: &str) -> (u8, &'a [u8], u32, usize) {
    match codec::decode_frame(buf, 0) {
        Some(Frame::Record { ty, data, crc, end }) => (ty, data, crc, end),
        other => panic!("{what} decodes as {other:?}"),
    }
}

/// `wal_segment`: the input is `[flags][split: u16 LE][segment bytes]`, written as one segment
/// file, or as two consecutive ones cut at `split` when flag 2 is set. Flag 1 reseals the bytes
/// (headers and crc chain made valid again, see `mini_etcd::fuzzing::wal::reseal`) so that the
/// payload decoders and the replay rules are reached; flag 4 leaves the second segment's carried
/// crc as it is (a broken chain); flag 8 keeps entries from index 3 on only (`retain_from`).
///
/// Checks: neither `Wal::open` nor `wal::repair` panics. When open succeeds, the entries it
/// returns are above the snapshot mark and consecutive, the log takes one more entry, and opening
/// it again returns the same state with that entry. When open refuses damage, repair reports
/// something to repair, and open then refuses no record (it may still cut a torn tail: repair
/// cuts at the first bad record, and a segment that becomes the last by it is read by the last
/// segment's rules).
pub fn wal_segment(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let flags = data[0];
    let split = u16::from_le_bytes([data[1], data[2]]) as usize;
    let bytes = &data[3..];
    let (first, second) = if flags & 2 != 0 && !bytes.is_empty() {
        let at = split % bytes.len();
        (&bytes[..at], Some(&bytes[at..]))
    } else {
        (bytes, None)
    };
    let (first, second) = if flags & 1 != 0 {
        let (a, crc) = codec::reseal(first, None);
        let carried = if flags & 4 != 0 { None } else { Some(crc) };
        (a, second.map(|b| codec::reseal(b, carried).0))
    } else {
        (first.to_vec(), second.map(<[u8]>::to_vec))
    };

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join(segment_name(0, 0)), &first).expect("write segment");
    if let Some(second) = &second {
        std::fs::write(dir.path().join(segment_name(1, 1)), second).expect("write segment");
    }
    let opts = WalOptions {
        segment_size: SEGMENT_SIZE,
        retain_from: if flags & 8 != 0 { 3 } else { 0 },
    };

    match Wal::open(dir.path(), opts) {
        Ok((mut wal, contents)) => {
            for e in &contents.entries {
                assert!(
                    e.index > contents.snapshot.index,
                    "entry {} at or below the snapshot mark {}",
                    e.index,
                    contents.snapshot.index
                );
            }
            for w in contents.entries.windows(2) {
                assert_eq!(w[1].index, w[0].index + 1, "entries are not consecutive");
            }
            let last = contents
                .entries
                .last()
                .map(|e| e.index)
                .or(contents.before_retained.map(|(i, _)| i))
                .unwrap_or(0)
                .max(contents.snapshot.index);
            let next = entry(last + 1, contents.hard_state.term);
            wal.save(None, std::slice::from_ref(&next))
                .unwrap_or_else(|e| panic!("saving to a log that opened: {e}"));
            drop(wal);
            let (_, again) = Wal::open(dir.path(), opts)
                .unwrap_or_else(|e| panic!("a log that opened does not open again: {e}"));
            assert_eq!(again.metadata, contents.metadata);
            assert_eq!(again.snapshot, contents.snapshot);
            assert_eq!(again.hard_state, contents.hard_state);
            if next.index >= opts.retain_from {
                assert_eq!(
                    again.entries.last(),
                    Some(&next),
                    "the saved entry is not read back"
                );
            }
        }
        Err(e) => {
            let damaged = e.to_string().contains("is damaged at byte offset");
            match repair(dir.path()) {
                Ok(report) => {
                    if damaged {
                        assert!(
                            report.is_some(),
                            "open refused damage ({e}) that repair does not see"
                        );
                    }
                    if let Err(after) = Wal::open(dir.path(), opts) {
                        assert!(
                            !after.to_string().contains("is damaged at byte offset"),
                            "open refuses a repaired log: {after}"
                        );
                    }
                }
                Err(_) if damaged => panic!("repair fails on damage open reported: {e}"),
                Err(_) => {}
            }
        }
    }
}

fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

fn entry(index: u64, term: u64) -> raft::eraftpb::Entry {
    raft::eraftpb::Entry {
        index,
        term,
        data: b"fuzz".to_vec().into(),
        ..Default::default()
    }
}
