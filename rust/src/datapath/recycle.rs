//! Batch buffers that come back to the thread that owns them.
//!
//! A lane's batch (64 buffers of up to 64 KiB) may be finished by another
//! thread: a pipeline worker, or the thread draining a peer's send order
//! (sequence.rs). When the last handle to it is dropped, wherever that is,
//! it goes back to its owner's free list, and is reused rather than
//! reallocated.
//!
//! - An owner makes its first batch when it starts and the others as it
//!   needs them, up to its limit; at the limit it waits for one to come
//!   back. That wait is what bounds the work in flight (and so the
//!   pipeline's queue and the memory): every batch out is being finished by
//!   a thread that needs nothing from the waiting one.
//! - A batch whose owner is gone (the lane stopped) is freed instead.

use std::ops::{Deref, DerefMut};

use crossbeam_channel::{bounded, Receiver, Sender};

pub struct Recycler<T> {
    home: Sender<Box<T>>,
    free: Receiver<Box<T>>,
    made: usize,
    limit: usize,
    make: fn() -> T,
}

impl<T> Recycler<T> {
    /// At most `limit` (at least 1) batches made by `make`. The first is
    /// made now, on the owner's thread as it starts: making one (64 buffers
    /// to allocate and fault in) takes milliseconds, which the first packet
    /// through a fresh tunnel would otherwise wait for.
    pub fn new(limit: usize, make: fn() -> T) -> Self {
        let limit = limit.max(1);
        let (home, free) = bounded(limit);
        // Cannot fail: the channel is empty and holds `limit` >= 1.
        let _ = home.try_send(Box::new(make()));
        Self {
            home,
            free,
            made: 1,
            limit,
            make,
        }
    }

    /// A free batch: one that came back, a new one below the limit, or else
    /// the next one to come back.
    pub fn get(&mut self) -> Recycled<T> {
        let item = match self.free.try_recv() {
            Ok(item) => item,
            Err(_) if self.made < self.limit => {
                self.made += 1;
                Box::new((self.make)())
            }
            // Cannot fail: `self` holds a sending end.
            Err(_) => self.free.recv().unwrap_or_else(|_| Box::new((self.make)())),
        };
        Recycled {
            item: Some(item),
            home: self.home.clone(),
        }
    }
}

/// A batch on loan; it goes home when dropped.
pub struct Recycled<T> {
    item: Option<Box<T>>,
    home: Sender<Box<T>>,
}

impl<T> Deref for Recycled<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // Present until drop.
        self.item.as_deref().expect("recycled batch present")
    }
}

impl<T> DerefMut for Recycled<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.item.as_deref_mut().expect("recycled batch present")
    }
}

impl<T> Drop for Recycled<T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            // The owner is gone or already has `limit` back: free it.
            let _ = self.home.try_send(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_back_and_are_reused() {
        let mut r: Recycler<Vec<u8>> = Recycler::new(2, || vec![0u8; 4]);
        let mut a = r.get();
        a[0] = 7;
        let b = r.get();
        drop(a);
        let c = r.get();
        assert_eq!(c[0], 7, "the batch that came back is reused");
        assert_eq!(r.made, 2);
        drop((b, c));
    }

    #[test]
    fn at_the_limit_the_owner_waits_for_one_to_come_back() {
        let mut r: Recycler<u32> = Recycler::new(1, || 5);
        let a = r.get();
        let returner = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(a);
        });
        let b = r.get();
        assert_eq!(*b, 5);
        assert_eq!(r.made, 1, "no second batch was made");
        returner.join().expect("thread");
    }
}
