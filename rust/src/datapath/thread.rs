//! The data plane's threads: named, stoppable, and fatal when they panic.
//!
//! - Each thread has a name (`wgpy-lane0`, `wgpy-crypto0`, `wgpy-handshake`) and
//!   an eventfd that asks it to stop; `Worker::stop` signals it and joins.
//! - A thread that panics takes the whole process down at once: Rust's panic
//!   message names the thread ("thread 'wgpy-lane0' panicked at ..."), a line
//!   of ours follows, then abort(). A daemon with a dead thread would
//!   otherwise stay up while it silently stopped forwarding one way.
//! - `WGPY_TEST_PANIC_THREAD=NAME` makes the thread of that name panic the
//!   first time it wakes up for work (a lane: for datagrams): how the tests
//!   check the rule above.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::sys::EventFd;

pub const TEST_PANIC_ENV: &str = "WGPY_TEST_PANIC_THREAD";

pub(crate) struct Worker {
    stop: Arc<EventFd>,
    handle: JoinHandle<()>,
}

impl Worker {
    /// Starts `f` on a thread called `name`; `f` returns when its eventfd is signalled.
    pub(crate) fn spawn(
        name: &str,
        f: impl FnOnce(&EventFd, &mut Faults) + Send + 'static,
    ) -> io::Result<Self> {
        let stop = Arc::new(EventFd::new()?);
        let signal = stop.clone();
        let thread_name = name.to_string();
        let handle = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                let mut faults = Faults::for_thread(&thread_name);
                if catch_unwind(AssertUnwindSafe(|| f(&signal, &mut faults))).is_err() {
                    eprintln!("wgpy: data-plane thread {thread_name} panicked; aborting");
                    std::process::abort();
                }
            })?;
        Ok(Self { stop, handle })
    }

    pub(crate) fn stop(self) {
        self.stop.signal();
        // A thread that panicked has aborted the process; join cannot fail otherwise.
        let _ = self.handle.join();
    }
}

/// The fault a test asked this thread to suffer (see the module notes).
pub(crate) struct Faults {
    panic_on_wake: bool,
}

impl Faults {
    fn for_thread(name: &str) -> Self {
        let panic_on_wake = std::env::var(TEST_PANIC_ENV).is_ok_and(|v| v == name);
        Self { panic_on_wake }
    }

    /// Called each time the thread wakes up for work.
    pub(crate) fn woke(&mut self) {
        if self.panic_on_wake {
            panic!("{TEST_PANIC_ENV} asked this thread to panic");
        }
    }
}
