//! mini-etcd: a distributed, consistent key-value store that speaks etcd's v3 API.
//!
//! The data path, top to bottom (dependencies point down only):
//!
//! - [`api`]: the client APIs (the seed's REST API today); they validate, call the server, map errors.
//! - [`server`]: request ids and waiters, the Raft Ready loop, the apply step.
//! - [`mvcc`] (revisions, key index, store, redb backend), [`watch`] (watchers fed by apply),
//!   [`lease`] (the lessor: leases, attached keys, leader-local expiry),
//!   [`snap`] (when the applied state replaces the log's prefix).
//! - [`wal`]: the write-ahead log that is Raft's durable storage.
//! - [`peer`]: the transport that carries Raft's messages between the members of a cluster.
//!
//! [`proto`] holds the etcd v3 wire types (compiled from `proto/` by `build.rs`, no system protoc).
//! [`bench`](mod@bench) is the `mini-etcd bench` load generator, a client of the v3 API like any other.
//! [`config`] turns flags and `ETCD_*` variables into a [`config::Config`]; [`error`] is the one error
//! type; [`fdlimit`] raises and reads the open-file limit.
pub mod api;
pub mod auth;
pub mod bench;
pub mod config;
pub mod error;
pub mod fault;
pub mod fdlimit;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod histogram;
pub mod lease;
pub mod logging;
pub mod mvcc;
pub mod peer;
pub mod proto;
pub mod server;
pub mod snap;
pub mod tls;
pub mod wal;
pub mod watch;

pub use error::{Error, Result};
