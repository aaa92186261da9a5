//! What a notification says: the webhook's JSON and the e-mail's subject and text, for one
//! alarm (its event, a reminder of it, its escalation), a digest of many, or a test; each
//! with an id derived from what it is about, so a receiver can drop a repeat.

use std::fmt::Write as _;

use serde_json::{json, Value as Json};

use crate::config::{Config, RuleKind};
use crate::model::Millis;
use crate::store::notify::{Due, Kind};

/// One message, rendered for either kind of notifier.
#[derive(Debug, Clone)]
pub struct Message {
    /// `X-Edge-Event-Id` / the `Message-ID`'s local part.
    pub id: String,
    /// The webhook's JSON body.
    pub body: String,
    pub subject: String,
    pub text: String,
}

/// Where a technician opens the dashboard: the listen address, or the box's name when it
/// listens on every address.
pub fn dashboard_url(config: &Config) -> String {
    let listen = &config.http.listen;
    let (host, port) = listen.rsplit_once(':').unwrap_or((listen, "80"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = match host {
        "0.0.0.0" | "::" | "" => crate::host::name().unwrap_or_else(|| "localhost".into()),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_string(),
    };
    format!("http://{host}:{port}/")
}

/// A time as the plant reads it: the gateway's local time zone.
pub fn local_time(ms: Millis) -> String {
    use chrono::TimeZone as _;
    match chrono::Local.timestamp_millis_opt(ms) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
            t.format("%Y-%m-%d %H:%M:%S (UTC%:z)").to_string()
        }
        chrono::LocalResult::None => crate::model::rfc3339(ms),
    }
}

/// The message id of one queued row: the event id itself for the alarm's own message.
pub fn id_of(d: &Due, event_id: &str) -> String {
    match d.kind {
        Kind::Alarm => event_id.to_string(),
        Kind::Reminder => format!("{event_id}-reminder-{}", d.n),
        Kind::Escalation => format!("{event_id}-escalation"),
    }
}

/// One alarm's message (`d.event` is present).
pub fn single(config: &Config, d: &Due) -> Message {
    let event: Json = d
        .event
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Json::Null);
    let event_id = event["id"].as_str().unwrap_or_default();
    let id = id_of(d, event_id);
    let url = dashboard_url(config);
    let mut json = event.clone();
    json["gatewayId"] = config.gateway.id.clone().into();
    json["dashboardUrl"] = url.clone().into();
    json["notification"] = d.kind.as_str().into();
    if d.kind == Kind::Reminder {
        json["reminder"] = d.n.into();
    }
    let subject = subject(config, d, &event);
    let mut text = String::new();
    let _ = writeln!(text, "{}\n", headline(config, &event, &d.alarm_key));
    match d.kind {
        Kind::Reminder => {
            let _ = writeln!(
                text,
                "Reminder {}: still active and not acknowledged.\n",
                d.n
            );
        }
        Kind::Escalation => {
            let _ = writeln!(text, "Escalated: not acknowledged in time.\n");
        }
        Kind::Alarm => {}
    }
    details(config, &event, &mut text);
    let _ = writeln!(text, "\nOpen the dashboard: {url}");
    Message {
        id,
        body: json.to_string(),
        subject,
        text,
    }
}

/// Many alarms in one message: what a storm sends once a minute instead of one each. Written
/// as text event by event: a thousand events as one JSON tree would cost megabytes.
pub fn digest(config: &Config, rows: &[Due]) -> Message {
    let url = dashboard_url(config);
    let gateway = &config.gateway.id;
    let quoted = |s: &str| Json::from(s).to_string();
    let mut body = format!(
        "{{\"gatewayId\":{},\"dashboardUrl\":{},\"notification\":\"digest\",\"count\":{},\"events\":[",
        quoted(gateway),
        quoted(&url),
        rows.len()
    );
    let mut text = format!(
        "{} alarm notifications from {gateway} in one message (more than {} a minute):\n\n",
        rows.len(),
        super::STORM_PER_MIN
    );
    for (i, d) in rows.iter().enumerate() {
        let event = d.event.as_deref().unwrap_or("{}");
        if i > 0 {
            body.push(',');
        }
        // The event's own object with what this message is to it first.
        let _ = write!(
            body,
            "{{\"notification\":\"{}\"{}{}",
            d.kind.as_str(),
            if event.len() > 2 { "," } else { "" },
            event.get(1..).unwrap_or("}")
        );
        let e: Json = serde_json::from_str(event).unwrap_or(Json::Null);
        let when = e["ts"]
            .as_str()
            .and_then(crate::model::parse_rfc3339)
            .map(local_time)
            .unwrap_or_default();
        let _ = writeln!(text, "{when}  {}", headline(config, &e, &d.alarm_key));
    }
    body.push_str("]}");
    let _ = writeln!(text, "\nOpen the dashboard: {url}");
    let (first, last) = (
        rows.first().map_or(0, |d| d.id),
        rows.last().map_or(0, |d| d.id),
    );
    Message {
        id: format!("{gateway}-digest-{first}-{last}"),
        body,
        subject: format!("[DIGEST] {gateway}: {} alarm notifications", rows.len()),
        text,
    }
}

