//! Handlers, type-erased: async closures and tower services behind one interface.
//!
//! A handler makes *slots*. A slot is a pinned, heap-allocated place where one call of the
//! handler runs: it holds the handler's future (and, for a service, a clone of the service).
//! A finished slot is idle and is used again by a later emit, so an emit whose handlers
//! finish without waiting allocates nothing: the slots of a snapshot are pooled in runs (see
//! `emit.rs`).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use palisade_core::BoxError;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::event::{AnyEvent, Event};

/// What a handler closure's future may return: `()` for a handler that cannot fail, or a
/// `Result<(), E>` whose error converts into a [`BoxError`].
///
/// ```
/// # use palisade_events::{Event, EventBus};
/// # #[derive(Clone)] struct Tick;
/// # impl Event for Tick { const NAME: &'static str = "tick"; }
/// let bus = EventBus::new();
/// bus.on(|_: Tick| async {}).detach();
/// bus.on(|_: Tick| async { Err::<(), _>(std::io::Error::other("disk full")) }).detach();
/// ```
pub trait HandlerResult {
    /// The result as the bus records it.
    ///
    /// # Errors
    ///
    /// The handler's error, boxed.
    fn into_handler_result(self) -> Result<(), BoxError>;
}

impl HandlerResult for () {
    #[inline]
    fn into_handler_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<Err: Into<BoxError>> HandlerResult for Result<(), Err> {
    #[inline]
    fn into_handler_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// A slot, boxed and pinned: where one call of a handler runs.
pub(crate) type SlotBox<E> = Pin<Box<dyn Slot<E>>>;

/// A subscribed handler, for events of type `E`.
pub(crate) trait Handler<E>: Send + Sync + 'static {
    /// A new idle slot. Runs user code (a service's `Clone`): call it under `catch_unwind`.
    fn new_slot(&self) -> SlotBox<E>;
}

/// One call of a handler. Idle, or running one event.
pub(crate) trait Slot<E>: Send {
    /// Starts the handler on `event`. The slot must be idle. Runs user code.
    fn start(self: Pin<&mut Self>, event: E);

    /// Drives the running call; `Ready` when it is over, and the slot is idle again. Runs
    /// user code.
    fn poll_call(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;

    /// Abandons the running call (timed out, or the emit was dropped): the slot is idle
    /// again. Runs user code (the future's `Drop`).
    fn stop(self: Pin<&mut Self>);
}

/// A handler made from a closure `Fn(E) -> impl Future`.
pub(crate) struct FnHandler<F>(Arc<F>);

impl<F> FnHandler<F> {
    pub(crate) fn new(f: F) -> Self {
        Self(Arc::new(f))
    }
}

impl<E, F, Fut> Handler<E> for FnHandler<F>
where
    E: Send + 'static,
    F: Fn(E) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerResult,
{
    fn new_slot(&self) -> SlotBox<E> {
        Box::pin(FnSlot {
            f: Arc::clone(&self.0),
            future: None,
        })
    }
}

pin_project! {
    struct FnSlot<F, Fut> {
        f: Arc<F>,
        #[pin]
        future: Option<Fut>,
    }
}

impl<E, F, Fut> Slot<E> for FnSlot<F, Fut>
where
    F: Fn(E) -> Fut + Send + Sync,
    Fut: Future + Send,
    Fut::Output: HandlerResult,
{
    #[inline]
    fn start(self: Pin<&mut Self>, event: E) {
        let mut this = self.project();
        let future = (this.f)(event);
        this.future.set(Some(future));
    }

    #[inline]
    fn poll_call(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let mut this = self.project();
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            return Poll::Ready(Ok(()));
        };
        let output = ready!(future.poll(cx));
        this.future.set(None);
        Poll::Ready(output.into_handler_result())
    }

    fn stop(self: Pin<&mut Self>) {
        self.project().future.set(None);
    }
}

/// A handler made from a tower `Service<E, Response = ()>`. Each slot holds its own clone of
/// the service, made when the slot is; a slot whose clone failed its readiness check gets a
/// fresh clone.
pub(crate) struct ServiceHandler<S>(Arc<Mutex<S>>);

impl<S> ServiceHandler<S> {
    pub(crate) fn new(service: S) -> Self {
        Self(Arc::new(Mutex::new(service)))
    }
}

fn clone_of<S: Clone>(prototype: &Mutex<S>) -> S {
    prototype
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

impl<E, S> Handler<E> for ServiceHandler<S>
where
    E: Send + 'static,
    S: Service<E, Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    fn new_slot(&self) -> SlotBox<E> {
        Box::pin(ServiceSlot {
            service: clone_of(&self.0),
            prototype: Arc::clone(&self.0),
            event: None,
            future: None,
        })
    }
}

pin_project! {
    struct ServiceSlot<S, E, Fut> {
        service: S,
        prototype: Arc<Mutex<S>>,
        // Waiting for the service to be ready.
        event: Option<E>,
        #[pin]
        future: Option<Fut>,
    }
}

impl<E, S, Fut> Slot<E> for ServiceSlot<S, E, Fut>
where
    E: Send,
    S: Service<E, Response = (), Future = Fut> + Clone + Send,
    S::Error: Into<BoxError>,
    Fut: Future<Output = Result<(), S::Error>> + Send,
{
    #[inline]
    fn start(self: Pin<&mut Self>, event: E) {
        *self.project().event = Some(event);
    }

    fn poll_call(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let mut this = self.project();
        if this.event.is_some() {
            match ready!(this.service.poll_ready(cx)) {
                Ok(()) => {
                    if let Some(event) = this.event.take() {
                        let future = this.service.call(event);
                        this.future.set(Some(future));
                    }
                }
                Err(error) => {
                    *this.event = None;
                    // tower: a service that failed its readiness check is discarded.
                    *this.service = clone_of(this.prototype);
                    return Poll::Ready(Err(error.into()));
                }
            }
        }
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = ready!(future.poll(cx));
        this.future.set(None);
        Poll::Ready(result.map_err(Into::into))
    }

    fn stop(self: Pin<&mut Self>) {
        let mut this = self.project();
        *this.event = None;
        this.future.set(None);
    }
}

/// An `on_any` handler seen as a handler of `E`: each event is wrapped in an [`AnyEvent`].
pub(crate) struct AnyHandler<E> {
    inner: Arc<dyn Handler<AnyEvent>>,
    _event: PhantomData<fn(E)>,
}

impl<E> AnyHandler<E> {
    pub(crate) fn new(inner: Arc<dyn Handler<AnyEvent>>) -> Self {
        Self {
            inner,
            _event: PhantomData,
        }
    }
}

impl<E: Event> Handler<E> for AnyHandler<E> {
    fn new_slot(&self) -> SlotBox<E> {
        Box::pin(AnySlot::<E> {
            inner: self.inner.new_slot(),
            _event: PhantomData,
        })
    }
}

struct AnySlot<E> {
    inner: SlotBox<AnyEvent>,
    _event: PhantomData<fn(E)>,
}

impl<E: Event> Slot<E> for AnySlot<E> {
    fn start(self: Pin<&mut Self>, event: E) {
        self.get_mut().inner.as_mut().start(AnyEvent::new(event));
    }

    fn poll_call(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.get_mut().inner.as_mut().poll_call(cx)
    }

    fn stop(self: Pin<&mut Self>) {
        self.get_mut().inner.as_mut().stop();
    }
}
