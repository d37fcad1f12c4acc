//! mini-etcd: a distributed, consistent key-value store that speaks etcd's v3 API.
pub mod error;
pub mod proto;

pub use error::{Error, Result};
