//! The MySQL sink: creates its tables, then sends the outbox in multi-row idempotent batches
//! (`INSERT … ON DUPLICATE KEY UPDATE`), one transaction each; the shared sink loop
//! reconnects with backoff.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Pool, TxOpts};
use tokio_util::sync::CancellationToken;

use super::feed::Feed;
use super::{SinkContext, SinkError, SinkStatus, Upstream};
use crate::model::{Millis, Quality, Value};
use crate::store::outbox::SampleRow;
use crate::store::{self, OutboxRow, StoreHandle, Stream};

pub const SINK: &str = crate::metrics::sinks::MYSQL;

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
        acked_by VARCHAR(255) NULL,
        acked_at DATETIME(3) NULL,
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

/// Literal SQL. A string of letters, digits and `-_.+` only (every id, every number) goes in
/// as a plain literal: no `sql_mode` reads those characters differently and none can end it.
/// Any other goes in as a hex literal (`X'…'`), so nothing ever needs escaping. Numbers and
/// times are digits we formatted ourselves. Literal statements over the text protocol, because the binary
/// protocol's prepared statements cost the sink most of its CPU at 15,000 values a second:
/// six parameters per row, each an allocation, and every distinct batch size prepared anew with
/// its parameters' metadata parsed again (BENCHMARKS.md, store endurance).
fn string(out: &mut String, s: &str) {
    if s.bytes().all(|b| PLAIN[b as usize]) {
        // Half the bytes of hex, and no per-byte work (the ids of every telemetry row).
        out.push('\'');
        out.push_str(s);
        out.push('\'');
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

/// The bytes [`string`] writes as they are, looked up: the test a byte at a time, per point
/// id of every telemetry row, was 2.6 % of the gateway's CPU (perf, session 30).
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'+');
        b += 1;
    }
    t
};

fn opt_string(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.push_str("NULL"),
    }
}

/// A value as MySQL text (`value` columns keep every type losslessly as text; a bool is `1` or
/// `0`, as it always was).
fn value(out: &mut String, v: Option<&Value>) {
    use std::fmt::Write;
    match v {
        None => out.push_str("NULL"),
        Some(Value::Bool(b)) => out.push_str(if *b { "'1'" } else { "'0'" }),
        Some(Value::Text(t)) => string(out, t),
        // Digits, `.`, `-`, `inf`, `NaN`: a plain literal, written in place. Integers by
        // `itoa`: `write!` through `Value`'s `Display` cost ~300 instructions a value, 7 % of
        // the gateway's on the store bench (callgrind).
        Some(Value::Int(i)) => quoted(out, itoa::Buffer::new().format(*i)),
        Some(Value::UInt(u)) => quoted(out, itoa::Buffer::new().format(*u)),
        Some(Value::Float(x)) => {
            out.push('\'');
            let _ = write!(out, "{x}");
            out.push('\'');
        }
    }
}

fn quoted(out: &mut String, digits: &str) {
    out.push('\'');
    out.push_str(digits);
    out.push('\'');
}

/// Milliseconds since the epoch as a DATETIME(3) (the session is in UTC).
fn time(out: &mut String, ms: Option<Millis>) {
    match ms {
        Some(v) => {
            out.push_str("FROM_UNIXTIME(");
            out.push_str(itoa::Buffer::new().format(v.div_euclid(1000)));
            let ms = v.rem_euclid(1000);
            out.push('.');
            for d in [ms / 100, ms / 10 % 10, ms % 10] {
                out.push(char::from(b'0' + d as u8));
            }
            out.push(')');
        }
        None => out.push_str("NULL"),
    }
}

/// The statements for one batch of a stream, up to [`ROWS_PER_STATEMENT`] rows each (a sample
/// makes a row per point), built one at a time into one reused buffer: a round that drains a
/// backlog beside live data holds one statement (~100 KB), not all thirty of its batches at once.
struct Statements<'a> {
    head: &'static str,
    tail: &'static str,
    gateway: String,
    rows: &'a [OutboxRow],
    /// The next row to write, and for a sample the next of its points.
    next: (usize, usize),
    /// The current sample's device and time literals, written once for all its points.
    sample: SampleLiterals,
}

