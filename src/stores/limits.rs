//! Rate limits and concurrency leases (SPEC §5 Limits).
//!
//! **Rate limits** are GCRA (the generic cell rate algorithm, a leaky
//! bucket that keeps one number per subject: the "theoretical arrival
//! time" of the next request). A request is allowed when that time is at
//! most `burst` emission intervals ahead of now; each allowed request pushes
//! it one interval further. The whole decision is one [`AtomicUpdate`]: in
//! Redis a Lua script that reads Redis's own clock (`TIME`), so that
//! instances whose clocks disagree still share one limit and no
//! count-then-add race exists; in memory the same arithmetic under the
//! memory backend's lock.
//!
//! **Concurrency leases** are a sorted set per user and kind, scored by
//! each holder's expiry. Pruning the expired holders, counting and adding
//! happen in one script, so 200 concurrent acquires against a limit of N
//! admit exactly N. A holder renews its lease while it runs (a [`Lease`]
//! does so by itself) and releases it when dropped, on every path; the
//! lease of an instance that died expires by itself.
//!
//! **Where**: with `REDIS_RATE_LIMIT_ENABLED` on and Redis up, in Redis and
//! shared by every instance; otherwise, and at once whenever Redis fails,
//! the same limits in this process's memory
//! ([`StateLayer::write_or_local`]). A limit is never lifted and never
//! turns into a 500 because Redis is away. Scripts survive a Redis restart:
//! `redis::Script` reloads itself on `NOSCRIPT`.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::http::StatusCode;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::ids::UserId;
use crate::keys::{Key, LimitSubject};
use crate::state::{AtomicUpdate, Feature, StateLayer, UpdateOutcome};

/// A rate: `per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// The emission interval, in milliseconds.
    fn interval_ms(self) -> f64 {
        1000.0 / self.per_second
    }
}

/// The limits in force (from the configuration).
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// False: rate limits are not checked (`RATE_LIMITS_ENABLED=0`).
    pub rates_enabled: bool,
    pub polls: Rate,
    pub requests: Rate,
    pub logins: Rate,
    pub sse_per_user: u32,
    pub imports_per_user: u32,
    /// How long a lease lives unless renewed.
    pub lease_ttl: Duration,
}

/// A rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// Status polls per user.
    Polls,
    /// Every other authenticated request, per user.
    Requests,
    /// Login and registration attempts per client IP.
    LoginsPerIp,
    /// Login attempts per username.
    LoginsPerName,
}

impl RateLimit {
    /// The metric label and key part.
    pub fn name(self) -> &'static str {
        match self {
            Self::Polls => "polls",
            Self::Requests => "requests",
            Self::LoginsPerIp => "logins_ip",
            Self::LoginsPerName => "logins_name",
        }
    }

    fn what(self) -> (&'static str, &'static str, &'static str) {
        // (code, setting, words)
        match self {
            Self::Polls => ("poll_rate_limited", "LIMIT_POLLS_PER_SEC", "status polls"),
            Self::Requests => ("request_rate_limited", "LIMIT_REQUESTS_PER_SEC", "requests"),
            Self::LoginsPerIp => ("login_rate_limited", "LIMIT_LOGINS_PER_MIN", "login attempts from this address"),
            Self::LoginsPerName => ("login_rate_limited", "LIMIT_LOGINS_PER_MIN", "login attempts for this username"),
        }
    }
}

/// A concurrency limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Open SSE responses per user.
    Streams,
    /// Imports per user, queued plus running.
    Imports,
}

impl Concurrency {
    pub fn name(self) -> &'static str {
        match self {
            Self::Streams => "streams",
            Self::Imports => "imports",
        }
    }

    fn what(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Streams => ("stream_limit_reached", "LIMIT_SSE_PER_USER", "open answer streams"),
            Self::Imports => ("import_limit_reached", "LIMIT_IMPORTS_PER_USER", "imports waiting or running"),
        }
    }
}

/// A request over a limit: a 429 that names the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub code: &'static str,
    pub detail: String,
    pub retry_after: Duration,
}

