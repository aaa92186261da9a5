//! `bus.scan` on a live bus: one unit id probed per turn, taking turns with the polls so a
//! configured device waits at most one probe timeout, progress streamed, cancellable.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::BusTask;
use crate::modbus::codec::Table;
use crate::modbus::reply::{Exception, LinkError};

/// Which unit ids to probe, and with what one-register (or one-bit) read.
#[derive(Debug)]
pub struct ScanRequest {
    pub from: u8,
    pub to: u8,
    pub table: Table,
    pub address: u16,
    /// How long a silent unit is waited for.
    pub timeout: Duration,
    pub progress: mpsc::UnboundedSender<ScanStep>,
    /// The units that answered, or why the scan could not go on (the link is down).
    pub reply: oneshot::Sender<Result<ScanDone, String>>,
}

/// One unit probed: it answered (data or an exception, which counts) or not. A gateway's
/// "path unavailable" (0A) or "target failed to respond" (0B) is an answer from the gateway
/// that no device is behind that id: not found, the exception kept to say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanStep {
    pub unit: u8,
    pub found: bool,
    pub exception: Option<Exception>,
}

#[derive(Debug)]
pub struct ScanDone {
    pub found: Vec<ScanStep>,
    pub cancelled: bool,
    /// Every unit probed (more than one) answered, all with the same data or exception: one
    /// server answering for any id (pymodbus, many TCP devices and gateways), not many devices.
    pub every_id: bool,
    /// The exception most ids answered (more than half of those probed, at least 3): a
    /// server's way of saying "no device with this id" (pymodbus answers 04). The units that
    /// gave it are left out of `found`.
    pub no_device_answer: Option<Exception>,
}

impl ScanDone {
    fn new(mut found: Vec<ScanStep>, probed: u16, every_id: bool, cancelled: bool) -> ScanDone {
        let mut counts = std::collections::HashMap::new();
        for s in &found {
            if let Some(code) = s.exception {
                *counts.entry(code).or_insert(0u16) += 1;
            }
        }
        let no_device_answer = (!every_id)
            .then(|| counts.into_iter().max_by_key(|(_, n)| *n))
            .flatten()
            .filter(|(_, n)| *n >= 3 && *n * 2 > probed)
            .map(|(code, _)| code);
        if let Some(code) = no_device_answer {
            found.retain(|s| s.exception != Some(code));
        }
        ScanDone {
            found,
            cancelled,
            every_id,
            no_device_answer,
        }
    }
}

/// What a probed unit answered, to tell whether all answered alike.
#[derive(Debug, PartialEq)]
enum Answer {
    Data(crate::modbus::reply::Data),
    Exception(Exception),
}

/// A scan in progress on a bus task.
#[derive(Debug)]
pub(super) struct ActiveScan {
    req: ScanRequest,
    next: u16,
    found: Vec<ScanStep>,
    cancelled: bool,
    /// The first unit's answer, while every unit since answered the same; `None` once one
    /// differed or was silent.
    alike: Option<Answer>,
    probed: u16,
}

impl ActiveScan {
    pub(super) fn new(req: ScanRequest) -> ActiveScan {
        ActiveScan {
            next: u16::from(req.from),
            req,
            found: Vec::new(),
            cancelled: false,
            alike: None,
            probed: 0,
        }
    }

    pub(super) fn cancel(&mut self) {
        self.cancelled = true;
    }
}

impl BusTask {
    /// Probes the next unit of the scan, or ends it (done, cancelled, or nobody listening).
    pub(super) async fn scan_step(&mut self) {
        let Some(scan) = self.scan.as_mut() else {
            return;
        };
        if scan.cancelled || scan.next > u16::from(scan.req.to) || scan.req.progress.is_closed() {
            let s = self.scan.take().expect("checked above");
            // All "no device behind this id" is an empty gateway, not one device.
            let every_id = s.probed > 1
                && s.alike
                    .is_some_and(|a| !matches!(a, Answer::Exception(e) if e.from_gateway()));
            let _ = s
                .req
                .reply
                .send(Ok(ScanDone::new(s.found, s.probed, every_id, s.cancelled)));
            return;
        }
        let unit = scan.next as u8;
        scan.next += 1;
        let (table, address, timeout) = (scan.req.table, scan.req.address, scan.req.timeout);
        self.metrics.beats.beat(&self.metrics.beats.buses[self.bus]);
        let reply = self
            .link
            .read_within(unit, table, address, 1, timeout)
            .await;
        let scan = self.scan.as_mut().expect("set above");
        let (step, answer) = match reply {
            Ok(Ok(data)) => (
                ScanStep {
                    unit,
                    found: true,
                    exception: None,
                },
                Some(Answer::Data(data)),
            ),
            Ok(Err(code)) => (
                ScanStep {
                    unit,
                    found: !code.from_gateway(),
                    exception: Some(code),
                },
                Some(Answer::Exception(code)),
            ),
            Err(e @ (LinkError::Down { .. } | LinkError::Connect { .. })) => {
                let s = self.scan.take().expect("set above");
                let _ = s.req.reply.send(Err(e.to_string()));
                return;
            }
            // Silence, or bytes that were not an answer from this unit: nobody there.
            Err(_) => (
                ScanStep {
                    unit,
                    found: false,
                    exception: None,
                },
                None,
            ),
        };
        scan.alike = match (scan.probed, answer) {
            (0, first) => first,
            (_, Some(a)) if scan.alike.as_ref() == Some(&a) => scan.alike.take(),
            _ => None,
        };
        scan.probed += 1;
        if step.found {
            scan.found.push(step.clone());
        }
        let _ = scan.req.progress.send(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(unit: u8, exception: Option<u8>) -> ScanStep {
        ScanStep {
            unit,
            found: true,
            exception: exception.map(Exception),
        }
    }

    #[test]
    fn the_exception_most_ids_give_is_the_server_saying_no_device() {
        let found = vec![
            step(1, None),
            step(2, Some(4)),
            step(3, Some(4)),
            step(4, Some(4)),
        ];
        let d = ScanDone::new(found, 5, false, false);
        assert_eq!(d.no_device_answer, Some(Exception::DEVICE_FAILURE));
        assert_eq!(d.found, vec![step(1, None)]);
        // Two devices answering 02 on a line of ten probed: devices, kept.
        let found = vec![step(3, Some(2)), step(7, Some(2))];
        let d = ScanDone::new(found.clone(), 10, false, false);
        assert_eq!((d.no_device_answer, d.found), (None, found));
    }
}