#[derive(Default)]
struct SampleLiterals {
    /// Which row of the batch they are of.
    row: Option<usize>,
    /// `(gateway, device, ` and `, time, `: what every point of the sample repeats, made once
    /// a sample and pushed whole (each push of a few bytes is a call to `memcpy`: a row took a
    /// dozen).
    head: String,
    time: String,
}

/// One telemetry row: a point of sample `i` of the batch.
fn sample_row(
    o: &mut String,
    gw: &str,
    lit: &mut SampleLiterals,
    (i, t): (usize, &SampleRow),
    (point, v, quality): (&str, Option<&Value>, Quality),
) {
    if lit.row != Some(i) {
        lit.row = Some(i);
        lit.head.clear();
        lit.head.push('(');
        lit.head.push_str(gw);
        lit.head.push_str(", ");
        string(&mut lit.head, t.device_id());
        lit.head.push_str(", ");
        lit.time.clear();
        lit.time.push_str(", ");
        time(&mut lit.time, Some(t.ts));
        lit.time.push_str(", ");
    }
    o.push_str(&lit.head);
    string(o, point);
    o.push_str(&lit.time);
    value(o, v);
    o.push_str(match quality {
        Quality::Good => ", 'good')",
        Quality::Bad => ", 'bad')",
        Quality::Stale => ", 'stale')",
    });
}

impl<'a> Statements<'a> {
    fn new(gateway: &str, stream: Stream, rows: &'a [OutboxRow]) -> Statements<'a> {
        let (head, tail) = match stream {
            Stream::Events => (
                "INSERT INTO edge_events (event_id, gateway_id, device_id, point_id, type, priority, device_seq, value, message, state, occurred_at, acked_by, acked_at) VALUES ",
                // A retried batch is the same rows again; an acknowledgement that reached the
                // row meanwhile (`acks`) is kept.
                " ON DUPLICATE KEY UPDATE state = VALUES(state),
                  acked_by = COALESCE(VALUES(acked_by), acked_by),
                  acked_at = COALESCE(VALUES(acked_at), acked_at)",
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
        let mut gw = String::new();
        string(&mut gw, gateway);
        Statements {
            head,
            tail,
            gateway: gw,
            rows,
            next: (0, 0),
            sample: SampleLiterals::default(),
        }
    }

    /// Writes the next statement into `o` (cleared first); false when every row is written.
    fn next_into(&mut self, o: &mut String) -> bool {
        use std::fmt::Write;
        o.clear();
        let gw = &self.gateway;
        let head = self.head;
        let mut n = 0;
        // Opens a row: the statement's head before the first, a comma before the others.
        let start = |o: &mut String, n: &mut usize| {
            o.push_str(if *n == 0 { head } else { ", " });
            *n += 1;
        };
        while n < ROWS_PER_STATEMENT {
            let (i, p) = self.next;
            let Some(row) = self.rows.get(i) else { break };
            match row {
                OutboxRow::Event(e) => {
                    start(o, &mut n);
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
                    value(o, e.value.as_ref());
                    o.push_str(", ");
                    string(o, &e.message);
                    o.push_str(", ");
                    string(o, &e.state);
                    o.push_str(", ");
                    time(o, Some(e.ts));
                    o.push_str(", ");
                    opt_string(o, e.acked_by.as_deref());
                    o.push_str(", ");
                    time(o, e.acked_at);
                    o.push(')');
                    self.next = (i + 1, 0);
                }
                OutboxRow::Status(s) => {
                    start(o, &mut n);
                    let _ = write!(o, "({gw}, ");
                    string(o, &s.device_id);
                    o.push_str(", ");
                    string(o, &s.device_type);
                    let _ = write!(o, ", {}, ", u8::from(s.online));
                    time(o, s.last_seen);
                    o.push(')');
                    self.next = (i + 1, 0);
                }
                OutboxRow::Sample(t) => {
                    let Some(entry) = t.point(p) else {
                        self.next = (i + 1, 0);
                        continue;
                    };
                    start(o, &mut n);
                    sample_row(o, gw, &mut self.sample, (i, t), entry);
                    self.next = (i, p + 1);
                }
            }
        }
        if n > 0 {
            o.push_str(self.tail);
        }
        n > 0
    }
}

/// Sends one batch of one stream in a transaction.
async fn send(
    pool: &Pool,
    gateway: &str,
    stream: Stream,
    rows: &[OutboxRow],
    sql: &mut String,
) -> Result<(), mysql_async::Error> {
    let mut statements = Statements::new(gateway, stream, rows);
    if !statements.next_into(sql) {
        return Ok(());
    }
    let mut conn = pool.get_conn().await?;
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    loop {
        tx.query_drop(sql.as_str()).await?;
        if !statements.next_into(sql) {
            break;
        }
    }
    // An acknowledgement's record marks the alarm it acknowledged, which an earlier batch (or
    // this one) carried: it is older in the same stream.
    for row in rows {
        if let OutboxRow::Event(e) = row {
            if let Some(acked) = &e.acks {
                ack_statement(sql, acked, e.acked_by.as_deref(), e.acked_at);
                tx.query_drop(sql.as_str()).await?;
            }
        }
    }
    tx.commit().await
}

fn ack_statement(o: &mut String, event_id: &str, by: Option<&str>, at: Option<Millis>) {
    o.clear();
    o.push_str("UPDATE edge_events SET acked_by = ");
    opt_string(o, by);
    o.push_str(", acked_at = ");
    time(o, at);
    o.push_str(" WHERE event_id = ");
    string(o, event_id);
}

async fn create_tables(pool: &Pool) -> Result<(), mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    for sql in SCHEMA {
        conn.query_drop(sql).await?;
    }
    // Tables made by a version before acknowledgements went upstream. Another gateway sharing
    // the database may add them first: a duplicate column (1060) is that, not an error.
    let add = "ALTER TABLE edge_events ADD COLUMN acked_by VARCHAR(255) NULL, \
               ADD COLUMN acked_at DATETIME(3) NULL";
    let has: Option<u32> = conn
        .query_first(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = DATABASE() \
             AND table_name = 'edge_events' AND column_name = 'acked_by'",
        )
        .await?;
    if has.is_none() {
        match conn.query_drop(add).await {
            Err(mysql_async::Error::Server(e)) if e.code == 1060 => {}
            other => other?,
        }
    }
    Ok(())
}

/// How long one batch (connect, insert, commit) may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Every await on the database has a deadline: a half-open connection must not hang the sink.
async fn deadline<T>(
    f: impl std::future::Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, SinkError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SinkError::Timeout {
            what: "answer from MySQL",
            after: REQUEST_TIMEOUT,
        }),
    }
}

