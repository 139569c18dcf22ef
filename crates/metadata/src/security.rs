//! Users and ACLs, kept in the metadata group so that every node authenticates and
//! authorizes from the same committed truth (docs/security.md, RFC 0009).
//!
//! The state machine never sees a password: the node that receives `flotilla user
//! create` salts and hashes it (SCRAM-SHA-256's stored form) and proposes the result.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_types::acl::{Access, AclEntry};
use flotilla_types::quota::QuotaLimits;
use flotilla_types::{ErrorCode, limits};
use serde::{Deserialize, Serialize};

use crate::Response;

/// A user's password in SCRAM-SHA-256's stored form (RFC 5802, RFC 7677): the salt, the
/// PBKDF2 iteration count, `StoredKey = H(HMAC(SaltedPassword, "Client Key"))` and
/// `ServerKey = HMAC(SaltedPassword, "Server Key")`. The password cannot be recovered
/// from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl Credential {
    /// Checks what the node that proposed it could not have got wrong on purpose.
    fn validate(&self) -> Result<(), String> {
        if self.salt.is_empty() || self.salt.len() > 64 || self.stored_key.len() != 32 || self.server_key.len() != 32 {
            return Err("a credential has a salt of 1..=64 bytes and keys of 32 bytes".into());
        }
        if self.iterations < limits::PASSWORD_ITERATIONS || self.iterations > limits::PASSWORD_ITERATIONS_MAX {
            return Err(format!(
                "a credential has {}..={} iterations",
                limits::PASSWORD_ITERATIONS,
                limits::PASSWORD_ITERATIONS_MAX
            ));
        }
        Ok(())
    }
}

/// A change to users or ACLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityOp {
    /// Creates the user, or replaces its credential (a password change). With
    /// `only_if_absent` an existing user is left as it is (a node's bootstrap user).
    PutUser {
        name: String,
        credential: Credential,
        only_if_absent: bool,
    },
    DeleteUser {
        name: String,
    },
    AddAcl(AclEntry),
    RemoveAcl(AclEntry),
    /// Sets a principal's quotas (`None`: the default for every principal); limits that
    /// set nothing remove the entry.
    SetQuota {
        principal: Option<String>,
        limits: QuotaLimits,
    },
}

/// Users, ACL entries and the quotas set through the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityState {
    users: BTreeMap<String, Credential>,
    acls: BTreeSet<AclEntry>,
    quotas: BTreeMap<String, QuotaLimits>,
    default_quota: Option<QuotaLimits>,
}

impl SecurityState {
    pub fn user(&self, name: &str) -> Option<&Credential> {
        self.users.get(name)
    }

    pub fn users(&self) -> &BTreeMap<String, Credential> {
        &self.users
    }

    pub fn acls(&self) -> &BTreeSet<AclEntry> {
        &self.acls
    }

    /// The quotas set for `principal`.
    pub fn quota(&self, principal: &str) -> Option<&QuotaLimits> {
        self.quotas.get(principal)
    }

    /// The quotas set for every principal without its own.
    pub fn default_quota(&self) -> Option<&QuotaLimits> {
        self.default_quota.as_ref()
    }

    pub fn quotas(&self) -> &BTreeMap<String, QuotaLimits> {
        &self.quotas
    }

    /// Whether some entry allows `principal` the access.
    pub fn allows(&self, principal: &str, access: &Access) -> bool {
        self.acls.iter().any(|e| e.allows(principal, access))
    }

