//! The Redis backend (`[state] redis = "redis://host:port/db"`): every gateway replica pointed
//! at the same Redis sees and honours the same approvals. The sync `redis` client on the store
//! thread (as the meters' refill thread uses it); reconnects on the next command after a
//! failure.
//!
//! Keys (under `key_prefix`, default `portcullis:`): `apr:{id}` (the approval as JSON),
//! `aprbody:{id}` (the body), `aprbind:{hex}` (binding → id), `aprs` (a set of ids),
//! `totp:{admin}` (last TOTP step); managed agents (issue 16): `agents` (a hash: id → the
//! record as JSON), `agents_gen` (a counter every agent write moves; each replica polls it)
//! and `agent_seen` (a hash: id → last seen, unix seconds); tool pins (issue 15): `pins` (a
//! hash: `proxy` NUL `tool` → the pin as JSON) and `pins_gen` (a counter every pin write
//! moves); reserved for issue 16: `revoked:{key_sha256}`.
//!
//! A write that follows a read (claiming, deciding, expiring) is a compare-and-set in one Lua
//! script: it lands only if the record is still what this gateway read, so two gateways can
//! never both execute one approval or both decide it.
// Control plane: the store thread only.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
use super::schema::{Approval, Binding, ManagedAgent, ToolPin};
use super::{Backend, StoreError};
use std::collections::HashMap;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// KEYS: record, body, bind, unbind, index. ARGV: expected ("" = none), new, body?, id, flags.
const PUT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[5], ARGV[4])
if string.sub(ARGV[5], 1, 1) == '1' then redis.call('SET', KEYS[2], ARGV[3]) end
if string.sub(ARGV[5], 3, 3) == '1' then
  if redis.call('GET', KEYS[4]) == ARGV[4] then redis.call('DEL', KEYS[4]) end
end
if string.sub(ARGV[5], 2, 2) == '1' then redis.call('SET', KEYS[3], ARGV[4]) end
return 1
"#;

pub struct RedisBackend {
    info: redis::ConnectionInfo,
    con: Option<redis::Connection>,
    prefix: String,
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError(format!("redis: {e}"))
}

impl RedisBackend {
    pub fn open(url: &str, prefix: &str) -> Result<RedisBackend, StoreError> {
        use redis::IntoConnectionInfo;
        let info = url.into_connection_info().map_err(err)?;
        let mut b = RedisBackend {
            info,
            con: None,
            prefix: prefix.to_string(),
        };
        // fail at start when Redis is unreachable (later failures are retried per command)
        b.con()?;
        Ok(b)
    }

    fn con(&mut self) -> Result<&mut redis::Connection, StoreError> {
        if self.con.is_none() {
            let client = redis::Client::open(self.info.clone()).map_err(err)?;
            let con = client
                .get_connection_with_timeout(CONNECT_TIMEOUT)
                .map_err(err)?;
            con.set_read_timeout(Some(IO_TIMEOUT)).map_err(err)?;
            con.set_write_timeout(Some(IO_TIMEOUT)).map_err(err)?;
            self.con = Some(con);
        }
        self.con
            .as_mut()
            .ok_or_else(|| StoreError("redis: not connected".into()))
    }

    /// Runs `f` on the connection; a failure drops the connection (reconnect next time).
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let r = f(self.con()?);
        if r.is_err() {
            self.con = None;
        }
        r.map_err(err)
    }

    fn k(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }
}

impl Backend for RedisBackend {
    fn get(&mut self, id: &str) -> Result<Option<Approval>, StoreError> {
        let key = self.k("apr", id);
        let v: Option<Vec<u8>> = self.with(|c| redis::cmd("GET").arg(&key).query(c))?;
        v.map(|b| {
            serde_json::from_slice(&b).map_err(|e| StoreError(format!("corrupt approval: {e}")))
        })
        .transpose()
    }

