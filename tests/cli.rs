//! The command line: etcd's flag names, their `ETCD_*` environment variables, and clear errors.

use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mini-etcd"));
    cmd.args(args).current_dir(dir.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run mini-etcd")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_names_etcds_flags() {
    let o = run(&["--help"], &[]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--name",
        "--data-dir",
        "--listen-client-urls",
        "--advertise-client-urls",
        "--listen-peer-urls",
        "--initial-advertise-peer-urls",
        "--initial-cluster",
        "--initial-cluster-state",
        "--snapshot-count",
        "--max-request-bytes",
        "--quota-backend-bytes",
        "--listen-rest-url",
        "--auto-compaction-mode",
        "--auto-compaction-retention",
        "--max-txn-ops",
    ] {
        assert!(
            text.contains(flag),
            "--help does not mention {flag}:\n{text}"
        );
    }
    assert!(
        text.contains("ETCD_DATA_DIR"),
        "--help names the environment variables"
    );
}

#[test]
fn unknown_flag_is_an_error() {
    let o = run(&["--no-such-flag"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--no-such-flag"), "{}", stderr(&o));
}

#[test]
fn bad_url_is_an_error_naming_the_flag() {
    let o = run(&["--listen-rest-url", "not-a-url"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--listen-rest-url"), "{}", stderr(&o));
}

#[test]
fn environment_variables_are_read_like_etcds() {
    // The bad value can only have come from the environment.
    let o = run(&[], &[("ETCD_LISTEN_CLIENT_URLS", "ftp://127.0.0.1:1")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--listen-client-urls"),
        "{}",
        stderr(&o)
    );
    let o = run(&[], &[("ETCD_SNAPSHOT_COUNT", "zero")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("snapshot-count"), "{}", stderr(&o));
}

#[test]
fn flags_win_over_the_environment() {
    // The flag's bad value is reported although the environment holds a good one.
    let o = run(
        &["--listen-rest-url", "bogus"],
        &[("ETCD_LISTEN_REST_URL", "http://127.0.0.1:1")],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bogus"), "{}", stderr(&o));
}
