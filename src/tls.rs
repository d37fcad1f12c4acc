//! TLS on the listeners and on the peer client, as etcd 3.4 configures it.
//!
//! **What a listener serves.** An `https://` listen URL (client, REST or peer) serves TLS; an
//! `http://` one serves plain text even when certificate files are given (etcd warns and ignores
//! them for that URL, and so do we). The client and REST listeners share `--cert-file`,
//! `--key-file` and `--trusted-ca-file`; the peer listener and the peer client use the `--peer-*`
//! set. Certificates and keys are PEM files read once at start: rotating them means restarting
//! the member (one member at a time in a cluster).
//!
//! **Client certificates.** A listener with a trusted CA file, or with `--client-cert-auth`,
//! requires a client certificate that chains to that CA (rustls' WebPKI verifier): a certificate
//! from another CA, or none, fails the handshake, as with etcd (whose listener asks for a verified
//! client certificate as soon as a trusted CA file is set). With `--client-cert-auth` the Common
//! Name of the verified certificate is also an identity for auth ([`common_name`], used by
//! `api` through [`crate::auth::ClientCertName`]).
//!
//! **Auto TLS.** `--auto-tls` / `--peer-auto-tls` without certificate files make a self-signed
//! certificate for the listen URLs' hosts, kept as etcd keeps it, under
//! `DATA_DIR/fixtures/client` or `DATA_DIR/fixtures/peer` (`cert.pem`, `key.pem`), and reused on the
//! next start. Nobody can verify such a certificate: clients must skip verification
//! (`etcdctl --insecure-skip-tls-verify`), and the peer client, as etcd's, then accepts any server
//! certificate. That protects against eavesdropping, not against an active man in the middle.
//!
//! **ALPN.** Client and REST listeners offer `h2` and `http/1.1` (gRPC clients need HTTP/2; the
//! JSON gateway, `/health` and `/metrics` are HTTP/1.1 too); the peer listener and client speak
//! `h2` only.
//!
//! Left out: etcd's `--cipher-suites`, `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname`,
//! certificate revocation lists (`--client-crl-file`), reloading certificates without a restart,
//! and the system's root store (a client certificate or a peer must chain to the trusted CA file).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};

use crate::error::{Error, Result};

/// ALPN protocols of the client and REST listeners: HTTP/2 first, for gRPC.
pub const ALPN_CLIENT: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN protocols of the peer listener and client: the peer API is gRPC only.
pub const ALPN_PEER: &[&[u8]] = &[b"h2"];

/// One side's TLS flags (client or peer), as given: etcd's `transport.TLSInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The listener's certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The CA that client (or peer) certificates must chain to, and, for the peer client, the CA
    /// that other members' certificates must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a verified client certificate; on the client side its Common Name is also an auth
    /// identity.
    pub client_cert_auth: bool,
    /// Without certificate files, make a self-signed certificate.
    pub auto_tls: bool,
}

impl TlsInfo {
    /// Whether no certificate files were given (etcd's `TLSInfo.Empty`).
    pub fn is_empty(&self) -> bool {
        self.cert_file.is_none() && self.key_file.is_none()
    }

    /// Whether an `https://` URL can be served: certificate files, or auto TLS.
    pub fn can_serve(&self) -> bool {
        !self.is_empty() || self.auto_tls
    }

    /// Whether client certificates are asked for and verified.
    pub fn verifies_clients(&self) -> bool {
        self.trusted_ca_file.is_some() || self.client_cert_auth
    }

    /// Checks flags that make no sense together; `side` is `""` or `"peer-"`, for the messages.
    pub fn check(&self, side: &str) -> Result<()> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Error::InvalidArgument(format!(
                "--{side}cert-file and --{side}key-file must be given together"
            )));
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(Error::InvalidArgument(format!(
                "--{side}client-cert-auth needs --{side}trusted-ca-file: client certificates are \
                 verified against that CA"
            )));
        }
        Ok(())
    }
}

/// rustls with the `ring` provider, chosen explicitly so that another crate's provider feature can
/// never make the choice ambiguous. rustls deprecates it for lacking post-quantum key exchange;
/// `aws-lc-rs`, which has it, needs cmake and a much longer build, and etcd 3.4 (Go 1.12) offers no
/// post-quantum exchange either.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key, ready for rustls.
pub struct Identity {
    /// The certificate first, then its intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
    /// Made by auto TLS: nobody can verify it.
    pub self_signed: bool,
}

