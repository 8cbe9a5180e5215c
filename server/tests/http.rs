//! wan-serve over real HTTP on loopback, on the tiny fixture engines: the
//! job lifecycle, its bytes against wan-run's, events, cancel, limits and
//! errors, restart.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use common::{Server, bin, client, engines, json, status_is, submit, wait_for};
use serde_json::{Value, json};

const KEY: &str = "test-key";

fn job_body(steps: u64, seed: u64) -> Value {
    json!({"prompt": "A cat and a dog baking a cake in a kitchen.", "size": "32x32",
           "seconds": "0.5", "steps": steps, "seed": seed})
}

/// Reads a job's event stream to its end: (event, data) pairs. `on_event`
/// runs as each arrives.
fn read_events(
    s: &Server,
    id: &str,
    mut on_event: impl FnMut(&str, &Value),
) -> Vec<(String, Value)> {
    let r = client()
        .get(s.url(&format!("/v1/videos/{id}/events")))
        .bearer_auth(KEY)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut out = Vec::new();
    let mut name = String::new();
    for line in BufReader::new(r).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(d).unwrap();
            on_event(&name, &v);
            out.push((name.clone(), v));
        }
    }
    out
}

#[test]
fn submit_poll_download_equals_wan_run_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("data"), &["--api-key", KEY]);
    s.wait_ready();
    let (code, job) = submit(&s, Some(KEY), job_body(3, 7));
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["object"], "video");
    assert_eq!(job["status"], "queued");
    assert_eq!(
        (job["size"].as_str(), job["seed"].as_u64()),
        (Some("32x32"), Some(7))
    );
    let id = job["id"].as_str().unwrap().to_string();

    // Events: the steps with their times, then the completed job.
    let mut steps = Vec::new();
    let events = read_events(&s, &id, |name, v| {
        if name == "step" {
            steps.push(v["step"].as_u64().unwrap());
            assert!(v["seconds"].as_f64().unwrap() > 0.0, "{v}");
        }
    });
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "completed", "{events:?}");
    assert_eq!(done["progress"], 100);
    assert!(done["completed_at"].as_u64().is_some());
    // Steps seen between polls arrive all the same, in order.
    assert_eq!(steps, vec![1, 2, 3], "{events:?}");

    let video = client()
        .get(s.url(&format!("/v1/videos/{id}/content")))
        .bearer_auth(KEY)
        .send()
        .unwrap();
    assert_eq!(video.status(), 200);
    assert_eq!(video.headers()["content-type"], "video/mp4");
    let served = video.bytes().unwrap().to_vec();

    // wan-run, same engines, same seed and settings.
    let out = tmp.path().join("wan-run.mp4");
    let run = Command::new(bin("wan-run"))
        .arg("--engines")
        .arg(engines())
        .args([
            "--prompt",
            "A cat and a dog baking a cake in a kitchen.",
            "--steps",
            "3",
            "--seed",
            "7",
            "--output",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let reference = std::fs::read(&out).unwrap();
    assert!(served.len() > 100);
    assert!(
        served == reference,
        "served MP4 ({} bytes) differs from wan-run's ({} bytes)",
        served.len(),
        reference.len()
    );

    let (code, side) = json(
        client()
            .get(s.url(&format!("/v1/videos/{id}/content?variant=sidecar")))
            .bearer_auth(KEY),
    );
    assert_eq!(code, 200);
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("wan-run.mp4.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        side["settings"], want["settings"],
        "same settings as wan-run's sidecar"
    );
    assert_eq!(side["model_digest"], want["model_digest"]);

    // The same prompt again: the text encoder is skipped, the video is the same.
    let (_, again) = submit(&s, Some(KEY), job_body(3, 7));
    let again_id = again["id"].as_str().unwrap();
    wait_for(&s, Some(KEY), again_id, status_is("completed"));
    let bytes = client()
        .get(s.url(&format!("/v1/videos/{again_id}/content")))
        .bearer_auth(KEY)
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(
        bytes.to_vec() == reference,
        "a cached prompt embedding changed the video"
    );

    // The list, newest first, with a cursor.
    let (code, page) = json(client().get(s.url("/v1/videos?limit=1")).bearer_auth(KEY));
    assert_eq!(code, 200);
    assert_eq!(page["data"][0]["id"], again_id);
    assert_eq!(page["has_more"], true);
    let (_, page2) = json(
        client()
            .get(s.url(&format!("/v1/videos?limit=1&after={again_id}")))
            .bearer_auth(KEY),
    );
    assert_eq!(page2["data"][0]["id"], id.as_str());
    assert_eq!(page2["has_more"], false);

    let metrics = client()
        .get(s.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for needle in [
        "wan_jobs_total{outcome=\"completed\"} 2",
        "wan_prompt_cache_hits{profile=\"t2v-32x32x9\"} 1",
        "wan_queue_depth 0",
        "wan_step_seconds_count{profile=\"t2v-32x32x9\"} 6",
        "wan_stage_seconds_count{stage=\"vae_decode\"} 2",
        "wan_engine_load_seconds{profile=\"t2v-32x32x9\"}",
        "wan_resident_memory_bytes",
    ] {
        assert!(metrics.contains(needle), "no '{needle}' in\n{metrics}");
    }

    // Delete: gone, and its files too.
    let (code, del) = json(
        client()
            .delete(s.url(&format!("/v1/videos/{again_id}")))
            .bearer_auth(KEY),
    );
    assert_eq!((code, &del["deleted"]), (200, &json!(true)));
    let (code, _) = json(
        client()
            .get(s.url(&format!("/v1/videos/{again_id}")))
            .bearer_auth(KEY),
    );
    assert_eq!(code, 404);
    assert!(!tmp.path().join("data/jobs").join(again_id).exists());
}

#[test]
fn cancel_stops_a_running_job_between_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("data"), &["--api-key", KEY]);
    s.wait_ready();
    let (_, job) = submit(&s, Some(KEY), job_body(1000, 1));
    let id = job["id"].as_str().unwrap().to_string();
    let mut cancelled = false;
    let events = read_events(&s, &id, |name, v| {
        if name == "step" && v["step"].as_u64() >= Some(2) && !cancelled {
            cancelled = true;
            let (code, j) = json(
                client()
                    .post(s.url(&format!("/v1/videos/{id}/cancel")))
                    .bearer_auth(KEY),
            );
            assert_eq!(code, 200, "{j}");
        }
    });
    let (last, job) = events.last().unwrap();
    assert_eq!(
        last,
        "cancelled",
        "{} events, the last {last}: {job}",
        events.len()
    );
    let steps = events.iter().filter(|(n, _)| n == "step").count();
    assert!(steps < 1000, "ran to the end");
    assert_eq!(job["status"], "cancelled");
    assert!(
        !tmp.path()
            .join("data/jobs")
            .join(&id)
            .join("video.mp4")
            .exists()
    );
    let (code, e) = json(
        client()
            .get(s.url(&format!("/v1/videos/{id}/content")))
            .bearer_auth(KEY),
    );
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (409, Some("not_completed"))
    );
    assert!(
        client()
            .get(s.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap()
            .contains("wan_jobs_total{outcome=\"cancelled\"} 1")
    );
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("data"), &["--max-queue", "1"]);
    s.wait_ready();
    let (_, running) = submit(&s, None, job_body(1000, 1));
    let running = running["id"].as_str().unwrap().to_string();
    wait_for(&s, None, &running, status_is("in_progress"));
    let (code, waiting) = submit(&s, None, job_body(3, 2));
    assert_eq!(code, 200, "{waiting}");
    let r = client()
        .post(s.url("/v1/videos"))
        .header("content-type", "application/json")
        .body(job_body(3, 3).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let e: Value = serde_json::from_str(&r.text().unwrap()).unwrap();
    assert_eq!(e["error"]["code"], "queue_full");
    assert_eq!(e["error"]["type"], "rate_limit_error");
    // Cancelling frees the queue; the waiting job then runs.
    let waiting = waiting["id"].as_str().unwrap();
    json(client().post(s.url(&format!("/v1/videos/{running}/cancel"))));
    wait_for(&s, None, &running, status_is("cancelled"));
    wait_for(&s, None, waiting, status_is("completed"));
    let (code, _) = submit(&s, None, job_body(3, 3));
    assert_eq!(code, 200);
}

