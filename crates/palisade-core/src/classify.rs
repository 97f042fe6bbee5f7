//! Deciding what a call's result means: success, failure, or neither.
//!
//! A circuit breaker counts failures, a retry layer retries them, an adaptive limiter backs off
//! on them: they all ask a [`Classify`] first, so "what is a failure" is configured once and the
//! same everywhere. A classifier sees the result and how long the call took, so slow calls can
//! count as failures too ([`SlowAsFailure`]).
//!
//! - [`DefaultClassify`]: every `Ok` is a success, every `Err` a failure.
//! - [`classify_fn`]: any closure.
//! - [`SlowAsFailure`]: wraps a classifier; a success slower than a threshold becomes a failure.
//! - `StatusClassify` (feature `http`): for `http::Response`s; 5xx and 429 fail by default.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_core::classify::{Classify, DefaultClassify, Outcome, SlowAsFailure};
//!
//! let classify = SlowAsFailure::new(DefaultClassify, Duration::from_secs(1));
//! let fast = Duration::from_millis(20);
//! let slow = Duration::from_secs(3);
//!
//! let ok: Result<u32, &str> = Ok(200);
//! let err: Result<u32, &str> = Err("connection reset");
//!
//! assert_eq!(classify.classify(ok.as_ref(), fast), Outcome::Success);
//! assert_eq!(classify.classify(ok.as_ref(), slow), Outcome::Failure);
//! assert_eq!(classify.classify(err.as_ref(), fast), Outcome::Failure);
//! ```

use std::fmt;
use std::time::Duration;

/// What a call's result means to a resilience component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call worked: it counts towards the success rate.
    Success,
    /// The call failed: breakers count it, retries may retry it.
    Failure,
    /// Neither: not counted at all (a cancelled call, a client error that says nothing about
    /// the service's health).
    Ignored,
}

/// Decides the [`Outcome`] of a call from its result and its duration.
///
/// `T` is the response type and `E` the error type of the service being wrapped.
pub trait Classify<T, E> {
    /// Classifies one result. `elapsed` is the time from the call to its completion.
    fn classify(&self, result: Result<&T, &E>, elapsed: Duration) -> Outcome;

    /// Whether [`classify`](Classify::classify) reads `elapsed`. Components skip reading the
    /// clock per call (tens of nanoseconds) for classifiers that return `false`; those are
    /// then passed [`Duration::ZERO`]. Defaults to `true`, which is always correct.
    fn uses_elapsed(&self) -> bool {
        true
    }
}

/// Every `Ok` is a [`Outcome::Success`], every `Err` a [`Outcome::Failure`]; duration is ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultClassify;

impl<T, E> Classify<T, E> for DefaultClassify {
    fn classify(&self, result: Result<&T, &E>, _elapsed: Duration) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }

    fn uses_elapsed(&self) -> bool {
        false
    }
}

/// A classifier made from a closure; see [`classify_fn`].
#[derive(Clone, Copy)]
pub struct ClassifyFn<F>(F);

/// Makes a classifier from a closure `Fn(Result<&T, &E>, Duration) -> Outcome`.
///
/// ```
/// use std::time::Duration;
/// use palisade_core::classify::{classify_fn, Classify, Outcome};
///
/// // A `NotFound` error says nothing about the service's health.
/// let classify = classify_fn(|result: Result<&u32, &std::io::Error>, _elapsed: Duration| {
///     match result {
///         Ok(_) => Outcome::Success,
///         Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Ignored,
///         Err(_) => Outcome::Failure,
///     }
/// });
/// let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
/// assert_eq!(classify.classify(Err(&missing), Duration::ZERO), Outcome::Ignored);
/// ```
pub const fn classify_fn<F>(f: F) -> ClassifyFn<F> {
    ClassifyFn(f)
}

impl<F, T, E> Classify<T, E> for ClassifyFn<F>
where
    F: Fn(Result<&T, &E>, Duration) -> Outcome,
{
    fn classify(&self, result: Result<&T, &E>, elapsed: Duration) -> Outcome {
        (self.0)(result, elapsed)
    }
}

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClassifyFn").finish_non_exhaustive()
    }
}

/// Turns a success that took at least `threshold` into a [`Outcome::Failure`].
///
/// Failures and ignored outcomes are passed through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowAsFailure<C> {
    inner: C,
    threshold: Duration,
}

impl<C> SlowAsFailure<C> {
    /// Wraps `inner`; successes that took `threshold` or longer become failures.
    pub const fn new(inner: C, threshold: Duration) -> Self {
        Self { inner, threshold }
    }

    /// The duration from which a success counts as a failure.
    pub const fn threshold(&self) -> Duration {
        self.threshold
    }
}