    fn body(&mut self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.k("aprbody", id);
        self.with(|c| redis::cmd("GET").arg(&key).query(c))
    }

    fn bound(&mut self, b: &Binding) -> Result<Option<String>, StoreError> {
        let key = self.k("aprbind", &crate::util::hex::encode(b));
        self.with(|c| redis::cmd("GET").arg(&key).query(c))
    }

    fn put(
        &mut self,
        a: &Approval,
        prev: Option<&Approval>,
        body: Option<&[u8]>,
        bind: Option<&Binding>,
        unbind: Option<&Binding>,
    ) -> Result<bool, StoreError> {
        let new = serde_json::to_vec(a).map_err(|e| StoreError(e.to_string()))?;
        let expected = match prev {
            Some(p) => serde_json::to_vec(p).map_err(|e| StoreError(e.to_string()))?,
            None => Vec::new(),
        };
        let flag = |b: bool| if b { '1' } else { '0' };
        let flags: String = [
            flag(body.is_some()),
            flag(bind.is_some()),
            flag(unbind.is_some()),
        ]
        .iter()
        .collect();
        let none = [0u8; 32];
        let keys = [
            self.k("apr", &a.id),
            self.k("aprbody", &a.id),
            self.k("aprbind", &crate::util::hex::encode(bind.unwrap_or(&none))),
            self.k(
                "aprbind",
                &crate::util::hex::encode(unbind.unwrap_or(&none)),
            ),
            format!("{}aprs", self.prefix),
        ];
        let body = body.unwrap_or(b"");
        let id = a.id.clone();
        let n: i64 = self.with(|c| {
            redis::cmd("EVAL")
                .arg(PUT)
                .arg(5)
                .arg(&keys[..])
                .arg(&expected)
                .arg(&new)
                .arg(body)
                .arg(&id)
                .arg(&flags)
                .query(c)
        })?;
        Ok(n == 1)
    }

    fn remove(&mut self, a: &Approval, binding: Option<&Binding>) -> Result<(), StoreError> {
        let rec = self.k("apr", &a.id);
        let body = self.k("aprbody", &a.id);
        let idx = format!("{}aprs", self.prefix);
        let bind = binding.map(|b| self.k("aprbind", &crate::util::hex::encode(b)));
        let id = a.id.clone();
        self.with(|c| {
            let mut p = redis::pipe();
            p.cmd("DEL").arg(&rec).arg(&body).ignore();
            p.cmd("SREM").arg(&idx).arg(&id).ignore();
            p.query::<()>(c)?;
            if let Some(bk) = &bind {
                let cur: Option<String> = redis::cmd("GET").arg(bk).query(c)?;
                if cur.as_deref() == Some(id.as_str()) {
                    redis::cmd("DEL").arg(bk).query::<()>(c)?;
                }
            }
            Ok(())
        })
    }

