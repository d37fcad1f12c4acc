//! Multi-version storage (placeholder essay; see below).
pub mod backend;
pub mod key_index;
pub mod kv;
pub mod revision;
