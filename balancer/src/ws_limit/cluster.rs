//! The Redis side of the WebSocket limit: the two scripts, the connection the workers share,
//! and the lease task that keeps this balancer's counts (and its registration) alive.
//!
//! Layout ([`RedisKeys::ws_slots`]): one hash per client address, field = balancer instance
//! id, value `<count>:<lease expiry, Unix ms>:<sequence>`; the key expires as a whole after
//! the longest lease, so nothing outlives its balancers. Balancers register in
//! [`RedisKeys::balancers`] (score = when the registration lapses) so each knows how many
//! share the limit when Redis goes away. Times are Redis' own (`TIME`), never a balancer's.

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, LazyLock, Mutex,
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use petmesh_shared::{
    redis_conn::{RedisConnection, RedisTarget},
    registry::RedisKeys,
};
use tokio::sync::{mpsc, watch};

use super::{Held, WsLimiter};
use crate::metrics::Metrics;

/// Admits one more tunnel of an address if the cluster-wide total stays within the limit.
/// KEYS[1]: the address's hash. ARGV: instance id, our count with this tunnel, its sequence,
/// the limit, the lease ms. Returns 1 (admitted) or 0.
///
/// 1. Drop lapsed fields; add up the others' counts.
/// 2. If a newer state of ours is stored already, it includes this tunnel: judge by it.
/// 3. Otherwise admit if the others plus our new count stay within the limit, and store it.
static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
        local me, n, seq = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
        local limit, lease = tonumber(ARGV[4]), tonumber(ARGV[5])
        local others, mine, mine_seq = 0, 0, -1
        local fields = redis.call('HGETALL', KEYS[1])
        for i = 1, #fields, 2 do
            local c, e, s = string.match(fields[i + 1], '^(%d+):(%d+):(%d+)$')
            c, e, s = tonumber(c), tonumber(e), tonumber(s)
            if c == nil or e <= now then
                redis.call('HDEL', KEYS[1], fields[i])
            elseif fields[i] == me then
                mine, mine_seq = c, s
            else
                others = others + c
            end
        end
        if seq < mine_seq then
            if others + mine <= limit then return 1 else return 0 end
        end
        if others + n > limit then return 0 end
        redis.call('HSET', KEYS[1], me, string.format('%d:%d:%d', n, now + lease, seq))
        if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
        return 1
        ",
    )
});

/// Stores this balancer's count of an address (0 deletes its field), renewing the lease,
/// unless a newer state is stored already. KEYS[1]: the address's hash. ARGV: instance id,
/// count, sequence, lease ms. Returns 1 if written.
static STORE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
        local me, n, seq, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
        local current = redis.call('HGET', KEYS[1], me)
        if current then
            local stored = tonumber(string.match(current, ':(%d+)$'))
            if stored and stored > seq then return 0 end
        end
        if n == 0 then
            redis.call('HDEL', KEYS[1], me)
            return 1
        end
        redis.call('HSET', KEYS[1], me, string.format('%d:%d:%d', n, now + lease, seq))
        if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
        return 1
        ",
    )
});

/// Renews this balancer's registration (ARGV[2] = lease ms; ARGV[3] = 1 registers, 0
/// deregisters), drops lapsed ones and returns how many balancers are registered.
static REGISTER: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
        local lease = tonumber(ARGV[2])
        if ARGV[3] == '1' then
            redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
        else
            redis.call('ZREM', KEYS[1], ARGV[1])
        end
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
        return redis.call('ZCARD', KEYS[1])
        ",
    )
});

/// Every script starts with `now`: Redis' clock in Unix ms (the balancers' clocks never count).
fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!(
        "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n{body}"
    ))
}

/// Writes of counts in flight at once during a renewal round or a batch of changes.
const CONCURRENT_WRITES: usize = 32;

/// The cluster-wide WebSocket slots of one balancer process.
#[derive(Debug)]
pub struct ClusterSlots {
    /// Where Redis is (standalone or a Redis Cluster).
    target: RedisTarget,
    /// The cluster's key layout.
    keys: RedisKeys,
    /// This process's id in Redis (pid and a random part: unique per process).
    instance: String,
    /// `limits.ws_lease_ms`.
    lease_ms: u64,
    /// `limits.ws_lease_refresh_ms`.
    refresh: Duration,
    /// The connection workers clone for their scripts; `None` while Redis is unreachable
    /// (handshakes then decide locally at once). Only the lease task opens it.
    connection: Mutex<Option<RedisConnection>>,
    /// Whether the current outage has been logged.
    in_outage: AtomicBool,
    /// Live balancers when last counted (at least 1): the fallback's divisor.
    balancers_seen: AtomicUsize,
    /// Every metric.
    metrics: Metrics,
}