impl From<Limited> for ApiError {
    fn from(l: Limited) -> Self {
        let seconds = l.retry_after.as_millis().div_ceil(1000).max(1);
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, l.code, l.detail)
            .with_retry_after(u64::try_from(seconds).unwrap_or(u64::MAX))
    }
}

pub struct Limits {
    state: Arc<StateLayer>,
    settings: LimitSettings,
    /// Stops every lease renewal (the service is shutting down).
    stop: CancellationToken,
}

/// Milliseconds on this process's clock, for the memory twins (the Redis
/// scripts read Redis's clock instead and ignore it).
fn local_now_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn count(limit: &'static str, outcome: &'static str) {
    metrics::counter!("reportd_limit_decisions_total", "limit" => limit, "outcome" => outcome).increment(1);
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Limits {
    /// Renewals stop when `stop` fires (the service's background work).
    pub fn new(state: Arc<StateLayer>, settings: LimitSettings, stop: CancellationToken) -> Arc<Self> {
        Arc::new(Self { state, settings, stop })
    }

    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    fn rate(&self, limit: RateLimit) -> Rate {
        match limit {
            RateLimit::Polls => self.settings.polls,
            RateLimit::Requests => self.settings.requests,
            RateLimit::LoginsPerIp | RateLimit::LoginsPerName => self.settings.logins,
        }
    }

    /// Counts one request of `subject` against `limit`.
    pub async fn check(&self, limit: RateLimit, subject: &LimitSubject) -> Result<(), Limited> {
        if !self.settings.rates_enabled {
            return Ok(());
        }
        let rate = self.rate(limit);
        let key = self.state.keys().rate_limit(limit.name(), subject);
        let interval = rate.interval_ms();
        // The state outlives its last request by at most the burst window.
        let ttl = Duration::from_secs_f64((interval * f64::from(rate.burst) / 1000.0).clamp(0.001, 86_400.0));
        let args = [format!("{:.3}", local_now_ms()), format!("{interval:.6}"), rate.burst.to_string()];
        let outcome = self.run(&key, &GCRA, &args, ttl).await;
        match outcome {
            Some(o) if o.verdict == "limited" => {
                count(limit.name(), "rejected");
                let wait_ms = o.value.and_then(|v| v.parse::<u64>().ok()).unwrap_or(1000);
                let (code, setting, words) = limit.what();
                let per = if matches!(limit, RateLimit::LoginsPerIp | RateLimit::LoginsPerName) {
                    format!("{} per minute", rate.per_second * 60.0)
                } else {
                    format!("{} per second", rate.per_second)
                };
                Err(Limited {
                    code,
                    detail: format!("too many {words}: the limit is {per} ({setting})"),
                    retry_after: Duration::from_millis(wait_ms),
                })
            }
            _ => {
                count(limit.name(), "allowed");
                Ok(())
            }
        }
    }

    /// Runs an update on the limits' backend. A failure of memory itself
    /// cannot happen; should it, the request is let through (logged), as a
    /// limiter must not take the service down.
    async fn run(&self, key: &Key, op: &'static AtomicUpdate, args: &[String], ttl: Duration) -> Option<UpdateOutcome> {
        let result = self
            .state
            .write_or_local(Feature::RateLimit, |backend| {
                let key = key.clone();
                async move { backend.update(&key, op, args, ttl).await }
            })
            .await;
        match result {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                tracing::error!(error = %e, op = op.name, "limit not decided");
                None
            }
        }
    }

    fn lease_key(&self, limit: Concurrency, user: &UserId) -> Key {
        self.state.keys().leases(limit.name(), user)
    }

    fn concurrency(&self, limit: Concurrency) -> u32 {
        match limit {
            Concurrency::Streams => self.settings.sse_per_user,
            Concurrency::Imports => self.settings.imports_per_user,
        }
    }

    async fn lease_op(&self, limit: Concurrency, user: &UserId, op: &str, holder: &str) -> Option<UpdateOutcome> {
        let key = self.lease_key(limit, user);
        let ttl = self.settings.lease_ttl;
        let args = [
            format!("{:.3}", local_now_ms()),
            op.to_owned(),
            holder.to_owned(),
            self.concurrency(limit).to_string(),
            ttl.as_millis().to_string(),
        ];
        self.run(&key, &LEASE, &args, ttl).await
    }

    /// Takes one of `user`'s `limit` slots for `holder` (an id unique to
    /// the holder; taking it again renews it), or says how long until one
    /// frees up. The lease renews itself until it is dropped or released.
    pub async fn acquire(self: &Arc<Self>, limit: Concurrency, user: &UserId, holder: &str) -> Result<Lease, Limited> {
        let outcome = self.lease_op(limit, user, "acquire", holder).await;
        if let Some(o) = outcome.filter(|o| o.verdict == "full") {
            count(limit.name(), "rejected");
            let (code, setting, words) = limit.what();
            let wait_ms = o.value.and_then(|v| v.parse::<u64>().ok()).unwrap_or(1000);
            return Err(Limited {
                code,
                detail: format!("too many {words}: at most {} at once ({setting})", self.concurrency(limit)),
                // The earliest a slot can free up by itself; usually sooner.
                retry_after: Duration::from_millis(wait_ms).min(Duration::from_secs(10)),
            });
        }
        count(limit.name(), "allowed");
        let renew = match limit {
            // An open stream is alive as long as its response is.
            Concurrency::Streams => Renew::Readopt,
            // An import's slot may be released by the instance that ran it.
            Concurrency::Imports => Renew::WhileHeld,
        };
        Ok(self.hold(limit, user, holder, renew, true))
    }

    /// Holds a slot for `holder` without checking the limit: a job this
    /// instance takes over, whose slot was taken when it was submitted.
    /// Renewal stops once someone releases the slot (the job ended).
    pub async fn adopt(self: &Arc<Self>, limit: Concurrency, user: &UserId, holder: &str) -> Lease {
        self.lease_op(limit, user, "adopt", holder).await;
        self.hold(limit, user, holder, Renew::WhileHeld, false)
    }

    /// Frees `holder`'s slot, wherever it was taken.
    pub async fn release(&self, limit: Concurrency, user: &UserId, holder: &str) {
        self.lease_op(limit, user, "release", holder).await;
    }

    /// The holders of `user`'s `limit` slots now.
    pub async fn held(&self, limit: Concurrency, user: &UserId) -> usize {
        self.lease_op(limit, user, "count", "-").await.and_then(|o| o.value).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    fn hold(
        self: &Arc<Self>,
        limit: Concurrency,
        user: &UserId,
        holder: &str,
        renew: Renew,
        release_on_drop: bool,
    ) -> Lease {
        let stop = self.stop.child_token();
        let lease = Lease {
            limits: self.clone(),
            limit,
            user: user.clone(),
            holder: holder.to_owned(),
            stop: stop.clone(),
            release_on_drop,
        };
        let (limits, user, holder) = (self.clone(), user.clone(), holder.to_owned());
        let every = self.settings.lease_ttl / 3;
        tokio::spawn(async move {
            let op = if renew == Renew::Readopt { "adopt" } else { "renew" };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let still = limits.lease_op(limit, &user, op, &holder).await;
                if still.is_some_and(|o| o.verdict == "gone") {
                    break;
                }
            }
        });
        lease
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renew {
    /// The holder is alive as long as the lease value is: a lost slot (a
    /// Redis that restarted empty) is taken again.
    Readopt,
    /// The slot may be released by another instance (an import that ended
    /// there): renewal stops when it is gone.
    WhileHeld,
}

/// A held slot. Renewed in the background; released when dropped (for
/// slots this process took) or when [`Lease::release`] is called.
pub struct Lease {
    limits: Arc<Limits>,
    limit: Concurrency,
    user: UserId,
    holder: String,
    stop: CancellationToken,
    release_on_drop: bool,
}

impl Lease {
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Frees the slot now.
    pub async fn release(mut self) {
        self.stop.cancel();
        self.release_on_drop = false;
        self.limits.release(self.limit, &self.user, &self.holder).await;
    }

    /// Lets the slot outlive this value: it is renewed until someone
    /// releases it (an import that ended, on any instance) or the service
    /// stops, and then expires.
    pub fn detach(mut self) {
        self.release_on_drop = false;
        self.stop = CancellationToken::new();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
        if !self.release_on_drop {
            return;
        }
        // Dropped on every path (a finished stream, a client gone, a
        // panic): release in the background. Outside a runtime (process
        // exit) the lease expires by itself.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (limits, limit, user, holder) =
                (self.limits.clone(), self.limit, self.user.clone(), self.holder.clone());
            handle.spawn(async move { limits.release(limit, &user, &holder).await });
        }
    }
}

// The scripts and their memory twins. `ARGV[1]` is the key's TTL in ms
// (the `AtomicUpdate` contract), `ARGV[2]` this process's clock, which only
// the memory twin uses: the scripts read `TIME`.

/// GCRA. `ARGV[3]` the emission interval in ms, `ARGV[4]` the burst.
/// Returns `{'allowed', false}` or `{'limited', ms-to-wait}`.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - interval * burst - now
if wait > 0 then return {'limited', tostring(math.ceil(wait))} end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
return {'allowed', false}
"#;

fn number(s: Option<&String>) -> f64 {
    s.and_then(|s| s.parse::<f64>().ok()).filter(|n| n.is_finite()).unwrap_or(0.0)
}

fn apply_gcra(current: Option<&str>, args: &[String]) -> (UpdateOutcome, Option<String>) {
    let (now, interval, burst) = (number(args.first()), number(args.get(1)), number(args.get(2)));
    let tat = current.and_then(|c| c.parse::<f64>().ok()).unwrap_or(0.0).max(now);
    let new_tat = tat + interval;
    let wait = new_tat - interval * burst - now;
    if wait > 0.0 {
        return (UpdateOutcome { verdict: "limited".into(), value: Some((wait.ceil() as u64).to_string()) }, None);
    }
    (UpdateOutcome { verdict: "allowed".into(), value: None }, Some(format!("{new_tat:.3}")))
}

pub static GCRA: AtomicUpdate =
    AtomicUpdate { name: "rate_limit", script: LazyLock::new(|| redis::Script::new(GCRA_LUA)), apply: apply_gcra };

/// A set of leases. `ARGV[3]` the operation (`acquire`: add unless full;
/// `adopt`: add regardless; `renew`: extend if present; `release`;
/// `count`), `ARGV[4]` the holder, `ARGV[5]` the limit, `ARGV[6]` the lease
/// in ms. Expired holders are pruned first. Returns `{'held', n}`,
/// `{'full', ms-until-the-first-expires}`, `{'gone', false}` (renew of a
/// holder not there) or `{'count', n}`. The key expires with its last
/// holder.
const LEASE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, holder, limit, lease = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function keep()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2]))) end
  return tostring(redis.call('ZCARD', KEYS[1]))