    pub(crate) fn apply(&mut self, op: &SecurityOp) -> Response {
        match op {
            SecurityOp::PutUser { name, credential, only_if_absent } => {
                if name.is_empty() || name.len() > limits::USER_NAME_BYTES_MAX || name == "*" {
                    return Response::error(
                        ErrorCode::InvalidRequest,
                        format!("a user name has 1..={} bytes and is not '*'", limits::USER_NAME_BYTES_MAX),
                    );
                }
                if let Err(e) = credential.validate() {
                    return Response::error(ErrorCode::InvalidRequest, e);
                }
                let exists = self.users.contains_key(name);
                if !exists && self.users.len() >= limits::USERS_MAX {
                    return Response::error(
                        ErrorCode::PolicyViolation,
                        format!("the cluster holds at most {} users", limits::USERS_MAX),
                    );
                }
                if !(exists && *only_if_absent) {
                    self.users.insert(name.clone(), credential.clone());
                }
                Response::Ok
            }
            SecurityOp::DeleteUser { name } => match self.users.remove(name) {
                Some(_) => Response::Ok,
                None => Response::error(ErrorCode::InvalidRequest, format!("no user is named '{name}'")),
            },
            SecurityOp::AddAcl(entry) => {
                if let Err(e) = entry.validate() {
                    return Response::error(ErrorCode::InvalidRequest, e);
                }
                if !self.acls.contains(entry) && self.acls.len() >= limits::ACLS_MAX {
                    return Response::error(
                        ErrorCode::PolicyViolation,
                        format!("the cluster holds at most {} ACL entries", limits::ACLS_MAX),
                    );
                }
                self.acls.insert(entry.clone());
                Response::Ok
            }
            SecurityOp::SetQuota { principal: None, limits } => {
                self.default_quota = (!limits.is_empty()).then_some(*limits);
                Response::Ok
            }
            SecurityOp::SetQuota { principal: Some(p), limits } => {
                if p.len() > limits::USER_NAME_BYTES_MAX {
                    return Response::error(
                        ErrorCode::InvalidRequest,
                        format!("a principal has at most {} bytes", limits::USER_NAME_BYTES_MAX),
                    );
                }
                if limits.is_empty() {
                    self.quotas.remove(p);
                } else if !self.quotas.contains_key(p) && self.quotas.len() >= limits::QUOTA_PRINCIPALS_MAX {
                    return Response::error(
                        ErrorCode::PolicyViolation,
                        format!("the cluster holds quotas for at most {} principals", limits::QUOTA_PRINCIPALS_MAX),
                    );
                } else {
                    self.quotas.insert(p.clone(), *limits);
                }
                Response::Ok
            }
            SecurityOp::RemoveAcl(entry) => {
                if self.acls.remove(entry) {
                    Response::Ok
                } else {
                    Response::error(ErrorCode::InvalidRequest, format!("no ACL entry is {entry}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_types::acl::{CLUSTER, Operation, PatternType, ResourceType};

    use super::*;

    fn cred(byte: u8) -> Credential {
        Credential { salt: vec![byte; 16], iterations: 4096, stored_key: vec![byte; 32], server_key: vec![byte; 32] }
    }

    fn put(name: &str, c: Credential, only_if_absent: bool) -> SecurityOp {
        SecurityOp::PutUser { name: name.into(), credential: c, only_if_absent }
    }

    #[test]
    fn users_are_created_changed_kept_and_deleted() {
        let mut s = SecurityState::default();
        assert_eq!(s.apply(&put("alice", cred(1), false)), Response::Ok);
        assert_eq!(s.apply(&put("alice", cred(2), true)), Response::Ok);
        assert_eq!(s.user("alice"), Some(&cred(1)), "only_if_absent keeps the existing credential");
        assert_eq!(s.apply(&put("alice", cred(2), false)), Response::Ok);
        assert_eq!(s.user("alice"), Some(&cred(2)));
        assert!(matches!(s.apply(&put("*", cred(1), false)), Response::Error { .. }));
        let weak = Credential { iterations: 10, ..cred(3) };
        assert!(matches!(s.apply(&put("bob", weak, false)), Response::Error { .. }));
        assert_eq!(s.apply(&SecurityOp::DeleteUser { name: "alice".into() }), Response::Ok);
        assert!(matches!(s.apply(&SecurityOp::DeleteUser { name: "alice".into() }), Response::Error { .. }));
    }

    #[test]
    fn quotas_are_set_replaced_and_cleared() {
        let mut s = SecurityState::default();
        let some = QuotaLimits { produce_bytes_per_sec: Some(10), ..QuotaLimits::default() };
        let set = |p: Option<&str>, limits| SecurityOp::SetQuota { principal: p.map(String::from), limits };
        assert_eq!(s.apply(&set(Some("app"), some)), Response::Ok);
        assert_eq!(s.apply(&set(None, some)), Response::Ok);
        assert_eq!((s.quota("app"), s.default_quota()), (Some(&some), Some(&some)));
        assert_eq!(s.apply(&set(Some("app"), QuotaLimits::default())), Response::Ok);
        assert_eq!(s.apply(&set(None, QuotaLimits::default())), Response::Ok);
        assert_eq!((s.quota("app"), s.default_quota()), (None, None));
    }

    #[test]
    fn acls_are_added_once_removed_and_decide_access() {
        let mut s = SecurityState::default();
        let e = AclEntry {
            principal: "ops".into(),
            resource: ResourceType::Cluster,
            pattern: PatternType::Literal,
            name: CLUSTER.into(),
            operation: Operation::Alter,
        };
        assert!(!s.allows("ops", &Access::cluster(Operation::Alter)));
        assert_eq!(s.apply(&SecurityOp::AddAcl(e.clone())), Response::Ok);
        assert_eq!(s.apply(&SecurityOp::AddAcl(e.clone())), Response::Ok);
        assert_eq!(s.acls().len(), 1);
        assert!(s.allows("ops", &Access::cluster(Operation::Alter)));
        assert!(!s.allows("dev", &Access::cluster(Operation::Alter)));
        assert_eq!(s.apply(&SecurityOp::RemoveAcl(e.clone())), Response::Ok);
        assert!(!s.allows("ops", &Access::cluster(Operation::Alter)));
        assert!(matches!(s.apply(&SecurityOp::RemoveAcl(e)), Response::Error { .. }));
    }
}
