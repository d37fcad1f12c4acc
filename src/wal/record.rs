//! The record codec: framing, padding, the header check and the chained checksum.
//!
//! This layer knows bytes and record types only. Which record may appear where (a Crc record first in
//! a segment, the chain continuing across files) is decided by the segment reader in `segment.rs`.

use protobuf::Message;
use raft::eraftpb::{ConfState, Entry, HardState};

use super::SnapshotMark;
use crate::error::{Error, Result};

/// Size of the fixed record header in bytes.
pub(crate) const HEADER_LEN: usize = 16;

/// Every record starts at a multiple of this many bytes from the start of its file.
pub(crate) const ALIGN: usize = 8;

/// The kinds of record a segment holds. The byte values are part of the on-disk format; zero is never
/// a type, so an all-zero header cannot be mistaken for a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RecordType {
    /// First record of every segment: the crc the chain continues from.
    Crc = 1,
    /// Opaque bytes given at create (node id, cluster id), repeated in every segment.
    Metadata = 2,
    /// One Raft log entry, protobuf-encoded.
    Entry = 3,
    /// The Raft hard state (term, vote, commit), protobuf-encoded.
    HardState = 4,
    /// A snapshot mark: index, term and the encoded `ConfState`.
    Snapshot = 5,
}

impl RecordType {
    pub(crate) fn from_byte(b: u8) -> Option<RecordType> {
        Some(match b {
            1 => RecordType::Crc,
            2 => RecordType::Metadata,
            3 => RecordType::Entry,
            4 => RecordType::HardState,
            5 => RecordType::Snapshot,
            _ => return None,
        })
    }
}

/// A decoded record payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    Crc(u32),
    Metadata(Vec<u8>),
    Entry(Entry),
    HardState(HardState),
    Snapshot(SnapshotMark),
}

/// Zero bytes needed after `len` data bytes to reach the next aligned offset.
pub(crate) fn padding(len: usize) -> usize {
    (ALIGN - len % ALIGN) % ALIGN
}

/// The chained checksum: the previous record's crc extended with this record's type byte and data.
pub(crate) fn chain(prev: u32, ty: RecordType, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(prev, &[ty as u8]), data)
}

/// Appends one framed record (header, data, zero padding) to `buf` and returns its chained crc.
pub(crate) fn encode(buf: &mut Vec<u8>, prev: u32, ty: RecordType, data: &[u8]) -> Result<u32> {
    let len = u32::try_from(data.len()).map_err(|_| {
        Error::InvalidArgument(format!(
            "WAL record of {} bytes exceeds the 4 GiB limit",
            data.len()
        ))
    })?;
    let pad = padding(data.len());
    let crc = chain(prev, ty, data);
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4] = ty as u8;
    // `pad` is below ALIGN (8), so it always fits a byte.
    header[5] = pad as u8;
    header[8..12].copy_from_slice(&crc.to_le_bytes());
    let check = crc32c::crc32c(&header[..12]);
    header[12..16].copy_from_slice(&check.to_le_bytes());
    buf.extend_from_slice(&header);
    buf.extend_from_slice(data);
    buf.resize(buf.len() + pad, 0);
    Ok(crc)
}

/// Encodes a typed record; see [`encode`].
pub(crate) fn encode_record(buf: &mut Vec<u8>, prev: u32, rec: &Record) -> Result<u32> {
    let (ty, data) = match rec {
        Record::Crc(c) => (RecordType::Crc, c.to_le_bytes().to_vec()),
        Record::Metadata(m) => (RecordType::Metadata, m.clone()),
        Record::Entry(e) => (RecordType::Entry, proto_bytes(e)?),
        Record::HardState(h) => (RecordType::HardState, proto_bytes(h)?),
        Record::Snapshot(s) => {
            let mut data = Vec::with_capacity(16);
            data.extend_from_slice(&s.index.to_le_bytes());
            data.extend_from_slice(&s.term.to_le_bytes());
            data.extend_from_slice(&proto_bytes(&s.conf_state)?);
            (RecordType::Snapshot, data)
        }
    };
    encode(buf, prev, ty, &data)
}

/// Encodes a protobuf message (an `Entry` or `HardState`) as a record of type `ty`, by reference: the
/// save path writes every entry it is handed and must not copy them first.
pub(crate) fn encode_proto<M: Message>(
    buf: &mut Vec<u8>,
    prev: u32,
    ty: RecordType,
    m: &M,
) -> Result<u32> {
    encode(buf, prev, ty, &proto_bytes(m)?)
}

fn proto_bytes<M: Message>(m: &M) -> Result<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|e| Error::Internal(format!("encoding a WAL record: {e}")))
}

/// What [`decode_frame`] found at an offset.
#[derive(Debug, PartialEq)]
pub(crate) enum Frame<'a> {
    /// A complete record whose header is intact. Its chained crc is not checked here: that needs the
    /// previous record's crc.
    Record {
        ty: RecordType,
        data: &'a [u8],
        crc: u32,
        /// Offset just past the record's padding: where the next record starts.
        end: usize,
    },
    /// An all-zero header, or only zero bytes left: the rest of the file is unused.
    Unused,
    /// An incomplete record: fewer bytes left than a header, or the declared length runs past the end.
    Torn(String),
    /// A damaged header (check mismatch, unknown type, inconsistent padding).
    Bad(String),
}