/// `notify.test`'s message.
pub fn test(config: &Config, notifier: &str, by: &str, now: Millis) -> Message {
    let gateway = &config.gateway.id;
    let url = dashboard_url(config);
    Message {
        id: format!("{gateway}-test-{now}"),
        body: json!({
            "gatewayId": gateway,
            "dashboardUrl": url,
            "notification": "test",
            "notifier": notifier,
            "by": by,
            "ts": crate::model::rfc3339(now),
        })
        .to_string(),
        subject: format!("[TEST] {gateway}: notifier {notifier}"),
        text: format!(
            "A test message from gateway {gateway}, notifier {notifier}, sent by {by} at {}.\n\n\
             Open the dashboard: {url}\n",
            local_time(now)
        ),
    }
}

/// `[EMERGENCY] boiler-1 temperature 95.2 °C > 90`: priority, device, point, value and unit,
/// and the limit passed, so the subject alone says what happened.
fn subject(config: &Config, d: &Due, event: &Json) -> String {
    let priority = event["priority"].as_str().unwrap_or("alarm").to_uppercase();
    let tag = match (d.kind, event["state"].as_str()) {
        (Kind::Reminder, _) => format!("{priority} reminder"),
        (Kind::Escalation, _) => format!("{priority} escalated"),
        (Kind::Alarm, Some("cleared")) => format!("{priority} cleared"),
        (Kind::Alarm, _) => priority,
    };
    format!("[{tag}] {}", headline(config, event, &d.alarm_key))
}

/// `boiler-1 temperature 95.2 °C > 90`, or the device and the event's message.
fn headline(config: &Config, event: &Json, alarm_key: &str) -> String {
    let device = event["deviceId"].as_str().unwrap_or_default();
    let message = event["message"].as_str().unwrap_or_default();
    let Some(rule) = config.rules.iter().find(|r| r.id == alarm_key) else {
        return format!("{device} {message}");
    };
    // An `expr` rule watches no one point: its message says what it is.
    let (Some(p), false) = (rule.point, matches!(rule.kind, RuleKind::Expr(_))) else {
        return format!("{device} {message}");
    };
    let point = &config.devices[rule.device].points[p];
    let mut out = format!("{device} {}", point.id);
    if let Some(v) = value_text(&event["value"]) {
        let _ = write!(out, " {v}");
        if !point.unit.is_empty() {
            let _ = write!(out, " {}", point.unit);
        }
    }
    let limit = match &rule.kind {
        RuleKind::Above { threshold, .. } => format!("> {threshold}"),
        RuleKind::Below { threshold, .. } => format!("< {threshold}"),
        RuleKind::Outside { low, high, .. } => format!("outside {low}..{high}"),
        RuleKind::Equals { threshold } => format!("= {threshold}"),
        RuleKind::Rate { per_s } => format!("changing faster than {per_s}/s"),
        RuleKind::Stale => "not changing".into(),
        RuleKind::Expr(_) => String::new(),
    };
    if event["state"] == "cleared" {
        let _ = write!(out, " (back from {limit})");
    } else {
        let _ = write!(out, " {limit}");
    }
    out
}

fn value_text(v: &Json) -> Option<String> {
    match v {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The body's lines: gateway, device, point, value, time, state, priority, event id.
fn details(config: &Config, event: &Json, out: &mut String) {
    let line = |out: &mut String, k: &str, v: &str| {
        if !v.is_empty() {
            let _ = writeln!(out, "{k:<9} {v}");
        }
    };
    line(out, "Gateway", &config.gateway.id);
    line(
        out,
        "Device",
        event["deviceId"].as_str().unwrap_or_default(),
    );
    line(out, "Point", event["pointId"].as_str().unwrap_or_default());
    line(
        out,
        "Value",
        &value_text(&event["value"]).unwrap_or_default(),
    );
    let when = event["ts"]
        .as_str()
        .and_then(crate::model::parse_rfc3339)
        .map(local_time)
        .unwrap_or_default();
    line(out, "Time", &when);
    line(out, "State", event["state"].as_str().unwrap_or_default());
    line(
        out,
        "Priority",
        event["priority"].as_str().unwrap_or_default(),
    );
    line(
        out,
        "Message",
        event["message"].as_str().unwrap_or_default(),
    );
    line(out, "Event", event["id"].as_str().unwrap_or_default());
}
