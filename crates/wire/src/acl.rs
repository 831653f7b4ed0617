//! Access control lists (KIP-140's CreateAcls, DescribeAcls, DeleteAcls):
//! the types, as the Java admin client names them, their text forms (as
//! `kafka-acls.sh` and `faustus acls` take them), and [`Admin`]'s calls.

use std::fmt;
use std::str::FromStr;

use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
use kafka_protocol::protocol::StrBytes;

use crate::admin::Admin;
use crate::protocol::ErrorCode;
use crate::{Error, Result};

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $code:literal, $text:literal;)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// The protocol's code.
            pub fn code(self) -> i8 {
                match self { $(Self::$variant => $code,)* }
            }

            /// From the protocol's code.
            pub fn from_code(code: i8) -> Option<Self> {
                match code { $($code => Some(Self::$variant),)* _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$variant => $text,)* })
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                let norm: String = s.chars().filter(|c| *c != '_' && *c != '-').collect();
                $(if norm.eq_ignore_ascii_case(&$text.replace(['_', '-'], "")) {
                    return Ok(Self::$variant);
                })*
                Err(Error::Config(format!(
                    "`{s}` is not a {}: expected one of {}",
                    stringify!($name),
                    [$($text),*].join(", ")
                )))
            }
        }
    };
}

wire_enum! {
    /// What kind of resource an ACL is about.
    ResourceType {
        /// Matches every type (filters only).
        Any = 1, "any";
        /// A topic.
        Topic = 2, "topic";
        /// A consumer group.
        Group = 3, "group";
        /// The cluster (`kafka-cluster`).
        Cluster = 4, "cluster";
        /// A `transactional.id`.
        TransactionalId = 5, "transactional-id";
        /// A delegation token.
        DelegationToken = 6, "delegation-token";
        /// A user (KIP-373).
        User = 7, "user";
    }
}

wire_enum! {
    /// How an ACL's resource name matches.
    PatternType {
        /// Any pattern (filters only).
        Any = 1, "any";
        /// Literal or prefixed patterns that match a name (filters only).
        Match = 2, "match";
        /// The exact name (`*` for every resource).
        Literal = 3, "literal";
        /// Every name starting with it.
        Prefixed = 4, "prefixed";
    }
}

wire_enum! {
    /// The operation an ACL allows or denies.
    Operation {
        /// Any operation (filters only).
        Any = 1, "any";
        /// Every operation.
        All = 2, "all";
        /// Read (fetch, join a group, commit offsets).
        Read = 3, "read";
        /// Write (produce).
        Write = 4, "write";
        /// Create.
        Create = 5, "create";
        /// Delete.
        Delete = 6, "delete";
        /// Alter.
        Alter = 7, "alter";
        /// Describe (metadata, offsets).
        Describe = 8, "describe";
        /// Inter-broker requests.
        ClusterAction = 9, "cluster-action";
        /// Read configs.
        DescribeConfigs = 10, "describe-configs";
        /// Change configs.
        AlterConfigs = 11, "alter-configs";
        /// Idempotent produce.
        IdempotentWrite = 12, "idempotent-write";
        /// Create delegation tokens.
        CreateTokens = 13, "create-tokens";
        /// Describe delegation tokens.
        DescribeTokens = 14, "describe-tokens";
    }
}

wire_enum! {
    /// Allow or deny.
    Permission {
        /// Either (filters only).
        Any = 1, "any";
        /// Deny: wins over any allow.
        Deny = 2, "deny";
        /// Allow.
        Allow = 3, "allow";
    }
}

/// One ACL: `principal` may (or may not) do `operation` on the resources
/// `resource_type`/`name`/`pattern` match, from `host`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclBinding {
    /// The resource type.
    pub resource_type: ResourceType,
    /// The resource name (`*` for all; `kafka-cluster` for the cluster).
    pub name: String,
    /// How `name` matches.
    pub pattern: PatternType,
    /// `User:alice`.
    pub principal: String,
    /// The client host (`*` for any).
    pub host: String,
    /// The operation.
    pub operation: Operation,
    /// Allow or deny.
    pub permission: Permission,
}

impl AclBinding {
    /// Allows `principal` to do `operation` on the literal resource `name`
    /// from any host.
    pub fn allow(
        principal: impl Into<String>,
        resource_type: ResourceType,
        name: impl Into<String>,
        operation: Operation,
    ) -> Self {
        Self {
            resource_type,
            name: name.into(),
            pattern: PatternType::Literal,
            principal: principal.into(),
            host: "*".into(),
            operation,
            permission: Permission::Allow,
        }
    }

