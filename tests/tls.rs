//! TLS end to end, as etcd 3.4 has it: `https://` client, REST and peer URLs, client certificates
//! (`--client-cert-auth`, the certificate's Common Name as the auth user), auto TLS, and the starts
//! etcd refuses. Clients are etcdctl 3.4 (which must be installed: a missing etcdctl fails loudly)
//! and the `etcd-client` crate with its `tls` feature.
//!
//! Certificates are made at test time with rcgen: a CA, a server certificate for `127.0.0.1` and
//! `localhost` (also the members' peer and peer-client certificate), client certificates whose
//! Common Names are users, and a second CA whose certificates must be refused. Every process run
//! and every wait is bounded.

mod common;
#[path = "common/etcdctl_auth.rs"]
mod etcdctl_auth;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

/// Safety bound on one etcdctl invocation.
const CTL_BOUND: Duration = Duration::from_secs(30);
/// How long a member (or a cluster) may take to answer `/health`.
const START_BOUND: Duration = Duration::from_secs(30);

/// The test's certificates, as PEM files in one directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// The CA, a server certificate, client certificates for `root`, `alice` and `mallory` (no
    /// such user), and a second CA with a certificate for `alice`.
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir for certificates");
        let pki = Pki { dir };
        let (ca_pem, ca_issuer) = ca("test CA");
        pki.write("ca.pem", &ca_pem);
        let (server, server_key) = leaf(
            &ca_issuer,
            "server",
            &["127.0.0.1", "localhost"],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        pki.write("server.pem", &server);
        pki.write("server-key.pem", &server_key);
        for user in ["root", "alice", "mallory"] {
            let (cert, key) = leaf(
                &ca_issuer,
                user,
                &[],
                &[ExtendedKeyUsagePurpose::ClientAuth],
            );
            pki.write(&format!("{user}.pem"), &cert);
            pki.write(&format!("{user}-key.pem"), &key);
        }
        let (other_ca, other_issuer) = ca("another CA");
        pki.write("other-ca.pem", &other_ca);
        let (cert, key) = leaf(
            &other_issuer,
            "alice",
            &[],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        );
        pki.write("other-alice.pem", &cert);
        pki.write("other-alice-key.pem", &key);
        pki
    }

    fn write(&self, name: &str, pem: &str) {
        std::fs::write(self.dir.path().join(name), pem).expect("write certificate");
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `--cert-file`, `--key-file`, `--trusted-ca-file` of the test server.
    fn server_flags(&self) -> Vec<String> {
        vec![
            "--cert-file".into(),
            self.path("server.pem"),
            "--key-file".into(),
            self.path("server-key.pem"),
            "--trusted-ca-file".into(),
            self.path("ca.pem"),
        ]
    }

    /// A rustls client that trusts the test CA.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(self.client_builder().with_no_client_auth())
    }

    /// [`Pki::client_config`] presenting `user`'s client certificate.
    fn client_config_as(&self, user: &str) -> Arc<rustls::ClientConfig> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(self.path(&format!("{user}.pem")))
                .expect("cert pem")
                .map(|c| c.expect("cert"))
                .collect();
        let key =
            rustls_pki_types::PrivateKeyDer::from_pem_file(self.path(&format!("{user}-key.pem")))
                .expect("key pem");
        Arc::new(
            self.client_builder()
                .with_client_auth_cert(chain, key)
                .expect("client certificate"),
        )
    }

    fn client_builder(
        &self,
    ) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.path("ca.pem")).expect("ca.pem") {
            roots.add(cert.expect("ca cert")).expect("add ca");
        }
        rustls::ClientConfig::builder_with_provider(Arc::new(ring_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
    }
}

/// rustls' ring provider (deprecated only for lacking post-quantum key exchange).
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("ca key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign ca");
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    cn: &str,
    sans: &[&str],
    usages: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let key = KeyPair::generate().expect("leaf key");
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = usages.to_vec();
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

