//! The MySQL sink: creates its tables, then sends the outbox in multi-row idempotent batches
//! (`INSERT … ON DUPLICATE KEY UPDATE`), one transaction each, reconnecting with backoff.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Pool, TxOpts};
use tokio_util::sync::CancellationToken;

use super::feed::Feed;
use crate::model::{Millis, Value};
use crate::store::{self, OutboxRow, Stream};
use crate::Shared;

pub const SINK: &str = "mysql";

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS edge_events (
        event_id VARCHAR(100) NOT NULL PRIMARY KEY,
        gateway_id VARCHAR(64) NOT NULL,
        device_id VARCHAR(255) NOT NULL,
        point_id VARCHAR(255) NULL,
        type VARCHAR(32) NOT NULL,
        priority VARCHAR(16) NOT NULL,
        device_seq BIGINT NOT NULL,
        value TEXT NULL,
        message TEXT NOT NULL,
        state VARCHAR(16) NOT NULL,
        occurred_at DATETIME(3) NOT NULL,
        KEY edge_events_gateway (gateway_id, occurred_at))",
    "CREATE TABLE IF NOT EXISTS edge_telemetry (
        gateway_id VARCHAR(64) NOT NULL,
        device_id VARCHAR(190) NOT NULL,
        point_id VARCHAR(190) NOT NULL,
        ts DATETIME(3) NOT NULL,
        value TEXT NULL,
        quality VARCHAR(8) NOT NULL,
        PRIMARY KEY (gateway_id, device_id, point_id, ts))",
    "CREATE TABLE IF NOT EXISTS edge_device_status (
        gateway_id VARCHAR(64) NOT NULL,
        device_id VARCHAR(190) NOT NULL,
        device_type VARCHAR(255) NOT NULL,
        online BOOLEAN NOT NULL,
        last_seen DATETIME(3) NULL,
        PRIMARY KEY (gateway_id, device_id))",
];

/// Rows per statement.
const ROWS_PER_STATEMENT: usize = 1000;

/// Literal SQL. Strings go in as hex literals (`X'…'`): no `sql_mode` reads them differently
/// and no value can end them early, so nothing needs escaping. Numbers and times are digits we
/// formatted ourselves. Literal statements over the text protocol, because the binary
/// protocol's prepared statements cost the sink most of its CPU at 15,000 values a second:
/// six parameters per row, each an allocation, and every distinct batch size prepared anew with
/// its parameters' metadata parsed again (BENCHMARKS.md, store endurance).
fn string(out: &mut String, s: &str) {
    if s.is_empty() {
        out.push_str("''");
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() * 2 + 3);
    out.push_str("X'");
    for b in s.bytes() {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out.push('\'');
}

fn opt_string(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.push_str("NULL"),
    }
}

/// A value as MySQL text (`value` columns keep every type losslessly as text; a bool is `1` or
/// `0`, as it always was).
fn value(out: &mut String, v: &Option<Value>) {
    match v {
        None => out.push_str("NULL"),
        Some(Value::Bool(b)) => string(out, if *b { "1" } else { "0" }),
        Some(v) => string(out, &v.to_string()),
    }
}

/// Milliseconds since the epoch as a DATETIME(3) (the session is in UTC).
fn time(out: &mut String, ms: Option<Millis>) {
    use std::fmt::Write;
    match ms {
        Some(v) => {
            let _ = write!(
                out,
                "FROM_UNIXTIME({}.{:03})",
                v.div_euclid(1000),
                v.rem_euclid(1000)
            );
        }
        None => out.push_str("NULL"),
    }
}

/// Statements of up to [`ROWS_PER_STATEMENT`] rows, built row by row.
struct Statements {
    head: &'static str,
    tail: &'static str,
    done: Vec<String>,
    current: String,
    rows: usize,
}

impl Statements {
    fn new(stream: Stream) -> Statements {
        let (head, tail) = match stream {
            Stream::Events => (
                "INSERT INTO edge_events (event_id, gateway_id, device_id, point_id, type, priority, device_seq, value, message, state, occurred_at) VALUES ",
                // A retried batch is the same rows again: the state is the only thing that may
                // have been written differently (never, today), so keep the row and refresh it.
                " ON DUPLICATE KEY UPDATE state = VALUES(state)",
            ),
            Stream::Status => (
                "INSERT INTO edge_device_status (gateway_id, device_id, device_type, online, last_seen) VALUES ",
                " ON DUPLICATE KEY UPDATE device_type = VALUES(device_type), online = VALUES(online),
                  last_seen = COALESCE(VALUES(last_seen), last_seen)",
            ),
            Stream::Telemetry => (
                "INSERT INTO edge_telemetry (gateway_id, device_id, point_id, ts, value, quality) VALUES ",
                " ON DUPLICATE KEY UPDATE value = VALUES(value), quality = VALUES(quality)",
            ),
        };
        Statements {
            head,
            tail,
            done: Vec::new(),
            current: String::new(),
            rows: 0,
        }
    }

