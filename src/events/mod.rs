//! Events: what the gateway tells people. The rule engine turns samples into event drafts; the
//! processor orders them by priority, applies storm control, numbers them, commits them with
//! the alarm lifecycle to SQLite, and only then pushes them.

pub mod ack;
pub mod processor;
pub mod rules;

use serde_json::Value as Json;

use crate::config::Config;

pub use crate::model::event::{AlarmOp, Draft, Event, EventState, EventType, SpecEvent};

impl Event {
    /// The SPEC JSON of an event.
    pub fn to_json(&self, config: &Config) -> Json {
        SpecEvent {
            id: &self.id(&config.gateway.id),
            device_id: config.source_id(self.device),
            point_id: config.source_point(self.device, self.point),
            kind: self.kind.as_str(),
            priority: self.priority.as_str(),
            device_seq: self.device_seq as i64,
            value: self.value.as_ref(),
            message: &self.message,
            ts: self.ts,
            state: self.state.as_str(),
            acked_by: self.acked_by.as_deref(),
            acked_at: self.acked_at,
        }
        .to_json()
    }
}
