//! Command line and environment: everything a server start needs, validated before anything opens.
//!
//! Flag names are etcd's where the concept matches (`--name`, `--data-dir`, `--listen-client-urls`, ...)
//! and each flag can also come from the environment variable etcd would read (`ETCD_NAME`,
//! `ETCD_DATA_DIR`, ...), so an etcd operator's scripts and unit files carry over. Flags win over the
//! environment. Ours alone: `--listen-rest-url` (the seed's REST API) and the `repair`, `bench` and
//! `snapshot` subcommands (the last is etcdctl's `snapshot status` and `snapshot restore`).
//!
//! Some flags only matter once later pieces land (peers, quotas); they are accepted and validated now so
//! that a command line written today keeps working.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use url::Url;

use crate::error::{Error, Result};

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's default `--snapshot-count`.
pub const DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;
/// etcd's default `--experimental-snapshot-catchup-entries`.
pub const DEFAULT_SNAPSHOT_CATCHUP_ENTRIES: u64 = 5_000;

/// The `mini-etcd` command line.
#[derive(Debug, Parser)]
#[command(
    name = "mini-etcd",
    version,
    about = "A distributed, consistent key-value store that speaks etcd's v3 API"
)]
pub struct Cli {
    /// A subcommand; without one, the server starts.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server flags (used when no subcommand is given).
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Subcommands beside the server itself.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Repair a write-ahead log that fails its checksum: keeps a `.broken` copy of the damaged segment,
    /// cuts the log at the first bad record (everything from that record on is lost) and exits.
    Repair {
        /// The data directory whose WAL to repair.
        #[arg(long, env = "ETCD_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Load an etcd v3 endpoint (mini-etcd or etcd) and report throughput and latency.
    Bench(crate::bench::BenchArgs),
    /// Draw charts (SVG) from saved benchmark runs.
    Plot(crate::bench::plot::PlotArgs),
    /// Snapshot files in etcd's format: `status` and `restore`, as `etcdctl snapshot` has them.
    Snapshot {
        /// What to do with the file.
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

/// `mini-etcd snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Print a snapshot's hash, revision, total keys and total size, as `etcdctl snapshot status`.
    Status {
        /// The snapshot file (etcd's or ours).
        file: PathBuf,
        /// Output format: simple, json or table.
        #[arg(short = 'w', long = "write-out", default_value = "simple", value_parser = ["simple", "json", "table"])]
        write_out: String,
    },
    /// Build a new data directory from a snapshot (etcd's or ours), as `etcdctl snapshot restore`.
    Restore(RestoreArgs),
}

/// Flags of `mini-etcd snapshot restore`. The cluster flags mean what they mean to the server (and
/// default as they do there): the restored member's membership is the one a server started with
/// the same flags bootstraps.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// The data directory to create; it must not exist [default: ./NAME.mini-etcd].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The restored member's name.
    #[arg(long)]
    pub name: Option<String>,
    /// The cluster the restored member belongs to: `name1=url1,name2=url2`.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// The cluster token (mixed into member and cluster ids).
    #[arg(long)]
    pub initial_cluster_token: Option<String>,
    /// The restored member's peer URLs.
    #[arg(long)]
    pub initial_advertise_peer_urls: Option<String>,
    /// Restore a file without a SHA-256 trailer (a copied backend file).
    #[arg(long)]
    pub skip_hash_check: bool,
}

impl RestoreArgs {
    /// The server configuration these flags describe (everything else at its default).
    pub fn config(&self) -> Result<Config> {
        let mut argv: Vec<std::ffi::OsString> = vec!["mini-etcd".into()];
        let mut flag = |name: &str, value: Option<std::ffi::OsString>| {
            if let Some(v) = value {
                argv.push(format!("--{name}").into());
                argv.push(v);
            }
        };
        flag("data-dir", self.data_dir.clone().map(Into::into));
        flag("name", self.name.clone().map(Into::into));
        flag(
            "initial-cluster",
            self.initial_cluster.clone().map(Into::into),
        );
        flag(
            "initial-cluster-token",
            self.initial_cluster_token.clone().map(Into::into),
        );
        flag(
            "initial-advertise-peer-urls",
            self.initial_advertise_peer_urls.clone().map(Into::into),
        );
        let cli = Cli::try_parse_from(argv).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Config::from_args(cli.server)
    }
}

/// Flags of the server. Each one can also be set by the `ETCD_*` environment variable etcd uses.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory [default: ./NAME.mini-etcd].
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated URLs to listen on for client traffic (the etcd v3 gRPC API).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,
    /// Comma-separated client URLs to advertise to the rest of the cluster and to clients.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub advertise_client_urls: String,
    /// Comma-separated URLs to listen on for peer (Raft) traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,
    /// Comma-separated peer URLs of this member to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping: `name1=url1,name2=url2`
    /// [default: NAME=INITIAL_ADVERTISE_PEER_URLS].
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state: `new` or `existing`.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Initial cluster token, mixed into the cluster id so separate clusters never mistake each other.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval: how often a leader tells followers it is alive.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to time out: a follower that hears nothing from a
    /// leader for this long starts an election.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Whether a starting member fast-forwards its election clock once its peers are connected,
    /// so that the first election takes a few heartbeats rather than a whole election timeout.
    #[arg(long, env = "ETCD_INITIAL_ELECTION_TICK_ADVANCE", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub initial_election_tick_advance: bool,
    /// Ours on by default (etcd's is off): the leader records leases' remaining TTLs through Raft
    /// every --experimental-lease-checkpoint-interval, so that a new leader does not give every
    /// lease its full TTL again.
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub experimental_enable_lease_checkpoint: bool,
    /// How often the leader checkpoints leases' remaining TTLs (`5m`, `30s`, `500ms`).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL",
        default_value = "5m"
    )]
    pub experimental_lease_checkpoint_interval: String,
    /// Number of applied Raft entries after which the applied state becomes a snapshot and older WAL
    /// segments are released.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = DEFAULT_SNAPSHOT_COUNT, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_count: u64,
    /// Number of applied Raft entries kept in memory up to the applied index, for a slow follower to
    /// catch up from; older ones stay only in the WAL, until a snapshot releases them.
    #[arg(long, env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES", default_value_t = DEFAULT_SNAPSHOT_CATCHUP_ENTRIES, value_parser = clap::value_parser!(u64).range(1..))]
    pub experimental_snapshot_catchup_entries: u64,
    /// Ours (etcd has no such flag): how many ranges of more than 10,000 records build their
    /// responses at once; the others wait. Bounds the memory of many clients listing everything.
    #[arg(long, env = "ETCD_EXPERIMENTAL_MAX_LARGE_RANGES", default_value_t = crate::mvcc::store::DEFAULT_LARGE_READS, value_parser = clap::value_parser!(usize))]
    pub experimental_max_large_ranges: usize,
    /// Ours (etcd has no such flag): a Raft turn runs on the connection's thread that proposed its
    /// entries, rather than handing them to the Raft thread, while recent turns took less than this on
    /// average (`100us`, `1ms`, ...; `0` keeps every turn on the Raft thread). Storage whose fsync
    /// takes longer keeps the hand-off, so a slow sync never holds up other connections.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_INLINE_TURN_LIMIT",
        default_value = "100us"
    )]
    pub experimental_inline_turn_limit: String,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Maximum concurrent streams (gRPC calls) that each client connection can open at a time
    /// (etcd's default: no limit, 2^32 - 1).
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,
    /// Ours (etcd has no such limit): most watches one Watch stream may hold at a time; a create
    /// beyond it is refused (created and canceled, with a reason), the stream goes on.
    #[arg(long, env = "ETCD_MAX_WATCHES_PER_STREAM", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watches_per_stream: u32,
    /// Ours: most REST watches (long-polls and event streams) one client address may hold open at
    /// once; one more is answered 429.
    #[arg(long, env = "ETCD_MAX_REST_WATCHES_PER_CLIENT", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_rest_watches_per_client: u32,
    /// Most open client connections, on every --listen-client-urls and --listen-rest-url together
    /// (ours; etcd has no such flag). Beyond it a new connection waits in the listen queue until
    /// one closes. The REST listener may open 16 more (its reserve), so `/health` there answers when
    /// the client ports are full. 0: the open-file limit less a reserve for the rest of the server
    /// (256 descriptors, or half the limit when that is lower).
    #[arg(long, env = "ETCD_MAX_CLIENT_CONNECTIONS", default_value_t = 0)]
    pub max_client_connections: usize,
    /// Ours (etcd has no such flag): a client connection must send the first bytes of its
    /// protocol, and each HTTP/1 request head, within this long, or it is closed. It also closes an
    /// HTTP/1 keep-alive connection idle for this long. `0` disables it.
    #[arg(long, env = "ETCD_HTTP_READ_HEADER_TIMEOUT", default_value = "30s")]
    pub http_read_header_timeout: String,
    /// Minimum duration a client should wait before pinging the server (etcd's flag; accepted and
    /// checked, not enforced: the HTTP/2 server answers every ping).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_MIN_TIME", default_value = "5s")]
    pub grpc_keepalive_min_time: String,
    /// How often the server pings an HTTP/2 client connection to check it is alive (`0`: never).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_INTERVAL", default_value = "2h")]
    pub grpc_keepalive_interval: String,
    /// How long the server waits for a ping's answer before it closes the connection.
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s")]
    pub grpc_keepalive_timeout: String,
    /// Interpretation of --auto-compaction-retention: `periodic` (a duration) or `revision` (a count).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Auto compaction retention: for periodic a duration (`1h`, `30m`, or a number of hours), for
    /// revision a number of revisions. 0 disables auto compaction.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// The kind of auth token: `simple`, or `jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256`
    /// (with `ttl=5m` optionally), as etcd's flag.
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Seconds a simple token stays valid after its last use.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub auth_token_ttl: u64,
    /// The bcrypt cost of stored password hashes (4 to 31).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = crate::auth::password::DEFAULT_BCRYPT_COST, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
    /// Path to the client server TLS certificate file (PEM), for `https://` client and REST URLs.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file (PEM).
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA certificate file: clients must present a
    /// certificate it signed.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require client certificates signed by --trusted-ca-file; with auth enabled, a request without
    /// a token acts as the user its certificate's Common Name names.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: bool,
    /// Client TLS using a generated self-signed certificate (under DATA_DIR/fixtures/client).
    #[arg(long, env = "ETCD_AUTO_TLS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub auto_tls: bool,
    /// Path to the peer server TLS certificate file (PEM); also the peer client's certificate.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file (PEM).
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file: other members' certificates must chain to it.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require peer client certificates signed by --peer-trusted-ca-file.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: bool,
    /// Peer TLS using a generated self-signed certificate (under DATA_DIR/fixtures/peer); peers
    /// then do not verify each other's certificates, as with etcd.
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub peer_auto_tls: bool,
    /// Raise an alarm when the backend size exceeds this many bytes (0 = the default, 2 GiB).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Ours: free disk space (bytes) kept in reserve on the data directory's filesystem: a write that
    /// would leave less raises NOSPACE, as the quota does, before the disk is full. The default is one
    /// WAL segment (the next one is preallocated whole); 0 turns the check off.
    #[arg(long, env = "ETCD_DISK_RESERVE_BYTES", default_value_t = crate::server::alarm::DEFAULT_DISK_RESERVE_BYTES)]
    pub disk_reserve_bytes: u64,
    /// Ours: most concurrent Snapshot calls from clients, each holding a temporary copy of the backend
    /// on disk; one more is refused with `etcdserver: too many requests`.
    #[arg(long, env = "ETCD_MAX_SNAPSHOT_COPIES", default_value_t = crate::snap::copies::DEFAULT_MAX_SNAPSHOT_COPIES, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_snapshot_copies: u64,
    /// Ours: how long a snapshot transfer (a client's Snapshot call, or a snapshot for a follower)
    /// waits for its receiver to take the next chunk before it gives up and removes its copy
    /// (`30s`, `500ms`, `2m`).
    #[arg(long, env = "ETCD_SNAPSHOT_SEND_TIMEOUT", default_value = "30s")]
    pub snapshot_send_timeout: String,
    /// Comma-separated origins whose web pages may read the answers of the JSON gateway and the
    /// other plain-HTTP endpoints (CORS); empty or * means allow all, as in etcd.
    #[arg(long, env = "ETCD_CORS", default_value = "*")]
    pub cors: String,
    /// Comma-separated host names a plain-HTTP (not TLS) request may name in its Host header;
    /// others are refused with 421 (DNS rebinding protection, as in etcd); empty or * means allow
    /// all.
    #[arg(long, env = "ETCD_HOST_WHITELIST", default_value = "*")]
    pub host_whitelist: String,
    /// URL to serve the seed's REST API on (ours; etcd has no such flag).
    #[arg(
        long,
        env = "ETCD_LISTEN_REST_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub listen_rest_url: String,
    /// Log level: debug, info, warn or error.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info", value_parser = ["debug", "info", "warn", "error"])]
    pub log_level: String,
    /// Log line format: json (etcd's default) or text (also etcd's name, console).
    #[arg(long, env = "ETCD_LOG_FORMAT", default_value = "json", value_parser = ["json", "text", "console"])]
    pub log_format: String,
    /// Where logs go, comma-separated: stderr (or default), stdout, or file paths.
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,
}

