//! What every phase shares: the settings, the running server, its admin token and the fleet.
//!
//! Phases grow the fleet on demand (`ensure_fleet`) and measure through [`Bench::measure`], which
//! wraps a load run with RSS sampling so every figure comes with the server's memory during it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;

use crate::cli::Settings;
use crate::fleet::Fleet;
use crate::load::{run_load, LoadOutcome, LoadPlan, Stop, Workload};
use crate::probe::Probe;
use crate::server::HerdServer;

/// Shared state of a benchmark run.
pub struct Bench {
    /// The resolved flags.
    pub settings: Settings,
    /// The server under test.
    pub server: HerdServer,
    /// The fleet, once created: `Some(Err(route))` when the server lacks a route it needs.
    fleet: Option<Result<Fleet, String>>,
    /// Metric samples stored so far (the overview phase tops this up to its target).
    pub samples_stored: u64,
}

/// A measured load run and the server's peak RSS during it.
pub struct Measured {
    /// What the load generator saw.
    pub outcome: LoadOutcome,
    /// Peak VmRSS of the server during the run, in MiB.
    pub rss_peak_mib: Option<f64>,
}

impl Bench {
    /// A run on `server` with no fleet yet.
    pub fn new(settings: Settings, server: HerdServer) -> Bench {
        Bench { settings, server, fleet: None, samples_stored: 0 }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The platform-admin / `default`-tenant admin token.
    pub fn admin_token(&self) -> Arc<str> {
        self.server.admin_token()
    }

    /// Makes sure at least `n` devices are registered. `Ok(Some(route))` when the server lacks a
    /// route needed to register devices at all.
    pub async fn ensure_fleet(&mut self, n: u64) -> Result<Option<String>> {
        if self.fleet.is_none() {
            let created = match Fleet::create(self.addr(), self.admin_token()).await? {
                Probe::Available(fleet) => Ok(fleet),
                Probe::Missing(route) => Err(route),
            };
            self.fleet = Some(created);
        }
        let addr = self.addr();
        let concurrency = self.settings.concurrency;
        match &mut self.fleet {
            Some(Ok(fleet)) => {
                if (fleet.devices().len() as u64) < n {
                    eprintln!("growing the fleet from {} to {n} devices", fleet.devices().len());
                    fleet.grow_to(addr, n, concurrency).await?;
                }
                Ok(None)
            }
            Some(Err(route)) => Ok(Some(route.clone())),
            None => Ok(Some("a fleet".to_string())),
        }
    }

    /// The fleet; call [`Bench::ensure_fleet`] first.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.fleet.as_ref().and_then(|fleet| fleet.as_ref().ok())
    }

    /// The fleet for registering more devices.
    pub fn fleet_mut(&mut self) -> Option<&mut Fleet> {
        self.fleet.as_mut().and_then(|fleet| fleet.as_mut().ok())
    }

    /// Runs `workload` as `plan` says while sampling the server's RSS.
    pub async fn measure<W: Workload>(&self, workload: Arc<W>, plan: &LoadPlan) -> Result<Measured> {
        let sampler = self.server.sample_rss();
        let outcome = run_load(self.addr(), workload, plan).await?;
        Ok(Measured { outcome, rss_peak_mib: sampler.finish() })
    }

    /// A time-bounded plan at `concurrency`.
    pub fn timed_plan(&self, label: impl Into<String>, concurrency: usize) -> LoadPlan {
        LoadPlan { label: label.into(), concurrency, stop: Stop::After(self.settings.run_duration) }
    }

    /// The unmeasured warm-up plan at `concurrency`.
    pub fn warmup_plan(&self, label: impl Into<String>, concurrency: usize) -> LoadPlan {
        LoadPlan { label: label.into(), concurrency, stop: Stop::After(self.settings.warmup) }
    }
}
