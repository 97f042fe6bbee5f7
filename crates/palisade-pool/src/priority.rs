//! Priorities, and where a request's priority comes from.

use std::fmt;

/// How urgent a call is: **lower numbers go first**, from 0 (the most urgent) to 255;
/// [`Priority::DEFAULT`] is 5.
///
/// Priorities only matter while calls wait: an uncontended pool admits every call at once.
/// With the `http` feature, a `Priority` put in a request's extensions is what
/// [`PriorityExtension`](crate::http::PriorityExtension) reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Priority {
    /// The most urgent priority, 0.
    pub const HIGHEST: Self = Self(0);
    /// The priority of calls that say nothing, 5.
    pub const DEFAULT: Self = Self(5);
    /// The least urgent priority, 255.
    pub const LOWEST: Self = Self(u8::MAX);

    /// The priority `level` (lower goes first).
    pub const fn new(level: u8) -> Self {
        Self(level)
    }

    /// The level (lower goes first).
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl From<u8> for Priority {
    fn from(level: u8) -> Self {
        Self(level)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Decides a request's [`Priority`].
///
/// Implemented by [`DefaultPriority`] (every request is 5), by [`PriorityFn`] (a closure;
/// see [`priority_fn`]) and, with the `http` feature, by
/// [`PriorityHeader`](crate::http::PriorityHeader) and
/// [`PriorityExtension`](crate::http::PriorityExtension).
///
/// It is asked only when a call has to wait, so it costs nothing while the pool has room.
pub trait Prioritize<Request> {
    /// The priority of `request`.
    fn priority(&self, request: &Request) -> Priority;
}

/// Gives every request [`Priority::DEFAULT`] (5): one FIFO (or LIFO) queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultPriority;

impl<Request> Prioritize<Request> for DefaultPriority {
    #[inline]
    fn priority(&self, _request: &Request) -> Priority {
        Priority::DEFAULT
    }
}

/// A [`Prioritize`] made from a closure; see [`priority_fn`].
#[derive(Clone, Copy)]
pub struct PriorityFn<F>(F);

/// Makes a [`Prioritize`] from a closure `Fn(&Request) -> Priority` (or `-> u8`).
///
/// ```
/// use palisade_pool::{Prioritize, Priority, priority_fn};
///
/// // Payments before reports.
/// let by_kind = priority_fn(|job: &(&str, u64)| if job.0 == "payment" { 1 } else { 10 });
/// assert_eq!(by_kind.priority(&("payment", 5000)), Priority::new(1));
/// ```
pub const fn priority_fn<F>(f: F) -> PriorityFn<F> {
    PriorityFn(f)
}

impl<Request, F, P> Prioritize<Request> for PriorityFn<F>
where
    F: Fn(&Request) -> P,
    P: Into<Priority>,
{
    #[inline]
    fn priority(&self, request: &Request) -> Priority {
        (self.0)(request).into()
    }
}

impl<F> fmt::Debug for PriorityFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PriorityFn").finish_non_exhaustive()
    }
}
