//! The crypto pipeline: persistent worker threads (`wgpy-cryptoN`) that take
//! whole batches from the I/O threads and finish them: seal and send in
//! per-peer order, or open and deliver in per-lane order (sequence.rs).
//!
//! - An I/O thread hands a batch over and goes back to reading at once; it
//!   never waits for the work. (The pool this replaces split each batch,
//!   woke a helper for it and waited for the join: on this 2-vCPU machine
//!   that cost more than it saved for a 64-packet batch.)
//! - Workers stay busy while batches keep coming: a worker that finishes one
//!   takes the next from the queue without sleeping, and only an empty queue
//!   puts it to sleep (crossbeam's channel spins briefly first, and a
//!   submitter wakes a worker only when one sleeps).
//! - With no workers, `submit` runs the job on the calling thread at once:
//!   the same code path, no queue.
//! - The queue is unbounded; what bounds it is the I/O threads' batches
//!   (recycle.rs): a thread that has all of its batches in flight waits for
//!   one to come back before reading more.
//! - Stopping: every worker finishes the jobs queued before the stop.

use std::io;

use crossbeam_channel::{unbounded, Receiver, Sender};

use super::thread::Worker;

enum Task<J> {
    Work(J),
    Stop,
}

/// Work to be done on a pipeline worker (or inline without workers).
pub trait Job: Send + 'static {
    fn run(self);
}

pub struct Pipeline<J> {
    jobs: Sender<Task<J>>,
    queue: Receiver<Task<J>>,
    workers: usize,
}

impl<J: Job> Pipeline<J> {
    /// A pipeline of `workers` threads (none: every job runs where it is
    /// submitted); the threads start with `start`.
    pub fn new(workers: usize) -> Self {
        let (jobs, queue) = unbounded();
        Self {
            jobs,
            queue,
            workers,
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Runs `job` on a worker, or right here when there are none.
    pub fn submit(&self, job: J) {
        if self.workers == 0 {
            return job.run();
        }
        if let Err(e) = self.jobs.send(Task::Work(job)) {
            // Cannot happen: `self` holds the receiving end.
            if let Task::Work(job) = e.into_inner() {
                job.run();
            }
        }
    }

    /// Starts the workers, named `{name}0`, `{name}1`, ...
    pub fn start(&self, name: &str) -> io::Result<Workers<J>> {
        let mut threads = Vec::with_capacity(self.workers);
        for i in 0..self.workers {
            let queue = self.queue.clone();
            threads.push(Worker::spawn(&format!("{name}{i}"), move |_, faults| {
                while let Ok(Task::Work(job)) = queue.recv() {
                    faults.woke();
                    job.run();
                }
            })?);
        }
        Ok(Workers {
            threads,
            stop: self.jobs.clone(),
        })
    }
}

/// The running workers of a pipeline.
pub struct Workers<J> {
    threads: Vec<Worker>,
    stop: Sender<Task<J>>,
}

impl<J> Workers<J> {
    /// Lets every worker finish what was queued before, then joins them.
    pub fn stop(self) {
        for _ in &self.threads {
            // Cannot fail: each worker holds a receiving end until it stops.
            let _ = self.stop.send(Task::Stop);
        }
        for t in self.threads {
            t.stop();
        }
    }
}

/// A job that is a closure (tests and benchmarks).
pub struct Closure(pub Box<dyn FnOnce() + Send>);

impl Job for Closure {
    fn run(self) {
        (self.0)()
    }
}

impl<F: FnOnce() + Send + 'static> From<F> for Closure {
    fn from(f: F) -> Self {
        Closure(Box::new(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::lock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[test]
    fn without_workers_jobs_run_at_once_on_the_caller() {
        let pipeline: Pipeline<Closure> = Pipeline::new(0);
        let here = std::thread::current().id();
        let ran = Arc::new(Mutex::new(None));
        let r = ran.clone();
        pipeline.submit(Closure::from(move || {
            *lock(&r) = Some(std::thread::current().id());
        }));
        assert_eq!(*lock(&ran), Some(here));
    }

    #[test]
    fn workers_run_every_job_and_finish_the_queue_on_stop() {
        let pipeline: Pipeline<Closure> = Pipeline::new(2);
        let done = Arc::new(AtomicUsize::new(0));
        let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
        for _ in 0..1000 {
            let (done, threads) = (done.clone(), threads.clone());
            pipeline.submit(Closure::from(move || {
                let name = std::thread::current().name().map(str::to_string);
                lock(&threads).insert(name);
                done.fetch_add(1, Ordering::Relaxed);
            }));
        }
        // Queued before the workers start: they take it all, then stop.
        let workers = pipeline.start("t-crypto").expect("start");
        workers.stop();
        assert_eq!(done.load(Ordering::Relaxed), 1000);
        let names = lock(&threads).clone();
        assert!(names
            .iter()
            .all(|n| n.as_deref().is_some_and(|n| n.starts_with("t-crypto"))));
    }
}
