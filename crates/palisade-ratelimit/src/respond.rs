//! What a request costs ([`Cost`]) and how a refused one is answered ([`Respond`]).

use palisade_core::BoxError;

use crate::decision::{Refusal, Snapshot};

/// Decides how many units of the quota a request takes.
///
/// Implemented by [`UnitCost`] (every request costs 1) and by every `Fn(&Req) -> u32`. A
/// cost of 0 takes nothing and is always admitted; a cost above the limiter's capacity is
/// refused with [`InsufficientCapacity`](crate::InsufficientCapacity).
pub trait Cost<Req> {
    /// The cost of `request`.
    fn cost(&self, request: &Req) -> u32;
}

/// Every request costs one unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitCost;

impl<Req> Cost<Req> for UnitCost {
    #[inline]
    fn cost(&self, _request: &Req) -> u32 {
        1
    }
}

impl<Req, F: Fn(&Req) -> u32> Cost<Req> for F {
    #[inline]
    fn cost(&self, request: &Req) -> u32 {
        self(request)
    }
}

/// Decides what a rate-limited service answers: to a refused request, with the inner
/// service's errors, and on admitted responses.
///
/// [`RaiseError`] (the default) fails refused requests with a boxed error; with the `http`
/// feature, `TooManyRequests` answers them with `429 Too Many Requests` and headers, and
/// keeps the inner service's error type.
pub trait Respond<Req, Res, E> {
    /// The service's error type.
    type Error;

    /// Whether [`admitted`](Self::admitted) reads its snapshot: `true` by default. A
    /// `Respond` that leaves `admitted` as it is (does nothing) may say `false`: the layers
    /// then never call `admitted`, and `RateLimitLayer` skips computing the snapshot of an
    /// admitted request when no listener wants it either (and keeps none in the response
    /// future): a few nanoseconds per call. [`RaiseError`] says `false`.
    const READS_SNAPSHOT: bool = true;

    /// The answer to `request`, which the limiter refused.
    fn refused(&self, refusal: Refusal, request: Req) -> Result<Res, Self::Error>;

    /// The inner service's error, as the service's.
    fn error(&self, error: E) -> Self::Error;

    /// Called with every admitted request's response and the limiter's state when it was
    /// admitted (to add headers, say). Does nothing by default.
    fn admitted(&self, snapshot: &Snapshot, response: &mut Res) {
        let _ = (snapshot, response);
    }
}

/// Fails refused requests with a boxed error: core's
/// [`RateLimited`](palisade_core::RateLimited) (recognised by
/// [`Rejection::find`](palisade_core::Rejection::find), with its retry-after),
/// [`InsufficientCapacity`](crate::InsufficientCapacity) for a cost that can never be
/// admitted, or, for a keyed limiter that refuses new keys when full,
/// [`KeysExhausted`](crate::KeysExhausted) (whose source is core's
/// [`Overloaded`](palisade_core::Overloaded), so `Rejection::find` sees a shed request).
/// Inner errors are boxed as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaiseError;

impl<Req, Res, E: Into<BoxError>> Respond<Req, Res, E> for RaiseError {
    type Error = BoxError;

    const READS_SNAPSHOT: bool = false;

    fn refused(&self, refusal: Refusal, _request: Req) -> Result<Res, BoxError> {
        Err(match refusal {
            Refusal::Limited(limited) => limited.rejection().into(),
            Refusal::InsufficientCapacity(error) => error.into(),
            Refusal::KeysExhausted(error) => error.into(),
            Refusal::StoreUnavailable(error) => error.into(),
        })
    }

    #[inline]
    fn error(&self, error: E) -> BoxError {
        error.into()
    }
}
