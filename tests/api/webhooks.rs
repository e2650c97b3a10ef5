//! Webhooks: signed deliveries to a receiver this test runs, retries with backoff, recorded
//! deliveries, disabling a hook that keeps failing, URL checks, targets that are not public
//! refused at delivery time, nothing of a receiver's answer recorded, and tenant isolation.
//!
//! Every receiver listens on 127.0.0.1, and no test names any other address as a target that a
//! delivery could reach.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use base64::Engine as _;
use chrono::Duration;
use herd::clock::Clock;
use herd::webhooks::client::{Lookup, SendError, WebhookClient};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::helpers::{
    engine_tests, error_fields, expect_json, expect_problem, spawn_app_with, ClockExt, Engine, SpawnOptions, TestApp,
    ADMIN_TOKEN,
};

/// A local receiver that fails its first `fail_first` requests (500) and records all.
pub(crate) struct Receiver {
    pub(crate) url: String,
    seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

pub(crate) async fn receiver(fail_first: usize) -> Receiver {
    let seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let (seen2, count2) = (seen.clone(), count.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (seen, count) = (seen2.clone(), count2.clone());
            async move {
                seen.lock().unwrap().push((headers, body));
                if count.fetch_add(1, Ordering::SeqCst) < fail_first {
                    AxumStatus::INTERNAL_SERVER_ERROR
                } else {
                    AxumStatus::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url: format!("http://{address}/hook"), seen }
}

/// A local receiver that answers every request with `status`, `body` and, if given, a
/// `Location` header, and records what it got.
async fn answering(status: u16, body: &'static str, location: Option<String>) -> Receiver {
    let seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let seen2 = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, request: Bytes| {
            let (seen, location) = (seen2.clone(), location.clone());
            async move {
                seen.lock().unwrap().push((headers, request));
                let mut answer = axum::response::Response::new(axum::body::Body::from(body));
                *answer.status_mut() = AxumStatus::from_u16(status).unwrap();
                if let Some(location) = location {
                    answer.headers_mut().insert("location", location.parse().unwrap());
                }
                answer
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url: format!("http://{address}/hook"), seen }
}

/// An app whose background delivery loop never runs during the test: the test runs the
/// delivery step itself ([`deliver`]), so every attempt is one it made and no wall clock decides
/// what has happened by when.
pub(crate) async fn spawn(engine: Engine) -> TestApp {
    let adjust = |s: &mut herd::config::Settings| {
        s.webhook_allow_private = true;
        s.webhook_delivery_interval = StdDuration::from_secs(24 * 3600);
    };
    spawn_app_with(engine, SpawnOptions { adjust: Box::new(adjust), ..Default::default() }).await
}

/// One step of the delivery job at the test's clock: fan-out, then every due delivery.
pub(crate) async fn deliver(app: &TestApp) {
    deliver_with(app, &app.state.webhook_client).await;
}

/// [`deliver`] through a client of the test's choosing (one with an injected resolver).
async fn deliver_with(app: &TestApp, client: &WebhookClient) {
    let now = herd::clock::to_millis(app.clock.now());
    let (db, system) = (&app.state.db, &app.state.system);
    herd::webhooks::delivery::fan_out(db, system, now).await.expect("fan-out");
    herd::webhooks::delivery::deliver_due(db, system, client, &app.state.metrics, now).await.expect("delivery");
}

/// At most this many delivery steps for what takes a handful (3 and 5 below).
const ROUNDS: usize = 10;

/// The receiver's check, written from docs/webhooks.md and not from herd's code: the
/// Standard Webhooks signature over `{webhook-id}.{webhook-timestamp}.{body}` (keyed by the
/// secret's bytes), which `X-Herd-Signature` carries too, in hex.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    verify_parts(secret, &header("webhook-id"), &header("webhook-timestamp"), body, headers)
}

/// [`verify`] with the id and timestamp given, so a test can change one.
fn verify_parts(secret: &str, id: &str, timestamp: &str, body: &[u8], headers: &HeaderMap) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let mac = mac.finalize().into_bytes();
    let standard = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac));
    let herd = format!("sha256={}", hex::encode(mac));
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    // `webhook-signature` is a space-separated list of `v1,<base64>`; herd sends one.
    let standard_ok = header("webhook-signature").split(' ').any(|signature| signature == standard);
    let herd_ok = header("x-herd-signature") == herd;
    assert_eq!(standard_ok, herd_ok, "the two signature headers disagree");
    standard_ok
}

