//! The events of AI answer streams, kept so that a client can resume.
//!
//! Every event of an answer (`start`, `delta`, `tool_call`, `tool_result`,
//! `done`, `error`) gets a sequence number, 1, 2, 3 …, and is recorded twice:
//!
//! - in this instance's memory ([`LiveStream`]): the client that started the
//!   answer, and any client resuming on this instance, read it from there
//!   and are woken as events arrive;
//! - when chat sessions are served by Redis, in a Redis Stream at
//!   `{p}:{env}:stream:{kind}:{user}:{stream_id}` (`MAXLEN`-capped, kept
//!   `AI_STREAM_TTL_SECONDS` after its last event), from which a client
//!   resuming on another instance reads. A write that fails (a Redis blip)
//!   is caught up by the next one: each write sends everything recorded
//!   since the last write that succeeded.
//!
//! Cancelling reaches the instance that runs an answer in two ways: a
//! pub/sub notice on `{p}:{env}:events:cancel` (at once), and a cancel
//! marker appended to the answer's Redis Stream, which the generator's next
//! write reports (in case the notice was missed).
//!
//! Memory is bounded: answers that run at once are capped (`AI_MAX_STREAMS`,
//! the caller answers 503 beyond), events per answer are capped
//! (`AI_STREAM_MAX_EVENTS`, oldest dropped), and finished answers are kept
//! for resuming until their TTL or until the bytes they hold pass a budget,
//! oldest first.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ids::{SessionKind, StreamId, TaskId, UserId};
use crate::keys::{Key, KeySpace};
use crate::state::{Backend, BackendError, Feature, RedisBackend, StateError, StateLayer};

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    /// `start`, `delta`, `tool_call`, `tool_result`, `done` or `error`.
    pub event: String,
    /// The JSON `data`.
    pub data: String,
}

impl Event {
    /// `done` and `error` end a stream.
    pub fn is_terminal(&self) -> bool {
        self.event == "done" || self.event == "error"
    }

    fn size(&self) -> usize {
        self.event.len() + self.data.len() + 48
    }
}

#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// Kept this long after the last event (`AI_STREAM_TTL_SECONDS`).
    pub ttl: Duration,
    /// Events kept per stream (`AI_STREAM_MAX_EVENTS`).
    pub max_events: usize,
    /// Answers running at once on this instance (`AI_MAX_STREAMS`).
    pub max_running: usize,
    /// Bytes of finished answers kept in memory for resuming.
    pub finished_budget: usize,
    /// How often a client resuming from Redis looks for new events.
    pub poll_interval: Duration,
    /// A stream read from Redis that gains no event for this long has lost
    /// its generator, whatever its lease says (the lease, when the `start`
    /// event names it, tells much sooner: see `Generator`).
    pub stale_after: Duration,
}

/// No more answers can run on this instance now.
#[derive(Debug, thiserror::Error)]
#[error("too many answers running on this instance")]
pub struct Full;

#[derive(Default)]
struct Buffer {
    events: VecDeque<Event>,
    /// Highest seq written to Redis.
    persisted: u64,
    bytes: usize,
}

/// An answer recorded by this instance (running or finished).
pub struct LiveStream {
    key: Key,
    buffer: Mutex<Buffer>,
    /// (last seq, finished): wakes readers.
    progress: watch::Sender<(u64, bool)>,
    /// Fired by a cancel, local or from another instance.
    pub cancel: CancellationToken,
    last_event: Mutex<Instant>,
}

impl LiveStream {
    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_finished(&self) -> bool {
        self.progress.borrow().1
    }

    /// The first event with a seq of at least `seq` (the oldest kept when
    /// older ones were dropped).
    fn event_from(&self, seq: u64) -> Option<Event> {
        let buf = self.lock();
        let first = buf.events.front()?.seq;
        let index = usize::try_from(seq.saturating_sub(first)).ok()?;
        buf.events.get(index).cloned()
    }
}

pub struct StreamLog {
    state: Arc<StateLayer>,
    settings: StreamSettings,
    local: Mutex<HashMap<Key, Arc<LiveStream>>>,
    running: AtomicUsize,
}

