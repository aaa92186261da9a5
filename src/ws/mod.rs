//! The WebSocket plumbing under the dashboard's API (`api`): the upgrade's handshake and the
//! socket split into a reader and a writer (`socket`), the writer task with its heartbeats and
//! queue policy (`writer`), the hub of connected clients and their bounded push queues (`hub`,
//! `client`), and the admission of connections not yet logged in (`admit`).

pub mod admit;
pub mod client;
pub mod hub;
pub mod socket;
pub mod writer;

use std::time::Duration;

/// The largest frame accepted (SPEC: 413 / close 1009 beyond it).
pub const MAX_FRAME: usize = 64 * 1024;
/// The largest frame read at all: one between this and [`MAX_FRAME`] is read so that its 413
/// can name its `requestId`; past this the socket refuses it unread (413 without one). The
/// cost is this much buffer, briefly, per connection that sends one.
pub const READ_LIMIT: usize = 256 * 1024;
/// The shortest `push.interval_ms` the config takes: a write shorter than half of it cannot be
/// slower than the snapshot period, so the period is not even looked at.
pub const MIN_SNAPSHOT_PERIOD: Duration = Duration::from_millis(500);
