//! Each call runs in a `retry` span whose `attempt` field follows the attempts, and the inner
//! service is called and polled inside it.

mod support;

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::backoff::Backoff;
use palisade_retry::{RetryConfig, RetryLayer};
use support::Calls;
use tower::{Layer, ServiceExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Remembers every value given to a span's `attempt` field, and the messages of events
/// with whether a span was entered when each was emitted.
#[derive(Clone, Default)]
struct Recorder {
    next_id: Arc<AtomicU64>,
    spans: Arc<Mutex<Vec<&'static str>>>,
    attempts: Arc<Mutex<Vec<u64>>>,
    messages: Arc<Mutex<Vec<String>>>,
    entered: Arc<AtomicUsize>,
    in_span: Arc<Mutex<Vec<(String, bool)>>>,
}

struct Attempt<'a>(&'a Mutex<Vec<u64>>);

impl Visit for Attempt<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "attempt" {
            self.0.lock().unwrap().push(value);
        }
    }
    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {}
}

struct Message<'a>(&'a Mutex<Vec<String>>);

impl Visit for Message<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0.lock().unwrap().push(format!("{value:?}"));
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.spans.lock().unwrap().push(span.metadata().name());
        span.record(&mut Attempt(&self.attempts));
        Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _span: &Id, values: &Record<'_>) {
        values.record(&mut Attempt(&self.attempts));
    }
    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}
    fn event(&self, event: &Event<'_>) {
        event.record(&mut Message(&self.messages));
        let message = self.messages.lock().unwrap().last().cloned();
        let inside = self.entered.load(Ordering::Relaxed) > 0;
        self.in_span
            .lock()
            .unwrap()
            .push((message.unwrap_or_default(), inside));
    }
    fn enter(&self, _span: &Id) {
        self.entered.fetch_add(1, Ordering::Relaxed);
    }
    fn exit(&self, _span: &Id) {
        self.entered.fetch_sub(1, Ordering::Relaxed);
    }
}

#[test]
fn the_span_records_the_attempt_number() {
    let recorder = Recorder::default();
    tracing::subscriber::with_default(recorder.clone(), || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let config = RetryConfig::builder()
                .backoff(Backoff::constant(Duration::from_millis(10)))
                .build()
                .unwrap();
            let calls = Calls::default();
            let counter = calls.clone();
            let service = RetryLayer::new(config).layer(tower::service_fn(move |()| {
                let n = counter.record();
                async move {
                    if n < 3 {
                        Err::<usize, BoxError>("busy".into())
                    } else {
                        Ok(n)
                    }
                }
            }));
            assert_eq!(service.oneshot(()).await.unwrap(), 3);
        });
    });
    assert_eq!(*recorder.spans.lock().unwrap(), ["retry"]);
    assert_eq!(*recorder.attempts.lock().unwrap(), [1, 2, 3]);
    let messages = recorder.messages.lock().unwrap();
    assert_eq!(
        messages.iter().filter(|m| m.as_str() == "retrying").count(),
        2
    );
}

#[test]
fn the_inner_service_is_called_and_polled_inside_the_span() {
    let recorder = Recorder::default();
    tracing::subscriber::with_default(recorder.clone(), || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let service =
                RetryLayer::new(RetryConfig::default()).layer(tower::service_fn(|n: u32| {
                    tracing::info!("called");
                    async move {
                        tracing::info!("polled");
                        Ok::<_, BoxError>(n)
                    }
                }));
            // A first attempt that succeeds at once, as on the fast path without a span.
            assert_eq!(service.oneshot(7).await.unwrap(), 7);
        });
    });
    assert_eq!(*recorder.spans.lock().unwrap(), ["retry"]);
    assert_eq!(
        *recorder.in_span.lock().unwrap(),
        [("called".to_owned(), true), ("polled".to_owned(), true)]
    );
}
