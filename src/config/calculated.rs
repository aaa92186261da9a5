//! `[[calculated]]` points and `expr` rules as domain types: an expression compiled once, its
//! inputs resolved to (device, point) indexes.

use std::collections::HashMap;

use super::Device;
use crate::expr::{self, Parsed, Program, Ty};
use crate::model::format::DataType;

/// A parsed expression and the point each of its names reads, in the order of its names.
pub type Resolved = (Parsed, Vec<(usize, usize)>);

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

impl Names<'_> {
    /// `text` read with the names of device `own`, and the point each of its names reads; a
    /// name of a string point is a problem. Every problem as a message with its column.
    pub fn parse(&self, own: usize, text: &str) -> Result<Resolved, Vec<String>> {
        let known = |n: &str| self.resolve(own, n).is_some();
        let parsed = expr::parse(text, &known).map_err(|e| vec![e.to_string()])?;
        let inputs: Vec<(usize, usize)> = (parsed.names.iter())
            .filter_map(|n| self.resolve(own, n))
            .collect();
        let strings: Vec<String> = (parsed.names.iter().zip(&inputs))
            .filter(|(_, &input)| self.ty(input).is_none())
            .map(|(n, _)| {
                format!("`{n}` is a string point: an expression reads numbers and true/false")
            })
            .collect();
        if strings.is_empty() {
            Ok((parsed, inputs))
        } else {
            Err(strings)
        }
    }

    /// A standalone expression of device `own` (the Configure view's preview): parsed and
    /// compiled with every point's type as the running config has it.
    pub fn formula(&self, own: usize, text: &str) -> Result<Formula, Vec<String>> {
        let (parsed, inputs) = self.parse(own, text)?;
        let ty_of = |k: usize| self.ty(inputs[k]).unwrap_or(Ty::Number);
        formula(&parsed, &inputs, &ty_of, text)
    }
}

/// Compiled with each input's type, or every type problem with its column.
pub fn formula(
    parsed: &Parsed,
    inputs: &[(usize, usize)],
    ty_of: &dyn Fn(usize) -> Ty,
    text: &str,
) -> Result<Formula, Vec<String>> {
    match parsed.compile(ty_of) {
        Ok(program) => Ok(Formula {
            text: text.to_string(),
            program,
            inputs: inputs.to_vec(),
        }),
        Err(errors) => Err(errors.iter().map(ToString::to_string).collect()),
    }
}
