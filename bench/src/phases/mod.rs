//! The measured phases, one module each, and the workloads they share.
//!
//! Every phase first probes its endpoint; a 404/405 makes it `n/a (not in this build)`. A phase
//! returns one or more [`PhaseReport`] rows groups; errors are turned into a failed row by the
//! caller so one broken phase does not hide the others.

pub mod certificates;
pub mod commands;
pub mod console;
pub mod download;
pub mod heartbeat;
pub mod metrics;
pub mod overview;
pub mod registration;
pub mod rollout;
pub mod sweep;

use std::sync::Arc;

use bytes::Bytes;

use crate::context::Measured;
use crate::http::{Method, Request};
use crate::load::Workload;
use crate::report::PhaseReport;

/// POSTs the same JSON body to one path, as device `job % n` (so a run cycles through the fleet).
pub struct DeviceRequests {
    /// The path, e.g. `/devices/connect`.
    pub path: &'static str,
    /// Device tokens to cycle through; never empty.
    pub tokens: Arc<[Arc<str>]>,
    /// The body of every request.
    pub body: Bytes,
}

impl Workload for DeviceRequests {
    fn request(&self, job: u64) -> Request {
        let mut request = Request::new(Method::POST, self.path).json_bytes(self.body.clone());
        if let Some(token) = pick(&self.tokens, job) {
            request = request.bearer(Arc::clone(token));
        }
        request
    }
}

/// Element `job % len`, `None` for an empty slice.
pub fn pick<T>(items: &[T], job: u64) -> Option<&T> {
    let len = u64::try_from(items.len()).ok().filter(|len| *len > 0)?;
    items.get(usize::try_from(job % len).ok()?)
}

/// Folds a measured run's RSS and failures into `phase`.
pub fn observe(phase: &mut PhaseReport, measured: &Measured) {
    phase.observe_rss(measured.rss_peak_mib);
    phase.observe_errors(measured.outcome.failed, measured.outcome.first_error.as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_cycles_and_tolerates_empty() {
        let items = [1, 2, 3];
        assert_eq!(pick(&items, 4), Some(&2));
        let empty: [u8; 0] = [];
        assert_eq!(pick(&empty, 4), None);
    }
}
