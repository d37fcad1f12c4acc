//! The web console (`/ui`) in a real browser: headless Chromium driven over WebDriver.
//!
//! Each test starts its own `mini-etcd` (or a 3-member cluster) and its own `chromedriver` on free
//! loopback ports, and talks WebDriver's HTTP protocol with `reqwest` (a handful of calls: new
//! session, navigate, find, click, type, read text, run a script, screenshot), which needs no
//! WebDriver crate. The browser sees only what a user's browser would: the page at `/ui/` and the
//! public APIs it calls; the tests check results both on the page and through the APIs.
//!
//! Chromium and chromedriver are Debian's (`chromium`, `chromium-driver`; scripts/test installs
//! them when missing). If chromedriver cannot start, the test fails and says so: a console test
//! that skipped silently would pass with a broken console.
//!
//! `UPDATE_SCREENSHOTS=1` writes the main views to `docs/screenshots/*.png`; without it nothing in
//! the tree is touched. Every wait has a deadline, a safety bound rather than a speed claim.

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::cluster::Cluster;
use common::Server;
use serde_json::{json, Value};

/// How long an element may take to appear or a text to change.
const UI_BOUND: Duration = Duration::from_secs(20);
/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A chromedriver process and one headless browser session on it.
struct Browser {
    /// WebDriver calls; each is one HTTP request to chromedriver.
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    /// The chromedriver process; on drop its whole process group (the browser's processes too)
    /// is killed, since killing chromedriver alone leaves Chromium running.
    driver: Child,
    /// chromedriver's log, quoted when a test fails.
    log: PathBuf,
    /// The log and the browser profile; removed on drop.
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium at `width` x `height`. Panics, loudly, when
    /// either cannot start.
    async fn start(width: u32, height: u32) -> Browser {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("chromedriver.log");
        let port = common::free_ports(1)[0];
        let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            // A process group of its own, so that drop ends the browser processes with it.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {driver_bin}: {e}. The console tests need Debian's chromium and \
                     chromium-driver (apt-get install -y chromium chromium-driver; scripts/test \
                     installs them)"
                )
            });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + UI_BOUND;
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r.json::<Value>().await.ok(),
                Err(_) => None,
            };
            if ready.is_some_and(|v| v["value"]["ready"] == true) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver on port {port} did not become ready: {}",
                common::read_log(&log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
                         format!("--window-size={width},{height}"),
                         format!("--user-data-dir={}", dir.path().join("profile").display())],
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromium did not start: {r}"))
            .to_string();
        Browser {
            http,
            session: format!("{base}/session/{id}"),
            driver,
            log,
            _dir: dir,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("webdriver {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("webdriver {url}: {e}"));
        r["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page and returns its value.
    async fn exec(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Waits until `pred` holds for what `script` returns.
    async fn wait_for(
        &self,
        what: &str,
        script: &str,
        args: Value,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + UI_BOUND;
        loop {
            let v = self.exec(script, args.clone()).await;
            if pred(&v) {
                return v;
            }
            if Instant::now() > deadline {
                let body = self.exec("return document.body.innerText", json!([])).await;
                panic!("timed out waiting for {what}; last value {v}; page text:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// The text of the first element matching `css` once it is shown and its text satisfies `pred`.
    async fn wait_text(&self, css: &str, pred: impl Fn(&str) -> bool) -> String {
        let v = self
            .wait_for(
                &format!("text of {css}"),
                "const e = document.querySelector(arguments[0]); \
                 return e && e.offsetParent !== null ? e.textContent : null;",
                json!([css]),
                |v| v.as_str().is_some_and(&pred),
            )
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// A visible element matching `css`, waited for.
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + UI_BOUND;
        loop {
            let v = self
                .call(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(id) = v[ELEMENT].as_str() {
                let shown = self
                    .call(
                        reqwest::Method::GET,
                        &format!("/element/{id}/displayed"),
                        None,
                    )
                    .await;
                if shown == true {
                    return id.to_string();
                }
            }
            if Instant::now() > deadline {
                let body = self.exec("return document.body.innerText", json!([])).await;
                panic!("no visible element {css}; page text:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("/element/{id}/click"),
                Some(json!({})),
            )
            .await;
        assert!(r.is_null(), "click {css}: {r}");
    }

    /// Replaces the content of the input matching `css` with `text`.
    async fn fill(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("/element/{id}/value"),
                Some(json!({ "text": text })),
            )
            .await;
        assert!(r.is_null(), "type into {css}: {r}");
    }

    /// How many elements match `css`.
    async fn count(&self, css: &str) -> i64 {
        self.exec(
            "return document.querySelectorAll(arguments[0]).length",
            json!([css]),
        )
        .await
        .as_i64()
        .unwrap_or(-1)
    }

    async fn wait_count(&self, css: &str, pred: impl Fn(i64) -> bool) -> i64 {
        self.wait_for(
            &format!("count of {css}"),
            "return document.querySelectorAll(arguments[0]).length",
            json!([css]),
            |v| v.as_i64().is_some_and(&pred),
        )
        .await
        .as_i64()
        .unwrap_or(-1)
    }

    /// Saves a screenshot to docs/screenshots/NAME.png when UPDATE_SCREENSHOTS=1; takes it
    /// either way, so the call is tested.
    async fn screenshot(&self, name: &str) {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("screenshot base64"))
            .expect("screenshot decodes");
        assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        if std::env::var("UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
            std::fs::create_dir_all(&dir).expect("mkdir docs/screenshots");
            std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
        }
    }

    async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "chromedriver log tail:\n{}",
                common::tail(&common::read_log(&self.log), 1500)
            );
        }
        // SAFETY: kill(2) on the process group our own child leads (spawned with
        // `process_group(0)`, so its pgid is its pid) and which it has not left.
        unsafe {
            libc::kill(-(self.driver.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A JSON gateway call on the REST listener (where the console calls it).
async fn gw(base: &str, path: &str, token: Option<&str>, body: Value) -> Value {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body);
    if let Some(t) = token {
        req = req.header("Authorization", t);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Clicks the dialog's confirm button once the dialog is open.
async fn confirm(b: &Browser) {
    b.wait_for(
        "the confirmation dialog",
        "return document.getElementById('confirm').open",
        json!([]),
        |v| v == &json!(true),
    )
    .await;
    b.click("#confirm-ok").await;
}

#[tokio::test]
async fn keys_tree_value_history_put_and_delete() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &[]).await;
    let rest = server.rest();
    let base = server.base_url();
    rest.put("app/name", "demo").await;
    rest.put("app/config/cache", "redis://cache:6379").await;
    rest.put("app/config/db", r#"{"host":"db","port":5432}"#)
        .await;
    let early = rest
        .put("app/config/db", r#"{"host":"db","port":5433}"#)
        .await;
    rest.put("app/config/db", r#"{"host":"db2","port":5433}"#)
        .await;
    rest.put("app/config/db", r#"{"host":"db2","port":5433,"pool":16}"#)
        .await;
    // The first two versions of app/config/db are compacted away.
    let c = rest.compact(early).await;
    assert_eq!(c.status, 200, "{}", c.body);
    let blob = [0xffu8, 0x00, 0x01, 0xfe];
    let r = gw(
        &base,
        "/v3/kv/put",
        None,
        json!({"key": b64(b"bin/blob"), "value": b64(&blob)}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    // A key with an earlier life: created, changed, deleted, created again (all after the
    // compaction, so every event of it is retained).
    rest.put("svc/state", "v1").await;
    rest.put("svc/state", "v2").await;
    let gone = rest.delete("svc/state").await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    rest.put("svc/state", "v3").await;
    for i in 0..150 {
        rest.put(&format!("many/k{i:03}"), "x").await;
    }

    // The assets' headers: exact types, the policy, revalidation.
    let http = reqwest::Client::new();
    for (path, ty) in [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.expect(path);
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["content-type"], ty, "{path}");
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        let csp = h["content-security-policy"].to_str().expect("csp");
        assert!(
            csp.contains("script-src 'self';") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        let etag = h["etag"].clone();
        let again = http
            .get(format!("{base}{path}"))
            .header("If-None-Match", etag)
            .send()
            .await
            .expect(path);
        assert_eq!(again.status(), 304, "{path} revalidated");
    }

    let b = Browser::start(1280, 800).await;
    b.goto(&format!("{base}/ui")).await;
    // The root level: folders app/, bin/, many/, svc/.
    b.wait_count("#tree button.folder", |n| n == 4).await;
    b.click("#tree button[data-folder='YXBwLw==']").await; // app/
    b.wait_text("#tree", |t| t.contains("config/") && t.contains("name"))
        .await;
    b.click("#tree button[data-folder='YXBwL2NvbmZpZy8=']")
        .await; // app/config/
    b.click(&format!(
        "#tree button[data-key='{}']",
        b64(b"app/config/db")
    ))
    .await;
    b.wait_text("#key-name", |t| t == "app/config/db").await;
    let meta = b.wait_text("#key-meta", |t| t.contains("Version")).await;
    assert!(meta.contains("Version4"), "{meta}");
    b.find("#value-format").await;
    b.exec(
        "const s = document.getElementById('value-format'); s.value = 'json'; \
         s.dispatchEvent(new Event('change'));",
        json!([]),
    )
    .await;
    let value = b.wait_text("#key-value", |t| t.contains("\n")).await;
    assert_eq!(
        value, "{\n  \"host\": \"db2\",\n  \"port\": 5433,\n  \"pool\": 16\n}",
        "pretty JSON"
    );
    b.click("#key-history").await;
    let end = b
        .wait_text("#history-end", |t| t.contains("Compaction"))
        .await;
    assert!(end.contains(&format!("revision {}", early - 1)), "{end}");
    // Versions 4, 3 and 2 are retained (2 is the one at the compaction revision), then the mark.
    assert_eq!(b.count("#history-rows tr:not(.mark)").await, 3);
    assert_eq!(b.count("#history-rows tr.mark").await, 1);
    b.screenshot("keys").await;

    // History across a delete: the current life, the delete, the earlier life, then the
    // compaction mark (the REST watch from the oldest retained revision reads the earlier life).
    b.fill("#search-prefix", "svc/").await;
    b.click("#search-go").await;
    b.click(&format!("#tree button[data-key='{}']", b64(b"svc/state")))
        .await;
    b.wait_text("#key-value", |t| t == "v3").await;
    b.click("#key-history").await;
    let end = b
        .wait_text("#history-end", |t| t.contains("Compaction"))
        .await;
    assert!(end.contains(&format!("revision {early}")), "{end}");
    let rows = b
        .exec(
            "return Array.from(document.querySelectorAll('#history-rows tr'), \
             r => Array.from(r.cells, c => c.textContent).join('|'))",
            json!([]),
        )
        .await;
    let rows: Vec<String> = serde_json::from_value(rows).expect("rows");
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows[0].ends_with("|1|v3"), "{rows:?}");
    assert!(rows[1].contains("Deleted"), "{rows:?}");
    assert!(rows[2].ends_with("|2|v2"), "{rows:?}");
    assert!(rows[3].ends_with("|1|v1"), "{rows:?}");
    assert!(rows[4].contains("Compacted"), "{rows:?}");
    // Revisions descend down the page.
    let revs: Vec<i64> = rows[..4]
        .iter()
        .map(|r| {
            r.split('|')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert!(revs.windows(2).all(|w| w[0] > w[1]), "{rows:?}");

    // Paging: many/ holds 150 keys, one page is 100.
    b.click("#crumbs button:first-child").await;
    b.click("#tree button[data-folder='bWFueS8=']").await;
    b.wait_count("#tree li", |n| n == 100).await;
    b.click("#tree-more").await;
    b.wait_count("#tree li", |n| n == 150).await;

    // A value that is not UTF-8: shown as hex, edited as base64, written back intact.
    b.fill("#search-prefix", "bin/").await;
    b.click("#search-go").await;
    b.click(&format!("#tree button[data-key='{}']", b64(b"bin/blob")))
        .await;
    b.wait_text("#key-value", |t| t == "ff 00 01 fe").await;
    b.click("#key-edit").await;
    b.fill("#edit-value", &b64(&[0xff, 0x00, 0x02])).await;
    b.click("#edit-save").await;
    confirm(&b).await;
    b.wait_text("#key-value", |t| t == "ff 00 02").await;
    let r = gw(
        &base,
        "/v3/kv/range",
        None,
        json!({"key": b64(b"bin/blob")}),
    )
    .await;
    assert_eq!(r["kvs"][0]["value"], b64(&[0xff, 0x00, 0x02]), "{r}");

    // Put a new key through the form.
    b.click("#new-key summary").await;
    b.fill("#new-key-name", "bin/new").await;
    b.fill("#new-key-value", "hello console").await;
    b.click("#new-put").await;
    confirm(&b).await;
    b.wait_text("#key-name", |t| t == "bin/new").await;
    assert_eq!(
        rest.get("bin/new").await.expect("bin/new written").value,
        "hello console"
    );

    // Delete: cancelling keeps the key, confirming deletes it.
    b.click("#key-delete").await;
    b.wait_for(
        "dialog",
        "return document.getElementById('confirm').open",
        json!([]),
        |v| v == &json!(true),
    )
    .await;
    b.click("#confirm-cancel").await;
    assert!(
        rest.get("bin/new").await.is_some(),
        "cancel must not delete"
    );
    b.click("#key-delete").await;
    confirm(&b).await;
    b.wait_text("#detail-empty", |t| t == "Deleted.").await;
    assert!(
        rest.get("bin/new").await.is_none(),
        "deleted through the console"
    );

    // Keyboard: the arrow keys move between the views.
    let tab = b.find("#tab-keys").await;
    b.call(
        reqwest::Method::POST,
        &format!("/element/{tab}/value"),
        Some(json!({ "text": "\u{E014}" })),
    )
    .await;
    b.wait_for(
        "the Live tab selected by ArrowRight",
        "return document.getElementById('tab-live').getAttribute('aria-selected')",
        json!([]),
        |v| v == "true",
    )
    .await;
    assert_eq!(
        b.exec("return document.activeElement.id", json!([])).await,
        "tab-live"
    );

    // Metrics, while another client writes: rates and fsync percentiles from successive scrapes.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (rest, writing) = (rest.clone(), writing.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = rest.try_put(&format!("load/{}", i % 50), "x").await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    b.click("#tab-metrics").await;
    b.wait_text("#chart-watchers .now", |t| t.starts_with("Now: live"))
        .await;
    b.wait_text("#chart-fsync .now", |t| {
        t.starts_with("Now: p50") && !t.contains('–')
    })
    .await;
    b.wait_for(
        "five points of the write rate",
        "const p = document.querySelector('#chart-applied polyline'); \
         return p ? p.getAttribute('points').split(' ').length : 0",
        json!([]),
        |v| v.as_i64().is_some_and(|n| n >= 5),
    )
    .await;
    // The REST puts show in the request rate (the console's own scrapes add about two a second).
    b.wait_for(
        "REST requests per second above the console's own",
        "const t = document.querySelector('#chart-requests .now').textContent; \
         const m = /REST API ([0-9.]+)/.exec(t); return m ? Number(m[1]) : 0",
        json!([]),
        |v| v.as_f64().is_some_and(|r| r > 10.0),
    )
    .await;
    b.screenshot("metrics").await;
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.await.expect("writer");

    // Phone width: one column, nothing wider than the screen; and the dark theme.
    b.click("#tab-keys").await;
    b.click(&format!("#tree button[data-key='{}']", b64(b"bin/blob")))
        .await;
    b.wait_text("#key-value", |t| t == "ff 00 02").await;
    b.resize(390, 844).await;
    b.click("#theme").await; // auto -> light
    b.click("#theme").await; // light -> dark
    let theme = b
        .exec("return document.documentElement.dataset.theme", json!([]))
        .await;
    assert_eq!(theme, "dark");
    let overflow = b
        .exec(
            "return document.documentElement.scrollWidth - window.innerWidth",
            json!([]),
        )
        .await;
    assert!(
        overflow.as_i64().is_some_and(|o| o <= 0),
        "page wider than a phone: {overflow}"
    );
    b.screenshot("keys-phone-dark").await;
    let blocked = b
        .exec(
            "return document.documentElement.dataset.cspViolations || null",
            json!([]),
        )
        .await;
    assert!(
        blocked.is_null(),
        "{blocked} requests or scripts blocked by the CSP"
    );
}

#[tokio::test]
async fn live_watch_follows_another_client() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &[]).await;
    let rest = server.rest();
    rest.put("feed/old", "before the watch").await;

    let b = Browser::start(1280, 800).await;
    b.goto(&format!("{}/ui/#live", server.base_url())).await;
    b.fill("#watch-key", "feed/").await;
    b.click("#watch-start").await;
    b.wait_text("#watch-state", |t| t.starts_with("Watching feed/"))
        .await;
    rest.wait_watchers("the console's watch", Duration::from_secs(20), |n| n >= 1)
        .await;
    for i in 1..=3 {
        rest.put(&format!("feed/{i}"), &format!("value {i}")).await;
    }
    assert_eq!(rest.delete("feed/1").await.status, 200);
    rest.put("other", "not watched").await;
    b.wait_count("#events tr", |n| n == 4).await;
    let rows = b.wait_text("#events", |_| true).await;
    assert!(rows.contains("DELETEfeed/1"), "{rows}");
    assert!(rows.contains("PUTfeed/3value 3"), "{rows}");
    assert!(
        !rows.contains("before the watch") && !rows.contains("other"),
        "{rows}"
    );
    b.wait_text("#spark-peak", |t| t != "0").await;
    b.screenshot("live").await;

    // Paused: events are held, not shown; resume shows them.
    b.click("#watch-pause").await;
    rest.put("feed/4", "while paused").await;
    b.wait_text("#watch-state", |t| t == "Paused: 1 events held.")
        .await;
    assert_eq!(b.count("#events tr").await, 4);
    b.click("#watch-pause").await;
    b.wait_count("#events tr", |n| n == 5).await;
    b.click("#watch-clear").await;
    b.wait_count("#events tr", |n| n == 0).await;
    b.click("#watch-stop").await;
    rest.wait_watchers("the watch to end", Duration::from_secs(20), |n| n == 0)
        .await;
}

#[tokio::test]
async fn cluster_members_and_a_killed_member() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    // Talk to a follower, and kill the other follower.
    let via = (leader + 1) % 3;
    let victim = (leader + 2) % 3;
    let victim_id = format!("{:x}", cluster.member_id(victim).await);
    let leader_id = format!("{:x}", cluster.member_id(leader).await);

    // A lease with a key on it, for the leases table.
    let base = cluster.members[via].rest_url();
    let lease = gw(&base, "/v3/lease/grant", None, json!({"TTL": "600"})).await;
    let lease_id = lease["ID"]
        .as_str()
        .unwrap_or_else(|| panic!("lease: {lease}"))
        .to_string();
    let put = json!({"key": b64(b"svc/api"), "value": b64(b"10.0.0.1"), "lease": lease_id});
    let r = gw(&base, "/v3/kv/put", None, put).await;
    assert!(r.get("error").is_none(), "{r}");

    // A learner, started and caught up, before the page loads (the page may reach the members
    // it was loaded with).
    let learner = cluster.add_member(via, true).await;
    let learner_id = format!("{:x}", cluster.member_id(learner).await);

    let b = Browser::start(1280, 800).await;
    b.goto(&format!("{base}/ui/#cluster")).await;
    let leases = b.wait_text("#leases", |t| t.contains("svc/api")).await;
    let hex_id = format!("{:x}", lease_id.parse::<u64>().expect("lease id"));
    assert!(
        leases.starts_with(&hex_id) && leases.contains("600 s"),
        "{leases}"
    );
    b.wait_count("#members tr", |n| n == 4).await;
    b.wait_for(
        "every member healthy",
        "return Array.from(document.querySelectorAll('#members td.health'), e => e.textContent)",
        json!([]),
        |v| {
            v.as_array()
                .is_some_and(|a| a.iter().all(|h| h == "healthy"))
        },
    )
    .await;
    let role = b
        .wait_text(
            &format!("#members tr[data-member='{leader_id}'] td.role"),
            |t| t == "leader",
        )
        .await;
    assert_eq!(role, "leader");
    assert_eq!(b.count("#members td.role").await, 4);
    let role = b
        .wait_text(
            &format!("#members tr[data-member='{learner_id}'] td.role"),
            |t| t == "learner",
        )
        .await;
    assert_eq!(role, "learner");
    // Every member's own term, index and sizes, read from that member: the term is the same on
    // all (one leader), each index is where that member is, and none is unknown.
    let rows = b
        .wait_for(
            "every member's own status",
            "return Array.from(document.querySelectorAll('#members tr'), r => \
             ['term', 'index', 'dbsize', 'inuse'].map(c => r.querySelector('td.' + c).textContent))",
            json!([]),
            |v| {
                v.as_array().is_some_and(|rows| {
                    rows.len() == 4
                        && rows.iter().all(|r| r.as_array().is_some_and(|c| c.iter().all(|x| x != "?" && x != "0")))
                })
            },
        )
        .await;
    let rows = rows.as_array().expect("rows");
    assert!(
        rows.iter().all(|r| r[0] == rows[0][0]),
        "one term: {rows:?}"
    );
    for (i, r) in rows.iter().enumerate() {
        let index: u64 = r[1].as_str().and_then(|t| t.parse().ok()).unwrap_or(0);
        assert!(index > 0, "member row {i}: {r:?}");
        assert!(
            r[2].as_str().is_some_and(|t| t.ends_with("B")),
            "member row {i}: {r:?}"
        );
    }
    // The numbers are the members' own: compare with what each reports to a client directly.
    for i in [leader, victim, learner] {
        let id = format!("{:x}", cluster.member_id(i).await);
        let st = cluster
            .gateway(i, "/v3/maintenance/status", json!({}))
            .await
            .expect("status");
        let shown = b
            .wait_text(&format!("#members tr[data-member='{id}'] td.term"), |t| {
                t != "?"
            })
            .await;
        assert_eq!(json!(shown), st["raftTerm"], "member {id}: {st}");
    }
    let status = b.wait_text("#status", |t| t.contains("Raft term")).await;
    assert!(status.contains("Database size"), "{status}");
    b.screenshot("cluster").await;

    cluster.kill(victim);
    b.wait_text(
        &format!("#members tr[data-member='{victim_id}'] td.health"),
        |t| t == "unhealthy",
    )
    .await;
    let others = b
        .exec(
            "return Array.from(document.querySelectorAll('#members tr'))\
             .filter(r => r.dataset.member !== arguments[0])\
             .map(r => r.querySelector('td.health').textContent)",
            json!([victim_id]),
        )
        .await;
    assert_eq!(others, json!(["healthy", "healthy", "healthy"]));
    // What the killed member cannot report is unknown, not stale.
    let gone = b
        .wait_text(
            &format!("#members tr[data-member='{victim_id}'] td.index"),
            |t| t == "?",
        )
        .await;
    assert_eq!(gone, "?");
}

/// A real NOSPACE alarm (a backend quota the writes outgrow) shows in the cluster view, and the
/// member turns unhealthy with etcd's reason.
#[tokio::test]
async fn cluster_view_shows_a_real_alarm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--quota-backend-bytes=1048576"]).await;
    let base = server.base_url();
    let big = b64(&vec![b'x'; 128 * 1024]);
    let mut refused = None;
    for i in 0..64 {
        let put = json!({"key": b64(format!("fill/{i}").as_bytes()), "value": big});
        let r = gw(&base, "/v3/kv/put", None, put).await;
        if let Some(e) = r.get("error") {
            refused = Some(e.to_string());
            break;
        }
    }
    let refused = refused.expect("the quota never refused a write");
    assert!(refused.contains("database space exceeded"), "{refused}");

    let b = Browser::start(1280, 800).await;
    b.goto(&format!("{base}/ui/#cluster")).await;
    let alarms = b.wait_text("#alarms", |t| t.contains("NOSPACE")).await;
    let st = gw(&base, "/v3/maintenance/status", None, json!({})).await;
    let me = st["header"]["member_id"]
        .as_str()
        .and_then(|id| id.parse::<u64>().ok())
        .expect("member id");
    assert!(alarms.contains(&format!("{me:x}")), "{alarms}");
    let status = b
        .wait_text("#status", |t| t.contains("ALARM NOSPACE"))
        .await;
    assert!(status.contains("unhealthy"), "{status}");
    let health = b
        .wait_text("#members td.health", |t| t == "unhealthy")
        .await;
    assert_eq!(health, "unhealthy");
    b.screenshot("alarm").await;
}

#[tokio::test]
async fn auth_login_and_refusal() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &["--bcrypt-cost", "4"]).await;
    let base = server.base_url();
    // Through the gateway on the REST listener: root, and alice who may read pub/ only.
    for (path, body) in [
        (
            "/v3/auth/user/add",
            json!({"name": "root", "password": "rpw"}),
        ),
        (
            "/v3/auth/user/grant",
            json!({"user": "root", "role": "root"}),
        ),
        ("/v3/auth/role/add", json!({"name": "reader"})),
        (
            "/v3/auth/role/grant",
            json!({"name": "reader", "perm": {"permType": "READ", "key": b64(b"pub/"), "range_end": b64(b"pub0")}}),
        ),
        (
            "/v3/auth/user/add",
            json!({"name": "alice", "password": "apw"}),
        ),
        (
            "/v3/auth/user/grant",
            json!({"user": "alice", "role": "reader"}),
        ),
        (
            "/v3/kv/put",
            json!({"key": b64(b"pub/hello"), "value": b64(b"world")}),
        ),
        (
            "/v3/kv/put",
            json!({"key": b64(b"secret/plan"), "value": b64(b"hidden")}),
        ),
        ("/v3/auth/enable", json!({})),
    ] {
        let r = gw(&base, path, None, body).await;
        assert!(r.get("error").is_none(), "{path}: {r}");
    }

    // The gateway on the REST listener checks what the client port checks: no token, no keys.
    let r = gw(
        &base,
        "/v3/kv/range",
        None,
        json!({"key": b64(b"pub/hello")}),
    )
    .await;
    assert_eq!(r["error"], "etcdserver: user name is empty", "{r}");
    let r = reqwest::get(format!("{base}/get?key=pub/hello"))
        .await
        .expect("get");
    assert_eq!(r.status(), 401);

    let b = Browser::start(1280, 800).await;
    b.goto(&format!("{base}/ui/")).await;
    b.find("#login-name").await;
    // Nothing but the login form before logging in.
    let shown = b
        .exec(
            "return ['nav', 'view-keys', 'view-live', 'view-cluster', 'view-metrics']\
             .filter(id => !document.getElementById(id).hidden)",
            json!([]),
        )
        .await;
    assert_eq!(shown, json!([]), "visible before login");
    assert!(!b
        .exec("return document.body.innerText", json!([]))
        .await
        .to_string()
        .contains("pub/hello"));
    b.screenshot("login").await;

    b.fill("#login-name", "alice").await;
    b.fill("#login-password", "wrong").await;
    b.click("#login-submit").await;
    b.wait_text("#login-error", |t| t.contains("authentication failed"))
        .await;
    assert!(
        b.exec("return document.getElementById('nav').hidden", json!([]))
            .await
            == json!(true)
    );

    b.fill("#login-password", "apw").await;
    b.click("#login-submit").await;
    b.wait_text("#whoami", |t| t == "Logged in as alice").await;
    // The whole key space is not alice's to list: a polite refusal, nothing of secret/.
    let refusal = b.wait_text("#tree-status", |t| t.contains("may not")).await;
    assert!(refusal.contains("permission denied"), "{refusal}");
    assert_eq!(b.count("#tree li").await, 0);
    // pub/ is.
    b.fill("#search-prefix", "pub/").await;
    b.click("#search-go").await;
    b.click(&format!("#tree button[data-key='{}']", b64(b"pub/hello")))
        .await;
    b.wait_text("#key-value", |t| t == "world").await;
    // A watch through the REST API carries the token too; one outside pub/ is refused politely.
    b.click("#tab-live").await;
    b.fill("#watch-key", "secret/").await;
    b.click("#watch-start").await;
    b.wait_text("#watch-state", |t| {
        t.contains("may not") && t.contains("permission denied")
    })
    .await;
    b.fill("#watch-key", "pub/").await;
    b.click("#watch-start").await;
    b.wait_text("#watch-state", |t| t.starts_with("Watching pub/"))
        .await;
    let root = gw(
        &base,
        "/v3/auth/authenticate",
        None,
        json!({"name": "root", "password": "rpw"}),
    )
    .await;
    let token = root["token"].as_str().expect("root token");
    let r = gw(
        &base,
        "/v3/kv/put",
        Some(token),
        json!({"key": b64(b"pub/new"), "value": b64(b"v")}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    b.wait_text("#events", |t| t.contains("pub/new")).await;

    // Logging out hides everything again.
    b.click("#logout").await;
    b.find("#login-name").await;
    assert!(
        b.exec(
            "return document.getElementById('view-live').hidden",
            json!([])
        )
        .await
            == json!(true)
    );
}
