//! Incremental fetch sessions (KIP-227), as pure state.
//!
//! The first fetch to a broker is a full one with session epoch 0, asking the
//! broker to open a session. Later fetches send the session id and the next
//! epoch, and list only partitions that are new or whose fetch offset changed;
//! partitions no longer wanted are listed as forgotten. An error about the
//! session (FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH) starts
//! over with a full fetch.

use std::collections::BTreeMap;

use crate::producer::TopicPartition;
use crate::protocol::ErrorCode;

/// The request a session wants sent next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionRequest {
    pub(crate) session_id: i32,
    pub(crate) epoch: i32,
    /// Partitions to list, with their fetch offsets.
    pub(crate) partitions: Vec<(TopicPartition, i64)>,
    /// Partitions to drop from the session.
    pub(crate) forgotten: Vec<TopicPartition>,
}

/// A fetch session with one broker.
#[derive(Debug, Default)]
pub(crate) struct FetchSession {
    id: i32,
    epoch: i32,
    /// What the broker's session holds: partition to fetch offset.
    sent: BTreeMap<TopicPartition, i64>,
    /// What the request in flight will make the session hold.
    pending: Option<BTreeMap<TopicPartition, i64>>,
    /// The broker declined sessions (id 0 in reply to epoch 0).
    sessionless: bool,
}

impl FetchSession {
    /// The request for fetching `wanted` (partition to offset) now.
    pub(crate) fn request(&mut self, wanted: &BTreeMap<TopicPartition, i64>) -> SessionRequest {
        self.pending = Some(wanted.clone());
        if self.sessionless {
            return SessionRequest {
                session_id: 0,
                epoch: -1,
                partitions: wanted.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                forgotten: Vec::new(),
            };
        }
        if self.id == 0 {
            return SessionRequest {
                session_id: 0,
                epoch: 0,
                partitions: wanted.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                forgotten: Vec::new(),
            };
        }
        let partitions = wanted
            .iter()
            .filter(|(tp, off)| self.sent.get(*tp) != Some(off))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let forgotten = self
            .sent
            .keys()
            .filter(|tp| !wanted.contains_key(*tp))
            .cloned()
            .collect();
        SessionRequest {
            session_id: self.id,
            epoch: self.epoch,
            partitions,
            forgotten,
        }
    }

    /// Takes in the response's top-level error code and session id.
    pub(crate) fn response(&mut self, error: ErrorCode, session_id: i32) {
        let pending = self.pending.take();
        if error == ErrorCode::FETCH_SESSION_ID_NOT_FOUND
            || error == ErrorCode::INVALID_FETCH_SESSION_EPOCH
        {
            self.reset();
            return;
        }
        if !error.is_ok() {
            return;
        }
        if self.sessionless {
            return;
        }
        if self.id == 0 {
            if session_id == 0 {
                self.sessionless = true;
                return;
            }
            self.id = session_id;
            self.epoch = 1;
        } else {
            self.epoch = if self.epoch == i32::MAX {
                1
            } else {
                self.epoch + 1
            };
        }
        if let Some(p) = pending {
            self.sent = p;
        }
    }

    /// Forgets the session (after a failed request: its epoch is uncertain).
    pub(crate) fn reset(&mut self) {
        self.id = 0;
        self.epoch = 0;
        self.sent.clear();
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition {
            topic: Arc::from("t"),
            partition: p,
        }
    }

    #[test]
    fn full_then_incremental_then_forgotten() {
        let mut s = FetchSession::default();
        let mut wanted = BTreeMap::from([(tp(0), 10), (tp(1), 20)]);
        let r = s.request(&wanted);
        assert_eq!((r.session_id, r.epoch, r.partitions.len()), (0, 0, 2));
        s.response(ErrorCode::NONE, 77);

        wanted.insert(tp(0), 15);
        let r = s.request(&wanted);
        assert_eq!((r.session_id, r.epoch), (77, 1));
        assert_eq!(r.partitions, vec![(tp(0), 15)], "only the moved partition");
        s.response(ErrorCode::NONE, 77);

        wanted.remove(&tp(1));
        let r = s.request(&wanted);
        assert_eq!(r.epoch, 2);
        assert!(r.partitions.is_empty());
        assert_eq!(r.forgotten, vec![tp(1)]);
        s.response(ErrorCode::NONE, 77);
    }

    #[test]
    fn session_errors_start_over() {
        let mut s = FetchSession::default();
        let wanted = BTreeMap::from([(tp(0), 1)]);
        s.request(&wanted);
        s.response(ErrorCode::NONE, 5);
        s.request(&wanted);
        s.response(ErrorCode::INVALID_FETCH_SESSION_EPOCH, 0);
        let r = s.request(&wanted);
        assert_eq!((r.session_id, r.epoch, r.partitions.len()), (0, 0, 1));
    }

    #[test]
    fn brokers_without_sessions_get_full_fetches() {
        let mut s = FetchSession::default();
        let wanted = BTreeMap::from([(tp(0), 1)]);
        s.request(&wanted);
        s.response(ErrorCode::NONE, 0);
        let r = s.request(&wanted);
        assert_eq!((r.session_id, r.epoch, r.partitions.len()), (0, -1, 1));
    }
}