    fn scan(&mut self, visit: &mut dyn FnMut(Approval)) -> Result<(), StoreError> {
        let idx = format!("{}aprs", self.prefix);
        let ids: Vec<String> = self.with(|c| redis::cmd("SMEMBERS").arg(&idx).query(c))?;
        for id in ids {
            match self.get(&id) {
                Ok(Some(a)) => visit(a),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e.0, "state: skipping an unreadable approval"),
            }
        }
        Ok(())
    }

    fn set_totp_step(&mut self, admin: &str, step: u64) -> Result<bool, StoreError> {
        // only forward: a step at or below the last one is a replay (atomic across replicas)
        const SET: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if cur >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"#;
        let key = self.k("totp", admin);
        let n: i64 = self.with(|c| {
            redis::cmd("EVAL")
                .arg(SET)
                .arg(1)
                .arg(&key)
                .arg(step)
                .query(c)
        })?;
        Ok(n == 1)
    }

    fn agents(&mut self) -> Result<Vec<ManagedAgent>, StoreError> {
        let key = format!("{}agents", self.prefix);
        let all: HashMap<String, Vec<u8>> =
            self.with(|c| redis::cmd("HGETALL").arg(&key).query(c))?;
        let mut out = Vec::with_capacity(all.len());
        for v in all.values() {
            match serde_json::from_slice(v) {
                Ok(a) => out.push(a),
                Err(x) => tracing::warn!(error = %x, "state: skipping an unreadable agent record"),
            }
        }
        Ok(out)
    }

    fn put_agent(&mut self, a: &ManagedAgent, create: bool) -> Result<bool, StoreError> {
        // the write and the generation move together (one script)
        const PUT: &str = r#"
if ARGV[3] == '1' then
  if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('INCR', KEYS[2])
return 1
"#;
        let json = serde_json::to_vec(a).map_err(|x| StoreError(x.to_string()))?;
        let keys = [
            format!("{}agents", self.prefix),
            format!("{}agents_gen", self.prefix),
        ];
        let id = a.id.clone();
        let n: i64 = self.with(|c| {
            redis::cmd("EVAL")
                .arg(PUT)
                .arg(2)
                .arg(&keys[..])
                .arg(&id)
                .arg(&json)
                .arg(if create { "1" } else { "0" })
                .query(c)
        })?;
        Ok(n == 1)
    }

    fn agents_generation(&mut self) -> Result<u64, StoreError> {
        let key = format!("{}agents_gen", self.prefix);
        let v: Option<u64> = self.with(|c| redis::cmd("GET").arg(&key).query(c))?;
        Ok(v.unwrap_or(0))
    }

    fn agents_seen(&mut self) -> Result<HashMap<String, u64>, StoreError> {
        let key = format!("{}agent_seen", self.prefix);
        self.with(|c| redis::cmd("HGETALL").arg(&key).query(c))
    }

    fn pins(&mut self) -> Result<Vec<ToolPin>, StoreError> {
        let key = format!("{}pins", self.prefix);
        let all: HashMap<String, Vec<u8>> =
            self.with(|c| redis::cmd("HGETALL").arg(&key).query(c))?;
        let mut out = Vec::with_capacity(all.len());
        for v in all.values() {
            match serde_json::from_slice(v) {
                Ok(p) => out.push(p),
                Err(x) => tracing::warn!(error = %x, "state: skipping an unreadable tool pin"),
            }
        }
        Ok(out)
    }

    fn put_pin(&mut self, p: &ToolPin) -> Result<(), StoreError> {
        // the write and the generation move together (one script)
        const PUT: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
"#;
        let json = serde_json::to_vec(p).map_err(|x| StoreError(x.to_string()))?;
        let keys = [
            format!("{}pins", self.prefix),
            format!("{}pins_gen", self.prefix),
        ];
        let field = format!("{}\0{}", p.proxy, p.tool);
        self.with(|c| {
            redis::cmd("EVAL")
                .arg(PUT)
                .arg(2)
                .arg(&keys[..])
                .arg(&field)
                .arg(&json)
                .query::<i64>(c)
                .map(|_| ())
        })
    }

    fn pins_generation(&mut self) -> Result<u64, StoreError> {
        let key = format!("{}pins_gen", self.prefix);
        let v: Option<u64> = self.with(|c| redis::cmd("GET").arg(&key).query(c))?;
        Ok(v.unwrap_or(0))
    }

    fn put_agents_seen(&mut self, seen: &[(String, u64)]) -> Result<(), StoreError> {
        // only forward (another replica may have seen the agent later)
        const MAX: &str = r#"
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if cur < tonumber(ARGV[i + 1]) then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"#;
        let key = format!("{}agent_seen", self.prefix);
        self.with(|c| {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(MAX).arg(1).arg(&key);
            for (id, s) in seen {
                cmd.arg(id).arg(*s);
            }
            cmd.query::<i64>(c).map(|_| ())
        })
    }
}
