//! SIGTERM triggers the shutdown and a second SIGTERM forces it (feature `signal`).
//!
//! One test in its own binary: it signals its own process, and tokio's handler, once
//! installed, stays installed for the process.

#![cfg(all(feature = "signal", unix))]

use std::time::Duration;

use palisade_shutdown::{Hook, HookOutcome, Phase, Shutdown};
use rustix::process::{Signal, getpid, kill_process};

#[tokio::test]
async fn sigterm_triggers_the_shutdown_and_a_second_one_forces_it() {
    let shutdown = Shutdown::builder()
        .on_signals()
        .hook(
            Hook::new("slow", || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, std::io::Error>(())
            })
            .timeout(Duration::from_secs(7200)),
        )
        .build();
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { shutdown.run().await }
    });
    // The handlers were installed by `build`; yielding lets `run` start waiting.
    tokio::task::yield_now().await;
    assert!(!run.is_finished());
    kill_process(getpid(), Signal::TERM).unwrap();
    shutdown.wait_for(Phase::Hooks).await;
    assert!(shutdown.is_triggered());
    kill_process(getpid(), Signal::TERM).unwrap();

    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the second signal forces the stop")
        .unwrap()
        .unwrap();
    assert!(report.forced);
    assert_eq!(report.hooks[0].outcome, HookOutcome::Interrupted);
    assert_eq!(report.code(), 1);
}
