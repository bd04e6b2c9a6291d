//! Finishing work in the order it was started, whichever thread finishes it
//! (per-peer send order across lanes and workers; per-lane receive order).
//!
//! - A piece of work takes a ticket when it starts (`ticket`, or
//!   `ticket_with`, which runs a step such as taking send counters under the
//!   same lock, so ticket order is counter order).
//! - `complete` hands the finished work back. Finished work goes to the
//!   sink in ticket order, one at a time, run by whichever completing thread
//!   finds the next ticket ready; a thread that finds the sink busy leaves
//!   its work for the thread draining and returns at once. Nobody waits for
//!   anybody: an I/O thread never blocks behind a slower worker.
//! - Every ticket must be completed, with None when the work came to
//!   nothing; a ticket never completed would stall everything after it.
//! - Every `complete` of one sequencer must pass the same sink function: the
//!   thread draining runs it for the others' work too.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::sync::lock;

pub struct Sequencer<T, S> {
    order: Mutex<Order<T>>,
    /// What the sink function works on; only the draining thread holds it.
    sink: Mutex<S>,
}

struct Order<T> {
    next_ticket: u64,
    /// The ticket the sink takes next.
    next_out: u64,
    /// Finished work from `next_out` on: slot i is ticket next_out + i;
    /// None while that work is still running.
    ready: VecDeque<Option<Option<T>>>,
    draining: bool,
}

impl<T, S> Sequencer<T, S> {
    pub fn new(sink: S) -> Self {
        Self {
            order: Mutex::new(Order {
                next_ticket: 0,
                next_out: 0,
                ready: VecDeque::new(),
                draining: false,
            }),
            sink: Mutex::new(sink),
        }
    }

    /// The next ticket.
    pub fn ticket(&self) -> u64 {
        let mut order = lock(&self.order);
        order.next_ticket += 1;
        order.next_ticket - 1
    }

    /// Runs `step` and, if it gives something, takes a ticket in the same
    /// critical section: tickets come in the order the steps ran.
    pub fn ticket_with<R>(&self, step: impl FnOnce() -> Option<R>) -> Option<(u64, R)> {
        let mut order = lock(&self.order);
        let result = step()?;
        order.next_ticket += 1;
        Some((order.next_ticket - 1, result))
    }

    /// Hands back the work of `ticket` (None: nothing came of it), then
    /// drains what is ready in ticket order if no other thread is draining.
    pub fn complete(&self, ticket: u64, work: Option<T>, mut sink: impl FnMut(&mut S, T)) {
        let mut order = lock(&self.order);
        order.put(ticket, work);
        if order.draining {
            return;
        }
        order.draining = true;
        while let Some(next) = order.take_next() {
            drop(order);
            if let Some(work) = next {
                sink(&mut lock(&self.sink), work);
            }
            order = lock(&self.order);
        }
        order.draining = false;
    }
}

impl<T> Order<T> {
    fn put(&mut self, ticket: u64, work: Option<T>) {
        let Some(slot) = ticket
            .checked_sub(self.next_out)
            .and_then(|s| usize::try_from(s).ok())
        else {
            // A ticket completed twice, or one never given: a bug.
            panic!("sequencer: ticket {ticket} completed out of turn");
        };
        if self.ready.len() <= slot {
            self.ready.resize_with(slot + 1, || None);
        }
        assert!(
            self.ready[slot].is_none(),
            "sequencer: ticket {ticket} completed twice"
        );
        self.ready[slot] = Some(work);
    }

    /// The next ticket's work, if it is finished.
    fn take_next(&mut self) -> Option<Option<T>> {
        if !matches!(self.ready.front(), Some(Some(_))) {
            return None;
        }
        self.next_out += 1;
        self.ready.pop_front().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn any_completion_order_comes_out_in_ticket_order() {
        // Every permutation of 5 completions, some of them empty.
        let orders = permutations(5);
        for perm in orders {
            let seq: Sequencer<u64, Vec<u64>> = Sequencer::new(Vec::new());
            let tickets: Vec<u64> = (0..5).map(|_| seq.ticket()).collect();
            for &i in &perm {
                let work = (tickets[i] != 2).then_some(tickets[i]);
                seq.complete(tickets[i], work, |out, t| out.push(t));
            }
            assert_eq!(*lock(&seq.sink), vec![0, 1, 3, 4], "order {perm:?}");
        }
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut all = Vec::new();
        for p in permutations(n - 1) {
            for at in 0..=p.len() {
                let mut q = p.clone();
                q.insert(at, n - 1);
                all.push(q);
            }
        }
        all
    }

    #[test]
    fn ticket_with_orders_tickets_as_the_steps_ran() {
        let seq: Sequencer<u64, ()> = Sequencer::new(());
        let mut counter = 10;
        let a = seq.ticket_with(|| {
            counter += 1;
            Some(counter)
        });
        let none: Option<(u64, u64)> = seq.ticket_with(|| None);
        let b = seq.ticket_with(|| Some(99));
        assert_eq!(a, Some((0, 11)));
        assert_eq!(none, None, "no ticket when the step gives nothing");
        assert_eq!(b, Some((1, 99)));
    }

    #[test]
    fn threads_completing_concurrently_keep_the_order() {
        const THREADS: u64 = 4;
        const EACH: u64 = 5_000;
        let seq: Arc<Sequencer<u64, Vec<u64>>> = Arc::new(Sequencer::new(Vec::new()));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let seq = seq.clone();
                std::thread::spawn(move || {
                    for _ in 0..EACH {
                        let t = seq.ticket();
                        std::hint::spin_loop();
                        seq.complete(t, Some(t), |out, t| out.push(t));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        let out = lock(&seq.sink);
        assert_eq!(out.len() as u64, THREADS * EACH);
        assert!(out.windows(2).all(|w| w[0] + 1 == w[1]), "in ticket order");
    }
}
