//! Places shared fairly between peer addresses: a cap over all and one per address, and once
//! every place is taken, the oldest place of the address holding the most goes to a newcomer
//! from a quieter one. A few hosts can fill a cap but never keep another host out: four
//! addresses × 16 sockets kept a technician out of the dashboard (2 of 25 tries), six
//! addresses' idle connections shut `/healthz` out.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::sync::Locked;

/// The places, their caps, and who holds them.
pub struct FairShare {
    max: usize,
    per_address: usize,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    total: usize,
    /// Each address's places, oldest first: an id and the token that tells its holder to go.
    by_address: HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>,
    next_id: u64,
}

/// Why no place was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every place is taken, and no address holds more than the newcomer's would.
    Total,
    /// The address holds its share.
    Address,
}

/// A place held; given back when dropped.
pub struct Place {
    inner: Arc<Mutex<Inner>>,
    from: IpAddr,
    id: u64,
    /// Cancelled when a newcomer took this place: its holder should close at once.
    pub evicted: CancellationToken,
}

impl FairShare {
    pub fn new(max: usize, per_address: usize) -> FairShare {
        FairShare {
            max,
            per_address,
            inner: Arc::default(),
        }
    }

    /// A place for `from`, taking the greediest address's oldest when all are taken.
    pub fn take(&self, from: IpAddr) -> Result<Place, Full> {
        let mut p = self.inner.locked();
        if p.by_address.get(&from).map_or(0, VecDeque::len) >= self.per_address {
            return Err(Full::Address);
        }
        if p.total >= self.max && !p.evict_for(from) {
            return Err(Full::Total);
        }
        let (id, evicted) = (p.next_id, CancellationToken::new());
        p.next_id += 1;
        p.by_address
            .entry(from)
            .or_default()
            .push_back((id, evicted.clone()));
        p.total += 1;
        Ok(Place {
            inner: Arc::clone(&self.inner),
            from,
            id,
            evicted,
        })
    }

    /// Places held now.
    pub fn taken(&self) -> usize {
        self.inner.locked().total
    }
}

impl Inner {
    /// Frees the oldest place of the address holding the most, if it holds more than `from`
    /// would after taking one.
    fn evict_for(&mut self, from: IpAddr) -> bool {
        let mine = self.by_address.get(&from).map_or(0, VecDeque::len);
        let Some((&greediest, held)) = self.by_address.iter_mut().max_by_key(|(_, q)| q.len())
        else {
            return false;
        };
        if held.len() <= mine + 1 {
            return false;
        }
        if let Some((_, token)) = held.pop_front() {
            token.cancel();
            self.total -= 1;
        }
        if held.is_empty() {
            self.by_address.remove(&greediest);
        }
        true
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut p = self.inner.locked();
        // An evicted place was given back when it was taken away.
        let Some(q) = p.by_address.get_mut(&self.from) else {
            return;
        };
        let Some(i) = q.iter().position(|(id, _)| *id == self.id) else {
            return;
        };
        q.remove(i);
        if q.is_empty() {
            p.by_address.remove(&self.from);
        }
        p.total -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: u8, b: u8) -> IpAddr {
        IpAddr::from([10, 0, a, b])
    }

    #[test]
    fn a_newcomer_takes_the_greediest_addresses_oldest_place() {
        let f = FairShare::new(8, 4);
        let mut held: Vec<Place> = (0..4).map(|_| f.take(ip(0, 1)).unwrap()).collect();
        held.extend((0..4).map(|_| f.take(ip(0, 2)).unwrap()));
        assert_eq!(f.take(ip(0, 1)).err(), Some(Full::Address));
        let newcomer = f.take(ip(0, 3)).unwrap();
        assert_eq!(f.taken(), 8);
        // The oldest of one of the two greediest.
        let gone: Vec<usize> = (0..8).filter(|&i| held[i].evicted.is_cancelled()).collect();
        assert!(gone == [0] || gone == [4], "{gone:?}");
        drop(held);
        assert_eq!(f.taken(), 1);
        drop(newcomer);
        assert_eq!(f.taken(), 0);
        // Everyone at one apiece: nobody is turned out for yet another.
        let even: Vec<Place> = (0..8).map(|b| f.take(ip(1, b)).unwrap()).collect();
        assert_eq!(f.take(ip(2, 0)).err(), Some(Full::Total));
        assert!(even.iter().all(|p| !p.evicted.is_cancelled()));
    }
}
