//! How a gRPC [`Status`] looks on the gateway's HTTP side: its HTTP status, the body of a failed
//! unary call, and the error chunk that ends a failed stream.
//!
//! Both bodies are grpc-gateway v1's, the version etcd 3.4 and 3.5 serve:
//!
//! - a unary failure is `{"error": "<message>", "code": <grpc code>, "message": "<message>"}`,
//!   fields in that order. grpc-gateway v1 also has a `details` field, but etcd marshals with
//!   defaults omitted and its statuses carry no details, so etcd never shows it; neither do we.
//! - a stream that fails after its first message ends with one last chunk
//!   `{"error": {"grpc_code": .., "http_code": .., "message": "..", "http_status": ".."}}`, with no
//!   newline after it (grpc-gateway writes the delimiter only after results).

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Serialize;
use tonic::{Code, Status};

use crate::error::Error;

/// The HTTP status grpc-gateway v1 (`runtime.HTTPStatusFromCode`) gives a gRPC code.
///
/// As etcd 3.4.23 answers (`tests/compat_fields.rs` holds it to the real one): `FailedPrecondition`
/// is 412 (grpc-gateway v2 changed it to 400), `Canceled` is 408 (v2: 499), `ResourceExhausted`
/// 429, `DeadlineExceeded` 504.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// etcd's answer to a message over `--max-request-bytes` (`ErrGRPCRequestTooLarge`: InvalidArgument).
pub fn request_too_large() -> Status {
    Status::invalid_argument(Error::RequestTooLarge.to_string())
}

/// The body of a failed unary call; field order is grpc-gateway's (proto field numbers 1, 2, 3).
#[derive(Serialize)]
struct ErrorBody<'a> {
    /// The status message, under grpc-gateway v1's original name.
    error: &'a str,
    /// The numeric gRPC code, which clients switch on.
    code: i32,
    /// The status message again, under the name grpc-gateway v1.8+ added.
    message: &'a str,
}

/// The HTTP response for a call that failed before any message was streamed back.
pub fn error_response(status: &Status) -> Response {
    let body = ErrorBody {
        error: status.message(),
        code: i32::from(status.code()),
        message: status.message(),
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| FALLBACK.to_vec());
    let mut response = json_response(http_status(status.code()), Body::from(bytes));
    // grpc-gateway v1 echoes the message as a challenge on Unauthenticated.
    if status.code() == Code::Unauthenticated {
        if let Ok(value) = HeaderValue::from_str(status.message()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

/// What grpc-gateway answers when even the error cannot be marshalled.
const FALLBACK: &[u8] = br#"{"error": "failed to marshal error message"}"#;

/// The error object inside the last chunk of a failed stream.
#[derive(Serialize)]
struct StreamError<'a> {
    /// The numeric gRPC code.
    grpc_code: i32,
    /// The HTTP status the code maps to (the response itself already said 200).
    http_code: u16,
    /// The status message.
    message: &'a str,
    /// The reason phrase of `http_code`, as Go's `http.StatusText` spells it.
    http_status: &'a str,
}

/// A stream chunk carrying an error.
#[derive(Serialize)]
struct ErrorChunk<'a> {
    /// The error, under the key grpc-gateway uses.
    error: StreamError<'a>,
}

/// The bytes of the chunk that ends a stream with `status` (no trailing newline, as grpc-gateway).
pub fn stream_error_chunk(status: &Status) -> Vec<u8> {
    let http = http_status(status.code());
    let chunk = ErrorChunk {
        error: StreamError {
            grpc_code: i32::from(status.code()),
            http_code: http.as_u16(),
            message: status.message(),
            http_status: http.canonical_reason().unwrap_or(""),
        },
    };
    serde_json::to_vec(&chunk).unwrap_or_else(|_| FALLBACK.to_vec())
}

/// A response with `status`, `body` and grpc-gateway's JSON content type.
pub fn json_response(status: StatusCode, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_like_grpc_gateway_v1() {
        let cases = [
            (Code::Cancelled, 408),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 412),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
        ];
        for (code, http) in cases {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn stream_error_chunk_has_grpc_gateway_fields() {
        let chunk = stream_error_chunk(&Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted",
        ));
        assert_eq!(
            String::from_utf8(chunk).unwrap(),
            r#"{"error":{"grpc_code":11,"http_code":400,"message":"etcdserver: mvcc: required revision has been compacted","http_status":"Bad Request"}}"#
        );
    }
}
