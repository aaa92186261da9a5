//! Read planning: merges a device's points into as few Modbus requests as its limits allow.

use super::codec::Table;

/// The most bits one read of coils or discrete inputs may ask for (Modbus limit).
pub const MAX_BITS_PER_READ: u16 = 2000;
/// The most registers one read may ask for (Modbus limit).
pub const MAX_REGISTERS_PER_READ: u16 = 125;

/// Where one point sits, as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub table: Table,
    pub address: u16,
    /// Registers, or bits on a bit table.
    pub width: u16,
}

impl Span {
    fn end(self) -> u32 {
        u32::from(self.address) + u32::from(self.width)
    }
}

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    /// Indexes into the device's point list, in address order.
    pub points: Vec<usize>,
}

/// Each of a device's points as the planner sees it, in the device's point order (a block's
/// `points` index into this).
pub fn spans(device: &crate::config::Device) -> Vec<Span> {
    device
        .points
        .iter()
        .map(|p| Span {
            table: p.format.table,
            address: p.address,
            width: p.format.width(),
        })
        .collect()
}

/// Merges the spans into blocks: neighbours join across gaps of at most `max_gap` unused
/// registers (16 × that many bits on bit tables, where a bit costs almost nothing on the wire),
/// and never past `max_registers` (or [`MAX_BITS_PER_READ`] bits).
pub fn plan(spans: &[Span], max_registers: u16, max_gap: u16) -> Vec<Block> {
    plan_some(spans, (0..spans.len()).collect(), max_registers, max_gap)
}

/// [`plan`] for some of the spans (the points polled at one rate); blocks still index into
/// all of them.
pub fn plan_some(
    spans: &[Span],
    mut order: Vec<usize>,
    max_registers: u16,
    max_gap: u16,
) -> Vec<Block> {
    order.sort_by_key(|&i| (spans[i].table, spans[i].address, spans[i].width));
    let mut blocks: Vec<Block> = Vec::new();
    for i in order {
        let s = spans[i];
        let (limit, gap) = if s.table.is_bits() {
            (u32::from(MAX_BITS_PER_READ), u32::from(max_gap) * 16)
        } else {
            (
                u32::from(max_registers.min(MAX_REGISTERS_PER_READ)),
                u32::from(max_gap),
            )
        };
        if let Some(b) = blocks.last_mut() {
            let end = u32::from(b.start) + u32::from(b.count);
            let new_end = end.max(s.end());
            if b.table == s.table
                && u32::from(s.address) <= end + gap
                && new_end - u32::from(b.start) <= limit
            {
                b.count = (new_end - u32::from(b.start)) as u16;
                b.points.push(i);
                continue;
            }
        }
        blocks.push(Block {
            table: s.table,
            start: s.address,
            count: s.width,
            points: vec![i],
        });
    }
    blocks
}

/// Splits a block that the device refused (exception 02) into two halves by point, each
/// trimmed to the registers its points need. `None` for a block of one point: that point is
/// the bad address.
pub fn split(block: &Block, spans: &[Span]) -> Option<(Block, Block)> {
    if block.points.len() < 2 {
        return None;
    }
    let mid = block.points.len() / 2;
    let make = |pts: &[usize]| {
        let start = pts.iter().map(|&i| spans[i].address).min().unwrap_or(0);
        let end = pts.iter().map(|&i| spans[i].end()).max().unwrap_or(0);
        Block {
            table: block.table,
            start,
            count: (end - u32::from(start)) as u16,
            points: pts.to_vec(),
        }
    };
    Some((make(&block.points[..mid]), make(&block.points[mid..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(address: u16, width: u16) -> Span {
        Span {
            table: Table::Holding,
            address,
            width,
        }
    }

    fn ranges(blocks: &[Block]) -> Vec<(Table, u16, u16)> {
        blocks.iter().map(|b| (b.table, b.start, b.count)).collect()
    }

    #[test]
    fn neighbours_merge_across_small_gaps_only() {
        let spans = [reg(0, 2), reg(2, 2), reg(10, 1), reg(30, 2)];
        let b = plan(&spans, 125, 8);
        assert_eq!(
            ranges(&b),
            vec![(Table::Holding, 0, 11), (Table::Holding, 30, 2)]
        );
        assert_eq!(b[0].points, vec![0, 1, 2]);
        let b = plan(&spans, 125, 0);
        assert_eq!(ranges(&b).len(), 3);
    }

    #[test]
    fn never_exceeds_the_device_limit() {
        let spans: Vec<Span> = (0..100).map(|i| reg(i * 2, 2)).collect();
        let b = plan(&spans, 16, 8);
        assert!(b.iter().all(|b| b.count <= 16));
        assert_eq!(b.iter().map(|b| b.points.len()).sum::<usize>(), 100);
        assert_eq!(b.len(), 200 / 16 + 1);
        // A device limit above the protocol's is clamped to 125.
        let b = plan(&spans, 500, 8);
        assert!(b.iter().all(|b| b.count <= 125));
    }

    #[test]
    fn tables_never_mix_and_points_are_sorted() {
        let spans = [
            reg(5, 1),
            Span {
                table: Table::Input,
                address: 5,
                width: 1,
            },
            reg(0, 1),
            Span {
                table: Table::Coil,
                address: 0,
                width: 1,
            },
            Span {
                table: Table::Coil,
                address: 100,
                width: 1,
            },
        ];
        let b = plan(&spans, 125, 8);
        assert_eq!(
            ranges(&b),
            vec![
                (Table::Coil, 0, 101),
                (Table::Input, 5, 1),
                (Table::Holding, 0, 6)
            ]
        );
        assert_eq!(b[2].points, vec![2, 0]);
    }

    #[test]
    fn overlapping_points_share_a_read() {
        // A u32 and a bit of its first register, and a string over both.
        let spans = [reg(10, 2), reg(10, 1), reg(8, 6)];
        let b = plan(&spans, 125, 0);
        assert_eq!(ranges(&b), vec![(Table::Holding, 8, 6)]);
    }

    #[test]
    fn a_point_at_the_top_of_the_address_space_fits() {
        let b = plan(&[reg(65532, 4), reg(0, 1)], 125, 8);
        assert_eq!(
            ranges(&b),
            vec![(Table::Holding, 0, 1), (Table::Holding, 65532, 4)]
        );
    }

    #[test]
    fn splitting_bisects_until_one_point_is_left() {
        let spans = [reg(0, 1), reg(1, 2), reg(7, 1), reg(9, 4)];
        let b = plan(&spans, 125, 8);
        assert_eq!(b.len(), 1);
        let (l, r) = split(&b[0], &spans).unwrap();
        assert_eq!((l.start, l.count, l.points.clone()), (0, 3, vec![0, 1]));
        assert_eq!((r.start, r.count, r.points.clone()), (7, 6, vec![2, 3]));
        let (a, _) = split(&l, &spans).unwrap();
        assert!(split(&a, &spans).is_none());
    }

    #[test]
    fn bits_merge_up_to_2000() {
        let spans: Vec<Span> = (0..3)
            .map(|i| Span {
                table: Table::Discrete,
                address: i * 1000,
                width: 1,
            })
            .collect();
        let b = plan(&spans, 125, 100);
        assert_eq!(b.len(), 2);
        assert!(b.iter().all(|b| b.count <= 2000));
    }
}
