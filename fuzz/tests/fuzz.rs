//! One test per fuzz target; `fuzz/README.md` has the commands and settings.

use mini_etcd_fuzz::harness::fuzz;
use mini_etcd_fuzz::targets::target;

#[test]
fn wal_record() {
    fuzz(target("wal_record"));
}

#[test]
fn wal_segment() {
    fuzz(target("wal_segment"));
}

#[test]
fn rest() {
    fuzz(target("rest"));
}

#[test]
fn gateway() {
    fuzz(target("gateway"));
}

#[test]
fn proto() {
    fuzz(target("proto"));
}
