//! The receiver-index table (kernel peerlookup.c, wireguard-go indextable.go):
//! the one place where local indices are allocated, looked up and freed.
//!
//! - An index names either our handshake in progress (the initiation we sent,
//!   or the response we are sending) or a keypair.
//! - Indices are random 32-bit values, unique among those in use.
//! - A handshake's index becomes its keypair's (kernel
//!   `wg_index_hashtable_replace`): a response names the index its initiation
//!   carried, and data messages then name the same index.
//! - Whoever drops a handshake or a keypair frees its index here; nothing
//!   else keeps a copy.

use std::collections::HashMap;
use std::sync::Arc;

use rand_core::{OsRng, RngCore};

use crate::session::Keypair;

use super::peer::Peer;

enum Named {
    Handshake,
    Keypair(Arc<Keypair>),
}

#[derive(Default)]
pub(crate) struct IndexTable {
    map: HashMap<u32, (Arc<Peer>, Named)>,
}

impl IndexTable {
    /// A fresh index for `peer`'s handshake in progress.
    pub(crate) fn allocate(&mut self, peer: &Arc<Peer>) -> u32 {
        loop {
            let index = OsRng.next_u32();
            if let std::collections::hash_map::Entry::Vacant(e) = self.map.entry(index) {
                e.insert((peer.clone(), Named::Handshake));
                return index;
            }
        }
    }

    /// The index of a new keypair (its handshake's) now names the keypair.
    pub(crate) fn name_keypair(&mut self, peer: &Arc<Peer>, keypair: &Arc<Keypair>) {
        self.map.insert(
            keypair.local_index,
            (peer.clone(), Named::Keypair(keypair.clone())),
        );
    }

    pub(crate) fn free(&mut self, indices: impl IntoIterator<Item = u32>) {
        for index in indices {
            self.map.remove(&index);
        }
    }

    /// The keypair an index names, with its peer.
    pub(crate) fn keypair(&self, index: u32) -> Option<(Arc<Peer>, Arc<Keypair>)> {
        match self.map.get(&index)? {
            (peer, Named::Keypair(kp)) => Some((peer.clone(), kp.clone())),
            (_, Named::Handshake) => None,
        }
    }

    /// The peer whose handshake in progress an index names.
    pub(crate) fn handshake_peer(&self, index: u32) -> Option<Arc<Peer>> {
        match self.map.get(&index)? {
            (peer, Named::Handshake) => Some(peer.clone()),
            (_, Named::Keypair(_)) => None,
        }
    }

    /// The peer an index belongs to, whatever it names (cookie replies).
    pub(crate) fn peer(&self, index: u32) -> Option<Arc<Peer>> {
        self.map.get(&index).map(|(peer, _)| peer.clone())
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