end
if op == 'count' then return {'count', keep()} end
if op == 'release' then
  redis.call('ZREM', KEYS[1], holder)
  return {'count', keep()}
end
local held = redis.call('ZSCORE', KEYS[1], holder)
if op == 'renew' and not held then return {'gone', false} end
if op == 'acquire' and not held and redis.call('ZCARD', KEYS[1]) >= limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {'full', tostring(math.max(1, math.ceil(tonumber(first[2]) - now)))}
end
redis.call('ZADD', KEYS[1], now + lease, holder)
return {'held', keep()}
"#;

/// The memory form of a lease set: `holder expiry` lines.
fn apply_lease(current: Option<&str>, args: &[String]) -> (UpdateOutcome, Option<String>) {
    let now = number(args.first());
    let op = args.get(1).map_or("", String::as_str);
    let holder = args.get(2).map_or("", String::as_str);
    let limit = number(args.get(3)) as usize;
    let lease = number(args.get(4));
    let mut set: Vec<(String, f64)> = current
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(h, at)| at.parse::<f64>().ok().map(|at| (h.to_owned(), at)))
        .filter(|(_, at)| *at > now)
        .collect();
    let encode = |set: &[(String, f64)]| set.iter().map(|(h, at)| format!("{h} {at:.0}\n")).collect::<String>();
    let outcome = |verdict: &str, value: Option<String>| UpdateOutcome { verdict: verdict.into(), value };
    let position = set.iter().position(|(h, _)| h == holder);
    match op {
        "count" => (outcome("count", Some(set.len().to_string())), Some(encode(&set))),
        "release" => {
            set.retain(|(h, _)| h != holder);
            (outcome("count", Some(set.len().to_string())), Some(encode(&set)))
        }
        "renew" if position.is_none() => (outcome("gone", None), Some(encode(&set))),
        "acquire" if position.is_none() && set.len() >= limit => {
            let first = set.iter().map(|(_, at)| *at).fold(f64::INFINITY, f64::min);
            let wait = (first - now).ceil().max(1.0) as u64;
            (outcome("full", Some(wait.to_string())), Some(encode(&set)))
        }
        _ => {
            match position {
                Some(i) => set[i].1 = now + lease,
                None => set.push((holder.to_owned(), now + lease)),
            }
            (outcome("held", Some(set.len().to_string())), Some(encode(&set)))
        }
    }
}

