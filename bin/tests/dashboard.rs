//! The live dashboard in a real browser: headless Chromium (Debian's `chromium`; see
//! `scripts/install-chromium`) opens the gateway's admin side during a run, and the page shows
//! the live numbers (orders by status, each component's row, the dead-letter count) and one
//! order's timeline across services, drawn from the Server-Sent Events and the order's history.
//! The screenshot it takes (`<target dir>/tmp/dashboard.png`) is the README's.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::Emulation::SetDeviceMetricsOverride;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;
use support::order;

const CARD: &str = "4242424242424242";
const ADDRESS: &str = "1 Main Street, Seoul";

/// The Chromium to drive: $CHROME, else the first of these names on PATH.
fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROME").map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    let names = [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ];
    std::env::split_paths(&std::env::var_os("PATH")?)
        .flat_map(|dir| names.map(|name| dir.join(name)))
        .find(|path| path.is_file())
}

/// A headless Chromium (killed, its temporary profile removed, when dropped).
fn launch() -> Browser {
    let path = find_chromium().unwrap_or_else(|| {
        panic!(
            "no Chromium for the dashboard test: run scripts/install-chromium (Debian: \
             apt-get install chromium), or set CHROME to a Chromium / Google Chrome binary"
        )
    });
    let options = LaunchOptions::default_builder()
        .path(Some(path.clone()))
        .headless(true)
        // Chromium refuses to start as root (containers, CI) with its sandbox on.
        .sandbox(false)
        .window_size(Some((1280, 900)))
        .idle_browser_timeout(Duration::from_secs(300))
        .build()
        .expect("chromium launch options");
    Browser::new(options).unwrap_or_else(|e| panic!("could not start {}: {e:#}", path.display()))
}

/// A tab with an exact 1280x900 page on `url` (the page's SSE stream never lets it "finish
/// loading", so nothing waits for that: tests wait for what they need to see).
fn open(browser: &Browser, url: &str) -> Arc<Tab> {
    let tab = browser.new_tab().expect("new tab");
    let viewport: SetDeviceMetricsOverride = serde_json::from_value(serde_json::json!({
        "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false
    }))
    .unwrap();
    tab.call_method(viewport).expect("set viewport");
    tab.navigate_to(url)
        .unwrap_or_else(|e| panic!("navigate to {url}: {e:#}"));
    tab
}

fn eval(tab: &Tab, js: &str) -> Value {
    tab.evaluate(js, false)
        .ok()
        .and_then(|o| o.value)
        .unwrap_or(Value::Null)
}

/// Poll the page until `js` evaluates to something `accept` takes; panics with the last value.
fn wait_for(tab: &Tab, js: &str, accept: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + support::WAIT;
    loop {
        let value = eval(tab, js);
        if accept(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed it: {js} = {value}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn text_of(selector: &str) -> String {
    format!(
        "(() => {{ const e = document.querySelector({}); return e ? e.textContent.trim() : null; }})()",
        serde_json::to_string(selector).unwrap()
    )
}

fn number(v: &Value) -> f64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_live_numbers_and_an_orders_timeline_in_a_browser() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, _nats, api) = support::up(data.path());
    let admin = support::admin_url(data.path());

    let refunded = api
        .place_ok(&order("carol", "SKU-VINYL", 1, CARD, ADDRESS))
        .await;
    let completed = api
        .place_ok(&order("ann", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    api.wait_status(&completed, &["COMPLETED"]).await;
    api.wait_refunded(&refunded).await;

    // The page is opened after the orders: the first snapshot brings it up to date.
    let url = format!("{admin}/dashboard#order={refunded}");
    let page = tokio::task::spawn_blocking(move || {
        let browser = launch();
        let tab = open(&browser, &url);
        wait_for(&tab, &text_of("#connection"), |v| v == "live");
        wait_for(&tab, &text_of("#orders-total"), |v| number(v) >= 2.0);
        wait_for(&tab, &text_of("#status-COMPLETED"), |v| number(v) >= 1.0);
        wait_for(&tab, &text_of("#status-CANCELLED"), |v| number(v) >= 1.0);
        let rows = wait_for(
            &tab,
            "document.querySelectorAll('#components tr[data-component]').length",
            |v| v.as_u64() == Some(7),
        );
        let payment = eval(
            &tab,
            &text_of("#components tr[data-component=payment] .breaker"),
        );
        // Arrays come back from the page as JSON text.
        let lanes = wait_for(
            &tab,
            "JSON.stringify([...document.querySelectorAll('#timeline [data-event-type]')]
                .map(g => g.dataset.eventType))",
            |v| {
                v.as_str()
                    .is_some_and(|a| a.contains("\"PaymentRefunded\""))
            },
        );
        let lanes: Value = serde_json::from_str(lanes.as_str().unwrap_or("[]")).unwrap();
        let dlq = eval(&tab, &text_of("#dlq-count"));
        let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
        let png = tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .expect("screenshot");
        std::fs::write(&shot, &png).expect("write the screenshot");
        (rows, payment, lanes, dlq, png.len())
    })
    .await
    .unwrap();
    let (rows, payment, lanes, dlq, png) = page;
    assert_eq!(rows, 7, "six services and the projection");
    assert!(
        payment
            .as_str()
            .unwrap_or_default()
            .contains("payment-gateway"),
        "the payment service's breaker: {payment}"
    );
    let lanes: Vec<&str> = lanes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(lanes.first(), Some(&"OrderCreated"), "{lanes:?}");
    assert!(lanes.contains(&"PaymentApproved"), "{lanes:?}");
    assert_eq!(dlq, "0");
    assert!(png > 10_000, "a screenshot of a drawn page");
    up.stop();
}