/// Runs delivery steps (moving the clock past each backoff) until the webhook's deliveries
/// satisfy `done`.
async fn wait_for(app: &TestApp, webhook: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut items = Vec::new();
    for _ in 0..ROUNDS {
        deliver(app).await;
        let page = expect_json(
            app.get(&format!("/webhooks/{webhook}/deliveries?limit=500"), ADMIN_TOKEN).await,
            StatusCode::OK,
        )
        .await;
        items = page["items"].as_array().unwrap().clone();
        if done(&items) {
            return items;
        }
        app.clock.advance(Duration::minutes(2));
    }
    panic!("deliveries never got there in {ROUNDS} steps: {items:?}");
}

macro_rules! webhook_tests {
    ($($name:ident($engine:expr)),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if $engine == Engine::Postgres && !crate::helpers::postgres_variant_runs() {
                return;
            }
            let app = spawn($engine).await;
            retried_deliveries_are_signed_and_recorded(&app).await;
            a_hook_that_keeps_failing_is_disabled(&app).await;
        }
    )*};
}

webhook_tests!(deliveries_on_sqlite(Engine::Sqlite), deliveries_on_postgres(Engine::Postgres));

async fn retried_deliveries_are_signed_and_recorded(app: &TestApp) {
    let receiver = receiver(2).await;
    let body = json!({ "url": receiver.url, "events": ["device.registered"], "secret": "0123456789abcdef-secret" });
    let created = expect_json(app.post("/webhooks", ADMIN_TOKEN, body).await, StatusCode::CREATED).await;
    let webhook = created["webhook"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["secret"], "0123456789abcdef-secret");
    assert!(!expect_json(app.get(&format!("/webhooks/{webhook}"), ADMIN_TOKEN).await, StatusCode::OK)
        .await
        .to_string()
        .contains("abcdef-secret"));

    let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
    let (device, token) = app.register(&enroll, json!({ "serialNumber": "WH-1" })).await;
    app.post("/devices/connect", &token, json!({})).await; // device.status_changed: not subscribed

    let deliveries = wait_for(app, &webhook, |items| items.len() == 1 && items[0]["status"] == "succeeded").await;
    assert_eq!(deliveries[0]["attempts"], 3, "two failures, then success");
    assert_eq!(deliveries[0]["eventType"], "device.registered");
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (headers, body) in &seen {
        let secret = "0123456789abcdef-secret";
        assert!(verify(secret, headers, body), "bad signature");
        assert!(!verify("another-secret-entirely", headers, body));
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["type"], "device.registered");
        assert_eq!(event["data"]["deviceId"], device["id"]);
        let id = headers["webhook-id"].to_str().unwrap();
        assert_eq!(id, event["id"].as_str().unwrap());
        assert_eq!(headers["x-herd-event-id"].to_str().unwrap(), id);
        let timestamp = headers["webhook-timestamp"].to_str().unwrap();
        assert_eq!(headers["x-herd-timestamp"].to_str().unwrap(), timestamp);
        // The timestamp and the id are signed: a replay with a fresh timestamp, or this body
        // under another event's id, does not verify.
        let later = (timestamp.parse::<i64>().unwrap() + 1).to_string();
        assert!(!verify_parts(secret, id, &later, body, headers), "the timestamp is not covered");
        assert!(!verify_parts(secret, &herd::ids::EventId::new().to_string(), timestamp, body, headers));
        let mut tampered = body.to_vec();
        tampered.push(b' ');
        assert!(!verify_parts(secret, id, timestamp, &tampered, headers));
    }
}

