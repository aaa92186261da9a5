//! `[[notifiers]]`: each one's kind and its keys, the alarms it takes, reminders and escalation.

use std::collections::HashSet;
use std::time::Duration;

use super::super::raw::RawNotifier;
use super::super::{Bus, Device, Email, Notifier, NotifierKind, Priority, Secret};
use super::{KeyPath, Validator};

/// The longest reminder period or escalation delay: a day.
const MAX_DELAY_S: i64 = 86_400;

impl Validator {
    pub(super) fn notifiers(
        &mut self,
        raw: Vec<RawNotifier>,
        devices: &[Device],
        buses: &[Bus],
    ) -> Vec<Notifier> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let names: Vec<String> = raw.iter().map(|n| n.name.clone()).collect();
        for (i, n) in raw.into_iter().enumerate() {
            let p = KeyPath::default().key("notifiers").index(i);
            if self.required(&p.key("name"), n.name.is_empty()) {
            } else if !seen.insert(n.name.clone()) {
                self.err(&p.key("name"), format!("duplicate notifier `{}`", n.name));
            } else if !n
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            {
                self.err(&p.key("name"), "use letters, digits, _ and - only");
            }
            let kind = match n.kind.as_str() {
                "webhook" => self.webhook(&n, &p),
                "email" => NotifierKind::Email(self.email(&n, &p)),
                "" => {
                    self.required(&p.key("kind"), true);
                    continue;
                }
                other => {
                    self.err(
                        &p.key("kind"),
                        format!("unknown kind `{other}` (expected webhook or email)"),
                    );
                    continue;
                }
            };
            let min_priority = match n.min_priority.as_deref() {
                None => Priority::High,
                Some(s) => Priority::parse(s).unwrap_or_else(|| {
                    self.err(
                        &p.key("min_priority"),
                        format!("unknown priority `{s}` (expected normal, high or emergency)"),
                    );
                    Priority::High
                }),
            };
            for (j, d) in n.devices.iter().enumerate() {
                if !devices.iter().any(|x| &x.id == d) && !buses.iter().any(|b| &b.name == d) {
                    self.err(
                        &p.key("devices").index(j),
                        format!("no device or bus `{d}`"),
                    );
                }
            }
            let delay = |v: &mut Validator, key: &str, raw: Option<i64>| {
                let s = v.int(&p.key(key), raw, 0, 0, MAX_DELAY_S);
                (s > 0).then(|| Duration::from_secs(s as u64))
            };
            let repeat_unacked = delay(self, "repeat_unacked_s", n.repeat_unacked_s);
            let escalate_after = delay(self, "escalate_after_s", n.escalate_after_s);
            let escalate_to = n.escalate_to.filter(|s| !s.is_empty());
            self.escalation(&p, &n.name, escalate_to.as_deref(), escalate_after, &names);
            out.push(Notifier {
                name: n.name,
                kind,
                min_priority,
                devices: n.devices,
                repeat_unacked,
                escalate_after,
                escalate_to,
            });
        }
        out
    }

    /// `escalate_to` names another notifier, and comes with `escalate_after_s` (and back).
    fn escalation(
        &mut self,
        p: &KeyPath,
        name: &str,
        to: Option<&str>,
        after: Option<Duration>,
        names: &[String],
    ) {
        match (to, after) {
            (Some(to), _) if to == name => {
                self.err(
                    &p.key("escalate_to"),
                    "a notifier cannot escalate to itself",
                );
            }
            (Some(to), _) if !names.iter().any(|n| n == to) => {
                self.err(&p.key("escalate_to"), format!("no notifier `{to}`"));
            }
            (Some(_), None) => self.err(
                &p.key("escalate_after_s"),
                "required with `escalate_to`: seconds without an acknowledgement",
            ),
            (None, Some(_)) => self.err(
                &p.key("escalate_to"),
                "required with `escalate_after_s`: the notifier to escalate to",
            ),
            _ => {}
        }
    }

    fn webhook(&mut self, n: &RawNotifier, p: &KeyPath) -> NotifierKind {
        self.not_for(n.smtp.is_some(), p, "smtp", "email");
        self.not_for(n.to.is_some(), p, "to", "email");
        let url = n.url.clone().unwrap_or_default();
        if self.required(&p.key("url"), url.is_empty()) {
        } else if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.contains(char::is_whitespace)
        {
            self.err(&p.key("url"), "must be an http:// or https:// URL");
        }
        NotifierKind::Webhook {
            url: Secret(url),
            secret: Secret(n.secret.clone().unwrap_or_default()),
        }
    }

    fn email(&mut self, n: &RawNotifier, p: &KeyPath) -> Email {
        self.not_for(n.url.is_some(), p, "url", "webhook");
        self.not_for(n.secret.is_some(), p, "secret", "webhook");
        let smtp = n.smtp.clone().unwrap_or_default();
        let (implicit_tls, rest) = if let Some(r) = smtp.strip_prefix("smtps://") {
            (true, r)
        } else if let Some(r) = smtp.strip_prefix("smtp://") {
            (false, r)
        } else {
            if !self.required(&p.key("smtp"), smtp.is_empty()) {
                self.err(&p.key("smtp"), "must start with smtp:// or smtps://");
            }
            (false, "")
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, port)) => (h, port.parse::<u16>().ok()),
            None => (rest, Some(if implicit_tls { 465 } else { 587 })),
        };
        if !smtp.is_empty() && (host.is_empty() || port.is_none() || host.contains(['/', '@'])) {
            self.err(
                &p.key("smtp"),
                "expected smtp://HOST[:PORT] or smtps://HOST[:PORT]",
            );
        }
        let starttls = n.starttls.unwrap_or(true);
        if implicit_tls && n.starttls == Some(false) {
            self.err(
                &p.key("starttls"),
                "smtps:// is TLS from the start: leave starttls out",
            );
        }
        let from = n.from.clone().unwrap_or_default();
        if self.required(&p.key("from"), from.is_empty()) {
        } else if from.parse::<lettre::message::Mailbox>().is_err() {
            self.err(&p.key("from"), format!("`{from}` is not an e-mail address"));
        }
        let to = n.to.clone().unwrap_or_default();
        self.required(&p.key("to"), to.is_empty());
        for (i, t) in to.iter().enumerate() {
            if t.parse::<lettre::message::Mailbox>().is_err() {
                self.err(
                    &p.key("to").index(i),
                    format!("`{t}` is not an e-mail address"),
                );
            }
        }
        let username = n.username.clone().unwrap_or_default();
        let password_file = n
            .password_file
            .clone()
            .filter(|f| !f.as_os_str().is_empty());
        if !username.is_empty() && password_file.is_none() {
            self.err(
                &p.key("username"),
                "needs `password_file`: the file holding its password",
            );
        }
        Email {
            host: host.to_string(),
            port: port.unwrap_or(587),
            implicit_tls,
            starttls,
            username,
            password_file,
            from,
            to,
        }
    }

    /// A key of the other kind, which would be ignored: said rather than ignored.
    fn not_for(&mut self, present: bool, p: &KeyPath, key: &str, kind: &str) {
        if present {
            self.err(&p.key(key), format!("only for kind = \"{kind}\""));
        }
    }
}
