//! Scale-out over Redis Streams: every `wan-serve --queue redis://…` is a
//! worker of one consumer group.
//!
//! * `wan:job:{id}`: the job record (JSON): status and progress live here.
//! * `wan:jobs`: sorted set of ids by submission time (listing).
//! * `wan:stream:{profile}`: one stream per profile (`t2v-832x480x81`);
//!   an entry `id → {job id}` per submission; consumer group `wan-serve`.
//! * `wan:profiles`: the profiles some worker serves (submissions are
//!   checked against it).
//! * `wan:cancel:{id}`: a cancel was asked for; `wan:done:{id}`: the worker
//!   whose final state won (`SET NX`: a job completes once).
//!
//! A worker reads new entries with `XREADGROUP`; a running job keeps its
//! entry fresh (`XCLAIM … JUSTID` by its owner at each step). An entry idle
//! longer than the claim timeout belongs to a worker that died: the next
//! worker to look takes it over with `XAUTOCLAIM` and runs the job from the
//! start. Results go to the shared `--data` directory.

use std::sync::Mutex;
use std::time::Duration;

use redis::{Client, Connection, RedisResult, Value};

use crate::error::{Error, Result};
use crate::job::{Job, ProfileInfo, Status, now_s};
use crate::queue::{Claim, Deleted, Queue, QueueFull};
use crate::store::Store;

const GROUP: &str = "wan-serve";
const JOBS: &str = "wan:jobs";
const PROFILES: &str = "wan:profiles";
/// How long cancel and completion markers are kept (seconds).
const MARKER_TTL_S: u64 = 7 * 24 * 3600;

fn k_job(id: &str) -> String {
    format!("wan:job:{id}")
}
fn k_stream(profile: &ProfileInfo) -> String {
    format!("wan:stream:{}", profile.key())
}
fn k_cancel(id: &str) -> String {
    format!("wan:cancel:{id}")
}
fn k_done(id: &str) -> String {
    format!("wan:done:{id}")
}

pub struct RedisQueue {
    client: Client,
    pool: Mutex<Vec<Connection>>,
    store: Store,
    max_waiting: usize,
    claim_timeout: Duration,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// `[[entry id, [field, value, …]], …]` → (entry id, job id).
fn entries(v: &Value) -> Vec<(String, Option<String>)> {
    items(v)
        .iter()
        .filter_map(|e| {
            let parts = items(e);
            let entry = text(parts.first()?)?;
            let fields = parts.get(1).map(items).unwrap_or(&[]);
            let job = fields
                .chunks(2)
                .find(|kv| kv.first().and_then(text).as_deref() == Some("id"))
                .and_then(|kv| kv.get(1).and_then(text));
            Some((entry, job))
        })
        .collect()
}

fn ensure_group(con: &mut Connection, stream: &str) -> RedisResult<()> {
    let r: RedisResult<Value> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query(con);
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        r => r.map(|_| ()),
    }
}

impl RedisQueue {
    /// Connects (and checks the connection with `PING`).
    pub fn open(
        url: &str,
        store: Store,
        max_waiting: usize,
        claim_timeout: Duration,
    ) -> Result<Self> {
        let client = Client::open(url).map_err(Error::queue(format!("--queue {url}")))?;
        let q = RedisQueue {
            client,
            pool: Mutex::new(Vec::new()),
            store,
            max_waiting,
            claim_timeout,
        };
        q.with("PING", |c| redis::cmd("PING").query::<String>(c))?;
        Ok(q)
    }