/// Reads the frame starting at `offset` of a whole segment `buf`. `offset` is below `buf.len()`.
pub(crate) fn decode_frame(buf: &[u8], offset: usize) -> Frame<'_> {
    let rest = &buf[offset..];
    if rest.len() < HEADER_LEN {
        if rest.iter().all(|&b| b == 0) {
            return Frame::Unused;
        }
        return Frame::Torn(format!(
            "{} trailing bytes, fewer than a record header",
            rest.len()
        ));
    }
    let header = &rest[..HEADER_LEN];
    if header.iter().all(|&b| b == 0) {
        return Frame::Unused;
    }
    let check = u32_at(header, 12);
    if crc32c::crc32c(&header[..12]) != check {
        return Frame::Bad("record header checksum mismatch".to_string());
    }
    let len = u32_at(header, 0) as usize;
    let Some(ty) = RecordType::from_byte(header[4]) else {
        return Frame::Bad(format!("unknown record type {}", header[4]));
    };
    let pad = header[5] as usize;
    if pad != padding(len) {
        return Frame::Bad(format!(
            "padding of {pad} bytes does not fit a {len}-byte record"
        ));
    }
    let crc = u32_at(header, 8);
    let total = HEADER_LEN + len + pad;
    if rest.len() < total {
        return Frame::Torn(format!(
            "record declares {len} data bytes but the file ends {} bytes after its header",
            rest.len() - HEADER_LEN
        ));
    }
    Frame::Record {
        ty,
        data: &rest[HEADER_LEN..HEADER_LEN + len],
        crc,
        end: offset + total,
    }
}

/// Decodes a record's payload. The error text says what failed, for the caller's Corrupt message.
pub(crate) fn decode_record(ty: RecordType, data: &[u8]) -> std::result::Result<Record, String> {
    Ok(match ty {
        RecordType::Crc => {
            let bytes: [u8; 4] = data
                .try_into()
                .map_err(|_| format!("crc record has {} bytes instead of 4", data.len()))?;
            Record::Crc(u32::from_le_bytes(bytes))
        }
        RecordType::Metadata => Record::Metadata(data.to_vec()),
        RecordType::Entry => Record::Entry(
            Entry::parse_from_bytes(data).map_err(|e| format!("entry does not decode: {e}"))?,
        ),
        RecordType::HardState => Record::HardState(
            HardState::parse_from_bytes(data)
                .map_err(|e| format!("hard state does not decode: {e}"))?,
        ),
        RecordType::Snapshot => {
            if data.len() < 16 {
                return Err(format!(
                    "snapshot mark has {} bytes, fewer than 16",
                    data.len()
                ));
            }
            let index = u64::from_le_bytes(fixed(&data[0..8]));
            let term = u64::from_le_bytes(fixed(&data[8..16]));
            let conf_state = ConfState::parse_from_bytes(&data[16..])
                .map_err(|e| format!("snapshot conf state does not decode: {e}"))?;
            Record::Snapshot(SnapshotMark {
                index,
                term,
                conf_state,
            })
        }
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(fixed(&b[at..at + 4]))
}

/// Copies a slice whose length the caller has already fixed into an array.
fn fixed<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(b);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn records_are_aligned_and_round_trip() {
        let mut buf = Vec::new();
        let recs = vec![
            Record::Crc(7),
            Record::Metadata(b"node".to_vec()),
            Record::Entry(entry(1, 1, b"abc")),
            Record::HardState(HardState {
                term: 3,
                vote: 2,
                commit: 1,
                ..Default::default()
            }),
            Record::Snapshot(SnapshotMark {
                index: 9,
                term: 2,
                conf_state: ConfState {
                    voters: vec![1, 2, 3],
                    ..Default::default()
                },
            }),
        ];
        let mut prev = 7;
        let mut starts = Vec::new();
        for r in &recs {
            starts.push(buf.len());
            prev = encode_record(&mut buf, prev, r).unwrap();
            assert_eq!(buf.len() % ALIGN, 0);
        }
        let mut off = 0;
        let mut prev = 7;
        for (r, start) in recs.iter().zip(starts) {
            assert_eq!(off, start);
            match decode_frame(&buf, off) {
                Frame::Record { ty, data, crc, end } => {
                    assert_eq!(chain(prev, ty, data), crc);
                    assert_eq!(&decode_record(ty, data).unwrap(), r);
                    prev = crc;
                    off = end;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(off, buf.len());
    }

    #[test]
    fn zero_header_is_unused_and_short_tail_is_torn() {
        let buf = vec![0u8; 32];
        assert_eq!(decode_frame(&buf, 0), Frame::Unused);
        assert_eq!(decode_frame(&[0u8; 5], 0), Frame::Unused);
        assert!(matches!(decode_frame(&[1u8, 2, 3], 0), Frame::Torn(_)));
    }

    #[test]
    fn cut_record_is_torn_and_damaged_header_is_bad() {
        let mut buf = Vec::new();
        encode(&mut buf, 0, RecordType::Metadata, &[5u8; 40]).unwrap();
        assert!(matches!(decode_frame(&buf[..30], 0), Frame::Torn(_)));
        let mut bad = buf.clone();
        bad[0] ^= 1;
        assert!(matches!(decode_frame(&bad, 0), Frame::Bad(_)));
        // A well-formed header with an unknown type.
        let mut unknown = buf.clone();
        unknown[4] = 99;
        let check = crc32c::crc32c(&unknown[..12]);
        unknown[12..16].copy_from_slice(&check.to_le_bytes());
        assert_eq!(
            decode_frame(&unknown, 0),
            Frame::Bad("unknown record type 99".to_string())
        );
    }
}
