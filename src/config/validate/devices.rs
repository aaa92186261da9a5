//! Buses, devices (with templates and pieces of a large config) and points.

use std::collections::HashSet;
use std::time::Duration;

use super::{
    valid_host_port, BTreeMap, Bus, ByteOrder, DataType, Device, Format, KeyPath, Link, Parity,
    Point, RawBus, RawDevice, RawPoint, RawTemplate, Table, Validator, WordOrder, TYPES,
};

impl Validator {
    pub(super) fn buses(&mut self, raw: Vec<RawBus>) -> Vec<Bus> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, b) in raw.into_iter().enumerate() {
            let p = KeyPath::default().key("buses").index(i);
            if self.required(&p.key("name"), b.name.is_empty()) {
            } else if !seen.insert(b.name.clone()) {
                self.err(&p.key("name"), format!("duplicate bus `{}`", b.name));
            }
            let link = self.link(&p, &b);
            if let Link::Rtu { port, .. } = &link {
                if let Some(other) = out.iter().find(
                    |o: &&Bus| matches!(&o.link, Link::Rtu { port: theirs, .. } if theirs == port),
                ) {
                    self.err(
                        &p.key("port"),
                        format!(
                            "{port} is already bus `{}`: one serial port is one bus (put all its devices on that bus)",
                            other.name
                        ),
                    );
                }
            }
            out.push(Bus {
                name: b.name,
                link,
                timeout: Duration::from_millis(self.int(
                    &p.key("timeout_ms"),
                    b.timeout_ms,
                    500,
                    1,
                    60_000,
                ) as u64),
                retries: self.int(&p.key("retries"), b.retries, 2, 0, 10) as u32,
                inter_request_delay: Duration::from_millis(self.int(
                    &p.key("inter_request_delay_ms"),
                    b.inter_request_delay_ms,
                    0,
                    0,
                    10_000,
                ) as u64),
            });
        }
        out
    }

    /// The link of a bus: TCP with its address, or RTU with its port and line settings; a key
    /// of the other kind is a mistake worth naming.
    fn link(&mut self, p: &KeyPath, b: &RawBus) -> Link {
        match b.kind.as_str() {
            kind @ ("tcp" | "rtu_over_tcp") => {
                for (key, present) in [
                    ("port", b.port.is_some()),
                    ("baud", b.baud.is_some()),
                    ("parity", b.parity.is_some()),
                    ("data_bits", b.data_bits.is_some()),
                    ("stop_bits", b.stop_bits.is_some()),
                ] {
                    if present {
                        self.err(&p.key(key), "only applies to kind = \"rtu\"");
                    }
                }
                let address = b.address.clone().unwrap_or_default();
                if b.address.is_none() {
                    self.err(
                        p,
                        format!("kind = \"{kind}\" needs address = \"host:port\""),
                    );
                } else if !valid_host_port(&address) {
                    self.err(&p.key("address"), format!("`{address}` is not host:port"));
                }
                if kind == "tcp" {
                    Link::Tcp { address }
                } else {
                    Link::RtuOverTcp { address }
                }
            }
            "rtu" => {
                if b.address.is_some() {
                    self.err(
                        &p.key("address"),
                        "only applies to kind = \"tcp\" or \"rtu_over_tcp\"",
                    );
                }
                let port = b.port.clone().unwrap_or_default();
                if port.is_empty() {
                    self.err(p, "kind = \"rtu\" needs port = \"/dev/ttyUSB0\"");
                }
                let parity = match b.parity.as_deref().unwrap_or("none") {
                    "none" => Parity::None,
                    "even" => Parity::Even,
                    "odd" => Parity::Odd,
                    other => {
                        self.err(
                            &p.key("parity"),
                            format!("unknown parity `{other}` (expected none, even or odd)"),
                        );
                        Parity::None
                    }
                };
                let stop_bits = self.int(&p.key("stop_bits"), b.stop_bits, 1, 1, 2) as u8;
                Link::Rtu {
                    port,
                    baud: self.int(&p.key("baud"), b.baud, 9600, 50, 4_000_000) as u32,
                    parity,
                    data_bits: self.int(&p.key("data_bits"), b.data_bits, 8, 5, 8) as u8,
                    stop_bits,
                }
            }
            other => {
                if !self.required(&p.key("kind"), other.is_empty()) {
                    self.err(
                        &p.key("kind"),
                        format!("unknown bus kind `{other}` (expected rtu, tcp or rtu_over_tcp)"),
                    );
                }
                Link::Tcp {
                    address: String::new(),
                }
            }
        }
    }

    pub(super) fn order<T>(
        &mut self,
        p: &KeyPath,
        v: Option<&str>,
        default: T,
        parse: fn(&str) -> Option<T>,
    ) -> T {
        match v {
            None => default,
            Some(s) => parse(s).unwrap_or_else(|| {
                self.err(p, format!("unknown order `{s}` (expected big or little)"));
                default
            }),
        }
    }

    pub(super) fn devices(
        &mut self,
        raw: impl Iterator<Item = RawDevice>,
        buses: &[Bus],
        templates: &BTreeMap<String, RawTemplate>,
    ) -> Vec<Device> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, mut d) in raw.enumerate() {
            let p = KeyPath::default().key("devices").index(i);
            if self.required(&p.key("id"), d.id.is_empty()) {
            } else if d.id.contains(['/', '+', '#']) {
                // The id is one level of the MQTT topics (`devices/{device}/…`).
                self.err(&p.key("id"), "must not contain `/`, `+` or `#`");
            } else if !seen.insert(d.id.clone()) {
                self.err(&p.key("id"), format!("duplicate device `{}`", d.id));
            }
            let bus = if let Some(b) = buses.iter().position(|b| b.name == d.bus) {
                b
            } else if self.required(&p.key("bus"), d.bus.is_empty()) {
                0
            } else {
                self.err(&p.key("bus"), format!("unknown bus `{}`", d.bus));
                0
            };
            self.required(&p.key("unit"), d.unit.is_none());
            let unit = self.int(&p.key("unit"), d.unit, 1, 1, 247) as u8;
            let byte_order = self.order(
                &p.key("byte_order"),
                d.byte_order.as_deref(),
                ByteOrder::Big,
                ByteOrder::parse,
            );
            let word_order = self.order(
                &p.key("word_order"),
                d.word_order.as_deref(),
                WordOrder::Big,
                WordOrder::parse,
            );
            let max_regs = self.int(
                &p.key("max_registers_per_read"),
                d.max_registers_per_read,
                125,
                1,
                125,
            ) as u16;
            let raw_points = self.raw_points(&p, &mut d, templates);
            let mut ids = HashSet::new();
            let mut points = Vec::new();
            for (pp, rp) in raw_points {
                if !ids.insert(rp.id.clone()) {
                    self.err(
                        &pp.key("id"),
                        format!("duplicate point `{}` in device `{}`", rp.id, d.id),
                    );
                }
                if let Some(pt) = self.point(&pp, rp, byte_order, word_order, max_regs) {
                    points.push((pp, pt));
                }
            }
            self.warn_overlaps(&points);
            out.push(Device {
                id: d.id,
                device_type: d.device_type,
                bus,
                unit,
                poll_interval: Duration::from_millis(self.int(
                    &p.key("poll_interval_ms"),
                    d.poll_interval_ms,
                    1000,
                    10,
                    86_400_000,
                ) as u64),
                max_registers_per_read: max_regs,
                max_gap: self.int(&p.key("max_gap"), d.max_gap, 8, 0, 125) as u16,
                offline_after: self.int(&p.key("offline_after"), d.offline_after, 3, 1, 1000)
                    as u32,
                points: points.into_iter().map(|(_, pt)| pt).collect(),
            });
        }
        out
    }

    /// A device's points: the template's first, then its own; each keeps the key path it was
    /// written at so problems point at the right line.
    fn raw_points(
        &mut self,
        p: &KeyPath,
        d: &mut RawDevice,
        templates: &BTreeMap<String, RawTemplate>,
    ) -> Vec<(KeyPath, RawPoint)> {
        let mut raw_points: Vec<(KeyPath, RawPoint)> = Vec::new();
        if !d.template.is_empty() {
            match templates.get(&d.template) {
                Some(t) => raw_points.extend(t.points.iter().enumerate().map(|(j, rp)| {
                    (
                        KeyPath::default()
                            .key("templates")
                            .key(&d.template)
                            .key("points")
                            .index(j),
                        rp.clone(),
                    )
                })),
                None => self.err(
                    &p.key("template"),
                    format!("unknown template `{}`", d.template),
                ),
            }
        }
        raw_points.extend(
            std::mem::take(&mut d.points)
                .into_iter()
                .enumerate()
                .map(|(j, rp)| (p.key("points").index(j), rp)),
        );
        if raw_points.is_empty() {
            self.err(
                p,
                format!(
                    "device `{}` has no points (give it points or a template)",
                    d.id
                ),
            );
        }
        raw_points
    }

    pub(super) fn point(
        &mut self,
        p: &KeyPath,
        rp: RawPoint,
        bo: ByteOrder,
        wo: WordOrder,
        max_regs: u16,
    ) -> Option<Point> {
        let (table, data_type) = self.point_kind(p, &rp)?;
        let (length, bit) = self.point_shape(p, &rp, table, data_type, max_regs)?;
        let scale = rp.scale.unwrap_or(1.0);
        if scale == 0.0 || !scale.is_finite() {
            self.err(&p.key("scale"), "must be a non-zero number");
        }
        let offset = rp.offset.unwrap_or(0.0);
        if !offset.is_finite() {
            self.err(&p.key("offset"), "must be a finite number");
        }
        let format = Format {
            table,
            data_type,
            length,
            bit,
            byte_order: self.order(
                &p.key("byte_order"),
                rp.byte_order.as_deref(),
                bo,
                ByteOrder::parse,
            ),
            word_order: self.order(
                &p.key("word_order"),
                rp.word_order.as_deref(),
                wo,
                WordOrder::parse,
            ),
            scale,
            offset,
        };
        self.point_fits(p, &rp, &format, max_regs);
        let deadband = rp.deadband.unwrap_or(0.0);
        if !(deadband >= 0.0 && deadband.is_finite()) {
            self.err(&p.key("deadband"), "must be 0 or more");
        }
        for (key, v) in [("min", rp.min), ("max", rp.max)] {
            // NaN compares false with everything: `min = nan` made every value "in range".
            if v.is_some_and(|x| !x.is_finite()) {
                self.err(&p.key(key), "must be a finite number");
            }
        }
        if let (Some(lo), Some(hi)) = (rp.min, rp.max) {
            if lo > hi {
                self.err(&p.key("min"), format!("min {lo} is above max {hi}"));
            }
        }
        let report_every_s = self.int(
            &p.key("report_every_s"),
            rp.report_every_s,
            60,
            1,
            86_400 * 7,
        );
        let poll_interval = rp.poll_interval_ms.map(|ms| {
            Duration::from_millis(self.int(
                &p.key("poll_interval_ms"),
                Some(ms),
                1000,
                10,
                86_400_000,
            ) as u64)
        });
        Some(Point {
            id: rp.id,
            address: rp.address.unwrap_or(0) as u16,
            format,
            unit: rp.unit,
            deadband,
            report_every: Duration::from_secs(report_every_s as u64),
            min: rp.min,
            max: rp.max,
            writable: rp.writable,
            poll_interval,
            calculated: false,
        })
    }

    /// The id, table, type and address: without a valid table, type and address nothing else
    /// about the point can be checked.
    fn point_kind(&mut self, p: &KeyPath, rp: &RawPoint) -> Option<(Table, DataType)> {
        let mut ok = true;
        self.required(&p.key("id"), rp.id.is_empty());
        let table = Table::parse(&rp.table);
        if self.required(&p.key("table"), rp.table.is_empty()) {
            ok = false;
        } else if table.is_none() {
            self.err(
                &p.key("table"),
                format!(
                    "unknown table `{}` (expected coil, discrete, input or holding)",
                    rp.table
                ),
            );
            ok = false;
        }
        let data_type = DataType::parse(&rp.data_type);
        if self.required(&p.key("type"), rp.data_type.is_empty()) {
            ok = false;
        } else if data_type.is_none() {
            self.err(
                &p.key("type"),
                format!("unknown type `{}` (expected {TYPES})", rp.data_type),
            );
            ok = false;
        }
        let address = rp.address.unwrap_or(0);
        if self.required(&p.key("address"), rp.address.is_none()) {
            ok = false;
        } else if !(0..=65535).contains(&address) {
            self.err(&p.key("address"), format!("{address} is outside 0..=65535"));
            ok = false;
        }
        let (Some(table), Some(data_type), true) = (table, data_type, ok) else {
            return None;
        };
        Some((table, data_type))
    }

    /// A string's length and a bool's bit, each only where it applies.
    fn point_shape(
        &mut self,
        p: &KeyPath,
        rp: &RawPoint,
        table: Table,
        data_type: DataType,
        max_regs: u16,
    ) -> Option<(u16, Option<u8>)> {
        let length = rp.length.unwrap_or(0);
        if data_type == DataType::String {
            if !(1..=i64::from(max_regs)).contains(&length) {
                self.err(
                    &p.key("length"),
                    format!("a string needs length = 1..={max_regs} registers"),
                );
                return None;
            }
        } else if length != 0 {
            self.err(&p.key("length"), "only applies to type = \"string\"");
        }
        if table.is_bits() && data_type != DataType::Bool {
            self.err(
                &p.key("type"),
                format!("a {table} holds bits: type must be bool"),
            );
            return None;
        }
        let bit = match rp.bit {
            None => None,
            Some(b) if !(0..=15).contains(&b) => {
                self.err(&p.key("bit"), format!("{b} is outside 0..=15"));
                None
            }
            Some(_) if data_type != DataType::Bool => {
                self.err(&p.key("bit"), "only applies to type = \"bool\"");
                None
            }
            Some(_) if table.is_bits() => {
                self.err(&p.key("bit"), format!("a {table} is already one bit"));
                None
            }
            Some(b) => Some(b as u8),
        };
        Some((length as u16, bit))
    }

    /// The point's registers fit the address space and one read, and only coil and holding
    /// points are writable.
    fn point_fits(&mut self, p: &KeyPath, rp: &RawPoint, format: &Format, max_regs: u16) {
        let table = format.table;
        let width = format.width();
        if rp.address.unwrap_or(0) + i64::from(width) > 65536 {
            self.err(
                &p.key("address"),
                format!(
                    "{} registers from {} run past 65535",
                    width,
                    rp.address.unwrap_or(0)
                ),
            );
        }
        if !table.is_bits() && width > max_regs {
            self.err(
                &p.key("type"),
                format!("needs {width} registers, more than max_registers_per_read = {max_regs}"),
            );
        }
        if rp.writable && !matches!(table, Table::Coil | Table::Holding) {
            self.err(
                &p.key("writable"),
                format!("a {table} cannot be written; only coil and holding can"),
            );
        }
    }

    /// Points may share registers (a u16 and its bits), but two different numeric readings of
    /// the same registers are usually a typo.
    pub(super) fn warn_overlaps(&mut self, points: &[(KeyPath, Point)]) {
        for (i, (pa, a)) in points.iter().enumerate() {
            for (_, b) in &points[..i] {
                let same_table = a.format.table == b.format.table;
                let end = |p: &Point| u32::from(p.address) + u32::from(p.format.width());
                let overlap = u32::from(a.address) < end(b) && u32::from(b.address) < end(a);
                let bits = a.format.bit.is_some() || b.format.bit.is_some();
                if same_table && overlap && !bits && a.format.data_type != b.format.data_type {
                    self.warn(
                        &pa.key("address"),
                        format!(
                            "point `{}` ({:?}) overlaps point `{}` ({:?}) on the same registers",
                            a.id, a.format.data_type, b.id, b.format.data_type
                        ),
                    );
                }
            }
        }
    }
}
