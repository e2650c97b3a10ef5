//! The closed-loop load generator: C workers, each with its own connection, send requests back to
//! back until a deadline or until a number of jobs is done.
//!
//! A [`Workload`] turns a global job number into a request and judges the response; job numbers
//! are handed out from one counter, so consecutive requests go to consecutive devices and a run
//! spreads evenly over the fleet. Latency is measured from the first byte sent to the last byte of
//! the body received and recorded in microseconds in an HDR histogram per worker, merged at the end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::http::{Connection, Request, Response};
use crate::progress::Progress;

/// Turns job numbers into requests and judges the answers. Implementations are shared by all
/// workers, so they use interior mutability for anything they collect.
pub trait Workload: Send + Sync + 'static {
    /// The request of job `job` (0, 1, 2, … across all workers).
    fn request(&self, job: u64) -> Request;

    /// Whether the response counts as a success; the error text is reported once per run.
    fn accept(&self, job: u64, response: &Response) -> Result<(), String> {
        let _ = job;
        expect_success(response)
    }
}

/// `Ok` for a 2xx status, otherwise the status and the start of the body.
pub fn expect_success(response: &Response) -> Result<(), String> {
    if response.status.is_success() {
        Ok(())
    } else {
        Err(format!("{}: {}", response.status, response.excerpt()))
    }
}

/// When a load run stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this long (requests in flight finish).
    After(Duration),
    /// After this many jobs have been sent.
    Jobs(u64),
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Shown in progress lines.
    pub label: String,
    /// Concurrent workers, each with one connection.
    pub concurrency: usize,
    /// When to stop.
    pub stop: Stop,
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadOutcome {
    /// Responses the workload accepted.
    pub completed: u64,
    /// Requests that failed (transport error or rejected response).
    pub failed: u64,
    /// Jobs handed out (completed + failed).
    pub issued: u64,
    /// Wall time from the first request to the last response.
    pub elapsed: Duration,
    /// Latency of accepted requests, in microseconds.
    pub latency_us: Histogram<u64>,
    /// The first failure, verbatim.
    pub first_error: Option<String>,
}

impl LoadOutcome {
    /// Accepted requests per second.
    pub fn per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.completed as f64 / seconds
        } else {
            0.0
        }
    }

    /// Latency percentile in milliseconds (`quantile` in 0..=1).
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Runs `workload` against `addr` as `plan` says, printing progress on stderr each second.
pub async fn run_load<W: Workload>(addr: SocketAddr, workload: Arc<W>, plan: &LoadPlan) -> Result<LoadOutcome> {
    if plan.concurrency == 0 {
        bail!("load with zero workers");
    }
    let next_job = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (deadline, job_limit) = match plan.stop {
        Stop::After(duration) => (Some(started + duration), None),
        Stop::Jobs(jobs) => (None, Some(jobs)),
    };
    let progress = Progress::start(plan.label.clone(), Arc::clone(&done), plan.stop);

    let mut workers = JoinSet::new();
    for _ in 0..plan.concurrency {
        let worker = Worker {
            addr,
            workload: Arc::clone(&workload),
            next_job: Arc::clone(&next_job),
            done: Arc::clone(&done),
            deadline,
            job_limit,
        };
        workers.spawn(worker.run());
    }

    let mut latency_us = new_histogram()?;
    let mut outcome_failed = 0;
    let mut completed = 0;
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        let tally = joined.context("load worker panicked")??;
        completed += tally.completed;
        outcome_failed += tally.failed;
        latency_us.add(&tally.latency_us).context("merging latency histograms")?;
        if first_error.is_none() {
            first_error = tally.first_error;
        }
    }
    let elapsed = started.elapsed();
    progress.finish();

    Ok(LoadOutcome {
        completed,
        failed: outcome_failed,
        issued: completed + outcome_failed,
        elapsed,
        latency_us,
        first_error,
    })
}

/// Microseconds from 1 µs to 10 minutes with three significant digits.
fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("creating latency histogram")
}

/// A worker gives up after this many failures in a row (the server is gone or rejects everything).
const MAX_CONSECUTIVE_FAILURES: u32 = 100;

struct Worker<W> {
    addr: SocketAddr,
    workload: Arc<W>,
    next_job: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    deadline: Option<Instant>,
    job_limit: Option<u64>,
}

struct Tally {
    completed: u64,
    failed: u64,
    latency_us: Histogram<u64>,
    first_error: Option<String>,
}

impl<W: Workload> Worker<W> {
    async fn run(self) -> Result<Tally> {
        let mut connection = Connection::new(self.addr)?;
        let mut tally = Tally { completed: 0, failed: 0, latency_us: new_histogram()?, first_error: None };
        let mut consecutive_failures = 0;
        loop {
            if self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                break;
            }
            let job = self.next_job.fetch_add(1, Ordering::Relaxed);
            if self.job_limit.is_some_and(|limit| job >= limit) {
                break;
            }
            let request = self.workload.request(job);
            let sent = Instant::now();
            let verdict = match connection.send(&request).await {
                Ok(response) => {
                    let latency = sent.elapsed();
                    self.workload.accept(job, &response).map(|()| latency)
                }
                Err(error) => Err(format!("{error:#}")),
            };
            self.done.fetch_add(1, Ordering::Relaxed);
            match verdict {
                Ok(latency) => {
                    tally.completed += 1;
                    consecutive_failures = 0;
                    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                    tally.latency_us.saturating_record(micros.max(1));
                }
                Err(error) => {
                    tally.failed += 1;
                    consecutive_failures += 1;
                    tally.first_error.get_or_insert(error);
                    if consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
                        break;
                    }
                }
            }
        }
        Ok(tally)
    }
}
