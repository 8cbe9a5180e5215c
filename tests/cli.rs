//! End to end through the two binaries, as a user runs them: wan-compile on
//! the original layout, wan-run component on the reference inputs, wan-run
//! compare against the reference output.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Case;

/// The workspace's binaries, built by `cargo test --workspace` (or
/// `cargo build --bins`) into the same target directory as this test.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn compile_run_compare_i2v_original_layout() {
    let case = Case::new("i2v-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let engines = tmp.path().join("engines");
    let (ok, log) = run(Command::new(bin("wan-compile"))
        .arg("--model")
        .arg(case.model_dir(true))
        .arg("--out")
        .arg(&engines)
        .args([
            "--width",
            "32",
            "--height",
            "32",
            "--frames",
            "9",
            "--text-len",
            "512",
            "--precision",
            "fp32",
            // The tiny original-layout encoders and VAE are not the official
            // architectures the original layout implies (no config files).
            "--networks",
            "dit",
        ]));
    assert!(ok, "{log}");
    let output = tmp.path().join("noise_pred.safetensors");
    let golden = case.dir.join("golden/dit.safetensors");
    let (ok, log) = run(Command::new(bin("wan-run"))
        .args(["component", "dit", "--engines"])
        .arg(&engines)
        .arg("--input")
        .arg(&golden)
        .arg("--output")
        .arg(&output));
    assert!(ok, "{log}");
    let (ok, log) = run(Command::new(bin("wan-run"))
        .args(["compare", "--tensor", "noise_pred", "--input"])
        .arg(&output)
        .arg("--reference")
        .arg(&golden));
    assert!(ok && log.contains("ok"), "{log}");

    // The output exists now: no overwrite without being asked.
    let (ok, log) = run(Command::new(bin("wan-run"))
        .args(["component", "dit", "--engines"])
        .arg(&engines)
        .arg("--input")
        .arg(&golden)
        .arg("--output")
        .arg(&output));
    assert!(!ok && log.contains("--overwrite"), "{log}");
}

#[test]
fn cli_errors_name_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let model = Case::new("t2v-tiny").model_dir(false);
    for (args, needle) in [
        (vec!["--width", "30", "--height", "32"], "--width"),
        (
            vec!["--width", "32", "--height", "32", "--frames", "10"],
            "--frames",
        ),
        (vec!["--profile", "1080p"], "--profile"),
        (vec!["--profile", "480p", "--precision", "int4"], "int4"),
        (vec!["--profile", "480p", "--networks", "unet"], "unet"),
        (vec!["--profile", "480p", "--batch", "two"], "--batch"),
    ] {
        let (ok, log) = run(Command::new(bin("wan-compile"))
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(tmp.path().join("o"))
            .args(&args));
        assert!(!ok, "{args:?} succeeded");
        assert!(log.contains(needle), "{args:?}: {log}");
    }
    let (ok, log) = run(Command::new(bin("wan-run"))
        .args(["component", "dit", "--engines"])
        .arg(tmp.path().join("none"))
        .args(["--input", "x", "--output", "y"]));
    assert!(!ok && log.contains("--engines"), "{log}");
    let (ok, log) = run(Command::new(bin("wan-run")).args([
        "component",
        "dit",
        "--backend",
        "cuda9",
        "--engines",
        "e",
        "--input",
        "x",
        "--output",
        "y",
    ]));
    assert!(!ok && log.contains("cuda9"), "{log}");
}