    /// Runs `f` on a pooled connection; a connection that failed is dropped.
    fn with<T>(&self, what: &str, f: impl FnOnce(&mut Connection) -> RedisResult<T>) -> Result<T> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut con = match pooled {
            Some(c) => c,
            None => {
                let c = self
                    .client
                    .get_connection_with_timeout(Duration::from_secs(5))
                    .map_err(Error::queue("connecting"))?;
                c.set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(Error::queue("connecting"))?;
                c
            }
        };
        let r = f(&mut con).map_err(Error::queue(what));
        if r.is_ok() {
            self.pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(con);
        }
        r
    }

    fn parse(id: &str, json: Option<String>) -> Result<Option<Job>> {
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| Error::Corrupt {
                file: k_job(id).into(),
                source: e,
            })
        })
        .transpose()
    }

    fn put(&self, job: &Job) -> Result<()> {
        let json = serde_json::to_string(job).map_err(|e| Error::Corrupt {
            file: k_job(&job.id).into(),
            source: e,
        })?;
        self.with("SET job", |c| {
            redis::cmd("SET")
                .arg(k_job(&job.id))
                .arg(json)
                .query::<()>(c)
        })
    }

    fn waiting_in(&self, stream: &str) -> Result<usize> {
        self.with("XLEN/XPENDING", |c| {
            let len: usize = redis::cmd("XLEN").arg(stream).query(c)?;
            let pending: RedisResult<Value> =
                redis::cmd("XPENDING").arg(stream).arg(GROUP).query(c);
            let pending = match pending {
                Ok(v) => items(&v).first().and_then(|n| match n {
                    Value::Int(i) => Some(*i as usize),
                    _ => None,
                }),
                Err(e) if e.code() == Some("NOGROUP") => None,
                Err(e) => return Err(e),
            };
            Ok(len.saturating_sub(pending.unwrap_or(0)))
        })
    }

    /// Acknowledges and removes a stream entry.
    fn drop_entry(&self, stream: &str, entry: &str) -> Result<()> {
        self.with("XACK/XDEL", |c| {
            redis::pipe()
                .cmd("XACK")
                .arg(stream)
                .arg(GROUP)
                .arg(entry)
                .cmd("XDEL")
                .arg(stream)
                .arg(entry)
                .query::<()>(c)
        })
    }
}

impl Queue for RedisQueue {
    fn submit(&self, job: &Job) -> Result<Result<(), QueueFull>> {
        // Checked, then added: servers racing may pass the bound by the
        // number of simultaneous submissions, never more.
        let depth = self.depth()?;
        if depth >= self.max_waiting {
            return Ok(Err(QueueFull { depth }));
        }
        self.put(job)?;
        let stream = k_stream(&job.request.profile);
        self.with("XADD", |c| {
            ensure_group(c, &stream)?;
            redis::pipe()
                .cmd("ZADD")
                .arg(JOBS)
                .arg(job.created_ms)
                .arg(&job.id)
                .cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("id")
                .arg(&job.id)
                .query::<()>(c)
        })?;
        Ok(Ok(()))
    }

    fn get(&self, id: &str) -> Result<Option<Job>> {
        let json = self.with("GET job", |c| redis::cmd("GET").arg(k_job(id)).query(c))?;
        Self::parse(id, json)
    }

    fn list(&self, after: Option<&str>, limit: usize) -> Result<(Vec<Job>, bool)> {
        let start = match after {
            Some(a) => {
                let rank: Option<usize> = self.with("ZREVRANK", |c| {
                    redis::cmd("ZREVRANK").arg(JOBS).arg(a).query(c)
                })?;
                match rank {
                    Some(r) => r + 1,
                    None => return Ok((Vec::new(), false)),
                }
            }
            None => 0,
        };
        let ids: Vec<String> = self.with("ZREVRANGE", |c| {
            redis::cmd("ZREVRANGE")
                .arg(JOBS)
                .arg(start)
                .arg(start + limit)
                .query(c)
        })?;
        let more = ids.len() > limit;
        let ids = &ids[..ids.len().min(limit)];
        if ids.is_empty() {
            return Ok((Vec::new(), false));
        }
        let keys: Vec<String> = ids.iter().map(|i| k_job(i)).collect();
        let jsons: Vec<Option<String>> =
            self.with("MGET", |c| redis::cmd("MGET").arg(&keys).query(c))?;
        let mut jobs = Vec::new();
        for (id, j) in ids.iter().zip(jsons) {
            jobs.extend(Self::parse(id, j)?);
        }
        Ok((jobs, more))
    }