/// One mini-etcd process, killed when dropped.
struct Member {
    child: Option<Child>,
    client_port: u16,
    rest_port: u16,
    log: PathBuf,
    _data: tempfile::TempDir,
}

impl Member {
    /// Starts a member whose client URL has `client_scheme` and REST URL `rest_scheme`, with
    /// `extra` flags, and waits until `/health` on the REST port answers 200 (over TLS with the
    /// test CA's client, or `rest_tls` when given).
    async fn start(client_scheme: &str, rest_scheme: &str, extra: &[String], pki: &Pki) -> Member {
        Member::start_with(client_scheme, rest_scheme, extra, pki, None).await
    }

    async fn start_with(
        client_scheme: &str,
        rest_scheme: &str,
        extra: &[String],
        pki: &Pki,
        rest_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Member {
        let data = tempfile::tempdir().expect("data dir");
        let ports = common::free_ports(3);
        let (rest, client, peer) = (ports[0], ports[1], ports[2]);
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            data.path().join("d").display().to_string(),
            "--listen-rest-url".into(),
            format!("{rest_scheme}://127.0.0.1:{rest}"),
            "--listen-client-urls".into(),
            format!("{client_scheme}://127.0.0.1:{client}"),
            "--advertise-client-urls".into(),
            format!("{client_scheme}://127.0.0.1:{client}"),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--bcrypt-cost".into(),
            "4".into(),
        ];
        args.extend(extra.iter().cloned());
        let log = data.path().join("log");
        let child = spawn(&args, &log);
        let mut member = Member {
            child: Some(child),
            client_port: client,
            rest_port: rest,
            log,
            _data: data,
        };
        let tls = (rest_scheme == "https").then(|| rest_tls.unwrap_or_else(|| pki.client_config()));
        member.wait_healthy(tls).await;
        member
    }

