//! Who may open an OPC UA session: the `[[users]]` of the dashboard, their passwords checked
//! by the same checker and limits as `auth.login`; anonymous sessions only when enabled.

use std::sync::Arc;

use ua::server::address_space::AccessLevel;
use ua::server::authenticator::{
    user_pass_security_policy_id, user_pass_security_policy_uri, AuthManager, Password, UserToken,
};
use ua::server::ServerEndpoint;
use ua::types::{Error, NodeId, StatusCode, UAString, UserTokenPolicy, UserTokenType};

use crate::api::auth::{Auth, LoginError};

/// The OPC UA server's authenticator: the users of the gateway now running (a reload
/// attaches the next gateway's).
pub struct Users {
    current: std::sync::RwLock<Arc<Current>>,
    anonymous: bool,
}

struct Current {
    auth: Arc<Auth>,
    /// Who may write: `admin` users, by name.
    admins: std::collections::HashSet<String>,
}

impl Current {
    fn of(auth: Arc<Auth>, config: &crate::config::Config) -> Arc<Current> {
        let admins = super::nodes::Attached::admins(config);
        Arc::new(Current { auth, admins })
    }
}

impl Users {
    pub fn new(auth: Arc<Auth>, config: &crate::config::Config, anonymous: bool) -> Users {
        Users {
            current: std::sync::RwLock::new(Current::of(auth, config)),
            anonymous,
        }
    }

    /// The users (and their password checker) of the gateway now running.
    pub fn attach(&self, auth: Arc<Auth>, config: &crate::config::Config) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Current::of(auth, config);
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The address a password check is counted against: OPC UA hands the authenticator no peer
/// address, so every OPC UA login shares one count (failures slow down and lock out as one).
const OPCUA_PEER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

#[async_trait::async_trait]
impl AuthManager for Users {
    async fn authenticate_anonymous_token(&self, _endpoint: &ServerEndpoint) -> Result<(), Error> {
        if self.anonymous {
            Ok(())
        } else {
            Err(Error::new(
                StatusCode::BadIdentityTokenRejected,
                "anonymous sessions are off ([opcua] anonymous = false)",
            ))
        }
    }

    async fn authenticate_username_identity_token(
        &self,
        _endpoint: &ServerEndpoint,
        username: &str,
        password: &Password,
    ) -> Result<UserToken, Error> {
        let auth = self.current().auth.clone();
        match auth
            .authenticate(OPCUA_PEER, username, password.get())
            .await
        {
            Ok((name, _role)) => {
                tracing::info!(user = %name, "OPC UA session");
                Ok(UserToken(name))
            }
            Err(e) => {
                let why = match e {
                    LoginError::BadCredentials => "wrong username or password".to_string(),
                    LoginError::Busy => "too many logins at once".to_string(),
                    LoginError::Limited(left) => format!(
                        "too many failed logins; retry in {} s",
                        left.as_secs().max(1)
                    ),
                };
                tracing::warn!("OPC UA login refused for `{username}`: {why}");
                Err(Error::new(StatusCode::BadUserAccessDenied, why))
            }
        }
    }

    /// Writes are an admin's: a viewer's or an anonymous session sees every variable
    /// read-only.
    fn effective_user_access_level(
        &self,
        token: &UserToken,
        level: AccessLevel,
        _node: &NodeId,
    ) -> AccessLevel {
        if self.current().admins.contains(&token.0) {
            level
        } else {
            level - AccessLevel::CURRENT_WRITE
        }
    }

    fn user_token_policies(&self, endpoint: &ServerEndpoint) -> Vec<UserTokenPolicy> {
        let mut policies = vec![UserTokenPolicy {
            policy_id: user_pass_security_policy_id(endpoint),
            token_type: UserTokenType::UserName,
            issued_token_type: UAString::null(),
            issuer_endpoint_url: UAString::null(),
            security_policy_uri: user_pass_security_policy_uri(endpoint),
        }];
        if self.anonymous {
            policies.push(UserTokenPolicy {
                policy_id: UAString::from("anonymous"),
                token_type: UserTokenType::Anonymous,
                issued_token_type: UAString::null(),
                issuer_endpoint_url: UAString::null(),
                security_policy_uri: UAString::null(),
            });
        }
        policies
    }
}
