//! What a core `MetricsListener` records from a batch run's `BatchEvent`s and a pipeline's
//! `PipelineEvent`s: the event counter with the component and kind, and the readings.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use palisade_batch::Batch;
use palisade_batch::pipeline::Pipeline;
use palisade_core::Backoff;
use palisade_core::event::MetricsListener;
use palisade_testkit::metrics::Capture;

fn counter(component: &str, kind: &str) -> String {
    format!(
        "counter palisade_events_total{{component={component},event={kind},instance=import}} +1"
    )
}

/// How many times the event counter of `component` / `kind` went up.
fn count(lines: &[String], component: &str, kind: &str) -> usize {
    let counter = counter(component, kind);
    lines.iter().filter(|l| **l == counter).count()
}

#[tokio::test(start_paused = true)]
async fn batch_retries_failures_progress_and_the_end_become_metrics() {
    let capture = Capture::default();
    let _recorder = metrics::set_default_local_recorder(&capture);
    let report = Batch::new(NonZeroUsize::new(2).unwrap())
        .retry(
            NonZeroU32::new(2).unwrap(),
            Backoff::constant(Duration::from_millis(250)),
        )
        .listener(MetricsListener::new("import"))
        .run(
            0..3u32,
            async |n: &u32| if *n == 1 { Err(()) } else { Ok(*n) },
        )
        .await;
    assert_eq!((report.succeeded.len(), report.failed.len()), (2, 1));

    let lines = capture.take();
    assert_eq!(count(&lines, "batch", "progress"), 3, "{lines:#?}");
    assert_eq!(count(&lines, "batch", "retrying"), 1, "{lines:#?}");
    assert_eq!(count(&lines, "batch", "item_failed"), 1, "{lines:#?}");
    assert!(
        lines.contains(
            &"histogram palisade_batch_retry_delay_seconds{instance=import} <0.25".to_owned()
        ),
        "{lines:#?}"
    );
    // The run ends after the retry's wait: 3 items in a quarter of a second.
    assert_eq!(
        lines[lines.len() - 3..],
        [
            counter("batch", "finished"),
            "gauge palisade_batch_items_done{instance=import} =3".to_owned(),
            "gauge palisade_batch_items_per_second{instance=import} =12".to_owned(),
        ]
    );
}

#[tokio::test]
async fn pipeline_failed_rows_and_the_end_become_metrics() {
    let capture = Capture::default();
    let _recorder = metrics::set_default_local_recorder(&capture);
    let input = "a,b\n1,2\n3\n4,5\n";
    let summary = Pipeline::keep_all()
        .listener(MetricsListener::new("import"))
        .run(input.as_bytes(), Vec::new())
        .await
        .unwrap();
    assert_eq!((summary.rows_out, summary.failed), (2, 1));
    assert_eq!(
        capture.take(),
        [
            counter("pipeline", "row_failed"),
            counter("pipeline", "finished"),
            "gauge palisade_pipeline_rows_in{instance=import} =3".to_owned(),
            "gauge palisade_pipeline_rows_out{instance=import} =2".to_owned(),
            "gauge palisade_pipeline_rows_failed{instance=import} =1".to_owned(),
            format!(
                "gauge palisade_pipeline_bytes_in{{instance=import}} ={}",
                input.len()
            ),
        ]
    );
}
