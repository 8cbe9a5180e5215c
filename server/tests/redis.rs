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