    /// The buffer to write one more row's `(…)` into.
    fn row(&mut self) -> &mut String {
        if self.rows == ROWS_PER_STATEMENT {
            self.finish();
        }
        self.current
            .push_str(if self.rows == 0 { self.head } else { ", " });
        self.rows += 1;
        &mut self.current
    }

    fn finish(&mut self) {
        if self.rows > 0 {
            self.current.push_str(self.tail);
            self.done.push(std::mem::take(&mut self.current));
            self.rows = 0;
        }
    }
}

/// The statements for one batch of a stream (a sample makes a row per point).
fn statements(gateway: &str, stream: Stream, rows: &[OutboxRow]) -> Vec<String> {
    use std::fmt::Write;
    let mut st = Statements::new(stream);
    let mut gw = String::new();
    string(&mut gw, gateway);
    for row in rows {
        match row {
            OutboxRow::Event(e) => {
                let o = st.row();
                o.push('(');
                string(o, &e.event_id);
                let _ = write!(o, ", {gw}, ");
                string(o, &e.device_id);
                o.push_str(", ");
                opt_string(o, e.point_id.as_deref());
                o.push_str(", ");
                string(o, &e.kind);
                o.push_str(", ");
                string(o, &e.priority);
                let _ = write!(o, ", {}, ", e.device_seq);
                value(o, &e.value);
                o.push_str(", ");
                string(o, &e.message);
                o.push_str(", ");
                string(o, &e.state);
                o.push_str(", ");
                time(o, Some(e.ts));
                o.push(')');
            }
            OutboxRow::Status(s) => {
                let o = st.row();
                let _ = write!(o, "({gw}, ");
                string(o, &s.device_id);
                o.push_str(", ");
                string(o, &s.device_type);
                let _ = write!(o, ", {}, ", s.online as u8);
                time(o, s.last_seen);
                o.push(')');
            }
            OutboxRow::Sample(t) => {
                let mut device = String::new();
                string(&mut device, &t.device_id);
                let mut ts = String::new();
                time(&mut ts, Some(t.ts));
                for (point, v, quality) in &t.points {
                    let o = st.row();
                    let _ = write!(o, "({gw}, {device}, ");
                    string(o, point);
                    let _ = write!(o, ", {ts}, ");
                    value(o, v);
                    let _ = write!(o, ", '{}')", quality.as_str());
                }
            }
        }
    }
    st.finish();
    st.done
}

/// Sends one batch of one stream in a transaction.
async fn send(
    pool: &Pool,
    gateway: &str,
    stream: Stream,
    rows: &[OutboxRow],
) -> Result<(), mysql_async::Error> {
    let statements = statements(gateway, stream, rows);
    if statements.is_empty() {
        return Ok(());
    }
    let mut conn = pool.get_conn().await?;
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    for sql in statements {
        tx.query_drop(sql).await?;
    }
    tx.commit().await
}

async fn create_tables(pool: &Pool) -> Result<(), mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    for sql in SCHEMA {
        conn.query_drop(sql).await?;
    }
    Ok(())
}

/// How long one batch (connect, insert, commit) may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Every await on the database has a deadline: a half-open connection must not hang the sink.
async fn deadline<T>(
    f: impl std::future::Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer from MySQL within {REQUEST_TIMEOUT:?}")),
    }
}

