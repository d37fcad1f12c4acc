//! Request bodies in, response bodies out.
//!
//! In: [`JsonReader`] reads proto3-JSON messages one after another from a request body as its bytes
//! arrive. A unary call takes the first message (or the default one from an empty body) and, like
//! grpc-gateway's decoder, ignores whatever follows it. A client-streaming call (watch, lease
//! keep-alive) takes every message in turn, so `curl -d '{"create_request":...}{"cancel_request":...}'`
//! or a slowly written chunked body both work.
//!
//! Limits: a message whose protobuf encoding exceeds `max_request_bytes` is refused with etcd's
//! "etcdserver: request is too large", the limit etcd applies to what it proposes. The JSON text of
//! a message is larger than its protobuf (base64 alone adds a third), so bytes buffered while a
//! message is incomplete are capped at a looser [`Limits::max_buffered_bytes`], which bounds
//! memory without refusing what etcd accepts.
//!
//! Out: a streamed response is grpc-gateway's: `{"result": <message>}` and a newline per message.

use axum::body::{Body, BodyDataStream};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Status;

use super::error::request_too_large;

/// grpc-gateway's allowance over `max_request_bytes` in etcd (`grpcOverheadBytes`, 512 KiB): room
/// for what wraps a message.
const OVERHEAD_BYTES: usize = 512 * 1024;

/// The size limits of one gateway.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest protobuf encoding of one request message (`--max-request-bytes`).
    pub max_request_bytes: usize,
    /// The most JSON bytes held while waiting for a message to complete.
    pub max_buffered_bytes: usize,
}

impl Limits {
    /// Limits for etcd's `--max-request-bytes`.
    pub fn new(max_request_bytes: usize) -> Self {
        Limits {
            max_request_bytes,
            // Base64 makes 4 characters of 3 bytes; 2x leaves room for field names and escapes.
            max_buffered_bytes: max_request_bytes
                .saturating_mul(2)
                .saturating_add(OVERHEAD_BYTES),
        }
    }
}

/// Reads JSON messages off a request body as it arrives.
pub struct JsonReader {
    /// The request body, read chunk by chunk.
    body: BodyDataStream,
    /// Bytes read but not yet decoded: the start of the next message.
    buf: Vec<u8>,
    /// The body has no more bytes.
    ended: bool,
    /// What a message and the buffer may hold.
    limits: Limits,
}

impl JsonReader {
    /// A reader over `body`.
    pub fn new(body: Body, limits: Limits) -> Self {
        JsonReader {
            body: body.into_data_stream(),
            buf: Vec::new(),
            ended: false,
            limits,
        }
    }

    /// The next message, or `None` once the body ends with only whitespace left.
    ///
    /// Malformed JSON, a field of the wrong type or bad base64 are InvalidArgument, "invalid request
    /// body: " and serde's description with its position (grpc-gateway answers with its decoder's
    /// text, which differs). Unknown fields are ignored, as etcd's gateway does.
    pub async fn next<T>(&mut self) -> Result<Option<T>, Status>
    where
        T: DeserializeOwned + prost::Message,
    {
        loop {
            if let Some(msg) = self.decode_buffered::<T>()? {
                return Ok(Some(msg));
            }
            if self.ended {
                return Ok(None);
            }
            match self.body.next().await {
                None => self.ended = true,
                Some(Err(e)) => {
                    return Err(Status::invalid_argument(format!(
                        "reading the request body: {e}"
                    )))
                }
                Some(Ok(chunk)) => {
                    if self.buf.len() + chunk.len() > self.limits.max_buffered_bytes {
                        return Err(request_too_large());
                    }
                    self.buf.extend_from_slice(&chunk);
                }
            }
        }
    }

    /// Takes one complete message off the front of the buffer, if there is one.
    fn decode_buffered<T>(&mut self) -> Result<Option<T>, Status>
    where
        T: DeserializeOwned + prost::Message,
    {
        let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<T>();
        match values.next() {
            Some(Ok(msg)) => {
                let used = values.byte_offset();
                self.buf.drain(..used);
                if msg.encoded_len() > self.limits.max_request_bytes {
                    return Err(request_too_large());
                }
                Ok(Some(msg))
            }
            // An incomplete message waits for more bytes, unless there are none to come.
            Some(Err(e)) if e.is_eof() && !self.ended => Ok(None),
            Some(Err(e)) => Err(Status::invalid_argument(format!(
                "invalid request body: {e}"
            ))),
            None => {
                // Only whitespace so far: nothing to keep.
                self.buf.clear();
                Ok(None)
            }
        }
    }
}

/// One message of a streamed response, under grpc-gateway's key.
#[derive(Serialize)]
struct ResultChunk<'a, T> {
    /// The response message.
    result: &'a T,
}

/// The bytes of one streamed message: `{"result": ...}` and a newline.
pub fn result_chunk<T: Serialize>(msg: &T) -> Result<Vec<u8>, Status> {
    let mut bytes = serde_json::to_vec(&ResultChunk { result: msg })
        .map_err(|e| Status::internal(format!("marshalling the response: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{PutRequest, WatchRequest};

    fn reader(chunks: &[&'static str], max_request_bytes: usize) -> JsonReader {
        let chunks: Vec<Result<&'static str, std::convert::Infallible>> =
            chunks.iter().map(|c| Ok(*c)).collect();
        JsonReader::new(
            Body::from_stream(futures::stream::iter(chunks)),
            Limits::new(max_request_bytes),
        )
    }

    #[tokio::test]
    async fn messages_split_across_chunks() {
        let mut r = reader(
            &[r#"{"key":"Zm"#, r#"9v"} {"key""#, r#":"YmFy"}"#, "\n"],
            1024,
        );
        let a: PutRequest = r.next().await.unwrap().unwrap();
        let b: PutRequest = r.next().await.unwrap().unwrap();
        assert_eq!(a.key, b"foo");
        assert_eq!(b.key, b"bar");
        assert!(r.next::<PutRequest>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn empty_body_has_no_message() {
        let mut r = reader(&["", "  \n"], 1024);
        assert!(r.next::<WatchRequest>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn truncated_message_is_invalid_argument() {
        let mut r = reader(&[r#"{"key":"Zm9v""#], 1024);
        let err = r.next::<PutRequest>().await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn large_message_is_too_large() {
        let value = format!(r#"{{"key":"Zm9v","value":"{}"}}"#, "A".repeat(400));
        let value: &'static str = Box::leak(value.into_boxed_str());
        let mut r = reader(&[value], 100);
        let err = r.next::<PutRequest>().await.unwrap_err();
        assert_eq!(err.message(), "etcdserver: request is too large");
    }

    #[test]
    fn result_chunk_is_one_line() {
        let msg = PutRequest {
            key: b"foo".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(result_chunk(&msg).unwrap()).unwrap(),
            "{\"result\":{\"key\":\"Zm9v\"}}\n"
        );
    }
}
