//! Where jobs wait and how workers claim them: [`LocalQueue`] (one server,
//! records in `--data`) and [`crate::redis_queue::RedisQueue`] (many
//! servers on one Redis Stream consumer group). The HTTP side and the
//! workers see only the [`Queue`] trait. Calls block (file or network
//! I/O): the HTTP side makes them on tokio's blocking pool.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::Result;
use crate::job::{Job, ProfileInfo, Status, now_s};
use crate::store::Store;

/// Refused: the queue holds its maximum of waiting jobs.
#[derive(Debug, Clone, Copy)]
pub struct QueueFull {
    pub depth: usize,
}

/// A job a worker has claimed, with what the queue needs to settle it.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job: Job,
    /// The stream entry (Redis).
    pub entry: Option<String>,
    /// Claimed from a worker that stopped answering (Redis).
    pub reclaimed: bool,
}

/// What deleting a job did.
#[derive(Debug, Clone, PartialEq)]
pub enum Deleted {
    Gone(Box<Job>),
    NotFound,
    /// It is running: cancel it first.
    Running,
}

pub trait Queue: Send + Sync + 'static {
    /// Stores the job (status `queued`) and queues it, unless full.
    fn submit(&self, job: &Job) -> Result<Result<(), QueueFull>>;
    fn get(&self, id: &str) -> Result<Option<Job>>;
    /// Newest first: up to `limit` jobs after the job `after`, and whether
    /// more follow.
    fn list(&self, after: Option<&str>, limit: usize) -> Result<(Vec<Job>, bool)>;
    /// A queued job becomes `cancelled` at once; a running one is asked to
    /// stop at its next step. `None`: no such job.
    fn cancel(&self, id: &str) -> Result<Option<Job>>;
    fn delete(&self, id: &str) -> Result<Deleted>;
    /// Jobs waiting (not running).
    fn depth(&self) -> Result<usize>;
    /// Jobs waiting before `id` for the same engines.
    fn position(&self, id: &str) -> Result<Option<usize>>;
    /// The profiles the workers serve (submissions are checked against it).
    fn profiles(&self) -> Result<Vec<ProfileInfo>>;

    /// Makes a worker of these engines known.
    fn register(&self, profile: &ProfileInfo, worker: &str) -> Result<()>;
    /// The next job for `profile`, waiting up to `wait`; marks it
    /// `in_progress` by `worker`.
    fn claim(&self, profile: &ProfileInfo, worker: &str, wait: Duration) -> Result<Option<Claim>>;
    /// Records progress; `true` when a cancel was asked for.
    fn progress(&self, claim: &Claim, job: &Job) -> Result<bool>;
    /// Records the final state. `false`: another worker already completed
    /// this job (its result stands; this one is dropped).
    fn finish(&self, claim: &Claim, job: &Job) -> Result<bool>;
    /// Gives a job back unfinished (shutdown): it runs again later.
    fn release(&self, claim: &Claim, job: &Job) -> Result<()>;
}

struct Local {
    jobs: HashMap<String, Job>,
    /// Ids of queued jobs, oldest first.
    waiting: VecDeque<String>,
    /// Running jobs whose cancel was asked for.
    cancel: std::collections::HashSet<String>,
    profiles: Vec<ProfileInfo>,
}

/// One server's queue: jobs in memory, each change of state written to its
/// record in `--data` before it is acknowledged.
pub struct LocalQueue {
    store: Store,
    max_waiting: usize,
    state: Mutex<Local>,
    changed: Condvar,
}

