//! SIGTERM and SIGINT as triggers (feature `signal`).

/// The signals `run` listens to.
#[cfg(feature = "signal")]
#[derive(Debug)]
pub(crate) struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

#[cfg(feature = "signal")]
impl Signals {
    pub(crate) fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Resolves at the next signal.
    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let name = tokio::select! {
                Some(()) = self.terminate.recv() => "SIGTERM",
                Some(()) = self.interrupt.recv() => "SIGINT",
                // Both streams closed: no signal will come again.
                else => std::future::pending().await,
            };
            tracing::info!(signal = name, "shutdown signal received");
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!(signal = "ctrl-c", "shutdown signal received");
            } else {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Without the `signal` feature there are no signals to listen to.
#[cfg(not(feature = "signal"))]
#[derive(Debug)]
pub(crate) struct Signals {
    never: std::convert::Infallible,
}

#[cfg(not(feature = "signal"))]
impl Signals {
    pub(crate) async fn recv(&mut self) {
        match self.never {}
    }
}
