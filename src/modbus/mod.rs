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
