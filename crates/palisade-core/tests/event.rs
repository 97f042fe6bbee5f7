//! Listeners receive events; the `metrics` listener records them through the facade.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use palisade_core::event::{Event, Listener, Reading, ReadingKind, listener_fn};

#[derive(Debug)]
enum PoolEvent {
    Admitted { in_flight: usize, waited_secs: f64 },
    Shed,
}

impl Event for PoolEvent {
    fn component(&self) -> &'static str {
        "pool"
    }

    fn kind(&self) -> &'static str {
        match self {
            PoolEvent::Admitted { .. } => "admitted",
            PoolEvent::Shed => "shed",
        }
    }

    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        if let PoolEvent::Admitted {
            in_flight,
            waited_secs,
        } = self
        {
            record(Reading::gauge("palisade_pool_in_flight", *in_flight as f64));
            record(Reading::histogram(
                "palisade_pool_wait_seconds",
                *waited_secs,
            ));
        }
    }
}

#[test]
fn readings_describe_their_metric() {
    let mut seen = Vec::new();
    PoolEvent::Admitted {
        in_flight: 2,
        waited_secs: 0.25,
    }
    .readings(&mut |r| seen.push((r.name(), r.kind(), r.value())));
    assert_eq!(
        seen,
        [
            ("palisade_pool_in_flight", ReadingKind::Gauge, 2.0),
            ("palisade_pool_wait_seconds", ReadingKind::Histogram, 0.25),
        ]
    );
    let mut none = 0;
    PoolEvent::Shed.readings(&mut |_| none += 1);
    assert_eq!(none, 0);
}

#[test]
fn tuples_arcs_and_boxes_fan_out_to_every_listener() {
    let first = Arc::new(AtomicUsize::new(0));
    let second = Arc::new(AtomicUsize::new(0));
    let count = |counter: &Arc<AtomicUsize>| {
        let counter = Arc::clone(counter);
        listener_fn(move |_: &PoolEvent| {
            counter.fetch_add(1, Ordering::Relaxed);
        })
    };
    let both: Arc<dyn Listener<PoolEvent>> = Arc::new((count(&first), Box::new(count(&second))));
    let shared = Arc::clone(&both);
    shared.on_event(&PoolEvent::Shed);
    both.on_event(&PoolEvent::Shed);
    ().on_event(&PoolEvent::Shed);
    assert_eq!(first.load(Ordering::Relaxed), 2);
    assert_eq!(second.load(Ordering::Relaxed), 2);
}

#[cfg(feature = "metrics")]
mod metrics_listener {
    use super::*;
    use palisade_core::event::MetricsListener;
    use palisade_testkit::metrics::Capture;

    #[test]
    fn events_become_counters_gauges_and_histograms() {
        let capture = Capture::default();
        let listener = MetricsListener::new("checkout");
        metrics::with_local_recorder(&capture, || {
            listener.on_event(&PoolEvent::Admitted {
                in_flight: 7,
                waited_secs: 0.5,
            });
            listener.on_event(&PoolEvent::Shed);
        });
        assert_eq!(
            capture.take(),
            [
                "counter palisade_events_total{component=pool,event=admitted,instance=checkout} +1",
                "gauge palisade_pool_in_flight{instance=checkout} =7",
                "histogram palisade_pool_wait_seconds{instance=checkout} <0.5",
                "counter palisade_events_total{component=pool,event=shed,instance=checkout} +1",
            ]
        );
    }
}