#[test]
fn bad_requests_get_the_right_status_and_a_json_error() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(
        &tmp.path().join("data"),
        &["--api-key", KEY, "--max-request-bytes", "4096"],
    );
    let c = client();
    // Health answers at once, unauthenticated; the document describes the routes.
    let (code, h) = json(c.get(s.url("/healthz")));
    assert_eq!((code, h["status"].as_str()), (200, Some("ok")));
    let (code, doc) = json(c.get(s.url("/openapi.json")));
    assert_eq!(code, 200);
    assert!(doc["paths"]["/v1/videos/{id}/events"].is_object(), "{doc}");
    s.wait_ready();

    let post = |body: &str, ct: &str, key: Option<&str>| {
        let mut r = c
            .post(s.url("/v1/videos"))
            .header("content-type", ct)
            .body(body.to_string());
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        json(r)
    };
    // (wanted status, error code, param, what came back)
    type Case<'a> = (u16, &'a str, Option<&'a str>, (u16, Value));
    let cases: Vec<Case> = vec![
        (
            401,
            "invalid_api_key",
            None,
            post(&job_body(3, 1).to_string(), "application/json", None),
        ),
        (
            401,
            "invalid_api_key",
            None,
            post(
                &job_body(3, 1).to_string(),
                "application/json",
                Some("wrong"),
            ),
        ),
        (
            400,
            "invalid_json",
            None,
            post("{\"prompt\": ", "application/json", Some(KEY)),
        ),
        (
            400,
            "invalid_json",
            None,
            post("[1, 2]", "application/json", Some(KEY)),
        ),
        (
            422,
            "unknown_size",
            Some("size"),
            post(
                &json!({"prompt": "x", "size": "832x480"}).to_string(),
                "application/json",
                Some(KEY),
            ),
        ),
        (
            422,
            "unknown_length",
            Some("seconds"),
            post(
                &json!({"prompt": "x", "seconds": 5}).to_string(),
                "application/json",
                Some(KEY),
            ),
        ),
        (
            422,
            "invalid_value",
            Some("steps"),
            post(
                &json!({"prompt": "x", "steps": 0}).to_string(),
                "application/json",
                Some(KEY),
            ),
        ),
        (
            422,
            "missing",
            Some("prompt"),
            post("{}", "application/json", Some(KEY)),
        ),
        (
            422,
            "unknown_parameter",
            Some("num_frames"),
            post(
                &json!({"prompt": "x", "num_frames": 9}).to_string(),
                "application/json",
                Some(KEY),
            ),
        ),
        (
            413,
            "request_too_large",
            None,
            post(
                &json!({"prompt": "x".repeat(5000)}).to_string(),
                "application/json",
                Some(KEY),
            ),
        ),
        (
            415,
            "unsupported_media_type",
            None,
            post("prompt=x", "text/plain", Some(KEY)),
        ),
    ];
    for (want, code, param, (got, body)) in cases {
        assert_eq!(got, want, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["param"].as_str(), param, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }

    // Multipart: an input_reference that is not an image.
    let boundary = "XyZ";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na cat\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"x.png\"\r\n\
         Content-Type: image/png\r\n\r\nthis is not an image\r\n--{boundary}--\r\n"
    );
    let (code, body) = post(
        &form,
        &format!("multipart/form-data; boundary={boundary}"),
        Some(KEY),
    );
    assert_eq!(
        (code, body["error"]["param"].as_str()),
        (422, Some("input_reference")),
        "{body}"
    );
    assert_eq!(body["error"]["code"], "invalid_image");

    // Unknown ids and routes.
    let (code, body) = json(c.get(s.url("/v1/videos/video_0123")).bearer_auth(KEY));
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (code, _) = json(c.get(s.url("/v1/videos/..%2Fetc")).bearer_auth(KEY));
    assert_eq!(code, 404);
    let (code, _) = json(c.get(s.url("/nope")));
    assert_eq!(code, 404);
    let (code, body) = json(c.put(s.url("/v1/videos")).bearer_auth(KEY));
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (code, body) = json(c.get(s.url("/v1/videos?limit=0")).bearer_auth(KEY));
    assert_eq!(
        (code, body["error"]["param"].as_str()),
        (422, Some("limit"))
    );
    // Refusals are counted; nothing was queued.
    let m = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
    assert!(
        m.contains("wan_jobs_rejected_total{status=\"422\"} 6"),
        "{m}"
    );
    assert!(m.contains("wan_jobs_accepted_total 0"), "{m}");
}

