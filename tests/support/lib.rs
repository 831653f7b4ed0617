//! Helpers shared by Faustus's cross-crate integration tests and benchmarks.
#![deny(missing_docs)]

use std::time::{Duration, Instant};

/// Polls `check` every `every` until it returns `Some`, or fails with `what`
/// once `within` has passed. Tests wait on conditions with this, not sleeps.
pub fn wait_until<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {within:?} waiting for {what}"));
        }
        std::thread::sleep(every);
    }
}

pub use faustus_testcontainers::unique_name as unique_topic;
