//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, off by default).
//!
//! The targets drive crate-internal decoders on arbitrary input. This module is the only way in:
//! thin wrappers that keep the internal types (`Record`, `Frame`, the unary gRPC reader) private,
//! and one input helper ([`wal::reseal`]) that lets mutated segments pass the checksums so that the
//! payload decoders and the replay rules behind them are reached at all. Nothing here is used by
//! the server itself.

/// The WAL record codec (`src/wal/record.rs`).
pub mod wal {
    use crate::wal::record::{self, Frame as InnerFrame, Record, RecordType};

    /// Size of a record header.
    pub const HEADER_LEN: usize = record::HEADER_LEN;

    /// What `decode_frame` found at an offset, with the record type as its on-disk byte.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Frame<'a> {
        /// A complete record with an intact header.
        Record {
            /// The on-disk type byte.
            ty: u8,
            /// The record's data, without padding.
            data: &'a [u8],
            /// The chained crc the header carries.
            crc: u32,
            /// Offset just past the record's padding.
            end: usize,
        },
        /// Zero header or only zeros left.
        Unused,
        /// An incomplete record.
        Torn(String),
        /// A damaged header.
        Bad(String),
    }

    /// A decoded record payload, opaque: it can be compared and encoded again.
    #[derive(Debug, Clone, PartialEq)]
    pub struct DecodedRecord(Record);

    impl DecodedRecord {
        /// The record framed again (header, data, padding) after `prev`, and its chained crc.
        pub fn encode(&self, prev: u32) -> Result<(Vec<u8>, u32), String> {
            let mut buf = Vec::new();
            let crc = record::encode_record(&mut buf, prev, &self.0).map_err(|e| e.to_string())?;
            Ok((buf, crc))
        }
    }

    /// `record::decode_frame` at `offset`; `None` when `offset` is not below `buf.len()` (the
    /// decoder's precondition, which every caller in the WAL keeps).
    pub fn decode_frame(buf: &[u8], offset: usize) -> Option<Frame<'_>> {
        if offset >= buf.len() {
            return None;
        }
        Some(match record::decode_frame(buf, offset) {
            InnerFrame::Record { ty, data, crc, end } => Frame::Record {
                ty: ty as u8,
                data,
                crc,
                end,
            },
            InnerFrame::Unused => Frame::Unused,
            InnerFrame::Torn(r) => Frame::Torn(r),
            InnerFrame::Bad(r) => Frame::Bad(r),
        })
    }

    /// `record::decode_record` for the type byte `ty`; `None` for a byte that is no record type.
    pub fn decode_record(ty: u8, data: &[u8]) -> Option<Result<DecodedRecord, String>> {
        let ty = RecordType::from_byte(ty)?;
        Some(record::decode_record(ty, data).map(DecodedRecord))
    }

    /// Frames `data` as a record of type byte `ty` after `prev` (`record::encode`); `None` for a
    /// byte that is no record type.
    pub fn encode(prev: u32, ty: u8, data: &[u8]) -> Option<Result<(Vec<u8>, u32), String>> {
        let ty = RecordType::from_byte(ty)?;
        let mut buf = Vec::new();
        Some(
            record::encode(&mut buf, prev, ty, data)
                .map(|crc| (buf, crc))
                .map_err(|e| e.to_string()),
        )
    }

    /// The chained checksum of a record of type byte `ty` after `prev`.
    pub fn chain(prev: u32, ty: u8, data: &[u8]) -> Option<u32> {
        Some(record::chain(prev, RecordType::from_byte(ty)?, data))
    }

    /// Rewrites the headers and checksums of a (mutated) segment so that every record the
    /// lengths still describe passes the header check and the crc chain: record `i` is framed
    /// again with its own data after record `i - 1`. A first record of type Crc with 4 data bytes
    /// gets `carried` as its value when given. Framing stops at the first header whose type byte or
    /// length cannot describe a record; the bytes from there on are kept as they are. Returns the
    /// new bytes and the crc of the last record framed (`carried`, or 0, if none).
    pub fn reseal(bytes: &[u8], carried: Option<u32>) -> (Vec<u8>, u32) {
        let mut out = Vec::with_capacity(bytes.len());
        let mut prev = carried.unwrap_or(0);
        let mut off = 0;
        while bytes.len() - off >= HEADER_LEN {
            let h = &bytes[off..off + HEADER_LEN];
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let Some(ty) = RecordType::from_byte(h[4]) else {
                break;
            };
            let total = HEADER_LEN + len + record::padding(len);
            if bytes.len() - off < total {
                break;
            }
            let mut data = bytes[off + HEADER_LEN..off + HEADER_LEN + len].to_vec();
            if off == 0 && ty == RecordType::Crc && len == 4 {
                let value =
                    carried.unwrap_or(u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
                data.copy_from_slice(&value.to_le_bytes());
                prev = value;
            }
            match record::encode(&mut out, prev, ty, &data) {
                Ok(crc) => prev = crc,
                Err(_) => break,
            }
            off += total;
        }
        out.extend_from_slice(&bytes[off..]);
        (out, prev)
    }
}

/// The KV service's own unary gRPC reader (`src/api/grpc/unary.rs`), which serves Range, Put,
/// DeleteRange, Txn and Compact instead of tonic's.
pub mod grpc {
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::StreamBody;

    /// Reads one request message of type `Req` from a body that arrives as `chunks` (one data
    /// frame each), with `max` as the message size limit: tonic's errors for what is wrong.
    pub async fn read_unary<Req>(chunks: Vec<Bytes>, max: usize) -> Result<Req, tonic::Status>
    where
        Req: prost::Message + Default,
    {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(c)));
        let body = StreamBody::new(futures::stream::iter(frames));
        crate::api::grpc::unary::read_message::<Req, _>(body, max).await
    }
}

/// The router the client port serves (gRPC, the JSON gateway, `/health`, `/version`, `/metrics`),
/// as `api::serve` builds it, for requests sent in process.
pub fn client_router(server: crate::server::Server) -> axum::Router {
    crate::api::client_router(server)
}