/// The MySQL side of the sink loop.
struct Mysql {
    pool: Pool,
    gateway: String,
    status: Arc<SinkStatus>,
    store: StoreHandle,
    tables: bool,
    /// One statement's buffer, reused (its capacity settles at one statement's size).
    sql: String,
}

impl Upstream for Mysql {
    /// Tables first (once), then rounds: events, status, then telemetry live-first (see
    /// [`Feed`]), each batch in a transaction and confirmed by its commit.
    async fn session(
        &mut self,
        feed: &mut Feed,
        reached: &mut bool,
        cancel: &CancellationToken,
    ) -> Result<(), SinkError> {
        if !self.tables {
            deadline(create_tables(&self.pool)).await?;
            self.tables = true;
        }
        // What the last session read and did not commit is read again from the cursors.
        self.store.flush().await;
        feed.reset().await?;
        loop {
            let batches = feed.next().await?;
            let sent_any = !batches.is_empty();
            for b in batches {
                let n = b.rows.len() as u64;
                let sent = send(&self.pool, &self.gateway, b.stream, &b.rows, &mut self.sql);
                if let Err(e) = deadline(sent).await {
                    self.status.rows_failed.fetch_add(n, Relaxed);
                    return Err(e);
                }
                self.status.rows_ok.fetch_add(n, Relaxed);
                feed.confirm(b.stream, b.rows.iter().map(OutboxRow::id));
            }
            *reached = true;
            self.status.set_error(SINK, None);
            feed.persist(&self.store).await;
            if let Ok(b) = feed.backlog().await {
                self.status.backlog.store(b, Relaxed);
            }
            if !sent_any {
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            } else if cancel.is_cancelled() {
                return Ok(());
            }
        }
    }
}

