//! Modbus: the codec, the read planner, the bus scheduler, one-off client calls and the simulator.

pub mod bus;
pub mod codec;
pub mod counted;
pub mod frame;
pub mod image;
pub mod link;
pub mod plan;
pub mod reply;
pub mod request;
pub mod rtu;
pub mod simulator;

/// Sleeps until `at`, and not at all once it has come. Tokio's timer rounds a deadline up to
/// its next millisecond, so a deadline just past (a zero inter-request delay, a device already
/// due) was a wait of up to 1 ms and, being the wheel's earliest timer, a wake of the thread's
/// event wait through its eventfd: ~500 extra wake-ups a second on 10 × 50 × 30.
pub(crate) async fn sleep_until(at: tokio::time::Instant) {
    if at > tokio::time::Instant::now() {
        tokio::time::sleep_until(at).await;
    }
}