pub static LEASE: AtomicUpdate =
    AtomicUpdate { name: "lease", script: LazyLock::new(|| redis::Script::new(LEASE_LUA)), apply: apply_lease };

#[cfg(test)]
mod tests {
    use super::*;

    fn args(now: f64, rest: &[&str]) -> Vec<String> {
        std::iter::once(format!("{now:.3}")).chain(rest.iter().map(|s| s.to_string())).collect()
    }

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        // 10 per second (100 ms apart), burst 3.
        let mut state: Option<String> = None;
        let mut decide = |now: f64| {
            let (o, store) = apply_gcra(state.as_deref(), &args(now, &["100", "3"]));
            if store.is_some() {
                state = store;
            }
            o
        };
        for _ in 0..3 {
            assert_eq!(decide(1000.0).verdict, "allowed");
        }
        let o = decide(1000.0);
        assert_eq!(o.verdict, "limited");
        assert_eq!(o.value.as_deref(), Some("100"), "one interval to wait");
        assert_eq!(decide(1050.0).verdict, "limited");
        assert_eq!(decide(1100.0).verdict, "allowed");
        assert_eq!(decide(1100.0).verdict, "limited");
        // After a long pause the full burst is back, not more.
        let allowed = (0..10).filter(|_| decide(10_000.0).verdict == "allowed").count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn leases_count_prune_and_release() {
        let mut state: Option<String> = None;
        let mut run = |now: f64, op: &str, holder: &str| {
            let (o, store) = apply_lease(state.as_deref(), &args(now, &[op, holder, "2", "1000"]));
            state = store;
            o
        };
        assert_eq!(run(0.0, "acquire", "a").verdict, "held");
        assert_eq!(run(10.0, "acquire", "b").verdict, "held");
        let full = run(20.0, "acquire", "c");
        assert_eq!((full.verdict.as_str(), full.value.as_deref()), ("full", Some("980")));
        assert_eq!(run(30.0, "acquire", "a").verdict, "held", "taking it again renews it");
        assert_eq!(run(40.0, "release", "b").value.as_deref(), Some("1"));
        assert_eq!(run(50.0, "acquire", "c").verdict, "held");
        // a and c expire by themselves.
        assert_eq!(run(2000.0, "count", "-").value.as_deref(), Some("0"));
        assert_eq!(run(2000.0, "renew", "a").verdict, "gone");
        assert_eq!(run(2000.0, "adopt", "a").verdict, "held");
        assert_eq!(run(2001.0, "adopt", "b").value.as_deref(), Some("2"));
        assert_eq!(run(2002.0, "adopt", "c").value.as_deref(), Some("3"), "adopting ignores the limit");
    }
}
