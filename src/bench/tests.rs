//! The load generator against an in-process mini-etcd on 127.0.0.1: every request/response workload
//! runs a few hundred requests without an error, and the flags parse as documented.

use std::time::Duration;

use clap::Parser;

use super::*;
use crate::config::{Cli, Command, Config};
use crate::server::Server;

/// `n` distinct free ports: every listener is held until all are chosen, so no port repeats.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

fn bench_args(line: &str) -> BenchArgs {
    let argv = std::iter::once("mini-etcd").chain(line.split_whitespace());
    match Cli::try_parse_from(argv).expect("flags parse").command {
        Some(Command::Bench(a)) => a,
        other => panic!("not a bench command: {other:?}"),
    }
}

#[test]
fn flags_parse_with_etcd_names_and_defaults() {
    let a = bench_args("bench");
    assert_eq!(a.workload(), Workload::Put);
    assert_eq!((a.conns, a.clients, a.total), (1, 1, 10_000));
    assert_eq!((a.key_size, a.val_size, a.key_space_size), (8, 8, 1));
    assert_eq!(a.timeout, Duration::from_secs(600));
    assert_eq!(a.endpoint_list(), vec!["http://127.0.0.1:2379"]);

    let a = bench_args(
        "bench range --consistency s --clients 64 --conns 8 --endpoints http://a:1,http://b:2 --timeout 30s",
    );
    assert_eq!(a.workload(), Workload::Range);
    assert_eq!(a.consistency, Consistency::S);
    assert_eq!(a.endpoint_list().len(), 2);
    assert_eq!(a.timeout, Duration::from_secs(30));
    assert_eq!(
        bench_args("bench --workload txn-put").workload(),
        Workload::TxnPut
    );
    assert_eq!(
        bench_args("bench lease-keepalive").workload(),
        Workload::LeaseKeepalive
    );

    let argv = ["mini-etcd", "bench", "put", "--workload", "range"];
    assert!(Cli::try_parse_from(argv).is_err(), "two workloads conflict");
    assert!(bench_args("bench --key-size 2 --key-space-size 1000")
        .validate()
        .is_err());
    assert!(bench_args("bench --rate 0").validate().is_err());
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert!(parse_duration("10x").is_err());
    assert!(parse_duration("soon").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_run_against_mini_etcd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::with_data_dir(dir.path()).expect("config");
    let ports = free_ports(3);
    let (client, rest, peer) = (ports[0], ports[1], ports[2]);
    let url = |p: u16| url::Url::parse(&format!("http://127.0.0.1:{p}")).expect("url");
    config.listen_client_urls = vec![url(client)];
    config.advertise_client_urls = vec![url(client)];
    config.listen_rest_url = url(rest);
    config.listen_peer_urls = vec![url(peer)];
    let server = Server::start(config).await.expect("server starts");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(crate::api::serve(server.clone(), async {
        let _ = stop_rx.await;
    }));

    // `serve` binds its listeners inside the spawned task: wait (bounded) until the client port takes
    // connections, or the first workload races the bind.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", client))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the client port {client} never accepted a connection"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let endpoint = format!("http://127.0.0.1:{client}");
    for line in [
        "put --clients 4 --conns 2 --total 200 --key-space-size 50 --val-size 64",
        "put --total 50 --sequential-keys --key-space-size 10 --rate 1000",
        "range --clients 4 --total 200",
        "range --clients 4 --total 200 --consistency s",
        "txn-put --clients 4 --conns 2 --total 200 --key-space-size 100",
        "txn-range --clients 4 --conns 2 --total 200",
        "lease-keepalive --clients 3 --total 60",
    ] {
        let args = bench_args(&format!(
            "bench {line} --endpoints {endpoint} --no-progress --timeout 60s"
        ));
        let s = run(&args).await.unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(s.errors, 0, "{line}: {}", s.to_text());
        assert_eq!(s.ok, args.total, "{line}: {}", s.to_text());
        assert_eq!(s.latency_ms.count, args.total);
        assert!(s.latency_ms.p50 <= s.latency_ms.p99 && s.latency_ms.p99 <= s.latency_ms.max);
        assert!(!s.timed_out);
        assert_eq!(
            s.samples.len() as u64,
            s.ok,
            "{line}: one sample per answer"
        );
        let run_ns = (s.duration_s * 1e9) as u64 + 1_000_000;
        assert!(s
            .samples
            .iter()
            .all(|x| x.at_ns <= run_ns && x.latency_ns <= x.at_ns + 1_000_000));
    }

    // --plot and --samples write their files; `mini-etcd plot latency` reads the samples back.
    let out = tempfile::tempdir().expect("tempdir");
    let (svg, json) = (out.path().join("run.svg"), out.path().join("run.json"));
    let args = bench_args(&format!(
        "bench put --total 100 --endpoints {endpoint} --no-progress --label first --plot {} --samples {}",
        svg.display(),
        json.display()
    ));
    let s = run(&args).await.expect("runs");
    super::write_outputs(&args, &s).expect("outputs written");
    let drawn = std::fs::read_to_string(&svg).expect("svg written");
    assert!(drawn.starts_with("<svg") && drawn.contains("first"));
    let dist = out.path().join("dist.svg");
    let plot: crate::config::Cli = clap::Parser::try_parse_from([
        "mini-etcd",
        "plot",
        "latency",
        json.to_str().expect("utf-8 path"),
        "--out",
        dist.to_str().expect("utf-8 path"),
    ])
    .expect("plot flags parse");
    let Some(crate::config::Command::Plot(plot)) = plot.command else {
        panic!("not the plot subcommand");
    };
    assert_eq!(super::plot::main(&plot), std::process::ExitCode::SUCCESS);
    assert!(std::fs::read_to_string(&dist)
        .expect("dist written")
        .contains("first (p99"));

    // The timeout bounds the run: 1000 requests at 10/s cannot finish in 300 ms.
    let args = bench_args(&format!(
        "bench put --total 1000 --rate 10 --endpoints {endpoint} --no-progress --timeout 300ms"
    ));
    let s = run(&args).await.expect("runs");
    assert!(s.timed_out && s.ok < 10, "{}", s.to_text());

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_connect_error() {
    let args = bench_args(&format!(
        "bench put --endpoints http://127.0.0.1:{} --no-progress --timeout 10s",
        free_ports(1)[0]
    ));
    match run(&args).await {
        Err(BenchError::Connect { .. }) => {}
        other => panic!("expected a connect error, got {other:?}"),
    }
}