/// A validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This member's name.
    pub name: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where the etcd v3 API listens.
    pub listen_client_urls: Vec<Url>,
    /// What this member tells clients to use.
    pub advertise_client_urls: Vec<Url>,
    /// Where peers reach us.
    pub listen_peer_urls: Vec<Url>,
    /// Our peer URLs as the cluster knows them.
    pub initial_advertise_peer_urls: Vec<Url>,
    /// The bootstrap membership: (name, peer urls).
    pub initial_cluster: Vec<(String, Vec<Url>)>,
    /// `true` for `--initial-cluster-state new`.
    pub initial_cluster_new: bool,
    /// Mixed into the cluster id.
    pub initial_cluster_token: String,
    /// Raft's heartbeat interval (one tick).
    pub heartbeat_interval: Duration,
    /// How often the leader checkpoints leases' remaining TTLs (`None`: never).
    pub lease_checkpoint_interval: Option<Duration>,
    /// Raft's election timeout, a whole number of heartbeat intervals.
    pub election_timeout: Duration,
    /// Fast-forward the election clock at start (`--initial-election-tick-advance`).
    pub initial_election_tick_advance: bool,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// Applied Raft entries kept in memory behind the applied index.
    pub snapshot_catchup_entries: u64,
    /// Ranges of more than 10,000 records that read at once.
    pub max_large_ranges: usize,
    /// Turns run on the proposing connection's thread while they average less than this.
    pub inline_turn_limit: Duration,
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Most concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// Most watches on one Watch stream.
    pub max_watches_per_stream: usize,
    /// Most open REST watches per client address.
    pub max_rest_watches_per_client: usize,
    /// Most open client and REST connections (`None`: from the open-file limit at start).
    pub max_client_connections: Option<usize>,
    /// Deadline for a connection's first bytes and each HTTP/1 request head (`None`: none).
    pub http_read_header_timeout: Option<Duration>,
    /// `--grpc-keepalive-min-time`: checked, not enforced.
    pub grpc_keepalive_min_time: Duration,
    /// How often an idle HTTP/2 connection is pinged (`None`: never).
    pub grpc_keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection is closed.
    pub grpc_keepalive_timeout: Duration,
    /// Most operations in one transaction branch.
    pub max_txn_ops: usize,
    /// The auth token kind (`--auth-token`).
    pub auth_token: crate::auth::TokenConfig,
    /// How long a simple token stays valid after its last use.
    pub auth_token_ttl: Duration,
    /// The bcrypt cost of new password hashes.
    pub bcrypt_cost: u32,
    /// TLS of the client and REST listeners.
    pub client_tls: crate::tls::TlsInfo,
    /// TLS of the peer listener and the peer client.
    pub peer_tls: crate::tls::TlsInfo,
    /// Automatic compaction, if enabled.
    pub auto_compaction: Option<Retention>,
    /// Backend quota in bytes.
    pub quota_backend_bytes: u64,
    /// Free disk space kept in reserve (0: not checked).
    pub disk_reserve_bytes: u64,
    /// Most concurrent client Snapshot calls.
    pub max_snapshot_copies: usize,
    /// How long a snapshot transfer waits for its receiver to take a chunk.
    pub snapshot_send_timeout: Duration,
    /// The REST API's listen address.
    pub listen_rest_url: Url,
    /// `--cors`: origins allowed to read plain-HTTP answers.
    pub cors: crate::api::access::Allowed,
    /// `--host-whitelist`: host names a plain-HTTP request may name.
    pub host_whitelist: crate::api::access::Allowed,
    /// The log filter level.
    pub log_level: String,
}

