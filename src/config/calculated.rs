//! `[[calculated]]` points and `expr` rules as domain types: an expression compiled once, its
//! inputs resolved to (device, point) indexes.

use std::collections::HashMap;

use super::Device;
use crate::expr::{Program, Ty};
use crate::model::format::DataType;

/// A compiled expression and the points it reads, one per name of the program in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Formula {
    /// As written, for the dashboard and the config's summary.
    pub text: String,
    pub program: Program,
    /// (device, point) per input of the program.
    pub inputs: Vec<(usize, usize)>,
}

/// A point computed from others; it is also a point of its device (`Point::calculated`).
#[derive(Debug, Clone, PartialEq)]
pub struct Calculated {
    pub device: usize,
    pub point: usize,
    pub formula: Formula,
}

/// The names an expression may read: a point of its own device by its id, any point as
/// `device.point` (device ids may hold dots themselves, so the name is looked up whole).
pub struct Names<'a> {
    devices: &'a [Device],
    qualified: HashMap<String, (usize, usize)>,
}

impl<'a> Names<'a> {
    pub fn new(devices: &'a [Device]) -> Names<'a> {
        let qualified = devices
            .iter()
            .enumerate()
            .flat_map(|(d, dev)| {
                (dev.points.iter().enumerate())
                    .map(move |(p, pt)| (format!("{}.{}", dev.id, pt.id), (d, p)))
            })
            .collect();
        Names { devices, qualified }
    }

    /// The point `name` means in an expression of device `own`.
    pub fn resolve(&self, own: usize, name: &str) -> Option<(usize, usize)> {
        let local = self
            .devices
            .get(own)
            .and_then(|d| d.points.iter().position(|p| p.id == name));
        local
            .map(|p| (own, p))
            .or_else(|| self.qualified.get(name).copied())
    }

    /// What a point gives an expression; `None` for a string, which it cannot read.
    pub fn ty(&self, (d, p): (usize, usize)) -> Option<Ty> {
        match self.devices[d].points[p].format.data_type {
            DataType::Bool => Some(Ty::Bool),
            DataType::String => None,
            _ => Some(Ty::Number),
        }
    }
}