impl ClusterSlots {
    /// The slots of cluster `cluster` in the Redis at `target`.
    pub fn new(
        target: RedisTarget,
        cluster: &str,
        settings: &crate::config::Settings,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            target,
            keys: RedisKeys::new(cluster),
            instance: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
            lease_ms: settings.limits.ws_lease_ms,
            refresh: Duration::from_millis(settings.limits.ws_lease_refresh_ms),
            connection: Mutex::new(None),
            in_outage: AtomicBool::new(false),
            balancers_seen: AtomicUsize::new(1),
            metrics,
        })
    }

    /// This balancer's instance id (its field in every address's hash).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Runs the acquire script for a reservation that brought `ip` to `held`. `None` when
    /// Redis is unreachable (the caller decides locally).
    pub async fn acquire(&self, ip: IpAddr, held: Held, limit: u32) -> Option<bool> {
        let mut connection = self.current()?;
        let answer: redis::RedisResult<u8> = ACQUIRE
            .key(self.keys.ws_slots(&ip.to_string()))
            .arg(&self.instance)
            .arg(held.count)
            .arg(held.seq)
            .arg(limit)
            .arg(self.lease_ms)
            .invoke_async(&mut connection)
            .await;
        match answer {
            Ok(admitted) => Some(admitted == 1),
            Err(err) => {
                self.lost(&err);
                None
            }
        }
    }

    /// What each balancer admits per address on its own while Redis is unreachable.
    pub fn fallback_limit(&self, limit: u32) -> u32 {
        let balancers = self.balancers_seen.load(Ordering::Relaxed).max(1) as u32;
        (limit / balancers).max(1)
    }

    /// The lease task: connects (again after every failure), writes changed counts as they
    /// come, and every `limits.ws_lease_refresh_ms` renews the registration and every count
    /// held. On `shutdown` (once the workers have stopped) it writes what is left and
    /// deregisters.
    pub async fn run(
        self: Arc<Self>,
        limiter: Arc<WsLimiter>,
        mut changed: mpsc::UnboundedReceiver<IpAddr>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.renew(&limiter).await,
                Some(ip) = changed.recv() => self.store_changed(ip, &mut changed, &limiter).await,
                _ = crate::state::stopped(&mut shutdown) => break,
            }
        }
        if let Ok(ip) = changed.try_recv() {
            self.store_changed(ip, &mut changed, &limiter).await;
        }
        self.register(false).await;
    }

    /// Writes the count of `first` and of every other address waiting in `changed`, each
    /// once: the count written is the one held now, so one write covers every change queued
    /// for an address. When thousands of tunnels of a few hundred addresses close at once (a
    /// reconnect storm) that is a few hundred writes instead of one per tunnel.
    async fn store_changed(
        &self,
        first: IpAddr,
        changed: &mut mpsc::UnboundedReceiver<IpAddr>,
        limiter: &WsLimiter,
    ) {
        let mut ips = HashSet::from([first]);
        while let Ok(ip) = changed.try_recv() {
            ips.insert(ip);
        }
        futures_util::stream::iter(ips)
            .for_each_concurrent(CONCURRENT_WRITES, |ip| self.store(ip, limiter.held(ip)))
            .await;
    }

    /// Connects if needed, renews the registration and writes every count held (which also
    /// restores whatever an outage lost). Also run once at start-up, before the first
    /// handshake.
    pub async fn renew(&self, limiter: &WsLimiter) {
        if self.current().is_none() {
            if let Err(err) = self.connect().await {
                self.lost(&err);
                return;
            }
        }
        if !self.register(true).await {
            return;
        }
        let held = limiter.all_held();
        futures_util::stream::iter(held)
            .for_each_concurrent(CONCURRENT_WRITES, |(ip, held)| self.store(ip, held))
            .await;
    }

    /// Renews (or, with `false`, drops) this balancer's registration and records how many
    /// are registered; false when Redis did not answer.
    async fn register(&self, alive: bool) -> bool {
        let Some(mut connection) = self.current() else {
            return false;
        };
        let answer: redis::RedisResult<usize> = REGISTER
            .key(self.keys.balancers())
            .arg(&self.instance)
            .arg(self.lease_ms)
            .arg(u8::from(alive))
            .invoke_async(&mut connection)
            .await;
        match answer {
            Ok(balancers) => {
                // Only an answer ends an outage (a connection alone may be cut at once).
                if self.in_outage.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis reachable again: the WebSocket limit per address is cluster-wide again");
                }
                let balancers = balancers.max(1);
                self.balancers_seen.store(balancers, Ordering::Relaxed);
                self.metrics.balancers.set(balancers as i64);
                true
            }
            Err(err) => {
                self.lost(&err);
                false
            }
        }
    }

    /// Writes this balancer's count of `ip`.
    async fn store(&self, ip: IpAddr, held: Held) {
        let Some(mut connection) = self.current() else {
            return; // written by the next renewal after the outage
        };
        let answer: redis::RedisResult<u8> = STORE
            .key(self.keys.ws_slots(&ip.to_string()))
            .arg(&self.instance)
            .arg(held.count)
            .arg(held.seq)
            .arg(self.lease_ms)
            .invoke_async(&mut connection)
            .await;
        if let Err(err) = answer {
            self.lost(&err);
        }
    }

    /// Opens the shared connection.
    async fn connect(&self) -> anyhow::Result<()> {
        // Opened here, on the control plane's runtime, which then drives it for the workers.
        let connection = self.target.connect().await?;
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection);
        if self.in_outage.swap(false, Ordering::Relaxed) {
            tracing::info!(
                "Redis reachable again: the WebSocket limit per address is cluster-wide again"
            );
        }
        Ok(())
    }

    /// The shared connection, `None` while Redis is unreachable.
    fn current(&self) -> Option<RedisConnection> {
        self.connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets the connection after a failure (the lease task reconnects) and logs the
    /// outage once.
    fn lost(&self, err: &dyn std::fmt::Display) {
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if !self.in_outage.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %err,
                balancers = self.balancers_seen.load(Ordering::Relaxed),
                "Redis unreachable: each balancer enforces the WebSocket limit on its own, at ws_per_ip / balancers"
            );
        }
    }
}
