//! The dashboard in a real browser: Debian's chromium, headless, driven through chromedriver by
//! a WebDriver client. Everything stays on loopback: the browser resolves no other name.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::support::*;

/// One browser at a time: two chromiums at once starve the two cores the rest of the suite uses.
static BROWSER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOKEN: &str = "dashboard-test-token";

/// chromedriver on a free loopback port, a headless chromium session through it.
struct Browser {
    driver: Child,
    port: u16,
    client: Option<Client>,
    /// chromedriver's and chromium's temporary files (profile, singleton socket): a process
    /// group ended with SIGKILL cannot remove them, so they live here and go with the browser.
    _tmp: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tmp = tempfile::tempdir().unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: dropping the browser ends chromedriver and every chromium
            // process it started, even when a test fails half-way.
            .process_group(0)
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) is needed by the dashboard tests");
        let mut b = Browser {
            driver,
            port,
            client: None,
            _tmp: tmp,
        };
        let url = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(20), "chromedriver to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()
        })
        .await;
        let caps = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1440,1000", "--no-first-run", "--disable-extensions",
                    // Nothing leaves the machine: no background services, and no name resolves
                    // but loopback's.
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-default-apps", "--disable-domain-reliability", "--no-pings",
                    "--disable-client-side-phishing-detection",
                    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&url)
            .await
            .expect("a chromium session");
        b.client = Some(client);
        b
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// A raw chromedriver command for this session: `POST /session/<id>/<path>` with `body`.
    async fn driver_post(&self, path: &str, body: Value) -> Value {
        let session = self.c().session_id().await.unwrap().unwrap();
        let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>();
        let req = http::Request::post(format!("http://127.0.0.1:{}/session/{session}/{path}", self.port))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
            .unwrap();
        let body = c
            .request(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    /// Emulates the OS's light or dark theme (`prefers-color-scheme`).
    async fn color_scheme(&self, scheme: &str) {
        let v = self
            .driver_post(
                "goog/cdp/execute",
                json!({"cmd": "Emulation.setEmulatedMedia",
                       "params": {"features": [{"name": "prefers-color-scheme", "value": scheme}]}}),
            )
            .await;
        assert!(v["value"].is_object(), "{v}");
        let matches = self
            .c()
            .execute(
                &format!("return matchMedia('(prefers-color-scheme: {scheme})').matches;"),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(matches, Value::Bool(true), "{scheme} theme not applied");
    }

    /// The lowest WCAG contrast ratio between the text of the page's visible elements (text,
    /// muted text, links, states, table headers, buttons) and the background behind them.
    async fn lowest_contrast(&self) -> (f64, String) {
        let v = self
            .c()
            .execute(
                r#"
                const rgb = (c) => { const m = c.match(/[\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
                const lum = ([r, g, b]) => { const f = (x) => { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); };
                  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
                const bg = (el) => { for (let e = el; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor); if (c[3] > 0) return c; }
                  return rgb(getComputedStyle(document.body).backgroundColor); };
                let worst = [99, ""];
                for (const el of document.querySelectorAll("h1, h2, h3, p, td, th, dt, dd, a, button, label, li, span")) {
                  if (!el.offsetParent || !el.textContent.trim()) continue;
                  const style = getComputedStyle(el);
                  const fg = rgb(style.color);
                  const alpha = parseFloat(style.opacity) * fg[3];
                  const back = bg(el);
                  const mix = fg.slice(0, 3).map((c, i) => c * alpha + back[i] * (1 - alpha));
                  const [a, b] = [lum(mix), lum(back)].sort((x, y) => y - x);
                  const ratio = (a + 0.05) / (b + 0.05);
                  if (ratio < worst[0]) worst = [ratio, el.tagName + "." + el.className + ": " + el.textContent.trim().slice(0, 40)];
                }
                return worst;"#,
                vec![],
            )
            .await
            .unwrap();
        (v[0].as_f64().unwrap(), v[1].as_str().unwrap().to_string())
    }

    /// The browser console's messages at level SEVERE (errors, failed loads, CSP violations).
    async fn console_errors(&self) -> Vec<String> {
        let session = self.c().session_id().await.unwrap().unwrap();
        let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>();
        let req = http::Request::post(format!("http://127.0.0.1:{}/session/{session}/se/log", self.port))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"type":"browser"}"#,
            )))
            .unwrap();
        let body = c
            .request(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Requests the page made that failed or got an error status.
    async fn failed_requests(&self) -> Vec<String> {
        let v = self
            .c()
            .execute(
                "return performance.getEntriesByType('resource')
                   .filter(e => !(e.responseStatus >= 200 && e.responseStatus < 400))
                   .map(e => e.name + ' ' + e.responseStatus);",
                vec![],
            )
            .await
            .unwrap();
        serde_json::from_value(v).unwrap()
    }

    /// The text of the first element matching `css`, once one exists.
    async fn text_of(&self, css: &str) -> String {
        self.wait(css).await.text().await.unwrap()
    }

    async fn wait(&self, css: &str) -> fantoccini::elements::Element {
        let c = self.c();
        eventually(Duration::from_secs(15), css, || async {
            c.find(Locator::Css(css)).await.ok()
        })
        .await
    }

    /// Waits until the element `css` has exactly `text`.
    async fn wait_text(&self, css: &str, text: &str) {
        self.wait_text_where(css, &format!("read {text:?}"), |t| t == text)
            .await;
    }

    /// Waits until the text of `css` passes `ok` (`what` says what is awaited).
    async fn wait_text_where(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) {
        let c = self.c();
        eventually(Duration::from_secs(15), &format!("{css} to {what}"), || async {
            let e = c.find(Locator::Css(css)).await.ok()?;
            ok(&e.text().await.ok()?).then_some(())
        })
        .await;
    }

    async fn set_input(&self, css: &str, value: &str) {
        let e = self.wait(css).await;
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.wait(css).await.attr(name).await.unwrap()
    }

    async fn screenshot(&self, width: u32, height: u32, name: &str) -> (u64, u64) {
        self.c().set_window_size(width, height).await.unwrap();
        self.c().execute("window.scrollTo(0, 0);", vec![]).await.unwrap();
        // One refresh at the new size, so that the picture shows live figures laid out anew.
        let seen = self.text_of("#updated").await;
        let c = self.c();
        eventually(Duration::from_secs(10), "a refresh after resizing", || async {
            let now = c.find(Locator::Css("#updated")).await.ok()?.text().await.ok()?;
            (now != seen).then_some(())
        })
        .await;
        let png = self.c().screenshot().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
        let v = self
            .c()
            .execute(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];",
                vec![],
            )
            .await
            .unwrap();
        (v[0].as_u64().unwrap(), v[1].as_u64().unwrap())
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the chromium it started share the group we gave it.
        let _ = rustix::process::kill_process_group(
            rustix::process::Pid::from_raw(self.driver.id() as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
        let _ = self.driver.wait();
    }
}

async fn weights_of(admin: std::net::SocketAddr, service: &str) -> HashMap<String, u64> {
    let v = admin_json(admin, "/api/v1/versions").await;
    v["services"][service]["versions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, f)| (k.clone(), f["weight"].as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_the_dashboard_with_a_strict_policy() {
    let g = Gantry::start_with(
        "[routers.r]\npath_prefix = \"/\"\nservice = \"s\"\n[services.s]\nbackends = [{ url = \"http://127.0.0.1:9\" }]\n",
        gantry::Options {
            admin_token: Some(TOKEN.into()),
            ..Default::default()
        },
    )
    .await;
    let admin = g.running.admin_addr;
    let c = client();
    let host = admin.to_string();
    let page = send(&c, admin, "GET", &host, "/", &[("accept", "text/html,*/*")])
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.body.contains("/dashboard/app.js"), "{}", page.body);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.headers["x-frame-options"], "DENY");
    // The same at /dashboard/, and the assets with their types.
    let again = send(&c, admin, "GET", &host, "/dashboard/", &[]).await.unwrap();
    assert_eq!(again.body, page.body);
    for (path, ty) in [
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let a = send(&c, admin, "GET", &host, path, &[]).await.unwrap();
        assert_eq!(a.status, 200, "{path}");
        assert!(
            a.headers["content-type"].to_str().unwrap().starts_with(ty),
            "{path}"
        );
    }
    // A script or a terminal asking for anything but HTML still gets the endpoint list.
    let index = admin_get(admin, "/").await;
    assert!(index.body.contains("GET  /api/v1/routes"), "{}", index.body);
    // No CORS on the admin API: a preflight gets no allowance, and a cross-site write is refused
    // even with the right token.
    let preflight = send(
        &c,
        admin,
        "OPTIONS",
        &host,
        "/api/v1/services/s/weights",
        &[
            ("origin", "http://evil.test"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "authorization"),
        ],
    )
    .await
    .unwrap();
    assert!(preflight.status >= 400, "{}", preflight.status);
    assert!(!preflight.headers.contains_key("access-control-allow-origin"));
    let bearer = format!("Bearer {TOKEN}");
    let cross = send(
        &c,
        admin,
        "POST",
        &host,
        "/api/v1/token",
        &[("origin", "http://evil.test"), ("authorization", &bearer)],
    )
    .await
    .unwrap();
    assert_eq!(cross.status, 403, "{}", cross.body);
    assert!(cross.body.contains("cross-origin"), "{}", cross.body);
    let own_origin = format!("http://{host}");
    let same = send(
        &c,
        admin,
        "POST",
        &host,
        "/api/v1/token",
        &[("origin", &own_origin), ("authorization", &bearer)],
    )
    .await
    .unwrap();
    assert_eq!(same.status, 200, "{}", same.body);
    let wrong = send(
        &c,
        admin,
        "POST",
        &host,
        "/api/v1/token",
        &[("authorization", "Bearer nope")],
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 401);
}

/// The demo in the browser: its routers, services and weights; the canary's weight moved from
/// the page changes what clients get; a rollout started from the page walks its steps; pictures
/// at phone and desktop widths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_demo_and_moves_its_canary() {
    let _one = BROWSER_LOCK.lock().await;
    let p = GantryProcess::spawn_with_env(&["demo"], &[("GANTRY_ADMIN_TOKEN", TOKEN)]);
    let b = Browser::start().await;
    b.c().goto(&format!("http://{}/", p.admin)).await.unwrap();
    // Room for every request of the test in the page's resource timings (250 by default).
    b.c()
        .execute("performance.setResourceTimingBufferSize(100000);", vec![])
        .await
        .unwrap();

    for router in ["web", "blog", "api", "sticky", "shop", "slow", "private"] {
        b.wait(&format!("#routers tr[data-router='{router}']")).await;
    }
    let rule = b.text_of("#routers tr[data-router='shop'] .rule").await;
    assert!(rule.contains("path /shop"), "shop's rule reads {rule:?}");
    for service in ["web", "blog", "api", "sticky", "shop", "slow"] {
        b.wait(&format!("#services [data-service='{service}']")).await;
    }
    let shop = "#versions [data-service='shop']";
    b.wait_text(&format!("{shop} tr[data-version='v1'] .weight"), "95")
        .await;
    b.wait_text(&format!("{shop} tr[data-version='v2'] .weight"), "5")
        .await;
    b.text_of("#scaling [data-scaled='slow'] .replicas").await;
    let alone = b.text_of("#fleet .body p").await;
    assert!(alone.contains("runs without etcd"), "{alone}");
    assert_eq!(b.console_errors().await, Vec::<String>::new(), "loading the page");
    assert_eq!(
        b.failed_requests().await,
        Vec::<String>::new(),
        "loading the page"
    );

    // Read-only without a token.
    let set = format!("{shop} .set-weights");
    assert_eq!(b.attr(&set, "disabled").await.as_deref(), Some("true"));
    assert!(b.text_of("#token-state").await.contains("Read-only"));

    // A wrong token is named as such, and nothing can be changed.
    b.set_input("#token-input", "not-the-token").await;
    b.wait("#token-use").await.click().await.unwrap();
    b.wait("#token-state[data-state='wrong']").await;
    assert!(b.text_of("#token-state").await.contains("Wrong token"));
    assert_eq!(b.attr(&set, "disabled").await.as_deref(), Some("true"));
    assert_eq!(weights_of(p.admin, "shop").await["v2"], 5);

    // The right one enables the controls; moving v2 to 50 splits the traffic in two.
    b.set_input("#token-input", TOKEN).await;
    b.wait("#token-use").await.click().await.unwrap();
    b.wait("#token-state[data-state='ok']").await;
    assert_eq!(b.attr(&set, "disabled").await, None);
    b.set_input(&format!("{shop} input[data-weight-for='v1']"), "50")
        .await;
    b.set_input(&format!("{shop} input[data-weight-for='v2']"), "50")
        .await;
    b.wait(&set).await.click().await.unwrap();
    b.wait("#message[data-kind='ok']").await;
    b.wait_text(&format!("{shop} tr[data-version='v2'] .weight"), "50")
        .await;
    let c = client();
    let mut canary = 0;
    for _ in 0..2000 {
        let a = get(&c, p.addr, "127.0.0.1", "/shop/").await;
        assert_eq!(a.status, 200);
        canary += u32::from(a.backend() == "shop-3");
    }
    assert!(
        (900..=1100).contains(&canary),
        "v2 (shop-3) answered {canary} of 2000"
    );

    // Back to the declared weights, then a rollout from the page, walking its steps while a
    // client keeps requesting.
    b.wait(&format!("{shop} .clear-weights"))
        .await
        .click()
        .await
        .unwrap();
    b.wait_text(&format!("{shop} tr[data-version='v2'] .weight"), "5")
        .await;
    b.set_input(&format!("{shop} .rollout-steps"), "20, 50, 100")
        .await;
    b.set_input(&format!("{shop} .rollout-step-time"), "1s").await;
    b.set_input(&format!("{shop} .rollout-min-requests"), "20").await;
    // The demo's v1 and v2 are the same program: only scheduling noise on a busy machine (this
    // browser included) tells their latencies apart, and the gate should not judge that.
    b.set_input(&format!("{shop} .rollout-p99-slack"), "250ms").await;
    b.wait(&format!("{shop} .rollout-start"))
        .await
        .click()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, addr) = (stop.clone(), p.addr);
        tokio::spawn(async move {
            let c = client();
            let mut failed = 0;
            // Bounded: at most 6,000 requests (about a minute at this pace).
            for _ in 0..6000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                failed += u32::from(get(&c, addr, "127.0.0.1", "/shop/").await.status != 200);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failed
        })
    };
    let card = "#rollouts [data-rollout='shop']";
    let c2 = b.c().clone();
    eventually(
        Duration::from_secs(60),
        "the rollout to be promoted on the page",
        || async {
            let phase = c2.find(Locator::Css(&format!("{card} .phase"))).await.ok()?;
            let phase = phase.text().await.ok()?;
            let admin = p.admin;
            if phase == "rolled_back" {
                panic!("rolled back: {:#}", admin_json(admin, "/api/v1/rollouts").await);
            }
            (phase == "promoted").then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(load.await.unwrap(), 0, "requests failed during the rollout");
    // The page's timeline is the API's list of decisions, newest first.
    let api = admin_json(p.admin, "/api/v1/rollouts").await;
    let mut decisions: Vec<(String, u64)> = api["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["service"] == "shop")
        .map(|d| {
            (
                d["action"].as_str().unwrap().to_string(),
                d["step"].as_u64().unwrap(),
            )
        })
        .collect();
    decisions.reverse();
    let c3 = b.c().clone();
    let shown = eventually(
        Duration::from_secs(10),
        "the timeline to show every decision",
        || async {
            let items = c3
                .find_all(Locator::Css(&format!("{card} .timeline li")))
                .await
                .ok()?;
            let mut shown = Vec::new();
            for li in items {
                shown.push((
                    li.attr("data-action").await.ok()??,
                    li.attr("data-step").await.ok()??.parse::<u64>().ok()?,
                ));
            }
            (shown == decisions).then_some(shown)
        },
    )
    .await;
    let actions: Vec<&str> = shown.iter().rev().map(|(a, _)| a.as_str()).collect();
    assert_eq!(actions.first(), Some(&"start"), "{actions:?}");
    assert_eq!(actions.last(), Some(&"promote"), "{actions:?}");
    assert!(
        actions.iter().filter(|a| **a == "step").count() >= 2,
        "each step is a decision: {actions:?}"
    );

    // Pictures, and no horizontal scroll on a phone.
    let (scroll, client_width) = b.screenshot(360, 800, "dashboard-360.png").await;
    assert!(client_width <= 400, "the page is {client_width} px wide at 360");
    assert!(
        scroll <= client_width,
        "horizontal scroll at 360 px: content {scroll} px in {client_width} px"
    );
    b.screenshot(1440, 1800, "dashboard-1440.png").await;

    // Readable in both OS themes: every visible text at least WCAG AA's 4.5:1 against what is
    // behind it (disabled controls, dimmed on purpose, are the exception: 3:1).
    for scheme in ["light", "dark"] {
        b.color_scheme(scheme).await;
        let (ratio, what) = b.lowest_contrast().await;
        assert!(ratio >= 3.0, "{scheme} theme: contrast {ratio:.2} for {what}");
        if ratio < 4.5 {
            assert!(
                what.starts_with("BUTTON"),
                "{scheme} theme: contrast {ratio:.2} for {what}"
            );
        }
    }
    b.screenshot(1440, 1800, "dashboard-dark-1440.png").await;
    b.color_scheme("light").await;

    // Every control is reachable with the keyboard: Tab from the top visits each link, field
    // and enabled button of the page.
    const NAME: &str = "const e = document.activeElement;
        return e === document.body ? '' : (e.id || e.dataset.key || e.getAttribute('href') || e.tagName + ':' + e.textContent.trim());";
    b.c()
        .execute("document.activeElement.blur(); window.scrollTo(0, 0);", vec![])
        .await
        .unwrap();
    let mut reached = std::collections::BTreeSet::new();
    // Bounded: the page has well under 400 stops.
    for _ in 0..400 {
        // A key press to whatever has the focus (an element reference could go stale as the
        // page refreshes).
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let tab = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: '\u{e004}' })
            .then(KeyAction::Up { value: '\u{e004}' });
        b.c().perform_actions(tab).await.unwrap();
        let name = b.c().execute(NAME, vec![]).await.unwrap();
        let name = name.as_str().unwrap_or_default().to_string();
        if !name.is_empty() && !reached.insert(name) {
            break;
        }
    }
    let all: Vec<String> = serde_json::from_value(
        b.c()
            .execute(
                "return [...document.querySelectorAll('a[href], button, input, select')]
                   .filter(e => !e.disabled && e.offsetParent)
                   .map(e => e.id || e.dataset.key || e.getAttribute('href') || e.tagName + ':' + e.textContent.trim());",
                vec![],
            )
            .await
            .unwrap(),
    )
    .unwrap();
    let missed: Vec<&String> = all.iter().filter(|n| !reached.contains(*n)).collect();
    assert!(all.len() > 20, "{all:?}");
    assert!(missed.is_empty(), "not reachable with Tab: {missed:?}");

    // The one refused request of the whole visit is the wrong token's check.
    let unexpected = |all: Vec<String>| -> Vec<String> {
        all.into_iter()
            .filter(|m| !(m.contains("/api/v1/token") && m.contains("401")))
            .collect()
    };
    assert_eq!(unexpected(b.console_errors().await), Vec::<String>::new());
    assert_eq!(unexpected(b.failed_requests().await), Vec::<String>::new());
    b.close().await;
}

