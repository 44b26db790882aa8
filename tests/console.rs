//! End-to-end tests of the web console (issue #9, SPEC §9) in a real
//! headless Chromium, driven over WebDriver, against a real reportd (in
//! process) with a real Redis, the fake model and the fake SearXNG of the
//! API tests. Each test ends with [`Browser::assert_clean`]: no request left
//! the service's origin and the browser logged no script or CSP error.
//!
//! Screenshots of the main screens at desktop and phone width are saved
//! under `target/tmp/console-screenshots/`.
//!
//! Needs `chromium`, `chromedriver` (Debian: `chromium chromium-driver`)
//! and `redis-server`; `scripts/test.sh` installs them.

#[path = "console/browser.rs"]
mod browser;
#[path = "api/fakes.rs"]
mod fakes;
#[path = "console/flows.rs"]
mod flows;
#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;