    /// This binding as a filter that matches exactly it.
    pub fn as_filter(&self) -> AclFilter {
        AclFilter {
            resource_type: self.resource_type,
            name: Some(self.name.clone()),
            pattern: self.pattern,
            principal: Some(self.principal.clone()),
            host: Some(self.host.clone()),
            operation: self.operation,
            permission: self.permission,
        }
    }
}

impl fmt::Display for AclBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} on {} {} ({}) from {}",
            self.principal,
            self.permission,
            self.operation,
            self.resource_type,
            self.name,
            self.pattern,
            self.host
        )
    }
}

/// Which ACLs to describe or delete; `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    /// The resource type (`Any` for all).
    pub resource_type: ResourceType,
    /// The resource name.
    pub name: Option<String>,
    /// The pattern type (`Any`, or `Match` for the ACLs that apply to
    /// `name`).
    pub pattern: PatternType,
    /// The principal.
    pub principal: Option<String>,
    /// The host.
    pub host: Option<String>,
    /// The operation (`Any` for all).
    pub operation: Operation,
    /// The permission (`Any` for both).
    pub permission: Permission,
}

impl Default for AclFilter {
    /// Matches every ACL.
    fn default() -> Self {
        Self {
            resource_type: ResourceType::Any,
            name: None,
            pattern: PatternType::Any,
            principal: None,
            host: None,
            operation: Operation::Any,
            permission: Permission::Any,
        }
    }
}

fn opt(s: &Option<String>) -> Option<StrBytes> {
    s.as_ref().map(|v| StrBytes::from_string(v.clone()))
}

fn binding(
    resource_type: i8,
    name: &StrBytes,
    pattern: i8,
    principal: &StrBytes,
    host: &StrBytes,
    operation: i8,
    permission: i8,
) -> Result<AclBinding> {
    let bad = |what: &str, code: i8| Error::Decode {
        api: "DescribeAcls",
        broker: String::new(),
        reason: format!("unknown {what} code {code}"),
    };
    Ok(AclBinding {
        resource_type: ResourceType::from_code(resource_type)
            .ok_or_else(|| bad("resource type", resource_type))?,
        name: name.to_string(),
        pattern: PatternType::from_code(pattern).ok_or_else(|| bad("pattern type", pattern))?,
        principal: principal.to_string(),
        host: host.to_string(),
        operation: Operation::from_code(operation).ok_or_else(|| bad("operation", operation))?,
        permission: Permission::from_code(permission)
            .ok_or_else(|| bad("permission", permission))?,
    })
}

fn check(api: &'static str, code: i16, message: &Option<StrBytes>) -> Result<()> {
    Error::check(
        ErrorCode(code),
        message.as_ref().map(|m| m.to_string()),
        api,
        None,
        None,
    )
}

impl Admin {
    /// Creates ACLs; one result per binding, in order. Needs ALTER on the
    /// cluster (a super user, or an ACL that grants it).
    pub async fn create_acls(&self, acls: &[AclBinding]) -> Result<Vec<Result<()>>> {
        let req = CreateAclsRequest::default().with_creations(
            acls.iter()
                .map(|a| {
                    AclCreation::default()
                        .with_resource_type(a.resource_type.code())
                        .with_resource_name(StrBytes::from_string(a.name.clone()))
                        .with_resource_pattern_type(a.pattern.code())
                        .with_principal(StrBytes::from_string(a.principal.clone()))
                        .with_host(StrBytes::from_string(a.host.clone()))
                        .with_operation(a.operation.code())
                        .with_permission_type(a.permission.code())
                })
                .collect(),
        );
        let client = self.client();
        let resp = client
            .retry(
                "CreateAcls",
                client.config().default_api_timeout,
                || async {
                    let conn = client.any_broker().await?;
                    let resp = conn.call(&req).await?;
                    conn.throttle(resp.throttle_time_ms);
                    Ok(resp)
                },
            )
            .await?;
        if resp.results.len() != acls.len() {
            return Err(Error::Decode {
                api: "CreateAcls",
                broker: String::new(),
                reason: format!("{} results for {} ACLs", resp.results.len(), acls.len()),
            });
        }
        Ok(resp
            .results
            .iter()
            .map(|r| check("CreateAcls", r.error_code, &r.error_message))
            .collect())
    }

