//! Random operations (calls of random priorities and partitions, finished calls, cancelled
//! waiters, limit changes) through the pool and through a small reference model of its
//! documented admission rules must admit, queue and shed the same calls after every step.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use palisade_core::BoxError;
use palisade_pool::{ConcurrencyPoolLayer, Order, PoolConfig, partition_fn, priority_fn};
use proptest::prelude::*;
use tokio::sync::oneshot;
use tower::{Layer, Service};

/// A call: its id, priority and lane (0 → partition `a`, 1 → `b`, 2 → no partition).
type Call = (u64, u8, u8);

#[derive(Debug, Clone, Copy)]
enum Op {
    Call {
        priority: u8,
        lane: u8,
    },
    /// Finish the running call at this index (modulo their number).
    Finish(usize),
    /// Drop the waiting call at this index (modulo their number).
    Cancel(usize),
    SetLimit(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 0u8..3).prop_map(|(priority, lane)| Op::Call { priority, lane }),
        4 => any::<usize>().prop_map(Op::Finish),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (1u32..7).prop_map(Op::SetLimit),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Setup {
    limit: u32,
    capacity: u32,
    lifo: bool,
    partitioned: bool,
    borrow: bool,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1u32..6,
        0u32..8,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(limit, capacity, lifo, partitioned, borrow)| Setup {
            limit,
            capacity,
            lifo,
            partitioned,
            borrow,
        })
}

/// Partition `a` has half the pool, `b` a quarter, the rest a quarter.
const SHARES: [(u64, bool); 3] = [(500_000, true), (250_000, true), (250_000, false)];

/// The reference: the documented rules, one operation at a time.
struct Model {
    setup: Setup,
    limit: u32,
    /// Running calls: (id, lane).
    running: Vec<(u64, u8)>,
    /// Waiting calls: (id, priority, lane, arrival).
    waiting: Vec<(u64, u8, u8, u64)>,
    arrivals: u64,
    shed: BTreeSet<u64>,
}

impl Model {
    fn lane(&self, lane: u8) -> usize {
        if self.setup.partitioned {
            usize::from(lane)
        } else {
            0
        }
    }

    fn quota(&self, lane: usize) -> u32 {
        let (share, named) = SHARES[lane];
        let quota = (u64::from(self.limit) * share / 1_000_000) as u32;
        if named { quota.max(1) } else { quota }
    }

    fn capacity(&self, lane: usize) -> usize {
        if !self.setup.partitioned {
            return self.setup.capacity as usize;
        }
        let (share, named) = SHARES[lane];
        let total = u64::from(self.setup.capacity) * share;
        (if named {
            total.div_ceil(1_000_000)
        } else {
            total / 1_000_000
        }) as usize
    }

    fn running_in(&self, lane: usize) -> u32 {
        self.running
            .iter()
            .filter(|(_, l)| self.lane(*l) == lane)
            .count() as u32
    }

    fn waiting_in(&self, lane: usize) -> usize {
        self.waiting
            .iter()
            .filter(|w| self.lane(w.2) == lane)
            .count()
    }

    fn room(&self) -> bool {
        (self.running.len() as u32) < self.limit
    }

    fn entitled(&self, lane: usize) -> bool {
        self.setup.borrow || self.running_in(lane) < self.quota(lane)
    }

    fn call(&mut self, id: u64, priority: u8, lane: u8) {
        let index = self.lane(lane);
        let admit = if self.setup.partitioned {
            self.room() && self.entitled(index)
        } else {
            self.room() && self.waiting.is_empty()
        };
        if admit {
            self.running.push((id, lane));
        } else if self.waiting_in(index) < self.capacity(index) {
            self.arrivals += 1;
            self.waiting.push((id, priority, lane, self.arrivals));
        } else {
            self.shed.insert(id);
        }
    }

    /// Grants permits while there is room: to the first waiter (lowest priority, then by
    /// order) of the lanes below their quota; with borrowing, then of any lane.
    fn dispatch(&mut self) {
        while self.room() && !self.waiting.is_empty() {
            let key = |w: &(u64, u8, u8, u64)| {
                let tie = if self.setup.lifo { u64::MAX - w.3 } else { w.3 };
                (w.1, tie)
            };
            let pick = |entitled: &dyn Fn(usize) -> bool| {
                self.waiting
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| entitled(self.lane(w.2)))
                    .min_by_key(|(_, w)| key(w))
                    .map(|(i, _)| i)
            };
            let next = if self.setup.partitioned {
                pick(&|lane| self.running_in(lane) < self.quota(lane)).or_else(|| {
                    if self.setup.borrow {
                        pick(&|_| true)
                    } else {
                        None
                    }
                })
            } else {
                pick(&|_| true)
            };
            let Some(next) = next else {
                return;
            };
            let (id, _, lane, _) = self.waiting.remove(next);
            self.running.push((id, lane));
        }
    }
}

type Pending = Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>;