impl Identity {
    /// The identity `info` names: its files, else (with auto TLS) the self-signed certificate
    /// under `auto_dir` for `hosts`, made now if it is not there yet. `None`: neither is set.
    pub fn load(info: &TlsInfo, auto_dir: &Path, hosts: &[String]) -> Result<Option<Identity>> {
        if let (Some(cert), Some(key)) = (&info.cert_file, &info.key_file) {
            if info.auto_tls {
                tracing::warn!("certificate files are given: auto TLS is ignored");
            }
            return Ok(Some(Identity {
                chain: read_certs(cert)?,
                key: read_key(key)?,
                self_signed: false,
            }));
        }
        if !info.auto_tls {
            return Ok(None);
        }
        let (cert, key) = self_cert(auto_dir, hosts)?;
        Ok(Some(Identity {
            chain: read_certs(&cert)?,
            key: read_key(&key)?,
            self_signed: true,
        }))
    }
}

/// Every certificate in a PEM file; none is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot read a private key from {}: {e}",
            path.display()
        ))
    })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| {
            Error::InvalidArgument(format!("bad CA certificate in {}: {e}", path.display()))
        })?;
    }
    Ok(Arc::new(roots))
}

/// The listener side: `None` when `info` gives nothing to serve TLS with.
pub fn server_config(
    info: &TlsInfo,
    auto_dir: &Path,
    hosts: &[String],
    alpn: &[&[u8]],
) -> Result<Option<Arc<ServerConfig>>> {
    let Some(id) = Identity::load(info, auto_dir, hosts)? else {
        return Ok(None);
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS: {e}")))?;
    let builder = match &info.trusted_ca_file {
        Some(ca) if info.verifies_clients() => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
                .build()
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(id.chain, id.key)
        .map_err(|e| Error::InvalidArgument(format!("certificate and key do not match: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Some(Arc::new(config)))
}

/// The peer client side: server certificates must chain to the trusted CA (or, with a
/// self-signed identity of our own, are not verified at all, as etcd's auto TLS does), and our
/// certificate is offered as the client certificate. `None` when `info` sets no TLS.
pub fn client_config(
    info: &TlsInfo,
    auto_dir: &Path,
    hosts: &[String],
) -> Result<Option<Arc<ClientConfig>>> {
    let id = Identity::load(info, auto_dir, hosts)?;
    if id.is_none() && info.trusted_ca_file.is_none() {
        return Ok(None);
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS: {e}")))?;
    let builder = match (&info.trusted_ca_file, &id) {
        (Some(ca), _) => builder.with_root_certificates(roots(ca)?),
        (None, Some(id)) if id.self_signed => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider()))),
        // No CA to verify against: every handshake will fail, and the log says why.
        (None, _) => builder.with_root_certificates(RootCertStore::empty()),
    };
    let mut config = match id {
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| {
                Error::InvalidArgument(format!("peer certificate and key do not match: {e}"))
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = ALPN_PEER.iter().map(|p| p.to_vec()).collect();
    Ok(Some(Arc::new(config)))
}

/// The peer client's TLS for `config` (`--peer-*` flags; auto TLS under
/// `DATA_DIR/fixtures/peer`, for the hosts of `--listen-peer-urls`).
pub fn peer_client(config: &crate::config::Config) -> Result<crate::peer::PeerTls> {
    client_config(
        &config.peer_tls,
        &peer_auto_dir(config),
        &hosts_of(&config.listen_peer_urls),
    )
}

/// The peer listener's TLS for `config`; `None` when no peer URL is `https://`.
pub fn peer_server(config: &crate::config::Config) -> Result<Option<Arc<ServerConfig>>> {
    if config
        .listen_peer_urls
        .iter()
        .all(|u| u.scheme() != "https")
    {
        return Ok(None);
    }
    server_config(
        &config.peer_tls,
        &peer_auto_dir(config),
        &hosts_of(&config.listen_peer_urls),
        ALPN_PEER,
    )
}

fn peer_auto_dir(config: &crate::config::Config) -> PathBuf {
    config.data_dir.join("fixtures").join("peer")
}

/// A server certificate verifier that accepts every certificate: what etcd's peer client does with
/// `--peer-auto-tls` (`InsecureSkipVerify`). Signatures of the handshake itself are still checked,
/// so the session is encrypted to whoever holds the key, but that may be anyone.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The hosts of `urls` (without ports), for an auto-TLS certificate.
pub fn hosts_of<'a>(urls: impl IntoIterator<Item = &'a url::Url>) -> Vec<String> {
    let mut hosts: Vec<String> = urls
        .into_iter()
        .filter_map(|u| u.host_str())
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// etcd's `transport.SelfCert`: `dir/cert.pem` and `dir/key.pem`, a self-signed certificate for
/// `hosts` (IP addresses become IP names, the rest DNS names), made once and then reused.
pub fn self_cert(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let io = |what: &str, e: std::io::Error| {
        Error::InvalidArgument(format!("auto TLS: cannot {what} in {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create the directory", e))?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())
        .map_err(|e| Error::InvalidArgument(format!("auto TLS: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "mini-etcd");
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    // etcd's self-signed certificates are valid for a year.
    params.not_after = (now + Duration::from_secs(365 * 24 * 3600)).into();
    let pair = rcgen::KeyPair::generate()
        .map_err(|e| Error::Internal(format!("auto TLS: cannot make a key: {e}")))?;
    let signed = params
        .self_signed(&pair)
        .map_err(|e| Error::Internal(format!("auto TLS: cannot sign: {e}")))?;
    write_private(&key, pair.serialize_pem().as_bytes()).map_err(|e| io("write key.pem", e))?;
    std::fs::write(&cert, signed.pem()).map_err(|e| io("write cert.pem", e))?;
    tracing::info!(dir = %dir.display(), ?hosts, "made a self-signed certificate (auto TLS)");
    Ok((cert, key))
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The Common Name of a certificate's subject (the last one, as Go's `pkix.Name` keeps it), read
/// straight from its DER: what etcd takes as the user name of a verified client certificate.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let (_, certificate, _) = der(cert).filter(|(tag, _, _)| *tag == SEQUENCE)?;
    let (_, mut tbs, _) = der(certificate).filter(|(tag, _, _)| *tag == SEQUENCE)?;
    // version [0] (optional), serial, signature algorithm, issuer, validity, then the subject.
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = der(tbs)?.2;
    }
    let (_, mut subject, _) = der(tbs).filter(|(tag, _, _)| *tag == SEQUENCE)?;
    let mut name = None;
    while let Some((_, mut rdn, rest)) = der(subject) {
        subject = rest;
        while let Some((_, attribute, more)) = der(rdn) {
            rdn = more;
            let Some((OID, oid, value)) = der(attribute) else {
                continue;
            };
            if oid != COMMON_NAME {
                continue;
            }
            name = match der(value)? {
                (BMP_STRING, s, _) => {
                    let units: Vec<u16> = s
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                    String::from_utf16(&units).ok()
                }
                (_, s, _) => String::from_utf8(s.to_vec()).ok(),
            };
        }
    }
    name
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BMP_STRING: u8 = 0x1e;
/// id-at-commonName, 2.5.4.3.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// One DER element: (tag, contents, what follows). Single-byte tags only (all an X.509 name uses).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A tonic/hyper connector that dials TCP and runs a TLS handshake (the peer client's transport
/// for `https://` peer URLs).
#[derive(Clone)]
pub struct Connector {
    /// The peer client's TLS settings.
    pub config: Arc<ClientConfig>,
    /// How long the TCP connect and the handshake may take together.
    pub timeout: Duration,
}

type Connected = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower::Service<http::Uri> for Connector {
    type Response = Connected;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Connected>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = Arc::clone(&self.config);
        let timeout = self.timeout;
        Box::pin(async move {
            let invalid = |what: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {what}"))
            };
            let host = uri
                .host()
                .ok_or_else(|| invalid("no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|_| invalid("bad host name"))?;
            let connect = async {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                let _ = tcp.set_nodelay(true);
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(stream)) => Ok(hyper_util::rt::TokioIo::new(stream)),
                Ok(Err(e)) => {
                    tracing::debug!(%uri, error = %e, "peer TLS connection failed");
                    Err(e)
                }
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS connect timed out",
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_cn(cn: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "o");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_is_read_from_the_subject() {
        assert_eq!(
            common_name(&cert_with_cn("alice")).as_deref(),
            Some("alice")
        );
        let long = "x".repeat(300);
        assert_eq!(common_name(&cert_with_cn(&long)), Some(long));
    }

    #[test]
    fn no_common_name_and_garbage_give_none() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(common_name(&der), None);
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(&der[..der.len() / 2]), None);
    }

    #[test]
    fn self_cert_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (cert, key) = self_cert(dir.path(), &hosts).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is readable by its owner only");
        }
        let first = std::fs::read(&cert).unwrap();
        self_cert(dir.path(), &hosts).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), first);
        let info = TlsInfo {
            auto_tls: true,
            ..TlsInfo::default()
        };
        let server = server_config(&info, dir.path(), &hosts, ALPN_CLIENT).unwrap();
        assert!(server.is_some());
        let client = client_config(&info, dir.path(), &hosts).unwrap();
        assert!(client.is_some());
    }

    #[test]
    fn flags_that_do_not_go_together_are_refused() {
        let cert_only = TlsInfo {
            cert_file: Some("c".into()),
            ..TlsInfo::default()
        };
        assert!(cert_only.check("").is_err());
        let auth_without_ca = TlsInfo {
            client_cert_auth: true,
            ..TlsInfo::default()
        };
        assert!(auth_without_ca
            .check("peer-")
            .unwrap_err()
            .to_string()
            .contains("--peer-client-cert-auth needs --peer-trusted-ca-file"));
    }
}
