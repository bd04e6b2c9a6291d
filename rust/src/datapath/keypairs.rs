//! A peer's three keypair slots (kernel noise.c `noise_keypairs`).
//!
//! - The initiator's new keypair becomes current at once: the old current
//!   moves to previous (a pending next takes previous instead, and the old
//!   current is dropped).
//! - The responder's new keypair goes to next, dropping the old previous; it
//!   is promoted to current only when the first packet arrives under it (key
//!   confirmation), the old current becoming previous.
//! - Packets are sent with current only, while it may still send.
//! - Whatever a change drops is returned as its local indices, for the
//!   caller to free in the index table.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::session::Keypair;

use crate::sync::{read, write};

#[derive(Default)]
struct Slots {
    current: Option<Arc<Keypair>>,
    previous: Option<Arc<Keypair>>,
    next: Option<Arc<Keypair>>,
}

fn indices(kps: &[Option<Arc<Keypair>>]) -> Vec<u32> {
    kps.iter().flatten().map(|k| k.local_index).collect()
}

#[derive(Default)]
pub struct Keypairs {
    slots: RwLock<Slots>,
}

impl Keypairs {
    /// The keypair to send with, if one may send now.
    pub fn sending(&self, now: Duration) -> Option<Arc<Keypair>> {
        read(&self.slots)
            .current
            .as_ref()
            .filter(|k| k.can_send(now))
            .cloned()
    }

    /// The current keypair, whether or not it may still send.
    pub fn current(&self) -> Option<Arc<Keypair>> {
        read(&self.slots).current.clone()
    }

    /// Installs a keypair fresh from a handshake; returns the indices it pushed out.
    pub fn install(&self, new: Arc<Keypair>) -> Vec<u32> {
        let mut s = write(&self.slots);
        if new.is_initiator {
            let dropped = if let Some(next) = s.next.take() {
                let old = [s.current.take(), s.previous.replace(next)];
                indices(&old)
            } else {
                let old = [s.previous.take()];
                s.previous = s.current.take();
                indices(&old)
            };
            s.current = Some(new);
            dropped
        } else {
            let old = [s.next.replace(new), s.previous.take()];
            indices(&old)
        }
    }

    /// Key confirmation: if `kp` is the pending next keypair, it becomes
    /// current. Returns the dropped indices (the old previous), or None if
    /// `kp` was not next.
    pub fn confirm(&self, kp: &Arc<Keypair>) -> Option<Vec<u32>> {
        let is_next = |s: &Slots| s.next.as_ref().is_some_and(|n| Arc::ptr_eq(n, kp));
        if !is_next(&read(&self.slots)) {
            return None; // the common case, under the read lock only
        }
        let mut guard = write(&self.slots);
        let s = &mut *guard;
        if !is_next(s) {
            return None;
        }
        let next = s.next.take();
        let old_previous = std::mem::replace(&mut s.previous, s.current.take());
        s.current = next;
        Some(indices(&[old_previous]))
    }

    /// Stops current and next from sending (our private key changed); they
    /// still receive.
    pub fn expire_sending(&self) {
        let s = read(&self.slots);
        for k in s.current.iter().chain(s.next.iter()) {
            k.invalidate_sending();
        }
    }

    /// Drops all three; returns their indices.
    pub fn clear(&self) -> Vec<u32> {
        let mut s = write(&self.slots);
        let all = [s.current.take(), s.previous.take(), s.next.take()];
        indices(&all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn kp(index: u32, initiator: bool) -> Arc<Keypair> {
        let k = Zeroizing::new([index as u8; 32]);
        Arc::new(
            Keypair::new(&k, &k, index, 1000 + index, Duration::ZERO, initiator).expect("keypair"),
        )
    }

    fn current(k: &Keypairs) -> Option<u32> {
        k.current().map(|k| k.local_index)
    }

    fn previous(k: &Keypairs) -> Option<u32> {
        read(&k.slots).previous.as_ref().map(|k| k.local_index)
    }

    #[test]
    fn initiator_keypair_becomes_current_at_once() {
        let s = Keypairs::default();
        assert!(s.install(kp(1, true)).is_empty());
        assert_eq!(current(&s), Some(1));
        assert!(s.install(kp(2, true)).is_empty());
        assert_eq!(previous(&s), Some(1));
        assert_eq!(s.install(kp(3, true)), vec![1], "old previous is dropped");
        assert_eq!((current(&s), previous(&s)), (Some(3), Some(2)));
    }

    #[test]
    fn responder_keypair_waits_for_confirmation() {
        let s = Keypairs::default();
        s.install(kp(1, true));
        s.install(kp(2, true));
        let n = kp(3, false);
        assert_eq!(
            s.install(n.clone()),
            vec![1],
            "responder install drops previous"
        );
        assert_eq!(current(&s), Some(2), "still sends with the old key");
        assert!(s.confirm(&kp(9, false)).is_none());
        assert_eq!(s.confirm(&n), Some(vec![]));
        assert_eq!((current(&s), previous(&s)), (Some(3), Some(2)));
        assert!(s.confirm(&n).is_none(), "confirmed only once");
    }

    #[test]
    fn initiator_install_demotes_pending_next() {
        let s = Keypairs::default();
        s.install(kp(1, true));
        s.install(kp(2, false));
        assert_eq!(
            s.install(kp(3, true)),
            vec![1],
            "old current is dropped, next becomes previous"
        );
        assert_eq!((current(&s), previous(&s)), (Some(3), Some(2)));
        let mut all = s.clear();
        all.sort();
        assert_eq!(all, vec![2, 3]);
    }

    #[test]
    fn expired_keypairs_stop_sending_but_stay() {
        let s = Keypairs::default();
        s.install(kp(1, true));
        assert!(s.sending(Duration::ZERO).is_some());
        s.expire_sending();
        assert!(s.sending(Duration::ZERO).is_none());
        assert_eq!(current(&s), Some(1));
    }
}
