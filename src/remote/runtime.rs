//! The tokio runtime that remote reads and writes run on. Each client owns one (never a
//! global one): created with the client, shut down with a timeout when it is dropped, and
//! replaced, together with everything bound to it, in a process forked after it was made
//! (a forked child has none of the parent's threads, so the parent's runtime would never
//! make progress there). Calls from a thread that is already inside another tokio runtime
//! run on a helper thread, since a runtime cannot block inside another.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// How long dropping a runtime waits for its tasks before leaving them behind.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Threads driving the network (sockets, TLS, timers, and the copies of bodies into their
/// destinations, made beside the socket reads): half the cores, at least 2 and at most 8.
fn driver_threads() -> usize {
    (crate::pool::threads_or_cores(0) / 2).clamp(2, 8)
}

/// The process id, read fresh (a cached value would survive a fork).
fn current_pid() -> u32 {
    std::process::id()
}

/// One runtime together with what was built on it (a client whose connection pool lives on
/// this runtime), for the process that built it.
struct Bound<T> {
    pid: u32,
    runtime: Arc<tokio::runtime::Runtime>,
    value: Arc<T>,
}

/// A runtime and a value bound to it (`T`: the object-store client), rebuilt by `make` in a
/// forked child.
pub(crate) struct Owned<T> {
    make: Box<dyn Fn() -> Result<T> + Send + Sync>,
    bound: Mutex<Option<Bound<T>>>,
}

impl<T: Send + Sync + 'static> Owned<T> {
    /// A runtime and the value `make` builds on it (called inside the runtime, so clients
    /// that look for one find it).
    pub(crate) fn new(make: impl Fn() -> Result<T> + Send + Sync + 'static) -> Result<Owned<T>> {
        let owned = Owned {
            make: Box::new(make),
            bound: Mutex::new(None),
        };
        owned.current()?;
        Ok(owned)
    }

    /// The runtime and value for this process, built anew after a fork.
    fn current(&self) -> Result<(Arc<tokio::runtime::Runtime>, Arc<T>)> {
        let mut bound = self.bound.lock();
        let pid = current_pid();
        if let Some(b) = bound.as_ref() {
            if b.pid == pid {
                return Ok((b.runtime.clone(), b.value.clone()));
            }
        }
        if let Some(stale) = bound.take() {
            // The parent's runtime threads do not exist in this process: shutting it down
            // would wait for them forever. Leave it (and the client bound to it) behind.
            std::mem::forget(stale);
        }
        let runtime = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(driver_threads())
                .thread_name("plaid-net")
                .enable_all()
                .build()
                .map_err(|e| Error::io("starting the network runtime", e))?,
        );
        let value = {
            let _inside = runtime.enter();
            Arc::new((self.make)()?)
        };
        *bound = Some(Bound {
            pid,
            runtime: runtime.clone(),
            value: value.clone(),
        });
        Ok((runtime, value))
    }

    /// Run the future `f` builds from the value to completion on the runtime, from any
    /// thread: plain threads block on it directly, threads inside another runtime through a
    /// helper thread.
    pub(crate) fn run<R, F, Fut>(&self, f: F) -> Result<R>
    where
        R: Send,
        F: FnOnce(Arc<T>) -> Fut + Send,
        Fut: Future<Output = Result<R>> + Send,
    {
        let (runtime, value) = self.current()?;
        // A panic inside the store's client (a value it could not handle) is an error of
        // this call, not one that unwinds through the caller.
        let guarded = async move {
            use futures_util::FutureExt;
            std::panic::AssertUnwindSafe(f(value))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(panicked(&*panic)))
        };
        block_on(&runtime, guarded)?
    }
}

impl<T: Send + Sync + 'static> Owned<T> {
    /// Run the future `f` builds as a task of the runtime and wait for it, from any thread:
    /// the task runs on the runtime's threads, beside the connection it reads from (the
    /// bytes a socket read are copied on while they are in that core's cache, with no
    /// wake-up of another thread per piece).
    pub(crate) fn run_task<R, F, Fut>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(Arc<T>) -> Fut,
        Fut: Future<Output = Result<R>> + Send + 'static,
    {
        let (runtime, value) = self.current()?;
        let task = runtime.spawn(f(value));
        block_on(&runtime, task)?.unwrap_or_else(|e| match e.try_into_panic() {
            Ok(panic) => Err(panicked(&*panic)),
            Err(e) => Err(Error::io(
                "a network task",
                std::io::Error::other(format!("it did not finish: {e}")),
            )),
        })
    }
}

/// Wait for `future` on `runtime` from any thread: a plain thread blocks on it directly, a
/// thread inside another runtime (where blocking is not allowed) through a helper thread.
fn block_on<F: Future + Send>(runtime: &tokio::runtime::Runtime, future: F) -> Result<F::Output>
where
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(runtime.block_on(future));
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("plaid-net-call".into())
            .spawn_scoped(scope, || runtime.block_on(future))
            .map_err(|e| Error::io("starting a thread for a network call", e))?
            .join()
            .map_err(|panic| panicked(&*panic))
    })
}

/// The error for a panic inside the storage client: its message, as an I/O error (it is
/// the client's failure to do the request, whatever the cause).
fn panicked(panic: &(dyn std::any::Any + Send)) -> Error {
    let message = crate::error::panic_detail(panic);
    Error::io(
        "a request to the store",
        std::io::Error::other(format!(
            "the storage client failed inside ({message}): check the endpoint, region and \
             other storage options"
        )),
    )
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        let Some(bound) = self.bound.get_mut().take() else {
            return;
        };
        if bound.pid != current_pid() {
            std::mem::forget(bound);
            return;
        }
        drop(bound.value);
        match Arc::try_unwrap(bound.runtime) {
            // Blocking is not allowed inside another runtime (it would panic): there, the
            // runtime's threads are told to stop and not waited for.
            Ok(runtime) if tokio::runtime::Handle::try_current().is_ok() => {
                runtime.shutdown_background()
            }
            Ok(runtime) => runtime.shutdown_timeout(SHUTDOWN_TIMEOUT),
            Err(shared) => drop(shared),
        }
    }
}
