//! An [`indicatif`] progress bar that follows a run (feature `progress`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use palisade_core::Listener;

use crate::event::BatchEvent;

/// A [`Listener`] that draws a run's progress as an [`indicatif`] bar on standard error:
/// done / total, items per second, ETA, and the failures so far (feature `progress`).
///
/// indicatif limits redrawing to a few times a second, so updating on every item is cheap.
/// When the total is unknown the bar is a spinner with a count.
///
/// ```
/// use std::num::NonZeroUsize;
/// use palisade_batch::{Batch, BatchProgressBar};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bar = BatchProgressBar::hidden(); // `BatchProgressBar::new()` draws on stderr
/// let report = Batch::new(NonZeroUsize::new(8).unwrap())
///     .listener(bar.clone())
///     .run(0..100u32, async |n: &u32| Ok::<_, ()>(n + 1))
///     .await;
/// assert_eq!(bar.bar().position(), 100);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BatchProgressBar {
    bar: ProgressBar,
}

const TEMPLATE: &str =
    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta}) {msg}";
const SPINNER: &str = "{spinner} [{elapsed_precise}] {pos} items ({per_sec}) {msg}";

impl BatchProgressBar {
    /// A bar drawn on standard error.
    pub fn new() -> Self {
        Self::with_bar(ProgressBar::no_length())
    }

    /// A bar that draws nothing (for tests, or when standard error is not a terminal).
    pub fn hidden() -> Self {
        Self::with_bar(ProgressBar::with_draw_target(
            None,
            ProgressDrawTarget::hidden(),
        ))
    }

    /// Follows the run on an existing indicatif bar (one of a `MultiProgress`, say); its
    /// style is replaced.
    pub fn with_bar(bar: ProgressBar) -> Self {
        if let Ok(style) = ProgressStyle::with_template(SPINNER) {
            bar.set_style(style);
        }
        Self { bar }
    }

    /// The indicatif bar.
    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }
}

impl Default for BatchProgressBar {
    fn default() -> Self {
        Self::new()
    }
}

impl Listener<BatchEvent> for BatchProgressBar {
    fn on_event(&self, event: &BatchEvent) {
        match event {
            BatchEvent::Progress(progress) => {
                if let Some(total) = progress.total
                    && self.bar.length() != Some(total)
                {
                    self.bar.set_length(total);
                    if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
                        self.bar.set_style(style);
                    }
                }
                self.bar.set_position(progress.done);
                if progress.failed > 0 {
                    self.bar.set_message(format!("{} failed", progress.failed));
                }
            }
            BatchEvent::Finished { progress, stopped } => {
                self.bar.set_position(progress.done);
                match stopped {
                    Some(reason) => self.bar.abandon_with_message(format!(
                        "stopped ({reason:?}); {} failed",
                        progress.failed
                    )),
                    None => self
                        .bar
                        .finish_with_message(format!("{} failed", progress.failed)),
                }
            }
            _ => {}
        }
    }
}