/// A backend that dies turns unhealthy on the page within a refresh and a health check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_turns_unhealthy_on_the_page() {
    let _one = BROWSER_LOCK.lock().await;
    let a = Backend::start("a", Behavior::Name).await;
    let k = Backend::start("k", Behavior::Name).await;
    let g = Gantry::start(&one_service(
        &[(&a, 1), (&k, 1)],
        "health_check = { path = \"/health\", interval = \"500ms\", unhealthy_threshold = 1 }",
    ))
    .await;
    let b = Browser::start().await;
    b.c()
        .goto(&format!("http://{}/dashboard/", g.running.admin_addr))
        .await
        .unwrap();
    let row = |backend: &Backend| {
        format!(
            "#services [data-service='svc'] tr[data-backend='{}'] .state",
            backend.url()
        )
    };
    b.wait_text(&row(&a), "ready").await;
    b.wait_text(&row(&k), "ready").await;
    // Read-only: no token configured, and the page says how to get one.
    assert_eq!(
        b.attr("#services [data-service='svc'] button", "disabled")
            .await
            .as_deref(),
        Some("true")
    );
    k.stop();
    let c = b.c().clone();
    let state = eventually(
        Duration::from_secs(10),
        "the killed backend to leave ready",
        || async {
            let s = c.find(Locator::Css(&row(&k))).await.ok()?.text().await.ok()?;
            (s != "ready").then_some(s)
        },
    )
    .await;
    assert!(["not_ready", "ejected"].contains(&state.as_str()), "{state}");
    assert_eq!(b.text_of(&row(&a)).await, "ready");
    assert_eq!(b.console_errors().await, Vec::<String>::new());
    b.close().await;
}

