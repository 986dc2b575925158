//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromedriver`): it lists
//! events, opens one, retriggers a dead letter that is then handled, and stops and restarts a
//! named consumer. Screenshots of the pages land in `target/dashboard-screenshots/`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventbus::{Bus, BusConfig, Envelope, Event};
use eventbus_journal::dashboard::{Auth, Dashboard};
use eventbus_journal::{Filter, Journal, JournalSettings, Status};
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use fantoccini::{Client, ClientBuilder, Locator};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.invoice.issued.v1", key = "invoice_id")]
struct InvoiceIssued {
    invoice_id: i64,
    amount_cents: i64,
}

/// chromedriver on a free port, run by the testkit's broker fixture: stopped when dropped,
/// its log kept when the test fails.
struct Driver {
    process: BrokerProcess,
    _profile: tempfile::TempDir,
}

fn chromedriver() -> BrokerSpec {
    BrokerSpec {
        name: "chromedriver",
        program: "chromedriver".to_owned(),
        args: |ctx| vec![format!("--port={}", ctx.port)],
        extra_ports: 0,
        startup_timeout: Duration::from_secs(30),
        install_hint: "apt-get install chromium chromium-driver",
    }
}

impl Driver {
    /// Tries up to three ports: a parallel test may take the free port before chromedriver
    /// binds it, and then the port answers, but not as chromedriver.
    async fn start() -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match BrokerProcess::start(chromedriver()).await {
                Ok(process) if ready_within(process.port(), Duration::from_secs(10)).await => {
                    return Self {
                        process,
                        _profile: tempfile::tempdir().expect("profile dir"),
                    };
                }
                Ok(process) => {
                    last = format!("port {} did not answer as chromedriver", process.port());
                }
                Err(e) => last = e.to_string(),
            }
        }
        panic!("chromedriver did not start on any of 3 ports; the last: {last}");
    }

    async fn browser(&self) -> Client {
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", self._profile.path().display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.process.port()))
            .await
            .expect("a Chromium session")
    }
}

/// Whether the server on `port` says, within `limit`, that it is a chromedriver ready for
/// sessions.
async fn ready_within(port: u16, limit: Duration) -> bool {
    let polled = async {
        while !says_ready(port).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(limit, polled).await.is_ok()
}

/// Asks `/status` and reads until the reply says ready; chromedriver leaves the connection
/// open after its reply, so the end of the stream cannot mark the end of the answer.
async fn says_ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let (mut reply, mut chunk) = (Vec::new(), [0; 1024]);
    while let Ok(read @ 1..) = stream.read(&mut chunk).await {
        reply.extend_from_slice(&chunk[..read]);
        if String::from_utf8_lossy(&reply).contains("\"ready\":true") {
            return true;
        }
    }
    false
}

/// How many times, 50 ms apart, a page or the journal is polled: 30 s.
const POLLS: usize = 600;

