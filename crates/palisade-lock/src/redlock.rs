//! [`Redlock`]: locks on a quorum of independent Redis servers (feature `redis`).

use std::time::Duration;

use futures_util::future::join_all;

use crate::backend::{Backend, Grant, redlock_drift};
use crate::redis::{DEFAULT_DRIFT_FACTOR, RedisBackend, RedisLease, drift_factor};
use crate::{BackendError, FencingToken};

/// Locks on N independent Redis servers (feature `redis`), granted when a majority agrees:
/// the Redlock algorithm, with fencing tokens.
///
/// An attempt runs the acquire script on every server at once with one random owner value;
/// it wins when at least `N/2 + 1` servers grant it and time is left of the TTL once the
/// acquisition time and the drift allowance (`ttl * drift_factor + 2 ms`, factor 0.01 by
/// default) are taken off. Otherwise it releases everywhere. Renewal extends on every server
/// and needs a quorum again; release deletes everywhere.
///
/// **Fencing**: each server keeps its own counter. The token of a grant is the highest
/// counter among the servers that granted it, and before the guard is handed out that token
/// is written back, by a script that checks we still hold the key, to a quorum of them.
/// Any later grant's quorum shares a server with that write-back quorum, where the later
/// grant's increment comes after the write-back, so its token is larger. This needs no
/// clock assumption: tokens grow even when the timing assumptions below fail.
///
/// **Timing assumptions** (mutual exclusion, not fencing, depends on them): the servers'
/// clocks advance at about the same rate as the holders' (within the drift factor), a
/// server that restarts either persists its keys (`appendfsync always`) or stays down for
/// at least one TTL, and a holder's pauses are shorter than its remaining validity. When
/// they fail, two holders can overlap: the fencing check at the resource is then what keeps
/// the older holder's writes out.
///
/// Unreachable servers count as refusals; when so many fail that no quorum is possible,
/// the attempt is an error ([`LockError::Unavailable`](crate::LockError::Unavailable)), never a grant.
#[derive(Debug)]
pub struct Redlock {
    servers: Vec<RedisBackend>,
    drift_factor: f64,
}

impl Redlock {
    /// Redlock over `servers` (use an odd number, 3 or 5, on independent machines).
    ///
    /// # Errors
    ///
    /// When `servers` is empty.
    pub fn new(servers: impl IntoIterator<Item = RedisBackend>) -> Result<Self, BackendError> {
        let servers: Vec<RedisBackend> = servers.into_iter().collect();
        if servers.is_empty() {
            return Err(BackendError::msg("redlock needs at least one server"));
        }
        Ok(Self {
            servers,
            drift_factor: DEFAULT_DRIFT_FACTOR,
        })
    }

    /// Redlock over the servers at `urls`.
    ///
    /// # Errors
    ///
    /// When a URL is invalid or there is none.
    pub fn open<'a>(urls: impl IntoIterator<Item = &'a str>) -> Result<Self, BackendError> {
        let servers = urls
            .into_iter()
            .map(RedisBackend::open)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(servers)
    }

    /// The share of a TTL given up for clock drift (default 0.01). Negative or NaN values count as 0; the servers'
    /// own drift factors are not used.
    #[must_use]
    pub fn with_drift_factor(mut self, factor: f64) -> Self {
        self.drift_factor = drift_factor(factor);
        self
    }

    /// How many servers must agree: `N/2 + 1`.
    pub fn quorum(&self) -> usize {
        self.servers.len() / 2 + 1
    }

    /// The servers.
    pub fn servers(&self) -> &[RedisBackend] {
        &self.servers
    }

    /// Whether `failed` errors leave a quorum out of reach.
    fn unreachable(&self, failed: usize) -> bool {
        failed > self.servers.len() - self.quorum()
    }

    async fn release_everywhere(
        &self,
        key: &str,
        lease: &RedisLease,
    ) -> Vec<Result<bool, BackendError>> {
        join_all(self.servers.iter().map(|server| server.delete(key, lease))).await
    }
}

/// The first error among `results`, for the message of an unreachable quorum.
fn first_error(results: Vec<Result<bool, BackendError>>) -> BackendError {
    results
        .into_iter()
        .find_map(Result::err)
        .unwrap_or_else(|| BackendError::msg("no redlock quorum"))
}

impl Backend for Redlock {
    type Lease = RedisLease;

    async fn try_acquire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<Grant<RedisLease>>, BackendError> {
        let lease = RedisLease::random();
        let answers = join_all(
            self.servers
                .iter()
                .map(|server| server.grant(key, &lease, ttl)),
        )
        .await;
        let mut granted = Vec::new();
        let mut failed = 0;
        let mut error = None;
        for (index, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(Some(token)) => granted.push((index, token)),
                Ok(None) => {}
                Err(e) => {
                    failed += 1;
                    error.get_or_insert(e);
                }
            }
        }
        if granted.len() < self.quorum() {
            if !granted.is_empty() {
                self.release_everywhere(key, &lease).await;
            }
            return match error {
                Some(error) if self.unreachable(failed) => Err(error),
                _ => Ok(None),
            };
        }
        let token = granted.iter().map(|&(_, token)| token).max().unwrap_or(0);
        let raised = join_all(
            granted
                .iter()
                .map(|&(index, _)| self.servers[index].raise(key, &lease, token)),
        )
        .await;
        let confirmed = raised.iter().filter(|r| matches!(r, Ok(true))).count();
        if confirmed < self.quorum() {
            self.release_everywhere(key, &lease).await;
            let failed = raised.iter().filter(|r| r.is_err()).count();
            if self.unreachable(failed) {
                return Err(first_error(raised));
            }
            return Ok(None);
        }
        Ok(Some(Grant {
            token: FencingToken::new(token),
            lease,
        }))
    }

    async fn renew(
        &self,
        key: &str,
        lease: &RedisLease,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let answers = join_all(
            self.servers
                .iter()
                .map(|server| server.extend(key, lease, ttl)),
        )
        .await;
        let extended = answers.iter().filter(|r| matches!(r, Ok(true))).count();
        if extended >= self.quorum() {
            return Ok(true);
        }
        let failed = answers.iter().filter(|r| r.is_err()).count();
        if self.unreachable(failed) {
            return Err(first_error(answers));
        }
        Ok(false)
    }

    async fn release(&self, key: &str, lease: &RedisLease) -> Result<bool, BackendError> {
        let answers = self.release_everywhere(key, lease).await;
        let deleted = answers.iter().filter(|r| matches!(r, Ok(true))).count();
        if deleted >= self.quorum() {
            return Ok(true);
        }
        let failed = answers.iter().filter(|r| r.is_err()).count();
        if self.unreachable(failed) {
            return Err(first_error(answers));
        }
        Ok(false)
    }

    fn drift(&self, ttl: Duration) -> Duration {
        redlock_drift(ttl, self.drift_factor)
    }
}
