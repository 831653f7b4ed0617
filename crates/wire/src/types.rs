//! Types every part of the client shares: where a record is
//! ([`TopicPartition`]), where to start reading ([`Offset`]) and a group
//! member's identity ([`GroupMetadata`]). Below the producer, the consumer
//! and groups, so that none of them imports another for these.

use std::sync::Arc;

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
}

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// The log start offset.
    Beginning,
    /// The log end offset (the last stable offset under read_committed).
    End,
    /// An exact offset.
    At(i64),
    /// The first offset with a timestamp at or after this one (ms).
    Timestamp(i64),
}

/// A group member's identity, for committing its offsets inside a
/// transaction (KIP-447: the coordinator refuses offsets from a member of an
/// older generation, so a zombie cannot commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    /// `group.id`.
    pub group_id: String,
    /// Generation (classic) or member epoch (KIP-848); -1 for none.
    pub generation: i32,
    /// Member id; empty for none.
    pub member_id: String,
    /// `group.instance.id`.
    pub instance_id: Option<String>,
}

impl GroupMetadata {
    /// Metadata for a group without membership checks (generation -1).
    pub fn new(group_id: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
            generation: -1,
            member_id: String::new(),
            instance_id: None,
        }
    }
}
