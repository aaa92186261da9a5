//! What a poll changed, as every stage after the live state takes it: a device's reported
//! samples (the store keeps them, the pushes, OPC UA and the upstreams send them).

use super::{Millis, Quality, Value};

/// One point's reported sample: goes into the history and replaces the point's latest row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub device: usize,
    pub point: usize,
    pub ts: Millis,
    pub value: Option<Value>,
    pub quality: Quality,
}

/// One poll's reported changes of one device (and calculated points of the same time).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub device: usize,
    pub ts: Millis,
    pub rows: Vec<Row>,
}
