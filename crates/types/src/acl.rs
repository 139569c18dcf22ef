//! Authorization's vocabulary: principals, resources, operations and ACL entries, and the
//! rule that decides whether a set of entries allows a request (docs/security.md).
//!
//! An entry allows one principal (or every principal: `*`) one operation (or every one:
//! `all`) on the resources of one type whose name is a literal or starts with a prefix.
//! There are no deny entries: what no entry allows is refused. As in Kafka, `read`,
//! `write`, `delete` and `alter` each imply `describe`, and `create` on the cluster
//! implies `create` on every topic.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits;

/// What an entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    /// The cluster itself (its name is always `cluster`): nodes, moves, controllers,
    /// users and ACLs.
    Cluster,
    Topic,
    /// A consumer group or a share group.
    Group,
}

/// How an entry's name matches a resource's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    /// The name exactly; `*` is every resource of the type.
    Literal,
    /// Every name that starts with it.
    Prefix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
}

/// One ACL entry: `principal` may do `operation` on the resources `pattern` matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclEntry {
    /// A user name (a password user's, or a client certificate's common name), or `*`.
    pub principal: String,
    pub resource: ResourceType,
    pub pattern: PatternType,
    /// The resource name or prefix; `cluster` for the cluster.
    pub name: String,
    pub operation: Operation,
}

/// The name of the one cluster resource.
pub const CLUSTER: &str = "cluster";

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A user proven by its password or its client certificate.
    User(String),
    /// No credentials and no client certificate.
    Anonymous,
}

impl Principal {
    /// The name quotas and logs know it by (`ANONYMOUS` for no one).
    pub fn name(&self) -> &str {
        match self {
            Principal::User(u) => u,
            Principal::Anonymous => "ANONYMOUS",
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "User:{}", self.name())
    }
}

/// What one request needs: `operation` on the resource `(resource, name)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub resource: ResourceType,
    pub name: String,
    pub operation: Operation,
}

impl Access {
    pub fn new(resource: ResourceType, name: impl Into<String>, operation: Operation) -> Access {
        Access { resource, name: name.into(), operation }
    }

    pub fn cluster(operation: Operation) -> Access {
        Access::new(ResourceType::Cluster, CLUSTER, operation)
    }

    pub fn topic(name: impl Into<String>, operation: Operation) -> Access {
        Access::new(ResourceType::Topic, name, operation)
    }

    pub fn group(name: impl Into<String>, operation: Operation) -> Access {
        Access::new(ResourceType::Group, name, operation)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {} '{}'", self.operation, self.resource, self.name)
    }
}

impl AclEntry {
    /// Whether this entry allows `principal` the access.
    pub fn allows(&self, principal: &str, access: &Access) -> bool {
        (self.principal == "*" || self.principal == principal)
            && self.operation_covers(access)
            && self.resource_covers(access)
    }

    fn operation_covers(&self, access: &Access) -> bool {
        let (mine, wanted) = (self.operation, access.operation);
        mine == Operation::All
            || mine == wanted
            || (wanted == Operation::Describe
                && matches!(mine, Operation::Read | Operation::Write | Operation::Delete | Operation::Alter))
    }

    fn resource_covers(&self, access: &Access) -> bool {
        let same_type = self.resource == access.resource
            // Create on the cluster: create any topic.
            || (self.resource == ResourceType::Cluster
                && access.resource == ResourceType::Topic
                && access.operation == Operation::Create
                && matches!(self.operation, Operation::Create | Operation::All));
        if !same_type {
            return false;
        }
        if self.resource == ResourceType::Cluster {
            return true;
        }
        match self.pattern {
            PatternType::Literal => self.name == "*" || self.name == access.name,
            PatternType::Prefix => access.name.starts_with(&self.name),
        }
    }

    /// Checks the entry's fields: a principal and a name of 1..=limit bytes, the cluster's
    /// name for the cluster.
    pub fn validate(&self) -> Result<(), String> {
        if self.principal.is_empty() || self.principal.len() > limits::USER_NAME_BYTES_MAX {
            return Err(format!("an ACL's principal has 1..={} bytes", limits::USER_NAME_BYTES_MAX));
        }
        if self.name.is_empty() || self.name.len() > limits::TOPIC_NAME_BYTES_MAX.max(limits::GROUP_NAME_BYTES_MAX) {
            return Err(format!("an ACL's resource name has 1..={} bytes", limits::TOPIC_NAME_BYTES_MAX));
        }
        if self.resource == ResourceType::Cluster && (self.name != CLUSTER || self.pattern != PatternType::Literal) {
            return Err(format!("the cluster resource is named '{CLUSTER}', literally"));
        }
        Ok(())
    }
}

