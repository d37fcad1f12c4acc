//! Fuzz targets for mini-etcd (see `fuzz/README.md`): the harness, the targets, and the server
//! the request targets talk to in process.

pub mod harness;
pub mod server;
pub mod targets;
