//! Topic administration: create, delete, list and describe topics, list
//! offsets, describe configs and delete records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, DeleteRecordsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, IncrementalAlterConfigsRequest, ListOffsetsRequest,
};
use kafka_protocol::protocol::StrBytes;

use crate::client::{topic_name, Client, TopicInfo};
use crate::protocol::ErrorCode;
use crate::{Error, Result};

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    /// Name.
    pub name: String,
    /// Partition count (-1: the broker's `num.partitions`).
    pub partitions: i32,
    /// Replication factor (-1: the broker's `default.replication.factor`).
    pub replication_factor: i16,
    /// Topic configs, e.g. `("cleanup.policy", "compact")`.
    pub configs: Vec<(String, String)>,
}

impl NewTopic {
    /// A topic with `partitions` partitions and `replication_factor` replicas.
    pub fn new(name: impl Into<String>, partitions: i32, replication_factor: i16) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor,
            configs: Vec::new(),
        }
    }

    /// Adds a topic config.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.push((key.into(), value.into()));
        self
    }
}

/// Which offset [`Admin::list_offsets`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The log end offset (the high watermark, or the last stable offset
    /// under read_committed).
    Latest,
    /// The first offset whose timestamp is at or after this one (ms).
    Timestamp(i64),
}

impl OffsetSpec {
    fn wire(self) -> i64 {
        match self {
            Self::Earliest => -2,
            Self::Latest => -1,
            Self::Timestamp(t) => t,
        }
    }
}