    fn endpoint(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn data_dir(&self) -> PathBuf {
        self._data.path().join("d")
    }

    async fn wait_healthy(&mut self, tls: Option<Arc<rustls::ClientConfig>>) {
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mini-etcd exited with {status}; log:\n{}", self.log_tail());
            }
            if let Some((status, _)) = get(self.rest_port, "/health", tls.clone()).await {
                if status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no healthy /health within {START_BOUND:?}; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        common::tail(&common::read_log(&self.log), 6000)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(args: &[String], log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    std::process::Command::new(common::bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn mini-etcd")
}

/// `GET path` over HTTP/1.1 on `port`, with TLS when `tls` is given: the status and body, or `None`
/// when the connection or handshake fails.
async fn get(
    port: u16,
    path: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Option<(u16, String)> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        match tls {
            None => exchange(tcp, path).await,
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from("127.0.0.1").ok()?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .ok()?;
                exchange(stream, path).await
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    // A TLS peer may close without close_notify; what was read is still the answer.
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// One etcdctl run: exit code, stdout, stderr.
struct Ctl {
    code: Option<i32>,
    out: String,
    err: String,
}

impl Ctl {
    fn ok(self, what: &str) -> String {
        assert_eq!(
            self.code,
            Some(0),
            "{what}: stdout {:?} stderr {:?}",
            self.out,
            self.err
        );
        self.out
    }

    fn fails(self, what: &str) -> String {
        assert_ne!(self.code, Some(0), "{what} should fail: {:?}", self.out);
        self.err
    }

    /// Requires a failure whose last line is `want`.
    fn fails_with(self, what: &str, want: &str) {
        let err = self.fails(what);
        let last = err.lines().last().unwrap_or_default();
        assert_eq!(last, want, "{what}: stderr {err:?}");
    }
}

/// etcdctl against `endpoint` with `tls` flags (`--cacert`, `--cert`, ...) and `args`.
async fn ctl(endpoint: &str, tls: &[String], args: &[&str]) -> Ctl {
    let bin = std::env::var_os("ETCDCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcdctl"));
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=10s")
        .args(tls)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "spawn {}: {e} (etcdctl 3.4 is required: apt-get install etcd-client)",
            bin.display()
        )
    });
    let out = tokio::time::timeout(CTL_BOUND, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} did not exit within {CTL_BOUND:?}"))
        .expect("etcdctl output");
    Ctl {
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn flags(pairs: &[(&str, String)]) -> Vec<String> {
    pairs.iter().map(|(k, v)| format!("--{k}={v}")).collect()
}

/// etcdctl_auth's users and roles (root; alice with read `a`, read-write prefix `b`), then auth on,
/// with `tls` flags on every etcdctl call.
async fn set_up_users(ep: &str, tls: &[String]) {
    etcdctl_auth::set_up(&format!("{ep} {}", tls.join(" "))).await;
}

const DENIED: &str = "Error: etcdserver: permission denied";

#[tokio::test]
async fn etcdctl_and_etcd_client_over_tls_with_users() {
    let pki = Pki::new();
    let server = [
        "--cert-file".to_string(),
        pki.path("server.pem"),
        "--key-file".to_string(),
        pki.path("server-key.pem"),
    ];
    let m = Member::start("https", "http", &server, &pki).await;
    let ep = m.endpoint("https");
    let tls = flags(&[("cacert", pki.path("ca.pem"))]);

    ctl(&ep, &tls, &["put", "k", "v"]).await.ok("put over TLS");
    assert_eq!(ctl(&ep, &tls, &["get", "k"]).await.ok("get"), "k\nv\n");

    set_up_users(&ep, &tls).await;
    let alice = [tls.clone(), vec!["--user=alice:apw".to_string()]].concat();
    ctl(&ep, &alice, &["put", "b1", "x"])
        .await
        .ok("alice puts b1");
    ctl(&ep, &alice, &["put", "c", "x"])
        .await
        .fails_with("alice puts c", DENIED);
    ctl(&ep, &alice, &["get", "k"])
        .await
        .fails_with("alice reads k", DENIED);
    ctl(&ep, &tls, &["get", "k"])
        .await
        .fails_with("no user", "Error: etcdserver: user name is empty");

    // The etcd-client crate, with TLS and a password.
    let ca = std::fs::read(pki.path("ca.pem")).expect("ca.pem");
    let options = ConnectOptions::new()
        .with_tls(TlsOptions::new().ca_certificate(Certificate::from_pem(ca)))
        .with_user("alice", "apw")
        .with_timeout(Duration::from_secs(10));
    let mut client = Client::connect([ep.as_str()], Some(options))
        .await
        .expect("etcd-client connects over TLS");
    client.put("b2", "y", None).await.expect("alice puts b2");
    let got = client.get("b2", None).await.expect("alice reads b2");
    assert_eq!(got.kvs()[0].value(), b"y");
    let denied = client
        .put("c", "y", None)
        .await
        .expect_err("alice may not write c");
    assert!(denied.to_string().contains("permission denied"), "{denied}");
}

/// The whole etcdctl auth scenario of `tests/auth.rs` (users, roles, permission denied in get / put /
/// del / txn / watch, read-only roles, wrong and changed passwords, revoke, disable) against a
/// member that serves only TLS, with `--cacert` and `--user`.
#[tokio::test]
async fn etcdctl_auth_scenario_over_tls() {
    let pki = Pki::new();
    let server = [
        "--cert-file".to_string(),
        pki.path("server.pem"),
        "--key-file".to_string(),
        pki.path("server-key.pem"),
    ];
    let m = Member::start("https", "http", &server, &pki).await;
    let ep = format!("{} --cacert={}", m.endpoint("https"), pki.path("ca.pem"));
    etcdctl_auth::users_roles_and_permissions(&ep).await;
}

#[tokio::test]
async fn plain_clients_and_wrong_cas_are_refused() {
    let pki = Pki::new();
    let server = [
        "--cert-file".to_string(),
        pki.path("server.pem"),
        "--key-file".to_string(),
        pki.path("server-key.pem"),
    ];
    let m = Member::start("https", "http", &server, &pki).await;

    // Plain gRPC (etcdctl) and plain HTTP/1.1 to the TLS port.
    ctl(&m.endpoint("http"), &[], &["put", "k", "v"])
        .await
        .fails("plaintext etcdctl to a TLS port");
    assert!(
        get(m.client_port, "/health", None)
            .await
            .is_none_or(|(status, _)| status != 200),
        "plain HTTP/1.1 must not be served on a TLS port"
    );
    // A CA that did not sign the server's certificate.
    ctl(
        &m.endpoint("https"),
        &flags(&[("cacert", pki.path("other-ca.pem"))]),
        &["put", "k", "v"],
    )
    .await
    .fails("etcdctl trusting another CA");
    // Over TLS, HTTP/1.1 is served too (the gateway, /health).
    let (status, body) = get(m.client_port, "/health", Some(pki.client_config()))
        .await
        .expect("GET /health over TLS");
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn client_certificate_common_name_is_the_user() {
    let pki = Pki::new();
    let mut server = pki.server_flags();
    server.push("--client-cert-auth".into());
    let m = Member::start_with(
        "https",
        "https",
        &server,
        &pki,
        Some(pki.client_config_as("root")),
    )
    .await;
    let ep = m.endpoint("https");
    let as_user = |user: &str| {
        flags(&[
            ("cacert", pki.path("ca.pem")),
            ("cert", pki.path(&format!("{user}.pem"))),
            ("key", pki.path(&format!("{user}-key.pem"))),
        ])
    };
    let root = as_user("root");
    let alice = as_user("alice");

    set_up_users(&ep, &root).await;
    // root's certificate alone makes it root: it may write anywhere and manage users.
    ctl(&ep, &root, &["put", "a", "1"]).await.ok("root puts a");
    ctl(&ep, &root, &["user", "list"])
        .await
        .ok("root lists users");
    // alice's certificate, no --user: alice, inside her role and denied outside it.
    ctl(&ep, &alice, &["put", "b1", "x"])
        .await
        .ok("alice puts b1");
    assert_eq!(
        ctl(&ep, &alice, &["get", "a"]).await.ok("alice reads a"),
        "a\n1\n"
    );
    ctl(&ep, &alice, &["put", "c", "x"])
        .await
        .fails_with("alice puts c", DENIED);
    ctl(&ep, &alice, &["user", "list"])
        .await
        .fails_with("alice lists users", DENIED);
    // A token wins over the certificate: alice's certificate with root's password is root.
    let alice_as_root = [alice.clone(), vec!["--user=root:rootpw".to_string()]].concat();
    ctl(&ep, &alice_as_root, &["put", "c", "x"])
        .await
        .ok("token of root on alice's connection");
    // A certificate naming no user gets nothing.
    ctl(&ep, &as_user("mallory"), &["put", "b1", "x"])
        .await
        .fails_with("mallory puts b1", DENIED);

    // No client certificate, or one from another CA: the handshake fails.
    ctl(
        &ep,
        &flags(&[("cacert", pki.path("ca.pem"))]),
        &["get", "a"],
    )
    .await
    .fails("no client certificate");
    let other = flags(&[
        ("cacert", pki.path("ca.pem")),
        ("cert", pki.path("other-alice.pem")),
        ("key", pki.path("other-alice-key.pem")),
    ]);
    ctl(&ep, &other, &["get", "a"])
        .await
        .fails("a client certificate from another CA");

    // The REST API over https: alice's certificate, no Authorization header, is alice.
    let alice_rest = Some(pki.client_config_as("alice"));
    let (status, body) = get(m.rest_port, "/get?key=a", alice_rest.clone())
        .await
        .expect("REST get as alice");
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(m.rest_port, "/get?key=c", alice_rest)
        .await
        .expect("REST get of c as alice");
    assert_eq!(status, 403, "{body}");
    assert!(
        get(m.rest_port, "/get?key=a", Some(pki.client_config()))
            .await
            .is_none_or(|(status, _)| status != 200),
        "REST without a client certificate must fail the handshake"
    );

    // The etcd-client crate with alice's certificate as its identity.
    let read = |name: &str| std::fs::read(pki.path(name)).expect("pem");
    let options = ConnectOptions::new()
        .with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read("ca.pem")))
                .identity(etcd_client::Identity::from_pem(
                    read("alice.pem"),
                    read("alice-key.pem"),
                )),
        )
        .with_timeout(Duration::from_secs(10));
    let mut client = Client::connect([ep.as_str()], Some(options))
        .await
        .expect("etcd-client connects with a client certificate");
    client.put("b3", "z", None).await.expect("alice puts b3");
    let denied = client
        .put("d", "z", None)
        .await
        .expect_err("alice may not write d");
    assert!(denied.to_string().contains("permission denied"), "{denied}");
}

#[tokio::test]
async fn rest_api_over_https() {
    let pki = Pki::new();
    let m = Member::start("http", "https", &pki.server_flags()[..4], &pki).await;
    let (status, body) = get(m.rest_port, "/version", Some(pki.client_config()))
        .await
        .expect("GET /version over TLS");
    assert_eq!(status, 200, "{body}");
    assert!(
        get(m.rest_port, "/health", None)
            .await
            .is_none_or(|(status, _)| status != 200),
        "plain HTTP must not be served on the https REST port"
    );
    // The client URL is http: served plain even though certificate files are given, as etcd.
    ctl(&m.endpoint("http"), &[], &["put", "k", "v"])
        .await
        .ok("plain client URL beside cert files");
}

#[tokio::test]
async fn auto_tls_needs_skip_verify() {
    let pki = Pki::new();
    let m = Member::start("https", "http", &["--auto-tls".to_string()], &pki).await;
    let ep = m.endpoint("https");
    assert!(
        m.data_dir().join("fixtures/client/cert.pem").exists(),
        "auto TLS keeps its certificate under DATA_DIR/fixtures/client"
    );
    let skip = vec![
        "--insecure-skip-tls-verify".to_string(),
        "--insecure-transport=false".to_string(),
    ];
    ctl(&ep, &skip, &["put", "k", "v"])
        .await
        .ok("put, skipping verification");
    assert_eq!(ctl(&ep, &skip, &["get", "k"]).await.ok("get"), "k\nv\n");
    ctl(
        &ep,
        &flags(&[("cacert", pki.path("ca.pem"))]),
        &["get", "k"],
    )
    .await
    .fails("a self-signed certificate does not verify");
}

#[tokio::test]
async fn https_without_certificates_refuses_to_start() {
    let data = tempfile::tempdir().expect("data dir");
    let ports = common::free_ports(3);
    let client = format!("https://127.0.0.1:{}", ports[1]);
    let data_dir = data.path().display().to_string();
    let rest = format!("http://127.0.0.1:{}", ports[0]);
    let peer = format!("http://127.0.0.1:{}", ports[2]);
    let (status, out) = common::run_cli(
        &[
            "--data-dir",
            &data_dir,
            "--listen-rest-url",
            &rest,
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ],
        Duration::from_secs(20),
    )
    .await;
    assert!(!status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "TLS key/cert (--cert-file, --key-file) must be provided for client url {client} \
             with HTTPS scheme"
        )),
        "{out}"
    );

