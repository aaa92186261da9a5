//! `upstream.test` (admin): whether the MySQL or MQTT upstream a form is about to save can be
//! reached and logged into, and if not, which step failed, in words a technician can act on;
//! `notify.test` (admin): a test message through a configured notifier.

use std::time::Duration;

use serde_json::json;

use crate::api::context::{Ctx, HandlerResult, ServiceError};

/// A test gives up after this long: a firewall that drops packets answers with nothing.
const WAIT: Duration = Duration::from_secs(5);

/// `{kind: "mysql" | "mqtt", url}` → `{ok, message}`: a connection, the login, and (MySQL) one
/// query, then closed. Nothing is written.
pub async fn test(ctx: Ctx) -> HandlerResult {
    let kind = ctx.string("kind")?;
    let url = ctx.string("url")?;
    let outcome = match kind.as_str() {
        "mysql" => tokio::time::timeout(WAIT, mysql(&url)).await,
        "mqtt" => tokio::time::timeout(WAIT, mqtt(&url)).await,
        _ => return Err(ServiceError::bad_request("`kind` must be mysql or mqtt")),
    };
    let (ok, message) = match outcome {
        Ok(Ok(said)) => (true, said),
        Ok(Err(why)) => (false, why),
        Err(_) => (
            false,
            format!(
                "no answer within {} s: a wrong address, or a firewall dropping the packets",
                WAIT.as_secs()
            ),
        ),
    };
    Ok(json!({ "ok": ok, "message": message }))
}

/// `notify.test` `{notifier}` → `{ok, message}`: one test message through it, counted in its
/// figures like any other; the receiver's answer or the error in words.
pub async fn notify(ctx: Ctx) -> HandlerResult {
    let name = ctx.string("notifier")?;
    let by = ctx.client.login().map(|l| l.user).unwrap_or_default();
    let s = &ctx.shared;
    let Some(outcome) = crate::notify::test(&s.config, &s.metrics, &name, &by).await else {
        return Err(ServiceError::not_found(format!("no notifier `{name}`")));
    };
    tracing::info!(
        user = by,
        notifier = name,
        ok = outcome.is_ok(),
        "notifier tested"
    );
    let (ok, message) = match outcome {
        Ok(()) => (true, format!("delivered: {name} took the test message")),
        Err(e) => (false, e),
    };
    Ok(json!({ "ok": ok, "message": message }))
}

async fn mysql(url: &str) -> Result<String, String> {
    use mysql_async::prelude::Queryable as _;
    let opts = mysql_async::Opts::from_url(url).map_err(|e| format!("the URL: {e}"))?;
    let host = opts.ip_or_hostname().to_string();
    let mut conn = mysql_async::Conn::new(opts).await.map_err(|e| match e {
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => {
            format!("cannot reach {host}: {io}")
        }
        mysql_async::Error::Server(s) if s.code == 1045 => {
            format!("{host} refused the user or password ({})", s.message)
        }
        mysql_async::Error::Server(s) if s.code == 1049 => {
            format!("no such database on {host} ({})", s.message)
        }
        other => format!("{host}: {other}"),
    })?;
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| format!("logged in, but a query failed: {e}"))?;
    let _ = conn.disconnect().await;
    Ok(format!(
        "connected to {host} and logged in (server {})",
        version.unwrap_or_default()
    ))
}

async fn mqtt(url: &str) -> Result<String, String> {
    use rumqttc::{ConnectionError, Event, Incoming};
    let t = crate::broker::parse_url(url).map_err(|e| format!("the URL {e}"))?;
    let o = crate::broker::options(
        url,
        format!("edge-test-{:08x}", rand::random::<u32>()),
        Duration::from_secs(5),
    )?;
    let (client, mut el) = rumqttc::AsyncClient::new(o, 4);
    let at = format!("{}:{}", t.host, t.port);
    let said = loop {
        match el.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                break Ok(format!("connected to {at}: the broker accepted the login"))
            }
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => {
                break Err(format!(
                    "{at} refused the connection: {code:?} (user, password or client id)"
                ))
            }
            Err(ConnectionError::Io(e)) => break Err(format!("cannot reach {at}: {e}")),
            Err(ConnectionError::Tls(e)) => break Err(format!("TLS with {at} failed: {e}")),
            Err(e) => break Err(format!("{at}: {e}")),
        }
    };
    let _ = client.try_disconnect();
    said
}
