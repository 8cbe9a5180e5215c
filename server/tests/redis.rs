//! Scale-out on a real `redis-server` (Debian's package; `scripts/test.sh`
//! installs it) on a loopback port: two workers share one consumer group
//! and one `--data`; one is killed mid-job and the other finishes its job.
//! Nothing is lost and nothing completes twice.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, client, free_port, json, status_is, submit, wait_for};
use serde_json::json;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> std::path::PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "redis-server not found on PATH: the Redis tests need it \
             (apt-get install -y redis-server; scripts/test.sh installs it)"
        )
    })
}

fn start_redis(dir: &std::path::Path) -> (Redis, String) {
    let port = free_port();
    let child = Command::new(redis_server())
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let redis = Redis(child);
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "redis-server did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (redis, format!("redis://127.0.0.1:{port}/"))
}

#[test]
fn a_killed_workers_job_is_finished_by_the_other_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, url) = start_redis(tmp.path());
    let data = tmp.path().join("shared-data");
    let worker = |name: &str| {
        Server::start(
            &data,
            &[
                "--queue",
                &url,
                "--worker-name",
                name,
                "--claim-timeout",
                "2",
            ],
        )
    };
    let a = worker("w-a");
    let b = worker("w-b");
    a.wait_ready();
    b.wait_ready();

    // A long job and a few short ones, submitted to either server.
    let (code, long) = submit(
        &a,
        None,
        json!({"prompt": "a long run", "steps": 150, "seed": 1}),
    );
    assert_eq!(code, 200, "{long}");
    let long = long["id"].as_str().unwrap().to_string();
    wait_for(&b, None, &long, |j| j["progress"].as_u64() > Some(0));
    let runner = job_worker(&b, &long);
    let mut ids = vec![long.clone()];
    for seed in 2..5 {
        let via = if seed % 2 == 0 { &a } else { &b };
        let (code, j) = submit(
            via,
            None,
            json!({"prompt": "short", "steps": 3, "seed": seed}),
        );
        assert_eq!(code, 200, "{j}");
        ids.push(j["id"].as_str().unwrap().to_string());
    }

    // SIGKILL the worker running the long job, mid-job.
    let (victim, survivor) = if runner == "w-a" { (a, b) } else { (b, a) };
    victim.signal("-KILL");
    let killed_log = victim.log();
    drop(victim);

    for id in &ids {
        wait_for(&survivor, None, id, status_is("completed"));
    }
    let survivor_name = if runner == "w-a" { "w-b" } else { "w-a" };
    assert_eq!(job_worker(&survivor, &long), survivor_name);
    assert!(
        survivor.log().contains(&format!("reclaimed job {long}")),
        "{}",
        survivor.log()
    );
    // Each job completed once, across both logs.
    let logs = format!("{killed_log}{}", survivor.log());
    for id in &ids {
        let n = logs.matches(&format!("job {id} completed")).count();
        assert_eq!(n, 1, "job {id} completed {n} times:\n{logs}");
        assert!(data.join("jobs").join(id).join("video.mp4").is_file());
    }
    assert!(
        !logs.contains("already completed by another worker"),
        "{logs}"
    );
    // Status lives in Redis: the list is the same from any server.
    let (_, list) = json(client().get(survivor.url("/v1/videos?limit=100")));
    assert_eq!(list["data"].as_array().unwrap().len(), ids.len(), "{list}");
    let m = client()
        .get(survivor.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(m.contains("wan_queue_depth 0"), "{m}");
}

fn job_worker(s: &Server, id: &str) -> String {
    let (_, j) = json(client().get(s.url(&format!("/v1/videos/{id}"))));
    j["worker"].as_str().unwrap_or_default().to_string()
}

/// Two servers with different engines on one queue: each accepts jobs
/// for the other's engines. A step cache only the other server can check
/// against its model (a policy needing a built-in table the tiny model
/// lacks) fails the job with the field's code; an FLF2V job submitted
/// where no FLF2V engines are loaded runs on the server that has them,
/// from the frames stored in the shared `--data`.
#[test]
fn jobs_for_the_other_servers_engines_are_checked_where_they_run() {
    use common::{engines, fixture, flf2v_engines, submit_multipart};
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, url) = start_redis(tmp.path());
    let data = tmp.path().join("shared-data");
    let args = |name: &'static str| ["--queue", &url, "--worker-name", name].map(String::from);
    let t2v_args = args("t2v-box");
    let flf_args = args("flf2v-box");
    let t2v = Server::start_with(
        &[engines()],
        &data,
        &t2v_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let flf = Server::start_with(
        &[flf2v_engines()],
        &data,
        &flf_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    t2v.wait_ready();
    flf.wait_ready();

    // The FLF2V box has no T2V model to check the cache against: it
    // accepts the job, and the T2V box refuses the cache when it runs it.
    let (code, job) = submit(
        &flf,
        None,
        json!({"prompt": "x", "steps": 3, "seed": 1, "cache": "magcache"}),
    );
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["model"], "t2v-32x32x9");
    let id = job["id"].as_str().unwrap().to_string();
    let failed = wait_for(&flf, None, &id, status_is("failed"));
    assert_eq!(failed["error"]["code"], "no_cache_table", "{failed}");
    assert_eq!(failed["worker"], "t2v-box", "{failed}");
    // The T2V box itself refuses it at submission.
    let (code, e) = submit(
        &t2v,
        None,
        json!({"prompt": "x", "steps": 3, "cache": "magcache"}),
    );
    assert_eq!(
        (code, e["error"]["param"].as_str()),
        (422, Some("cache")),
        "{e}"
    );

    // Both frames, to the box without FLF2V engines.
    let first = std::fs::read(fixture("flf2v-tiny/golden/first_frame.png")).unwrap();
    let last = std::fs::read(fixture("flf2v-tiny/golden/last_frame.png")).unwrap();
    let (code, job) = submit_multipart(
        &t2v,
        &[("prompt", "a bird"), ("steps", "2"), ("seed", "3")],
        &[("input_reference", &first), ("last_image", &last)],
    );
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["model"], "flf2v-32x32x9");
    let id = job["id"].as_str().unwrap().to_string();
    let done = wait_for(&t2v, None, &id, status_is("completed"));
    assert_eq!(done["worker"], "flf2v-box", "{done}");
    assert!(data.join("jobs").join(&id).join("video.mp4").is_file());
}