fn unavailable(e: BackendError) -> StateError {
    match e {
        BackendError::Unavailable(_) => StateError::Unavailable { feature: Feature::ChatSession },
        BackendError::Command(m) => StateError::Internal(m),
    }
}

impl StreamLog {
    pub fn new(state: Arc<StateLayer>, settings: StreamSettings) -> Self {
        Self { state, settings, local: Mutex::new(HashMap::new()), running: AtomicUsize::new(0) }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<LiveStream>>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers running on this instance now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Registers a new answer, unless [`StreamSettings::max_running`] run already.
    pub fn open(&self, kind: SessionKind, user: &UserId, id: &StreamId) -> Result<Arc<LiveStream>, Full> {
        let max = self.settings.max_running;
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| Full)?;
        let key = self.state.keys().ai_stream(kind, user, id);
        let live = Arc::new(LiveStream {
            key: key.clone(),
            buffer: Mutex::new(Buffer::default()),
            progress: watch::channel((0, false)).0,
            cancel: CancellationToken::new(),
            last_event: Mutex::new(Instant::now()),
        });
        self.local().insert(key, live.clone());
        Ok(live)
    }

    /// Records `events` (in seq order) and wakes their readers. True when a
    /// cancel was requested through Redis since the last write.
    pub async fn record(&self, live: &LiveStream, events: Vec<Event>) -> bool {
        let Some(last) = events.last().map(|e| e.seq) else { return false };
        {
            let mut buf = live.lock();
            for e in events {
                buf.bytes += e.size();
                buf.events.push_back(e);
            }
            while buf.events.len() > self.settings.max_events {
                if let Some(old) = buf.events.pop_front() {
                    buf.bytes -= old.size();
                }
            }
        }
        *live.last_event.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        live.progress.send_modify(|p| p.0 = last);
        self.persist(live).await
    }

    /// Writes to Redis what it lacks of `live` (when sessions are served by Redis).
    async fn persist(&self, live: &LiveStream) -> bool {
        let Some(redis) = self.state.redis_for(Feature::ChatSession) else { return false };
        let (pending, upto) = {
            let buf = live.lock();
            let pending: Vec<Event> = buf.events.iter().filter(|e| e.seq > buf.persisted).cloned().collect();
            let upto = pending.last().map(|e| e.seq);
            (pending, upto)
        };
        let Some(upto) = upto else { return false };
        let entries: Vec<(u64, &str, &str)> =
            pending.iter().map(|e| (e.seq, e.event.as_str(), e.data.as_str())).collect();
        match redis.events_append(&live.key, &entries, self.settings.max_events, self.settings.ttl).await {
            Ok(cancelled) => {
                live.lock().persisted = upto;
                metrics::counter!("reportd_ai_stream_writes_total").increment(1);
                cancelled
            }
            Err(e) => {
                tracing::debug!(error = %e, "stream events not written to Redis (retried with the next event)");
                false
            }
        }
    }

