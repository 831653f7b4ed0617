//! Request statistics of this process's broker connections, per broker:
//! requests awaiting a response, responses received and the time they
//! took. Every connection to the same address adds to the same numbers;
//! [`snapshot`] reads them (the engine's `/metrics` exports them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// One broker's counters.
#[derive(Debug, Default)]
pub(crate) struct BrokerStats {
    in_flight: AtomicI64,
    responses: AtomicU64,
    latency_micros: AtomicU64,
    authentications: AtomicU64,
    reauthentications: AtomicU64,
}

impl BrokerStats {
    /// A request now awaits its response.
    pub(crate) fn sent(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }
    /// A request's response came after `took`.
    pub(crate) fn answered(&self, took: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.responses.fetch_add(1, Ordering::Relaxed);
        self.latency_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
    /// A connection authenticated (SASL); `again` for a KIP-368
    /// re-authentication of a live connection.
    pub(crate) fn authenticated(&self, again: bool) {
        if again {
            self.reauthentications.fetch_add(1, Ordering::Relaxed);
        } else {
            self.authentications.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// Requests that will get no response (the connection closed).
    pub(crate) fn abandoned(&self, n: usize) {
        self.in_flight.fetch_sub(n as i64, Ordering::Relaxed);
    }
}

fn registry() -> &'static Mutex<BTreeMap<String, Arc<BrokerStats>>> {
    static REGISTRY: OnceLock<Mutex<BTreeMap<String, Arc<BrokerStats>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The counters of broker `addr`.
pub(crate) fn for_broker(addr: &str) -> Arc<BrokerStats> {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(addr.to_owned())
        .or_default()
        .clone()
}

/// One broker's numbers at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerSnapshot {
    /// The broker's address (`host:port`).
    pub broker: String,
    /// Requests sent and not yet answered.
    pub in_flight: i64,
    /// Responses received since the process started.
    pub responses: u64,
    /// The time those responses took, summed (seconds).
    pub latency_seconds: f64,
    /// SASL authentications of new connections.
    pub authentications: u64,
    /// KIP-368 re-authentications of live connections.
    pub reauthentications: u64,
}

/// Every broker this process has connected to, by address.
pub fn snapshot() -> Vec<BrokerSnapshot> {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(broker, s)| BrokerSnapshot {
            broker: broker.clone(),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            responses: s.responses.load(Ordering::Relaxed),
            latency_seconds: s.latency_micros.load(Ordering::Relaxed) as f64 / 1e6,
            authentications: s.authentications.load(Ordering::Relaxed),
            reauthentications: s.reauthentications.load(Ordering::Relaxed),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_s_counters_add_up_across_its_connections() {
        let a = for_broker("stats-test:1");
        let b = for_broker("stats-test:1");
        a.sent();
        b.sent();
        b.sent();
        a.answered(Duration::from_millis(3));
        b.abandoned(1);
        let s = snapshot()
            .into_iter()
            .find(|s| s.broker == "stats-test:1")
            .expect("listed");
        assert_eq!(s.in_flight, 1);
        assert_eq!(s.responses, 1);
        assert!((s.latency_seconds - 0.003).abs() < 1e-9, "{s:?}");
    }
}
