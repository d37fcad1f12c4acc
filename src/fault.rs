//! Test-only fault switches: make a core thread panic, or a disk write fail as on a full disk, so that
//! tests can check what such a failure does to the member (it must stop, with a non-zero exit, never
//! serve on half alive, and lose nothing it acknowledged).
//!
//! Each is off unless the environment names a file when the process starts:
//!
//! - `MINI_ETCD_TEST_PANIC_FILE`: each core thread, at its [`panic_point`], panics if the file holds
//!   that thread's name (`raft`, `backend-commit` or `compaction`).
//! - `MINI_ETCD_TEST_DISK_FULL_FILE`: a WAL append or a backend commit, at its [`disk_full_point`],
//!   fails with `ENOSPC` before writing anything if the file holds `wal` or `backend`.
//!
//! Unset, a point costs one atomic load.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The environment variable naming the panic switch file.
pub const PANIC_FILE_ENV: &str = "MINI_ETCD_TEST_PANIC_FILE";
/// The environment variable naming the disk-full switch file.
pub const DISK_FULL_FILE_ENV: &str = "MINI_ETCD_TEST_DISK_FULL_FILE";

/// Panics if the panic switch file names `thread`.
pub fn panic_point(thread: &str) {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    if switched(&FILE, PANIC_FILE_ENV, thread) {
        panic!("test fault: the {thread} thread panics ({PANIC_FILE_ENV})");
    }
}

/// `ENOSPC` if the disk-full switch file names `what` (`wal` or `backend`).
pub fn disk_full_point(what: &str) -> std::io::Result<()> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    if switched(&FILE, DISK_FULL_FILE_ENV, what) {
        return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
    }
    Ok(())
}

fn switched(file: &OnceLock<Option<PathBuf>>, env: &str, name: &str) -> bool {
    let Some(file) = file.get_or_init(|| std::env::var_os(env).map(PathBuf::from)) else {
        return false;
    };
    std::fs::read_to_string(file).is_ok_and(|named| named.trim() == name)
}