impl Config {
    /// A configuration with every default, for `data_dir`: what `mini-etcd --data-dir DIR` would run.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Result<Config> {
        let cli = Cli::try_parse_from(["mini-etcd"])
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut cfg = Config::from_args(cli.server)?;
        cfg.data_dir = data_dir.into();
        Ok(cfg)
    }

    /// Validates the flags and fills in derived defaults.
    pub fn from_args(a: ServerArgs) -> Result<Config> {
        if a.name.is_empty() {
            return Err(Error::InvalidArgument("--name must not be empty".into()));
        }
        let initial_advertise_peer_urls = parse_urls(
            "--initial-advertise-peer-urls",
            &a.initial_advertise_peer_urls,
        )?;
        let initial_cluster = match &a.initial_cluster {
            Some(s) => parse_initial_cluster(s)?,
            None => vec![(a.name.clone(), initial_advertise_peer_urls.clone())],
        };
        check_initial_cluster(&a.name, &initial_advertise_peer_urls, &initial_cluster)?;
        let (heartbeat_interval, election_timeout) =
            check_timing(a.heartbeat_interval, a.election_timeout)?;
        let max_request_bytes = a.max_request_bytes;
        if max_request_bytes == 0 {
            return Err(Error::InvalidArgument(
                "--max-request-bytes must be > 0".into(),
            ));
        }
        let (client_tls, peer_tls) = check_tls(&a)?;
        Ok(Config {
            data_dir: a
                .data_dir
                .unwrap_or_else(|| PathBuf::from(format!("{}.mini-etcd", a.name))),
            listen_client_urls: parse_urls("--listen-client-urls", &a.listen_client_urls)?,
            advertise_client_urls: parse_urls("--advertise-client-urls", &a.advertise_client_urls)?,
            listen_peer_urls: parse_urls("--listen-peer-urls", &a.listen_peer_urls)?,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_new: a.initial_cluster_state == "new",
            initial_cluster_token: a.initial_cluster_token,
            heartbeat_interval,
            election_timeout,
            initial_election_tick_advance: a.initial_election_tick_advance,
            lease_checkpoint_interval: if a.experimental_enable_lease_checkpoint {
                let d = parse_duration(a.experimental_lease_checkpoint_interval.trim())
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "--experimental-lease-checkpoint-interval: {:?} is not a positive \
                             duration (e.g. 5m, 30s, 500ms)",
                            a.experimental_lease_checkpoint_interval
                        ))
                    })?;
                Some(d)
            } else {
                None
            },
            snapshot_count: a.snapshot_count,
            snapshot_catchup_entries: a.experimental_snapshot_catchup_entries,
            max_large_ranges: a.experimental_max_large_ranges.max(1),
            inline_turn_limit: parse_short_duration(&a.experimental_inline_turn_limit).ok_or_else(
                || {
                    Error::InvalidArgument(format!(
                        "--experimental-inline-turn-limit: {:?} is not a duration (e.g. 100us, 1ms, or 0)",
                        a.experimental_inline_turn_limit
                    ))
                },
            )?,
            max_request_bytes,
            max_concurrent_streams: a.max_concurrent_streams,
            max_watches_per_stream: a.max_watches_per_stream as usize,
            max_rest_watches_per_client: a.max_rest_watches_per_client as usize,
            max_client_connections: (a.max_client_connections > 0)
                .then_some(a.max_client_connections),
            http_read_header_timeout: Some(go_duration(
                "--http-read-header-timeout",
                &a.http_read_header_timeout,
            )?)
            .filter(|d| !d.is_zero()),
            grpc_keepalive_min_time: go_duration(
                "--grpc-keepalive-min-time",
                &a.grpc_keepalive_min_time,
            )?,
            grpc_keepalive_interval: Some(go_duration(
                "--grpc-keepalive-interval",
                &a.grpc_keepalive_interval,
            )?)
            .filter(|d| !d.is_zero()),
            grpc_keepalive_timeout: Some(go_duration(
                "--grpc-keepalive-timeout",
                &a.grpc_keepalive_timeout,
            )?)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                Error::InvalidArgument("--grpc-keepalive-timeout must be above 0".into())
            })?,
            max_txn_ops: a.max_txn_ops,
            auth_token: crate::auth::TokenConfig::parse(&a.auth_token)
                .map_err(Error::InvalidArgument)?,
            auth_token_ttl: Duration::from_secs(a.auth_token_ttl),
            bcrypt_cost: a.bcrypt_cost,
            client_tls,
            peer_tls,
            auto_compaction: Retention::parse(
                &a.auto_compaction_mode,
                &a.auto_compaction_retention,
            )?,
            quota_backend_bytes: a.quota_backend_bytes,
            disk_reserve_bytes: a.disk_reserve_bytes,
            max_snapshot_copies: usize::try_from(a.max_snapshot_copies).unwrap_or(usize::MAX),
            snapshot_send_timeout: parse_with_unit(
                a.snapshot_send_timeout.trim(),
                &[("ms", 1e-3), ("s", 1.0), ("m", 60.0)],
            )
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "--snapshot-send-timeout: {:?} is not a positive duration (e.g. 30s, 500ms, 2m)",
                    a.snapshot_send_timeout
                ))
            })?,
            listen_rest_url: parse_url("--listen-rest-url", &a.listen_rest_url)?,
            cors: crate::api::access::Allowed::parse(&a.cors),
            host_whitelist: crate::api::access::Allowed::parse(&a.host_whitelist),
            log_level: a.log_level,
            name: a.name,
        })
    }

    /// This member's id as etcd derives it for a static bootstrap: the first 8 bytes (big-endian) of
    /// the SHA-1 of its sorted peer URLs, then the cluster token. Stable across restarts, the same on
    /// every member, distinct between members. Never zero (Raft reserves 0).
    pub fn member_id(&self) -> u64 {
        member_id(
            &self.initial_advertise_peer_urls,
            &self.initial_cluster_token,
            None,
        )
    }

    /// Every bootstrap member of `--initial-cluster`: (id, name, peer URLs), in the flag's order.
    pub fn initial_members(&self) -> Vec<(u64, String, Vec<Url>)> {
        self.initial_cluster
            .iter()
            .map(|(name, urls)| {
                (
                    member_id(urls, &self.initial_cluster_token, None),
                    name.clone(),
                    urls.clone(),
                )
            })
            .collect()
    }

    /// The cluster id as etcd derives it: the first 8 bytes of the SHA-1 of the sorted bootstrap
    /// member ids, each 8 bytes big-endian. Never zero.
    pub fn cluster_id(&self) -> u64 {
        let mut ids: Vec<u64> = self.initial_members().iter().map(|m| m.0).collect();
        ids.sort_unstable();
        let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
        sha1_prefix(&bytes).max(1)
    }

    /// Raft's election timeout in ticks (heartbeat intervals).
    pub fn election_ticks(&self) -> usize {
        let ticks = self.election_timeout.as_millis() / self.heartbeat_interval.as_millis().max(1);
        usize::try_from(ticks).unwrap_or(usize::MAX)
    }

    /// How many members of `--initial-cluster` run on this machine, this member included: those
    /// with a peer URL on one of this member's peer hosts, or on a loopback address when this member
    /// has one (members on `127.0.0.1` and `localhost` share a machine by definition). Other hosts
    /// are taken to be other machines; a name that resolves here under another spelling is not seen.
    pub fn members_on_this_host(&self) -> usize {
        let ours: Vec<url::Host<&str>> = self
            .initial_advertise_peer_urls
            .iter()
            .chain(&self.listen_peer_urls)
            .filter_map(Url::host)
            .collect();
        let here = |u: &Url| {
            u.host().is_some_and(|h| {
                ours.contains(&h) || (is_loopback(&h) && ours.iter().any(is_loopback))
            })
        };
        let count = self
            .initial_cluster
            .iter()
            .filter(|(_, urls)| urls.iter().any(here))
            .count();
        count.max(1)
    }

    /// Worker threads for the server's runtime, given `cpus` usable CPUs: the CPUs divided among
    /// the members that share this machine ([`Config::members_on_this_host`]), at least one. Each
    /// member also runs a backend commit thread (and a Raft thread unless it has a single worker),
    /// so a worker per CPU in every co-located member would put several times more runnable
    /// threads than CPUs on the machine, and the scheduler's wake-ups and preemptions between them
    /// cost more than the threads add. One member alone gets a worker per CPU, as tokio's default.
    pub fn worker_threads(&self, cpus: usize) -> usize {
        (cpus / self.members_on_this_host()).max(1)
    }

    /// The socket address of a listen URL.
    pub fn socket_addr(url: &Url) -> Result<std::net::SocketAddr> {
        let addrs = url
            .socket_addrs(|| None)
            .map_err(|e| Error::InvalidArgument(format!("cannot resolve {url}: {e}")))?;
        addrs
            .into_iter()
            .next()
            .ok_or_else(|| Error::InvalidArgument(format!("cannot resolve {url}")))
    }
}