#[test]
fn restart_serves_finished_jobs_and_runs_queued_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data, &["--drain-timeout", "0.3"]);
    s.wait_ready();
    let (_, done) = submit(&s, None, job_body(3, 5));
    let done = done["id"].as_str().unwrap().to_string();
    wait_for(&s, None, &done, status_is("completed"));
    let first = client()
        .get(s.url(&format!("/v1/videos/{done}/content")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();

    // A long job running and a short one waiting when SIGTERM comes: the
    // server stops accepting, stops the long one at the deadline, keeps both.
    let (_, long) = submit(&s, None, job_body(1000, 6));
    let long = long["id"].as_str().unwrap().to_string();
    let (_, short) = submit(&s, None, job_body(3, 7));
    let short = short["id"].as_str().unwrap().to_string();
    wait_for(&s, None, &long, |j| j["progress"].as_u64() > Some(0));
    s.signal("-TERM");
    let status = s.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{}", s.log());
    assert!(s.log().contains("drained"), "{}", s.log());
    assert!(
        s.log()
            .contains(&format!("job {long} interrupted by shutdown; queued again")),
        "{}",
        s.log()
    );

    let s2 = Server::start(&data, &[]);
    let (code, j) = json(client().get(s2.url(&format!("/v1/videos/{done}"))));
    assert_eq!((code, j["status"].as_str()), (200, Some("completed")));
    let again = client()
        .get(s2.url(&format!("/v1/videos/{done}/content")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(first, again);
    s2.wait_ready();
    wait_for(&s2, None, &long, status_is("completed"));
    wait_for(&s2, None, &short, status_is("completed"));

    // A crash (SIGKILL) mid-job: the job runs again after the restart.
    let (_, crash) = submit(&s2, None, job_body(1000, 8));
    let crash = crash["id"].as_str().unwrap().to_string();
    wait_for(&s2, None, &crash, |j| j["progress"].as_u64() > Some(0));
    s2.signal("-KILL");
    drop(s2);
    let s3 = Server::start(&data, &[]);
    let (_, j) = json(client().get(s3.url(&format!("/v1/videos/{crash}"))));
    assert_eq!(
        j["status"], "queued",
        "in progress at the crash: queued again"
    );
    s3.wait_ready();
    wait_for(&s3, None, &crash, status_is("completed"));
    let (_, list) = json(client().get(s3.url("/v1/videos")));
    let statuses: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["completed"; 4], "{list}");
}
