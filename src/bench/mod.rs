//! `mini-etcd bench`: a load generator for any etcd v3 endpoint, ours or etcd's.
//!
//! It speaks only the public gRPC API (the generated tonic clients over plain HTTP/2), so the same
//! command measures mini-etcd and real etcd side by side. Flags carry the names of etcd's own
//! `benchmark` tool where the concept matches (`--endpoints`, `--conns`, `--clients`, `--total`,
//! `--key-size`, `--val-size`, `--key-space-size`, `--sequential-keys`, `--consistency`, `--rate`).
//!
//! # How a run works
//!
//! `--conns` HTTP/2 connections are opened (round-robin over `--endpoints`), and `--clients` tasks
//! share them (client `i` uses connection `i mod conns`). Each client loops: claim the next request
//! number from a shared counter, wait for its slot if `--rate` caps the load (request `n` is due at
//! `start + n / rate`, so the cap holds over the whole run, not per client), send, wait for the answer,
//! record the latency. Every client stops when `--total` requests are claimed or the overall
//! `--timeout` passes, so every loop is bounded. Errors are counted by their text, not retried.
//!
//! Workloads:
//!
//! - `put`: a put of a `--key-size` key chosen in the key space with a `--val-size` value.
//! - `range`: a get of one key (key number 0, written once before the run), linearizable or
//!   serializable per `--consistency`.
//! - `txn-put`: a transaction with no compares and one put in its success branch.
//! - `txn-range`: a read-only transaction: one compare (key number 0 exists) and a get of that key in
//!   its success branch. etcd and mini-etcd serve it without a Raft round.
//! - `watch`: `--watchers` watchers on one key, over `--streams` gRPC watch streams; `--total` puts to
//!   that key, one at a time at `--put-rate`. The latency is from the put's acknowledgement to the
//!   event's arrival (clamped at zero: an event may arrive before the put's answer), and events that
//!   never arrive within a grace period after the last put are counted as lost.
//! - `lease-keepalive`: each client grants a lease, then sends keepalives on its own keepalive stream,
//!   one at a time; the leases are revoked afterwards.
//!
//! Setup (connecting, the seeding put, lease grants, watch creation) is not measured.
//!
//! Every answer is kept as a sample (when it arrived, how long it took): `--plot FILE.svg` draws the
//! run and `--samples FILE.json` saves it for `mini-etcd plot` (see [`plot`]).
//!
//! # Left out
//!
//! TLS and authentication, etcd's `--target-leader` (there is one member here), mixed workloads,
//! and coordinated-omission correction under `--rate` (latency is measured from the actual send).

mod keys;
pub mod plot;
mod report;
mod run;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tonic::transport::{Channel, Endpoint};

pub use keys::{KeyGen, Rng};
pub use report::{Latency, Summary, WatchStats};

/// What the load does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Puts of random (or sequential) keys.
    Put,
    /// Gets of one key.
    Range,
    /// Transactions with one put.
    TxnPut,
    /// Read-only transactions: a compare and a get of one key.
    TxnRange,
    /// Watchers on one key, fed by puts: event latency and lost events.
    Watch,
    /// Lease keepalives, one lease per client.
    LeaseKeepalive,
}

impl Workload {
    /// The workload's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range => "range",
            Workload::TxnPut => "txn-put",
            Workload::TxnRange => "txn-range",
            Workload::Watch => "watch",
            Workload::LeaseKeepalive => "lease-keepalive",
        }
    }
}

/// `--consistency` of range requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable: the read goes through the leader's read index.
    L,
    /// Serializable: the member answers from its local state.
    S,
}

/// Flags of `mini-etcd bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The workload (also accepted as `--workload`).
    #[arg(value_enum, conflicts_with = "workload_flag")]
    pub workload: Option<Workload>,
    /// The workload, as a flag [default: put].
    #[arg(long = "workload", value_enum, value_name = "WORKLOAD")]
    pub workload_flag: Option<Workload>,
    /// Comma-separated gRPC endpoints; connections are spread over them round-robin.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub endpoints: String,
    /// Number of gRPC (HTTP/2) connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,
    /// Number of concurrent clients, spread over the connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// Number of requests (puts for `watch`, keepalives for `lease-keepalive`).
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of distinct keys the requests pick from.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Request `n` uses key `n mod key-space-size` instead of a random key.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Range consistency: `l` (linearizable) or `s` (serializable).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Cap on requests per second over all clients (none if absent).
    #[arg(long)]
    pub rate: Option<f64>,
    /// `watch`: number of watchers on the key.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub watchers: u32,
    /// `watch`: number of gRPC watch streams the watchers are spread over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub streams: u32,
    /// `watch`: puts per second to the watched key.
    #[arg(long, default_value_t = 100.0)]
    pub put_rate: f64,
    /// Overall limit on the run (setup included): `600`, `30s`, `250ms`, `10m`, `1h`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the summary as JSON on stdout (the readable summary goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Do not draw the progress line on stderr.
    #[arg(long)]
    pub no_progress: bool,
    /// Draw the run as an SVG file: latency percentiles over time and the latency distribution.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
    /// Write every sample (completion time and latency, in ns) as JSON, for `mini-etcd plot`.
    #[arg(long, value_name = "FILE.json")]
    pub samples: Option<std::path::PathBuf>,
    /// The run's name in `--plot` and `--samples` [default: the workload and the endpoints].
    #[arg(long)]
    pub label: Option<String>,
}

