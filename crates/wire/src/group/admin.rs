//! Group administration on [`Admin`]: list, describe and delete groups, read
//! a group's committed offsets, and reset them (for an empty group).

use std::collections::BTreeMap;

use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, DeleteGroupsRequest, DescribeGroupsRequest, GroupId,
    ListGroupsRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::offsets::{check_commit, commit_request, fetch_request, fetched_offsets, GroupOffsets};
use super::protocol::{Assignment, Subscription};
use crate::admin::Admin;
use crate::conn::Connection;
use crate::coordinator::CoordinatorType;
use crate::protocol::ErrorCode;
use crate::{Error, Result};

/// A group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// Group id.
    pub group_id: String,
    /// Protocol type (`consumer` for consumer groups).
    pub protocol_type: String,
    /// State (`Stable`, `Empty`, ...).
    pub state: String,
}

/// One member as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Member id.
    pub member_id: String,
    /// Static instance id.
    pub instance_id: Option<String>,
    /// The member's `client.id`.
    pub client_id: String,
    /// The member's host.
    pub host: String,
    /// Its partitions (decoded from the consumer protocol).
    pub assignment: BTreeMap<String, Vec<i32>>,
    /// The user data of its subscription (classic groups; `None` in
    /// KIP-848 groups, whose protocol has none).
    pub user_data: Option<bytes::Bytes>,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group id.
    pub group_id: String,
    /// State.
    pub state: String,
    /// Protocol type.
    pub protocol_type: String,
    /// The chosen assignor.
    pub protocol: String,
    /// Members.
    pub members: Vec<GroupMember>,
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

impl Admin {
    async fn coordinator_of(&self, group: &str) -> Result<Connection> {
        let addr = self
            .client()
            .refresh_coordinator(CoordinatorType::Group, group)
            .await?;
        self.client().coordinator_conn(&addr).await
    }

    /// Every group on every broker, sorted by id.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        self.client().refresh_metadata(None).await?;
        let mut out = Vec::new();
        let mut brokers: Vec<i32> = self.client().cluster().brokers.keys().copied().collect();
        brokers.sort_unstable();
        for b in brokers {
            let conn = self.client().broker(b).await?;
            let resp = conn.call(&ListGroupsRequest::default()).await?;
            conn.throttle(resp.throttle_time_ms);
            let code = ErrorCode(resp.error_code);
            if !code.is_ok() {
                return Err(Error::server(code, None, "ListGroups", None, None));
            }
            out.extend(resp.groups.iter().map(|g| GroupListing {
                group_id: g.group_id.0.as_str().to_owned(),
                protocol_type: g.protocol_type.as_str().to_owned(),
                state: g.group_state.as_str().to_owned(),
            }));
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out.dedup_by(|a, b| a.group_id == b.group_id);
        Ok(out)
    }

