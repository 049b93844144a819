//! The Redis side of cluster meters: one Lua script that takes up to N tokens at once from a
//! GCRA rate cell and, in the same atomic call, a GCRA quota cell; and the sync `redis` client
//! that runs it from the refill thread (never from a worker thread: the crate's async features
//! pull tokio, and a blocking call would stall a monoio worker).
//!
//! Time is Redis's own (`TIME` inside the script), so every gateway process agrees on it
//! whatever its clock. Cells are `prefix{bucket}:r` and `prefix{bucket}:q`, holding the
//! theoretical arrival time in microseconds; each write sets a TTL that ends one second after
//! the cell is full again, so idle buckets vanish (an absent cell is a full bucket).
use super::Snapshot;
use super::cluster::{Connect, Grant, LimitArgs, Store, StoreError, TakeReq};
use std::sync::Arc;
use std::time::Duration;

/// Connect timeout, and read/write timeout of every round trip: past it Redis counts as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
pub const IO_TIMEOUT: Duration = Duration::from_millis(250);

/// GCRA with a cost, over a rate cell and a quota cell.
///
/// KEYS: rate cell, quota cell. ARGV: want, partial (1 = grant as many as available up to want,
/// 0 = all or nothing), rate interval ns (0 = no rate), rate burst, quota interval ns (0 = no
/// quota), quota burst. Returns {granted, retry_after_us, limit, remaining, reset_us,
/// quota_limited}: retry_after is the wait for the next token when fewer than `want` were
/// granted; limit/remaining/reset describe the rate cell (the quota cell without a rate).
pub const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local want = tonumber(ARGV[1])
local partial = ARGV[2] == '1'
local cells = {}
local function cell(key, int_ns, burst, is_quota)
  local interval = int_ns / 1000
  local tol = interval * burst
  local v = redis.call('GET', key)
  local tat = v and tonumber(v) or now
  if tat < now then tat = now end
  local avail = math.floor((tol - (tat - now)) / interval + 1e-6)
  if avail < 0 then avail = 0 end
  cells[#cells + 1] = {key = key, interval = interval, tol = tol, tat = tat, avail = avail,
                       burst = burst, quota = is_quota}
end
if tonumber(ARGV[3]) > 0 then cell(KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]), 0) end
if tonumber(ARGV[5]) > 0 then cell(KEYS[2], tonumber(ARGV[5]), tonumber(ARGV[6]), 1) end
local grant = want
for _, c in ipairs(cells) do
  if c.avail < grant then grant = c.avail end
end
if grant < want and not partial then grant = 0 end
local retry, quota = 0, 0
for _, c in ipairs(cells) do
  c.tat = c.tat + grant * c.interval
  if grant > 0 then
    redis.call('SET', c.key, string.format('%.3f', c.tat),
               'PX', math.ceil((c.tat - now) / 1000) + 1000)
  end
  local wait = c.tat + c.interval - c.tol - now
  if grant < want and wait > retry then
    retry = wait
    quota = c.quota
  end
end
local s = cells[1]
if s == nil then return {grant, 0, 0, 0, 0, 0} end
local remaining = math.floor((s.tol - (s.tat - now)) / s.interval + 1e-6)
if remaining < 0 then remaining = 0 end
return {grant, math.ceil(retry), s.burst, remaining, math.ceil(s.tat - now), quota}
"#;

/// A connection to Redis with the script loaded.
pub struct RedisStore {
    con: redis::Connection,
    sha: String,
}

fn store_err(e: redis::RedisError) -> StoreError {
    StoreError(e.to_string())
}

impl RedisStore {
    /// Connects (with [`CONNECT_TIMEOUT`]), sets [`IO_TIMEOUT`] and loads the script.
    pub fn connect(info: &redis::ConnectionInfo) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(info.clone()).map_err(store_err)?;
        let con = client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(store_err)?;
        con.set_read_timeout(Some(IO_TIMEOUT)).map_err(store_err)?;
        con.set_write_timeout(Some(IO_TIMEOUT)).map_err(store_err)?;
        let mut s = RedisStore {
            con,
            sha: String::new(),
        };
        s.load()?;
        Ok(s)
    }

    fn load(&mut self) -> Result<(), StoreError> {
        self.sha = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query(&mut self.con)
            .map_err(store_err)?;
        Ok(())
    }

    fn pipeline(&self, reqs: &[TakeReq]) -> redis::Pipeline {
        let mut p = redis::pipe();
        let none = LimitArgs {
            interval_ns: 0,
            burst: 0,
        };
        for q in reqs {
            let r = q.rate.unwrap_or(none);
            let l = q.quota.unwrap_or(none);
            p.cmd("EVALSHA")
                .arg(&self.sha)
                .arg(2)
                .arg(format!("{}:r", q.key))
                .arg(format!("{}:q", q.key))
                .arg(q.want)
                .arg(1)
                .arg(r.interval_ns)
                .arg(r.burst)
                .arg(l.interval_ns)
                .arg(l.burst);
        }
        p
    }
}

fn grant(v: &[i64]) -> Option<Grant> {
    let n = |i: usize| v.get(i).and_then(|x| u64::try_from(*x).ok());
    Some(Grant {
        granted: n(0)?,
        retry_after_ns: n(1)?.saturating_mul(1000),
        quota: n(5)? == 1,
        snapshot: Snapshot {
            limit: n(2)?,
            remaining: n(3)?,
            reset_ns: n(4)?.saturating_mul(1000),
        },
    })
}

impl Store for RedisStore {
    fn take(&mut self, reqs: &[TakeReq]) -> Result<Vec<Grant>, StoreError> {
        let p = self.pipeline(reqs);
        let replies: Vec<Vec<i64>> = match p.query(&mut self.con) {
            Ok(v) => v,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // the script cache was flushed: load it again, once
                self.load()?;
                self.pipeline(reqs)
                    .query(&mut self.con)
                    .map_err(store_err)?
            }
            Err(e) => return Err(store_err(e)),
        };
        replies
            .iter()
            .map(|v| grant(v).ok_or_else(|| StoreError("malformed script reply".into())))
            .collect()
    }
}

/// Parses `[meters] redis` (a `redis://host:port/db` URL without a password) and applies the
/// password, if any. Returns the connection and a display form for logs.
pub fn connection_info(
    url: &str,
    password: Option<&str>,
) -> Result<(redis::ConnectionInfo, String), String> {
    use redis::IntoConnectionInfo;
    if !url.starts_with("redis://") {
        return Err("must be a redis://host:port/db URL".into());
    }
    let info = url.into_connection_info().map_err(|e| e.to_string())?;
    if info.redis_settings().password().is_some() {
        return Err(
            "must not contain a password: set meters.password to a vault:, env: or file: reference"
                .into(),
        );
    }
    let display = format!("{}/{}", info.addr(), info.redis_settings().db());
    let info = match password {
        Some(p) => {
            let settings = info.redis_settings().clone().set_password(p);
            info.set_redis_settings(settings)
        }
        None => info,
    };
    Ok((info, display))
}

/// The connect function of a [`super::cluster::Cluster`] backed by Redis.
pub fn connector(info: redis::ConnectionInfo) -> Connect {
    Arc::new(move || RedisStore::connect(&info).map(|s| Box::new(s) as Box<dyn Store>))
}
