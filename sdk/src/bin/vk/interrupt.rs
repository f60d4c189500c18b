//! Ctrl-C for the commands that cancel what they started (`vk run`, `vk
//! exec`). The handler is installed before anything is submitted, so an
//! interrupt that comes early (while the first state is being fetched) is
//! not the default "killed by SIGINT" (status 130 without a cancel) but
//! is handled as soon as the command looks.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

static COUNT: AtomicU64 = AtomicU64::new(0);
static NOTIFY: Notify = Notify::const_new();

/// Starts listening for Ctrl-C (SIGINT). Other commands never call it and
/// keep the default: Ctrl-C ends them at once.
pub fn install() -> std::io::Result<()> {
    static INSTALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    #[cfg(unix)]
    {
        // Registered here, synchronously: no window before the first poll.
        let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::spawn(async move {
            while interrupts.recv().await.is_some() {
                COUNT.fetch_add(1, Ordering::AcqRel);
                NOTIFY.notify_waiters();
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async {
        while tokio::signal::ctrl_c().await.is_ok() {
            COUNT.fetch_add(1, Ordering::AcqRel);
            NOTIFY.notify_waiters();
        }
    });
    Ok(())
}

/// Resolves once an interrupt has come that is not counted in `handled`
/// (then counts it): one created per loop turn misses nothing.
pub async fn next(handled: &mut u64) {
    loop {
        let notified = NOTIFY.notified();
        let count = COUNT.load(Ordering::Acquire);
        if count > *handled {
            *handled = count;
            return;
        }
        notified.await;
    }
}
