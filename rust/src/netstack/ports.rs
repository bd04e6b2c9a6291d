//! Local ports of the stack's addresses, per protocol: what is listened
//! on or bound is reserved; outgoing connections take ephemeral ports in
//! turn (RFC 6056's simple sequential choice), so a port freed a moment
//! ago is the last to be taken again. Shared by the handle (which reserves
//! synchronously, so a clash is an error at the call) and the thread (which
//! frees ports when their sockets go).

use std::collections::HashSet;
use std::sync::Mutex;

use crate::sync::lock;

pub(crate) const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Proto {
    Tcp,
    Udp,
}

#[derive(Default)]
struct Table {
    used: HashSet<u16>,
    next: u16,
}

impl Table {
    fn allocate(&mut self) -> Option<u16> {
        let span = usize::from(EPHEMERAL.end() - EPHEMERAL.start()) + 1;
        for _ in 0..span {
            let offset = self.next % (EPHEMERAL.end() - EPHEMERAL.start() + 1);
            self.next = self.next.wrapping_add(1);
            let port = EPHEMERAL.start() + offset;
            if self.used.insert(port) {
                return Some(port);
            }
        }
        None
    }
}

#[derive(Default)]
pub(crate) struct Ports {
    tables: Mutex<[Table; 2]>,
}

impl Ports {
    fn with<R>(&self, proto: Proto, f: impl FnOnce(&mut Table) -> R) -> R {
        let mut tables = lock(&self.tables);
        f(&mut tables[proto as usize])
    }

    /// Reserves `port`, or any free ephemeral port for 0; None if taken
    /// (or, for 0, none is free).
    pub(crate) fn reserve(&self, proto: Proto, port: u16) -> Option<u16> {
        self.with(proto, |t| match port {
            0 => t.allocate(),
            p if t.used.insert(p) => Some(p),
            _ => None,
        })
    }

    pub(crate) fn release(&self, proto: Proto, port: u16) {
        self.with(proto, |t| t.used.remove(&port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_ports_go_in_turn_and_skip_reserved() {
        let ports = Ports::default();
        assert_eq!(ports.reserve(Proto::Tcp, 49153), Some(49153));
        assert_eq!(ports.reserve(Proto::Tcp, 0), Some(49152));
        assert_eq!(ports.reserve(Proto::Tcp, 0), Some(49154));
        ports.release(Proto::Tcp, 49152);
        assert_eq!(ports.reserve(Proto::Tcp, 0), Some(49155));
        assert_eq!(ports.reserve(Proto::Tcp, 49153), None);
        assert_eq!(ports.reserve(Proto::Udp, 49153), Some(49153));
    }

    #[test]
    fn every_ephemeral_port_can_be_taken_then_none() {
        let ports = Ports::default();
        let n = EPHEMERAL.count();
        for _ in 0..n {
            assert!(ports.reserve(Proto::Udp, 0).is_some());
        }
        assert_eq!(ports.reserve(Proto::Udp, 0), None);
    }
}
