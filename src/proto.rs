//! The etcd v3 wire API, generated at build time from `proto/` (see `build.rs`).
//!
//! Three packages, one module each, named as etcd names them so that the
//! generated cross-package paths (`super::mvccpb::KeyValue`) resolve:
//!
//! - [`mvccpb`]: the stored `KeyValue` and the watch `Event`.
//! - [`authpb`]: users, roles and permissions.
//! - [`etcdserverpb`]: the request and response messages and the six gRPC
//!   services, each with a server (`kv_server::KvServer`, `watch_server::...`)
//!   and a client (`kv_client::KvClient`, ...).
//!
//! Every message implements `prost::Message` for the gRPC wire and
//! `serde::{Serialize, Deserialize}` for the HTTP/JSON gateway. The JSON
//! follows the proto3 mapping the way etcd's gateway does: `.proto` field
//! names (`range_end`, not `rangeEnd`; camelCase is accepted on input too),
//! 64-bit integers as strings, bytes as base64, enums by name, default values
//! left out, unknown fields ignored.
//!
//! The field numbers are etcd's and are the compatibility contract: the tests
//! below pin a few encodings byte by byte.

/// Stored key-values and watch events (etcd's `mvccpb` package).
#[allow(clippy::all, missing_docs)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// Users, roles and key permissions (etcd's `authpb` package).
#[allow(clippy::all, missing_docs)]
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// The client-facing services and their messages (etcd's `etcdserverpb`).
#[allow(clippy::all, missing_docs)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// The encoded `FileDescriptorSet` of all three packages, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/etcd_descriptor.bin"));
