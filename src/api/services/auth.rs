//! `auth.login`, `auth.resume`, `auth.logout`.

use serde_json::json;

use crate::api::auth::{Auth, LoginError, Session};
use crate::api::context::{Ctx, HandlerResult, ServiceError};
use crate::config::Role;
use crate::sync::Locked;
use crate::ws::hub::Login;

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    }
}

/// Binds a session to the connection and starts its pushes.
fn bind(ctx: &Ctx, token: String, session: &Session) -> serde_json::Value {
    *ctx.client.login.locked() = Some(Login {
        user: session.user.clone(),
        role: session.role,
        token: token.clone(),
    });
    ctx.shared.hub.register(ctx.client.clone());
    json!({
        "token": token,
        "role": role_name(session.role),
        "user": session.user,
        "expiresInS": Auth::expires_in(session).as_secs(),
    })
}

pub async fn login(ctx: Ctx) -> HandlerResult {
    let username = ctx.string("username")?;
    let password = ctx.string("password")?;
    match ctx
        .shared
        .auth
        .login(ctx.remote, &username, &password)
        .await
    {
        Ok((token, session)) => {
            tracing::info!(user = %session.user, remote = %ctx.remote, "login");
            Ok(bind(&ctx, token, &session))
        }
        Err(LoginError::BadCredentials) => {
            if let Some(held) = crate::log_limit::per_peer(ctx.remote, "failed login") {
                tracing::warn!(remote = %ctx.remote, "failed login{}", crate::log_limit::suppressed(held));
            }
            Err(ServiceError::new(401, "wrong username or password"))
        }
        Err(LoginError::Busy) => Err(ServiceError::new(
            429,
            "too many logins at once; retry in a few seconds",
        )),
        Err(LoginError::Limited(left)) => Err(ServiceError::new(
            429,
            format!(
                "too many failed logins from this address; retry in {} s",
                left.as_secs().max(1)
            ),
        )),
    }
}

pub async fn resume(ctx: Ctx) -> HandlerResult {
    let token = ctx.string("token")?;
    match ctx.shared.auth.resume(&token) {
        Some(session) => Ok(bind(&ctx, token, &session)),
        None => Err(ServiceError::new(401, "unknown or expired token")),
    }
}

pub async fn logout(ctx: Ctx) -> HandlerResult {
    let login = ctx.client.login();
    if let Some(l) = login {
        // The sockets first, then the token: the expiry sweep must not see the token gone
        // while its sockets are still registered (it would tell them "expired").
        ctx.shared
            .hub
            .end_session(&l.user, &l.token, "logout", Some(ctx.client.id));
        ctx.shared.auth.logout(&l.token);
    }
    *ctx.client.login.locked() = None;
    ctx.shared.hub.unregister(ctx.client.id);
    Ok(json!({}))
}

/// Ends the sessions whose token expired (or was dropped) on every socket that still uses it,
/// each told `push.session` `{"reason":"expired"}`; checked every second until `cancel`.
pub async fn expire_sessions(
    shared: std::sync::Arc<crate::api::Shared>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (user, token) in shared.hub.sessions() {
            if !shared.auth.valid(&token) {
                tracing::info!(%user, "session expired");
                shared.hub.end_session(&user, &token, "expired", None);
                shared.auth.logout(&token);
            }
        }
    }
}
