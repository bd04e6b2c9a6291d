//! The crate's one rule for lock poisoning, stated once; every lock is taken
//! through these helpers.
//!
//! A lock is poisoned when a thread panics while holding it. In wgpy a panic
//! never unwinds past the thread it happened in: a data-plane thread that
//! panics aborts the process (datapath/thread.rs), and the extension module
//! is built with `panic = "abort"` (Cargo.toml), so nobody is left to see a
//! poisoned lock. These helpers therefore take the guard either way; no
//! caller has to invent an error, a silent skip or a fallback for a state
//! that cannot occur.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