/// Runs the sink until cancelled: tables first, then the outbox in batches of `batch_size`
/// (events, status, then telemetry live-first: see [`Feed`]); on any error, backs off (0.5 s doubling to 30 s, with jitter) and resumes
/// from the cursor.
pub async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let Some(cfg) = shared.config.mysql.clone() else {
        return;
    };
    let status = shared.sinks.mysql.clone();
    let opts = match Opts::from_url(&cfg.url.0) {
        // UTC for FROM_UNIXTIME; and the configured address only (mysql_async would otherwise
        // switch a loopback TCP connection to the server's Unix socket behind our back).
        Ok(o) => OptsBuilder::from_opts(o)
            .init(vec!["SET time_zone = '+00:00'"])
            .prefer_socket(false),
        Err(e) => {
            status.set_error(SINK, Some(format!("bad [mysql] url: {e}")));
            return;
        }
    };
    let pool = Pool::new(opts);
    let mut feed = match store::open_reader(&shared.config.gateway.data_dir) {
        Ok(c) => Feed::new(SINK, c, shared.config.clone(), cfg.batch_size),
        Err(e) => {
            status.set_error(SINK, Some(e.to_string()));
            return;
        }
    };
    let gateway = shared.config.gateway.id.clone();
    let mut backoff = Duration::from_millis(500);
    let mut tables = false;
    // False after a failure: what was read and not committed is read again from the cursors.
    let mut ready = false;
    while !cancel.is_cancelled() {
        let result: Result<bool, String> = async {
            if !tables {
                deadline(create_tables(&pool)).await?;
                tables = true;
            }
            if !ready {
                shared.store.flush().await;
                feed.reset()
                    .await
                    .map_err(|e| format!("reading the outbox: {e}"))?;
                ready = true;
            }
            let batches = feed
                .next()
                .await
                .map_err(|e| format!("reading the outbox: {e}"))?;
            let sent_any = !batches.is_empty();
            for b in batches {
                let n = b.rows.len() as u64;
                match deadline(send(&pool, &gateway, b.stream, &b.rows)).await {
                    Ok(()) => {
                        status.rows_ok.fetch_add(n, Relaxed);
                        feed.confirm(b.stream, b.rows.iter().map(OutboxRow::id));
                    }
                    Err(e) => {
                        status.rows_failed.fetch_add(n, Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok(sent_any)
        }
        .await;
        // Whatever was committed before a failure keeps its place.
        feed.persist(&shared.store).await;
        if let Ok(b) = feed.backlog().await {
            status.backlog.store(b, Relaxed);
        }
        let pause = match result {
            Ok(true) => {
                status.set_error(SINK, None);
                backoff = Duration::from_millis(500);
                continue;
            }
            Ok(false) => {
                status.set_error(SINK, None);
                backoff = Duration::from_millis(500);
                Duration::from_millis(200)
            }
            Err(e) => {
                ready = false;
                status.set_error(SINK, Some(e));
                let p = backoff.mul_f64(rand::random_range(0.8..1.2));
                backoff = (backoff * 2).min(Duration::from_secs(30));
                p
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    let _ = pool.disconnect().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Quality;
    use crate::store::outbox::SampleRow;

    #[test]
    fn a_batch_goes_out_in_statements_of_at_most_a_thousand_rows_with_every_row_once() {
        let points: Vec<_> = (0..30)
            .map(|i| {
                (
                    Arc::from(format!("r{i}")),
                    Some(Value::Int(i)),
                    Quality::Good,
                )
            })
            .collect();
        let rows: Vec<OutboxRow> = (0..40)
            .map(|id| {
                OutboxRow::Sample(SampleRow {
                    id,
                    device_id: Arc::from("d"),
                    ts: 1000 + id,
                    points: points.clone(),
                })
            })
            .collect();
        let st = statements("gw", Stream::Telemetry, &rows);
        let rows_in = |sql: &str| sql.matches("), (").count() + 1;
        assert_eq!(
            st.iter().map(|s| rows_in(s)).collect::<Vec<_>>(),
            vec![1000, 200]
        );
        assert!(statements("gw", Stream::Telemetry, &[]).is_empty());
        // 'r7' = 72 37, "7" = 37; the time as digits.
        assert!(
            st[0].contains("(X'6777', X'64', X'7237', FROM_UNIXTIME(1.000), X'37', 'good')"),
            "{}",
            &st[0][..300]
        );
    }

    #[test]
    fn no_string_can_end_its_literal() {
        let mut out = String::new();
        string(&mut out, "a'); DROP TABLE x; --\\");
        assert!(
            out.starts_with("X'")
                && out.ends_with('\'')
                && out[2..out.len() - 1].bytes().all(|b| b.is_ascii_hexdigit())
        );
        let mut out = String::new();
        value(&mut out, &Some(Value::Bool(true)));
        assert_eq!(out, "X'31'");
    }
}