/// The real pool, driven by hand with a no-op waker.
struct Real {
    service: Box<dyn FnMut(Call) -> Pending>,
    futures: HashMap<u64, Pending>,
    /// Calls the inner service started, and their release.
    started: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
    finished: BTreeSet<u64>,
    shed: BTreeSet<u64>,
    handle: palisade_pool::PoolHandle,
}

impl Real {
    fn new(setup: Setup) -> Self {
        let mut config = PoolConfig::builder(NonZeroU32::new(setup.limit).unwrap())
            .queue_capacity(setup.capacity)
            .no_queue_timeout()
            .order(if setup.lifo { Order::Lifo } else { Order::Fifo })
            .borrow_idle_capacity(setup.borrow);
        if setup.partitioned {
            config = config.partition("a", 0.5).partition("b", 0.25);
        }
        let layer = ConcurrencyPoolLayer::new(config.build().unwrap())
            .prioritize(priority_fn(|call: &Call| call.1))
            .partition_by(partition_fn(|call: &Call| match call.2 {
                0 => Some("a"),
                1 => Some("b"),
                _ => None,
            }));
        let handle = layer.handle();
        let started = Arc::new(Mutex::new(HashMap::new()));
        let log = Arc::clone(&started);
        let mut service = layer.layer(tower::service_fn(move |call: Call| {
            let (release, done) = oneshot::channel::<()>();
            log.lock().unwrap().insert(call.0, release);
            async move {
                let _ = done.await;
                Ok::<_, std::convert::Infallible>(call.0)
            }
        }));
        let call = move |request: Call| -> Pending {
            let mut cx = Context::from_waker(Waker::noop());
            assert!(service.poll_ready(&mut cx).is_ready());
            Box::pin(service.call(request))
        };
        Self {
            service: Box::new(call),
            futures: HashMap::new(),
            started,
            finished: BTreeSet::new(),
            shed: BTreeSet::new(),
            handle,
        }
    }

    /// Polls every live call once (repeatedly, until nothing changes).
    fn settle(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let mut done = Vec::new();
            let mut ids: Vec<u64> = self.futures.keys().copied().collect();
            ids.sort_unstable();
            for id in ids {
                if let Poll::Ready(result) =
                    self.futures.get_mut(&id).unwrap().as_mut().poll(&mut cx)
                {
                    done.push((id, result.is_ok()));
                }
            }
            if done.is_empty() {
                return;
            }
            for (id, ok) in done {
                self.futures.remove(&id);
                if ok {
                    self.finished.insert(id);
                } else {
                    self.shed.insert(id);
                }
            }
        }
    }

    fn started(&self) -> BTreeSet<u64> {
        self.started.lock().unwrap().keys().copied().collect()
    }
}

fn check(ops: Vec<Op>, setup: Setup) -> Result<(), TestCaseError> {
    let mut model = Model {
        setup,
        limit: setup.limit,
        running: Vec::new(),
        waiting: Vec::new(),
        arrivals: 0,
        shed: BTreeSet::new(),
    };
    let mut real = Real::new(setup);
    let mut finished = BTreeSet::new();
    let mut next_id = 0;
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Call { priority, lane } => {
                next_id += 1;
                model.call(next_id, priority, lane);
                let future = (real.service)((next_id, priority, lane));
                real.futures.insert(next_id, future);
            }
            Op::Finish(i) => {
                if model.running.is_empty() {
                    continue;
                }
                let (id, _) = model.running.remove(i % model.running.len());
                finished.insert(id);
                model.dispatch();
                let release = real
                    .started
                    .lock()
                    .unwrap()
                    .get_mut(&id)
                    .map(|release| std::mem::replace(release, oneshot::channel().0));
                prop_assert!(release.is_some(), "step {step}: call {id} never started");
                let _ = release.unwrap().send(());
            }
            Op::Cancel(j) => {
                if model.waiting.is_empty() {
                    continue;
                }
                let (id, ..) = model.waiting.remove(j % model.waiting.len());
                model.dispatch();
                prop_assert!(real.futures.remove(&id).is_some());
            }
            Op::SetLimit(limit) => {
                model.limit = limit;
                model.dispatch();
                real.handle
                    .set_limit(NonZeroU32::new(limit).unwrap())
                    .unwrap();
            }
        }
        real.settle();

        let running: BTreeSet<u64> = model.running.iter().map(|(id, _)| *id).collect();
        let expected: BTreeSet<u64> = running.union(&finished).copied().collect();
        prop_assert_eq!(real.started(), expected, "step {}: {:?}: started", step, op);
        prop_assert_eq!(&real.finished, &finished, "step {}: finished", step);
        prop_assert_eq!(&real.shed, &model.shed, "step {}: shed", step);
        prop_assert_eq!(real.handle.in_flight() as usize, model.running.len());
        prop_assert_eq!(real.handle.queued(), model.waiting.len());
        if setup.partitioned {
            for (name, lane) in [("a", 0), ("b", 1)] {
                prop_assert_eq!(
                    real.handle.partition_in_flight(name),
                    Some(model.running_in(lane)),
                    "step {}: in flight in {}",
                    step,
                    name
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn admission_matches_the_reference_queue(
        setup in setup(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        check(ops, setup)?;
    }
}
