//! A test-only fault switch: makes one named core thread panic, so that tests can check what a
//! panic there does to the member (it must stop, with a non-zero exit, never serve on half alive).
//!
//! Off unless the environment names a file in `MINI_ETCD_TEST_PANIC_FILE` when the process starts;
//! then each core thread, at its [`panic_point`], panics if the file holds that thread's name
//! (`raft`, `backend-commit` or `compaction`). Unset, a panic point costs one atomic load.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The environment variable naming the switch file.
pub const PANIC_FILE_ENV: &str = "MINI_ETCD_TEST_PANIC_FILE";

/// Panics if the switch file names `thread`.
pub fn panic_point(thread: &str) {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    let Some(file) = FILE.get_or_init(|| std::env::var_os(PANIC_FILE_ENV).map(PathBuf::from))
    else {
        return;
    };
    if std::fs::read_to_string(file).is_ok_and(|named| named.trim() == thread) {
        panic!("test fault: the {thread} thread panics ({PANIC_FILE_ENV})");
    }
}
