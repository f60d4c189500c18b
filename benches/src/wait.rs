//! How the bench's own tasks wait for an answer: park at once (the normal
//! tokio way), or spin first.
//!
//! Spinning is done entirely at the bench level: the waiting task polls its
//! future, and while it is pending yields with `tokio::task::yield_now`,
//! which tokio defers until the worker has polled the I/O driver without
//! blocking. The client runtime's worker therefore never goes to sleep in
//! `epoll_wait` during the spin window, which removes the wake-up of an idle
//! thread from the client's side of each round trip. The control plane and
//! the agents are not changed: they still park normally.

use std::future::Future;
use std::time::{Duration, Instant};

/// The client side's waiting strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeMode {
    /// Await normally: an idle worker parks in the OS.
    Park,
    /// Busy-poll for up to this long, then await normally.
    Spin(Duration),
}

impl WakeMode {
    pub fn label(self) -> String {
        match self {
            WakeMode::Park => "park".into(),
            WakeMode::Spin(d) => format!("spin {} µs then park", d.as_micros()),
        }
    }

    /// Waits for `fut` the way this mode says.
    pub async fn wait<F: Future>(self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        if let WakeMode::Spin(window) = self {
            let start = Instant::now();
            while start.elapsed() < window {
                tokio::select! {
                    biased;
                    out = &mut fut => return out,
                    _ = tokio::task::yield_now() => {}
                }
            }
        }
        fut.await
    }
}
