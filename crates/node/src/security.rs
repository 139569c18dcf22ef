//! Who may do what: the node's side of users and ACLs (docs/security.md, RFC 0009).
//!
//! The metadata group holds users (their salted credentials) and ACL entries; this
//! module answers from the local replica of it. Authentication itself (checking a
//! password against a credential) is the `rpc` crate's, which sees the request.

use flotilla_metadata::security::{Credential, SecurityOp};
use flotilla_metadata::{Command as MetaCommand, Response as MetaResponse};
use flotilla_raft::RaftTransport;
use flotilla_types::ErrorCode;
use flotilla_types::acl::{Access, AclEntry, Principal};
use flotilla_types::quota::QuotaLimits;

use crate::Node;
use crate::api::ApiError;

impl<T: RaftTransport> Node<T> {
    /// Whether this node checks requests against ACLs (`authorization = true`).
    pub fn authorization(&self) -> bool {
        self.config().authorization
    }

    /// Whether `principal` is one of the node configuration's superusers.
    pub fn is_superuser(&self, principal: &Principal) -> bool {
        match principal {
            Principal::User(name) => self.config().superusers.iter().any(|s| s == name),
            Principal::Anonymous => false,
        }
    }

    /// Whether `principal` may have `access`: always with authorization off, for a
    /// superuser, or when an ACL entry allows a user it.
    pub fn may(&self, principal: &Principal, access: &Access) -> bool {
        !self.authorization()
            || self.is_superuser(principal)
            || (*principal != Principal::Anonymous
                && self.with_metadata(|m| m.security().allows(principal.name(), access)))
    }

    /// Refuses the request unless `principal` may have every access in `needs`:
    /// `NOT_AUTHENTICATED` when it has no identity at all (with authorization on, every
    /// request needs one; `*` in an entry means every user), `NOT_AUTHORIZED` else,
    /// naming the first access missing.
    pub fn authorize(&self, principal: &Principal, needs: &[Access]) -> Result<(), ApiError> {
        if !self.authorization() || self.is_superuser(principal) {
            return Ok(());
        }
        let missing = self.with_metadata(|m| needs.iter().find(|a| !m.security().allows(principal.name(), a)).cloned());
        let refusal = match (principal, missing) {
            (Principal::User(_), None) => return Ok(()),
            (Principal::Anonymous, missing) => ApiError::new(
                ErrorCode::NotAuthenticated,
                format!(
                    "authorization is on and this request carries no credentials or client certificate{}",
                    missing.map(|m| format!(" (it needs {m})")).unwrap_or_default()
                ),
            ),
            (Principal::User(_), Some(m)) => {
                ApiError::new(ErrorCode::NotAuthorized, format!("{principal} is not allowed {m}"))
            }
        };
        self.metrics().count_refused_access(match refusal.code {
            ErrorCode::NotAuthenticated => "unauthenticated",
            _ => "unauthorized",
        });
        Err(refusal)
    }

    /// A user's stored credential.
    pub fn user_credential(&self, name: &str) -> Option<Credential> {
        self.with_metadata(|m| m.security().user(name).cloned())
    }

    /// Every user's name and credential.
    pub fn list_users(&self) -> Vec<(String, Credential)> {
        self.with_metadata(|m| m.security().users().iter().map(|(n, c)| (n.clone(), c.clone())).collect())
    }

    /// Every ACL entry, or those of one principal.
    pub fn list_acls(&self, principal: Option<&str>) -> Vec<AclEntry> {
        self.with_metadata(|m| {
            m.security().acls().iter().filter(|e| principal.is_none_or(|p| e.principal == p)).cloned().collect()
        })
    }

    /// Creates a user or changes its credential (with `only_if_absent`, leaves an
    /// existing one as it is).
    pub async fn put_user(&self, name: &str, credential: Credential, only_if_absent: bool) -> Result<(), ApiError> {
        self.security_write(SecurityOp::PutUser { name: name.to_string(), credential, only_if_absent }).await
    }

    pub async fn delete_user(&self, name: &str) -> Result<(), ApiError> {
        self.security_write(SecurityOp::DeleteUser { name: name.to_string() }).await
    }

    pub async fn add_acl(&self, entry: AclEntry) -> Result<(), ApiError> {
        self.security_write(SecurityOp::AddAcl(entry)).await
    }

    pub async fn remove_acl(&self, entry: AclEntry) -> Result<(), ApiError> {
        self.security_write(SecurityOp::RemoveAcl(entry)).await
    }

    /// Sets a principal's cluster-wide quotas (`None`: the default's); empty limits
    /// remove the entry.
    pub async fn set_quota(&self, principal: Option<String>, limits: QuotaLimits) -> Result<(), ApiError> {
        self.security_write(SecurityOp::SetQuota { principal, limits }).await
    }

    /// The cluster-wide quotas: the default's, then each principal's.
    pub fn list_quotas(&self) -> (Option<QuotaLimits>, Vec<(String, QuotaLimits)>) {
        self.with_metadata(|m| {
            let s = m.security();
            (s.default_quota().copied(), s.quotas().iter().map(|(p, l)| (p.clone(), *l)).collect())
        })
    }

    async fn security_write(&self, op: SecurityOp) -> Result<(), ApiError> {
        match self.metadata_write(MetaCommand::Security(op)).await? {
            MetaResponse::Ok => Ok(()),
            other => Err(ApiError::new(ErrorCode::Internal, format!("unexpected response {other:?}"))),
        }
    }
}
