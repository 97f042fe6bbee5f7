//! The tour's one error type: what went wrong, and what the tour was doing at the time.

use palisade::core::BoxError;

/// A failure of the tour, printed by `main` before it exits non-zero.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {cause}")]
pub(crate) struct TourError {
    context: String,
    cause: BoxError,
}

impl TourError {
    /// A failed check: something the tour measured is not what the suite promises.
    pub(crate) fn check(context: impl Into<String>, what: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            cause: what.into().into(),
        }
    }
}

/// Adds what the tour was doing to an error.
pub(crate) trait Context<T> {
    /// Wraps the error with `context`.
    fn context(self, context: impl Into<String>) -> Result<T, TourError>;
}

impl<T, E: Into<BoxError>> Context<T> for Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T, TourError> {
        self.map_err(|error| TourError {
            context: context.into(),
            cause: error.into(),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl Into<String>) -> Result<T, TourError> {
        self.ok_or_else(|| TourError::check(context, "missing"))
    }
}
