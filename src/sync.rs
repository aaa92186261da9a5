//! Locks that outlive a panic elsewhere: what they guard is plain data that a panicking holder
//! cannot leave half-changed in a way that matters more than stopping the gateway would, so a
//! poisoned lock is used as it is (one idiom, written once).

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub trait Locked<T> {
    /// The guard, even if a panicking thread poisoned the lock.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub trait RwLocked<T> {
    /// A read guard, even if a panicking thread poisoned the lock.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// A write guard, even if a panicking thread poisoned the lock.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLocked<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}
