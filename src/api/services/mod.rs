//! The service registry: every WebSocket service by name, with the role it needs and its
//! handler. One file per family; every handler has the same shape.

mod auth;
pub use auth::expire_sessions;
mod commission;
mod config_edit;
pub mod configure;
mod devices;
mod events;
mod push;
mod shelve;
pub use shelve::expire_shelves;
mod system;
mod upstream;
mod users;

pub use devices::devices_json;

use futures_util::future::BoxFuture;

use super::context::{Ctx, HandlerResult, ServiceError};
use crate::config::Role;
use crate::store::Lane;

/// Who may call a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, logged in or not.
    Public,
    /// Any logged-in user.
    Any,
    /// Logged-in admins only.
    Admin,
}

pub type Handler = fn(Ctx) -> BoxFuture<'static, HandlerResult>;

pub struct Service {
    pub name: &'static str,
    pub access: Access,
    pub handler: Handler,
}

pub static SERVICES: &[Service] = &[
    Service {
        name: "auth.login",
        access: Access::Public,
        handler: |c| Box::pin(auth::login(c)),
    },
    Service {
        name: "auth.resume",
        access: Access::Public,
        handler: |c| Box::pin(auth::resume(c)),
    },
    Service {
        name: "auth.logout",
        access: Access::Any,
        handler: |c| Box::pin(auth::logout(c)),
    },
    Service {
        name: "devices.list",
        access: Access::Any,
        handler: |c| Box::pin(devices::list(c)),
    },
    Service {
        name: "points.history",
        access: Access::Any,
        handler: |c| Box::pin(devices::history(c)),
    },
    Service {
        name: "devices.describe",
        access: Access::Any,
        handler: |c| Box::pin(devices::describe(c)),
    },
    Service {
        name: "registers.read",
        access: Access::Admin,
        handler: |c| Box::pin(commission::read_registers(c)),
    },
    Service {
        name: "bus.scan",
        access: Access::Admin,
        handler: |c| Box::pin(commission::scan(c)),
    },
    Service {
        name: "bus.scanCancel",
        access: Access::Admin,
        handler: |c| Box::pin(commission::scan_cancel(c)),
    },
    Service {
        name: "config.get",
        access: Access::Admin,
        handler: |c| Box::pin(configure::get(c)),
    },
    Service {
        name: "config.validate",
        access: Access::Admin,
        handler: |c| Box::pin(configure::validate(c)),
    },
    Service {
        name: "config.apply",
        access: Access::Admin,
        handler: |c| Box::pin(configure::apply(c)),
    },
    Service {
        name: "config.edit",
        access: Access::Admin,
        handler: |c| Box::pin(config_edit::edit(c)),
    },
    Service {
        name: "calc.preview",
        access: Access::Admin,
        handler: |c| Box::pin(configure::preview(c)),
    },
    Service {
        name: "upstream.test",
        access: Access::Admin,
        handler: |c| Box::pin(upstream::test(c)),
    },
    Service {
        name: "notify.test",
        access: Access::Admin,
        handler: |c| Box::pin(upstream::notify(c)),
    },
    Service {
        name: "users.list",
        access: Access::Admin,
        handler: |c| Box::pin(users::list(c)),
    },
    Service {
        name: "users.add",
        access: Access::Admin,
        handler: |c| Box::pin(users::add(c)),
    },
    Service {
        name: "users.remove",
        access: Access::Admin,
        handler: |c| Box::pin(users::remove(c)),
    },
    Service {
        name: "users.setRole",
        access: Access::Admin,
        handler: |c| Box::pin(users::set_role(c)),
    },
    Service {
        name: "users.resetPassword",
        access: Access::Admin,
        handler: |c| Box::pin(users::reset_password(c)),
    },
    Service {
        name: "auth.changePassword",
        access: Access::Any,
        handler: |c| Box::pin(users::change_password(c)),
    },
    Service {
        name: "config.history",
        access: Access::Admin,
        handler: |c| Box::pin(configure::history(c)),
    },
    Service {
        name: "config.rollback",
        access: Access::Admin,
        handler: |c| Box::pin(configure::rollback(c)),
    },
    Service {
        name: "device.write",
        access: Access::Admin,
        handler: |c| Box::pin(devices::write(c)),
    },
    Service {
        name: "events.query",
        access: Access::Any,
        handler: |c| Box::pin(events::query(c)),
    },
    Service {
        name: "alarms.active",
        access: Access::Any,
        handler: |c| Box::pin(events::active(c)),
    },
    Service {
        name: "alarms.ack",
        access: Access::Admin,
        handler: |c| Box::pin(events::ack(c)),
    },
    Service {
        name: "alarms.shelve",
        access: Access::Admin,
        handler: |c| Box::pin(shelve::shelve(c)),
    },
    Service {
        name: "alarms.unshelve",
        access: Access::Admin,
        handler: |c| Box::pin(shelve::unshelve(c)),
    },
    Service {
        name: "audit.query",
        access: Access::Admin,
        handler: |c| Box::pin(events::audit(c)),
    },
    Service {
        name: "subscribe",
        access: Access::Any,
        handler: |c| Box::pin(push::subscribe(c)),
    },
    Service {
        name: "push.setInterval",
        access: Access::Admin,
        handler: |c| Box::pin(push::set_interval(c)),
    },
    Service {
        name: "system.stats",
        access: Access::Any,
        handler: |c| Box::pin(system::stats(c)),
    },
    Service {
        name: "system.diagnostics",
        access: Access::Any,
        handler: |c| Box::pin(system::diagnostics(c)),
    },
    Service {
        name: "system.log",
        access: Access::Admin,
        handler: |c| Box::pin(system::log(c)),
    },
];

/// Runs a bounded read-only query (alarms, an event page, the audit) off the async workers,
/// on the store's connection for short reads.
pub(super) async fn read_store<T: Send + 'static>(
    ctx: &Ctx,
    f: impl FnOnce(&rusqlite::Connection, &crate::config::Config) -> rusqlite::Result<T>
        + Send
        + 'static,
) -> Result<T, ServiceError> {
    read_store_in(ctx, Lane::Short, f).await
}

/// [`read_store`] on a lane: history, whose cost grows with its range, runs on its own.
pub(super) async fn read_store_in<T: Send + 'static>(
    ctx: &Ctx,
    lane: Lane,
    f: impl FnOnce(&rusqlite::Connection, &crate::config::Config) -> rusqlite::Result<T>
        + Send
        + 'static,
) -> Result<T, ServiceError> {
    let config = ctx.shared.config.clone();
    // Each user's share of the long lane; a login is required for every store read.
    let who = ctx
        .client
        .login()
        .map_or_else(|| ctx.remote.to_string(), |l| l.user);
    ctx.shared
        .store
        .readers
        .query_for(lane, &who, move |conn| f(conn, &config))
        .await
        .map_err(|e| ServiceError::internal(e.to_string()))
}

/// Finds the service and checks the caller may use it, then runs it.
pub async fn dispatch(name: &str, ctx: Ctx) -> HandlerResult {
    let Some(service) = SERVICES.iter().find(|s| s.name == name) else {
        return Err(ServiceError::not_found(format!("unknown service `{name}`")));
    };
    let role = ctx.client.login().map(|l| l.role);
    match (service.access, role) {
        (Access::Public, _) => {}
        (_, None) => return Err(ServiceError::new(401, "not logged in")),
        (Access::Admin, Some(Role::Viewer)) => {
            return Err(ServiceError::forbidden("admin role required"))
        }
        _ => {}
    }
    (service.handler)(ctx).await
}