async fn shot(browser: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

/// The element at `css` once the page has it (a form's POST and redirect may still be on their
/// way when `click` returns).
async fn element(browser: &Client, css: &str) -> fantoccini::elements::Element {
    // Up to 30 s: Chromium on a loaded machine may take seconds over a page.
    for _ in 0..POLLS {
        if let Ok(found) = browser.find(Locator::Css(css)).await {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = browser.source().await.unwrap_or_default();
    panic!(
        "no `{css}` on {:?}:\n{page}",
        browser.current_url().await.ok()
    );
}

/// The text at `css` once it starts with `prefix`.
async fn text_becomes(browser: &Client, css: &str, prefix: &str) -> String {
    let mut text = String::new();
    // Up to 30 s: Chromium on a loaded machine may take seconds over a page.
    for _ in 0..POLLS {
        if let Ok(found) = browser.find(Locator::Css(css)).await {
            text = found.text().await.unwrap_or_default();
            if text.starts_with(prefix) {
                return text;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("`{css}` says {text:?}, not {prefix:?}…");
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..POLLS {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn setup() -> (
    Bus,
    Journal,
    Arc<AtomicBool>,
    Arc<AtomicU32>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("journal.db").display());
    let journal = Journal::connect(
        &url,
        JournalSettings::default().linger(Duration::from_millis(5)),
    )
    .await
    .expect("journal");
    let bus = eventbus::connect(BusConfig::new().url("memory://dashboard").consumer(|s| {
        s.retry.max_attempts = 2;
        s.retry.base = Duration::from_millis(5);
        s.retry.cap = Duration::from_millis(10);
        s.consecutive_error_limit = 0;
    }))
    .await
    .expect("bus")
    .producer_layer(journal.publish_layer());
    (
        bus,
        journal,
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicU32::new(0)),
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_retriggers_and_restarts_in_a_browser() {
    let (bus, journal, broken, handled, _dir) = setup().await;
    let (flag, count, attach) = (broken.clone(), handled.clone(), journal.clone());
    let dashboard = Dashboard::new(journal.clone(), bus.clone()).consumer("ledger", move |bus| {
        let (flag, count) = (flag.clone(), count.clone());
        attach.attach(bus.consumer("invoices", "ledger")).handle(
            move |e: Envelope<InvoiceIssued>| {
                let (flag, count) = (flag.clone(), count.clone());
                async move {
                    if e.amount_cents < 0 && flag.load(Ordering::Relaxed) {
                        return Err(std::io::Error::other("the ledger refuses negative amounts"));
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            },
        )
    });
    dashboard.start_consumers().await.expect("start");
    for i in 1..=5 {
        bus.producer()
            .send(
                "invoices",
                &InvoiceIssued {
                    invoice_id: i,
                    amount_cents: 100 * i,
                },
            )
            .await
            .expect("send");
    }
    bus.producer()
        .send(
            "invoices",
            &InvoiceIssued {
                invoice_id: 99,
                amount_cents: -5,
            },
        )
        .await
        .expect("send");
    until("the dead letter in the journal", async || {
        journal.flush().await;
        !journal
            .events(&Filter::new().status(Status::DeadLettered))
            .await
            .expect("query")
            .is_empty()
    })
    .await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, dashboard.router()).await });
    let driver = Driver::start().await;
    let browser = driver.browser().await;

    // Events: every published and handled row, each linking to its event.
    browser
        .goto(&format!("{base}/events"))
        .await
        .expect("events page");
    let links = browser
        .find_all(Locator::Css("a.event-link"))
        .await
        .expect("links");
    assert!(
        links.len() >= 12,
        "6 published + 6 consumed rows, got {}",
        links.len()
    );
    shot(&browser, "events").await;

    // One event: its payload decoded by its type, and its history.
    browser
        .goto(&format!("{base}/events?key=3&status=published"))
        .await
        .expect("filtered");
    browser
        .find(Locator::Css("a.event-link"))
        .await
        .expect("a row")
        .click()
        .await
        .expect("open");
    let payload = browser
        .find(Locator::Css("pre.payload"))
        .await
        .expect("payload")
        .text()
        .await
        .expect("text");
    assert!(
        payload.contains("\"invoice_id\": 3") && payload.contains("\"amount_cents\": 300"),
        "{payload}"
    );
    let page = browser.source().await.expect("source");
    assert!(
        page.contains("handled") && page.contains("ledger"),
        "its history shows the group"
    );
    shot(&browser, "event").await;

    // Failures: the dead letter; fixed receiver, retrigger, handled.
    browser
        .goto(&format!("{base}/failures"))
        .await
        .expect("failures page");
    let page = browser.source().await.expect("source");
    assert!(
        page.contains("dead-lettered") && page.contains("the ledger refuses negative amounts"),
        "{page}"
    );
    shot(&browser, "failures").await;
    broken.store(false, Ordering::Relaxed);
    let before = handled.load(Ordering::Relaxed);
    browser
        .find(Locator::Css("button.retrigger"))
        .await
        .expect("retrigger button")
        .click()
        .await
        .expect("click");
    let flash = element(&browser, "p.flash")
        .await
        .text()
        .await
        .expect("text");
    assert!(flash.starts_with("retriggered at"), "{flash}");
    until("the retriggered event handled", async || {
        handled.load(Ordering::Relaxed) > before
    })
    .await;

    // Consumers: stop, then start again.
    browser
        .goto(&format!("{base}/consumers"))
        .await
        .expect("consumers page");
    let state = browser
        .find(Locator::Css("#consumer-ledger td.state"))
        .await
        .expect("row")
        .text()
        .await
        .expect("text");
    assert!(state.starts_with("running"), "{state}");
    shot(&browser, "consumers").await;
    browser
        .find(Locator::Css("#consumer-ledger button"))
        .await
        .expect("stop")
        .click()
        .await
        .expect("click");
    text_becomes(&browser, "#consumer-ledger td.state", "stopped").await;
    bus.producer()
        .send(
            "invoices",
            &InvoiceIssued {
                invoice_id: 7,
                amount_cents: 1,
            },
        )
        .await
        .expect("send");
    let while_stopped = handled.load(Ordering::Relaxed);
    element(&browser, "#consumer-ledger button")
        .await
        .click()
        .await
        .expect("click");
    text_becomes(&browser, "#consumer-ledger td.state", "running").await;
    until(
        "the event sent while stopped handled after the restart",
        async || handled.load(Ordering::Relaxed) > while_stopped,
    )
    .await;

    browser
        .goto(&format!("{base}/throughput"))
        .await
        .expect("throughput page");
    assert!(
        browser.find(Locator::Css("svg polyline")).await.is_ok(),
        "a line for the topic"
    );
    shot(&browser, "throughput").await;
    browser.close().await.expect("close the browser");
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_and_csrf_tokens_are_required() {
    let (bus, journal, _, _, _dir) = setup().await;
    let router = Dashboard::new(journal, bus)
        .auth(Auth::Bearer("s3cret".into()))
        .router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let get = |path: &str, token: Option<&str>| {
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(token) = token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        request
    };
    let post = "POST /events/x/retrigger HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 17\r\n\r\ncsrf=forged&id=new";
    let status = |request: String| {
        let base = base.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
                .await
                .expect("connect");
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.expect("read");
            answer.split(' ').nth(1).unwrap_or_default().to_owned()
        }
    };
    assert_eq!(status(get("/events", None)).await, "401");
    assert_eq!(status(get("/events", Some("wrong"))).await, "401");
    assert_eq!(status(get("/events", Some("s3cret"))).await, "200");
    assert_eq!(
        status(post.to_owned()).await,
        "403",
        "a POST without the page's token is refused"
    );
}
