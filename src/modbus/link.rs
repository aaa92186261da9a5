//! One Modbus link (a TCP connection or a serial port) as a client: every request under a
//! deadline, reconnects with exponential backoff and jitter, exceptions kept apart from faults.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, Instant};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ProtocolError, Slave};

use super::codec::Table;
use super::counted::Counted;
use super::reply::{Data, Exception, Fault, LinkError, Reply, WriteOp};
use super::rtu::{LineTiming, Rtu};
use crate::backoff::Backoff;
use crate::config::{self, Parity};
use crate::metrics::wire::Wire;

/// Why tokio-modbus's TCP connection failed. It reports a connection the peer closed as
/// whatever the last OS error of the thread happened to be ("operation would block", "No such
/// file or directory"): only the errors a socket can really have are taken at their word.
fn tcp_lost(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::NetworkDown
        | ErrorKind::TimedOut => lost(e),
        _ => "the device closed the connection".into(),
    }
}

/// Why a connection or port failed, in words.
pub(crate) fn lost(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe => {
            "the device closed the connection".into()
        }
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
            "the device reset the connection".into()
        }
        // The OS's words ("No such device (os error 19)" for an unplugged adapter).
        _ => e.to_string(),
    }
}

/// Reconnects: 100 ms after the first failure, doubling to 30 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));

/// An open link: Modbus TCP through tokio-modbus, or RTU framing (serial or TCP) of our own.
enum Conn {
    Tcp(Context),
    Rtu(Rtu),
}

pub struct Link {
    cfg: config::Link,
    timeout: Duration,
    inter_request_delay: Duration,
    conn: Option<Conn>,
    /// No connect attempt before this instant (exponential backoff with jitter).
    reconnect_at: Option<Instant>,
    /// Why the last connect attempt failed, said while waiting to retry.
    last_cause: String,
    backoff: Backoff,
    last_request_end: Option<Instant>,
    /// Bytes, CRC errors and gaps on this link, for its bus's metrics.
    wire: Arc<Wire>,
}

impl Link {
    pub fn new(cfg: config::Link, timeout: Duration, inter_request_delay: Duration) -> Link {
        Link {
            cfg,
            timeout,
            inter_request_delay,
            conn: None,
            reconnect_at: None,
            last_cause: String::new(),
            backoff: BACKOFF,
            last_request_end: None,
            wire: Arc::default(),
        }
    }

    /// The link's wire figures (its bus's metrics show them).
    pub fn wire(&self) -> Arc<Wire> {
        self.wire.clone()
    }

    pub fn describe(&self) -> String {
        describe(&self.cfg)
    }