impl fmt::Display for AclEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "User:{} {} {} {}:{}", self.principal, self.operation, self.resource, self.pattern, self.name)
    }
}

macro_rules! words {
    ($t:ty { $($v:ident => $w:literal),* $(,)? }) => {
        impl $t {
            /// Every value, in order.
            pub const ALL_VALUES: &'static [$t] = &[$(<$t>::$v),*];

            /// The word the wire, the CLI and the docs use.
            pub fn word(self) -> &'static str {
                match self { $(<$t>::$v => $w),* }
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.word())
            }
        }

        impl std::str::FromStr for $t {
            type Err = String;

            fn from_str(s: &str) -> Result<$t, String> {
                match s.to_ascii_lowercase().as_str() {
                    $($w => Ok(<$t>::$v),)*
                    _ => Err(format!(
                        "{s:?} is not one of {}",
                        [$($w),*].join(", ")
                    )),
                }
            }
        }
    };
}

words!(ResourceType { Cluster => "cluster", Topic => "topic", Group => "group" });
words!(PatternType { Literal => "literal", Prefix => "prefix" });
words!(Operation {
    All => "all",
    Read => "read",
    Write => "write",
    Create => "create",
    Delete => "delete",
    Alter => "alter",
    Describe => "describe",
});

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(principal: &str, resource: ResourceType, pattern: PatternType, name: &str, op: Operation) -> AclEntry {
        AclEntry { principal: principal.into(), resource, pattern, name: name.into(), operation: op }
    }

    #[test]
    fn literal_prefix_and_wildcards_match_as_documented() {
        let lit = entry("alice", ResourceType::Topic, PatternType::Literal, "orders", Operation::Write);
        assert!(lit.allows("alice", &Access::topic("orders", Operation::Write)));
        assert!(!lit.allows("bob", &Access::topic("orders", Operation::Write)));
        assert!(!lit.allows("alice", &Access::topic("orders2", Operation::Write)));
        assert!(!lit.allows("alice", &Access::topic("orders", Operation::Read)));
        // Write implies describe, not read or delete.
        assert!(lit.allows("alice", &Access::topic("orders", Operation::Describe)));
        assert!(!lit.allows("alice", &Access::topic("orders", Operation::Delete)));
        // A topic entry says nothing of a group of the same name.
        assert!(!lit.allows("alice", &Access::group("orders", Operation::Describe)));

        let prefix = entry("*", ResourceType::Topic, PatternType::Prefix, "logs.", Operation::Read);
        assert!(prefix.allows("anyone", &Access::topic("logs.app", Operation::Read)));
        assert!(!prefix.allows("anyone", &Access::topic("log", Operation::Read)));

        let star = entry("bob", ResourceType::Group, PatternType::Literal, "*", Operation::All);
        assert!(star.allows("bob", &Access::group("g1", Operation::Delete)));
        assert!(!star.allows("bob", &Access::topic("g1", Operation::Read)));
    }

    #[test]
    fn create_on_the_cluster_creates_any_topic() {
        let c = entry("ops", ResourceType::Cluster, PatternType::Literal, CLUSTER, Operation::Create);
        assert!(c.allows("ops", &Access::topic("anything", Operation::Create)));
        assert!(!c.allows("ops", &Access::topic("anything", Operation::Write)));
        let alter = entry("ops", ResourceType::Cluster, PatternType::Literal, CLUSTER, Operation::Alter);
        assert!(alter.allows("ops", &Access::cluster(Operation::Alter)));
        assert!(alter.allows("ops", &Access::cluster(Operation::Describe)));
        assert!(!alter.allows("ops", &Access::topic("t", Operation::Create)));
    }

    #[test]
    fn words_round_trip_and_bad_entries_are_refused() {
        for op in Operation::ALL_VALUES {
            assert_eq!(op.word().parse::<Operation>().unwrap(), *op);
        }
        assert!("READ".parse::<Operation>().is_ok());
        assert!("fly".parse::<Operation>().is_err());
        let bad = entry("", ResourceType::Topic, PatternType::Literal, "t", Operation::Read);
        assert!(bad.validate().is_err());
        let bad = entry("a", ResourceType::Cluster, PatternType::Prefix, "c", Operation::Read);
        assert!(bad.validate().is_err());
        let good = entry("a", ResourceType::Cluster, PatternType::Literal, CLUSTER, Operation::Alter);
        assert!(good.validate().is_ok());
    }
}
