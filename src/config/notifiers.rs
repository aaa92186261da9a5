//! `[[notifiers]]` as domain types: where an alarm is sent (a webhook or an e-mail relay), which
//! alarms (priority, devices), and what follows an unacknowledged one (reminders, escalation).

use std::path::PathBuf;
use std::time::Duration;

use super::{Priority, Secret};

#[derive(Debug, Clone)]
pub struct Notifier {
    /// Keys its queue rows, metrics and `notify.test`.
    pub name: String,
    pub kind: NotifierKind,
    pub min_priority: Priority,
    /// Device (or bus) ids whose alarms it takes; empty: every one.
    pub devices: Vec<String>,
    /// Resend while the alarm is active and unacknowledged, this often.
    pub repeat_unacked: Option<Duration>,
    /// Not acknowledged within this: `escalate_to` is notified too.
    pub escalate_after: Option<Duration>,
    pub escalate_to: Option<String>,
}

#[derive(Debug, Clone)]
pub enum NotifierKind {
    Webhook {
        /// May carry a token in its query: a secret.
        url: Secret,
        /// The HMAC key of `X-Edge-Signature`; empty: no signature header.
        secret: Secret,
    },
    Email(Email),
}

#[derive(Debug, Clone)]
pub struct Email {
    pub host: String,
    pub port: u16,
    /// `smtps://`: TLS from the first byte.
    pub implicit_tls: bool,
    /// `smtp://`: STARTTLS required unless `starttls = false`.
    pub starttls: bool,
    pub username: String,
    /// Read at each send, so a rotated password needs no reload.
    pub password_file: Option<PathBuf>,
    pub from: String,
    pub to: Vec<String>,
}

impl Notifier {
    /// Whether an alarm of `priority` from `device` is this notifier's.
    pub fn takes(&self, priority: Priority, device: &str) -> bool {
        priority.rank() >= self.min_priority.rank()
            && (self.devices.is_empty() || self.devices.iter().any(|d| d == device))
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            NotifierKind::Webhook { .. } => "webhook",
            NotifierKind::Email(_) => "email",
        }
    }
}
