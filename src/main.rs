//! `mini-etcd`: command line -> configuration -> server start, and the `repair`, `bench` and
//! `snapshot` subcommands.

use std::process::ExitCode;

/// mimalloc: the request path allocates many small, short-lived buffers (HTTP/2 frames, protobuf
/// messages); glibc's malloc showed up as ~10% of server CPU under load, mimalloc handles this pattern
/// with thread-local free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use mini_etcd::config::{Cli, Command, Config, SnapshotCommand};
use mini_etcd::server::raft_loop::LoopPlace;
use mini_etcd::server::Server;

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    let logging = mini_etcd::logging::Format::parse(&cli.server.log_format).and_then(|format| {
        Ok((
            format,
            mini_etcd::logging::Outputs::parse(&cli.server.log_outputs)?,
        ))
    });
    match logging {
        Ok((format, outputs)) => mini_etcd::logging::init(&cli.server.log_level, format, outputs),
        Err(e) => {
            eprintln!("mini-etcd: {e}");
            return ExitCode::from(2);
        }
    }

    raise_open_file_limit();

    if let Some(Command::Bench(args)) = &cli.command {
        return mini_etcd::bench::main(args);
    }
    if let Some(Command::Plot(args)) = &cli.command {
        return mini_etcd::bench::plot::main(args);
    }
    if let Some(Command::Snapshot { command }) = &cli.command {
        return snapshot_command(command);
    }
    if let Some(Command::Repair { data_dir }) = cli.command {
        let wal_dir = data_dir.join("member").join("wal");
        return match mini_etcd::wal::repair(&wal_dir) {
            Ok(Some(r)) => {
                println!(
                    "repaired {}: cut at byte offset {} ({}), {} bytes dropped; damaged copies kept: {}",
                    r.file.display(),
                    r.offset,
                    r.reason,
                    r.bytes_dropped,
                    r.broken_copies
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                ExitCode::SUCCESS
            }
            Ok(None) => {
                println!("the WAL in {} needs no repair", wal_dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mini-etcd repair: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let config = match Config::from_args(cli.server) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mini-etcd: {e}");
            return ExitCode::from(2);
        }
    };
    let workers = match worker_threads(&config) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("mini-etcd: {e}");
            return ExitCode::from(2);
        }
    };
    // A member with peers and a single worker runs on that one thread, its Raft loop included
    // (`raft_loop`, "Where a turn runs"): a current-thread runtime, with the loop in a `LocalSet`.
    let place = if workers == 1 && config.initial_cluster.len() > 1 {
        LoopPlace::ServerThread
    } else {
        LoopPlace::OwnThread
    };
    let built = match place {
        LoopPlace::ServerThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        LoopPlace::OwnThread => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .worker_threads(workers)
            .build(),
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mini-etcd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(?place, "Raft loop placed");
    let ran = match place {
        LoopPlace::ServerThread => {
            tokio::task::LocalSet::new().block_on(&runtime, run(config, place))
        }
        LoopPlace::OwnThread => runtime.block_on(run(config, place)),
    };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        // As etcd: a member the cluster removed says so and exits 0; its data dir must go.
        Err(e) if e.to_string().contains(mini_etcd::peer::REMOVED) => {
            tracing::warn!("{e}; the data directory used by this member must be removed");
            eprintln!("mini-etcd: {e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("mini-etcd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The server runtime's worker threads: `TOKIO_WORKER_THREADS` when set (a positive whole number,
/// as tokio reads it), else the CPUs divided among the members of `--initial-cluster` that share
/// this machine (`Config::worker_threads`).
fn worker_threads(config: &Config) -> Result<usize, String> {
    if let Some(v) = std::env::var_os("TOKIO_WORKER_THREADS") {
        return match v.to_str().and_then(|s| s.trim().parse::<usize>().ok()) {
            Some(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "TOKIO_WORKER_THREADS must be a positive whole number, not {v:?}"
            )),
        };
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = config.worker_threads(cpus);
    tracing::info!(
        workers,
        cpus,
        members_on_this_host = config.members_on_this_host(),
        "runtime worker threads: the CPUs divided among the members on this machine \
         (TOKIO_WORKER_THREADS overrides)"
    );
    Ok(workers)
}

/// `mini-etcd snapshot status|restore`: etcdctl's output and exit codes.
fn snapshot_command(command: &SnapshotCommand) -> ExitCode {
    use mini_etcd::snap::{etcd_format, restore};
    match command {
        SnapshotCommand::Status { file, write_out } => match etcd_format::status(file) {
            Ok(st) => {
                let text = match write_out.as_str() {
                    "json" => st.json(),
                    "table" => st.table(),
                    _ => st.simple(),
                };
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::FAILURE
            }
        },
        SnapshotCommand::Restore(args) => {
            let run = || -> mini_etcd::Result<_> {
                let config = args.config()?;
                let opts = restore::RestoreOptions {
                    snapshot: args.file.clone(),
                    data_dir: config.data_dir.clone(),
                    skip_hash_check: args.skip_hash_check,
                    members: mini_etcd::server::membership::Membership::bootstrap(&config),
                };
                let mut bar = Progress::new();
                // The WAL is written in the staging directory, so the restore stays all or nothing.
                let mut finish = |staging: &std::path::Path| {
                    let mut at = config.clone();
                    at.data_dir = staging.to_path_buf();
                    mini_etcd::server::bootstrap_restored(&at)
                };
                let imported =
                    restore::restore(&opts, &mut |done, total| bar.show(done, total), &mut finish)?;
                bar.done();
                Ok((opts.data_dir, imported))
            };
            match run() {
                Ok((dir, imported)) => {
                    println!(
                        "restored snapshot to {}: revision {}, {} revisions, compacted at {}, {} leases, consistent index {}",
                        dir.display(),
                        imported.revision,
                        imported.revisions,
                        imported.compact_revision,
                        imported.leases,
                        imported.consistent_index
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("Error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// A one-line progress bar on stderr, drawn only when stderr is a terminal (a log or a pipe gets
/// nothing), redrawn only when the percentage changes.
struct Progress {
    /// Whether stderr is a terminal.
    tty: bool,
    /// The last percentage drawn.
    last: Option<u64>,
}

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal;
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn show(&mut self, done: u64, total: u64) {
        if !self.tty || total == 0 {
            return;
        }
        let pct = (done.min(total) * 100) / total;
        if self.last == Some(pct) {
            return;
        }
        self.last = Some(pct);
        let filled = (pct / 4) as usize;
        eprint!(
            "\rrestoring [{}{}] {pct:>3}%",
            "#".repeat(filled),
            " ".repeat(25 - filled)
        );
    }

    fn done(&self) {
        if self.tty && self.last.is_some() {
            eprintln!();
        }
    }
}

async fn run(config: Config, place: LoopPlace) -> mini_etcd::Result<()> {
    // The peer port listens before the server starts: a member joining a cluster, or the other
    // members of a bootstrap, must reach it while it waits for them.
    let peer_tls = mini_etcd::tls::peer_server(&config)?;
    let mut peer_listeners = Vec::new();
    for url in &config.listen_peer_urls {
        let addr = Config::socket_addr(url)?;
        let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            mini_etcd::Error::InvalidArgument(format!(
                "cannot listen on {addr} (--listen-peer-urls): {e}"
            ))
        })?;
        // An `http://` URL beside `https://` ones is served plain, as etcd does.
        let tls = (url.scheme() == "https")
            .then(|| peer_tls.clone())
            .flatten();
        peer_listeners.push((l, tls));
    }
    let server = Server::start_with(config, place).await?;
    let (peers_stop_tx, peers_stop_rx) = tokio::sync::watch::channel(false);
    for (l, tls) in peer_listeners {
        let mut stop = peers_stop_rx.clone();
        tokio::spawn(server.clone().serve_peers(l, tls, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    release_freed_memory();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = server.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown_signal() => tracing::info!("shutting down"),
            why = watcher.fatal() => tracing::error!(%why, "stopping after a fatal error"),
        }
        let _ = stop_tx.send(());
    });
    let serving = mini_etcd::api::serve(server.clone(), async {
        let _ = stop_rx.await;
    })
    .await;
    let _ = peers_stop_tx.send(true);
    let stopped = server.shutdown().await;
    serving?;
    stopped?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Start-up (reading the WAL, rebuilding the key index) frees much more than the server then holds:
/// about 100 MB for a million keys. mimalloc hands freed memory back to the OS only after a delay, and
/// checks that delay on later allocations, which an idle server does not make; so the resident size
/// would stay at the start-up peak. Forcing a collection once returns it.
fn release_freed_memory() {
    // mimalloc's C API, linked in with the allocator (the `mimalloc` crate does not wrap this call).
    extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: mi_collect takes no pointers; it walks mimalloc's own structures and may be called from
    // any thread at any time.
    unsafe { mi_collect(true) }
}

/// Raises the soft open-file limit to the hard one, as Go (and so etcd) does at start: a soft limit
/// of 256 or 1024 runs out under a few hundred idle clients. Not fatal if refused.
fn raise_open_file_limit() {
    match mini_etcd::fdlimit::raise_to_hard() {
        Ok((before, after)) if before != after => {
            tracing::info!(
                before,
                after,
                "raised the open-file soft limit to the hard limit"
            )
        }
        Ok((_, after)) => tracing::debug!(
            limit = after,
            "open-file soft limit already at the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file soft limit"),
    }
}

/// Turns transparent huge pages off for this process, as Redis and MongoDB advise for theirs.
/// mimalloc marks its arenas `MADV_HUGEPAGE`, so where the system allows THP on request (Debian's
/// default, `madvise`) a page touched for a few KiB becomes 2 MiB: resident whole and zeroed whole on
/// every fault after a purge. Under watch saturation that was ~10% of the server's CPU (in
/// `clear_page_erms`) and 40-60 MB of its peak resident size. Not fatal if refused.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag on this process.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            eprintln!(
                "mini-etcd: could not turn transparent huge pages off: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