impl<C, T, E> Classify<T, E> for SlowAsFailure<C>
where
    C: Classify<T, E>,
{
    fn classify(&self, result: Result<&T, &E>, elapsed: Duration) -> Outcome {
        match self.inner.classify(result, elapsed) {
            Outcome::Success if elapsed >= self.threshold => Outcome::Failure,
            outcome => outcome,
        }
    }
}

#[cfg(feature = "http")]
pub use self::status::StatusClassify;

#[cfg(feature = "http")]
mod status {
    use super::{Classify, Outcome};
    use std::fmt;
    use std::time::Duration;

    /// Classifies `http::Response`s by status code (feature `http`).
    ///
    /// By default 5xx and `429 Too Many Requests` are failures, every other status a
    /// success, and every `Err` (a connection error, a timeout) a failure. Any status can be
    /// reassigned with [`StatusClassify::with`]. Lookups are a bit test, no allocation.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::{Response, StatusCode};
    /// use palisade_core::classify::{Classify, Outcome, StatusClassify};
    ///
    /// // 501 Not Implemented will not get better by retrying or waiting: not a failure.
    /// let classify = StatusClassify::default().with(StatusCode::NOT_IMPLEMENTED, Outcome::Ignored);
    /// let response = |code: u16| Response::builder().status(code).body(()).unwrap();
    ///
    /// let outcome = |code| Classify::<_, ()>::classify(&classify, Ok(&response(code)), Duration::ZERO);
    /// assert_eq!(outcome(200), Outcome::Success);
    /// assert_eq!(outcome(429), Outcome::Failure);
    /// assert_eq!(outcome(503), Outcome::Failure);
    /// assert_eq!(outcome(501), Outcome::Ignored);
    /// ```
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub struct StatusClassify {
        // One bit per status code from 100 to 999 in each set; a code in neither set succeeds.
        failure: [u64; WORDS],
        ignored: [u64; WORDS],
    }

    const FIRST: u16 = 100;
    const WORDS: usize = 15; // 900 codes, 960 bits

    impl Default for StatusClassify {
        /// 5xx and 429 are failures; everything else succeeds.
        fn default() -> Self {
            let mut classify = Self::all_success();
            let mut code = 500;
            while code <= 599 {
                classify.set(code, Outcome::Failure);
                code += 1;
            }
            classify.set(429, Outcome::Failure);
            classify
        }
    }

    impl StatusClassify {
        /// Every status succeeds (only `Err`s fail); reassign codes with [`StatusClassify::with`].
        pub const fn all_success() -> Self {
            Self {
                failure: [0; WORDS],
                ignored: [0; WORDS],
            }
        }

        /// Classifies `status` as `outcome`.
        #[must_use]
        pub fn with(mut self, status: http::StatusCode, outcome: Outcome) -> Self {
            self.set(status.as_u16(), outcome);
            self
        }

        /// The outcome of a response with `status`.
        pub fn outcome(&self, status: http::StatusCode) -> Outcome {
            let (word, bit) = Self::slot(status.as_u16());
            if self.failure[word] & bit != 0 {
                Outcome::Failure
            } else if self.ignored[word] & bit != 0 {
                Outcome::Ignored
            } else {
                Outcome::Success
            }
        }

        fn set(&mut self, code: u16, outcome: Outcome) {
            let (word, bit) = Self::slot(code);
            self.failure[word] &= !bit;
            self.ignored[word] &= !bit;
            match outcome {
                Outcome::Success => {}
                Outcome::Failure => self.failure[word] |= bit,
                Outcome::Ignored => self.ignored[word] |= bit,
            }
        }

        /// `http::StatusCode` guarantees 100..=999, so the index is always in range.
        fn slot(code: u16) -> (usize, u64) {
            let index = usize::from(code.saturating_sub(FIRST)).min(WORDS * 64 - 1);
            (index / 64, 1 << (index % 64))
        }
    }

    impl<B, E> Classify<http::Response<B>, E> for StatusClassify {
        fn classify(&self, result: Result<&http::Response<B>, &E>, _elapsed: Duration) -> Outcome {
            match result {
                Ok(response) => self.outcome(response.status()),
                Err(_) => Outcome::Failure,
            }
        }

        fn uses_elapsed(&self) -> bool {
            false
        }
    }

    impl fmt::Debug for StatusClassify {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let codes = |set: &[u64; WORDS]| {
                (0..WORDS * 64)
                    .filter(|i| set[i / 64] & (1 << (i % 64)) != 0)
                    .map(|i| i + usize::from(FIRST))
                    .collect::<Vec<_>>()
            };
            f.debug_struct("StatusClassify")
                .field("failure", &codes(&self.failure))
                .field("ignored", &codes(&self.ignored))
                .finish()
        }
    }
}
