//! What a batch run hands back: every item, with what became of it.

use std::fmt;
use std::time::Duration;

use crate::event::StopReason;

/// Why an item failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ItemError<E> {
    /// The processor returned an error.
    #[error("item failed: {0}")]
    Failed(E),
    /// An attempt took longer than [`Batch::timeout`](crate::Batch::timeout).
    #[error("item timed out after {0:?}")]
    TimedOut(Duration),
}

impl<E> ItemError<E> {
    /// The processor's error, if that is why the item failed.
    pub fn into_inner(self) -> Option<E> {
        match self {
            ItemError::Failed(e) => Some(e),
            ItemError::TimedOut(_) => None,
        }
    }
}

/// An item that succeeded, with its result.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Success<T, R> {
    /// The item's position in the input, from 0.
    pub index: usize,
    /// The item.
    pub item: T,
    /// What the processor returned.
    pub value: R,
    /// Attempts made (1 when the first one succeeded).
    pub attempts: u32,
}

/// An item that failed after all its attempts, with its last error.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Failure<T, E> {
    /// The item's position in the input, from 0.
    pub index: usize,
    /// The item.
    pub item: T,
    /// The last attempt's error.
    pub error: ItemError<E>,
    /// Attempts made.
    pub attempts: u32,
}

/// An item that was in flight when the run stopped: its attempt was dropped unfinished.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Interrupted<T> {
    /// The item's position in the input, from 0.
    pub index: usize,
    /// The item.
    pub item: T,
    /// Attempts started, the interrupted one included.
    pub attempts: u32,
}

/// What became of one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<T, R, E> {
    /// It succeeded.
    Succeeded(Success<T, R>),
    /// It failed after all its attempts.
    Failed(Failure<T, E>),
    /// The run stopped while it was in flight.
    Interrupted(Interrupted<T>),
}

impl<T, R, E> Outcome<T, R, E> {
    /// The item's position in the input.
    pub fn index(&self) -> usize {
        match self {
            Outcome::Succeeded(s) => s.index,
            Outcome::Failed(f) => f.index,
            Outcome::Interrupted(i) => i.index,
        }
    }

    /// The item.
    pub fn item(&self) -> &T {
        match self {
            Outcome::Succeeded(s) => &s.item,
            Outcome::Failed(f) => &f.item,
            Outcome::Interrupted(i) => &i.item,
        }
    }

    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        match self {
            Outcome::Succeeded(s) => s.attempts,
            Outcome::Failed(f) => f.attempts,
            Outcome::Interrupted(i) => i.attempts,
        }
    }

    /// Whether the item succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded(_))
    }
}

/// One finished group of consecutive input items, handed to the
/// [`Batch::on_batch`](crate::Batch::on_batch) callback.
pub struct BatchDone<'a, T, R, E> {
    pub(crate) index: usize,
    pub(crate) outcomes: &'a [Outcome<T, R, E>],
}

impl<'a, T, R, E> BatchDone<'a, T, R, E> {
    /// The group's number, from 0: it holds input items `index·size .. (index+1)·size`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Every item of the group with its outcome, in input order.
    pub fn outcomes(&self) -> &'a [Outcome<T, R, E>] {
        self.outcomes
    }

    /// The group's successful results, in input order.
    pub fn values(&self) -> impl Iterator<Item = &'a R> + 'a {
        self.outcomes.iter().filter_map(|o| match o {
            Outcome::Succeeded(s) => Some(&s.value),
            _ => None,
        })
    }

    /// How many items of the group succeeded.
    pub fn succeeded(&self) -> usize {
        self.outcomes.iter().filter(|o| o.is_success()).count()
    }

    /// How many items of the group failed.
    pub fn failed(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Failed(_)))
            .count()
    }
}

impl<T: fmt::Debug, R: fmt::Debug, E: fmt::Debug> fmt::Debug for BatchDone<'_, T, R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchDone")
            .field("index", &self.index)
            .field("outcomes", &self.outcomes)
            .finish()
    }
}

/// The result of a run: every item that was taken from the input, with what became of it.
///
/// Nothing is hidden: an item is in exactly one of `succeeded`, `failed` or `interrupted`.
/// Items the run never took from the input (after a stop) are not here; pass
/// `iter.by_ref()` to [`Batch::run`](crate::Batch::run) to keep them.
///
/// The lists are in input order with [`Order::Input`](crate::Order::Input) (the default) and
/// in completion order with [`Order::Completion`](crate::Order::Completion).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BatchReport<T, R, E> {
    /// Items that succeeded, with their results.
    pub succeeded: Vec<Success<T, R>>,
    /// Items that failed after all their attempts, with their last errors.
    pub failed: Vec<Failure<T, E>>,
    /// Items that were in flight when the run stopped.
    pub interrupted: Vec<Interrupted<T>>,
    /// Why the run stopped early; `None` when it processed its whole input.
    pub stopped: Option<StopReason>,
    /// Retries made, over all items.
    pub retries: u64,
    /// How long the run took (tokio's clock).
    pub elapsed: Duration,
}

impl<T, R, E> BatchReport<T, R, E> {
    pub(crate) fn new() -> Self {
        Self {
            succeeded: Vec::new(),
            failed: Vec::new(),
            interrupted: Vec::new(),
            stopped: None,
            retries: 0,
            elapsed: Duration::ZERO,
        }
    }

    pub(crate) fn push(&mut self, outcome: Outcome<T, R, E>) {
        match outcome {
            Outcome::Succeeded(s) => self.succeeded.push(s),
            Outcome::Failed(f) => self.failed.push(f),
            Outcome::Interrupted(i) => self.interrupted.push(i),
        }
    }

    pub(crate) fn sort_by_index(&mut self) {
        self.succeeded.sort_unstable_by_key(|s| s.index);
        self.failed.sort_unstable_by_key(|f| f.index);
        self.interrupted.sort_unstable_by_key(|i| i.index);
    }

    /// Items taken from the input: succeeded + failed + interrupted.
    pub fn len(&self) -> usize {
        self.succeeded.len() + self.failed.len() + self.interrupted.len()
    }

    /// Whether no item was taken from the input.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every item taken succeeded and the run was not stopped.
    pub fn is_complete_success(&self) -> bool {
        self.failed.is_empty() && self.interrupted.is_empty() && self.stopped.is_none()
    }

    /// The successful results alone, in the report's order.
    pub fn into_values(self) -> Vec<R> {
        self.succeeded.into_iter().map(|s| s.value).collect()
    }
}
