//! Waiting for Ctrl-C (SIGINT) or SIGTERM on any back end: the `ctrlc` crate's handler
//! thread sets a flag and wakes every waiter, so no runtime's signal support is needed.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use event_listener::Event;

use crate::Error;

/// Whether the signal came, and who waits for it.
struct Signal {
    came: AtomicBool,
    event: Event,
}

static SIGNAL: Signal = Signal {
    came: AtomicBool::new(false),
    event: Event::new(),
};

/// The outcome of installing the handler, once per process.
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// Installs the process's Ctrl-C handler (once) and returns a future that ends when the
/// process gets Ctrl-C, SIGINT or SIGTERM (at once if one came already). The handler is
/// installed when this is called, not when the future is first polled. A second Ctrl-C
/// while the program is still running ends the process at once (exit status 130), as a
/// user pressing it again expects.
///
/// Fails if another Ctrl-C handler was installed in this process (by the `ctrlc` crate,
/// for example); the process's signals are then that handler's to see.
///
/// ```no_run
/// futures_lite::future::block_on(async {
///     zserver_core::ctrl_c().await?;
///     println!("stopping");
///     Ok::<_, zserver_core::Error>(())
/// })
/// .unwrap();
/// ```
pub fn ctrl_c() -> impl Future<Output = Result<(), Error>> + Send + 'static {
    let installed = INSTALLED.get_or_init(|| {
        ctrlc::set_handler(|| {
            if SIGNAL.came.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            SIGNAL.event.notify(usize::MAX);
        })
        .map_err(|e| e.to_string())
    });
    let installed = installed
        .clone()
        .map_err(|e| Error::msg(format!("cannot handle Ctrl-C: {e}")));
    async move {
        installed?;
        loop {
            if SIGNAL.came.load(Ordering::SeqCst) {
                return Ok(());
            }
            let listener = SIGNAL.event.listen();
            if SIGNAL.came.load(Ordering::SeqCst) {
                return Ok(());
            }
            listener.await;
        }
    }
}
