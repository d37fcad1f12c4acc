//! Counters of the gRPC calls the server serves: etcd's go-grpc-prometheus series on `/metrics`
//! (`grpc_server_started_total`, `grpc_server_handled_total`, `grpc_server_msg_received_total`,
//! `grpc_server_msg_sent_total`), so that a dashboard built for etcd shows our request rates and
//! error codes.
//!
//! The table is fixed: one row per method of the services we serve ([`Method`], with etcd's service
//! and method names and go-grpc-prometheus's `grpc_type`), each row a few relaxed atomic counters
//! and one per gRPC status code. Counting a call is a handful of `fetch_add`s at an index known
//! when the call is dispatched: no map, no lock, no allocation, nothing formatted. It is
//! process-wide ([`GRPC`]), as etcd's Prometheus registry is; two servers in one process (unit
//! tests) share it.
//!
//! What is counted, and where, for every path a call can take:
//! - the lean KV path (`unary`): started when dispatched, one message received once decoded, one
//!   sent and `OK` when it answers, else the code of the status it sends;
//! - the tonic services: a middleware on their router ([`count_calls`]) counts the call by its
//!   path, the messages by their 5-byte length prefixes as the request and response bodies pass
//!   (exact for streams as for unary calls), and the code from `grpc-status`, in the response
//!   headers for a trailers-only error or in the trailers when the body ends;
//! - the JSON gateway: etcd's gateway calls the gRPC server over a loopback connection, so a
//!   gateway call counts as the method it maps to (`crate::api::gateway`), once its JSON request
//!   decoded, as etcd's gateway only calls gRPC then.
//!
//! A call that ends without a status sent (the client reset the stream, or went away) counts as
//! `Canceled`, the code grpc-go gives it ([`Call`]'s drop).
//!
//! What it leaves out, and where it differs from etcd: a call to a path no service has (grpc-go
//! answers it `Unimplemented` outside its interceptors) is not counted. A call that tonic or the
//! lean path refuses before its handler (a malformed or compressed-but-unsupported message) counts
//! with the code it got, where grpc-go fails such a call before its interceptors and counts nothing.
//! Lock, Election, `AuthStatus` and `Downgrade` are counted, but only printed once used
//! ([`MethodInfo::preregistered`]): etcd 3.4 registers its Prometheus series before it adds the
//! Lock and Election services, and has no `AuthStatus` or `Downgrade`. etcd's
//! `grpc.health.v1.Health` service is not served here, so it has no row.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{ready, Context, Poll};

use tonic::Code;

/// go-grpc-prometheus's `grpc_type` label: which side streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallType {
    Unary,
    ServerStream,
    ClientStream,
    BidiStream,
}

impl CallType {
    /// The label value, as go-grpc-prometheus prints it.
    pub fn label(self) -> &'static str {
        match self {
            CallType::Unary => "unary",
            CallType::ServerStream => "server_stream",
            CallType::ClientStream => "client_stream",
            CallType::BidiStream => "bidi_stream",
        }
    }
}

/// The labels of one method.
#[derive(Debug)]
pub struct MethodInfo {
    /// The service's full name (`etcdserverpb.KV`), the `grpc_service` label.
    pub service: &'static str,
    /// The method's name (`Range`), the `grpc_method` label.
    pub method: &'static str,
    /// The `grpc_type` label.
    pub kind: CallType,
    /// Whether etcd 3.4 prints the method's series at zero from the start (go-grpc-prometheus
    /// pre-registers every method of the services registered before it, every code of them):
    /// the others are printed once counted.
    pub preregistered: bool,
}

