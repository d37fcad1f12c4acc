//! mini-etcd: a distributed, consistent key-value store that speaks etcd's v3 API.
pub mod error;
pub mod watch;

pub use error::{Error, Result};
