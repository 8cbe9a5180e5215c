//! Shared helpers of the server tests: the tiny fixture engines compiled
//! with `wan-compile`, a `wan-serve` child process on a loopback port, and
//! a blocking HTTP client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A workspace binary from the same target directory (`cargo build
/// --workspace --bins` builds them; `scripts/test.sh` does).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// The tiny T2V fixture compiled once per test process (fp32, 32x32, 9
/// frames, text length 32).
pub fn engines() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    compiled(&DIR, "t2v-tiny")
}

/// The tiny FLF2V fixture, compiled as [`engines`] (with its CLIP and VAE
/// encoder).
pub fn flf2v_engines() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    compiled(&DIR, "flf2v-tiny")
}

/// The tiny VACE fixture, compiled as [`engines`] for 2 reference images
/// (`wan-compile --reference-images 2`).
pub fn vace_engines() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    compiled_with(&DIR, "vace-tiny", &["--reference-images", "2"])
}

/// A fixture file (`tests/fixtures/...`).
pub fn fixture(path: &str) -> PathBuf {
    workspace().join("tests/fixtures").join(path)
}

fn compiled(dir: &'static OnceLock<tempfile::TempDir>, case: &str) -> &'static Path {
    compiled_with(dir, case, &[])
}

fn compiled_with(
    dir: &'static OnceLock<tempfile::TempDir>,
    case: &str,
    extra: &[&str],
) -> &'static Path {
    dir.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(bin("wan-compile"))
            .arg("--model")
            .arg(workspace().join("tests/fixtures").join(case).join("model"))
            .arg("--out")
            .arg(dir.path().join("engines"))
            .args([
                "--width",
                "32",
                "--height",
                "32",
                "--frames",
                "9",
                "--text-len",
                "32",
                "--precision",
                "fp32",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "wan-compile: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
    .join("engines")
    .leak()
}

/// A running `wan-serve` and everything it printed.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `wan-serve --listen 127.0.0.1:0 --engines <tiny> ARGS` and
    /// waits for its address.
    pub fn start(data: &Path, args: &[&str]) -> Server {
        Self::start_with(&[engines()], data, args)
    }

    /// [`Server::start`] with these `--engines` directories.
    pub fn start_with(dirs: &[&Path], data: &Path, args: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wan-serve"));
        for d in dirs {
            cmd.arg("--engines").arg(d);
        }
        let mut child = cmd
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("wan-serve: listening on ") {
                    let _ = tx.send(a.to_string());
                }
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("wan-serve did not start: {}", log.lock().unwrap());
            }
        };
        Server { child, base, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `/readyz` says ready.
    pub fn wait_ready(&self) {
        let c = client();
        let t0 = Instant::now();
        loop {
            if let Ok(r) = c.get(self.url("/readyz")).send()
                && r.status() == 200
            {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits for the process to end (bounded).
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                panic!("wan-serve did not exit in {limit:?}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .unwrap()
}

/// `(status, JSON body)`.
pub fn json(r: reqwest::blocking::RequestBuilder) -> (u16, Value) {
    let r = r.send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

pub fn submit(s: &Server, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = client()
        .post(s.url("/v1/videos"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    json(r)
}

/// Polls a job until `done(job)` (bounded).
pub fn wait_for(s: &Server, key: Option<&str>, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let c = client();
    let t0 = Instant::now();
    loop {
        let mut r = c.get(s.url(&format!("/v1/videos/{id}")));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        let (code, job) = json(r);
        assert_eq!(code, 200, "{job}");
        if done(&job) {
            return job;
        }
        let finished = ["completed", "failed", "cancelled"]
            .iter()
            .any(|f| job["status"] == *f);
        assert!(!finished, "job {id} ended otherwise: {job}: {}", s.log());
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "job {id} stuck at {job}: {}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

pub fn status_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |j| j["status"] == want
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `multipart/form-data` body of text fields and file parts: `(content
/// type, body)`.
pub fn multipart(texts: &[(&str, &str)], files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "wanrt-test-boundary-7f3a";
    let mut body = Vec::new();
    for (name, value) in texts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    for (name, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Posts a multipart job: `(status, JSON body)`.
pub fn submit_multipart(
    s: &Server,
    texts: &[(&str, &str)],
    files: &[(&str, &[u8])],
) -> (u16, Value) {
    let (ct, body) = multipart(texts, files);
    json(
        client()
            .post(s.url("/v1/videos"))
            .header("content-type", ct)
            .body(body),
    )
}

/// The job folders under `data/jobs` (what was stored).
pub fn stored_jobs(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("jobs"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs `wan-run --engines DIR ARGS --output OUT`; returns the MP4 and its
/// sidecar.
pub fn wan_run<I>(dir: &Path, out: &Path, args: I) -> (Vec<u8>, Value)
where
    I: IntoIterator,
    I::Item: AsRef<std::ffi::OsStr>,
{
    let run = Command::new(bin("wan-run"))
        .arg("--engines")
        .arg(dir)
        .args(args)
        .arg("--output")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let side = std::fs::read_to_string(out.with_extension("mp4.json")).unwrap();
    (
        std::fs::read(out).unwrap(),
        serde_json::from_str(&side).unwrap(),
    )
}

/// A finished job's `variant` (`video`, `sidecar`), which must be there.
pub fn download(s: &Server, id: &str, variant: &str) -> Vec<u8> {
    let r = client()
        .get(s.url(&format!("/v1/videos/{id}/content?variant={variant}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().unwrap().to_vec()
}