    /// Marks `live` finished: its readers end after its last event.
    pub fn finish(&self, live: &LiveStream) {
        let mut was_running = false;
        live.progress.send_modify(|p| {
            was_running = !p.1;
            p.1 = true;
        });
        if was_running {
            self.running.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The events of a stream after `after`, then live until it ends: from
    /// this instance's memory, else from Redis. `None` when the stream does
    /// not exist for this user.
    pub async fn subscribe(
        &self,
        kind: SessionKind,
        user: &UserId,
        id: &StreamId,
        after: u64,
    ) -> Result<Option<EventSource>, StateError> {
        let key = self.state.keys().ai_stream(kind, user, id);
        if let Some(live) = self.local().get(&key).cloned() {
            return Ok(Some(EventSource::from_live(live, after)));
        }
        let Some(redis) = self.state.redis_for(Feature::ChatSession) else { return Ok(None) };
        if !redis.exists(&key).await.map_err(unavailable)? {
            return Ok(None);
        }
        Ok(Some(EventSource::Remote(Box::new(RemoteSource {
            redis: redis.clone(),
            key,
            last_id: None,
            after,
            queue: VecDeque::new(),
            settings: self.settings,
            last_seen: Instant::now(),
            ended: false,
            generator: Generator {
                keys: self.state.keys().clone(),
                kind,
                user: user.clone(),
                stream: id.clone(),
                lease: None,
                checked: Instant::now(),
                gone_since: None,
            },
        }))))
    }

    /// Asks the instance running a stream to stop it. False when no such
    /// stream exists for this user (running or kept for resuming).
    pub async fn cancel(&self, kind: SessionKind, user: &UserId, id: &StreamId) -> Result<bool, StateError> {
        let key = self.state.keys().ai_stream(kind, user, id);
        if let Some(live) = self.local().get(&key).cloned() {
            live.cancel.cancel();
            return Ok(true);
        }
        let Some(redis) = self.state.redis_for(Feature::ChatSession) else { return Ok(false) };
        let found =
            redis.events_cancel(&key, self.settings.max_events, self.settings.ttl).await.map_err(unavailable)?;
        if found && let Err(e) = redis.publish(&self.state.keys().cancel_channel(), key.as_str()).await {
            // The marker is in the stream: the generator sees it at its next write.
            tracing::debug!(error = %e, "cancel notice not published");
        }
        Ok(found)
    }

    /// Forgets finished answers past their TTL, and the oldest finished ones
    /// while the bytes they hold exceed the budget.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut local = self.local();
        let mut finished: Vec<(Instant, Key, usize)> = Vec::new();
        local.retain(|key, live| {
            if !live.is_finished() {
                return true;
            }
            let last = *live.last_event.lock().unwrap_or_else(|p| p.into_inner());
            if now.duration_since(last) >= self.settings.ttl {
                return false;
            }
            finished.push((last, key.clone(), live.lock().bytes));
            true
        });
        let mut total: usize = finished.iter().map(|f| f.2).sum();
        finished.sort();
        for (_, key, bytes) in finished {
            if total <= self.settings.finished_budget {
                break;
            }
            local.remove(&key);
            total -= bytes;
        }
    }

    /// Sweeping, and the subscription to cancel notices from other
    /// instances (while chat sessions are served by Redis), until `stop`.
    pub fn spawn_background(self: &Arc<Self>, stop: CancellationToken) {
        let this = self.clone();
        crate::state::spawn_periodic(Duration::from_secs(10), stop.clone(), move || {
            this.sweep();
            async {}
        });
        let this = self.clone();
        tokio::spawn(async move { this.listen_for_cancels(stop).await });
    }

    async fn listen_for_cancels(&self, stop: CancellationToken) {
        let channel = self.state.keys().cancel_channel();
        while !stop.is_cancelled() {
            let wanted = self.state.flags().redis_wanted(Feature::ChatSession);
            let subscription = match (self.state.redis(), wanted) {
                (Some(redis), true) => redis.subscribe(&channel).await.ok(),
                _ => None,
            };
            let Some(mut messages) = subscription else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            let mut check = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = check.tick() => {
                        if !self.state.flags().redis_wanted(Feature::ChatSession) {
                            break;
                        }
                    }
                    msg = messages.next() => {
                        let Some(msg) = msg else { break };
                        let Ok(raw) = msg.get_payload::<String>() else { continue };
                        let live = self.state.keys().existing(&raw).and_then(|k| self.local().get(&k).cloned());
                        if let Some(live) = live {
                            live.cancel.cancel();
                        }
                    }
                }
            }
        }
    }
}

/// Where a reader gets a stream's events from.
pub enum EventSource {
    Local { live: Arc<LiveStream>, rx: watch::Receiver<(u64, bool)>, next: u64 },
    Remote(Box<RemoteSource>),
}

impl EventSource {
    /// The events of `live` after `after`, from this instance's memory.
    pub fn from_live(live: Arc<LiveStream>, after: u64) -> Self {
        Self::Local { rx: live.progress.subscribe(), live, next: after + 1 }
    }

