//! The operator console's device list: `GET /ui/devices` for a tenant of 100,000 devices (quick
//! mode: the quick fleet), one request at a time, signed in as a browser is (a `herd_session`
//! cookie from `POST /auth/login`). The page is rendered on the server from the same list query
//! as `GET /devices`, so the figure is that query plus the HTML. Measured: the first page, the
//! status filter, a search by name and by serial, and a page deep in the list (reached with a
//! cursor, as the "Next" link does). Also the weight of a first visit: the page with its
//! stylesheet, script and icon.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rand::distributions::{Alphanumeric, DistString};
use serde_json::json;

use crate::context::Bench;
use crate::http::{send_once, Method, Request, Response, StatusCode};
use crate::load::Workload;
use crate::probe::is_missing_route;
use crate::report::{format_count, Aim, Figure, PhaseReport};

const ROUTE: &str = "GET /ui/devices";

/// What a first visit downloads besides the page (the console's own files, no third-party ones).
const ASSETS: [&str; 3] = ["/ui/static/console.css", "/ui/static/console.js", "/ui/static/herd.svg"];

/// Runs the console phase.
pub async fn run(bench: &mut Bench) -> Result<Vec<PhaseReport>> {
    let probe = send_once(bench.addr(), &Request::new(Method::GET, "/ui/devices")).await?;
    if is_missing_route(probe.status) {
        return Ok(vec![PhaseReport::not_in_build("console", ROUTE)]);
    }
    let n_devices = bench.settings.overview_devices;
    if let Some(route) = bench.ensure_fleet(n_devices).await? {
        return Ok(vec![PhaseReport::not_in_build("console", route)]);
    }
    let fleet_size = bench.fleet().map_or(0, |fleet| fleet.devices().len());
    let cookie = sign_in(bench).await?;
    let mut phase = PhaseReport::new("console");
    phase.notes.push(format!(
        "tenant with {} devices; signed in as a viewer with a session cookie; one request at a time; \
         50 devices a page",
        format_count(fleet_size as u64)
    ));

    let middle = fleet_size / 2;
    let deep_cursor = cursor_after(bench, middle).await?;
    let serial = serial_of(bench, middle).await?;
    let views: Vec<(String, String)> = vec![
        ("first page".into(), "/ui/devices".into()),
        ("status=online".into(), "/ui/devices?status=online".into()),
        (format!("search by name (q=bench-{middle})"), format!("/ui/devices?q=bench-{middle}")),
        ("search by serial".into(), format!("/ui/devices?q={serial}")),
        (format!("page after device {}", format_count(middle as u64)), format!("/ui/devices?cursor={deep_cursor}")),
    ];

    let runs = bench.settings.runs;
    for (label, path) in views {
        let workload = Arc::new(Page { path: path.clone(), cookie: Arc::clone(&cookie) });
        let mut p50 = Figure::new(format!("{label} p50 (c=1)"), "ms").aim(Aim::Below(100.0));
        let mut p99 = Figure::new(format!("{label} p99 (c=1)"), "ms").aim(Aim::Below(100.0));
        bench.measure(Arc::clone(&workload), &bench.warmup_plan(format!("console {label} warm-up"), 1)).await?;
        for run in 1..=runs {
            let plan = bench.timed_plan(format!("console {label} run {run}/{runs}"), 1);
            let measured = bench.measure(Arc::clone(&workload), &plan).await?;
            super::observe(&mut phase, &measured);
            p50.push(measured.outcome.latency_ms(0.5));
            p99.push(measured.outcome.latency_ms(0.99));
        }
        phase.figures.push(p50);
        phase.figures.push(p99);
    }

    let (page_bytes, total_bytes) = first_visit_bytes(bench, &cookie).await?;
    phase.figures.push(Figure::new("first visit: the device list page", "KiB").with_runs([page_bytes / 1024.0]));
    phase.figures.push(
        Figure::new("first visit: page + CSS + JS + icon (uncompressed)", "KiB")
            .aim(Aim::Below(200.0 * 1000.0 / 1024.0))
            .with_runs([total_bytes / 1024.0]),
    );
    Ok(vec![phase])
}

