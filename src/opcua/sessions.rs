//! The OPC UA sessions the Diagnostics view lists: each one known from its requests on the
//! gateway's nodes (the server library does not enumerate its sessions), forgotten when the
//! library drops it.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use ua::server::node_manager::RequestContext;

use crate::metrics::opcua::SessionRow;
use crate::sync::Locked as _;

struct Seen {
    row: SessionRow,
    /// The library's session (its type is the library's own): gone once it is closed or
    /// timed out.
    session: Weak<dyn Any + Send + Sync>,
}

/// Sessions by the library's numeric id.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<u32, Seen>>);

impl Sessions {
    /// The session of `context` made a request; `items` monitored items more (or fewer).
    pub fn seen(&self, context: &RequestContext, items: i64) {
        let mut all = self.0.locked();
        let seen = all.entry(context.session_id).or_insert_with(|| {
            let s = context.session.read();
            let policy = s.security_policy_uri();
            Seen {
                row: SessionRow {
                    user: if context.token.is_anonymous() {
                        "anonymous".into()
                    } else {
                        context.token.0.clone()
                    },
                    client: s.application_description().application_uri.to_string(),
                    security: policy.rsplit('#').next().unwrap_or(policy).to_string(),
                    monitored_items: 0,
                },
                session: {
                    let held: Arc<dyn Any + Send + Sync> = context.session.clone();
                    Arc::downgrade(&held)
                },
            }
        });
        seen.row.monitored_items = seen.row.monitored_items.saturating_add_signed(items);
    }

    /// The sessions still open, longest known first.
    pub fn rows(&self) -> Vec<SessionRow> {
        let mut all = self.0.locked();
        all.retain(|_, s| s.session.strong_count() > 0);
        let mut rows: Vec<(u32, SessionRow)> =
            all.iter().map(|(id, s)| (*id, s.row.clone())).collect();
        rows.sort_by_key(|(id, _)| *id);
        rows.into_iter().map(|(_, r)| r).collect()
    }
}
