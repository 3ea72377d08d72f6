//! The one thread pool of plaid: the load pipeline's I/O threads, the serializer's
//! checksums, conversion's hashing and tensorizer's header reads all run through [`run`].
//!
//! Threads are scoped to one call (they may borrow from the caller's stack) and the calling
//! thread is one of them, so a call with one worker starts no thread at all. Work is pulled
//! from one queue in order; the first error stops the others after their current item.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

/// Run `f` on every item of `items`, on one thread per state in `workers` (the calling
/// thread is one of them), each thread with its own state. The first error stops the
/// others after their current item and is returned; `finish` runs on every worker's state
/// at the end, whatever happened (its error is returned when nothing failed before).
pub(crate) fn run<I, J, W>(
    items: I,
    workers: Vec<W>,
    f: impl Fn(&mut W, J) -> Result<()> + Sync,
    finish: impl Fn(&mut W) -> Result<()> + Sync,
) -> Result<()>
where
    I: Iterator<Item = J> + Send,
    J: Send,
    W: Send,
{
    let queue = Mutex::new(items);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        failed.store(true, Ordering::Relaxed);
        first_error.lock().get_or_insert(e);
    };
    let work = |mut worker: W| {
        while !failed.load(Ordering::Relaxed) {
            let Some(item) = queue.lock().next() else {
                break;
            };
            if let Err(e) = f(&mut worker, item) {
                fail(e);
                break;
            }
        }
        if let Err(e) = finish(&mut worker) {
            fail(e);
        }
    };
    let work = &work;
    let mut workers = workers.into_iter();
    let first = workers.next();
    std::thread::scope(|scope| {
        for worker in workers {
            scope.spawn(move || work(worker));
        }
        if let Some(worker) = first {
            work(worker);
        }
    });
    first_error.into_inner().map_or(Ok(()), Err)
}

/// [`run`] with `threads` stateless workers.
pub(crate) fn for_each<I, J>(
    items: I,
    threads: usize,
    f: impl Fn(J) -> Result<()> + Sync,
) -> Result<()>
where
    I: Iterator<Item = J> + Send,
    J: Send,
{
    run(
        items,
        vec![(); threads.max(1)],
        |_, item| f(item),
        |_| Ok(()),
    )
}

/// The number of threads to use when the caller asked for `threads` (0: one per core).
pub(crate) fn threads_or_cores(threads: usize) -> usize {
    // Asked once: the answer reads cgroup files, which costs more than opening a small file.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if threads > 0 {
        threads
    } else {
        *CORES.get_or_init(|| std::thread::available_parallelism().map_or(4, |n| n.get()))
    }
}

/// Permits for CPU-bound work: threads waiting on I/O may outnumber the cores, but no
/// more than `permits` of them verify or copy at once.
pub(crate) struct Permits {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Permits {
    /// `permits` permits (at least one).
    pub(crate) fn new(permits: usize) -> Permits {
        Permits {
            free: Mutex::new(permits.max(1)),
            freed: Condvar::new(),
        }
    }

    /// Wait for a permit; it is given back when the guard drops.
    pub(crate) fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock();
        while *free == 0 {
            self.freed.wait(&mut free);
        }
        *free -= 1;
        Permit { permits: self }
    }
}

/// A held permit.
pub(crate) struct Permit<'p> {
    permits: &'p Permits,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.permits.free.lock() += 1;
        self.permits.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_item_runs_once_and_the_first_error_stops_the_rest() {
        let seen = AtomicUsize::new(0);
        for_each(0..1000, 4, |_| {
            seen.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.load(Ordering::Relaxed), 1000);
        let after = AtomicUsize::new(0);
        let err = for_each(0..1000, 1, |i| {
            if i >= 10 {
                after.fetch_add(1, Ordering::Relaxed);
            }
            if i == 9 {
                return Err(Error::invalid("stop"));
            }
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("stop"));
        assert_eq!(after.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn permits_bound_concurrency() {
        let permits = Permits::new(2);
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        for_each(0..64, 8, |_| {
            let _p = permits.acquire();
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_micros(200));
            inside.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert!(most.load(Ordering::SeqCst) <= 2);
    }
}
