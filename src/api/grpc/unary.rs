//! A lean path for the KV service's unary calls (Range, Put, DeleteRange, Txn, Compact).
//!
//! tonic serves a unary call through its streaming machinery: a decoder state machine over the
//! request body, a one-message response stream, an encoding body and a status turned into a header
//! map. Here the request body is read to its end, the one message in it decoded with prost, the
//! [`KvService`] method called, and the reply sent as the gRPC wire format has it: headers, one data
//! frame (a 5-byte prefix and the message), and `grpc-status: 0` trailers. Errors are tonic's own `Status`, sent as
//! tonic sends them (a trailers-only response), so clients see the same codes and texts. Under
//! callgrind (`CLIENTS=64 TOTAL=4000 scripts/callgrind-put.sh`) this took a put from 67.9k to 64.7k
//! instructions.
//!
//! Each call is counted in [`crate::api::grpc::stats`] (started, the message received, the answer
//! and its code) with a few atomic adds at its method's row.
//!
//! Only what etcd's clients send takes this path: a call whose request says it is compressed
//! (`grpc-encoding` other than `identity`) goes to tonic, which knows how to refuse it. Request
//! headers reach the service as metadata, as tonic passes them; request trailers, which tonic would
//! merge into the metadata, are dropped (etcd's clients send none).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::api::grpc::caller_of_headers;
use crate::api::grpc::kv::KvService;
use crate::api::grpc::max_message_bytes;
use crate::api::grpc::stats::{Call, Method};
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::RangeRequest;
use crate::server::Server;

/// A gRPC message's prefix: a compression flag and a 4-byte big-endian length.
const PREFIX: usize = 5;

/// A unary call's future, as [`KvCalls::call`] returns it.
pub type CallFuture = Pin<Box<dyn Future<Output = http::Response<UnaryBody>> + Send>>;

/// The KV service's unary calls, served on this path.
#[derive(Clone)]
pub struct KvCalls {
    /// The service whose methods answer.
    kv: Arc<KvService>,
    /// The largest request message accepted (tonic's `max_decoding_message_size`).
    max: usize,
}

impl KvCalls {
    /// The KV calls of `server`, with the request size limit its gRPC service has.
    pub fn new(server: Server) -> KvCalls {
        let max = max_message_bytes(&server);
        KvCalls {
            kv: Arc::new(KvService::new(server)),
            max,
        }
    }

    /// The method `req` calls, if this path takes it: a unary KV call whose request is not
    /// compressed.
    pub fn takes(req: &http::Request<Incoming>) -> Option<KvMethod> {
        let compressed = req
            .headers()
            .get("grpc-encoding")
            .is_some_and(|e| e.as_bytes() != b"identity");
        if compressed {
            return None;
        }
        match req.uri().path() {
            "/etcdserverpb.KV/Range" => Some(KvMethod::Range),
            "/etcdserverpb.KV/Put" => Some(KvMethod::Put),
            "/etcdserverpb.KV/DeleteRange" => Some(KvMethod::DeleteRange),
            "/etcdserverpb.KV/Txn" => Some(KvMethod::Txn),
            "/etcdserverpb.KV/Compact" => Some(KvMethod::Compact),
            _ => None,
        }
    }

    /// Serves `req`, a call of `method` (as [`KvCalls::takes`] found it), counted in
    /// [`crate::api::grpc::stats::GRPC`] from here on.
    pub fn call(&self, method: KvMethod, req: http::Request<Incoming>) -> CallFuture {
        let (kv, max) = (self.kv.clone(), self.max);
        let call = Call::start(method.stats());
        match method {
            KvMethod::Range => Box::pin(serve_range(req, max, kv, call)),
            KvMethod::Put => Box::pin(serve(
                req,
                max,
                call,
                move |r| async move { kv.put(r).await },
            )),
            KvMethod::DeleteRange => Box::pin(serve(req, max, call, move |r| async move {
                kv.delete_range(r).await
            })),
            KvMethod::Txn => Box::pin(serve(
                req,
                max,
                call,
                move |r| async move { kv.txn(r).await },
            )),
            KvMethod::Compact => Box::pin(serve(req, max, call, move |r| async move {
                kv.compact(r).await
            })),
        }
    }
}