/// The admin client.
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    /// An admin client over `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The underlying cluster handle.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn timeout(&self) -> Duration {
        self.client.config().default_api_timeout
    }

    /// Creates topics; one result per topic, in order. An existing topic gives
    /// a server error with `TOPIC_ALREADY_EXISTS`.
    pub async fn create_topics(&self, topics: &[NewTopic]) -> Result<Vec<Result<()>>> {
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(self.timeout().as_millis().min(i32::MAX as u128) as i32)
            .with_topics(
                topics
                    .iter()
                    .map(|t| {
                        CreatableTopic::default()
                            .with_name(topic_name(&t.name))
                            .with_num_partitions(t.partitions)
                            .with_replication_factor(t.replication_factor)
                            .with_configs(
                                t.configs
                                    .iter()
                                    .map(|(k, v)| {
                                        CreatableTopicConfig::default()
                                            .with_name(StrBytes::from_string(k.clone()))
                                            .with_value(Some(StrBytes::from_string(v.clone())))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let resp = self
            .client
            .retry("CreateTopics", self.timeout(), || async {
                let conn = self.client.any_broker().await?;
                let resp = conn.call(&req).await?;
                conn.throttle(resp.throttle_time_ms);
                Ok(resp)
            })
            .await?;
        let mut by_name: HashMap<String, Result<()>> = resp
            .topics
            .iter()
            .map(|r| {
                let name = r.name.0.as_str().to_owned();
                let code = ErrorCode(r.error_code);
                let res = if code.is_ok() {
                    Ok(())
                } else {
                    Err(Error::server(
                        code,
                        r.error_message.as_ref().map(|m| m.as_str().to_owned()),
                        "CreateTopics",
                        Some(&name),
                        None,
                    ))
                };
                (name, res)
            })
            .collect();
        Ok(topics
            .iter()
            .map(|t| {
                by_name.remove(&t.name).unwrap_or_else(|| {
                    Err(Error::Decode {
                        api: "CreateTopics",
                        broker: String::new(),
                        reason: format!("no result for topic {}", t.name),
                    })
                })
            })
            .collect())
    }

    /// Creates one topic and waits until every partition has a leader.
    /// With `if_missing`, an existing topic is fine.
    pub async fn create_topic(&self, topic: NewTopic, if_missing: bool) -> Result<Arc<TopicInfo>> {
        let res = self
            .create_topics(std::slice::from_ref(&topic))
            .await?
            .pop()
            .unwrap_or(Ok(()));
        match res {
            Ok(()) => {}
            Err(e) if if_missing && e.code() == Some(ErrorCode::TOPIC_ALREADY_EXISTS) => {}
            Err(e) => return Err(e),
        }
        self.wait_for_topic(&topic.name).await
    }

    /// Waits until `topic` is in the metadata with a leader for every
    /// partition.
    pub async fn wait_for_topic(&self, topic: &str) -> Result<Arc<TopicInfo>> {
        self.client
            .retry("waiting for topic leaders", self.timeout(), || async {
                let t = self.client.topic(topic, true, false).await?;
                if let Some(p) = t
                    .partitions
                    .iter()
                    .find(|p| p.leader < 0 || !p.error.is_ok())
                {
                    return Err(Error::server(
                        ErrorCode::LEADER_NOT_AVAILABLE,
                        None,
                        "Metadata",
                        Some(topic),
                        Some(p.id),
                    ));
                }
                Ok(t)
            })
            .await
    }

    /// Deletes topics; one result per topic, in order.
    pub async fn delete_topics(&self, names: &[&str]) -> Result<Vec<Result<()>>> {
        let req = DeleteTopicsRequest::default()
            .with_timeout_ms(self.timeout().as_millis().min(i32::MAX as u128) as i32)
            .with_topic_names(names.iter().map(|n| topic_name(n)).collect());
        let resp = self
            .client
            .retry("DeleteTopics", self.timeout(), || async {
                let conn = self.client.any_broker().await?;
                let resp = conn.call(&req).await?;
                conn.throttle(resp.throttle_time_ms);
                Ok(resp)
            })
            .await?;
        let mut by_name: HashMap<String, Result<()>> = resp
            .responses
            .iter()
            .filter_map(|r| {
                let name = r.name.as_ref()?.0.as_str().to_owned();
                let code = ErrorCode(r.error_code);
                let res = if code.is_ok() {
                    Ok(())
                } else {
                    Err(Error::server(
                        code,
                        r.error_message.as_ref().map(|m| m.as_str().to_owned()),
                        "DeleteTopics",
                        Some(&name),
                        None,
                    ))
                };
                Some((name, res))
            })
            .collect();
        Ok(names
            .iter()
            .map(|n| by_name.remove(*n).unwrap_or(Ok(())))
            .collect())
    }

    /// Every topic (internal ones included), sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<Arc<TopicInfo>>> {
        self.client
            .retry("Metadata", self.timeout(), || {
                self.client.refresh_metadata(None)
            })
            .await?;
        let mut topics: Vec<_> = self.client.cluster().topics.values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// Describes one topic.
    pub async fn describe_topic(&self, topic: &str) -> Result<Arc<TopicInfo>> {
        self.client
            .retry("Metadata", self.timeout(), || {
                self.client.topic(topic, true, false)
            })
            .await
    }

    /// Offsets of the given partitions of `topic` (all partitions when
    /// `partitions` is empty), per `spec`. `read_committed` gives the last
    /// stable offset for [`OffsetSpec::Latest`].
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
        spec: OffsetSpec,
        read_committed: bool,
    ) -> Result<BTreeMap<i32, i64>> {
        self.client
            .retry("ListOffsets", self.timeout(), || async {
                let info = self.client.topic(topic, false, false).await?;
                let wanted: Vec<i32> = if partitions.is_empty() {
                    info.partitions.iter().map(|p| p.id).collect()
                } else {
                    partitions.to_vec()
                };
                let mut out = BTreeMap::new();
                for (leader, parts) in self.by_leader(topic, &wanted)? {
                    let req = ListOffsetsRequest::default()
                        .with_replica_id(BrokerId(-1))
                        .with_isolation_level(i8::from(read_committed))
                        .with_topics(vec![ListOffsetsTopic::default()
                            .with_name(topic_name(topic))
                            .with_partitions(
                                parts
                                    .iter()
                                    .map(|&p| {
                                        ListOffsetsPartition::default()
                                            .with_partition_index(p)
                                            .with_current_leader_epoch(-1)
                                            .with_timestamp(spec.wire())
                                    })
                                    .collect(),
                            )]);
                    let conn = self.client.broker(leader).await?;
                    let resp = conn.call(&req).await?;
                    conn.throttle(resp.throttle_time_ms);
                    for t in &resp.topics {
                        for p in &t.partitions {
                            Error::check(
                                ErrorCode(p.error_code),
                                None,
                                "ListOffsets",
                                Some(topic),
                                Some(p.partition_index),
                            )?;
                            out.insert(p.partition_index, p.offset);
                        }
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Groups partitions of `topic` by their leader, from cached metadata.
    fn by_leader(&self, topic: &str, partitions: &[i32]) -> Result<BTreeMap<i32, Vec<i32>>> {
        let mut by: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for &p in partitions {
            let leader =
                self.client
                    .leader_of(topic, p)
                    .ok_or_else(|| Error::UnknownPartition {
                        topic: topic.to_owned(),
                        partition: p,
                    })?;
            by.entry(leader).or_default().push(p);
        }
        Ok(by)
    }

    /// A topic's configuration as `(name, value)` pairs, sorted.
    pub async fn describe_topic_config(
        &self,
        topic: &str,
    ) -> Result<Vec<(String, Option<String>)>> {
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2) // TOPIC
                .with_resource_name(StrBytes::from_string(topic.to_owned()))
                .with_configuration_keys(None),
        ]);
        let resp = self
            .client
            .retry("DescribeConfigs", self.timeout(), || async {
                let conn = self.client.any_broker().await?;
                let resp = conn.call(&req).await?;
                conn.throttle(resp.throttle_time_ms);
                Ok(resp)
            })
            .await?;
        let mut out = Vec::new();
        for r in &resp.results {
            Error::check(
                ErrorCode(r.error_code),
                r.error_message.as_ref().map(|m| m.as_str().to_owned()),
                "DescribeConfigs",
                Some(topic),
                None,
            )?;
            for c in &r.configs {
                out.push((
                    c.name.as_str().to_owned(),
                    c.value.as_ref().map(|v| v.as_str().to_owned()),
                ));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Sets configs of `topic` (IncrementalAlterConfigs, KIP-339): each
    /// `(key, value)` is SET; the topic's other configs stay as they are.
    pub async fn alter_topic_config(&self, topic: &str, set: &[(&str, &str)]) -> Result<()> {
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(topic.to_owned()))
                .with_configs(
                    set.iter()
                        .map(|(k, v)| {
                            AlterableConfig::default()
                                .with_name(StrBytes::from_string((*k).to_owned()))
                                .with_config_operation(0)
                                .with_value(Some(StrBytes::from_string((*v).to_owned())))
                        })
                        .collect(),
                ),
        ]);
        let resp = self
            .client
            .retry("IncrementalAlterConfigs", self.timeout(), || async {
                let conn = self.client.any_broker().await?;
                let resp = conn.call(&req).await?;
                conn.throttle(resp.throttle_time_ms);
                Ok(resp)
            })
            .await?;
        for r in &resp.responses {
            Error::check(
                ErrorCode(r.error_code),
                r.error_message.as_ref().map(|m| m.to_string()),
                "IncrementalAlterConfigs",
                Some(topic),
                None,
            )?;
        }
        Ok(())
    }

    /// Deletes records before the given offsets; returns the new low
    /// watermarks.
    pub async fn delete_records(
        &self,
        topic: &str,
        before: &BTreeMap<i32, i64>,
    ) -> Result<BTreeMap<i32, i64>> {
        self.client
            .retry("DeleteRecords", self.timeout(), || async {
                self.client.topic(topic, false, false).await?;
                let parts: Vec<i32> = before.keys().copied().collect();
                let mut out = BTreeMap::new();
                for (leader, parts) in self.by_leader(topic, &parts)? {
                    let req = DeleteRecordsRequest::default()
                        .with_timeout_ms(30_000)
                        .with_topics(vec![DeleteRecordsTopic::default()
                            .with_name(topic_name(topic))
                            .with_partitions(
                                parts
                                    .iter()
                                    .map(|p| {
                                        DeleteRecordsPartition::default()
                                            .with_partition_index(*p)
                                            .with_offset(before[p])
                                    })
                                    .collect(),
                            )]);
                    let conn = self.client.broker(leader).await?;
                    let resp = conn.call(&req).await?;
                    conn.throttle(resp.throttle_time_ms);
                    for t in &resp.topics {
                        for p in &t.partitions {
                            Error::check(
                                ErrorCode(p.error_code),
                                None,
                                "DeleteRecords",
                                Some(topic),
                                Some(p.partition_index),
                            )?;
                            out.insert(p.partition_index, p.low_watermark);
                        }
                    }
                }
                Ok(out)
            })
            .await
    }
}