/// Whether a URL host names this machine's loopback interface.
fn is_loopback(h: &url::Host<&str>) -> bool {
    match h {
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
    }
}

/// etcd's member id (`membership.NewMember`): SHA-1 over the sorted peer URLs (as etcd prints
/// them, without a trailing `/`), the cluster token and, for a member added at runtime, the time in
/// seconds; the first 8 bytes, big-endian. Never zero.
pub fn member_id(peer_urls: &[Url], token: &str, added_at: Option<i64>) -> u64 {
    let urls: Vec<String> = peer_urls.iter().map(url_text).collect();
    member_id_of(&urls, token, added_at)
}

/// [`member_id`] of peer URLs already written as etcd prints them.
pub fn member_id_of(peer_urls: &[String], token: &str, added_at: Option<i64>) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort_unstable();
    let mut bytes = urls.concat().into_bytes();
    bytes.extend_from_slice(token.as_bytes());
    if let Some(secs) = added_at {
        bytes.extend_from_slice(secs.to_string().as_bytes());
    }
    sha1_prefix(&bytes).max(1)
}

/// A URL as etcd prints member URLs: without the trailing `/` of an empty path.
pub fn url_text(u: &Url) -> String {
    let s = u.as_str();
    if u.path() == "/" {
        s.strip_suffix('/').unwrap_or(s).to_string()
    } else {
        s.to_string()
    }
}

