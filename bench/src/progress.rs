//! Progress lines on stderr for phases that take more than a second: count, rate over the last
//! second, and how far along the run is. stdout stays reserved for the results table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::load::Stop;
use crate::report::format_count;

/// A running progress printer; stops when finished or dropped.
pub struct Progress {
    task: JoinHandle<()>,
}

impl Progress {
    /// Prints `label` with the value of `done` once a second until [`Progress::finish`].
    pub fn start(label: String, done: Arc<AtomicU64>, stop: Stop) -> Progress {
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            let mut previous = 0;
            loop {
                ticker.tick().await;
                let now_done = done.load(Ordering::Relaxed);
                let rate = now_done.saturating_sub(previous);
                previous = now_done;
                let elapsed = started.elapsed().as_secs_f64();
                let along = match stop {
                    Stop::After(duration) => {
                        format!("{elapsed:.0}/{:.0} s", duration.as_secs_f64())
                    }
                    Stop::Jobs(jobs) => format!("of {}, {elapsed:.0} s", format_count(jobs)),
                };
                eprintln!("  [{label}] {} done ({along}), {}/s", format_count(now_done), format_count(rate));
            }
        });
        Progress { task }
    }

    /// Stops printing.
    pub fn finish(self) {
        self.task.abort();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}