    let https_peer = format!("https://127.0.0.1:{}", ports[2]);
    let (status, out) = common::run_cli(
        &[
            "--data-dir",
            &data_dir,
            "--listen-rest-url",
            &rest,
            "--listen-peer-urls",
            &https_peer,
            "--initial-advertise-peer-urls",
            &https_peer,
        ],
        Duration::from_secs(20),
    )
    .await;
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("TLS key/cert (--peer-cert-file, --peer-key-file) must be provided"),
        "{out}"
    );
}

/// Starts three members with `https://` peer URLs and `peer` flags, waits until each is healthy
/// (a leader is elected), and checks that a put on the first reaches the third.
async fn https_cluster(data: &Path, peer: &[String]) -> (Vec<Member>, Vec<u16>) {
    let ports = common::free_ports(9);
    let names = ["m0", "m1", "m2"];
    let peer_url = |i: usize| format!("https://127.0.0.1:{}", ports[3 * i + 2]);
    let cluster = (0..3)
        .map(|i| format!("{}={}", names[i], peer_url(i)))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let client = format!("http://127.0.0.1:{}", ports[3 * i + 1]);
        let mut args: Vec<String> = [
            "--name",
            name,
            "--data-dir",
            &data.join(name).display().to_string(),
            "--listen-rest-url",
            &format!("http://127.0.0.1:{}", ports[3 * i]),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer_url(i),
            "--initial-advertise-peer-urls",
            &peer_url(i),
            "--initial-cluster",
            &cluster,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(peer.iter().cloned());
        let log = data.join(format!("{name}.log"));
        members.push(Member {
            child: Some(spawn(&args, &log)),
            client_port: ports[3 * i + 1],
            rest_port: ports[3 * i],
            log,
            _data: tempfile::tempdir().expect("placeholder"),
        });
    }
    for m in &mut members {
        m.wait_healthy(None).await;
    }
    ctl(
        &members[0].endpoint("http"),
        &[],
        &["put", "replicated", "yes"],
    )
    .await
    .ok("put on m0");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ctl(
            &members[2].endpoint("http"),
            &[],
            &["get", "replicated", "--consistency=s"],
        )
        .await
        .ok("serializable get on m2");
        if out == "replicated\nyes\n" {
            break;
        }
        assert!(Instant::now() < deadline, "m2 never saw the put: {out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (members, (0..3).map(|i| ports[3 * i + 2]).collect())
}

#[tokio::test]
async fn three_members_over_https_peers_with_client_cert_auth() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("data dirs");
    let peer = [
        "--peer-cert-file".to_string(),
        pki.path("server.pem"),
        "--peer-key-file".to_string(),
        pki.path("server-key.pem"),
        "--peer-trusted-ca-file".to_string(),
        pki.path("ca.pem"),
        "--peer-client-cert-auth".to_string(),
    ];
    let (_members, peer_ports) = https_cluster(data.path(), &peer).await;
    let peer_port = peer_ports[0];
    // A dialler with a certificate from another CA is refused by the peer listener.
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.pem")).expect("ca.pem") {
        roots.add(cert.expect("ca")).expect("add ca");
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(pki.path("other-alice.pem"))
            .expect("pem")
            .map(|c| c.expect("cert"))
            .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(pki.path("other-alice-key.pem"))
        .expect("key");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(ring_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    let refused = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", peer_port)).await?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        // TLS 1.3: the server judges the client certificate after the client's handshake ends,
        // so the refusal shows on the first read.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await?;
        Ok::<usize, std::io::Error>(n)
    };
    match tokio::time::timeout(Duration::from_secs(5), refused).await {
        Ok(Ok(n)) => assert_eq!(n, 0, "the peer listener answered a foreign certificate"),
        Ok(Err(_)) => {}
        Err(_) => panic!("the peer listener neither answered nor refused"),
    }
}

#[tokio::test]
async fn three_members_with_peer_auto_tls() {
    let data = tempfile::tempdir().expect("data dirs");
    let _members = https_cluster(data.path(), &["--peer-auto-tls".to_string()]).await;
    assert!(data.path().join("m1/fixtures/peer/cert.pem").exists());
}
