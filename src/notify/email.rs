//! An e-mail delivery through an SMTP relay (lettre, rustls): STARTTLS required on smtp://
//! unless `starttls = false`, TLS from the start on smtps://; plain text that reads on a phone,
//! a `Message-ID` from the message id (a repeat is the same message to a mail system).

use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Mail, Tokio1Executor};

use super::message::Message;
use crate::config::Email;

/// Each SMTP command's answer; the whole attempt is bounded by [`super::ATTEMPT_EMAIL`].
const COMMAND: Duration = Duration::from_secs(10);

pub async fn send(cfg: &Email, gateway_id: &str, m: &Message) -> Result<(), String> {
    let mail = build(cfg, gateway_id, m)?;
    let tls = || TlsParameters::new(cfg.host.clone()).map_err(|e| format!("TLS settings: {e}"));
    let tls = if cfg.implicit_tls {
        Tls::Wrapper(tls()?)
    } else if cfg.starttls {
        Tls::Required(tls()?)
    } else {
        Tls::None
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.as_str())
        .port(cfg.port)
        .tls(tls)
        .timeout(Some(COMMAND));
    if !cfg.username.is_empty() {
        let password = match &cfg.password_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| format!("password_file {}: {e}", f.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            None => String::new(),
        };
        b = b.credentials(Credentials::new(cfg.username.clone(), password));
    }
    let transport = b.build();
    match tokio::time::timeout(super::ATTEMPT_EMAIL, transport.send(mail)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(smtp_text(&e)),
        Err(_) => Err(format!(
            "no answer within {} s",
            super::ATTEMPT_EMAIL.as_secs()
        )),
    }
}

fn build(cfg: &Email, gateway_id: &str, m: &Message) -> Result<Mail, String> {
    let from: Mailbox = cfg.from.parse().map_err(|e| format!("from: {e}"))?;
    let mut b = Mail::builder()
        .from(from)
        .subject(m.subject.clone())
        .message_id(Some(format!("<{}@{gateway_id}.edge-gateway>", m.id)))
        .header(ContentType::TEXT_PLAIN);
    for to in &cfg.to {
        b = b.to(to.parse().map_err(|e| format!("to {to}: {e}"))?);
    }
    b.body(m.text.clone()).map_err(|e| e.to_string())
}

/// The error and its cause, once.
fn smtp_text(e: &lettre::transport::smtp::Error) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