impl LocalQueue {
    /// Reads every job record of `store`: finished jobs are served again;
    /// queued ones, and those a crash or a shutdown left in progress, wait
    /// again in the order they were submitted.
    pub fn open(store: Store, max_waiting: usize) -> Result<Self> {
        let mut jobs = store.load_jobs()?;
        jobs.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        let mut waiting = VecDeque::new();
        for job in &mut jobs {
            if job.status == Status::InProgress {
                job.status = Status::Queued;
                job.step_s.clear();
                store.save_job(job)?;
            }
            if job.status == Status::Queued {
                waiting.push_back(job.id.clone());
            }
        }
        Ok(LocalQueue {
            store,
            max_waiting,
            state: Mutex::new(Local {
                jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
                waiting,
                cancel: Default::default(),
                profiles: Vec::new(),
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Local> {
        // A worker that panicked while holding the lock left consistent
        // data (every change is one assignment); keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Queue for LocalQueue {
    fn submit(&self, job: &Job) -> Result<Result<(), QueueFull>> {
        let mut s = self.lock();
        if s.waiting.len() >= self.max_waiting {
            return Ok(Err(QueueFull {
                depth: s.waiting.len(),
            }));
        }
        self.store.save_job(job)?;
        s.jobs.insert(job.id.clone(), job.clone());
        s.waiting.push_back(job.id.clone());
        self.changed.notify_all();
        Ok(Ok(()))
    }

    fn get(&self, id: &str) -> Result<Option<Job>> {
        Ok(self.lock().jobs.get(id).cloned())
    }

    fn list(&self, after: Option<&str>, limit: usize) -> Result<(Vec<Job>, bool)> {
        let s = self.lock();
        let mut all: Vec<&Job> = s.jobs.values().collect();
        all.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
        let start = match after {
            Some(a) => all
                .iter()
                .position(|j| j.id == a)
                .map_or(all.len(), |i| i + 1),
            None => 0,
        };
        let page: Vec<Job> = all
            .iter()
            .skip(start)
            .take(limit)
            .map(|j| (*j).clone())
            .collect();
        let more = all.len() > start + page.len();
        Ok((page, more))
    }

    fn cancel(&self, id: &str) -> Result<Option<Job>> {
        let mut s = self.lock();
        let Some(job) = s.jobs.get(id).cloned() else {
            return Ok(None);
        };
        match job.status {
            Status::Queued => {
                let mut job = job;
                job.status = Status::Cancelled;
                job.completed_at = Some(now_s());
                self.store.save_job(&job)?;
                s.waiting.retain(|w| w != id);
                s.jobs.insert(id.to_string(), job.clone());
                Ok(Some(job))
            }
            Status::InProgress => {
                s.cancel.insert(id.to_string());
                Ok(Some(job))
            }
            _ => Ok(Some(job)),
        }
    }

    fn delete(&self, id: &str) -> Result<Deleted> {
        let mut s = self.lock();
        let Some(job) = s.jobs.get(id).cloned() else {
            return Ok(Deleted::NotFound);
        };
        if job.status == Status::InProgress {
            return Ok(Deleted::Running);
        }
        self.store.remove(id)?;
        s.jobs.remove(id);
        s.waiting.retain(|w| w != id);
        Ok(Deleted::Gone(Box::new(job)))
    }

    fn depth(&self) -> Result<usize> {
        Ok(self.lock().waiting.len())
    }

    fn position(&self, id: &str) -> Result<Option<usize>> {
        let s = self.lock();
        let Some(job) = s.jobs.get(id) else {
            return Ok(None);
        };
        let key = job.request.profile.key();
        let mut n = 0;
        for w in &s.waiting {
            if w == id {
                return Ok(Some(n));
            }
            if s.jobs
                .get(w)
                .is_some_and(|j| j.request.profile.key() == key)
            {
                n += 1;
            }
        }
        Ok(None)
    }

    fn profiles(&self) -> Result<Vec<ProfileInfo>> {
        Ok(self.lock().profiles.clone())
    }

    fn register(&self, profile: &ProfileInfo, _worker: &str) -> Result<()> {
        let mut s = self.lock();
        if !s.profiles.contains(profile) {
            s.profiles.push(profile.clone());
        }
        Ok(())
    }

    fn claim(&self, profile: &ProfileInfo, worker: &str, wait: Duration) -> Result<Option<Claim>> {
        let key = profile.key();
        let deadline = std::time::Instant::now() + wait;
        let mut s = self.lock();
        loop {
            let found = s.waiting.iter().position(|id| {
                s.jobs
                    .get(id)
                    .is_some_and(|j| j.request.profile.key() == key)
            });
            if let Some(i) = found {
                let id = s.waiting.remove(i).unwrap_or_default();
                let Some(mut job) = s.jobs.get(&id).cloned() else {
                    continue;
                };
                job.status = Status::InProgress;
                job.started_at = Some(now_s());
                job.worker = Some(worker.to_string());
                job.step_s.clear();
                if let Err(e) = self.store.save_job(&job) {
                    s.waiting.insert(i, id);
                    return Err(e);
                }
                s.jobs.insert(id, job.clone());
                return Ok(Some(Claim {
                    job,
                    entry: None,
                    reclaimed: false,
                }));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn progress(&self, _claim: &Claim, job: &Job) -> Result<bool> {
        // Progress stays in memory: a restart runs the job from the start.
        let mut s = self.lock();
        s.jobs.insert(job.id.clone(), job.clone());
        Ok(s.cancel.contains(&job.id))
    }

    fn finish(&self, _claim: &Claim, job: &Job) -> Result<bool> {
        let mut s = self.lock();
        self.store.save_job(job)?;
        s.cancel.remove(&job.id);
        s.jobs.insert(job.id.clone(), job.clone());
        Ok(true)
    }

    fn release(&self, _claim: &Claim, job: &Job) -> Result<()> {
        let mut s = self.lock();
        let mut job = job.clone();
        job.status = Status::Queued;
        job.step_s.clear();
        job.worker = None;
        self.store.save_job(&job)?;
        s.jobs.insert(job.id.clone(), job.clone());
        s.waiting.push_front(job.id);
        Ok(())
    }
}
