//! The RTU client against a scripted device on an in-memory pipe (virtual time).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

use super::{LineTiming, Rtu};
use crate::config::Parity;
use crate::modbus::codec::Table;
use crate::modbus::frame::{handle_pdu, rtu_frame, rtu_request_len, Memory};
use crate::modbus::reply::{Data, Exception, Fault, LinkError, WriteOp};

const DEADLINE: Duration = Duration::from_millis(200);

/// What the scripted device does with the answer frame it would send.
#[derive(Clone, Copy)]
enum Answer {
    Right,
    /// In three pieces, 2 ms apart.
    Pieces,
    BadCrc,
    OtherUnit,
    Half,
    Garbage,
    /// After the client's deadline has passed (by 100 ms).
    Late,
    /// Right, then the same frame again 2 ms later.
    Twice,
}

/// A device on the other end: answers from a register map, as `script` says for each request
/// (by its number), and records when each request arrived.
/// When things happened on the device's side.
type Times = Arc<Mutex<Vec<Instant>>>;

fn device(script: fn(usize) -> Answer) -> (Rtu, Times, Times) {
    let (ours, mut theirs): (DuplexStream, DuplexStream) = tokio::io::duplex(1024);
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let answered = Arc::new(Mutex::new(Vec::new()));
    let (arr, ans) = (arrivals.clone(), answered.clone());
    tokio::spawn(async move {
        let mut mem = Memory::new(64);
        for (i, r) in mem.holding.iter_mut().enumerate() {
            *r = i as u16 * 10;
        }
        let mut buf = Vec::new();
        let mut n = 0;
        loop {
            let mut chunk = [0u8; 256];
            let Ok(got) = theirs.read(&mut chunk).await else {
                return;
            };
            if got == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..got]);
            let Some(Ok(len)) = rtu_request_len(&buf) else {
                continue;
            };
            if buf.len() < len {
                continue;
            }
            arr.lock().unwrap().push(Instant::now());
            let req: Vec<u8> = buf.drain(..len).collect();
            let mut out = rtu_frame(req[0], &handle_pdu(&mut mem, &req[1..len - 2]));
            let pieces: Vec<Vec<u8>> = match script(n) {
                Answer::Right => vec![out],
                Answer::Twice => vec![out.clone(), out],
                Answer::Late => {
                    tokio::time::sleep(DEADLINE + Duration::from_millis(100)).await;
                    vec![out]
                }
                Answer::Pieces => out.chunks(3).map(<[u8]>::to_vec).collect(),
                Answer::BadCrc => {
                    let l = out.len();
                    out[l - 1] ^= 0xFF;
                    vec![out]
                }
                Answer::OtherUnit => vec![rtu_frame(req[0] + 1, &out[1..out.len() - 2])],
                Answer::Half => vec![out[..out.len() / 2].to_vec()],
                Answer::Garbage => vec![vec![0xFF, 0x00, 0x13, 0x37, 0xAA]],
            };
            n += 1;
            for p in pieces {
                theirs.write_all(&p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ans.lock().unwrap().push(Instant::now());
        }
    });
    let timing = LineTiming::serial(9600, Parity::None, 8, 1);
    (Rtu::new(Box::new(ours), timing), arrivals, answered)
}

async fn read3(rtu: &mut Rtu) -> Result<Result<Data, Exception>, LinkError> {
    rtu.read(1, Table::Holding, 2, 3, DEADLINE).await
}

#[tokio::test(start_paused = true)]
async fn an_answer_in_pieces_is_one_frame() {
    let (mut rtu, _, _) = device(|_| Answer::Pieces);
    assert_eq!(
        read3(&mut rtu).await,
        Ok(Ok(Data::Registers(vec![20, 30, 40])))
    );
}

