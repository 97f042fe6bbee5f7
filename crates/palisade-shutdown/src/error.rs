//! Why a shutdown could not run.

/// Why [`Shutdown::run`](crate::Shutdown::run) could not drive the shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Another call to `run` on this coordinator (or a clone) is driving it, or already did.
    #[error("this shutdown is already being run")]
    AlreadyRunning,
    /// Listening for SIGTERM / SIGINT failed (feature `signal`).
    #[error("cannot listen for shutdown signals: {0}")]
    Signals(#[source] std::io::Error),
}
