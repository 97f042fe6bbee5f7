//! A `metrics` recorder for tests: every operation becomes a line of text, so a test can
//! compare what a listener recorded with a list of strings.
//!
//! Lines look like `counter name{label=value,...} +1`, `gauge name{...} =3` (`+`/`-` for
//! increments and decrements) and `histogram name{...} <0.5`. Install it for the current
//! thread with `metrics::with_local_recorder` or `metrics::set_default_local_recorder`.

use std::sync::{Arc, Mutex, PoisonError};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// Records every operation as a line; clones share the lines.
#[derive(Debug, Default, Clone)]
pub struct Capture(Arc<Mutex<Vec<String>>>);

impl Capture {
    /// The lines recorded since the last call, in order (and forgets them).
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn push(&self, line: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    fn handle(&self, kind: &str, key: &Key) -> Arc<Handle> {
        let labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        Arc::new(Handle {
            log: self.clone(),
            key: format!("{kind} {}{{{}}}", key.name(), labels.join(",")),
        })
    }
}

/// One registered metric: its kind, name and labels, and where its lines go.
struct Handle {
    log: Capture,
    key: String,
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.log.push(format!("{} +{value}", self.key));
    }
    fn absolute(&self, value: u64) {
        self.log.push(format!("{} ={value}", self.key));
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.log.push(format!("{} +{value}", self.key));
    }
    fn decrement(&self, value: f64) {
        self.log.push(format!("{} -{value}", self.key));
    }
    fn set(&self, value: f64) {
        self.log.push(format!("{} ={value}", self.key));
    }
}

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.log.push(format!("{} <{value}", self.key));
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle("counter", key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle("gauge", key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle("histogram", key))
    }
}
