//! A headless Chromium driven over WebDriver (`chromedriver` as a child of
//! the test, fantoccini as the client), with what the console tests need on
//! top: waiting for elements and conditions, reading text and attributes,
//! screenshots at desktop and phone width, and the browser's own network
//! and console logs (Chrome's `performance` and `browser` logs).
//!
//! One browser runs at a time ([`Browser::start`] holds a process-wide
//! lock): two Chromiums on a 2-core machine, beside the other test
//! binaries, only make each other time out.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::helpers::{find_binary, free_port};

/// How long a wait for the page lasts before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Browser {
    pub client: Client,
    /// The service's origin, `http://127.0.0.1:PORT`.
    pub origin: String,
    driver: Child,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// `POST /session/{id}/se/log`: the entries of one of Chrome's logs since
/// the last read (`browser`: the console; `performance`: DevTools events,
/// among them every network request).
#[derive(Debug)]
struct ReadLog(&'static str);

impl WebDriverCompatibleCommand for ReadLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({ "type": self.0 }).to_string()))
    }
}

impl Browser {
    /// A fresh browser (its own profile: nothing stored from another test)
    /// at desktop size, its UI language `lang` (`en-US`, `zh-CN`), with
    /// nothing open yet.
    pub async fn start(origin: &str, lang: &str) -> Self {
        let turn = ONE_AT_A_TIME.lock().await;
        let chromedriver = find_binary(&["chromedriver"])
            .expect("chromedriver is installed (Debian: apt-get install chromium chromium-driver)");
        let port = free_port();
        // Its own process group, so that the browsers it starts go with it.
        let driver = Command::new(chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", format!("--lang={lang}"), "--no-first-run",
                    "--disable-extensions", "--disable-background-networking", "--disable-sync",
                    "--disable-component-update", "--disable-default-apps",
                ],
                "prefs": { "intl.accept_languages": lang },
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL", "performance": "ALL" }));
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session within 30 s: {e}"),
            }
        };
        Self { client, origin: origin.trim_end_matches('/').to_owned(), driver, _turn: turn }
    }

    /// Opens `path` (such as `/` or `/#/documents`) of the service.
    pub async fn open(&self, path: &str) {
        self.client.goto(&format!("{}{path}", self.origin)).await.expect("the page opens");
    }

    /// The first element matching `css`, waiting for it to exist.
    pub async fn find(&self, css: &str) -> Element {
        match self.client.wait().at_most(WAIT).for_element(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => panic!("no element {css:?} within {WAIT:?}: {e}\n{}", self.page_text().await),
        }
    }

    /// Every element matching `css` now (none is fine).
    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap_or_default()
    }

    /// Runs `script` in the page (as a function body: `return …`).
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` (a function body) returns something truthy;
    /// returns that value.
    pub async fn until(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.client.execute(script, args.clone()).await.unwrap_or(Value::Null);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                panic!("waited {WAIT:?} for {what}; the page says:\n{}", self.page_text().await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until an element matching `css` is shown (exists and is
    /// displayed).
    pub async fn visible(&self, css: &str) -> Element {
        let what = format!("{css} to be shown");
        self.until(
            &what,
            "const e = document.querySelector(arguments[0]); return !!e && e.getClientRects().length > 0 \
             && getComputedStyle(e).visibility !== 'hidden';",
            vec![json!(css)],
        )
        .await;
        self.find(css).await
    }

    /// Whether an element matching `css` is shown now (no waiting).
    pub async fn visible_now(&self, css: &str) -> bool {
        let v = self.js(
            "const e = document.querySelector(arguments[0]); return !!e && e.getClientRects().length > 0 \
             && getComputedStyle(e).visibility !== 'hidden';",
            vec![json!(css)],
        );
        v.await == Value::Bool(true)
    }

    /// The text of the first element matching `css` (`""` when none).
    pub async fn text(&self, css: &str) -> String {
        let v =
            self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", vec![json!(css)]);
        v.await.as_str().unwrap_or_default().to_owned()
    }

    /// Clicks the first element matching `css` once it is shown.
    pub async fn click(&self, css: &str) {
        self.visible(css).await.click().await.unwrap_or_else(|e| panic!("clicking {css:?}: {e}"));
    }

    /// Types `text` into the element matching `css` (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.visible(css).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap_or_else(|err| panic!("typing into {css:?}: {err}"));
    }

    /// The visible text of the page, for failure messages.
    pub async fn page_text(&self) -> String {
        let v = self.client.execute("return document.body ? document.body.innerText : ''", vec![]).await;
        let text = v.ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        text.chars().take(3000).collect()
    }

    /// Saves a screenshot of the page as it is at desktop width (1280×900)
    /// and at phone width (390×844) under `target/tmp/console-screenshots/`,
    /// as `{name}-desktop.png` and `{name}-phone.png`; the window is left at
    /// desktop width.
    pub async fn screenshots(&self, name: &str) {
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        for (size, w, h) in [("phone", 390, 844), ("desktop", 1280, 900)] {
            self.client.set_window_size(w, h).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let png = self.client.screenshot().await.expect("a screenshot");
            assert!(png.starts_with(b"\x89PNG"), "a PNG");
            std::fs::write(dir.join(format!("{name}-{size}.png")), png).unwrap();
        }
    }

    /// Every shown control of the page has an accessible name (a label, an
    /// `aria-label`, or text) and can be reached with the keyboard (no
    /// negative `tabindex`).
    pub async fn assert_labelled(&self) {
        let unlabelled = self
            .js(
                "return [...document.querySelectorAll('input, select, textarea, button, a[href]')] \
                 .filter(e => e.getClientRects().length > 0 && e.type !== 'hidden') \
                 .filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label') \
                     || e.getAttribute('aria-labelledby') || e.textContent.trim() || e.getAttribute('title')) \
                     || e.tabIndex < 0) \
                 .map(e => e.outerHTML.slice(0, 160));",
                vec![],
            )
            .await;
        assert_eq!(unlabelled, json!([]), "controls without a name, or out of the tab order");
    }

    /// The browser's console messages since the last read, as `LEVEL text`.
    pub async fn console_messages(&self) -> Vec<String> {
        let entries = self.client.issue_cmd(ReadLog("browser")).await.expect("the browser log");
        entries
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| format!("{} {}", e["level"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or("")))
            .collect()
    }

    /// Every URL the browser requested since the last read (from DevTools'
    /// `Network.requestWillBeSent`), in order.
    pub async fn requested_urls(&self) -> Vec<String> {
        let entries = self.client.issue_cmd(ReadLog("performance")).await.expect("the performance log");
        let mut urls = Vec::new();
        for entry in entries.as_array().into_iter().flatten() {
            let Some(message) = entry["message"].as_str() else { continue };
            let Ok(event) = serde_json::from_str::<Value>(message) else { continue };
            if event["message"]["method"] == "Network.requestWillBeSent"
                && let Some(url) = event["message"]["params"]["request"]["url"].as_str()
            {
                urls.push(url.to_owned());
            }
        }
        urls
    }

    /// The checks every console test ends with: no request left the
    /// service's origin, and the console logged no error (a CSP violation,
    /// a script error) other than the HTTP errors the test provoked, whose
    /// URLs contain one of `expected_http_errors`.
    pub async fn assert_clean(&self, expected_http_errors: &[&str]) {
        let urls = self.requested_urls().await;
        assert!(!urls.is_empty(), "the network log is read");
        for url in &urls {
            let same_origin = url.starts_with(&format!("{}/", self.origin)) || url == &self.origin;
            assert!(same_origin || url.starts_with("data:"), "a request left the origin: {url}");
        }
        for message in self.console_messages().await {
            if !message.starts_with("SEVERE") {
                continue;
            }
            // Chrome logs every 4xx/5xx answer to fetch() as a SEVERE
            // "Failed to load resource" line naming the URL.
            let provoked = message.contains("Failed to load resource")
                && expected_http_errors.iter().any(|part| message.contains(part));
            assert!(provoked, "the browser console logged an error: {message}");
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver's process group: the driver and the browser it started.
        // SAFETY: kill(2) on a process group this test created.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}