/// The KV service's unary methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvMethod {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
}

impl KvMethod {
    /// Its row in the call counters.
    pub fn stats(self) -> Method {
        match self {
            KvMethod::Range => Method::KvRange,
            KvMethod::Put => Method::KvPut,
            KvMethod::DeleteRange => Method::KvDeleteRange,
            KvMethod::Txn => Method::KvTxn,
            KvMethod::Compact => Method::KvCompact,
        }
    }
}

/// Reads the request message, calls `f` with it, and encodes what it returns; counts the message
/// received and the answer in `call`.
async fn serve<Req, Resp, F, Fut>(
    req: http::Request<Incoming>,
    max: usize,
    call: Call,
    f: F,
) -> http::Response<UnaryBody>
where
    Req: Message + Default,
    Resp: Message,
    F: FnOnce(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let (parts, body) = req.into_parts();
    let message = match read_message::<Req, _>(body, max).await {
        Ok(m) => m,
        Err(status) => return refuse(call, status),
    };
    call.received();
    match f(Request::from_http(http::Request::from_parts(
        parts, message,
    )))
    .await
    {
        Ok(response) => answer(call, reply(&response.into_inner())),
        Err(status) => refuse(call, status),
    }
}

/// The reply of a call that succeeded, or the status that replaces it, counted in `call`.
fn answer(
    call: Call,
    reply: Result<http::Response<UnaryBody>, Status>,
) -> http::Response<UnaryBody> {
    match reply {
        Ok(response) => {
            call.answered();
            response
        }
        Err(status) => refuse(call, status),
    }
}

/// The trailers-only reply of a call that failed with `status`, counted in `call`.
fn refuse(call: Call, status: Status) -> http::Response<UnaryBody> {
    call.finish(status.code());
    status.into_http()
}

/// A Range: answered with the frame the server writes straight from the stored records when it
/// can (`Server::range_frame`), else as every other call.
async fn serve_range(
    req: http::Request<Incoming>,
    max: usize,
    kv: Arc<KvService>,
    call: Call,
) -> http::Response<UnaryBody> {
    let (parts, body) = req.into_parts();
    let message: RangeRequest = match read_message(body, max).await {
        Ok(m) => m,
        Err(status) => return refuse(call, status),
    };
    call.received();
    let caller = match caller_of_headers(kv.server(), &parts.headers, &parts.extensions) {
        Ok(c) => c,
        Err(status) => return refuse(call, status),
    };
    match kv.server().range_frame_as(&caller, &message).await {
        Ok(Some(frame)) => answer(call, Ok(reply_frame(Bytes::from(frame)))),
        Ok(None) => match kv
            .range(Request::from_http(http::Request::from_parts(
                parts, message,
            )))
            .await
        {
            Ok(response) => answer(call, reply(&response.into_inner())),
            Err(status) => refuse(call, status),
        },
        Err(e) => refuse(call, e.to_status()),
    }
}

/// The one message of a unary request body, with tonic's errors for what is wrong with it.
pub(crate) async fn read_message<Req, B>(body: B, max: usize) -> Result<Req, Status>
where
    Req: Message + Default,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let buf = read_body(body, max).await?;
    decode(buf, max)
}

/// The request body, in one buffer: most requests arrive as one data frame, which is kept as it is.
/// Stops with tonic's error as soon as the prefix announces a message larger than `max`.
async fn read_body<B>(mut body: B, max: usize) -> Result<Bytes, Status>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut seen = Received::Nothing;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::from_error(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: tonic merges them into the metadata; etcd's clients send none
        };
        seen.push(data);
        if let Some(len) = check_prefix(seen.as_slice(), max)? {
            if seen.as_slice().len() > PREFIX + len {
                return Err(Status::internal(
                    "protocol error: more than one message in a unary request",
                ));
            }
        }
    }
    Ok(seen.into_bytes())
}

