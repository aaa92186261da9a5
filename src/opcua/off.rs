//! The OPC UA server left out of this build (cargo feature `opcua` off, about 8 MB less on
//! armv7): the names the gateway uses with nothing behind them. `[opcua] enabled = true` is a
//! config problem in such a build.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::model::event::Event;
use crate::model::Report;
use crate::state::SharedLive;
use crate::state::Telemetry;

#[derive(Debug, thiserror::Error)]
pub enum OpcuaError {
    #[error("{}", crate::config::OPCUA_MISSING)]
    Missing,
}

/// What the server would take from the gateway.
pub struct Parts {
    pub auth: Arc<crate::api::auth::Auth>,
    pub control: Arc<crate::control::Control>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// No server can exist in this build.
pub enum Server {}

impl Server {
    pub fn start(_: &Config, _: std::net::TcpListener, _: &Parts) -> Result<Server, OpcuaError> {
        Err(OpcuaError::Missing)
    }

    pub fn serves(&self, _: &Config) -> bool {
        match *self {}
    }

    pub async fn into_reload(self, _: &Config) -> Option<Server> {
        match self {}
    }

    pub fn detach(&self) {
        match *self {}
    }

    pub async fn stop(self) {
        match self {}
    }

    pub async fn hold_feed(&self) -> tokio::sync::OwnedMutexGuard<()> {
        match *self {}
    }

    pub fn attach(
        &self,
        _: &Arc<Config>,
        _: Parts,
        _: &SharedLive,
        _: &TaskTracker,
        _: &CancellationToken,
    ) -> Arc<Feed> {
        match *self {}
    }
}

/// No feed can exist in this build.
pub enum Feed {}

impl Feed {
    pub fn events(&self, _: &str, _: &[Event]) {
        match *self {}
    }
}

impl Telemetry for Feed {
    fn report(&self, _: &Report, _: std::time::Instant) {
        match *self {}
    }
}

/// Nothing to bind; a config that enables the server was refused by its checks already.
pub fn bind(config: &Config) -> Result<Option<std::net::TcpListener>, OpcuaError> {
    if config.opcua.enabled {
        Err(OpcuaError::Missing)
    } else {
        Ok(None)
    }
}

/// The namespace the gateway's nodes would have.
pub fn namespace_uri(gateway_id: &str) -> String {
    format!("urn:edge-gateway:{gateway_id}")
}