/// Runs the sink until cancelled (see [`super::run`]).
pub async fn run(ctx: SinkContext, cancel: CancellationToken) {
    let Some(cfg) = ctx.config.mysql.clone() else {
        return;
    };
    let status = ctx.status.clone();
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
    let feed = match store::open_reader(&ctx.config.gateway.data_dir) {
        Ok(c) => Feed::new(SINK, c, ctx.config.clone(), cfg.batch_size)
            .held_while(ctx.store.gone.clone())
            .with_tail(ctx.store.tail.clone()),
        Err(e) => {
            status.set_error(SINK, Some(e.to_string()));
            return;
        }
    };
    let pool = Pool::new(opts);
    let upstream = Mysql {
        pool: pool.clone(),
        gateway: ctx.config.gateway.id.clone(),
        status: status.clone(),
        store: ctx.store.clone(),
        tables: false,
        sql: String::new(),
    };
    super::run(SINK, &status, &ctx.store, feed, upstream, cancel).await;
    // A server that stopped answering would hold the goodbye too.
    let _ = tokio::time::timeout(Duration::from_secs(1), pool.disconnect()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Quality;
    use crate::store::outbox::SampleRow;

    #[test]
    fn a_batch_goes_out_in_statements_of_at_most_a_thousand_rows_with_every_row_once() {
        let names: Vec<String> = (0..30).map(|i| format!("r{i}")).collect();
        let rows: Vec<OutboxRow> = (0..40)
            .map(|id| {
                let points = (0..30)
                    .map(|i| (names[i].as_str(), Some(Value::Int(i as i64)), Quality::Good))
                    .collect();
                OutboxRow::Sample(Arc::new(SampleRow::named(id, "d", 1000 + id, points)))
            })
            .collect();
        let all = |rows: &[OutboxRow]| {
            let mut st = Statements::new("gw", Stream::Telemetry, rows);
            let mut sql = String::new();
            std::iter::from_fn(move || st.next_into(&mut sql).then(|| sql.clone()))
                .collect::<Vec<_>>()
        };
        let st = all(&rows);
        let rows_in = |sql: &str| sql.matches("), (").count() + 1;
        assert_eq!(
            st.iter().map(|s| rows_in(s)).collect::<Vec<_>>(),
            vec![1000, 200]
        );
        assert!(all(&[]).is_empty());
        // Every (sample, point) once, in order, across the statement boundary.
        let joined = st.join("");
        for id in [0, 33, 39] {
            for i in [0, 9, 29] {
                let row = format!("'r{i}', FROM_UNIXTIME(1.{id:03})");
                assert_eq!(joined.matches(&row).count(), 1, "{row}");
            }
        }
        // Ids and numbers as plain literals; the time as digits.
        assert!(
            st[0].contains("('gw', 'd', 'r7', FROM_UNIXTIME(1.000), '7', 'good')"),
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
        value(&mut out, Some(&Value::Bool(true)));
        assert_eq!(out, "'1'");
        // Text with anything but letters, digits and `-_.+` goes as hex; plain ones as they are.
        let mut out = String::new();
        value(&mut out, Some(&Value::Text("on/off".into())));
        assert_eq!(out, "X'6f6e2f6f6666'");
        let mut out = String::new();
        for v in [Value::Float(-21.5), Value::Int(-3), Value::UInt(7)] {
            value(&mut out, Some(&v));
        }
        assert_eq!(out, "'-21.5''-3''7'");
        let mut out = String::new();
        for v in [
            Value::Int(i64::MIN),
            Value::UInt(u64::MAX),
            Value::Float(f64::NAN),
        ] {
            value(&mut out, Some(&v));
        }
        assert_eq!(out, "'-9223372036854775808''18446744073709551615''NaN'");
    }

    #[test]
    fn times_keep_their_milliseconds_before_and_after_the_epoch() {
        let mut out = String::new();
        for ms in [1_700_000_000_042, 5, -1, 0] {
            time(&mut out, Some(ms));
        }
        time(&mut out, None);
        assert_eq!(
            out,
            "FROM_UNIXTIME(1700000000.042)FROM_UNIXTIME(0.005)FROM_UNIXTIME(-1.999)FROM_UNIXTIME(0.000)NULL"
        );
    }
}
