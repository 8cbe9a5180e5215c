//! wan-serve's step cache and first-last-frame-to-video jobs over real
//! HTTP on the tiny fixture engines: a cached job runs the schedule
//! `wan-run --cache fbcache` runs (same sidecar, same MP4 bytes), every bad
//! `cache*` field is a 422 naming it (a policy needing a built-in table the
//! tiny model has not, too); an FLF2V job (`input_reference` +
//! `last_image`) equals `wan-run --image --last-image` byte for byte, and
//! its refusals name the image part and store nothing.

mod common;

use common::{
    Server, client, download, engines, fixture, flf2v_engines, json, status_is, stored_jobs,
    submit, submit_multipart, wait_for, wan_run,
};
use serde_json::{Value, json};

const PROMPT: &str = "A cat and a dog baking a cake in a kitchen.";

fn with(extra: Value) -> Value {
    let mut v = json!({"prompt": PROMPT, "size": "32x32", "seconds": "0.5", "steps": 6, "seed": 7});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

/// The refusal is a 422 naming `param` with `code`, in the API's words.
fn refused(got: (u16, Value), param: &str, code: &str) {
    let (status, body) = got;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["param"], param, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(!msg.is_empty() && !msg.contains("--cache"), "{body}");
}

#[test]
fn a_cached_job_runs_the_schedule_wan_run_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data, &[]);
    s.wait_ready();

    // The first-block cache needs no table. At 0.1 it skips some of the
    // tiny model's 6 steps and computes others (indicators 0.077–0.16).
    let cache = json!({"cache": "fbcache", "cache_threshold": 0.1});
    let (code, job) = submit(&s, None, with(cache.clone()));
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["cache"]["policy"], "fbcache", "{job}");
    assert_eq!(job["cache"]["threshold"], 0.1, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let done = wait_for(&s, None, &id, status_is("completed"));

    let (reference, want) = wan_run(
        engines(),
        &tmp.path().join("wan-run.mp4"),
        &[
            "--prompt",
            PROMPT,
            "--steps",
            "6",
            "--seed",
            "7",
            "--cache",
            "fbcache",
            "--cache-threshold",
            "0.1",
        ],
    );
    let want_cache = &want["settings"]["cache"];
    let schedule: Vec<&Value> = want_cache["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["computed"])
        .collect();
    assert_eq!(schedule.len(), 2, "cond and uncond: {want_cache}");
    for c in &schedule {
        let c = c.as_array().unwrap();
        assert!(
            c.contains(&json!(true)) && c.contains(&json!(false)),
            "the reference run should both skip and compute: {want_cache}"
        );
    }
    // The job reports the schedule per branch ...
    let got = &done["cache"];
    assert!(
        got["branches"].is_array(),
        "the completed job reports no cache record: {done}"
    );
    for (i, b) in got["branches"].as_array().unwrap().iter().enumerate() {
        assert_eq!(&b["computed"], schedule[i], "{got}");
        assert_eq!(b["branch"], want_cache["branches"][i]["branch"], "{got}");
        let n = schedule[i]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| **c == json!(true))
            .count();
        assert_eq!(b["computed_steps"], n, "{got}");
    }
    assert_eq!(got["branches"].as_array().unwrap().len(), 2, "{got}");
    assert_eq!(got["block_forwards"], want_cache["block_forwards"], "{got}");
    assert_eq!(got["block_forwards_uncached"], 12, "{got}");
    // ... its sidecar is wan-run's (every setting, the cache record
    // included), and so are its bytes.
    let side: Value = serde_json::from_slice(&download(&s, &id, "sidecar")).unwrap();
    assert_eq!(side["settings"], want["settings"]);
    assert!(
        download(&s, &id, "video") == reference,
        "the cached job's MP4 differs from wan-run --cache fbcache's"
    );

    // Every bad cache field is a 422 naming it; those needing the model
    // (built-in tables, presets) are checked against this server's engines.
    for (extra, param, code) in [
        (json!({"cache": "magcache"}), "cache", "no_cache_table"),
        (json!({"cache": "teacache"}), "cache", "no_cache_table"),
        (json!({"cache": "teacache-ret"}), "cache", "no_cache_table"),
        (
            json!({"cache": "fbcache", "cache_threshold": "slow"}),
            "cache_threshold",
            "invalid_value",
        ),
        (
            json!({"cache": "fbcache", "zero_init_steps": 1}),
            "cache",
            "invalid_value",
        ),
        (json!({"cache": "bogus"}), "cache", "invalid_value"),
        (
            json!({"cache": "fbcache", "cache_threshold": -0.1}),
            "cache_threshold",
            "invalid_value",
        ),
        (
            json!({"cache": "fbcache", "cache_threshold": "0.1.2"}),
            "cache_threshold",
            "invalid_value",
        ),
        (
            json!({"cache": "fbcache", "cache_max_skip": 2}),
            "cache_max_skip",
            "invalid_value",
        ),
        (
            json!({"cache": "magcache", "cache_max_skip": 0}),
            "cache_max_skip",
            "invalid_value",
        ),
        (
            json!({"cache": "magcache", "cache_retention": 1.5}),
            "cache_retention",
            "invalid_value",
        ),
        (
            json!({"cache_threshold": 0.1}),
            "cache_threshold",
            "invalid_value",
        ),
        (
            json!({"cache": "magcache", "cache_table": "/etc/passwd"}),
            "cache_table",
            "unsupported_parameter",
        ),
    ] {
        refused(submit(&s, None, with(extra)), param, code);
    }
    // A multipart form's text fields are parsed the same way.
    refused(
        submit_multipart(&s, &[("prompt", PROMPT), ("cache", "magcache")], &[]),
        "cache",
        "no_cache_table",
    );
    // Two frames where no FLF2V engines are loaded.
    let first = std::fs::read(fixture("flf2v-tiny/golden/first_frame.png")).unwrap();
    let last = std::fs::read(fixture("flf2v-tiny/golden/last_frame.png")).unwrap();
    refused(
        submit_multipart(
            &s,
            &[("prompt", PROMPT)],
            &[("input_reference", &first), ("last_image", &last)],
        ),
        "last_image",
        "unsupported_task",
    );
    // The OpenAPI document describes the fields and the part.
    let (_, doc) = json(client().get(s.url("/openapi.json")));
    let schemas = &doc["components"]["schemas"];
    for f in [
        "cache",
        "cache_threshold",
        "cache_max_skip",
        "cache_retention",
    ] {
        assert!(schemas["CreateVideo"]["properties"][f].is_object(), "{f}");
    }
    assert!(schemas["CreateVideoMultipart"]["properties"]["last_image"].is_object());
    assert!(schemas["Video"]["properties"]["cache"].is_object());
    // Only the cached job was accepted and stored.
    assert_eq!(stored_jobs(&data), vec![id]);
    let m = client()
        .get(s.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(m.contains("wan_jobs_accepted_total 1"), "{m}");
}

#[test]
fn an_flf2v_job_equals_wan_run_and_its_refusals_name_the_part() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start_with(
        &[engines(), flf2v_engines()],
        &data,
        &["--max-image-bytes", "4096"],
    );
    s.wait_ready();
    let first_path = fixture("flf2v-tiny/golden/first_frame.png");
    let last_path = fixture("flf2v-tiny/golden/last_frame.png");
    let first = std::fs::read(&first_path).unwrap();
    let last = std::fs::read(&last_path).unwrap();
    let texts = [
        ("prompt", PROMPT),
        ("size", "32x32"),
        ("seconds", "0.5"),
        ("steps", "3"),
        ("seed", "11"),
    ];

    // Both frames: the FLF2V engines, not the T2V ones of the same size.
    let (code, job) = submit_multipart(
        &s,
        &texts,
        &[("input_reference", &first), ("last_image", &last)],
    );
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["model"], "flf2v-32x32x9", "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    // Both frames are stored beside the job, as sent.
    let dir = data.join("jobs").join(&id);
    assert!(std::fs::read(dir.join("input_reference")).unwrap() == first);
    assert!(std::fs::read(dir.join("last_image")).unwrap() == last);
    wait_for(&s, None, &id, status_is("completed"));

    let (reference, want) = wan_run(
        flf2v_engines(),
        &tmp.path().join("wan-run.mp4"),
        &[
            "--prompt",
            PROMPT,
            "--steps",
            "3",
            "--seed",
            "11",
            "--image",
            first_path.to_str().unwrap(),
            "--last-image",
            last_path.to_str().unwrap(),
        ],
    );
    let side: Value = serde_json::from_slice(&download(&s, &id, "sidecar")).unwrap();
    let (mut got, mut wanted) = (side["settings"].clone(), want["settings"].clone());
    assert_eq!(got["task"], "flf2v");
    assert_eq!(
        (got["image"].as_str(), got["last_image"].as_str()),
        (Some("input_reference"), Some("last_image"))
    );
    // The frames' labels differ (parts, files); every other setting agrees.
    for s in [&mut got, &mut wanted] {
        let o = s.as_object_mut().unwrap();
        o.remove("image");
        o.remove("last_image");
    }
    assert_eq!(got, wanted);
    assert!(
        download(&s, &id, "video") == reference,
        "the FLF2V job's MP4 differs from wan-run --image --last-image's"
    );

    // A text job on the same server still goes to the T2V engines.
    let (code, t2v) = submit(&s, None, with(json!({"steps": 1})));
    assert_eq!((code, t2v["model"].as_str()), (200, Some("t2v-32x32x9")));
    let t2v_id = t2v["id"].as_str().unwrap().to_string();

    // Refusals name the part, and nothing of them is stored.
    let small = std::fs::read(fixture("vace-tiny/golden/ref_image_0.png")).unwrap();
    let big = vec![0x89u8; 5000];
    // (the image parts, wanted status, param, code)
    type Parts<'a> = &'a [(&'a str, &'a [u8])];
    let cases: [(Parts, u16, &str, &str); 7] = [
        // One frame: I2V, and no I2V engines are loaded.
        (
            &[("input_reference", &first)],
            422,
            "input_reference",
            "unsupported_task",
        ),
        (
            &[("last_image", &last)],
            422,
            "last_image",
            "missing_first_frame",
        ),
        (
            &[("input_reference", &first), ("last_image", b"not an image")],
            422,
            "last_image",
            "invalid_image",
        ),
        // 24x16 against a 32x32 first frame.
        (
            &[("input_reference", &first), ("last_image", &small)],
            422,
            "last_image",
            "invalid_value",
        ),
        (
            &[
                ("input_reference", &first),
                ("last_image", &last),
                ("last_image", &last),
            ],
            422,
            "last_image",
            "duplicate_field",
        ),
        (
            &[("input_reference", &first), ("last_image", &big)],
            413,
            "last_image",
            "request_too_large",
        ),
        (
            &[("input_reference", b"not an image"), ("last_image", &last)],
            422,
            "input_reference",
            "invalid_image",
        ),
    ];
    for (files, status, param, code) in cases {
        let (got, body) = submit_multipart(&s, &texts, files);
        assert_eq!(
            (
                got,
                body["error"]["param"].as_str(),
                body["error"]["code"].as_str()
            ),
            (status, Some(param), Some(code)),
            "{body}"
        );
    }
    // An image part is never a JSON field.
    refused(
        submit(&s, None, with(json!({"last_image": "/etc/hostname"}))),
        "last_image",
        "invalid_type",
    );
    let mut want_stored = vec![id, t2v_id.clone()];
    want_stored.sort();
    assert_eq!(stored_jobs(&data), want_stored);
    wait_for(&s, None, &t2v_id, status_is("completed"));
}