impl BenchArgs {
    /// The workload from the positional argument or `--workload`; `put` if neither.
    pub fn workload(&self) -> Workload {
        self.workload
            .or(self.workload_flag)
            .unwrap_or(Workload::Put)
    }

    /// The endpoints as a list.
    pub fn endpoint_list(&self) -> Vec<String> {
        self.endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Checks the flags that clap cannot check alone.
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.endpoint_list().is_empty() {
            return Err(BenchError::Flag("--endpoints is empty".into()));
        }
        KeyGen::new(self.key_size, self.key_space_size, self.sequential_keys)
            .map_err(BenchError::Flag)?;
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(BenchError::Flag("--rate must be a positive number".into()));
            }
        }
        if !(self.put_rate.is_finite() && self.put_rate > 0.0) {
            return Err(BenchError::Flag(
                "--put-rate must be a positive number".into(),
            ));
        }
        Ok(())
    }
}

/// Parses `600`, `600s`, `250ms`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 250ms, 10m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// What can stop a run before it has a summary. Client-side failures, so not the server's
/// [`crate::Error`], whose variants mean etcd's server errors.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag is unusable.
    #[error("{0}")]
    Flag(String),
    /// An endpoint could not be reached.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why, as the transport says it.
        reason: String,
    },
    /// A setup request (the seeding put, a lease grant, a watch create) failed.
    #[error("setup failed: {0}")]
    Setup(String),
    /// `--timeout` passed during setup.
    #[error("--timeout passed during setup")]
    Timeout,
}

/// Entry point of the subcommand: runs the load on a fresh runtime, prints the summary.
pub fn main(args: &BenchArgs) -> ExitCode {
    if let Err(e) = args.validate() {
        eprintln!("mini-etcd bench: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mini-etcd bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let summary = match runtime.block_on(run(args)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mini-etcd bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        eprint!("{}", summary.to_text());
        match serde_json::to_string_pretty(&summary) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("mini-etcd bench: cannot encode the summary: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", summary.to_text());
    }
    if let Err(e) = write_outputs(args, &summary) {
        eprintln!("mini-etcd bench: {e}");
        return ExitCode::FAILURE;
    }
    if summary.ok == 0 && summary.total > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes `--plot` and `--samples`, if asked for.
fn write_outputs(args: &BenchArgs, summary: &Summary) -> Result<(), String> {
    let label = args.label.clone().unwrap_or_else(|| {
        format!(
            "{} {}c against {}",
            summary.workload, summary.clients, args.endpoints
        )
    });
    if let Some(path) = &args.plot {
        let svg = plot::run_chart(&label, &summary.samples).map_err(|e| e.to_string())?;
        std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.samples {
        let file = plot::SampleFile::new(label, &summary.samples);
        let json = serde_json::to_string(&file).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Runs one load as `args` describe and returns its summary.
pub async fn run(args: &BenchArgs) -> Result<Summary, BenchError> {
    args.validate()?;
    let deadline = tokio::time::Instant::now() + args.timeout;
    let channels = tokio::time::timeout_at(deadline, connect(args))
        .await
        .map_err(|_| BenchError::Timeout)??;
    let mut summary = match args.workload() {
        Workload::Watch => watch::run(args, &channels, deadline).await?,
        w => run::run(w, args, &channels, deadline).await?,
    };
    summary.workload = args.workload().name().to_string();
    summary.endpoints = args.endpoint_list();
    summary.conns = channels.len();
    Ok(summary)
}

/// Opens `--conns` HTTP/2 connections, round-robin over the endpoints. Each `connect` is its own TCP
/// connection; clones of a [`Channel`] share it.
async fn connect(args: &BenchArgs) -> Result<Vec<Channel>, BenchError> {
    let endpoints = args.endpoint_list();
    let mut channels = Vec::with_capacity(args.conns as usize);
    for i in 0..args.conns as usize {
        let url = &endpoints[i % endpoints.len()];
        let err = |reason: String| BenchError::Connect {
            endpoint: url.clone(),
            reason,
        };
        let ep = Endpoint::from_shared(url.clone())
            .map_err(|e| err(e.to_string()))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        let ch = ep.connect().await.map_err(|e| err(full_error(&e)))?;
        channels.push(ch);
    }
    Ok(channels)
}

/// An error with its chain of causes, since tonic's transport errors say little on their own.
fn full_error(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A gRPC status as a short text for the error counts: code and message.
fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

#[cfg(test)]
mod tests;
