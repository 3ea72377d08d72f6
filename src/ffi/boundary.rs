//! The one boundary every exported function goes through: no panic crosses into C, and
//! every error becomes a status code plus a thread-local message.

/// The body of every exported function: no panic crosses into C, and every error becomes a
/// status code plus the thread's message. In the style of rustls-ffi's in-body
/// `ffi_panic_boundary!`: the signature stays plain Rust, for cbindgen, and the body goes
/// inside.
///
/// `ffi_boundary! { statements }`: the statements end in a `Result<()>`; `Ok` is
/// `PLAID_OK`, an error its status (and message), a panic `PLAID_ERR_PANIC`.
///
/// `ffi_boundary! { on_panic = fallback; statements }`: the statements end in the
/// function's value; a panic returns `fallback` (and sets the message).
macro_rules! ffi_boundary {
    (on_panic = $fallback:expr; $($body:tt)*) => {
        $crate::ffi::boundary::value($fallback, || { $($body)* })
    };
    ($($body:tt)*) => {
        $crate::ffi::boundary::status(|| { $($body)* })
    };
}

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::status::{plaid_status, status_of, PLAID_ERR_PANIC, PLAID_OK};
use crate::error::Result;

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Run a fallible body: `Ok` is `PLAID_OK`, an error sets the thread's message and
/// returns its status, a panic returns `PLAID_ERR_PANIC`.
pub(crate) fn status(body: impl FnOnce() -> Result<()>) -> plaid_status {
    set_message(String::new());
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => PLAID_OK,
        Ok(Err(error)) => {
            set_message(error.to_string());
            status_of(&error)
        }
        Err(panic) => {
            set_message(panic_message(panic));
            PLAID_ERR_PANIC
        }
    }
}

/// Run an infallible body that returns a value; a panic returns `fallback` and sets
/// the thread's message.
pub(crate) fn value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        set_message(panic_message(panic));
        fallback
    })
}

fn panic_message(panic: Box<dyn Any + Send>) -> String {
    format!(
        "internal error (panic): {}",
        crate::error::panic_detail(&*panic)
    )
}

// `try_with`: a C program may call in from a thread-exit destructor, after the
// thread-local is gone; `with` would panic outside any `catch_unwind`.
pub(crate) fn set_message(message: String) {
    let _ = LAST_ERROR.try_with(|m| *m.borrow_mut() = message);
}

pub(crate) fn with_message<T>(f: impl FnOnce(&str) -> T) -> T {
    let message = LAST_ERROR
        .try_with(|m| m.borrow().clone())
        .unwrap_or_default();
    f(&message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::ffi::status::{PLAID_ERR_CAPACITY, PLAID_ERR_PANIC};

    #[test]
    fn panics_become_a_status_and_a_message() {
        let status = status(|| panic!("boom"));
        assert_eq!(status, PLAID_ERR_PANIC);
        with_message(|m| assert!(m.contains("boom"), "{m}"));
        assert_eq!(value(7usize, || panic!("again")), 7);
        with_message(|m| assert!(m.contains("again"), "{m}"));
    }

    #[test]
    fn errors_set_the_message_and_success_clears_it() {
        let s = status(|| {
            Err(Error::Capacity {
                tensor: "w".into(),
                needed: 8,
                capacity: 4,
            })
        });
        assert_eq!(s, PLAID_ERR_CAPACITY);
        with_message(|m| assert!(m.contains("'w'") && m.contains('8'), "{m}"));
        assert_eq!(status(|| Ok(())), PLAID_OK);
        with_message(|m| assert!(m.is_empty(), "{m}"));
    }
}