/// With etcd: the page lists the instances sharing it, the revision each serves, and which one
/// drives a rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_lists_the_instances_sharing_etcd() {
    use crate::etcd_support::{ETCD_LOCK, Etcd};
    let _one = BROWSER_LOCK.lock().await;
    let _etcd_one = ETCD_LOCK.lock().await;
    let etcd = Etcd::start().await;
    let ep = etcd.endpoints()[0].clone();
    let (v1, v2) = (
        Backend::start("v1", Behavior::Name).await,
        Backend::start("v2", Behavior::Name).await,
    );
    for (key, value) in [
        (
            "/gantry/backends/web/a",
            format!(r#"{{"url": "{}", "version": "v1"}}"#, v1.url()),
        ),
        (
            "/gantry/backends/web/b",
            format!(r#"{{"url": "{}", "version": "v2"}}"#, v2.url()),
        ),
        (
            "/gantry/routers/web",
            r#"{"hosts": ["web.test"], "service": "web"}"#.to_string(),
        ),
        ("/gantry/weights/web", r#"{"v1": 100, "v2": 0}"#.to_string()),
    ] {
        Etcd::etcdctl(&ep, &["put", key, &value]);
    }
    let spawn = |id: &str| GantryProcess::spawn(&["run", "--etcd", &ep, "--instance-id", id]);
    let (a, _b) = (spawn("a"), spawn("b"));
    // A rollout whose first step lasts long enough to stay driven for the whole test.
    Etcd::etcdctl(
        &ep,
        &[
            "put",
            "/gantry/rollouts/web/spec",
            r#"{"stable": "v1", "canary": "v2", "steps": [10, 100], "step_time": "1h"}"#,
        ],
    );
    // What an instance drives: the rollout, and maybe the scaling publication besides.
    let drives_web = |i: &Value| {
        i["drives"]
            .as_array()
            .is_some_and(|d| d.contains(&json!("rollout web")))
    };
    let fleet = eventually(
        Duration::from_secs(20),
        "both instances in the fleet, one driving the rollout",
        || async {
            let v = admin_json(a.admin, "/api/v1/fleet").await;
            let instances = v["instances"].as_array()?.clone();
            (instances.len() == 2 && instances.iter().any(drives_web)).then_some(v)
        },
    )
    .await;
    assert_eq!(fleet["etcd"], true);
    assert_eq!(fleet["instance"], "a");
    let driver = fleet["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| drives_web(i))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let b = Browser::start().await;
    b.c().goto(&format!("http://{}/", a.admin)).await.unwrap();
    let row = |id: &str| format!("#fleet tr[data-instance='{id}']");
    b.wait(&row("b")).await;
    assert!(
        b.text_of(&format!("{} td", row("a")))
            .await
            .contains("(this one)")
    );
    b.wait_text_where(&format!("{} .drives", row(&driver)), "name the rollout", |t| {
        t.contains("rollout web")
    })
    .await;
    // The revision on the page is the one the instance reports in etcd.
    let shown: i64 = b
        .text_of(&format!("{} .revision", row("b")))
        .await
        .parse()
        .unwrap();
    let record = Etcd::etcdctl(&ep, &["get", "/gantry/instances/b", "--print-value-only"]);
    let reported = serde_json::from_str::<Value>(record.trim()).unwrap()["revision"]
        .as_i64()
        .unwrap();
    assert!(shown > 0 && shown <= reported, "page {shown}, etcd {reported}");
    assert_eq!(b.console_errors().await, Vec::<String>::new());
    assert_eq!(b.failed_requests().await, Vec::<String>::new());
    b.close().await;
}