    /// The ACLs `filter` matches, sorted.
    pub async fn describe_acls(&self, filter: &AclFilter) -> Result<Vec<AclBinding>> {
        let req = DescribeAclsRequest::default()
            .with_resource_type_filter(filter.resource_type.code())
            .with_resource_name_filter(opt(&filter.name))
            .with_pattern_type_filter(filter.pattern.code())
            .with_principal_filter(opt(&filter.principal))
            .with_host_filter(opt(&filter.host))
            .with_operation(filter.operation.code())
            .with_permission_type(filter.permission.code());
        let client = self.client();
        let resp = client
            .retry(
                "DescribeAcls",
                client.config().default_api_timeout,
                || async {
                    let conn = client.any_broker().await?;
                    let resp = conn.call(&req).await?;
                    conn.throttle(resp.throttle_time_ms);
                    check("DescribeAcls", resp.error_code, &resp.error_message)?;
                    Ok(resp)
                },
            )
            .await?;
        let mut out = Vec::new();
        for r in &resp.resources {
            for a in &r.acls {
                out.push(binding(
                    r.resource_type,
                    &r.resource_name,
                    r.pattern_type,
                    &a.principal,
                    &a.host,
                    a.operation,
                    a.permission_type,
                )?);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes the ACLs each filter matches; per filter, the ACLs deleted.
    pub async fn delete_acls(&self, filters: &[AclFilter]) -> Result<Vec<Result<Vec<AclBinding>>>> {
        let req = DeleteAclsRequest::default().with_filters(
            filters
                .iter()
                .map(|f| {
                    DeleteAclsFilter::default()
                        .with_resource_type_filter(f.resource_type.code())
                        .with_resource_name_filter(opt(&f.name))
                        .with_pattern_type_filter(f.pattern.code())
                        .with_principal_filter(opt(&f.principal))
                        .with_host_filter(opt(&f.host))
                        .with_operation(f.operation.code())
                        .with_permission_type(f.permission.code())
                })
                .collect(),
        );
        let client = self.client();
        let resp = client
            .retry(
                "DeleteAcls",
                client.config().default_api_timeout,
                || async {
                    let conn = client.any_broker().await?;
                    let resp = conn.call(&req).await?;
                    conn.throttle(resp.throttle_time_ms);
                    Ok(resp)
                },
            )
            .await?;
        Ok(resp
            .filter_results
            .iter()
            .map(|fr| {
                check("DeleteAcls", fr.error_code, &fr.error_message)?;
                fr.matching_acls
                    .iter()
                    .map(|m| {
                        check("DeleteAcls", m.error_code, &m.error_message)?;
                        binding(
                            m.resource_type,
                            &m.resource_name,
                            m.pattern_type,
                            &m.principal,
                            &m.host,
                            m.operation,
                            m.permission_type,
                        )
                    })
                    .collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for code in 1..=7 {
            let t = ResourceType::from_code(code).expect("type");
            assert_eq!(t.code(), code);
            assert_eq!(t.to_string().parse::<ResourceType>().expect("parse"), t);
        }
        for code in 1..=14 {
            let o = Operation::from_code(code).expect("operation");
            assert_eq!(o.to_string().parse::<Operation>().expect("parse"), o);
        }
        // As kafka-acls.sh and the Java enums spell them.
        assert_eq!(
            "TRANSACTIONAL_ID".parse::<ResourceType>().expect("java"),
            ResourceType::TransactionalId
        );
        assert_eq!(
            "IdempotentWrite".parse::<Operation>().expect("java"),
            Operation::IdempotentWrite
        );
        assert_eq!(
            "PREFIXED".parse::<PatternType>().expect("java"),
            PatternType::Prefixed
        );
        assert!(ResourceType::from_code(0).is_none());
        let err = "fly".parse::<Operation>().expect_err("unknown");
        assert!(err.to_string().contains("read, write"), "{err}");
    }

    #[test]
    fn a_binding_reads_as_a_sentence_and_filters_itself() {
        let b = AclBinding::allow("User:alice", ResourceType::Topic, "orders", Operation::Read);
        assert_eq!(
            b.to_string(),
            "User:alice allow read on topic orders (literal) from *"
        );
        let f = b.as_filter();
        assert_eq!(f.name.as_deref(), Some("orders"));
        assert_eq!(f.permission, Permission::Allow);
        assert_eq!(AclFilter::default().resource_type, ResourceType::Any);
    }
}