    fn cancel(&self, id: &str) -> Result<Option<Job>> {
        let Some(mut job) = self.get(id)? else {
            return Ok(None);
        };
        if job.status.is_final() {
            return Ok(Some(job));
        }
        self.with("SET cancel", |c| {
            redis::cmd("SET")
                .arg(k_cancel(id))
                .arg(1)
                .arg("EX")
                .arg(MARKER_TTL_S)
                .query::<()>(c)
        })?;
        if job.status == Status::Queued {
            job.status = Status::Cancelled;
            job.completed_at = Some(now_s());
            self.put(&job)?;
        }
        Ok(Some(job))
    }

    fn delete(&self, id: &str) -> Result<Deleted> {
        let Some(job) = self.get(id)? else {
            return Ok(Deleted::NotFound);
        };
        if job.status == Status::InProgress {
            return Ok(Deleted::Running);
        }
        self.with("DEL job", |c| {
            redis::pipe()
                .cmd("SET")
                .arg(k_cancel(id))
                .arg(1)
                .arg("EX")
                .arg(MARKER_TTL_S)
                .cmd("DEL")
                .arg(k_job(id))
                .cmd("ZREM")
                .arg(JOBS)
                .arg(id)
                .query::<()>(c)
        })?;
        self.store.remove(id)?;
        Ok(Deleted::Gone(Box::new(job)))
    }

    fn depth(&self) -> Result<usize> {
        let mut n = 0;
        for p in self.profiles()? {
            n += self.waiting_in(&k_stream(&p))?;
        }
        Ok(n)
    }

    fn position(&self, id: &str) -> Result<Option<usize>> {
        let Some(job) = self.get(id)? else {
            return Ok(None);
        };
        if job.status != Status::Queued {
            return Ok(None);
        }
        let stream = k_stream(&job.request.profile);
        let (all, pending) = self.with("XRANGE/XPENDING", |c| {
            let all: Value = redis::cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .query(c)?;
            let pending: Value = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(GROUP)
                .arg("-")
                .arg("+")
                .arg(10_000)
                .query(c)?;
            Ok((all, pending))
        })?;
        let pending: Vec<String> = items(&pending)
            .iter()
            .filter_map(|p| items(p).first().and_then(text))
            .collect();
        let mut n = 0;
        for (entry, jid) in entries(&all) {
            if jid.as_deref() == Some(id) {
                return Ok(Some(n));
            }
            if !pending.contains(&entry) {
                n += 1;
            }
        }
        Ok(None)
    }

    fn profiles(&self) -> Result<Vec<ProfileInfo>> {
        let vals: Vec<String> =
            self.with("HVALS", |c| redis::cmd("HVALS").arg(PROFILES).query(c))?;
        vals.iter()
            .map(|v| {
                serde_json::from_str(v).map_err(|e| Error::Corrupt {
                    file: PROFILES.into(),
                    source: e,
                })
            })
            .collect()
    }

    fn register(&self, profile: &ProfileInfo, _worker: &str) -> Result<()> {
        let json = serde_json::to_string(profile).map_err(|e| Error::Corrupt {
            file: PROFILES.into(),
            source: e,
        })?;
        self.with("HSET profile", |c| {
            ensure_group(c, &k_stream(profile))?;
            redis::cmd("HSET")
                .arg(PROFILES)
                .arg(profile.key())
                .arg(json)
                .query::<()>(c)
        })
    }