fn sha1_prefix(bytes: &[u8]) -> u64 {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// What etcd refuses at start about the bootstrap membership: this member missing from it, its
/// advertised peer URLs differing from what the cluster lists for it, or one URL given to two
/// members.
fn check_initial_cluster(
    name: &str,
    advertised: &[Url],
    cluster: &[(String, Vec<Url>)],
) -> Result<()> {
    let Some((_, listed)) = cluster.iter().find(|(n, _)| n == name) else {
        return Err(Error::InvalidArgument(format!(
            "--initial-cluster has no member named {name:?} (this member's --name)"
        )));
    };
    let mut a: Vec<String> = advertised.iter().map(url_text).collect();
    let mut l: Vec<String> = listed.iter().map(url_text).collect();
    a.sort_unstable();
    l.sort_unstable();
    if a != l {
        return Err(Error::InvalidArgument(format!(
            "--initial-cluster has {name}={} but --initial-advertise-peer-urls is {}: they must be \
             the same URLs",
            l.join(","),
            a.join(",")
        )));
    }
    let mut seen: Vec<(String, &str)> = Vec::new();
    for (n, urls) in cluster {
        for u in urls {
            let text = url_text(u);
            if let Some((_, other)) = seen.iter().find(|(t, _)| *t == text) {
                return Err(Error::InvalidArgument(format!(
                    "--initial-cluster: duplicate URL {text} (members {other:?} and {n:?})"
                )));
            }
            seen.push((text, n));
        }
    }
    Ok(())
}

/// etcd's rules for `--heartbeat-interval` and `--election-timeout` (milliseconds): both positive,
/// the election timeout at least five heartbeats and at most 50 s.
fn check_timing(heartbeat_ms: u64, election_ms: u64) -> Result<(Duration, Duration)> {
    if heartbeat_ms == 0 || election_ms == 0 {
        return Err(Error::InvalidArgument(
            "--heartbeat-interval and --election-timeout must be greater than 0".into(),
        ));
    }
    if election_ms < 5 * heartbeat_ms {
        return Err(Error::InvalidArgument(format!(
            "--election-timeout[{election_ms}ms] should be at least as 5 times as \
             --heartbeat-interval[{heartbeat_ms}ms]"
        )));
    }
    if election_ms > 50_000 {
        return Err(Error::InvalidArgument(format!(
            "--election-timeout[{election_ms}ms] is too long, and should be set less than 50000ms"
        )));
    }
    Ok((
        Duration::from_millis(heartbeat_ms),
        Duration::from_millis(election_ms),
    ))
}

/// The TLS flags of both sides, refused as etcd refuses them: an `https://` URL needs certificate
/// files or auto TLS. An `http://` URL with certificate files is served plain (etcd warns and
/// ignores them for that URL).
fn check_tls(a: &ServerArgs) -> Result<(crate::tls::TlsInfo, crate::tls::TlsInfo)> {
    let client = crate::tls::TlsInfo {
        cert_file: a.cert_file.clone(),
        key_file: a.key_file.clone(),
        trusted_ca_file: a.trusted_ca_file.clone(),
        client_cert_auth: a.client_cert_auth,
        auto_tls: a.auto_tls,
    };
    let peer = crate::tls::TlsInfo {
        cert_file: a.peer_cert_file.clone(),
        key_file: a.peer_key_file.clone(),
        trusted_ca_file: a.peer_trusted_ca_file.clone(),
        client_cert_auth: a.peer_client_cert_auth,
        auto_tls: a.peer_auto_tls,
    };
    client.check("")?;
    peer.check("peer-")?;
    let client_urls = a
        .listen_client_urls
        .split(',')
        .chain(std::iter::once(a.listen_rest_url.as_str()));
    for u in client_urls.map(str::trim) {
        if u.starts_with("https://") && !client.can_serve() {
            // etcd's words (embed.configureClientListeners).
            return Err(Error::InvalidArgument(format!(
                "TLS key/cert (--cert-file, --key-file) must be provided for client url {u} with \
                 HTTPS scheme"
            )));
        }
    }
    for u in a.listen_peer_urls.split(',').map(str::trim) {
        if u.starts_with("https://") && !peer.can_serve() {
            return Err(Error::InvalidArgument(format!(
                "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url \
                 {u} with HTTPS scheme"
            )));
        }
    }
    Ok((client, peer))
}

fn parse_url(flag: &str, s: &str) -> Result<Url> {
    let url = Url::parse(s.trim())
        .map_err(|e| Error::InvalidArgument(format!("{flag}: invalid URL {s:?}: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(Error::InvalidArgument(format!(
            "{flag}: URL scheme must be http or https, got {s:?}"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::InvalidArgument(format!(
            "{flag}: URL {s:?} has no host"
        )));
    }
    if url.port().is_none() {
        return Err(Error::InvalidArgument(format!(
            "{flag}: URL {s:?} has no port"
        )));
    }
    if url.path() != "/" && !url.path().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{flag}: URL {s:?} must not have a path"
        )));
    }
    Ok(url)
}

