//! Random call sequences through the breaker and through a small reference model of its
//! state machine must give the same state, and the same admission, after every step.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;

use palisade_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, State};
use palisade_core::backoff::{Backoff, Delays, Jitter};
use palisade_core::classify::{Outcome, classify_fn};
use palisade_core::{Rejection, RetryAfter};
use proptest::prelude::*;
use tower::{Layer, ServiceExt};

#[derive(Debug, Clone, Copy)]
enum Step {
    Call(Outcome),
    Wait(Duration),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Call(Outcome::Success)),
        4 => Just(Step::Call(Outcome::Failure)),
        1 => Just(Step::Call(Outcome::Ignored)),
        2 => (0u64..3_000).prop_map(|ms| Step::Wait(Duration::from_millis(ms))),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Policy {
    Rate {
        window: u32,
        min_calls: u32,
        rate: u32,
    },
    Consecutive(u32),
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        (1u32..12)
            .prop_flat_map(|window| (Just(window), 1..=window, 1u32..=100))
            .prop_map(|(window, min_calls, rate)| Policy::Rate {
                window,
                min_calls,
                rate
            }),
        (1u32..6).prop_map(Policy::Consecutive),
    ]
}

/// The reference: the documented state machine, one call at a time.
struct Model {
    policy: Policy,
    probes: u32,
    backoff: Backoff,
    delays: Delays,
    last_wait: Duration,
    state: State,
    /// Recorded outcomes while closed: `true` = failure; the streak for the simple policy.
    window: VecDeque<bool>,
    open_until: Duration,
    admitted: u32,
    successes: u32,
    now: Duration,
}

impl Model {
    fn new(policy: Policy, probes: u32, backoff: Backoff) -> Self {
        Self {
            policy,
            probes,
            backoff,
            delays: backoff.delays(),
            last_wait: Duration::ZERO,
            state: State::Closed,
            window: VecDeque::new(),
            open_until: Duration::ZERO,
            admitted: 0,
            successes: 0,
            now: Duration::ZERO,
        }
    }

    fn open(&mut self) {
        let wait = self.delays.next().unwrap_or(self.last_wait);
        self.last_wait = wait;
        self.open_until = self.now + wait;
        self.state = State::Open;
    }

    fn close(&mut self) {
        self.window.clear();
        self.delays = self.backoff.delays();
        self.state = State::Closed;
    }

    /// Whether the call is admitted; applies its outcome.
    fn call(&mut self, outcome: Outcome) -> bool {
        if self.state == State::Open {
            if self.now < self.open_until {
                return false;
            }
            self.state = State::HalfOpen;
            self.admitted = 0;
            self.successes = 0;
        }
        match self.state {
            State::Closed => {
                if outcome != Outcome::Ignored {
                    self.record(outcome == Outcome::Failure);
                }
                true
            }
            State::HalfOpen => {
                if self.admitted >= self.probes {
                    return false;
                }
                self.admitted += 1;
                match outcome {
                    Outcome::Failure => self.open(),
                    Outcome::Success => {
                        self.successes += 1;
                        if self.successes >= self.probes {
                            self.close();
                        }
                    }
                    Outcome::Ignored => self.admitted -= 1,
                }
                true
            }
            other => unreachable!("the model never enters {other}"),
        }
    }

    fn record(&mut self, failure: bool) {
        let trip = match self.policy {
            Policy::Consecutive(n) => {
                if failure {
                    self.window.push_back(true);
                } else {
                    self.window.clear();
                }
                self.window.len() >= n as usize
            }
            Policy::Rate {
                window,
                min_calls,
                rate,
            } => {
                self.window.push_back(failure);
                if self.window.len() > window as usize {
                    self.window.pop_front();
                }
                let calls = self.window.len() as f64;
                let failures = self.window.iter().filter(|f| **f).count() as f64;
                self.window.len() >= min_calls as usize
                    && failures * 100.0 >= f64::from(rate) * calls
            }
        };
        if trip {
            self.open();
        }
    }
}

/// The upstream's error: carries the outcome the classifier should give it.
#[derive(Debug)]
struct Upstream(Outcome);

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream answered {:?}", self.0)
    }
}

impl std::error::Error for Upstream {}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn breaker_follows_the_reference_state_machine(
        policy in policy(),
        probes in 1u32..4,
        base_ms in 1u64..2_000,
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let backoff = Backoff::exponential(
            Duration::from_millis(base_ms),
            2.0,
            Duration::from_millis(base_ms * 8),
        )
        .unwrap()
        .with_jitter(Jitter::None);
        let builder = CircuitBreakerConfig::builder().open_wait(backoff).half_open_probes(nz(probes));
        let config = match policy {
            Policy::Rate { window, min_calls, rate } => builder
                .count_window(nz(window))
                .min_calls(min_calls)
                .failure_rate(f64::from(rate)),
            Policy::Consecutive(n) => builder.consecutive_failures(nz(n)),
        }
        .build()
        .unwrap();

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async move {
            // The request is the outcome the upstream produces.
            let classify = classify_fn(|result: Result<&Outcome, &Upstream>, _| match result {
                Ok(outcome) | Err(Upstream(outcome)) => *outcome,
            });
            let layer = CircuitBreakerLayer::with_classifier(config, classify);
            let handle = layer.handle();
            let service = layer.layer(tower::service_fn(|outcome: Outcome| async move {
                match outcome {
                    Outcome::Success => Ok(outcome),
                    other => Err(Upstream(other)),
                }
            }));
            let mut model = Model::new(policy, probes, backoff);

            for (i, step) in steps.iter().enumerate() {
                match *step {
                    Step::Wait(d) => {
                        tokio::time::advance(d).await;
                        model.now += d;
                    }
                    Step::Call(outcome) => {
                        let expected = model.call(outcome);
                        let result = service.clone().oneshot(outcome).await;
                        let rejection = result.as_ref().err().and_then(|e| match Rejection::find(&**e) {
                            Some(Rejection::CircuitOpen(open)) => Some(*open),
                            _ => None,
                        });
                        prop_assert_eq!(rejection.is_none(), expected, "step {}: {:?} admitted?", i, step);
                        if let (Some(open), State::Open) = (rejection, model.state) {
                            prop_assert_eq!(open.retry_after(), Some(model.open_until - model.now), "step {}", i);
                        }
                    }
                }
                prop_assert_eq!(handle.state(), model.state, "after step {}: {:?}", i, step);
            }
            Ok(())
        })?;
    }
}
