//! Coordinators: which broker coordinates a consumer group or a
//! `transactional.id` (FindCoordinator, with the keys batched from v4 on,
//! KIP-699), looked up once and cached per [`Client`], so that groups, the
//! group admin and transactional producers share one lookup and one cache.
//! A caller that meets NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE or a
//! broken connection calls [`Client::forget_coordinator`] (or
//! [`Client::refresh_coordinator`]); the next call looks it up again.

use std::collections::HashMap;
use std::sync::Mutex;

use kafka_protocol::messages::FindCoordinatorRequest;
use kafka_protocol::protocol::StrBytes;

use crate::client::Client;
use crate::protocol::ErrorCode;
use crate::{Error, Result};

/// What a coordinator coordinates: FindCoordinator's key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i8)]
pub enum CoordinatorType {
    /// A consumer group (`group.id`).
    Group = 0,
    /// A transactional producer (`transactional.id`).
    Transaction = 1,
}

/// Known coordinators' `host:port`, by type and key.
#[derive(Debug, Default)]
pub(crate) struct CoordinatorCache {
    known: Mutex<HashMap<(CoordinatorType, String), String>>,
}

impl CoordinatorCache {
    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<(CoordinatorType, String), String>> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Client {
    /// The coordinator of `key` (`host:port`): cached, or looked up.
    pub async fn coordinator(&self, kind: CoordinatorType, key: &str) -> Result<String> {
        if let Some(addr) = self.coordinators().known().get(&(kind, key.to_owned())) {
            return Ok(addr.clone());
        }
        self.refresh_coordinator(kind, key).await
    }

    /// The coordinator of `key` if it is known, without a lookup.
    pub fn cached_coordinator(&self, kind: CoordinatorType, key: &str) -> Option<String> {
        self.coordinators()
            .known()
            .get(&(kind, key.to_owned()))
            .cloned()
    }

    /// Looks the coordinator of `key` up again and caches it.
    pub async fn refresh_coordinator(&self, kind: CoordinatorType, key: &str) -> Result<String> {
        let found = lookup(self, kind, key).await;
        let mut known = self.coordinators().known();
        match found {
            Ok(addr) => {
                known.insert((kind, key.to_owned()), addr.clone());
                Ok(addr)
            }
            Err(e) => {
                known.remove(&(kind, key.to_owned()));
                Err(e)
            }
        }
    }

    /// Forgets the coordinator of `key`: it moved, or its connection broke.
    pub fn forget_coordinator(&self, kind: CoordinatorType, key: &str) {
        self.coordinators().known().remove(&(kind, key.to_owned()));
    }
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// FindCoordinator for one key, uncached.
async fn lookup(client: &Client, kind: CoordinatorType, key: &str) -> Result<String> {
    let key_type = kind as i8;
    let conn = client.any_broker().await?;
    let version = conn.version_for(10).unwrap_or(0);
    // v4+ batch the keys (KIP-699); earlier versions take one key.
    let req = if version >= 4 {
        FindCoordinatorRequest::default()
            .with_key_type(key_type)
            .with_coordinator_keys(vec![sb(key)])
    } else {
        FindCoordinatorRequest::default()
            .with_key_type(key_type)
            .with_key(sb(key))
    };
    let resp = conn.call(&req).await?;
    conn.throttle(resp.throttle_time_ms);
    let (code, host, port) = if version >= 4 {
        let c = resp.coordinators.first().ok_or_else(|| {
            Error::server(
                ErrorCode::COORDINATOR_NOT_AVAILABLE,
                None,
                "FindCoordinator",
                None,
                None,
            )
        })?;
        (ErrorCode(c.error_code), c.host.as_str().to_owned(), c.port)
    } else {
        (
            ErrorCode(resp.error_code),
            resp.host.as_str().to_owned(),
            resp.port,
        )
    };
    if !code.is_ok() {
        return Err(Error::server(code, None, "FindCoordinator", None, None));
    }
    Ok(format!("{host}:{port}"))
}