    fn claim(&self, profile: &ProfileInfo, worker: &str, wait: Duration) -> Result<Option<Claim>> {
        let stream = k_stream(profile);
        let idle_ms = self.claim_timeout.as_millis() as u64;
        // A dead worker's entry first, then a new one.
        let stale: Value = self.with("XAUTOCLAIM", |c| {
            redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg(worker)
                .arg(idle_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(1)
                .query(c)
        })?;
        let mut reclaimed = true;
        let mut got = entries(items(&stale).get(1).unwrap_or(&Value::Nil));
        if got.is_empty() {
            reclaimed = false;
            let fresh: Value = self.with("XREADGROUP", |c| {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(worker)
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(wait.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query(c)
            })?;
            // [[stream, [[entry, fields]]]]
            got = items(&fresh)
                .first()
                .map(|s| entries(items(s).get(1).unwrap_or(&Value::Nil)))
                .unwrap_or_default();
        }
        let Some((entry, job_id)) = got.into_iter().next() else {
            return Ok(None);
        };
        let job = match &job_id {
            Some(id) => self.get(id)?,
            None => None,
        };
        let Some(mut job) = job else {
            // Deleted, or not an entry of ours.
            self.drop_entry(&stream, &entry)?;
            return Ok(None);
        };
        let (cancelled, done): (bool, bool) = self.with("EXISTS", |c| {
            redis::pipe()
                .cmd("EXISTS")
                .arg(k_cancel(&job.id))
                .cmd("EXISTS")
                .arg(k_done(&job.id))
                .query(c)
        })?;
        if done || job.status.is_final() || cancelled {
            if cancelled && !job.status.is_final() {
                job.status = Status::Cancelled;
                job.completed_at = Some(now_s());
                let won: bool = self.with("SET done", |c| {
                    redis::cmd("SET")
                        .arg(k_done(&job.id))
                        .arg(worker)
                        .arg("NX")
                        .arg("EX")
                        .arg(MARKER_TTL_S)
                        .query::<Option<String>>(c)
                        .map(|r| r.is_some())
                })?;
                if won {
                    self.put(&job)?;
                }
            }
            self.drop_entry(&stream, &entry)?;
            return Ok(None);
        }
        job.status = Status::InProgress;
        job.started_at = Some(now_s());
        job.worker = Some(worker.to_string());
        job.step_s.clear();
        self.put(&job)?;
        Ok(Some(Claim {
            job,
            entry: Some(entry),
            reclaimed,
        }))
    }

    fn progress(&self, claim: &Claim, job: &Job) -> Result<bool> {
        self.put(job)?;
        let stream = k_stream(&job.request.profile);
        let worker = job.worker.clone().unwrap_or_default();
        let entry = claim.entry.clone().unwrap_or_default();
        self.with("heartbeat", |c| {
            // Refresh the entry's idle time, only while this worker owns it.
            let p: Value = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(GROUP)
                .arg(&entry)
                .arg(&entry)
                .arg(1)
                .query(c)?;
            let owner = items(&p)
                .first()
                .and_then(|e| items(e).get(1).and_then(text));
            if owner.as_deref() == Some(worker.as_str()) {
                redis::cmd("XCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&worker)
                    .arg(0)
                    .arg(&entry)
                    .arg("JUSTID")
                    .query::<Value>(c)?;
            }
            redis::cmd("EXISTS").arg(k_cancel(&job.id)).query(c)
        })
    }

    fn finish(&self, claim: &Claim, job: &Job) -> Result<bool> {
        let worker = job.worker.clone().unwrap_or_default();
        let won: bool = self.with("SET done", |c| {
            redis::cmd("SET")
                .arg(k_done(&job.id))
                .arg(&worker)
                .arg("NX")
                .arg("EX")
                .arg(MARKER_TTL_S)
                .query::<Option<String>>(c)
                .map(|r| r.is_some())
        })?;
        if won {
            self.put(job)?;
        }
        if let Some(entry) = &claim.entry {
            self.drop_entry(&k_stream(&job.request.profile), entry)?;
        }
        Ok(won)
    }

    fn release(&self, _claim: &Claim, job: &Job) -> Result<()> {
        // The entry stays pending: a worker takes it over after the claim
        // timeout (this one too, when it comes back).
        let mut job = job.clone();
        job.status = Status::Queued;
        job.step_s.clear();
        self.put(&job)
    }
}