fn parse_urls(flag: &str, s: &str) -> Result<Vec<Url>> {
    let urls = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| parse_url(flag, p))
        .collect::<Result<Vec<_>>>()?;
    if urls.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{flag}: at least one URL is required"
        )));
    }
    Ok(urls)
}

fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<Url>)>> {
    let mut members: Vec<(String, Vec<Url>)> = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, url) = part.split_once('=').ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--initial-cluster: {part:?} is not of the form name=url"
            ))
        })?;
        let url = parse_url("--initial-cluster", url)?;
        match members.iter_mut().find(|(n, _)| n == name.trim()) {
            Some((_, urls)) => urls.push(url),
            None => members.push((name.trim().to_string(), vec![url])),
        }
    }
    if members.is_empty() {
        return Err(Error::InvalidArgument("--initial-cluster is empty".into()));
    }
    Ok(members)
}

/// What auto compaction keeps (`--auto-compaction-mode` / `--auto-compaction-retention`); the
/// server's compactor (`server::compactor`) acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revisions(i64),
}

impl Retention {
    /// Parses etcd's flags; `None` when auto compaction is off (retention 0).
    pub fn parse(mode: &str, retention: &str) -> Result<Option<Retention>> {
        let retention = retention.trim();
        match mode {
            "periodic" => {
                let d = parse_duration(retention).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "--auto-compaction-retention: {retention:?} is not a duration (e.g. 1h, 30m, or hours)"
                    ))
                })?;
                Ok((!d.is_zero()).then_some(Retention::Periodic(d)))
            }
            "revision" => {
                let n: i64 = retention.parse().map_err(|_| {
                    Error::InvalidArgument(format!(
                        "--auto-compaction-retention: {retention:?} is not a number of revisions"
                    ))
                })?;
                if n < 0 {
                    return Err(Error::InvalidArgument(
                        "--auto-compaction-retention must not be negative".into(),
                    ));
                }
                Ok((n > 0).then_some(Retention::Revisions(n)))
            }
            other => Err(Error::InvalidArgument(format!(
                "--auto-compaction-mode must be periodic or revision, got {other:?}"
            ))),
        }
    }
}

/// `0`, or a number with a unit: `us` (or `µs`), `ms` or `s`.
fn parse_short_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    parse_with_unit(s, &[("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)])
}

/// A Go duration as etcd's flags take it: `0`, or numbers each with a unit (`ns`, `us`, `µs`, `ms`,
/// `s`, `m`, `h`), as in `20s`, `1m30s`, `2h0m0s`.
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let unit_len = rest[num_len..]
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len() - num_len);
        let part = parse_with_unit(
            &rest[..num_len + unit_len],
            &[
                ("ns", 1e-9),
                ("us", 1e-6),
                ("µs", 1e-6),
                ("ms", 1e-3),
                ("s", 1.0),
                ("m", 60.0),
                ("h", 3600.0),
            ],
        )?;
        total = total.checked_add(part)?;
        rest = &rest[num_len + unit_len..];
    }
    Some(total)
}

/// [`parse_go_duration`], or an error naming `flag`.
fn go_duration(flag: &str, value: &str) -> Result<Duration> {
    parse_go_duration(value).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{flag}: {value:?} is not a duration (e.g. 20s, 1m30s, 2h, or 0)"
        ))
    })
}

