//! The raw registers and bits of a device's last reads, kept for the Modbus server's `mirror`
//! units: filled by the bus task as it decodes a block, read by the server, so a master reading
//! through the gateway costs the field bus nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::{Config, Device, Layout};
use crate::sync::Locked as _;

use super::plan::Block;
use super::reply::Data;

/// Per device (config order): its image when a `mirror` unit serves it, else `None` (the bus
/// then copies nothing).
#[derive(Debug, Default)]
pub struct Images(Vec<Option<Arc<Image>>>);

impl Images {
    /// Images for the devices an enabled server mirrors: the one a reload carried (by device
    /// id, for a device unchanged on a bus handed over: its last reads still good), else empty.
    pub fn for_config(config: &Config, carried: &mut HashMap<String, Arc<Image>>) -> Arc<Images> {
        let mut images: Vec<Option<Arc<Image>>> = vec![None; config.devices.len()];
        let server = &config.modbus_server;
        if server.enabled {
            for u in &server.units {
                if u.layout == Layout::Mirror && images[u.device].is_none() {
                    let dev = &config.devices[u.device];
                    let image = carried
                        .remove(&dev.id)
                        .unwrap_or_else(|| Arc::new(Image::new(dev)));
                    images[u.device] = Some(image);
                }
            }
        }
        Arc::new(Images(images))
    }

    pub fn device(&self, device: usize) -> Option<&Arc<Image>> {
        self.0.get(device).and_then(Option::as_ref)
    }
}

/// One device's raw words, point by point (a bit is a word of 0 or 1), each with whether its
/// last read succeeded.
#[derive(Debug)]
pub struct Image {
    /// Per point: where its words start in `Words::words`, and how many.
    slots: Vec<(usize, usize)>,
    words: Mutex<Words>,
}

#[derive(Debug)]
struct Words {
    words: Vec<u16>,
    /// Per point: whether its last read succeeded (none yet: no).
    good: Vec<bool>,
}

impl Image {
    fn new(device: &Device) -> Image {
        let mut slots = Vec::with_capacity(device.points.len());
        let mut at = 0;
        for p in &device.points {
            let width = usize::from(p.format.width());
            slots.push((at, width));
            at += width;
        }
        Image {
            slots,
            words: Mutex::new(Words {
                words: vec![0; at],
                good: vec![false; device.points.len()],
            }),
        }
    }

    /// An answered block: each of its points' words copied, marked good now.
    pub fn fill(&self, device: &Device, block: &Block, data: &Data) {
        let mut w = self.words.locked();
        for &p in &block.points {
            let Some(&(at, width)) = self.slots.get(p) else {
                continue;
            };
            let off = usize::from(device.points[p].address - block.start);
            let copied = match data {
                Data::Bits(bits) => bits.get(off).map(|&b| w.words[at] = u16::from(b)),
                Data::Registers(regs) => regs
                    .get(off..off + width)
                    .map(|r| w.words[at..at + width].copy_from_slice(r)),
            };
            w.good[p] = copied.is_some();
        }
    }

    /// A block whose read failed: its points are not served until read again.
    pub fn fail(&self, points: &[usize]) {
        let mut w = self.words.locked();
        for &p in points {
            if let Some(g) = w.good.get_mut(p) {
                *g = false;
            }
        }
    }

    /// The words as they are now, held (under the lock) while a server answer is made.
    pub fn hold(&self) -> Held<'_> {
        Held {
            slots: &self.slots,
            words: self.words.locked(),
        }
    }
}

/// An image held still: each point's words, or `None` for one not read good.
pub struct Held<'a> {
    slots: &'a [(usize, usize)],
    words: std::sync::MutexGuard<'a, Words>,
}

impl Held<'_> {
    pub fn get(&self, p: usize) -> Option<&[u16]> {
        let &(at, width) = self.slots.get(p)?;
        if !self.words.good.get(p).copied()? {
            return None;
        }
        Some(&self.words.words[at..at + width])
    }
}