#[tokio::test(start_paused = true)]
async fn each_fault_has_its_kind_and_the_line_recovers() {
    for (answer, fault) in [
        (Answer::BadCrc, Fault::Crc),
        (Answer::OtherUnit, Fault::Id),
        (Answer::Half, Fault::Truncated),
        (Answer::Garbage, Fault::Garbage),
    ] {
        let script: fn(usize) -> Answer = match answer {
            Answer::BadCrc => |n| {
                if n == 0 {
                    Answer::BadCrc
                } else {
                    Answer::Right
                }
            },
            Answer::OtherUnit => |n| {
                if n == 0 {
                    Answer::OtherUnit
                } else {
                    Answer::Right
                }
            },
            Answer::Half => |n| if n == 0 { Answer::Half } else { Answer::Right },
            _ => |n| {
                if n == 0 {
                    Answer::Garbage
                } else {
                    Answer::Right
                }
            },
        };
        let (mut rtu, _, _) = device(script);
        match read3(&mut rtu).await {
            Err(LinkError::Protocol(f, _)) => assert_eq!(f, fault),
            other => panic!("{fault:?}: {other:?}"),
        }
        assert_eq!(
            read3(&mut rtu).await,
            Ok(Ok(Data::Registers(vec![20, 30, 40]))),
            "{fault:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn exceptions_and_writes() {
    let (mut rtu, _, _) = device(|_| Answer::Right);
    assert_eq!(
        rtu.read(1, Table::Holding, 63, 2, DEADLINE).await,
        Ok(Err(Exception::ILLEGAL_ADDRESS))
    );
    let w = WriteOp::Registers(vec![7, 8]);
    assert_eq!(rtu.write(1, 10, &w, DEADLINE).await, Ok(Ok(())));
    assert_eq!(
        rtu.read(1, Table::Holding, 10, 2, DEADLINE).await,
        Ok(Ok(Data::Registers(vec![7, 8])))
    );
    let c = WriteOp::Coils(vec![true, false, true]);
    assert_eq!(rtu.write(1, 0, &c, DEADLINE).await, Ok(Ok(())));
    assert_eq!(
        rtu.read(1, Table::Coil, 0, 3, DEADLINE).await,
        Ok(Ok(Data::Bits(vec![true, false, true])))
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_device_times_out() {
    let (ours, _theirs) = tokio::io::duplex(64);
    let mut rtu = Rtu::new(Box::new(ours), LineTiming::NONE);
    assert_eq!(read3(&mut rtu).await, Err(LinkError::Timeout(DEADLINE)));
}

#[tokio::test(start_paused = true)]
async fn requests_wait_three_and_a_half_characters_after_the_last_answer() {
    let (mut rtu, arrivals, answered) = device(|_| Answer::Right);
    for _ in 0..5 {
        read3(&mut rtu).await.unwrap().unwrap();
    }
    let silence = LineTiming::serial(9600, Parity::None, 8, 1).silence;
    assert!(silence > Duration::from_micros(3600) && silence < Duration::from_micros(3700));
    let (arrivals, answered) = (arrivals.lock().unwrap(), answered.lock().unwrap());
    for (answer_end, next) in answered.iter().zip(arrivals.iter().skip(1)) {
        // The device notes the end after its 2 ms pause; the line was free 2 ms earlier.
        let gap = *next - (*answer_end - Duration::from_millis(2));
        assert!(gap >= silence, "gap {gap:?}");
    }
}

#[test]
fn line_timing_follows_the_serial_spec() {
    let t = LineTiming::serial(19_200, Parity::Even, 8, 1);
    assert_eq!(
        t.char_time,
        Duration::from_nanos(11 * 1_000_000_000 / 19_200)
    );
    assert_eq!(t.silence, t.char_time * 7 / 2);
    assert_eq!(
        LineTiming::serial(115_200, Parity::None, 8, 1).silence,
        Duration::from_micros(1750)
    );
}

async fn read_at(rtu: &mut Rtu, address: u16) -> Result<Result<Data, Exception>, LinkError> {
    rtu.read(1, Table::Holding, address, 3, DEADLINE).await
}

/// Hostile test: a unit answering 650 ms into a 500 ms timeout had its holding 0-3 reported as
/// the next request's holding 100-103, quality good. The late answer is thrown away and
/// counted; the next request gets its own answer or none.
#[tokio::test(start_paused = true)]
async fn a_late_answer_is_never_taken_for_the_next_request() {
    let (mut rtu, _, _) = device(|n| if n == 0 { Answer::Late } else { Answer::Right });
    assert!(matches!(
        read_at(&mut rtu, 2).await,
        Err(LinkError::Timeout(_))
    ));
    // The next request, same shape, other registers: the late answer (20, 30, 40) arrives
    // while it waits and is not its answer; its own (100, 110, 120) is.
    assert_eq!(
        read_at(&mut rtu, 10).await,
        Ok(Ok(Data::Registers(vec![100, 110, 120])))
    );
    assert_eq!(rtu.take_late(), 1);
}

/// A unit that is always late: every answer is thrown away, every request fails as
/// `link:late`, and no value is ever filed under another request.
#[tokio::test(start_paused = true)]
async fn a_unit_always_late_gives_no_value_at_all() {
    let (mut rtu, _, _) = device(|_| Answer::Late);
    assert!(matches!(
        read_at(&mut rtu, 2).await,
        Err(LinkError::Timeout(_))
    ));
    for address in [10, 20, 30] {
        match read_at(&mut rtu, address).await {
            Err(LinkError::Protocol(Fault::Late, _) | LinkError::Timeout(_)) => {}
            other => panic!("holding {address}: {other:?}"),
        }
    }
    assert!(rtu.take_late() >= 2);
}

/// A retry of the same request may take the first attempt's late answer: it holds the same
/// registers.
#[tokio::test(start_paused = true)]
async fn a_retry_takes_the_same_requests_late_answer() {
    let (mut rtu, _, _) = device(|n| if n == 0 { Answer::Late } else { Answer::Right });
    assert!(read_at(&mut rtu, 2).await.is_err());
    assert_eq!(
        read_at(&mut rtu, 2).await,
        Ok(Ok(Data::Registers(vec![20, 30, 40])))
    );
}

/// A unit that answers twice: the second copy is drained before the next request.
#[tokio::test(start_paused = true)]
async fn an_answer_sent_twice_is_drained_not_taken_for_the_next() {
    let (mut rtu, _, _) = device(|n| if n == 0 { Answer::Twice } else { Answer::Right });
    assert_eq!(
        read_at(&mut rtu, 2).await,
        Ok(Ok(Data::Registers(vec![20, 30, 40])))
    );
    assert_eq!(
        read_at(&mut rtu, 10).await,
        Ok(Ok(Data::Registers(vec![100, 110, 120])))
    );
    assert_eq!(rtu.take_late(), 1);
}