async fn a_hook_that_keeps_failing_is_disabled(app: &TestApp) {
    let receiver = receiver(usize::MAX).await;
    let created =
        expect_json(app.post("/webhooks", ADMIN_TOKEN, json!({ "url": receiver.url })).await, StatusCode::CREATED)
            .await;
    let webhook = created["webhook"]["id"].as_str().unwrap().to_string();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
    for i in 0..4 {
        app.register(&enroll, json!({ "serialNumber": format!("FAIL-{i}") })).await;
    }
    let mut rounds = 0;
    loop {
        deliver(app).await;
        rounds += 1;
        let hook = expect_json(app.get(&format!("/webhooks/{webhook}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        if hook["enabled"] == false {
            assert!(hook["disabledReason"].as_str().unwrap().contains("consecutive failed deliveries"));
            break;
        }
        assert!(rounds < ROUNDS, "never disabled: {hook}");
        app.clock.advance(Duration::hours(2));
    }
    let page = expect_json(app.get("/events?type=webhook.disabled", ADMIN_TOKEN).await, StatusCode::OK).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["data"]["webhookId"], webhook.as_str());
    let metrics = app.request(reqwest::Method::GET, "/metrics", None, None).await.text().await.unwrap();
    assert!(metrics.contains("herd_webhook_delivery_failures_total"), "{metrics}");
    // Re-enabling clears the streak.
    let hook = expect_json(
        app.patch(&format!("/webhooks/{webhook}"), ADMIN_TOKEN, json!({ "enabled": true })).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(hook["enabled"], true);
    assert_eq!(hook["consecutiveFailures"], 0);
}

/// A module per check that needs a loopback receiver, with its test on each engine.
macro_rules! receiver_tests {
    ($($check:ident),*) => {$(
        mod $check {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$check(&spawn(Engine::Sqlite).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if crate::helpers::postgres_configured() {
                    super::$check(&spawn(Engine::Postgres).await).await;
                }
            }
        }
    )*};
}

receiver_tests!(
    an_event_filter_that_does_not_parse_delivers_nothing,
    deliveries_are_stamped_with_the_injected_clock,
    a_hook_of_a_tenant_behind_the_others_gets_every_event
);

/// A tenant whose own count of events (`tenant_seq`) is far behind the global `seq`, because
/// another tenant was busier, still gets each of its events delivered, once, in order.
async fn a_hook_of_a_tenant_behind_the_others_gets_every_event(app: &TestApp) {
    let (_, busy_admin) = app.create_tenant("busy").await;
    let theirs = app.enrollment_token(&busy_admin, json!({})).await;
    for i in 0..12 {
        app.register(&theirs, json!({ "serialNumber": format!("BUSY-{i}") })).await;
    }
    let receiver = receiver(0).await;
    let body = json!({ "url": receiver.url, "events": ["device.registered"] });
    let created = expect_json(app.post("/webhooks", ADMIN_TOKEN, body).await, StatusCode::CREATED).await;
    let webhook = created["webhook"]["id"].as_str().unwrap().to_string();
    let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
    let mut ours = Vec::new();
    for i in 0..3 {
        let (device, _) = app.register(&enroll, json!({ "serialNumber": format!("BEHIND-{i}") })).await;
        ours.push(device["id"].clone());
        // The hook takes each of ours before the busy tenant goes on.
        deliver(app).await;
        for j in 0..5 {
            app.register(&theirs, json!({ "serialNumber": format!("BUSY-MORE-{i}-{j}") })).await;
        }
    }
    let deliveries =
        wait_for(app, &webhook, |items| items.len() >= 3 && items.iter().all(|d| d["status"] == "succeeded")).await;
    assert_eq!(deliveries.len(), 3, "{deliveries:?}");
    let mut delivered: Vec<Value> = receiver
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| serde_json::from_slice::<Value>(body).unwrap()["data"]["deviceId"].clone())
        .collect();
    delivered.sort_by_key(|id| id.to_string());
    ours.sort_by_key(|id| id.to_string());
    assert_eq!(delivered, ours);
}

async fn deliveries_are_stamped_with_the_injected_clock(app: &TestApp) {
    let receiver = receiver(0).await;
    let body = json!({ "url": receiver.url, "events": ["device.registered"] });
    expect_json(app.post("/webhooks", ADMIN_TOKEN, body).await, StatusCode::CREATED).await;
    // Far from the wall clock, so that a timestamp read from it cannot pass.
    app.clock.advance(Duration::days(1000) + Duration::seconds(7));
    let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
    app.register(&enroll, json!({ "serialNumber": "STAMPED" })).await;
    let now = herd::clock::to_millis(app.clock.now_plus(Duration::zero()));
    herd::webhooks::delivery::fan_out(&app.state.db, &app.state.system, now).await.unwrap();
    herd::webhooks::delivery::deliver_due(
        &app.state.db,
        &app.state.system,
        &app.state.webhook_client,
        &app.state.metrics,
        now,
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(10);
    while receiver.seen.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "nothing was delivered");
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    let seen = receiver.seen.lock().unwrap().clone();
    let stamp = seen[0].0["x-herd-timestamp"].to_str().unwrap().to_string();
    assert_eq!(stamp, (now / 1000).to_string());
}

async fn an_event_filter_that_does_not_parse_delivers_nothing(app: &TestApp) {
    let receiver = receiver(0).await;
    let body = json!({ "url": receiver.url, "events": ["device.registered"] });
    let created = expect_json(app.post("/webhooks", ADMIN_TOKEN, body).await, StatusCode::CREATED).await;
    let webhook = created["webhook"]["id"].as_str().unwrap().to_string();
    // The stored filter is damaged (by hand, a bad migration, another version of herd …).
    let mut conn = app.raw().await;
    conn.execute("UPDATE webhooks SET events = 'device.registered' WHERE id = $1", &[&webhook]).await;
    conn.close().await;
    // A healthy webhook beside it keeps receiving: one bad row does not stop the fan-out.
    let healthy = json!({ "url": receiver.url, "events": [] });
    expect_json(app.post("/webhooks", ADMIN_TOKEN, healthy).await, StatusCode::CREATED).await;
    let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
    app.register(&enroll, json!({ "serialNumber": "BAD-FILTER" })).await;
    let now = herd::clock::to_millis(app.clock.now_plus(Duration::zero()));
    let created = herd::webhooks::delivery::fan_out(&app.state.db, &app.state.system, now).await.unwrap();
    assert_eq!(created, 1, "only the healthy webhook gets a delivery");
    let mut conn = app.raw().await;
    let deliveries =
        conn.scalar_i64("SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1", &[&webhook]).await;
    conn.close().await;
    assert_eq!(deliveries, 0, "an unreadable filter is not \"every event\"");
}

engine_tests! {
    async fn webhook_bodies_and_urls_are_checked(app) {
        for (body, field) in [
            (json!({ "url": "http://127.0.0.1:9/hook" }), "url"),
            (json!({ "url": "http://localhost/hook" }), "url"),
            // The literal targets and `localhost` spellings (courtesy refusals; the
            // delivery-time check is what stops a name that resolves somewhere private).
            (json!({ "url": "http://[::ffff:127.0.0.1]/hook" }), "url"),
            (json!({ "url": "http://[::127.0.0.1]/hook" }), "url"),
            (json!({ "url": "http://[::ffff:169.254.169.254]/hook" }), "url"),
            (json!({ "url": "http://[::ffff:10.0.0.1]/hook" }), "url"),
            (json!({ "url": "http://[fe80::1]/hook" }), "url"),
            (json!({ "url": "http://[64:ff9b::7f00:1]/hook" }), "url"),
            (json!({ "url": "http://localhost./hook" }), "url"),
            (json!({ "url": "http://localhost%2e/hook" }), "url"),
            (json!({ "url": "http://100.64.0.1/hook" }), "url"),
            (json!({ "url": "http://0.0.0.1/hook" }), "url"),
            (json!({ "url": "ftp://example.com/hook" }), "url"),
            (json!({ "url": "https://example.com/hook", "events": ["device.exploded"] }), "events[0]"),
            (json!({ "url": "https://example.com/hook", "secret": "short" }), "secret"),
        ] {
            let problem = expect_problem(app.post("/webhooks", ADMIN_TOKEN, body).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(error_fields(&problem), vec![field]);
        }
        let list = expect_json(app.get("/webhooks", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(list["items"], json!([]));
        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;
        expect_problem(app.post("/webhooks", &viewer, json!({ "url": "https://example.com/h" })).await, StatusCode::FORBIDDEN).await;
    }

    async fn another_tenants_webhooks_are_invisible(app) {
        let (_, other_admin) = app.create_tenant("other").await;
        let created = expect_json(app.post("/webhooks", ADMIN_TOKEN, json!({ "url": "https://example.com/h" })).await, StatusCode::CREATED).await;
        let id = created["webhook"]["id"].as_str().unwrap();
        let path = format!("/webhooks/{id}");
        expect_problem(app.get(&path, &other_admin).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.patch(&path, &other_admin, json!({ "enabled": false })).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.get(&format!("{path}/deliveries"), &other_admin).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.delete(&path, &other_admin).await, StatusCode::NOT_FOUND).await;
        let list = expect_json(app.get("/webhooks", &other_admin).await, StatusCode::OK).await;
        assert_eq!(list["items"], json!([]));
        // The other tenant's events never become deliveries of this tenant's hook.
        let theirs = app.enrollment_token(&other_admin, json!({})).await;
        app.register(&theirs, json!({ "serialNumber": "NOT-YOURS" })).await;
        let now = herd::clock::to_millis(chrono::Utc::now());
        herd::webhooks::delivery::fan_out(&app.state.db, &app.state.system, now).await.unwrap();
        let deliveries = expect_json(app.get(&format!("{path}/deliveries"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(deliveries["items"], json!([]));
        assert_eq!(app.delete(&path, ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
    }
}

/// An app like [`spawn`]'s but with `HERD_WEBHOOK_ALLOW_PRIVATE` off, as herd ships.
async fn spawn_private_off(engine: Engine) -> TestApp {
    let adjust = |s: &mut herd::config::Settings| {
        s.webhook_allow_private = false;
        s.webhook_delivery_interval = StdDuration::from_secs(24 * 3600);
    };
    spawn_app_with(engine, SpawnOptions { adjust: Box::new(adjust), ..Default::default() }).await
}

/// A name that only the injected resolver knows, resolving to loopback: DNS rebinding or an
/// `/etc/hosts` entry, without touching either.
const REBOUND: &str = "receiver.herd.test";

fn rebinding_lookup() -> Lookup {
    let table: HashMap<String, Vec<IpAddr>> =
        HashMap::from([(REBOUND.to_string(), vec!["127.0.0.1".parse().unwrap()])]);
    Lookup::Fixed(Arc::new(table))
}

/// The webhook's only delivery, once it has been attempted at least `attempts` times.
async fn only_delivery(app: &TestApp, webhook: &str) -> Value {
    let page =
        expect_json(app.get(&format!("/webhooks/{webhook}/deliveries"), ADMIN_TOKEN).await, StatusCode::OK).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    items[0].clone()
}

mod targets_that_are_not_public_are_refused_at_delivery {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::targets_that_are_not_public_are_refused_at_delivery(&spawn_private_off(Engine::Sqlite).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if crate::helpers::postgres_variant_runs() {
            super::targets_that_are_not_public_are_refused_at_delivery(&spawn_private_off(Engine::Postgres).await)
                .await;
        }
    }
}

/// With private targets off, a public-looking name that resolves to loopback is accepted at
/// registration (nothing is resolved then) and refused when a delivery would connect; so are
/// loopback literals and `localhost.` that reached the database some other way (a hook made
/// while private targets were allowed). The receiver sees nothing until the same name is
/// delivered to by a client that allows private targets: the refusal was the check, not a
/// name that leads nowhere.
async fn targets_that_are_not_public_are_refused_at_delivery(app: &TestApp) {
    let receiver = receiver(0).await;
    let port = receiver.url.trim_start_matches("http://127.0.0.1:").trim_end_matches("/hook").to_string();
    for literal in [format!("http://127.0.0.1:{port}/hook"), format!("http://[::ffff:127.0.0.1]:{port}/hook")] {
        let problem = expect_problem(
            app.post("/webhooks", ADMIN_TOKEN, json!({ "url": literal })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(error_fields(&problem), vec!["url"]);
    }
    let body = json!({ "url": format!("http://{REBOUND}:{port}/hook"), "events": ["device.registered"] });
    let created = expect_json(app.post("/webhooks", ADMIN_TOKEN, body).await, StatusCode::CREATED).await;
    let webhook = created["webhook"]["id"].as_str().unwrap().to_string();
    let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
    app.register(&enroll, json!({ "serialNumber": "REBOUND-1" })).await;

    let guarded = WebhookClient::with_lookup(false, rebinding_lookup()).unwrap();
    deliver_with(app, &guarded).await;
    let delivery = only_delivery(app, &webhook).await;
    assert_eq!(delivery["attempts"], 1, "{delivery}");
    assert_eq!(delivery["status"], "pending", "{delivery}");
    assert_eq!(delivery["lastError"], SendError::Refused.to_string());
    assert_eq!(delivery["lastStatusCode"], Value::Null);

    // Literals and `localhost.` stored behind the registration check, sent by the app's own client.
    for stored in [format!("http://[::ffff:127.0.0.1]:{port}/hook"), format!("http://localhost.:{port}/hook")] {
        let mut conn = app.raw().await;
        conn.execute("UPDATE webhooks SET url = $1 WHERE id = $2", &[&stored, &webhook]).await;
        conn.close().await;
        app.clock.advance(Duration::hours(2));
        deliver(app).await;
        let delivery = only_delivery(app, &webhook).await;
        assert_eq!(delivery["lastError"], SendError::Refused.to_string(), "{stored}: {delivery}");
    }
    assert!(receiver.seen.lock().unwrap().is_empty(), "a refused target was connected to");

    // The same name through a client that allows private targets reaches the receiver.
    let mut conn = app.raw().await;
    let url = format!("http://{REBOUND}:{port}/hook");
    conn.execute("UPDATE webhooks SET url = $1 WHERE id = $2", &[&url, &webhook]).await;
    conn.close().await;
    app.clock.advance(Duration::hours(2));
    deliver_with(app, &WebhookClient::with_lookup(true, rebinding_lookup()).unwrap()).await;
    let delivery = only_delivery(app, &webhook).await;
    assert_eq!(delivery["status"], "succeeded", "{delivery}");
    assert_eq!(receiver.seen.lock().unwrap().len(), 1);
}

receiver_tests!(failed_deliveries_record_nothing_the_receiver_sent);

/// A receiver's answer is never recorded: a 500 with a body records the code and a fixed
/// message, and a redirect is neither followed nor quoted.
async fn failed_deliveries_record_nothing_the_receiver_sent(app: &TestApp) {
    const SECRET_ANSWER: &str = "root:x:0:0:internal-service-bytes";
    let failing = answering(500, SECRET_ANSWER, None).await;
    let elsewhere = receiver(0).await;
    let redirecting = answering(307, SECRET_ANSWER, Some(elsewhere.url.clone())).await;
    let mut hooks = Vec::new();
    for target in [&failing, &redirecting] {
        let body = json!({ "url": target.url, "events": ["device.registered"] });
        let created = expect_json(app.post("/webhooks", ADMIN_TOKEN, body).await, StatusCode::CREATED).await;
        hooks.push(created["webhook"]["id"].as_str().unwrap().to_string());
    }
    let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
    app.register(&enroll, json!({ "serialNumber": "ANSWERS" })).await;
    deliver(app).await;

    let failed = only_delivery(app, &hooks[0]).await;
    assert_eq!(failed["lastStatusCode"], 500, "{failed}");
    assert_eq!(failed["lastError"], "answered 500 Internal Server Error", "{failed}");
    let redirected = only_delivery(app, &hooks[1]).await;
    assert_eq!(redirected["lastStatusCode"], 307, "{redirected}");
    assert_eq!(redirected["lastError"], "answered 307 Temporary Redirect", "{redirected}");
    assert_eq!(redirected["status"], "pending", "a redirect is a failure, retried later");
    assert_eq!(failing.seen.lock().unwrap().len(), 1);
    assert_eq!(redirecting.seen.lock().unwrap().len(), 1);
    assert!(elsewhere.seen.lock().unwrap().is_empty(), "the redirect was followed");
    for hook in &hooks {
        let page =
            expect_json(app.get(&format!("/webhooks/{hook}/deliveries"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert!(!page.to_string().contains("internal-service"), "{page}");
    }
}