    async fn connect(&mut self) -> Result<&mut Conn, LinkError> {
        if self.conn.is_none() {
            let now = Instant::now();
            if let Some(at) = self.reconnect_at.filter(|&at| at > now) {
                return Err(LinkError::Down {
                    retry_in: at - now,
                    cause: self.last_cause.clone(),
                });
            }
            match open(self.cfg.clone(), self.timeout, &self.wire).await {
                Ok(conn) => {
                    self.conn = Some(conn);
                    self.backoff.reset();
                    self.reconnect_at = None;
                }
                Err(e) => {
                    self.reconnect_at = Some(Instant::now() + self.backoff.fail());
                    self.last_cause = e.to_string();
                    return Err(e);
                }
            }
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Waits out `inter_request_delay_ms` after the previous request (an extra on top of the
    /// RTU silence, for slow slaves).
    /// (Not an `async fn` of `&self`: the bus task's future must stay `Send`, and the link
    /// is not `Sync`.)
    fn pace(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let at = self
            .last_request_end
            .map(|end| end + self.inter_request_delay);
        async move {
            if let Some(at) = at {
                // A zero delay (every TCP bus by default) is due at once: no timer.
                super::sleep_until(at).await;
            }
        }
    }

    /// Notes the request's end and drops a connection that cannot be trusted for the next one:
    /// any TCP fault (a late or partial answer may still be in the pipe), a broken stream. An
    /// RTU line stays open: it drains itself before the next request.
    fn settle<T>(&mut self, reply: Reply<T>) -> Reply<T> {
        self.last_request_end = Some(Instant::now());
        if let Err(LinkError::Protocol(Fault::Crc, _)) = &reply {
            self.wire.crc_errors.fetch_add(1, Relaxed);
        }
        if let Some(Conn::Rtu(rtu)) = &mut self.conn {
            self.wire.frame_gaps.fetch_add(rtu.take_gaps(), Relaxed);
            self.wire.late.fetch_add(rtu.take_late(), Relaxed);
        }
        if matches!(
            (&reply, &self.conn),
            (Err(LinkError::Transport(_)), _) | (Err(_), Some(Conn::Tcp(_)))
        ) {
            self.conn = None;
        }
        reply
    }

    pub async fn read(&mut self, unit: u8, table: Table, address: u16, count: u16) -> Reply<Data> {
        self.read_within(unit, table, address, count, self.timeout)
            .await
    }

    /// A read with its own deadline (a scan's short probe of a unit that may not exist).
    pub async fn read_within(
        &mut self,
        unit: u8,
        table: Table,
        address: u16,
        count: u16,
        deadline: Duration,
    ) -> Reply<Data> {
        self.pace().await;
        let reply = match self.connect().await? {
            Conn::Rtu(rtu) => rtu.read(unit, table, address, count, deadline).await,
            Conn::Tcp(ctx) => {
                let reply = tcp_call(ctx, unit, deadline, move |ctx| {
                    Box::pin(async move {
                        Ok(match table {
                            Table::Coil => ctx.read_coils(address, count).await?.map(Data::Bits),
                            Table::Discrete => ctx
                                .read_discrete_inputs(address, count)
                                .await?
                                .map(Data::Bits),
                            Table::Input => ctx
                                .read_input_registers(address, count)
                                .await?
                                .map(Data::Registers),
                            Table::Holding => ctx
                                .read_holding_registers(address, count)
                                .await?
                                .map(Data::Registers),
                        })
                    })
                })
                .await;
                check_length(reply, count)
            }
        };
        self.settle(reply)
    }

    pub async fn write(&mut self, unit: u8, address: u16, op: WriteOp) -> Reply<()> {
        self.pace().await;
        let deadline = self.timeout;
        let reply = match self.connect().await? {
            Conn::Rtu(rtu) => rtu.write(unit, address, &op, deadline).await,
            Conn::Tcp(ctx) => {
                tcp_call(ctx, unit, deadline, move |ctx| {
                    Box::pin(async move {
                        match op {
                            WriteOp::Coil(b) => ctx.write_single_coil(address, b).await,
                            WriteOp::Coils(bs) => ctx.write_multiple_coils(address, &bs).await,
                            WriteOp::Register(r) => ctx.write_single_register(address, r).await,
                            WriteOp::Registers(rs) => {
                                ctx.write_multiple_registers(address, &rs).await
                            }
                        }
                    })
                })
                .await
            }
        };
        self.settle(reply)
    }
}

/// Opens the link. A free function over owned values: the future must not borrow the
/// (non-`Sync`) client context it is about to replace.
async fn open(
    cfg: config::Link,
    connect_timeout: Duration,
    wire: &Arc<Wire>,
) -> Result<Conn, LinkError> {
    let target = describe(&cfg);
    let fail = |reason: String| LinkError::Connect {
        target: target.clone(),
        reason,
    };
    let tcp = |address: String| async move {
        let stream = timeout(
            connect_timeout.max(Duration::from_secs(1)),
            tokio::net::TcpStream::connect(address),
        )
        .await
        .map_err(|_| fail("connect timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
        // One small request at a time: Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        Ok::<_, LinkError>(stream)
    };
    match cfg {
        config::Link::Tcp { address } => Ok(Conn::Tcp(tokio_modbus::client::tcp::attach(
            Counted::new(tcp(address).await?, wire.clone()),
        ))),
        config::Link::RtuOverTcp { address } => Ok(Conn::Rtu(Rtu::new(
            Box::new(Counted::new(tcp(address).await?, wire.clone())),
            LineTiming::NONE,
        ))),
        config::Link::Rtu {
            port,
            baud,
            parity,
            data_bits,
            stop_bits,
        } => {
            use tokio_serial::SerialPortBuilderExt;
            let stream = tokio_serial::new(&port, baud)
                .parity(match parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .data_bits(match data_bits {
                    5 => tokio_serial::DataBits::Five,
                    6 => tokio_serial::DataBits::Six,
                    7 => tokio_serial::DataBits::Seven,
                    _ => tokio_serial::DataBits::Eight,
                })
                .stop_bits(if stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                })
                .open_native_async()
                .map_err(|e| fail(serial_cause(&port, &e)))?;
            let timing = LineTiming::serial(baud, parity, data_bits, stop_bits);
            wire.char_ns
                .store(timing.char_time.as_nanos() as u64, Relaxed);
            Ok(Conn::Rtu(Rtu::new(
                Box::new(Counted::new(stream, wire.clone())),
                timing,
            )))
        }
    }
}

/// Why a serial port did not open, with what a technician does about it: the two causes met
/// on every new box are a wrong name and a user outside `dialout`.
fn serial_cause(port: &str, e: &tokio_serial::Error) -> String {
    use std::io::ErrorKind;
    match e.kind {
        tokio_serial::ErrorKind::NoDevice | tokio_serial::ErrorKind::Io(ErrorKind::NotFound) => {
            format!(
                "{e}: no port {port} (see `ls /dev/serial/by-id/ /dev/ttyUSB* /dev/ttyAMA* \
                 /dev/ttySC*`; a /dev/serial/by-id/ name survives replugging)"
            )
        }
        tokio_serial::ErrorKind::Io(ErrorKind::PermissionDenied) => format!(
            "{e}: no access to {port} (is the user in the dialout group? the systemd unit adds \
             it; for a login: sudo usermod -aG dialout $USER, then log in again)"
        ),
        _ => e.to_string(),
    }
}

/// One Modbus TCP request through tokio-modbus, its errors sorted into link faults.
async fn tcp_call<T>(
    ctx: &mut Context,
    unit: u8,
    deadline: Duration,
    f: impl for<'a> FnOnce(
        &'a mut Context,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = tokio_modbus::Result<T>> + Send + 'a>,
    >,
) -> Reply<T> {
    ctx.set_slave(Slave(unit));
    match timeout(deadline, f(ctx)).await {
        Err(_) => Err(LinkError::Timeout(deadline)),
        Ok(Err(tokio_modbus::Error::Transport(e))) => {
            // A frame that does not decode, or bytes left over when the peer hung up (an SSH or
            // HTTP server on the port): its bytes stay out of the text (a peer sending noise
            // must not write a new log line, or garbage, on every poll).
            let not_modbus = e.kind() == std::io::ErrorKind::InvalidData
                || e.to_string().contains("bytes remaining");
            Err(if not_modbus {
                LinkError::Protocol(
                    Fault::Garbage,
                    "the peer did not answer with Modbus TCP (is this the right port?)".into(),
                )
            } else {
                LinkError::Transport(tcp_lost(&e))
            })
        }
        // The answer to another request, or another function's exception (0x90 to a read):
        // a link fault, never taken for this request's answer or exception.
        Ok(Err(tokio_modbus::Error::Protocol(e))) => Err(match e {
            ProtocolError::HeaderMismatch { .. } => LinkError::Protocol(
                Fault::Id,
                "answer does not match the request (transaction or unit id)".into(),
            ),
            ProtocolError::FunctionCodeMismatch { request, result } => {
                let got = match result {
                    Ok(r) => r.function_code().value(),
                    Err(x) => x.function.value() | 0x80,
                };
                LinkError::Protocol(
                    Fault::Function,
                    format!(
                        "answer has function code 0x{got:02X}, the request 0x{:02X}",
                        request.value()
                    ),
                )
            }
        }),
        Ok(Ok(Err(code))) => Ok(Err(Exception(u8::from(code)))),
        Ok(Ok(Ok(v))) => Ok(Ok(v)),
    }
}

/// A read whose answer does not hold exactly what was asked (3 registers asked, 5 given) is a
/// link fault: its values cannot be placed.
fn check_length(reply: Reply<Data>, count: u16) -> Reply<Data> {
    let (got, unit) = match &reply {
        Ok(Ok(Data::Registers(r))) => (r.len(), "registers"),
        // tokio-modbus trims bits to the count asked; fewer is a short answer.
        Ok(Ok(Data::Bits(b))) => (b.len(), "bits"),
        _ => return reply,
    };
    if got == usize::from(count) {
        return reply;
    }
    Err(LinkError::Protocol(
        Fault::Length,
        format!("answer has {got} {unit}, the request {count}"),
    ))
}

fn describe(cfg: &config::Link) -> String {
    match cfg {
        config::Link::Tcp { address } => format!("tcp {address}"),
        config::Link::RtuOverTcp { address } => format!("rtu over tcp {address}"),
        config::Link::Rtu { port, baud, .. } => format!("rtu {port} @{baud}"),
    }
}

#[cfg(test)]
mod tests {
    use super::serial_cause;
    use super::{Duration, LinkError};
    use std::io::ErrorKind;

    /// The pace before a request is a timer only when a wait is still ahead: a zero delay
    /// (every TCP bus by default) is ready at its first poll, with no timer rounded up to the
    /// wheel's next millisecond.
    #[tokio::test]
    async fn a_request_already_due_waits_on_no_timer() {
        use std::future::Future;
        let cfg = || crate::config::Link::Tcp {
            address: "127.0.0.1:502".into(),
        };
        let first_poll = |link: &super::Link| {
            let mut pace = std::pin::pin!(link.pace());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            pace.as_mut().poll(&mut cx).is_ready()
        };
        let mut due = super::Link::new(cfg(), Duration::from_secs(1), Duration::ZERO);
        assert!(first_poll(&due), "no request yet");
        due.last_request_end = Some(super::Instant::now());
        assert!(first_poll(&due), "a zero delay is due at once");
        let mut ahead = super::Link::new(cfg(), Duration::from_secs(1), Duration::from_secs(5));
        ahead.last_request_end = Some(super::Instant::now());
        assert!(!first_poll(&ahead), "a delay still ahead is waited");
    }

    #[test]
    fn a_link_down_names_its_cause_and_waits_in_whole_seconds() {
        let e = LinkError::Down {
            retry_in: Duration::from_nanos(352_642_378),
            cause: "cannot connect to 10.0.0.5:502: Connection refused (os error 111)".into(),
        };
        assert_eq!(
            e.to_string(),
            "link down (cannot connect to 10.0.0.5:502: Connection refused (os error 111)); \
             next connect attempt in 1 s"
        );
    }

    #[test]
    fn a_missing_port_and_a_refused_one_say_what_to_do() {
        let e = tokio_serial::Error::new(
            tokio_serial::ErrorKind::Io(ErrorKind::NotFound),
            "No such file or directory",
        );
        let s = serial_cause("/dev/ttyUSB9", &e);
        assert!(
            s.starts_with("No such file or directory: no port /dev/ttyUSB9"),
            "{s}"
        );
        assert!(s.contains("/dev/serial/by-id/"), "{s}");
        let e = tokio_serial::Error::new(
            tokio_serial::ErrorKind::Io(ErrorKind::PermissionDenied),
            "Permission denied",
        );
        assert!(serial_cause("/dev/ttyAMA0", &e).contains("dialout"));
    }
}
