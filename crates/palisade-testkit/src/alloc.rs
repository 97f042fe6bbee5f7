//! Counting heap allocations, for tests that prove a hot path allocates nothing.
//!
//! A test binary installs [`CountingAllocator`] as its global allocator and reads
//! [`allocations`] before and after the code under test. Counts are per thread, so the test
//! harness's own threads do not disturb them.
//!
//! ```ignore
//! use palisade_testkit::alloc::{CountingAllocator, allocations};
//!
//! #[global_allocator]
//! static GLOBAL: CountingAllocator = CountingAllocator;
//!
//! let before = allocations();
//! hot_path();
//! assert_eq!(allocations() - before, 0);
//! ```
//!
//! (`ignore`d here: a doctest cannot install a global allocator of its own.)
//!
//! It also tracks live heap bytes across all threads, and their peak, for tests that prove
//! memory does not grow with the input: [`reset_peak`] before, [`peak_bytes`] after.
//!
//! ```ignore
//! let baseline = palisade_testkit::alloc::reset_peak();
//! stream_a_large_body();
//! assert!(palisade_testkit::alloc::peak_bytes() - baseline < 8 << 20);
//! ```

// A global allocator is `unsafe` by nature; the workspace denies `unsafe` everywhere else.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

thread_local! {
    // A `const` thread-local without destructor: reading it never allocates.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Heap bytes allocated and not yet freed, by every thread.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The highest [`LIVE`] since the last [`reset_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting each allocation made on the current thread and the live
/// heap bytes of the process.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

// SAFETY: every call is forwarded unchanged to the system allocator; it only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract, which we pass on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// How many allocations the current thread has made through [`CountingAllocator`].
#[must_use]
pub fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

/// Heap bytes allocated through [`CountingAllocator`] and not yet freed, by every thread.
#[must_use]
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// Starts a new peak at the current [`live_bytes`], and returns them (the baseline to
/// subtract from [`peak_bytes`]).
pub fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::SeqCst);
    PEAK.store(live, Ordering::SeqCst);
    live
}

/// The highest [`live_bytes`] since the last [`reset_peak`] (or the start).
#[must_use]
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::SeqCst)
}

/// Polls `future` once, with a waker that does nothing, and returns its output.
///
/// # Panics
///
/// If the future is not ready at once: a hot-path test drives futures that complete
/// immediately.
pub fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the future was expected to complete at once"),
    }
}
