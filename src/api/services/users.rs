//! Users from the dashboard: `users.list`, `users.add`, `users.remove`, `users.setRole`,
//! `users.resetPassword` (admin) and `auth.changePassword` (anyone, their own). Each change is
//! the `[[users]]` entry written into the config file (comments kept) and applied as any config
//! change is: a version in the history, an audit row, a reload — which ends the sessions of a
//! user removed, or whose role or password changed (`push.session` "user changed").

use serde_json::json;

use super::configure::{apply_text, no_file};
use crate::api::auth::{hash_password, password_problem};
use crate::api::context::{Ctx, HandlerResult, ServiceError};
use crate::config::edit::users::{remove_user, set_user};
use crate::config::Role;

/// `users.list`: each user, their role, and how many sessions they have open now.
pub async fn list(ctx: Ctx) -> HandlerResult {
    let sessions = ctx.shared.hub.sessions();
    let users: Vec<_> = ctx
        .shared
        .config
        .users
        .iter()
        .map(|u| {
            json!({
                "username": u.name,
                "role": role_name(u.role),
                "sessions": sessions.iter().filter(|(who, _)| *who == u.name).count(),
            })
        })
        .collect();
    Ok(json!({ "users": users }))
}

/// `users.add` `{username, role, password}`.
pub async fn add(ctx: Ctx) -> HandlerResult {
    let name = ctx.string("username")?;
    let role = role_param(&ctx)?;
    let password = ctx.string("password")?;
    if !valid_name(&name) {
        return Err(ServiceError::bad_request(
            "param `username`: 1 to 64 letters, digits, `.`, `_` or `-`",
        ));
    }
    if ctx.shared.config.users.iter().any(|u| u.name == name) {
        return Err(ServiceError::new(409, format!("user `{name}` exists")));
    }
    let hash = checked_hash(&name, password).await?;
    let text = current_text(&ctx)?;
    let (text, _) = set_user(&text, &name, Some(role_name(role)), Some(&hash))
        .map_err(ServiceError::internal)?;
    apply_text(ctx, &text).await
}

/// `users.remove` `{username}`: not the last admin.
pub async fn remove(ctx: Ctx) -> HandlerResult {
    let name = ctx.string("username")?;
    let role = existing_role(&ctx, &name)?;
    if role == Role::Admin {
        last_admin_stays(&ctx, &name)?;
    }
    let text = remove_user(&current_text(&ctx)?, &name).map_err(ServiceError::internal)?;
    apply_text(ctx, &text).await
}

/// `users.setRole` `{username, role}`: the last admin stays one.
pub async fn set_role(ctx: Ctx) -> HandlerResult {
    let name = ctx.string("username")?;
    let role = role_param(&ctx)?;
    if existing_role(&ctx, &name)? == Role::Admin && role != Role::Admin {
        last_admin_stays(&ctx, &name)?;
    }
    let (text, _) = set_user(&current_text(&ctx)?, &name, Some(role_name(role)), None)
        .map_err(ServiceError::internal)?;
    apply_text(ctx, &text).await
}

/// `users.resetPassword` `{username, password}` (admin).
pub async fn reset_password(ctx: Ctx) -> HandlerResult {
    let name = ctx.string("username")?;
    existing_role(&ctx, &name)?;
    let hash = checked_hash(&name, ctx.string("password")?).await?;
    let (text, _) =
        set_user(&current_text(&ctx)?, &name, None, Some(&hash)).map_err(ServiceError::internal)?;
    apply_text(ctx, &text).await
}

/// `auth.changePassword` `{old, new}`: the caller's own, once the old one is proven. Failed
/// proofs count against the address as failed logins do.
pub async fn change_password(ctx: Ctx) -> HandlerResult {
    let Some(login) = ctx.client.login() else {
        return Err(ServiceError::new(401, "not logged in"));
    };
    let old = ctx.string("old")?;
    let new = ctx.string("new")?;
    if ctx
        .shared
        .auth
        .authenticate(ctx.remote, &login.user, &old)
        .await
        .is_err()
    {
        return Err(ServiceError::forbidden("the current password is wrong"));
    }
    if new == old {
        return Err(ServiceError::bad_request(
            "param `new`: the same as the current password",
        ));
    }
    let hash = checked_hash(&login.user, new).await?;
    let (text, _) = set_user(&current_text(&ctx)?, &login.user, None, Some(&hash))
        .map_err(ServiceError::internal)?;
    apply_text(ctx, &text).await
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn role_param(ctx: &Ctx) -> Result<Role, ServiceError> {
    match ctx.string("role")?.as_str() {
        "admin" => Ok(Role::Admin),
        "viewer" => Ok(Role::Viewer),
        other => Err(ServiceError::bad_request(format!(
            "param `role`: `{other}` is not admin or viewer"
        ))),
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    }
}

fn existing_role(ctx: &Ctx, name: &str) -> Result<Role, ServiceError> {
    ctx.shared
        .config
        .users
        .iter()
        .find(|u| u.name == name)
        .map(|u| u.role)
        .ok_or_else(|| ServiceError::not_found(format!("no user `{name}`")))
}

/// A gateway nobody can administer is one that only a text editor on the box can mend.
fn last_admin_stays(ctx: &Ctx, name: &str) -> Result<(), ServiceError> {
    let others = ctx
        .shared
        .config
        .users
        .iter()
        .any(|u| u.role == Role::Admin && u.name != name);
    if others {
        Ok(())
    } else {
        Err(ServiceError::bad_request(format!(
            "`{name}` is the last admin: make another user admin first"
        )))
    }
}

/// The password checked against the rules, then hashed off the async workers.
async fn checked_hash(user: &str, password: String) -> Result<String, ServiceError> {
    if let Some(why) = password_problem(user, &password) {
        return Err(ServiceError::bad_request(format!(
            "param `password`: {why}"
        )));
    }
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|_| ServiceError::internal("hashing stopped"))?
        .map_err(ServiceError::internal)
}

fn current_text(ctx: &Ctx) -> Result<String, ServiceError> {
    let f = ctx.shared.config_file.clone().ok_or_else(no_file)?;
    std::fs::read_to_string(&f.path)
        .map_err(|e| ServiceError::internal(format!("cannot read {}: {e}", f.path.display())))
}
