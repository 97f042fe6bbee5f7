//! [`Batch`]: run an async processor over many items with a concurrency limit.

use std::collections::BTreeMap;
use std::future::{Future, poll_fn};
use std::num::{NonZeroU32, NonZeroUsize};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use futures_core::Stream;
use futures_util::stream::{FuturesUnordered, StreamExt};
use palisade_core::{Backoff, Listener};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::event::{BatchEvent, Progress, StopReason};
use crate::report::{BatchDone, BatchReport, Failure, Interrupted, ItemError, Outcome, Success};

/// The order of the [`BatchReport`]'s lists and of the [`Batch::on_batch`] callbacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Order {
    /// Input order: reports sorted by input position, batch callbacks in batch order (a
    /// finished group waits for the groups before it).
    #[default]
    Input,
    /// Completion order: as items and groups finish.
    Completion,
}

/// Receives each finished group of items; see [`Batch::on_batch`].
///
/// Implemented for `()` (no callback) and for every `FnMut(&BatchDone<'_, T, R, E>)`.
pub trait OnBatch<T, R, E> {
    /// Handles one finished group. Runs on the batch's task, between polls of the in-flight
    /// items: keep it short, and hand slow work to a channel or a task.
    fn on_batch(&mut self, done: &BatchDone<'_, T, R, E>);
}

impl<T, R, E> OnBatch<T, R, E> for () {
    fn on_batch(&mut self, _done: &BatchDone<'_, T, R, E>) {}
}

impl<T, R, E, F> OnBatch<T, R, E> for F
where
    F: FnMut(&BatchDone<'_, T, R, E>),
{
    fn on_batch(&mut self, done: &BatchDone<'_, T, R, E>) {
        self(done);
    }
}

/// Runs an async processor over a list or a stream of items, at most `concurrency` at a time.
///
/// A continuous pool: a new item starts as soon as one finishes, and every item in flight is
/// polled whenever it is woken, whatever the others are doing (no item waits on another's
/// result handling, so none can be starved: the "futurelock" of a `buffered` stream whose
/// consumer awaits something else). Retries, timeouts and cancellation happen inside each
/// item's own future, never in the loop that collects results.
///
/// Configuration is by consuming builder methods; the defaults are: no retry, no timeout,
/// continue after failures, [`Order::Input`], no cancellation token, no listener.
///
/// # Example
///
/// ```
/// use std::num::{NonZeroU32, NonZeroUsize};
/// use std::time::Duration;
/// use palisade_batch::Batch;
/// use palisade_core::Backoff;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let report = Batch::new(NonZeroUsize::new(4).unwrap())
///     .retry(NonZeroU32::new(3).unwrap(), Backoff::constant(Duration::from_millis(10)))
///     .timeout(Duration::from_secs(5))
///     .run(1..=10u32, async |n: &u32| {
///         if n % 5 == 0 { Err("multiple of five") } else { Ok(n * 10) }
///     })
///     .await;
///
/// assert_eq!(report.succeeded.len(), 8);
/// assert_eq!(report.failed.len(), 2);
/// assert_eq!(report.failed[0].item, 5);
/// assert_eq!(report.failed[0].attempts, 3);
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a Batch does nothing until `run` or `run_stream` is awaited"]
pub struct Batch<L = (), B = ()> {
    concurrency: NonZeroUsize,
    retry: Option<Backoff>,
    timeout: Option<Duration>,
    stop_on_error: bool,
    order: Order,
    cancel: Option<CancellationToken>,
    total: Option<u64>,
    group: Option<NonZeroUsize>,
    /// Whether a listener was set: without one, progress needs no clock reading per item.
    listening: bool,
    listener: L,
    on_batch: B,
}

impl Batch {
    /// A run with at most `concurrency` items in flight at once.
    pub const fn new(concurrency: NonZeroUsize) -> Self {
        Self {
            concurrency,
            retry: None,
            timeout: None,
            stop_on_error: false,
            order: Order::Input,
            cancel: None,
            total: None,
            group: None,
            listening: false,
            listener: (),
            on_batch: (),
        }
    }
}

impl<L, B> Batch<L, B> {
    /// Tries each item up to `attempts` times (the first included), waiting between attempts
    /// for the delays of `backoff` (core's [`Backoff`]: its own attempt limit, if lower,
    /// wins; its elapsed-time limit counts from the item's first attempt). A timed-out
    /// attempt is retried like a failed one.
    pub fn retry(mut self, attempts: NonZeroU32, backoff: Backoff) -> Self {
        let attempts = match backoff.max_attempts() {
            Some(own) if own < attempts => own,
            _ => attempts,
        };
        self.retry = Some(backoff.with_max_attempts(attempts));
        self
    }

    /// Fails an attempt that takes longer than `limit` with [`ItemError::TimedOut`]; the
    /// attempt's future is dropped.
    pub const fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// With `true`, the first item that fails for good stops the run: no new item starts,
    /// and the items in flight are interrupted and reported as such. Default `false`: every
    /// item is processed and failures are collected.
    pub const fn stop_on_error(mut self, stop: bool) -> Self {
        self.stop_on_error = stop;
        self
    }

    /// The order of the report's lists and of the batch callbacks; default [`Order::Input`].
    pub const fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Stops the run when `token` is cancelled: no new item starts, the items in flight are
    /// interrupted (their futures dropped), and the report holds everything that finished.
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// The number of items, for progress when the input does not know it (a stream, or an
    /// iterator whose size hint is not exact).
    pub const fn total(mut self, total: u64) -> Self {
        self.total = Some(total);
        self
    }

    /// Sends the run's [`BatchEvent`]s (retries, failures, groups, progress) to `listener`.
    pub fn listener<L2>(self, listener: L2) -> Batch<L2, B> {
        Batch {
            concurrency: self.concurrency,
            retry: self.retry,
            timeout: self.timeout,
            stop_on_error: self.stop_on_error,
            order: self.order,
            cancel: self.cancel,
            total: self.total,
            group: self.group,
            listening: true,
            listener,
            on_batch: self.on_batch,
        }
    }

    /// Groups the input into batches of `size` consecutive items and calls `callback` with
    /// each batch once all its items have finished (the last batch may be shorter). Items
    /// still flow through one continuous pool: a slow item holds back its batch's callback,
    /// never the next items' start.
    pub fn on_batch<B2>(self, size: NonZeroUsize, callback: B2) -> Batch<L, B2> {
        Batch {
            concurrency: self.concurrency,
            retry: self.retry,
            timeout: self.timeout,
            stop_on_error: self.stop_on_error,
            order: self.order,
            cancel: self.cancel,
            total: self.total,
            group: Some(size),
            listening: self.listening,
            listener: self.listener,
            on_batch: callback,
        }
    }

    /// The concurrency limit.
    pub const fn concurrency(&self) -> NonZeroUsize {
        self.concurrency
    }

    /// Processes every item of `items` with `process`, and reports what became of each.
    ///
    /// `process` borrows the item, so a failed item can be retried and handed back in the
    /// report without cloning it. To keep the items a stopped run never took, pass
    /// `iter.by_ref()`.
    pub async fn run<I, F, R, E>(self, items: I, process: F) -> BatchReport<I::Item, R, E>
    where
        I: IntoIterator,
        F: AsyncFn(&I::Item) -> Result<R, E>,
        L: Listener<BatchEvent>,
        B: OnBatch<I::Item, R, E>,
    {
        let items = items.into_iter();
        let total = match (self.total, items.size_hint()) {
            (Some(total), _) => Some(total),
            (None, (low, Some(high))) if low == high => Some(low as u64),
            (None, _) => None,
        };
        self.drive(futures_util::stream::iter(items), total, process)
            .await
    }

    /// As [`run`](Self::run), for items that arrive through a [`Stream`] (read from a file,
    /// a channel, a database cursor). The stream is polled only when there is room in the
    /// pool: a slow processor slows the reading down.
    pub async fn run_stream<S, F, R, E>(self, items: S, process: F) -> BatchReport<S::Item, R, E>
    where
        S: Stream,
        F: AsyncFn(&S::Item) -> Result<R, E>,
        L: Listener<BatchEvent>,
        B: OnBatch<S::Item, R, E>,
    {
        let total = self.total;
        self.drive(items, total, process).await
    }

    async fn drive<S, F, R, E>(
        self,
        items: S,
        total: Option<u64>,
        process: F,
    ) -> BatchReport<S::Item, R, E>
    where
        S: Stream,
        F: AsyncFn(&S::Item) -> Result<R, E>,
        L: Listener<BatchEvent>,
        B: OnBatch<S::Item, R, E>,
    {
        let started = Instant::now();
        // The run's own stop signal: a child of the user's token, so that stopping on an
        // error never cancels the caller's token.
        let stop = match &self.cancel {
            Some(token) => token.child_token(),
            None => CancellationToken::new(),
        };
        let cancellable = self.cancel.is_some();
        let interruptible = cancellable || self.stop_on_error;
        let item = ItemSettings {
            retry: self.retry,
            timeout: self.timeout,
            stop: interruptible.then_some(&stop),
            listener: &self.listener,
        };
        let mut collector = Collector {
            report: BatchReport::new(),
            order: self.order,
            group: self.group,
            groups: BTreeMap::new(),
            next_group: 0,
            taken: 0,
            input_over: false,
            on_batch: self.on_batch,
            listening: self.listening,
            listener: &self.listener,
            progress: Progress {
                done: 0,
                total,
                succeeded: 0,
                failed: 0,
                elapsed: Duration::ZERO,
            },
            started,
        };
        let simple = item.retry.is_none() && item.timeout.is_none() && item.stop.is_none();
        let pool = Pool {
            limit: self.concurrency.get(),
            cancellable,
            stop_on_error: self.stop_on_error,
            stop: &stop,
        };
        // An item without retry, timeout or stop signal has a small future of its own; the
        // full one is boxed, so that pushing it into the pool moves a pointer.
        if simple {
            pool.run(items, &mut collector, |index, value| {
                plain_item(&process, index, value)
            })
            .await;
        } else {
            pool.run(items, &mut collector, |index, value| {
                Box::pin(run_item(&item, &process, index, value))
            })
            .await;
        }

        collector.finish()
    }
}

/// The pool loop's settings.
struct Pool<'a> {
    limit: usize,
    cancellable: bool,
    stop_on_error: bool,
    stop: &'a CancellationToken,
}

impl Pool<'_> {
    /// Takes items while there is room, polls every item in flight, and records each
    /// outcome, until the input is over (or the run stopped) and the pool is empty.
    async fn run<S, Fut, R, E, L, B>(
        self,
        items: S,
        collector: &mut Collector<'_, S::Item, R, E, L, B>,
        mut start: impl FnMut(usize, S::Item) -> Fut,
    ) where
        S: Stream,
        Fut: Future<Output = Outcome<S::Item, R, E>>,
        L: Listener<BatchEvent>,
        B: OnBatch<S::Item, R, E>,
    {
        let Pool {
            limit,
            cancellable,
            stop_on_error,
            stop,
        } = self;
        let mut items = pin!(items);
        let mut cancelled = pin!(stop.cancelled());
        let mut in_flight = FuturesUnordered::new();

        poll_fn(|cx| {
            loop {
                // Without a caller's token only the loop itself stops the run (on an error),
                // and it knows when: the token's future need not be polled.
                if cancellable
                    && collector.report.stopped.is_none()
                    && cancelled.as_mut().poll(cx).is_ready()
                {
                    collector.stop(StopReason::Cancelled);
                }
                // Fill the pool while there is room and input.
                while !collector.input_over && in_flight.len() < limit {
                    match items.as_mut().poll_next(cx) {
                        Poll::Ready(Some(value)) => {
                            in_flight.push(start(collector.taken, value));
                            collector.taken += 1;
                        }
                        Poll::Ready(None) => collector.input_over = true,
                        Poll::Pending => break,
                    }
                }
                // Poll every woken item; collect whatever finished.
                match in_flight.poll_next_unpin(cx) {
                    Poll::Ready(Some(outcome)) => {
                        let failed = collector.record(outcome);
                        if let Some(index) = failed
                            && stop_on_error
                            && collector.report.stopped.is_none()
                        {
                            collector.stop(StopReason::FirstError { index });
                            stop.cancel();
                        }
                    }
                    // Empty pool: done if no more input will come, else wait for the input
                    // (whose waker is registered).
                    Poll::Ready(None) if collector.input_over => return Poll::Ready(()),
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
    }
}

struct ItemSettings<'a, L> {
    retry: Option<Backoff>,
    timeout: Option<Duration>,
    stop: Option<&'a CancellationToken>,
    listener: &'a L,
}

/// One item with a single attempt, no timeout and nothing to interrupt it.
///
/// An `async` block rather than an `async fn`: the block keeps its captures in place, where
/// a function would also copy its arguments into its body's state, and every byte of this
/// future is copied into the pool's allocation for the item.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` makes a larger future"
)]
fn plain_item<'a, T: 'a, F, R: 'a, E: 'a>(
    process: &'a F,
    index: usize,
    item: T,
) -> impl Future<Output = Outcome<T, R, E>> + 'a
where
    F: AsyncFn(&T) -> Result<R, E>,
{
    async move {
        match process(&item).await {
            Ok(value) => Outcome::Succeeded(Success {
                index,
                item,
                value,
                attempts: 1,
            }),
            Err(error) => Outcome::Failed(Failure {
                index,
                item,
                error: ItemError::Failed(error),
                attempts: 1,
            }),
        }
    }
}

/// One item's whole life: attempts, timeouts, retry waits, interruption.
async fn run_item<T, F, R, E, L>(
    settings: &ItemSettings<'_, L>,
    process: &F,
    index: usize,
    item: T,
) -> Outcome<T, R, E>
where
    F: AsyncFn(&T) -> Result<R, E>,
    L: Listener<BatchEvent>,
{
    // Made at the first failure, and boxed: most items never need it.
    let mut delays: Option<Box<palisade_core::backoff::Delays>> = None;
    let first = settings.retry.map(|_| Instant::now());
    let mut attempts = 0u32;
    loop {
        attempts = attempts.saturating_add(1);
        // The plain attempt stays inline; one with a timeout or a stop signal is boxed, so
        // that the timer and the signal's waiter do not weigh on every item's future.
        let result = if settings.timeout.is_none() && settings.stop.is_none() {
            Some(process(&item).await.map_err(ItemError::Failed))
        } else {
            Box::pin(guarded_attempt(settings, process, &item)).await
        };
        let error = match result {
            Some(Ok(value)) => {
                return Outcome::Succeeded(Success {
                    index,
                    item,
                    value,
                    attempts,
                });
            }
            Some(Err(error)) => error,
            None => {
                return Outcome::Interrupted(Interrupted {
                    index,
                    item,
                    attempts,
                });
            }
        };
        let elapsed = first.map_or(Duration::ZERO, |t| t.elapsed());
        if delays.is_none() {
            delays = settings.retry.map(|backoff| Box::new(backoff.delays()));
        }
        let Some(delay) = delays.as_mut().and_then(|d| d.next_after(elapsed)) else {
            return Outcome::Failed(Failure {
                index,
                item,
                error,
                attempts,
            });
        };
        tracing::debug!(index, attempt = attempts, ?delay, "batch item retrying");
        settings.listener.on_event(&BatchEvent::Retrying {
            index,
            attempt: attempts,
            delay,
        });
        // Boxed, like a guarded attempt: retries are the exception.
        if !Box::pin(wait_to_retry(settings.stop, delay)).await {
            return Outcome::Interrupted(Interrupted {
                index,
                item,
                attempts,
            });
        }
    }
}

/// One attempt with its timeout and stop signal; `None` if the run stopped first.
async fn guarded_attempt<T, F, R, E, L>(
    settings: &ItemSettings<'_, L>,
    process: &F,
    item: &T,
) -> Option<Result<R, ItemError<E>>>
where
    F: AsyncFn(&T) -> Result<R, E>,
{
    let attempt = async {
        match settings.timeout {
            None => process(item).await.map_err(ItemError::Failed),
            Some(limit) => match tokio::time::timeout(limit, process(item)).await {
                Ok(result) => result.map_err(ItemError::Failed),
                Err(_) => Err(ItemError::TimedOut(limit)),
            },
        }
    };
    match settings.stop {
        None => Some(attempt.await),
        Some(stop) => tokio::select! {
            biased;
            () = stop.cancelled() => None,
            result = attempt => Some(result),
        },
    }
}

/// Waits `delay` before a retry; `false` if the run stopped first.
async fn wait_to_retry(stop: Option<&CancellationToken>, delay: Duration) -> bool {
    match stop {
        None => {
            tokio::time::sleep(delay).await;
            true
        }
        Some(stop) => tokio::select! {
            biased;
            () = stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        },
    }
}

/// The collecting side: report, groups, progress.
struct Collector<'a, T, R, E, L, B> {
    report: BatchReport<T, R, E>,
    order: Order,
    group: Option<NonZeroUsize>,
    /// Unfinished or held-back groups, by group number.
    groups: BTreeMap<usize, Vec<Outcome<T, R, E>>>,
    /// With [`Order::Input`], the next group to hand out.
    next_group: usize,
    /// Items taken from the input so far.
    taken: usize,
    /// No more items will be taken (input ended or run stopped).
    input_over: bool,
    on_batch: B,
    listening: bool,
    listener: &'a L,
    progress: Progress,
    started: Instant,
}

impl<T, R, E, L, B> Collector<'_, T, R, E, L, B>
where
    L: Listener<BatchEvent>,
    B: OnBatch<T, R, E>,
{
    fn stop(&mut self, reason: StopReason) {
        tracing::info!(?reason, "batch run stopping");
        self.report.stopped = Some(reason);
        self.input_over = true;
        self.listener.on_event(&BatchEvent::Stopped(reason));
    }

    /// Counts and files a finished item; returns its index if it failed. Small enough to
    /// be inlined into the pool's loop: it runs once per item.
    #[inline]
    fn record(&mut self, outcome: Outcome<T, R, E>) -> Option<usize> {
        self.progress.done += 1;
        let failed = match &outcome {
            Outcome::Succeeded(s) => {
                self.progress.succeeded += 1;
                self.report.retries += u64::from(s.attempts - 1);
                None
            }
            other => self.count_unsuccessful(other),
        };
        if self.listening {
            self.send_progress();
        }
        match self.group {
            None => self.report.push(outcome),
            Some(size) => self.file_in_group(outcome, size.get()),
        }
        failed
    }

    /// Counts a failed or interrupted item; returns its index if it failed.
    fn count_unsuccessful(&mut self, outcome: &Outcome<T, R, E>) -> Option<usize> {
        self.report.retries += u64::from(outcome.attempts() - 1);
        let Outcome::Failed(f) = outcome else {
            return None;
        };
        self.progress.failed += 1;
        let (index, attempts) = (f.index, f.attempts);
        tracing::debug!(index, attempts, "batch item failed");
        self.listener
            .on_event(&BatchEvent::ItemFailed { index, attempts });
        Some(index)
    }

    fn send_progress(&mut self) {
        self.progress.elapsed = self.started.elapsed();
        self.listener.on_event(&BatchEvent::Progress(self.progress));
    }

    fn file_in_group(&mut self, outcome: Outcome<T, R, E>, size: usize) {
        let group = outcome.index() / size;
        self.groups.entry(group).or_default().push(outcome);
        self.release_groups(size);
    }

    /// How many items group `group` holds, as far as is known now.
    fn group_len(&self, group: usize, size: usize) -> usize {
        let start = group * size;
        if self.input_over {
            self.taken.saturating_sub(start).min(size)
        } else {
            size
        }
    }

    fn is_complete(&self, group: usize, size: usize) -> bool {
        let have = self.groups.get(&group).map_or(0, Vec::len);
        have >= self.group_len(group, size) && have > 0
    }

    fn release_groups(&mut self, size: usize) {
        match self.order {
            Order::Input => {
                while self.is_complete(self.next_group, size) {
                    let group = self.next_group;
                    self.next_group += 1;
                    self.hand_out(group);
                }
            }
            Order::Completion => {
                let complete: Vec<usize> = self
                    .groups
                    .keys()
                    .copied()
                    .filter(|&g| self.is_complete(g, size))
                    .collect();
                for group in complete {
                    self.hand_out(group);
                }
            }
        }
    }

    fn hand_out(&mut self, group: usize) {
        let Some(mut outcomes) = self.groups.remove(&group) else {
            return;
        };
        outcomes.sort_unstable_by_key(Outcome::index);
        let done = BatchDone {
            index: group,
            outcomes: &outcomes,
        };
        let succeeded = done.succeeded();
        let failed = done.failed();
        self.on_batch.on_batch(&done);
        tracing::debug!(batch = group, succeeded, failed, "batch completed");
        self.listener.on_event(&BatchEvent::BatchCompleted {
            batch: group,
            succeeded,
            failed,
        });
        for outcome in outcomes {
            self.report.push(outcome);
        }
    }

    fn finish(mut self) -> BatchReport<T, R, E> {
        self.input_over = true;
        // Everything taken has finished: every group left is complete.
        let left: Vec<usize> = self.groups.keys().copied().collect();
        for group in left {
            self.hand_out(group);
        }
        if self.order == Order::Input {
            self.report.sort_by_index();
        }
        self.report.elapsed = self.started.elapsed();
        self.progress.elapsed = self.report.elapsed;
        tracing::debug!(
            done = self.progress.done,
            succeeded = self.progress.succeeded,
            failed = self.progress.failed,
            stopped = ?self.report.stopped,
            "batch run finished"
        );
        self.listener.on_event(&BatchEvent::Finished {
            progress: self.progress,
            stopped: self.report.stopped,
        });
        self.report
    }
}
