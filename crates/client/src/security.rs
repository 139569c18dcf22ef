//! Users and ACLs (docs/security.md): creating and deleting users, and adding, removing
//! and listing ACL entries. Each is a metadata write or read; with authorization on, the
//! client's principal needs `alter` (changes) or `describe` (lists) on the cluster.

use std::time::Duration;

use flotilla_proto::{request, v1};
use flotilla_types::ErrorCode;
use serde::Serialize;

pub use flotilla_types::acl::{AclEntry, Operation, PatternType, ResourceType};
pub use flotilla_types::quota::QuotaLimits;

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::router::{Kind, Target};
use crate::wire::{admin, answered, rpc_err};

/// A quota set through the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaInfo {
    /// `None`: the default for every principal without its own.
    pub principal: Option<String>,
    pub limits: QuotaLimits,
}

/// A user as `list_users` shows it: never its password or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub name: String,
    pub mechanism: String,
    pub iterations: u32,
}

impl Client {
    /// Creates a user, or sets an existing user's password. The node that receives it
    /// keeps only a salted hash; send it over TLS.
    pub async fn create_user(&self, name: &str, password: &str) -> Result<()> {
        let req = v1::CreateUserRequest { name: name.to_string(), password: password.to_string() };
        request::CreateUser::try_from(req.clone()).map_err(|e| ClientError::refused(e.error_code(), e.message))?;
        self.admin_write(true, |ch, addr| {
            let req = req.clone();
            async move { answered(&addr, &admin(ch).create_user(req).await.map_err(rpc_err(&addr))?.into_inner().error) }
        })
        .await
    }

    pub async fn delete_user(&self, name: &str) -> Result<()> {
        let req = v1::DeleteUserRequest { name: name.to_string() };
        self.admin_write(false, |ch, addr| {
            let req = req.clone();
            async move { answered(&addr, &admin(ch).delete_user(req).await.map_err(rpc_err(&addr))?.into_inner().error) }
        })
        .await
    }

    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<UserInfo>> {
        self.inner
            .call(Target::MetadataLeader, Kind::Read, Duration::ZERO, None, |ch, addr| async move {
                let r = admin(ch).list_users(v1::ListUsersRequest {}).await.map_err(rpc_err(&addr))?.into_inner();
                answered(&addr, &r.error)?;
                Ok(r.users
                    .into_iter()
                    .map(|u| UserInfo { name: u.name, mechanism: u.mechanism, iterations: u.iterations })
                    .collect())
            })
            .await
    }

    /// Adds an ACL entry (adding one that exists changes nothing).
    pub async fn add_acl(&self, entry: &AclEntry) -> Result<()> {
        self.acl_write(entry, true).await
    }

    /// Removes an ACL entry; `INVALID_REQUEST` when there is no such entry.
    pub async fn remove_acl(&self, entry: &AclEntry) -> Result<()> {
        self.acl_write(entry, false).await
    }

    async fn acl_write(&self, entry: &AclEntry, add: bool) -> Result<()> {
        entry.validate().map_err(|e| ClientError::refused(ErrorCode::InvalidRequest, e))?;
        let req = v1::AclRequest { acl: Some(request::acl_to_wire(entry)) };
        self.admin_write(add, |ch, addr| {
            let req = req.clone();
            async move {
                let mut api = admin(ch);
                let r = if add { api.add_acl(req).await } else { api.remove_acl(req).await };
                answered(&addr, &r.map_err(rpc_err(&addr))?.into_inner().error)
            }
        })
        .await
    }

    /// Every ACL entry, or one principal's.
    pub async fn list_acls(&self, principal: Option<&str>) -> Result<Vec<AclEntry>> {
        let req = v1::ListAclsRequest { principal: principal.unwrap_or_default().to_string() };
        self.inner
            .call(Target::MetadataLeader, Kind::Read, Duration::ZERO, None, |ch, addr| {
                let req = req.clone();
                async move {
                    let r = admin(ch).list_acls(req).await.map_err(rpc_err(&addr))?.into_inner();
                    answered(&addr, &r.error)?;
                    r.acls
                        .into_iter()
                        .map(|a| request::acl_from_wire(a).map_err(|e| ClientError::protocol(&addr, e.message)))
                        .collect()
                }
            })
            .await
    }

    /// Sets a principal's quotas on every node (`None`: the default for every principal
    /// without its own); limits that set nothing remove the entry.
    pub async fn set_quota(&self, principal: Option<&str>, limits: QuotaLimits) -> Result<()> {
        let req = v1::SetQuotaRequest { quota: Some(request::quota_to_wire(principal, &limits)) };
        request::SetQuota::try_from(req.clone()).map_err(|e| ClientError::refused(e.error_code(), e.message))?;
        self.admin_write(true, |ch, addr| {
            let req = req.clone();
            async move { answered(&addr, &admin(ch).set_quota(req).await.map_err(rpc_err(&addr))?.into_inner().error) }
        })
        .await
    }

    /// The quotas set through the cluster: the default first, if set.
    pub async fn list_quotas(&self) -> Result<Vec<QuotaInfo>> {
        self.inner
            .call(Target::MetadataLeader, Kind::Read, Duration::ZERO, None, |ch, addr| async move {
                let r = admin(ch).list_quotas(v1::ListQuotasRequest {}).await.map_err(rpc_err(&addr))?.into_inner();
                answered(&addr, &r.error)?;
                r.quotas
                    .into_iter()
                    .map(|q| {
                        let (principal, limits) =
                            request::quota_from_wire(q).map_err(|e| ClientError::protocol(&addr, e.message))?;
                        Ok(QuotaInfo { principal, limits })
                    })
                    .collect()
            })
            .await
    }
}
