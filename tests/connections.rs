//! Descriptors and connections: the open-file limit raised at start, quiet connections closed
//! (the header timeout for a client that sends nothing or half a request head, HTTP/2 keep-alive
//! pings, TCP keep-alive on accepted sockets), and `--max-client-connections` holding new
//! connections in the listen queue while `/health` on the REST port still answers.
//!
//! Waits are bounded by generous deadlines; a test asserts that something happens within one, never
//! how fast. The timeout flags are set short so that the bounds can be short too.

mod common;

use std::time::Duration;

use common::{Server, REQUEST_BOUND};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a quiet connection may stay open when the server's timeouts are about a second.
const CLOSE_BOUND: Duration = Duration::from_secs(15);

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A TCP connection to `port`; panics if the server's listen queue does not take it in 10 s.
async fn connect(port: u16) -> TcpStream {
    tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .unwrap_or_else(|_| panic!("connect to port {port}: no room in its listen queue"))
    .unwrap_or_else(|e| panic!("connect to port {port}: {e}"))
}

/// Reads (and drops) whatever the server sends until it closes the connection; returns the bytes
/// read, or `None` if it was still open after [`CLOSE_BOUND`].
async fn read_until_closed(tcp: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(CLOSE_BOUND, read_all).await.ok()?;
    Some(got)
}

async fn get_status(url: &str, timeout: Duration) -> Result<u16, reqwest::Error> {
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    Ok(client.get(url).send().await?.status().as_u16())
}

/// The `Max open files` soft and hard limits of process `pid`.
fn open_file_limits(pid: u32) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-files line in:\n{text}"));
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap().to_string(),
        fields.next().unwrap().to_string(),
    )
}

/// Started with a soft limit of 256 descriptors, the member raises it to the hard limit, and with
/// 400 idle connections open on its REST and client ports `/health` and a put still work (at 256
/// it could not hold them all, and with them it could serve nothing else). The header timeout is
/// off so that the idle connections stay, as they did in the issue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_so_idle_connections_do_not_starve_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        Server::start_with_soft_nofile(dir.path(), &["--http-read-header-timeout", "0"], 256).await;
    let (soft, hard) = open_file_limits(server.pid());
    assert_eq!(
        soft, hard,
        "soft open-file limit not raised to the hard one"
    );

    let rest_port = port_of(&server.base_url());
    let client_port = port_of(&server.client_url());
    let mut idle = Vec::new();
    for i in 0..400 {
        idle.push(connect(if i % 2 == 0 { rest_port } else { client_port }).await);
    }
    for url in [server.base_url(), server.client_url()] {
        let status = get_status(&format!("{url}/health"), Duration::from_secs(10)).await;
        assert!(
            matches!(status, Ok(200)),
            "{url}/health with 400 idle connections open: {status:?}; log:\n{}",
            server.log_tail()
        );
    }
    server.rest().put("after/idle", "v").await;
    drop(idle);
}

/// With `--http-read-header-timeout 1s`, a client that sends half a request head, one that sends
/// nothing, and one that sends the start of the HTTP/2 preface and stops are all disconnected; a
/// whole request is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_do_not_send_a_whole_request_head_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--http-read-header-timeout", "1s"]).await;
    for port in [port_of(&server.base_url()), port_of(&server.client_url())] {
        let mut half = connect(port).await;
        half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut silent = connect(port).await;
        let mut preface = connect(port).await;
        preface.write_all(b"PRI * HTTP/2").await.unwrap();
        let mut whole = connect(port).await;
        whole
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();

        let answer = read_until_closed(&mut whole).await.expect("answered");
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        for (what, tcp) in [
            ("half a request head", &mut half),
            ("nothing", &mut silent),
            ("part of the HTTP/2 preface", &mut preface),
        ] {
            assert!(
                read_until_closed(tcp).await.is_some(),
                "a client that sent {what} to port {port} was still connected after \
                 {CLOSE_BOUND:?}; log:\n{}",
                server.log_tail()
            );
        }
    }
}