/// Creates a viewer with a password and signs it in; returns the `Cookie` header a browser would
/// send to `/ui/`.
async fn sign_in(bench: &Bench) -> Result<Arc<str>> {
    let username = format!("bench-{}", Alphanumeric.sample_string(&mut rand::thread_rng(), 8).to_lowercase());
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 20);
    let create = Request::new(Method::POST, "/users")
        .bearer(bench.admin_token())
        .json(&json!({ "username": username, "password": password, "role": "viewer" }));
    let created = send_once(bench.addr(), &create).await?;
    if created.status != StatusCode::CREATED {
        bail!("POST /users answered {}: {}", created.status, created.excerpt());
    }
    let login = Request::new(Method::POST, "/auth/login").json(&json!({ "username": username, "password": password }));
    let answer = send_once(bench.addr(), &login).await?;
    if answer.status != StatusCode::OK {
        bail!("POST /auth/login answered {}: {}", answer.status, answer.excerpt());
    }
    let token = answer.json()?["token"]
        .as_str()
        .ok_or_else(|| anyhow!("POST /auth/login: no `token` in {}", answer.excerpt()))?
        .to_string();
    Ok(format!("herd_session={token}").into())
}

/// The cursor of the list after its first `skip` devices, walked through the API 500 at a time
/// (the console's pages use the same cursors).
async fn cursor_after(bench: &Bench, skip: usize) -> Result<String> {
    let mut cursor: Option<String> = None;
    let mut skipped = 0;
    while skipped < skip.max(1) {
        let limit = (skip.max(1) - skipped).min(500);
        let mut path = format!("/devices?limit={limit}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let answer = api_get(bench, &path).await?;
        let items = answer["items"].as_array().map_or(0, Vec::len);
        cursor = answer["nextCursor"].as_str().map(str::to_string);
        skipped += items;
        if items == 0 || cursor.is_none() {
            break;
        }
    }
    cursor.context("the device list ended before the middle of the fleet")
}

/// The serial number of the fleet's device number `index`.
async fn serial_of(bench: &Bench, index: usize) -> Result<String> {
    let id = bench
        .fleet()
        .and_then(|fleet| fleet.devices().get(index))
        .map(|device| device.id.to_string())
        .ok_or_else(|| anyhow!("no device number {index} in the fleet"))?;
    let device = api_get(bench, &format!("/devices/{id}")).await?;
    device["serialNumber"].as_str().map(str::to_string).ok_or_else(|| anyhow!("GET /devices/{id}: no serialNumber"))
}

async fn api_get(bench: &Bench, path: &str) -> Result<serde_json::Value> {
    let answer = send_once(bench.addr(), &Request::new(Method::GET, path).bearer(bench.admin_token())).await?;
    if answer.status != StatusCode::OK {
        bail!("GET {path} answered {}: {}", answer.status, answer.excerpt());
    }
    answer.json()
}

/// Bytes of the device list page alone, and with the files it loads.
async fn first_visit_bytes(bench: &Bench, cookie: &Arc<str>) -> Result<(f64, f64)> {
    let page = send_once(bench.addr(), &Request::new(Method::GET, "/ui/devices").cookie(Arc::clone(cookie))).await?;
    accept_page(&page).map_err(|error| anyhow!("{ROUTE}: {error}"))?;
    let page_bytes = page.body.len();
    let mut total = page_bytes;
    for asset in ASSETS {
        let answer = send_once(bench.addr(), &Request::new(Method::GET, asset)).await?;
        if answer.status != StatusCode::OK {
            bail!("GET {asset} answered {}", answer.status);
        }
        total += answer.body.len();
    }
    Ok((page_bytes as f64, total as f64))
}

/// A console page answered as HTML (not the sign-in redirect, not an error page).
fn accept_page(response: &Response) -> Result<(), String> {
    if response.status != StatusCode::OK {
        return Err(format!("answered {}: {}", response.status, response.excerpt()));
    }
    if !response.body.starts_with(b"<!DOCTYPE html>") {
        return Err(format!("not an HTML page: {}", response.excerpt()));
    }
    Ok(())
}

struct Page {
    path: String,
    cookie: Arc<str>,
}

impl Workload for Page {
    fn request(&self, _job: u64) -> Request {
        Request::new(Method::GET, self.path.as_str()).cookie(Arc::clone(&self.cookie))
    }

    fn accept(&self, _job: u64, response: &Response) -> Result<(), String> {
        accept_page(response)
    }
}
