//! The web page at `GET /` in real headless Chromium: starts the real
//! binary on a free loopback port with two keys (one rate-limited to 1 call
//! a minute), then runs `tests/browser/ui.test.mjs`, which drives Debian's
//! Chromium through the page with playwright-core (no browser download).
//!
//! `scripts/setup-browser.sh` (run by the test command) installs Chromium
//! and playwright-core, pinned; where they are absent this test says so and
//! skips. `UPDATE_SCREENSHOT=1` copies the listing view it takes to
//! `docs/listing-view.png`, the README's screenshot.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::{create_key, create_key_with, free_port, http, Serving};

fn chromium() -> PathBuf {
    std::env::var_os("PHOTOLABEL_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Why the browser tests cannot run here, if they cannot.
fn missing(browser_dir: &Path) -> Option<String> {
    let chromium = chromium();
    if !chromium.exists() {
        return Some(format!(
            "{} not found (scripts/setup-browser.sh installs Debian's chromium)",
            chromium.display()
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node not found".into());
    }
    let playwright = browser_dir.join("node_modules/playwright-core/package.json");
    if !playwright.exists() {
        return Some(format!(
            "{} missing (scripts/setup-browser.sh runs npm ci)",
            playwright.display()
        ));
    }
    None
}

#[test]
fn the_page_in_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    if let Some(reason) = missing(&browser_dir) {
        println!("skipping the browser tests: {reason}");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let key = create_key(dir.path(), "browser");
    let limited = create_key_with(dir.path(), "limited", &["--rate-limit", "1/min"]);
    let port = free_port();
    let _serving = Serving::start(port, dir.path(), &[], || {
        matches!(http(port, "GET", "/health", &[], b""), Ok((200, _)))
    });
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("listing-view.png");
    let _ = std::fs::remove_file(&screenshot);

    // node's own runner: every step has a timeout there, so this returns.
    let run = Command::new("node")
        .args(["--test", "--test-reporter=spec", "--test-concurrency=1"])
        .arg(browser_dir.join("ui.test.mjs"))
        .env("BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("API_KEY", &key)
        .env("LIMITED_KEY", &limited)
        .env("FIXTURES", root.join("tests/fixtures/photos"))
        .env("CHROMIUM", chromium())
        .env("SCREENSHOT", &screenshot)
        .output()
        .expect("run node");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{report}");
    assert!(run.status.success(), "browser tests failed:\n{report}");
    assert!(screenshot.exists(), "the listing view was not captured");
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        std::fs::copy(&screenshot, root.join("docs/listing-view.png")).expect("copy screenshot");
    }
}
