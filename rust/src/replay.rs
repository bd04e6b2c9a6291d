//! The receive-side sliding window against replayed transport packets.
//!
//! - RFC 6479 as the kernel implements it (`receive.c:counter_validate`): a
//!   ring of 128 64-bit words; the window is 8192 - 64 = 8128 counters.
//! - Counters at or above REJECT_AFTER_MESSAGES are refused.
//! - `check` only looks; `update` marks. The caller runs `update` only after
//!   the AEAD tag has verified, so forged packets cannot move the window.

use crate::session::REJECT_AFTER_MESSAGES;

const BITS_PER_WORD: u64 = 64;
const WORDS: usize = 128;
const BITS_TOTAL: u64 = WORDS as u64 * BITS_PER_WORD;
pub const WINDOW_SIZE: u64 = BITS_TOTAL - BITS_PER_WORD;

#[derive(Clone)]
pub struct ReplayWindow {
    /// One past the greatest counter accepted so far (the kernel's 1-based value).
    last: u64,
    words: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            last: 0,
            words: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self::default()
    }

    /// Would `counter` be accepted? Does not change the window.
    pub fn check(&self, counter: u64) -> bool {
        if self.last > REJECT_AFTER_MESSAGES || counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let c = counter + 1;
        if WINDOW_SIZE + c < self.last {
            return false;
        }
        if c > self.last {
            return true;
        }
        let (word, bit) = Self::slot(c);
        self.words[word] & bit == 0
    }

    /// Accepts `counter` if it is new and inside the window, marking it seen.
    pub fn update(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        let c = counter + 1;
        if c > self.last {
            let index = c / BITS_PER_WORD;
            let current = self.last / BITS_PER_WORD;
            let top = (index - current).min(WORDS as u64);
            for i in 1..=top {
                self.words[((i + current) % WORDS as u64) as usize] = 0;
            }
            self.last = c;
        }
        let (word, bit) = Self::slot(c);
        self.words[word] |= bit;
        true
    }

    /// The greatest counter accepted so far, if any.
    pub fn greatest(&self) -> Option<u64> {
        self.last.checked_sub(1)
    }

    fn slot(c: u64) -> (usize, u64) {
        (
            ((c / BITS_PER_WORD) % WORDS as u64) as usize,
            1u64 << (c % BITS_PER_WORD),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T_LIM: u64 = WINDOW_SIZE + 1;
    const REJECT: u64 = REJECT_AFTER_MESSAGES;

    #[test]
    fn window_is_the_kernels() {
        assert_eq!(WINDOW_SIZE, 8128);
    }

    // The 34 ordered cases of the kernel's selftest/counter.c, on one window.
    #[test]
    fn kernel_counter_selftest_ordered() {
        let cases: [(u64, bool); 34] = [
            (0, true),
            (1, true),
            (1, false),
            (9, true),
            (8, true),
            (7, true),
            (7, false),
            (T_LIM, true),
            (T_LIM - 1, true),
            (T_LIM - 1, false),
            (T_LIM - 2, true),
            (2, true),
            (2, false),
            (T_LIM + 16, true),
            (3, false),
            (T_LIM + 16, false),
            (T_LIM * 4, true),
            (T_LIM * 4 - (T_LIM - 1), true),
            (10, false),
            (T_LIM * 4 - T_LIM, false),
            (T_LIM * 4 - (T_LIM + 1), false),
            (T_LIM * 4 - (T_LIM - 2), true),
            (T_LIM * 4 + 1 - T_LIM, false),
            (0, false),
            (REJECT, false),
            (REJECT - 1, true),
            (REJECT, false),
            (REJECT - 1, false),
            (REJECT - 2, true),
            (REJECT + 1, false),
            (REJECT + 2, false),
            (REJECT - 2, false),
            (REJECT - 3, true),
            (0, false),
        ];
        let mut w = ReplayWindow::new();
        for (i, (counter, ok)) in cases.iter().enumerate() {
            assert_eq!(w.check(*counter), *ok, "case {} check({})", i + 1, counter);
            assert_eq!(
                w.update(*counter),
                *ok,
                "case {} update({})",
                i + 1,
                counter
            );
        }
    }

    fn run(w: &mut ReplayWindow, counters: impl IntoIterator<Item = u64>, ok: bool) {
        for c in counters {
            assert_eq!(w.update(c), ok, "counter {c}");
        }
    }

    #[test]
    fn kernel_counter_selftest_bulk() {
        let w8 = WINDOW_SIZE;
        let mut w = ReplayWindow::new();
        run(&mut w, 1..=w8, true);
        run(&mut w, [0], true);
        run(&mut w, [0], false);

        let mut w = ReplayWindow::new();
        run(&mut w, 2..=w8 + 1, true);
        run(&mut w, [1], true);
        run(&mut w, [0], false);

        let mut w = ReplayWindow::new();
        run(&mut w, (0..=w8).rev(), true);

        let mut w = ReplayWindow::new();
        run(&mut w, (1..=w8 + 1).rev(), true);
        run(&mut w, [0], false);

        let mut w = ReplayWindow::new();
        run(&mut w, (1..=w8).rev(), true);
        run(&mut w, [w8 + 1], true);
        run(&mut w, [0], false);

        let mut w = ReplayWindow::new();
        run(&mut w, (1..=w8).rev(), true);
        run(&mut w, [0], true);
        run(&mut w, [w8 + 1], true);
    }

    #[test]
    fn check_does_not_mark() {
        let mut w = ReplayWindow::new();
        assert!(w.check(5));
        assert!(w.check(5));
        assert_eq!(w.greatest(), None);
        assert!(w.update(5));
        assert!(!w.check(5));
        assert_eq!(w.greatest(), Some(5));
    }
}
