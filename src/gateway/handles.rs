//! The narrow handles a starting gateway makes first and starts each stage from; the HTTP
//! side's `Shared` is made from them last.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Carry;
use crate::api::{auth::Auth, Shared};
use crate::config::Config;
use crate::control::Control;
use crate::events::processor::OperatorEvents;
use crate::metrics::{sinks::Sinks, Metrics};
use crate::modbus::bus::BusRequest;
use crate::shelves::Shelves;
use crate::state::SharedLive;
use crate::store::{Restored, StoreHandle};
use crate::ws::hub::Hub;

/// What the stages of one gateway are started from. Each stage takes the few it uses; none
/// takes the whole.
pub(super) struct Handles {
    pub config: Arc<Config>,
    pub live: SharedLive,
    pub metrics: Arc<Metrics>,
    pub store: StoreHandle,
    /// Writes and raw reads through the buses.
    pub control: Arc<Control>,
    /// The connected dashboards, which the pipeline's pushes reach.
    pub hub: Arc<Hub>,
    /// One password checker and one set of limits for the dashboard and OPC UA.
    pub auth: Arc<Auth>,
    /// The snapshot push period (`push.setInterval` changes it at run time).
    pub push_interval: watch::Sender<Duration>,
    /// The upstream sinks' state, written by the sinks and read by `/healthz` and the fleet.
    pub sinks: Sinks,
    /// Alarms an operator shelved (read again from `data_dir` at each start).
    pub shelves: Arc<Shelves>,
}

impl Handles {
    /// The handles of a gateway starting on `config`, with the logged-in sessions a reload
    /// carried; also the receiving end of each bus's request queue (in bus order).
    pub fn new(
        config: &Arc<Config>,
        live: &SharedLive,
        metrics: &Arc<Metrics>,
        store: &StoreHandle,
        restored: &Restored,
        carry: &mut Carry,
    ) -> (Handles, Vec<mpsc::Receiver<BusRequest>>) {
        let (buses, requests) = (config.buses.iter())
            .map(|_| mpsc::channel(crate::control::REQUESTS_PER_BUS))
            .unzip();
        let control = Control {
            config: config.clone(),
            live: live.clone(),
            store: store.clone(),
            buses,
        };
        let auth = Arc::new(Auth::new(config.users.clone(), config.http.session_idle));
        auth.adopt(std::mem::take(&mut carry.sessions));
        let push_interval = watch::channel(config.push.interval).0;
        if let Some(set) = restored.push_interval {
            push_interval.send_replace(set);
        }
        let handles = Handles {
            config: config.clone(),
            live: live.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            control: Arc::new(control),
            hub: Arc::new(Hub::new(config.devices.len(), metrics.clone())),
            auth,
            push_interval,
            sinks: Sinks::default(),
            shelves: Arc::new(Shelves::load(&config.gateway.data_dir)),
        };
        (handles, requests)
    }

    /// The HTTP side's context, made last: these handles, the operator events into the
    /// running pipeline, and what a reload carried for the dashboard (the config file, the
    /// WebSocket front and admission).
    pub fn into_shared(
        self,
        carry: &mut Carry,
        operator_events: Option<OperatorEvents>,
        shutdown: CancellationToken,
    ) -> Arc<Shared> {
        let config = self.config;
        Arc::new(Shared {
            admission: carry.admission.take().unwrap_or_else(|| {
                Arc::new(crate::ws::admit::Admission::new(config.push.max_clients))
            }),
            front: carry.front.take().unwrap_or_default(),
            config_file: carry.config_file.take(),
            started: crate::process_started(),
            live: self.live,
            metrics: self.metrics,
            store: self.store,
            control: self.control,
            hub: self.hub,
            auth: self.auth,
            push_interval: self.push_interval,
            sinks: self.sinks,
            shelves: self.shelves,
            operator_events,
            shutdown,
            config,
        })
    }
}
