//! API version negotiation: per API, the highest version both the broker
//! (from its ApiVersions response) and this client support.

use std::collections::HashMap;

use kafka_protocol::messages::ApiKey;

/// The versions this client implements, per API key. These can be narrower
/// than what the kafka-protocol crate can encode: a version is listed only
/// when our code fills in every field it needs (e.g. Produce and Fetch stop
/// before the versions that address topics by id only).
pub fn client_range(api_key: i16) -> Option<(i16, i16)> {
    let k = ApiKey::try_from(api_key).ok()?;
    Some(match k {
        ApiKey::Produce => (3, 12),
        ApiKey::Fetch => (4, 12),
        ApiKey::ListOffsets => (1, 9),
        ApiKey::Metadata => (1, 12),
        ApiKey::OffsetCommit => (2, 9),
        ApiKey::OffsetFetch => (1, 9),
        ApiKey::FindCoordinator => (1, 6),
        ApiKey::JoinGroup => (2, 9),
        ApiKey::Heartbeat => (1, 4),
        ApiKey::LeaveGroup => (1, 5),
        ApiKey::SyncGroup => (1, 5),
        ApiKey::DescribeGroups => (1, 5),
        ApiKey::ListGroups => (1, 5),
        ApiKey::ApiVersions => (0, 3),
        ApiKey::CreateTopics => (2, 7),
        ApiKey::DeleteTopics => (1, 5),
        ApiKey::DeleteRecords => (0, 2),
        ApiKey::InitProducerId => (0, 5),
        ApiKey::AddPartitionsToTxn => (0, 3),
        ApiKey::AddOffsetsToTxn => (0, 4),
        ApiKey::EndTxn => (0, 4),
        ApiKey::TxnOffsetCommit => (0, 4),
        ApiKey::DescribeConfigs => (1, 4),
        ApiKey::DeleteGroups => (0, 2),
        ApiKey::ConsumerGroupHeartbeat => (0, 1),
        ApiKey::ConsumerGroupDescribe => (0, 1),
        ApiKey::SaslHandshake => (1, 1),
        ApiKey::SaslAuthenticate => (0, 2),
        ApiKey::DescribeAcls => (1, 3),
        ApiKey::CreateAcls => (1, 3),
        ApiKey::DeleteAcls => (1, 3),
        ApiKey::IncrementalAlterConfigs => (0, 1),
        _ => return None,
    })
}

/// The broker's supported version ranges, from its ApiVersions response.
#[derive(Debug, Clone, Default)]
pub struct BrokerVersions {
    ranges: HashMap<i16, (i16, i16)>,
}

impl BrokerVersions {
    /// Builds the table from `(api_key, min, max)` triples.
    pub fn new(ranges: impl IntoIterator<Item = (i16, i16, i16)>) -> Self {
        Self {
            ranges: ranges
                .into_iter()
                .map(|(k, min, max)| (k, (min, max)))
                .collect(),
        }
    }

    /// The broker's range for an API, if it supports it.
    pub fn broker_range(&self, api_key: i16) -> Option<(i16, i16)> {
        self.ranges.get(&api_key).copied()
    }

    /// The version to use for `api_key`: the highest in both ranges.
    pub fn negotiate(&self, api_key: i16) -> Option<i16> {
        let (cmin, cmax) = client_range(api_key)?;
        let (bmin, bmax) = self.broker_range(api_key)?;
        let v = cmax.min(bmax);
        (v >= cmin.max(bmin)).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Message;

    #[test]
    fn picks_the_highest_common_version() {
        let b = BrokerVersions::new([(0, 3, 13), (1, 4, 8), (18, 0, 4), (3, 0, 2)]);
        assert_eq!(b.negotiate(0), Some(12), "capped by us");
        assert_eq!(b.negotiate(1), Some(8), "capped by the broker");
        assert_eq!(b.negotiate(18), Some(3));
        assert_eq!(b.negotiate(3), Some(2));
        assert_eq!(b.negotiate(2), None, "broker lacks ListOffsets");
        let old = BrokerVersions::new([(0, 0, 2)]);
        assert_eq!(old.negotiate(0), None, "no overlap");
    }

    /// Every version we claim is one the kafka-protocol crate can encode.
    #[test]
    fn our_ranges_fit_the_crate() {
        fn check<M: Message>(key: ApiKey) {
            let (min, max) = client_range(key as i16).expect("listed");
            assert!(
                min >= M::VERSIONS.min && max <= M::VERSIONS.max,
                "{key:?}: ours {min}..={max}, crate {}",
                M::VERSIONS
            );
        }
        check::<ProduceRequest>(ApiKey::Produce);
        check::<FetchRequest>(ApiKey::Fetch);
        check::<ListOffsetsRequest>(ApiKey::ListOffsets);
        check::<MetadataRequest>(ApiKey::Metadata);
        check::<OffsetCommitRequest>(ApiKey::OffsetCommit);
        check::<OffsetFetchRequest>(ApiKey::OffsetFetch);
        check::<FindCoordinatorRequest>(ApiKey::FindCoordinator);
        check::<JoinGroupRequest>(ApiKey::JoinGroup);
        check::<HeartbeatRequest>(ApiKey::Heartbeat);
        check::<LeaveGroupRequest>(ApiKey::LeaveGroup);
        check::<SyncGroupRequest>(ApiKey::SyncGroup);
        check::<DescribeGroupsRequest>(ApiKey::DescribeGroups);
        check::<ListGroupsRequest>(ApiKey::ListGroups);
        check::<ApiVersionsRequest>(ApiKey::ApiVersions);
        check::<CreateTopicsRequest>(ApiKey::CreateTopics);
        check::<DeleteTopicsRequest>(ApiKey::DeleteTopics);
        check::<DeleteRecordsRequest>(ApiKey::DeleteRecords);
        check::<InitProducerIdRequest>(ApiKey::InitProducerId);
        check::<AddPartitionsToTxnRequest>(ApiKey::AddPartitionsToTxn);
        check::<AddOffsetsToTxnRequest>(ApiKey::AddOffsetsToTxn);
        check::<EndTxnRequest>(ApiKey::EndTxn);
        check::<TxnOffsetCommitRequest>(ApiKey::TxnOffsetCommit);
        check::<DescribeConfigsRequest>(ApiKey::DescribeConfigs);
        check::<DeleteGroupsRequest>(ApiKey::DeleteGroups);
        check::<ConsumerGroupHeartbeatRequest>(ApiKey::ConsumerGroupHeartbeat);
        check::<SaslHandshakeRequest>(ApiKey::SaslHandshake);
        check::<SaslAuthenticateRequest>(ApiKey::SaslAuthenticate);
        check::<DescribeAclsRequest>(ApiKey::DescribeAcls);
        check::<CreateAclsRequest>(ApiKey::CreateAcls);
        check::<DeleteAclsRequest>(ApiKey::DeleteAcls);
        check::<IncrementalAlterConfigsRequest>(ApiKey::IncrementalAlterConfigs);
    }
}