/// Declares [`Method`] and its table from one list, so that the two cannot disagree.
macro_rules! methods {
    ($( $variant:ident = $service:literal / $method:literal, $kind:ident, $pre:literal; )*) => {
        /// Every gRPC method the server serves: the row of its counters.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Method {
            $($variant,)*
        }

        /// The labels of every [`Method`], in its order.
        pub const METHODS: &[MethodInfo] = &[
            $(MethodInfo {
                service: $service,
                method: $method,
                kind: CallType::$kind,
                preregistered: $pre,
            },)*
        ];

        impl Method {
            /// Every method, in table order.
            pub const ALL: &[Method] = &[$(Method::$variant,)*];

            /// The method an HTTP/2 request path (`/etcdserverpb.KV/Range`) calls, if we serve it.
            pub fn from_path(path: &str) -> Option<Method> {
                match path {
                    $(concat!("/", $service, "/", $method) => Some(Method::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

methods! {
    KvRange = "etcdserverpb.KV" / "Range", Unary, true;
    KvPut = "etcdserverpb.KV" / "Put", Unary, true;
    KvDeleteRange = "etcdserverpb.KV" / "DeleteRange", Unary, true;
    KvTxn = "etcdserverpb.KV" / "Txn", Unary, true;
    KvCompact = "etcdserverpb.KV" / "Compact", Unary, true;
    Watch = "etcdserverpb.Watch" / "Watch", BidiStream, true;
    LeaseGrant = "etcdserverpb.Lease" / "LeaseGrant", Unary, true;
    LeaseRevoke = "etcdserverpb.Lease" / "LeaseRevoke", Unary, true;
    LeaseKeepAlive = "etcdserverpb.Lease" / "LeaseKeepAlive", BidiStream, true;
    LeaseTimeToLive = "etcdserverpb.Lease" / "LeaseTimeToLive", Unary, true;
    LeaseLeases = "etcdserverpb.Lease" / "LeaseLeases", Unary, true;
    MemberAdd = "etcdserverpb.Cluster" / "MemberAdd", Unary, true;
    MemberRemove = "etcdserverpb.Cluster" / "MemberRemove", Unary, true;
    MemberUpdate = "etcdserverpb.Cluster" / "MemberUpdate", Unary, true;
    MemberList = "etcdserverpb.Cluster" / "MemberList", Unary, true;
    MemberPromote = "etcdserverpb.Cluster" / "MemberPromote", Unary, true;
    Alarm = "etcdserverpb.Maintenance" / "Alarm", Unary, true;
    Status = "etcdserverpb.Maintenance" / "Status", Unary, true;
    Defragment = "etcdserverpb.Maintenance" / "Defragment", Unary, true;
    Hash = "etcdserverpb.Maintenance" / "Hash", Unary, true;
    HashKv = "etcdserverpb.Maintenance" / "HashKV", Unary, true;
    Snapshot = "etcdserverpb.Maintenance" / "Snapshot", ServerStream, true;
    MoveLeader = "etcdserverpb.Maintenance" / "MoveLeader", Unary, true;
    Downgrade = "etcdserverpb.Maintenance" / "Downgrade", Unary, false;
    AuthEnable = "etcdserverpb.Auth" / "AuthEnable", Unary, true;
    AuthDisable = "etcdserverpb.Auth" / "AuthDisable", Unary, true;
    AuthStatus = "etcdserverpb.Auth" / "AuthStatus", Unary, false;
    Authenticate = "etcdserverpb.Auth" / "Authenticate", Unary, true;
    UserAdd = "etcdserverpb.Auth" / "UserAdd", Unary, true;
    UserGet = "etcdserverpb.Auth" / "UserGet", Unary, true;
    UserList = "etcdserverpb.Auth" / "UserList", Unary, true;
    UserDelete = "etcdserverpb.Auth" / "UserDelete", Unary, true;
    UserChangePassword = "etcdserverpb.Auth" / "UserChangePassword", Unary, true;
    UserGrantRole = "etcdserverpb.Auth" / "UserGrantRole", Unary, true;
    UserRevokeRole = "etcdserverpb.Auth" / "UserRevokeRole", Unary, true;
    RoleAdd = "etcdserverpb.Auth" / "RoleAdd", Unary, true;
    RoleGet = "etcdserverpb.Auth" / "RoleGet", Unary, true;
    RoleList = "etcdserverpb.Auth" / "RoleList", Unary, true;
    RoleDelete = "etcdserverpb.Auth" / "RoleDelete", Unary, true;
    RoleGrantPermission = "etcdserverpb.Auth" / "RoleGrantPermission", Unary, true;
    RoleRevokePermission = "etcdserverpb.Auth" / "RoleRevokePermission", Unary, true;
    Lock = "v3lockpb.Lock" / "Lock", Unary, false;
    Unlock = "v3lockpb.Lock" / "Unlock", Unary, false;
    Campaign = "v3electionpb.Election" / "Campaign", Unary, false;
    Proclaim = "v3electionpb.Election" / "Proclaim", Unary, false;
    Leader = "v3electionpb.Election" / "Leader", Unary, false;
    Observe = "v3electionpb.Election" / "Observe", ServerStream, false;
    Resign = "v3electionpb.Election" / "Resign", Unary, false;
}

impl Method {
    /// Its labels.
    pub fn info(self) -> &'static MethodInfo {
        &METHODS[self as usize]
    }
}

/// How many gRPC status codes there are (`OK` = 0 to `Unauthenticated` = 16).
pub const CODES: usize = 17;

/// The name go-grpc-prometheus gives code `i` in `grpc_code` (grpc-go's `codes.Code.String()`).
pub const CODE_NAMES: [&str; CODES] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The counters of one method. Aligned to a cache line so that the hot ones of a method (started,
/// received, sent, `OK`) share one, and methods do not share lines.
#[repr(align(64))]
#[derive(Default)]
pub struct MethodStats {
    /// Calls started.
    pub started: AtomicU64,
    /// Request messages received.
    pub received: AtomicU64,
    /// Response messages sent.
    pub sent: AtomicU64,
    /// Calls finished, by the code of the status sent.
    pub handled: [AtomicU64; CODES],
}

impl MethodStats {
    /// A row of zeros.
    const fn new() -> MethodStats {
        MethodStats {
            started: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            handled: [const { AtomicU64::new(0) }; CODES],
        }
    }
}

/// The table: a row per [`Method`].
pub struct GrpcStats {
    rows: [MethodStats; METHODS.len()],
}

/// The server's table (process-wide, as etcd's Prometheus registry is).
pub static GRPC: GrpcStats = GrpcStats::new();

impl Default for GrpcStats {
    fn default() -> Self {
        GrpcStats::new()
    }
}

impl GrpcStats {
    /// A table of zeros.
    pub const fn new() -> GrpcStats {
        GrpcStats {
            rows: [const { MethodStats::new() }; METHODS.len()],
        }
    }

    /// The counters of `method`.
    pub fn row(&self, method: Method) -> &MethodStats {
        &self.rows[method as usize]
    }

    /// Counts a request message of `method` received.
    pub fn received(&self, method: Method) {
        self.row(method).received.fetch_add(1, Relaxed);
    }

    /// Counts a response message of `method` sent.
    pub fn sent(&self, method: Method) {
        self.row(method).sent.fetch_add(1, Relaxed);
    }
}

/// The index of `code` in [`CODE_NAMES`] and `handled`; a code outside gRPC's range (tonic maps
/// unknown numbers to `Unknown` itself, so none arrives) counts as `Unknown`.
pub fn code_index(code: Code) -> usize {
    let i = code as usize;
    if i < CODES {
        i
    } else {
        Code::Unknown as usize
    }
}

/// One call, from its start to the status it ends with: counted started when made, handled once,
/// with the code [`Call::finish`] gives it, or `Canceled` if it is dropped unfinished (the client
/// went away, or the future serving it was dropped), as grpc-go reports such a call.
pub struct Call {
    /// The table it counts in.
    stats: &'static GrpcStats,
    /// Its row.
    method: Method,
    /// Set once finished, so that the drop does not count it again.
    finished: bool,
}

impl Call {
    /// Starts a call of `method` in the server's table.
    pub fn start(method: Method) -> Call {
        Call::start_in(&GRPC, method)
    }

    /// Starts a call of `method` in `stats`.
    pub fn start_in(stats: &'static GrpcStats, method: Method) -> Call {
        stats.row(method).started.fetch_add(1, Relaxed);
        Call {
            stats,
            method,
            finished: false,
        }
    }

    /// Its method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Counts a request message received.
    pub fn received(&self) {
        self.stats.received(self.method);
    }

    /// Counts a response message sent.
    pub fn sent(&self) {
        self.stats.sent(self.method);
    }

    /// A unary call answered: one message sent, and `OK`.
    pub fn answered(self) {
        self.sent();
        self.finish(Code::Ok);
    }

    /// Ends the call with the status code it sent.
    pub fn finish(mut self, code: Code) {
        self.end(code);
    }

    fn end(&mut self, code: Code) {
        if !self.finished {
            self.finished = true;
            self.stats.row(self.method).handled[code_index(code)].fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.end(Code::Cancelled);
    }
}

/// Counts the length-prefixed gRPC messages of a body as its bytes pass, however they are split
/// into data frames: each message is a compression flag, a 4-byte big-endian length, and that many
/// bytes.
#[derive(Debug, Default)]
pub struct Messages {
    /// The prefix of the message being read, as far as it has arrived.
    prefix: [u8; 5],
    /// How many bytes of `prefix` have arrived (5: the payload is being read).
    have: usize,
    /// Bytes of the payload still to come, once the prefix is complete.
    remaining: u64,
}

impl Messages {
    /// Takes the next bytes of the body; returns how many messages they complete.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut complete = 0;
        while !data.is_empty() {
            if self.have < 5 {
                let n = (5 - self.have).min(data.len());
                self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == 5 {
                    let [_, a, b, c, d] = self.prefix;
                    self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                } else {
                    break;
                }
            } else {
                let n = self.remaining.min(data.len() as u64);
                self.remaining -= n;
                // `n` is at most `data.len()`.
                data = &data[n as usize..];
            }
            if self.remaining == 0 {
                // An empty message is complete with its prefix.
                complete += 1;
                self.have = 0;
            }
        }
        complete
    }
}

/// The code of a `grpc-status` header or trailer; a value that is not a number of ours counts as
/// `Unknown`, as a client would read it.
fn status_code(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get(tonic::Status::GRPC_STATUS)?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32);
    Some(code)
}

/// Middleware on the tonic services' router: counts every call to a method of [`Method`], its
/// messages both ways, and the code it ends with (see the module's essay).
pub async fn count_calls(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Some(method) = Method::from_path(req.uri().path()) else {
        return next.run(req).await;
    };
    let call = Call::start(method);
    let req = req.map(|body| {
        axum::body::Body::new(Received {
            body,
            method,
            messages: Messages::default(),
        })
    });
    let response = next.run(req).await;
    // A trailers-only response (an error before any message) carries its status in the headers.
    if let Some(code) = status_code(response.headers()) {
        call.finish(code);
        return response;
    }
    response.map(|body| {
        axum::body::Body::new(Sent {
            body,
            call: Some(call),
            messages: Messages::default(),
        })
    })
}

/// A request body that counts its messages as the service reads them.
struct Received {
    body: axum::body::Body,
    method: Method,
    messages: Messages,
}

impl http_body::Body for Received {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
            for _ in 0..this.messages.feed(data) {
                GRPC.received(this.method);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A response body that counts its messages as they are sent, and ends its call with the status
/// of its trailers.
struct Sent {
    body: axum::body::Body,
    /// Until the trailers passed; dropped before, the call counts as `Canceled`.
    call: Option<Call>,
    messages: Messages,
}

impl http_body::Body for Sent {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(call)) = (f.data_ref(), &this.call) {
                    for _ in 0..this.messages.feed(data) {
                        call.sent();
                    }
                } else if let Some(trailers) = f.trailers_ref() {
                    if let Some(call) = this.call.take() {
                        call.finish(status_code(trailers).unwrap_or(Code::Unknown));
                    }
                }
            }
            // The stream is reset: the client gets no status.
            Some(Err(_)) => {}
            // A gRPC body ends with its trailers; one without them leaves the client without a
            // status, which it reads as an error of unknown kind.
            None => {
                if let Some(call) = this.call.take() {
                    call.finish(Code::Unknown);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_rows() {
        assert_eq!(METHODS.len(), Method::ALL.len());
        for (i, m) in Method::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i);
            let info = m.info();
            let path = format!("/{}/{}", info.service, info.method);
            assert_eq!(Method::from_path(&path), Some(*m), "{path}");
        }
        assert_eq!(Method::from_path("/etcdserverpb.KV/Nope"), None);
        assert_eq!(Method::from_path("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn code_names_follow_tonic_codes() {
        assert_eq!(CODE_NAMES[code_index(Code::Ok)], "OK");
        assert_eq!(CODE_NAMES[code_index(Code::Cancelled)], "Canceled");
        assert_eq!(CODE_NAMES[code_index(Code::OutOfRange)], "OutOfRange");
        assert_eq!(CODE_NAMES[code_index(Code::Unavailable)], "Unavailable");
        assert_eq!(
            CODE_NAMES[code_index(Code::Unauthenticated)],
            "Unauthenticated"
        );
    }

    #[test]
    fn a_call_is_handled_once() {
        static T: GrpcStats = GrpcStats::new();
        let row = T.row(Method::KvPut);
        Call::start_in(&T, Method::KvPut).answered();
        let c = Call::start_in(&T, Method::KvPut);
        c.received();
        c.finish(Code::OutOfRange);
        drop(Call::start_in(&T, Method::KvPut));
        assert_eq!(row.started.load(Relaxed), 3);
        assert_eq!(row.received.load(Relaxed), 1);
        assert_eq!(row.sent.load(Relaxed), 1);
        let handled: Vec<u64> = row.handled.iter().map(|h| h.load(Relaxed)).collect();
        let mut want = vec![0; CODES];
        want[Code::Ok as usize] = 1;
        want[Code::OutOfRange as usize] = 1;
        want[Code::Cancelled as usize] = 1;
        assert_eq!(handled, want);
        assert_eq!(T.row(Method::KvRange).started.load(Relaxed), 0);
    }

    /// Three messages (5, 0 and 300 bytes), fed split at every pair of points.
    #[test]
    fn messages_are_counted_however_the_body_is_split() {
        let mut body = Vec::new();
        for len in [5u32, 0, 300] {
            body.push(0);
            body.extend_from_slice(&len.to_be_bytes());
            body.extend(std::iter::repeat_n(7u8, len as usize));
        }
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let mut m = Messages::default();
                let n = m.feed(&body[..i]) + m.feed(&body[i..j]) + m.feed(&body[j..]);
                assert_eq!(n, 3, "split at {i} and {j}");
            }
        }
        let mut m = Messages::default();
        assert_eq!(m.feed(&body[..body.len() - 1]), 2, "the last is incomplete");
        assert_eq!(m.feed(&body[body.len() - 1..]), 1);
    }
}