    /// The next event, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Event> {
        match self {
            Self::Local { live, rx, next } => loop {
                let (_, finished) = *rx.borrow_and_update();
                if let Some(event) = live.event_from(*next) {
                    *next = event.seq + 1;
                    return Some(event);
                }
                if finished {
                    return None;
                }
                // The sender lives as long as `live`, which we hold.
                if rx.changed().await.is_err() {
                    return None;
                }
            },
            Self::Remote(remote) => remote.next().await,
        }
    }
}

/// How a reader of a stream from Redis tells that the instance producing
/// it died: the turn holds its session's lease, whose value is the stream
/// id, for as long as it runs (renewed every third of
/// `CHAT_LOCK_TTL_SECONDS`). The session is named by the `start` event.
struct Generator {
    keys: KeySpace,
    kind: SessionKind,
    user: UserId,
    stream: StreamId,
    lease: Option<Key>,
    checked: Instant,
    gone_since: Option<Instant>,
}

/// How often a silent stream's lease is looked at.
const LEASE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// A turn releases its lease just before writing its last event: a lease
/// gone for this long, with no last event, means the generator is gone.
const LEASE_GONE_GRACE: Duration = Duration::from_secs(2);

impl Generator {
    /// Learns the session from the `start` event.
    fn saw(&mut self, event: &Event) {
        if event.event == "start"
            && let Ok(data) = serde_json::from_str::<serde_json::Value>(&event.data)
            && let Some(task) = data["task_id"].as_str().and_then(|t| TaskId::parse(t).ok())
        {
            self.lease = Some(self.keys.session_lease(self.kind, &self.user, &task));
        }
    }

    /// True once the stream's turn has been without its lease for
    /// [`LEASE_GONE_GRACE`].
    async fn is_gone(&mut self, redis: &RedisBackend) -> bool {
        let Some(lease) = &self.lease else { return false };
        if self.checked.elapsed() >= LEASE_CHECK_EVERY {
            self.checked = Instant::now();
            match redis.get(lease).await {
                Ok(holder) if holder.as_deref() == Some(self.stream.as_str()) => self.gone_since = None,
                Ok(_) => {
                    self.gone_since.get_or_insert_with(Instant::now);
                }
                Err(_) => {} // Redis unreachable: no verdict.
            }
        }
        self.gone_since.is_some_and(|at| at.elapsed() >= LEASE_GONE_GRACE)
    }
}

/// A stream read from Redis (it runs, or ran, on another instance).
pub struct RemoteSource {
    redis: Arc<RedisBackend>,
    key: Key,
    last_id: Option<String>,
    after: u64,
    queue: VecDeque<Event>,
    settings: StreamSettings,
    last_seen: Instant,
    ended: bool,
    generator: Generator,
}

