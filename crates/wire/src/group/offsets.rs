//! OffsetCommit and OffsetFetch for a group, shared by the group consumer
//! and group administration: request building and response checking.

use std::collections::BTreeMap;

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{
    GroupId, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::membership::Partitions;
use crate::client::topic_name;
use crate::protocol::ErrorCode;
use crate::{Error, Result};

/// Committed offsets by `(topic, partition)`; -1 where none is committed.
pub type GroupOffsets = BTreeMap<(String, i32), i64>;

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// An OffsetCommit for `offsets` (`(topic, partition, next offset)`), by a
/// member (`generation`, `member`, `instance`) or, with generation -1 and an
/// empty member id, by an admin for an empty group.
pub(crate) fn commit_request<'a>(
    group: &str,
    generation: i32,
    member: &str,
    instance: Option<&str>,
    offsets: impl IntoIterator<Item = (&'a str, i32, i64)>,
) -> OffsetCommitRequest {
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for (t, p, off) in offsets {
        by_topic.entry(t).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(p)
                .with_committed_offset(off)
                .with_committed_leader_epoch(-1),
        );
    }
    OffsetCommitRequest::default()
        .with_group_id(GroupId(sb(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(sb(member))
        .with_group_instance_id(instance.map(sb))
        .with_topics(
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(topic_name(t))
                        .with_partitions(ps)
                })
                .collect(),
        )
}

/// The first partition error of an OffsetCommit response, if any.
pub(crate) fn check_commit(resp: &OffsetCommitResponse, group: &str) -> Result<()> {
    for t in &resp.topics {
        for p in &t.partitions {
            Error::check(
                ErrorCode(p.error_code),
                Some(format!("group {group}")),
                "OffsetCommit",
                Some(t.name.0.as_str()),
                Some(p.partition_index),
            )?;
        }
    }
    Ok(())
}

/// An OffsetFetch (v8+ group form) for `partitions`, or every committed
/// partition when `None`. `require_stable` waits out pending transactional
/// commits (KIP-447).
pub(crate) fn fetch_request(
    group: &str,
    partitions: Option<&Partitions>,
    require_stable: bool,
) -> OffsetFetchRequest {
    OffsetFetchRequest::default()
        .with_require_stable(require_stable)
        .with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(sb(group)))
            .with_topics(partitions.map(|ps| {
                ps.iter()
                    .map(|(t, parts)| {
                        OffsetFetchRequestTopics::default()
                            .with_name(topic_name(t))
                            .with_partition_indexes(parts.clone())
                    })
                    .collect()
            }))])
}

/// The offsets in an OffsetFetch response, or its first error.
pub(crate) fn fetched_offsets(resp: &OffsetFetchResponse) -> Result<GroupOffsets> {
    let mut out = BTreeMap::new();
    for g in &resp.groups {
        let code = ErrorCode(g.error_code);
        if !code.is_ok() {
            return Err(Error::server(code, None, "OffsetFetch", None, None));
        }
        for t in &g.topics {
            for p in &t.partitions {
                Error::check(
                    ErrorCode(p.error_code),
                    None,
                    "OffsetFetch",
                    Some(t.name.0.as_str()),
                    Some(p.partition_index),
                )?;
                out.insert(
                    (t.name.0.as_str().to_owned(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    Ok(out)
}