/// `1h`, `30m`, `45s`, `500ms`, or a bare number of hours (etcd's periodic retention).
fn parse_duration(s: &str) -> Option<Duration> {
    if let Ok(hours) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(hours * 3600.0).ok();
    }
    parse_with_unit(s, &[("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)])
}

/// A non-negative number followed by one of `units` (its name, and its length in seconds). `None`
/// for anything else, including a duration too long to represent.
fn parse_with_unit(s: &str, units: &[(&str, f64)]) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    let (_, seconds) = units.iter().find(|(name, _)| *name == unit)?;
    Duration::try_from_secs_f64(n * seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config> {
        let mut v = vec!["mini-etcd"];
        v.extend_from_slice(args);
        let cli = Cli::try_parse_from(v).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Config::from_args(cli.server)
    }

    #[test]
    fn co_located_members_share_the_cpus() {
        // Member `name` of `cluster`, advertising `advertise` and listening on `listen`.
        let member = |name: &str, advertise: &str, listen: &str, cluster: &str| {
            parse(&[
                &format!("--name={name}"),
                &format!("--initial-advertise-peer-urls={advertise}"),
                &format!("--listen-peer-urls={listen}"),
                &format!("--initial-cluster={cluster}"),
            ])
            .unwrap()
        };
        // One member alone: a worker per CPU.
        let alone = parse(&[]).unwrap();
        assert_eq!(alone.members_on_this_host(), 1);
        assert_eq!(alone.worker_threads(8), 8);
        // (what, member, advertised, listening, cluster, members on this host, cpus, workers)
        let cases = [
            (
                "three on loopback, under two spellings of it: one machine; never below one",
                "a",
                "http://127.0.0.1:2380",
                "http://127.0.0.1:2380",
                "a=http://127.0.0.1:2380,b=http://localhost:2480,c=http://127.0.0.2:2580",
                3,
                2,
                1,
            ),
            (
                "three on loopback, eight CPUs",
                "a",
                "http://127.0.0.1:2380",
                "http://127.0.0.1:2380",
                "a=http://127.0.0.1:2380,b=http://localhost:2480,c=http://127.0.0.2:2580",
                3,
                8,
                2,
            ),
            (
                "three machines: each member has the CPUs to itself",
                "a",
                "http://10.0.0.1:2380",
                "http://0.0.0.0:2380",
                "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,c=http://10.0.0.3:2380",
                1,
                4,
                4,
            ),
            (
                "two of five on this machine's address",
                "b",
                "http://10.0.0.1:2480",
                "http://10.0.0.1:2480",
                "a=http://10.0.0.1:2380,b=http://10.0.0.1:2480,c=http://10.0.0.2:2380,\
                 d=http://10.0.0.3:2380,e=https://10.0.0.4:2380",
                2,
                4,
                2,
            ),
        ];
        for (what, name, advertise, listen, cluster, on_host, cpus, workers) in cases {
            let c = member(name, advertise, listen, cluster);
            assert_eq!(c.members_on_this_host(), on_host, "{what}");
            assert_eq!(c.worker_threads(cpus), workers, "{what}");
        }
    }

    #[test]
    fn connection_flags_take_go_durations_with_etcd_defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.grpc_keepalive_min_time, Duration::from_secs(5));
        assert_eq!(c.grpc_keepalive_interval, Some(Duration::from_secs(7200)));
        assert_eq!(c.grpc_keepalive_timeout, Duration::from_secs(20));
        assert_eq!(c.http_read_header_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.max_client_connections, None);
        let c = parse(&[
            "--grpc-keepalive-interval=2h0m0s",
            "--grpc-keepalive-timeout=1m30s",
            "--http-read-header-timeout=0",
            "--max-client-connections=7",
        ])
        .unwrap();
        assert_eq!(c.grpc_keepalive_interval, Some(Duration::from_secs(7200)));
        assert_eq!(c.grpc_keepalive_timeout, Duration::from_secs(90));
        assert_eq!(c.http_read_header_timeout, None);
        assert_eq!(c.max_client_connections, Some(7));
        assert_eq!(
            parse(&["--grpc-keepalive-interval=0"])
                .unwrap()
                .grpc_keepalive_interval,
            None
        );
        assert_eq!(
            parse(&["--http-read-header-timeout=500ms"])
                .unwrap()
                .http_read_header_timeout,
            Some(Duration::from_millis(500))
        );
        for bad in [
            "--grpc-keepalive-timeout=0",
            "--grpc-keepalive-timeout=20",
            "--grpc-keepalive-interval=h",
            "--http-read-header-timeout=10x",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn inline_turn_limit_takes_short_durations_and_refuses_the_rest() {
        let limit = |v: &str| {
            parse(&[&format!("--experimental-inline-turn-limit={v}")]).map(|c| c.inline_turn_limit)
        };
        assert_eq!(limit("0").unwrap(), Duration::ZERO);
        assert_eq!(limit("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(limit("250µs").unwrap(), Duration::from_micros(250));
        assert_eq!(limit("1.5ms").unwrap(), Duration::from_micros(1500));
        assert_eq!(limit("2s").unwrap(), Duration::from_secs(2));
        for bad in ["100", "-1ms", "1h", "fast", "", "1e300s"] {
            let err = limit(bad).expect_err(bad).to_string();
            assert!(err.contains("inline-turn-limit"), "{bad}: {err}");
        }
    }

    #[test]
    fn defaults_match_the_product_page() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.mini-etcd"));
        assert_eq!(c.listen_rest_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(c.listen_client_urls[0].port(), Some(2379));
        assert_eq!(c.snapshot_count, 100_000);
        assert_eq!(c.snapshot_catchup_entries, 5_000);
        assert_eq!(c.inline_turn_limit, Duration::from_micros(100));
        assert_eq!(c.max_request_bytes, 1536 * 1024);
        assert_eq!(c.max_concurrent_streams, u32::MAX);
        assert_eq!(c.initial_cluster[0].0, "default");
        assert_eq!(c.max_snapshot_copies, 2);
        assert_eq!(c.snapshot_send_timeout, Duration::from_secs(30));
        assert_eq!(c.disk_reserve_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn snapshot_flags_are_checked() {
        let timeout = |v: &str| {
            parse(&[&format!("--snapshot-send-timeout={v}")]).map(|c| c.snapshot_send_timeout)
        };
        assert_eq!(timeout("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(timeout("2m").unwrap(), Duration::from_secs(120));
        for bad in ["0s", "30", "-1s", "1h", "slow", ""] {
            let err = timeout(bad).expect_err(bad).to_string();
            assert!(err.contains("snapshot-send-timeout"), "{bad}: {err}");
        }
        assert!(parse(&["--max-snapshot-copies=0"]).is_err());
    }

    #[test]
    fn the_stream_limit_is_a_positive_count() {
        let c = parse(&["--max-concurrent-streams", "100"]).unwrap();
        assert_eq!(c.max_concurrent_streams, 100);
        assert!(parse(&["--max-concurrent-streams", "0"]).is_err());
        assert!(parse(&["--max-concurrent-streams", "4294967296"]).is_err());
    }

    #[test]
    fn bad_urls_and_unknown_flags_are_errors() {
        assert!(parse(&["--listen-rest-url", "not a url"]).is_err());
        assert!(parse(&["--listen-client-urls", "ftp://127.0.0.1:1"]).is_err());
        assert!(parse(&["--listen-client-urls", "http://127.0.0.1"]).is_err());
        assert!(parse(&["--no-such-flag"]).is_err());
        assert!(parse(&["--initial-cluster", "other=http://127.0.0.1:2380"]).is_err());
        assert!(parse(&["--initial-cluster-state", "maybe"]).is_err());
        assert!(parse(&[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "x"
        ])
        .is_err());
        let c = parse(&[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "10",
        ])
        .unwrap();
        assert_eq!(c.auto_compaction, Some(Retention::Revisions(10)));
    }

    #[test]
    fn periodic_retention_takes_durations_or_hours_and_refuses_the_rest() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs_f64());
        assert_eq!(secs("1h"), Some(3600.0));
        assert_eq!(secs("30m"), Some(1800.0));
        assert_eq!(secs("45s"), Some(45.0));
        assert_eq!(secs("500ms"), Some(0.5));
        assert_eq!(secs("2"), Some(7200.0), "a bare number is hours");
        assert_eq!(secs("0"), Some(0.0));
        for bad in ["-1h", "1d", "x", "NaN", "1e300", "1e300h"] {
            assert_eq!(secs(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_are_etcds() {
        // What a live etcd 3.4.23 cluster reported for `--initial-cluster-token tok` and these three
        // peer URLs (member list and endpoint status; /tmp/research notes of this session).
        let c = parse(&[
            "--name",
            "n1",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:32380",
            "--initial-cluster-token",
            "tok",
            "--initial-cluster",
            "n1=http://127.0.0.1:32380,n2=http://127.0.0.1:32390,n3=http://127.0.0.1:32400",
        ])
        .unwrap();
        let ids: Vec<u64> = c.initial_members().iter().map(|m| m.0).collect();
        assert_eq!(
            ids,
            vec![0xca7a34e16cff9c1b, 0xa800b02c04159b2e, 0x2d5e43e747c5a441]
        );
        assert_eq!(c.member_id(), 0xca7a34e16cff9c1b);
        assert_eq!(c.cluster_id(), 0x263e1edcf6a46c8d);
    }

    #[test]
    fn a_bootstrap_that_cannot_be_honoured_is_refused() {
        let three = "a=http://127.0.0.1:2380,b=http://127.0.0.1:2381,c=http://127.0.0.1:2382";
        assert!(parse(&["--name", "a", "--initial-cluster", three]).is_ok());
        let err = parse(&["--name", "d", "--initial-cluster", three])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no member named"), "{err}");
        let err = parse(&[
            "--name",
            "b",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            three,
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--initial-advertise-peer-urls"), "{err}");
        let err = parse(&[
            "--name",
            "a",
            "--initial-cluster",
            "a=http://127.0.0.1:2380,b=http://127.0.0.1:2380",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("duplicate URL"), "{err}");
    }

    #[test]
    fn lease_checkpoints_are_on_every_five_minutes_unless_turned_off() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.lease_checkpoint_interval, Some(Duration::from_secs(300)));
        let c = parse(&["--experimental-lease-checkpoint-interval", "500ms"]).unwrap();
        assert_eq!(
            c.lease_checkpoint_interval,
            Some(Duration::from_millis(500))
        );
        let c = parse(&["--experimental-enable-lease-checkpoint=false"]).unwrap();
        assert_eq!(c.lease_checkpoint_interval, None);
        assert!(parse(&["--experimental-lease-checkpoint-interval", "0"]).is_err());
        assert!(parse(&["--experimental-lease-checkpoint-interval", "soon"]).is_err());
    }

    #[test]
    fn timing_flags_follow_etcds_rules() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(c.election_ticks(), 10);
        let c = parse(&["--heartbeat-interval", "50", "--election-timeout", "500"]).unwrap();
        assert_eq!(c.election_ticks(), 10);
        assert!(parse(&["--heartbeat-interval", "100", "--election-timeout", "400"]).is_err());
        assert!(parse(&["--election-timeout", "60000"]).is_err());
        assert!(parse(&["--heartbeat-interval", "0"]).is_err());
        assert!(c.initial_election_tick_advance, "on by default, as etcd");
        let c = parse(&["--initial-election-tick-advance=false"]).unwrap();
        assert!(!c.initial_election_tick_advance);
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = parse(&["--initial-advertise-peer-urls", "http://127.0.0.1:2380"]).unwrap();
        let b = parse(&["--initial-advertise-peer-urls", "http://127.0.0.1:2390"]).unwrap();
        assert_eq!(a.member_id(), a.clone().member_id());
        assert_ne!(a.member_id(), b.member_id());
        assert_ne!(a.member_id(), 0);
        assert_ne!(a.cluster_id(), 0);
    }

    #[test]
    fn tls_flags_as_etcd_checks_them() {
        let e = parse(&["--listen-client-urls", "https://127.0.0.1:2379"]).unwrap_err();
        assert!(e.to_string().contains(
            "TLS key/cert (--cert-file, --key-file) must be provided for client url \
             https://127.0.0.1:2379 with HTTPS scheme"
        ));
        assert!(parse(&["--listen-rest-url", "https://127.0.0.1:8080"]).is_err());
        assert!(parse(&[
            "--listen-client-urls",
            "https://127.0.0.1:2379",
            "--auto-tls"
        ])
        .is_ok());
        let c = parse(&[
            "--cert-file",
            "c.pem",
            "--key-file",
            "k.pem",
            "--client-cert-auth",
            "--trusted-ca-file",
            "ca.pem",
        ])
        .unwrap();
        assert!(c.client_tls.client_cert_auth);
        assert_eq!(c.client_tls.trusted_ca_file, Some(PathBuf::from("ca.pem")));
        // http:// URLs with certificate files: accepted, served plain.
        assert!(c.listen_client_urls[0].scheme() == "http");
        assert!(parse(&["--peer-client-cert-auth"]).is_err());
        assert!(parse(&["--peer-cert-file", "c.pem"]).is_err());
        let e = parse(&[
            "--listen-peer-urls",
            "https://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "https://127.0.0.1:2380",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--peer-cert-file, --peer-key-file"));
    }
}