impl RemoteSource {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                self.ended = event.is_terminal();
                return Some(event);
            }
            if self.ended {
                return None;
            }
            match self.redis.events_range(&self.key, self.last_id.as_deref(), 200).await {
                Ok(entries) if !entries.is_empty() => {
                    self.last_seen = Instant::now();
                    for entry in entries {
                        self.last_id = Some(entry.id.clone());
                        let seq = entry.fields.get("seq").and_then(|s| s.parse::<u64>().ok());
                        let (Some(seq), Some(event), Some(data)) =
                            (seq, entry.fields.get("event"), entry.fields.get("data"))
                        else {
                            continue; // a cancel marker
                        };
                        let event = Event { seq, event: event.clone(), data: data.clone() };
                        self.generator.saw(&event);
                        if seq > self.after {
                            self.after = seq;
                            self.queue.push_back(event);
                        }
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "resumed stream not read from Redis"),
            }
            if self.generator.is_gone(&self.redis).await || self.last_seen.elapsed() >= self.settings.stale_after {
                self.after += 1;
                self.queue.push_back(Event {
                    seq: self.after,
                    event: "error".into(),
                    data: serde_json::json!({
                        "detail": "the answer stopped: the instance producing it is gone",
                        "code": "stream_lost"
                    })
                    .to_string(),
                });
                continue;
            }
            tokio::time::sleep(self.settings.poll_interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::keys::KeySpace;
    use crate::state::{FallbackMode, Flags, MemoryBackend};

    fn log(max_running: usize, max_events: usize, finished_budget: usize) -> StreamLog {
        let state = StateLayer::new(
            KeySpace::new("t", "test").unwrap(),
            Arc::new(MemoryBackend::new(100)),
            None,
            Arc::new(Flags::new(BTreeMap::new())),
            true,
            FallbackMode::Memory,
        );
        StreamLog::new(
            Arc::new(state),
            StreamSettings {
                ttl: Duration::from_secs(3600),
                max_events,
                max_running,
                finished_budget,
                poll_interval: Duration::from_millis(100),
                stale_after: Duration::from_secs(60),
            },
        )
    }

    fn id(n: usize) -> StreamId {
        StreamId::parse(&format!("generate-{n:032}")).unwrap()
    }

    fn event(seq: u64, data: &str) -> Event {
        Event { seq, event: "delta".into(), data: data.into() }
    }

    #[tokio::test]
    async fn running_answers_are_capped_and_finishing_frees_a_place() {
        let log = log(2, 100, 1 << 20);
        let user = UserId::parse("u").unwrap();
        let a = log.open(SessionKind::Generate, &user, &id(1)).unwrap();
        let _b = log.open(SessionKind::Generate, &user, &id(2)).unwrap();
        assert!(log.open(SessionKind::Generate, &user, &id(3)).is_err());
        log.finish(&a);
        log.finish(&a);
        assert_eq!(log.running(), 1, "finishing twice frees one place");
        assert!(log.open(SessionKind::Generate, &user, &id(3)).is_ok());
    }

    #[tokio::test]
    async fn events_per_answer_are_capped_and_readers_get_them_in_order() {
        let log = log(10, 100, 1 << 20);
        let user = UserId::parse("u").unwrap();
        let live = log.open(SessionKind::Search, &user, &id(1)).unwrap();
        for seq in 1..=250 {
            log.record(&live, vec![event(seq, "x")]).await;
        }
        log.finish(&live);
        let mut from_start = EventSource::from_live(live.clone(), 0);
        let first = from_start.next().await.unwrap();
        assert_eq!(first.seq, 151, "the oldest events were dropped");
        let mut count = 1;
        while let Some(e) = from_start.next().await {
            assert_eq!(e.seq, first.seq + count);
            count += 1;
        }
        assert_eq!(count, 100);
        let mut late = log.subscribe(SessionKind::Search, &user, &id(1), 240).await.unwrap().unwrap();
        assert_eq!(late.next().await.unwrap().seq, 241);
        let other = UserId::parse("v").unwrap();
        assert!(log.subscribe(SessionKind::Search, &other, &id(1), 0).await.unwrap().is_none(), "owner only");
    }

    #[tokio::test]
    async fn finished_answers_beyond_the_budget_are_forgotten_oldest_first() {
        let log = log(10, 1000, 10_000);
        let user = UserId::parse("u").unwrap();
        for n in 0..5 {
            let live = log.open(SessionKind::Optimize, &user, &id(n)).unwrap();
            log.record(&live, vec![event(1, &"x".repeat(3000))]).await;
            log.finish(&live);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let running = log.open(SessionKind::Optimize, &user, &id(9)).unwrap();
        log.record(&running, vec![event(1, &"y".repeat(50_000))]).await;
        log.sweep();
        let kept: Vec<usize> =
            futures::future::join_all(
                (0..5).map(|n| {
                    let log = &log;
                    let user = user.clone();
                    async move {
                        log.subscribe(SessionKind::Optimize, &user, &id(n), 0).await.unwrap().is_some().then_some(n)
                    }
                }),
            )
            .await
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(kept, [2, 3, 4], "the newest that fit the budget");
        assert!(log.subscribe(SessionKind::Optimize, &user, &id(9), 0).await.unwrap().is_some(), "running: kept");
    }
}