/// A request body as it arrives: no frame yet, one frame (kept as it is), or several (joined).
enum Received {
    Nothing,
    One(Bytes),
    Joined(BytesMut),
}

impl Received {
    fn push(&mut self, data: Bytes) {
        *self = match std::mem::replace(self, Received::Nothing) {
            Received::Nothing => Received::One(data),
            Received::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + data.len());
                joined.put_slice(&first);
                joined.put_slice(&data);
                Received::Joined(joined)
            }
            Received::Joined(mut joined) => {
                joined.put_slice(&data);
                Received::Joined(joined)
            }
        };
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Received::Nothing => &[],
            Received::One(b) => b,
            Received::Joined(b) => b,
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Received::Nothing => Bytes::new(),
            Received::One(b) => b,
            Received::Joined(b) => b.freeze(),
        }
    }
}

/// tonic's checks on a message prefix, once it has arrived; the message's length, if it has.
fn check_prefix(buf: &[u8], max: usize) -> Result<Option<usize>, Status> {
    if buf.len() < PREFIX {
        return Ok(None);
    }
    match buf[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ))
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
            )))
        }
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > max {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {max} bytes"
        )));
    }
    Ok(Some(len))
}

/// Decodes the first message of a whole request body.
fn decode<Req: Message + Default>(mut buf: Bytes, max: usize) -> Result<Req, Status> {
    if buf.is_empty() {
        return Err(Status::internal("Missing request message."));
    }
    if buf.len() < PREFIX {
        return Err(Status::internal("Unexpected EOF decoding stream."));
    }
    check_prefix(&buf, max)?;
    buf.advance(1);
    let len = buf.get_u32() as usize;
    if buf.len() < len {
        return Err(Status::internal("Unexpected EOF decoding stream."));
    }
    Req::decode(buf.slice(..len)).map_err(|e| Status::internal(e.to_string()))
}

/// A successful reply: the message with its prefix, then `grpc-status: 0`. A message the 4-byte
/// prefix cannot describe gets tonic's refusal instead.
fn reply<M: Message>(message: &M) -> Result<http::Response<UnaryBody>, Status> {
    let len = message.encoded_len();
    let Ok(prefix_len) = u32::try_from(len) else {
        return Err(Status::resource_exhausted(format!(
            "Cannot return body with more than 4GB of data but got {len} bytes"
        )));
    };
    let mut buf = Vec::with_capacity(PREFIX + len);
    buf.push(0);
    buf.extend_from_slice(&prefix_len.to_be_bytes());
    // Encoding into a Vec with room for the message cannot fail.
    let _ = message.encode(&mut buf);
    Ok(reply_frame(Bytes::from(buf)))
}

/// A successful reply of one message already framed (its 5-byte prefix included), then
/// `grpc-status: 0`.
fn reply_frame(frame: Bytes) -> http::Response<UnaryBody> {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert(Status::GRPC_STATUS, HeaderValue::from_static("0"));
    let mut response = http::Response::new(UnaryBody {
        data: Some(frame),
        trailers: Some(trailers),
    });
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A unary reply's body: one data frame, then the trailers. Empty for a trailers-only error reply.
#[derive(Default)]
pub struct UnaryBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for UnaryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    /// Not exact, on purpose: hyper turns an exact hint into a `content-length` header, which neither
    /// tonic nor etcd's grpc-go sends and which a Go client files into the call's metadata.
    fn size_hint(&self) -> SizeHint {
        let mut hint = SizeHint::new();
        hint.set_lower(self.data.as_ref().map_or(0, |d| d.len() as u64));
        hint
    }
}

#[cfg(test)]
mod tests;
