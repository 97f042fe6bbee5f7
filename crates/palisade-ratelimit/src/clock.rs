//! Where a limiter reads the time: [`Clock`].

/// Where a limiter reads the time.
///
/// | clock | follows `tokio::time::pause` | cost per read on the bench machine |
/// |---|---|---|
/// | [`Clock::tokio`] (the default) | **yes** | a `clock_gettime` (about 20 ns) |
/// | [`Clock::quanta`] (feature `quanta`) | **no** | a TSC read (a few ns) |
///
/// The default is tokio's clock, so tests drive a limiter with `tokio::time::pause` and
/// `advance` and nothing waits on real time. [`Clock::quanta`] reads the CPU's time-stamp
/// counter through the [`quanta`](https://docs.rs/quanta) crate (the clock governor uses):
/// cheaper on a hot path, but it **ignores tokio's paused clock**, so a limiter on it keeps
/// real time in tests. Choose it in production builds where the check's cost matters; keep
/// the default wherever tests pause time.
///
/// Wait mode sleeps on tokio's timers whichever clock decides: the waits are the limiter's
/// retry-after durations.
///
/// ```
/// use std::num::NonZeroU32;
/// use palisade_ratelimit::{Clock, Quota, RateLimitConfig};
///
/// let config = RateLimitConfig::builder(Quota::per_second(NonZeroU32::new(100).unwrap()))
///     .clock(Clock::tokio())
///     .build()?;
/// # let _ = config;
/// # Ok::<(), palisade_ratelimit::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Clock {
    source: Source,
}

#[derive(Debug, Clone, Default)]
enum Source {
    #[default]
    Tokio,
    #[cfg(feature = "quanta")]
    Quanta(quanta::Clock),
}

impl Clock {
    /// Tokio's clock (`tokio::time::Instant`): follows `tokio::time::pause`. The default.
    pub const fn tokio() -> Self {
        Self {
            source: Source::Tokio,
        }
    }

    /// The CPU's time-stamp counter, through `quanta` (feature `quanta`): cheaper to read,
    /// but **does not follow `tokio::time::pause`**. The first call calibrates the counter
    /// (once per process, a few milliseconds).
    #[cfg(feature = "quanta")]
    pub fn quanta() -> Self {
        Self {
            source: Source::Quanta(quanta::Clock::new()),
        }
    }

    /// A quanta clock that moves only when told.
    #[cfg(all(test, feature = "quanta"))]
    pub(crate) fn quanta_mock() -> (Self, std::sync::Arc<quanta::Mock>) {
        let (clock, mock) = quanta::Clock::mock();
        (
            Self {
                source: Source::Quanta(clock),
            },
            mock,
        )
    }

    /// Whether this clock follows `tokio::time::pause`.
    pub const fn follows_tokio(&self) -> bool {
        matches!(self.source, Source::Tokio)
    }

    /// Starts counting: the time zero of a limiter's nanoseconds.
    pub(crate) fn start(&self) -> Epoch {
        match &self.source {
            Source::Tokio => Epoch::Tokio(tokio::time::Instant::now()),
            #[cfg(feature = "quanta")]
            Source::Quanta(clock) => Epoch::Quanta {
                start: clock.raw(),
                clock: clock.clone(),
            },
        }
    }
}

/// A started clock: reads nanoseconds since its start.
#[derive(Debug)]
pub(crate) enum Epoch {
    Tokio(tokio::time::Instant),
    #[cfg(feature = "quanta")]
    Quanta {
        clock: quanta::Clock,
        start: u64,
    },
}

impl Epoch {
    /// Nanoseconds since the start; never goes backwards by more than the source does.
    #[inline]
    pub(crate) fn nanos(&self) -> u64 {
        match self {
            Epoch::Tokio(start) => {
                crate::limiter::nanos(tokio::time::Instant::now().saturating_duration_since(*start))
            }
            #[cfg(feature = "quanta")]
            Epoch::Quanta { clock, start } => clock.delta_as_nanos(*start, clock.raw()),
        }
    }

    /// The clock it reads.
    pub(crate) fn clock(&self) -> Clock {
        match self {
            Epoch::Tokio(_) => Clock::tokio(),
            #[cfg(feature = "quanta")]
            Epoch::Quanta { clock, .. } => Clock {
                source: Source::Quanta(clock.clone()),
            },
        }
    }
}
