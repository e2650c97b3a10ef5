//! The simulated fleet: an enrollment token and the devices registered with it through the real
//! API (`POST /enrollment-tokens`, then `POST /devices/auto-register`), with their ids and device
//! tokens kept for the phases that act as those devices.
//!
//! Identifiers are unique per harness run (a random tag plus a serial counter), so every
//! registration creates a new device; a `200` (re-registration) is counted as a failure.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use rand::distributions::{Alphanumeric, DistString};
use serde_json::json;

use crate::http::{send_once, Method, Request, Response, StatusCode};
use crate::load::{run_load, LoadOutcome, LoadPlan, Stop, Workload};
use crate::probe::{is_missing_route, Probe};

/// A registered simulated device.
#[derive(Debug, Clone)]
pub struct Device {
    /// The device id the server assigned.
    pub id: Arc<str>,
    /// Its device token (`herd_dt_…`).
    pub token: Arc<str>,
}

/// The fleet registered so far.
pub struct Fleet {
    enrollment_secret: Arc<str>,
    tag: String,
    next_serial: u64,
    devices: Vec<Device>,
}

impl Fleet {
    /// Creates the enrollment token and registers one device to prove the path works.
    pub async fn create(addr: SocketAddr, admin_token: Arc<str>) -> Result<Probe<Fleet>> {
        let request = Request::new(Method::POST, "/enrollment-tokens")
            .bearer(admin_token)
            .json(&json!({ "name": "herd-bench", "maxUses": 100_000_000u64 }));
        let response = send_once(addr, &request).await?;
        if is_missing_route(response.status) {
            return Ok(Probe::Missing("POST /enrollment-tokens".to_string()));
        }
        if response.status != StatusCode::CREATED {
            bail!("POST /enrollment-tokens answered {}: {}", response.status, response.excerpt());
        }
        let secret = response.json()?["secret"]
            .as_str()
            .ok_or_else(|| anyhow!("POST /enrollment-tokens: no `secret` in {}", response.excerpt()))?
            .into();
        let mut fleet = Fleet {
            enrollment_secret: secret,
            tag: Alphanumeric.sample_string(&mut rand::thread_rng(), 6).to_uppercase(),
            next_serial: 0,
            devices: Vec::new(),
        };

        let registration = fleet.registration(0);
        let first = send_once(addr, &registration.request(0)).await?;
        if is_missing_route(first.status) {
            return Ok(Probe::Missing("POST /devices/auto-register".to_string()));
        }
        registration.accept(0, &first).map_err(|error| anyhow!("POST /devices/auto-register: {error}"))?;
        fleet.absorb(registration, 1);
        Ok(Probe::Available(fleet))
    }

    /// The devices registered so far, in registration order.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The first `n` device tokens (all of them if fewer).
    pub fn tokens(&self, n: u64) -> Arc<[Arc<str>]> {
        self.devices
            .iter()
            .take(usize::try_from(n).unwrap_or(usize::MAX))
            .map(|device| Arc::clone(&device.token))
            .collect()
    }

    /// Registers devices until the fleet has `n`, `concurrency` at a time, with progress.
    pub async fn grow_to(&mut self, addr: SocketAddr, n: u64, concurrency: usize) -> Result<()> {
        let mut attempts = 0;
        while (self.devices.len() as u64) < n {
            let missing = n - self.devices.len() as u64;
            let plan =
                LoadPlan { label: format!("registering {missing} devices"), concurrency, stop: Stop::Jobs(missing) };
            let outcome = self.register(addr, &plan).await?;
            attempts += 1;
            if outcome.completed == 0 || attempts > 5 {
                bail!(
                    "could not grow the fleet to {n} devices (have {}): {}",
                    self.devices.len(),
                    outcome.first_error.unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    /// Registers fresh devices as `plan` says and adds them to the fleet.
    pub async fn register(&mut self, addr: SocketAddr, plan: &LoadPlan) -> Result<LoadOutcome> {
        let registration = Arc::new(self.registration(self.next_serial));
        let outcome = run_load(addr, Arc::clone(&registration), plan).await?;
        let registration =
            Arc::try_unwrap(registration).map_err(|_| anyhow!("registration workload still shared after the run"))?;
        self.absorb(registration, outcome.issued);
        Ok(outcome)
    }

    fn registration(&self, first_serial: u64) -> Registration {
        Registration {
            secret: Arc::clone(&self.enrollment_secret),
            tag: self.tag.clone(),
            first_serial,
            registered: Mutex::new(Vec::new()),
        }
    }

    fn absorb(&mut self, registration: Registration, issued: u64) {
        self.next_serial = registration.first_serial + issued;
        let registered = registration.registered.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.devices.extend(registered);
    }
}

/// `POST /devices/auto-register` with identifiers derived from the job number.
struct Registration {
    secret: Arc<str>,
    tag: String,
    first_serial: u64,
    /// Devices registered by this workload. A std `Mutex`: held only to push, never across await.
    registered: Mutex<Vec<Device>>,
}

impl Workload for Registration {
    fn request(&self, job: u64) -> Request {
        let serial = self.first_serial + job;
        let mac = serial.to_be_bytes();
        let body = json!({
            "serialNumber": format!("SN-{}-{serial:09}", self.tag),
            // Locally administered unicast prefix 02:, then 40 bits of the serial.
            "macAddress": format!("02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[3], mac[4], mac[5], mac[6], mac[7]),
            "androidId": format!("{}{serial:010x}", self.tag.to_lowercase()),
            "model": "HerdBox 4K",
            "manufacturer": "herd-bench",
            "osVersion": "Android TV 12",
            "appVersion": "1.0.0",
            "name": format!("bench-{serial}"),
        });
        Request::new(Method::POST, "/devices/auto-register")
            .bearer(Arc::clone(&self.secret))
            .json_bytes(Bytes::from(body.to_string()))
    }

    fn accept(&self, _job: u64, response: &Response) -> Result<(), String> {
        if response.status != StatusCode::CREATED {
            return Err(format!("expected 201, got {}: {}", response.status, response.excerpt()));
        }
        let device = parse_registration(response).map_err(|error| format!("{error:#}"))?;
        self.registered.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(device);
        Ok(())
    }
}

fn parse_registration(response: &Response) -> Result<Device> {
    let body = response.json()?;
    let id = match &body["device"]["id"] {
        serde_json::Value::String(id) => id.clone(),
        serde_json::Value::Number(id) => id.to_string(),
        _ => bail!("no device.id in {}", response.excerpt()),
    };
    let token = body["deviceToken"].as_str().with_context(|| format!("no deviceToken in {}", response.excerpt()))?;
    Ok(Device { id: id.into(), token: token.into() })
}
