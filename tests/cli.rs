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
fn a_bad_worker_thread_count_is_an_error_naming_the_variable() {
    for bad in ["0", "two", "-1"] {
        let o = run(&[], &[("TOKIO_WORKER_THREADS", bad)]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("TOKIO_WORKER_THREADS must be a positive whole number"),
            "{bad}: {}",
            stderr(&o)
        );
    }
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

/// A start that logs a few lines, then fails (its REST port is taken); returns its stderr.
fn failed_start_log(extra: &[&str]) -> String {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let rest = format!("http://{}", taken.local_addr().expect("addr"));
    let mut args = vec![
        "--listen-rest-url",
        &rest,
        "--listen-client-urls",
        "http://127.0.0.1:0",
        "--listen-peer-urls",
        "http://127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let o = run(&args, &[]);
    assert!(
        !o.status.success(),
        "started on a taken port: {}",
        stderr(&o)
    );
    stderr(&o)
}

#[test]
fn logs_are_json_lines_by_default_and_text_without_colour_off_a_terminal() {
    let json = failed_start_log(&[]);
    let first = json.lines().next().expect("a log line");
    let line: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("not a JSON line ({e}): {first}"));
    assert_eq!(line["level"], "INFO", "{first}");
    assert!(line["message"].is_string(), "{first}");

    let text = failed_start_log(&["--log-format", "text"]);
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in a log that is not a terminal:\n{text}"
    );
    assert!(serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap_or("")).is_err());
}

#[test]
fn log_outputs_write_every_line_to_each_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let outputs = format!("{},{}", a.display(), b.display());
    let stderr_text = failed_start_log(&["--log-outputs", &outputs]);
    let a_text = std::fs::read_to_string(&a).expect("first log file");
    assert!(a_text.contains("backend opened"), "{a_text}");
    assert_eq!(
        a_text,
        std::fs::read_to_string(&b).expect("second log file")
    );
    assert!(!stderr_text.contains("backend opened"), "{stderr_text}");
    let o = run(&["--log-outputs", "/no/such/dir/x.log"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--log-outputs"), "{}", stderr(&o));
    let o = run(&["--log-format", "xml"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--log-format"), "{}", stderr(&o));
}