    /// Describes a group: state, assignor and members with their partitions.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let conn = self.coordinator_of(group).await?;
        let resp = conn
            .call(&DescribeGroupsRequest::default().with_groups(vec![GroupId(sb(group))]))
            .await?;
        conn.throttle(resp.throttle_time_ms);
        let g = resp.groups.first().ok_or_else(|| Error::Decode {
            api: "DescribeGroups",
            broker: conn.addr().to_owned(),
            reason: "no group in the response".into(),
        })?;
        let code = ErrorCode(g.error_code);
        // A KIP-848 group is not a classic group: DescribeGroups (up to v5)
        // calls it Dead (v6+ says GROUP_ID_NOT_FOUND). Ask the new API.
        let not_classic = code == ErrorCode::GROUP_ID_NOT_FOUND
            || (code.is_ok() && g.group_state.as_str() == "Dead" && g.members.is_empty());
        if not_classic && conn.version_for(69).is_some() {
            return self.describe_consumer_group(&conn, group).await;
        }
        if !code.is_ok() {
            return Err(Error::server(code, None, "DescribeGroups", None, None));
        }
        let mut members = Vec::new();
        for m in &g.members {
            let assignment = Assignment::decode(&m.member_assignment).map_err(|e| {
                Error::Config(format!(
                    "group {group}: member {} has an unreadable assignment: {e}",
                    m.member_id.as_str()
                ))
            })?;
            // Members of other protocol types may say anything here.
            let user_data = Subscription::decode(&m.member_metadata)
                .ok()
                .and_then(|s| s.user_data);
            members.push(GroupMember {
                member_id: m.member_id.as_str().to_owned(),
                instance_id: m.group_instance_id.as_ref().map(|i| i.as_str().to_owned()),
                client_id: m.client_id.as_str().to_owned(),
                host: m.client_host.as_str().to_owned(),
                assignment: assignment.partitions,
                user_data,
            });
        }
        Ok(GroupDescription {
            group_id: group.to_owned(),
            state: g.group_state.as_str().to_owned(),
            protocol_type: g.protocol_type.as_str().to_owned(),
            protocol: g.protocol_data.as_str().to_owned(),
            members,
        })
    }

    /// ConsumerGroupDescribe (KIP-848) of a group on its coordinator.
    async fn describe_consumer_group(
        &self,
        conn: &Connection,
        group: &str,
    ) -> Result<GroupDescription> {
        let resp = conn
            .call(&ConsumerGroupDescribeRequest::default().with_group_ids(vec![GroupId(sb(group))]))
            .await?;
        conn.throttle(resp.throttle_time_ms);
        let g = resp.groups.first().ok_or_else(|| Error::Decode {
            api: "ConsumerGroupDescribe",
            broker: conn.addr().to_owned(),
            reason: "no group in the response".into(),
        })?;
        Error::check(
            ErrorCode(g.error_code),
            g.error_message.as_ref().map(|m| m.as_str().to_owned()),
            "ConsumerGroupDescribe",
            None,
            None,
        )?;
        let members = g
            .members
            .iter()
            .map(|m| GroupMember {
                member_id: m.member_id.as_str().to_owned(),
                instance_id: m.instance_id.as_ref().map(|i| i.as_str().to_owned()),
                client_id: m.client_id.as_str().to_owned(),
                host: m.client_host.as_str().to_owned(),
                assignment: m
                    .assignment
                    .topic_partitions
                    .iter()
                    .map(|tp| {
                        let mut ps = tp.partitions.clone();
                        ps.sort_unstable();
                        (tp.topic_name.0.as_str().to_owned(), ps)
                    })
                    .collect(),
                user_data: None,
            })
            .collect();
        Ok(GroupDescription {
            group_id: group.to_owned(),
            state: g.group_state.as_str().to_owned(),
            protocol_type: "consumer".to_owned(),
            protocol: g.assignor_name.as_str().to_owned(),
            members,
        })
    }

    /// Deletes a group (it must be empty).
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let conn = self.coordinator_of(group).await?;
        let resp = conn
            .call(&DeleteGroupsRequest::default().with_groups_names(vec![GroupId(sb(group))]))
            .await?;
        conn.throttle(resp.throttle_time_ms);
        for r in &resp.results {
            Error::check(
                ErrorCode(r.error_code),
                Some(format!("group {group}")),
                "DeleteGroups",
                None,
                None,
            )?;
        }
        Ok(())
    }

    /// The group's committed offsets for every topic it has committed.
    pub async fn group_offsets(&self, group: &str) -> Result<GroupOffsets> {
        let conn = self.coordinator_of(group).await?;
        let resp = conn.call(&fetch_request(group, None, false)).await?;
        conn.throttle(resp.throttle_time_ms);
        let mut out = fetched_offsets(&resp)?;
        out.retain(|_, off| *off >= 0);
        Ok(out)
    }

    /// Sets a group's committed offsets; the group must have no active
    /// members (as with `kafka-consumer-groups --reset-offsets`).
    pub async fn set_group_offsets(&self, group: &str, offsets: &GroupOffsets) -> Result<()> {
        let req = commit_request(
            group,
            -1,
            "",
            None,
            offsets.iter().map(|((t, p), off)| (t.as_str(), *p, *off)),
        );
        let conn = self.coordinator_of(group).await?;
        let resp = conn.call(&req).await?;
        conn.throttle(resp.throttle_time_ms);
        check_commit(&resp, group)
    }
}
