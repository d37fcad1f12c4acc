//! A real etcd 3.4 server beside mini-etcd, for the suites that compare the two or connect them
//! (`mirror`, `compat_fields`, `snapshot_etcd`). It is `/usr/bin/etcd`, or `COMPAT_REFERENCE_ETCD`; a missing etcd
//! fails the test (`apt-get install -y etcd-server`; scripts/test does it), it is never skipped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

/// Path of the etcd server: `COMPAT_REFERENCE_ETCD` if set, else `/usr/bin/etcd`.
pub fn etcd_path() -> PathBuf {
    let path = PathBuf::from(common::reference_etcd().unwrap_or_else(|| "/usr/bin/etcd".into()));
    assert!(
        path.is_file(),
        "{} not found: install etcd 3.4's server (`apt-get install -y etcd-server`; scripts/test \
         does it); this suite must not be skipped",
        path.display()
    );
    path
}

/// A real etcd on loopback ports with its own data directory; killed (SIGKILL) and reaped on
/// drop, panics included.
pub struct Etcd {
    /// The etcd process; `None` once reaped.
    pub child: Option<Child>,
    /// Its log, and its data unless [`EtcdOptions::data_dir`] put them elsewhere.
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`, its client URL.
    pub url: String,
}

/// What an [`Etcd`] is started with beyond the defaults: a single member named `default` whose
/// data lives in the [`Etcd::dir`] it owns, on fresh loopback ports.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `--data-dir`, when the caller owns the data (a directory `etcdctl snapshot restore` built,
    /// say); by default `data` inside [`Etcd::dir`].
    pub data_dir: Option<PathBuf>,
    /// `--name`; by default `default`. It names the member in `--initial-cluster`.
    pub name: Option<String>,
    /// The peer URL (`--listen-peer-urls`, `--initial-advertise-peer-urls`, `--initial-cluster`),
    /// when the data directory already names it (a restored one does). It is kept across the
    /// retries on a port collision; by default a free port is chosen anew for every attempt.
    pub peer_url: Option<String>,
    /// More flags (`--max-request-bytes=2048`, say).
    pub extra: Vec<String>,
}

impl Etcd {
    /// Starts etcd and waits (bounded) until `/health` answers 200.
    pub async fn start() -> Etcd {
        Etcd::start_opts(EtcdOptions::default()).await
    }

    /// [`Etcd::start`] with `extra` flags (`--max-request-bytes=2048`, say).
    pub async fn start_with(extra: &[&str]) -> Etcd {
        Etcd::start_opts(EtcdOptions {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ..EtcdOptions::default()
        })
        .await
    }

    /// [`Etcd::start`] as `opts` say.
    pub async fn start_opts(opts: EtcdOptions) -> Etcd {
        // A port chosen free may be taken before etcd binds it (by a process of a test running
        // beside this one): start again on fresh ports, a bounded number of times. etcd binds its
        // ports before it touches the data directory, so a given one is still as it was.
        for _ in 0..common::PORT_RETRIES {
            let mut etcd = Etcd::spawn(&opts);
            match etcd.wait_healthy().await {
                Ok(()) => return etcd,
                Err(log)
                    if log.contains(common::ADDR_IN_USE)
                        || log.contains("bind: address already in use") =>
                {
                    continue
                }
                Err(log) => panic!("etcd exited at start; log:\n{log}"),
            }
        }
        let mut etcd = Etcd::spawn(&opts);
        if let Err(log) = etcd.wait_healthy().await {
            panic!("etcd exited at start; log:\n{log}");
        }
        etcd
    }

    fn spawn(opts: &EtcdOptions) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir for etcd");
        let ports = common::free_ports(2);
        let url = format!("http://127.0.0.1:{}", ports[0]);
        let peer = opts
            .peer_url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", ports[1]));
        let name = opts.name.as_deref().unwrap_or("default");
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new(etcd_path())
            .arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={name}={peer}"))
            .args(&opts.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        Etcd {
            child: Some(child),
            dir,
            url,
        }
    }

    /// An `etcd-client` connected to this etcd.
    pub async fn client(&self) -> etcd_client::Client {
        super::connect_url(&self.url, || self.log()).await
    }

    /// Waits (bounded) for `/health` to answer 200; `Err` with the log if etcd exited.
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("reqwest client");
        let deadline = Instant::now() + common::START_BOUND;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("(exit {status})\n{}", self.log()));
            }
            if let Ok(resp) = http.get(format!("{}/health", self.url)).send().await {
                if resp.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {:?}; log:\n{}",
                common::START_BOUND,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tail of etcd's log, for failure messages.
    pub fn log(&self) -> String {
        common::tail(&common::read_log(&self.dir.path().join("etcd.log")), 6000)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("---- etcd log ----\n{}", self.log());
            }
        }
    }
}