/// An HTTP/2 frame header: payload length, type, flags, stream id.
fn frame(len: usize, ty: u8, flags: u8, stream: u32) -> Vec<u8> {
    let mut f = (len as u32).to_be_bytes()[1..].to_vec();
    f.extend([ty, flags]);
    f.extend(stream.to_be_bytes());
    f
}

/// The types of the whole frames in `bytes` (which start after the server's side of the
/// handshake, so at a frame boundary).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

/// With `--grpc-keepalive-interval 1s --grpc-keepalive-timeout 1s`, an HTTP/2 client that completes
/// the handshake and then never answers a ping is pinged and then disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_does_not_answer_pings_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--grpc-keepalive-interval",
            "1s",
            "--grpc-keepalive-timeout",
            "1s",
        ],
    )
    .await;
    let mut tcp = connect(port_of(&server.client_url())).await;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0, 0x4, 0, 0)); // SETTINGS, empty
    tcp.write_all(&hello).await.unwrap();
    let got = read_until_closed(&mut tcp).await.unwrap_or_else(|| {
        panic!(
            "a client that never answers pings was still connected after {CLOSE_BOUND:?}; log:\n{}",
            server.log_tail()
        )
    });
    const PING: u8 = 0x6;
    assert!(
        frame_types(&got).contains(&PING),
        "closed without a ping first: frames {:?}",
        frame_types(&got)
    );
}

/// TCP keep-alive is on for accepted sockets, at etcd's 30 s: the kernel lists the server's side of
/// an idle connection with a keep-alive timer (`/proc/net/tcp`, timer 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_sockets_have_tcp_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    for port in [port_of(&server.base_url()), port_of(&server.client_url())] {
        let mut tcp = connect(port).await;
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(REQUEST_BOUND, tcp.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let ours = tcp.local_addr().unwrap().port();
        // The server's side: local port `port`, remote port `ours`. Fields: sl, local, remote, st,
        // tx:rx queues, tr:when, ... (`when` in clock ticks of 1/100 s).
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let timer = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| {
                f.len() > 5
                    && f[1].ends_with(&format!(":{port:04X}"))
                    && f[2].ends_with(&format!(":{ours:04X}"))
            })
            .map(|f| f[5].to_string())
            .unwrap_or_else(|| panic!("the server's socket is not in /proc/net/tcp:\n{text}"));
        let (tr, when) = timer.split_once(':').unwrap();
        assert_eq!(
            tr, "02",
            "no keep-alive timer on the server's socket ({timer})"
        );
        let ticks = u64::from_str_radix(when, 16).unwrap();
        assert!(ticks <= 30 * 100, "keep-alive time above 30 s ({timer})");
    }
}

/// With `--max-client-connections 4` and four idle connections on the client port, a fifth waits
/// unanswered in the listen queue while `/health` on the REST port (its reserve) answers; once the
/// idle ones close, the waiting request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_and_rest_health_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--max-client-connections",
            "4",
            "--http-read-header-timeout",
            "60s",
        ],
    )
    .await;
    let client_port = port_of(&server.client_url());
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect(client_port).await);
    }
    let health = format!("{}/health", server.client_url());
    let fifth = get_status(&health, Duration::from_millis(1500)).await;
    assert!(
        fifth.is_err(),
        "a fifth connection was served beyond --max-client-connections 4: {fifth:?}"
    );
    let rest = get_status(&format!("{}/health", server.base_url()), REQUEST_BOUND).await;
    assert!(
        matches!(rest, Ok(200)),
        "REST /health with the client connections full: {rest:?}; log:\n{}",
        server.log_tail()
    );

    let waiting = tokio::spawn(async move { get_status(&health, REQUEST_BOUND).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "answered while the limit was full");
    drop(idle);
    let status = waiting.await.unwrap();
    assert!(
        matches!(status, Ok(200)),
        "the waiting request, once connections closed: {status:?}; log:\n{}",
        server.log_tail()
    );
    assert!(
        server
            .log_tail()
            .contains("--max-client-connections reached"),
        "no warning in the log"
    );
}
