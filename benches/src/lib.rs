//! Shared helpers for the Palisade benches: the bare service every layer is measured against.

use std::convert::Infallible;
use std::future::{Ready, ready};

/// The bare service's response future: ready at once.
pub type EchoFuture = Ready<Result<u64, Infallible>>;

/// The cheapest possible service: answers its request at once. Every layer bench runs this
/// bare, then wrapped, so the ratio is the layer's own cost.
pub fn echo() -> tower::util::ServiceFn<fn(u64) -> EchoFuture> {
    tower::service_fn(|request: u64| ready(Ok(request)))
}
