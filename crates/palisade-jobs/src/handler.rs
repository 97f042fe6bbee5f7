//! Handlers: a tower `Service` per job type, behind one object-safe trait.

use std::error::Error as StdError;
use std::future::poll_fn;
use std::marker::PhantomData;
use std::sync::Mutex;

use palisade_core::BoxError;
use tower_service::Service;

use crate::job::Job;
use crate::store::BoxFuture;

/// A handler's run: `Err` carries the message recorded as the job's error.
pub(crate) type Run = BoxFuture<'static, Result<(), String>>;

/// A handler with its job type erased: decodes a payload and runs the service on it.
pub(crate) trait ErasedHandler: Send + Sync {
    fn start(&self, payload: &str) -> Run;
}

/// A `Service<J>` as an [`ErasedHandler`]: each run gets its own clone of the service.
pub(crate) struct ServiceHandler<J, S> {
    // Behind a mutex so that the service needs only `Send`; it is locked only to clone it.
    service: Mutex<S>,
    job: PhantomData<fn() -> J>,
}

impl<J, S> ServiceHandler<J, S> {
    pub(crate) fn new(service: S) -> Self {
        Self {
            service: Mutex::new(service),
            job: PhantomData,
        }
    }
}

impl<J, S> ErasedHandler for ServiceHandler<J, S>
where
    J: Job,
    S: Service<J> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    fn start(&self, payload: &str) -> Run {
        let job: J = match serde_json::from_str(payload) {
            Ok(job) => job,
            Err(error) => {
                let message = format!(
                    "payload does not deserialize as job type `{}`: {error}",
                    J::TYPE
                );
                return Box::pin(std::future::ready(Err(message)));
            }
        };
        let mut service = self
            .service
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Box::pin(async move {
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(|error| format!("handler not ready: {}", describe(&*error.into())))?;
            service
                .call(job)
                .await
                .map(drop)
                .map_err(|error| describe(&*error.into()))
        })
    }
}

/// An error and its sources, `outer: inner: innermost`.
pub(crate) fn describe(error: &(dyn StdError + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Many errors already print their source; do not repeat it.
        if !message.ends_with(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

/// The message of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
