//! A SIGTERM that comes after the coordinator is built but before `run` is first polled
//! does not end the process: it is kept, and triggers the shutdown once `run` runs
//! (feature `signal`).
//!
//! One test in its own binary: it signals its own process, and tokio's handler, once
//! installed, stays installed for the process.

#![cfg(all(feature = "signal", unix))]

use std::time::Duration;

use palisade_shutdown::{Phase, Shutdown};
use rustix::process::{Signal, getpid, kill_process};

#[tokio::test]
async fn a_sigterm_before_run_is_polled_is_kept_for_it() {
    let shutdown = Shutdown::builder().on_signals().build();
    // Without a handler, this would end the test process.
    kill_process(getpid(), Signal::TERM).unwrap();
    assert_eq!(shutdown.phase(), Phase::Running, "nothing drives it yet");

    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { shutdown.run().await }
    });
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the kept signal triggers the shutdown")
        .unwrap()
        .unwrap();
    assert!(shutdown.is_triggered());
    assert!(!report.forced);
    assert_eq!(report.code(), 0);
    assert_eq!(shutdown.phase(), Phase::Done);
}
