//! `wan-run`: runs compiled Wan2.1 artifacts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use wanrt_core::NetworkKind;
use wanrt_runtime::{Artifacts, Backend, tensorfile};

#[derive(Parser, Debug)]
#[command(
    name = "wan-run",
    version,
    about = "Run Wan2.1 engines compiled by wan-compile"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one network on the tensors of a safetensors file (by input name)
    /// and write its outputs by output name.
    Component {
        /// dit, text-encoder, image-encoder, vae-encoder or vae-decoder.
        network: NetworkKind,
        /// Artifact directory written by wan-compile.
        #[arg(long)]
        engines: PathBuf,
        /// Input tensors (safetensors).
        #[arg(long)]
        input: PathBuf,
        /// Output tensors (safetensors), written atomically.
        #[arg(long)]
        output: PathBuf,
        /// ort-cpu, ort-cuda, ort-tensorrt or tensorrt.
        #[arg(long, default_value = "ort-cpu")]
        backend: Backend,
        /// Replace --output if it exists.
        #[arg(long)]
        overwrite: bool,
    },
    /// Describe an artifact directory (networks, profile, precision, I/O) and,
    /// with --load, create every network's session on --backend.
    Inspect {
        #[arg(long)]
        engines: PathBuf,
        #[arg(long)]
        load: bool,
        #[arg(long, default_value = "ort-cpu")]
        backend: Backend,
    },
    /// Compare tensors of two safetensors files (numeric debugging): prints
    /// the max error per tensor and fails if |a−b| > atol + rtol·|b|.
    Compare {
        /// Tensors to check.
        #[arg(long)]
        input: PathBuf,
        /// Reference tensors.
        #[arg(long)]
        reference: PathBuf,
        /// Tensor names (default: every name both files hold).
        #[arg(long = "tensor")]
        tensors: Vec<String>,
        #[arg(long, default_value_t = 1e-4)]
        atol: f32,
        #[arg(long, default_value_t = 1e-3)]
        rtol: f32,
    },
}

fn compare(
    input: &PathBuf,
    reference: &PathBuf,
    names: &[String],
    atol: f32,
    rtol: f32,
) -> Result<()> {
    let a = tensorfile::read(input)?;
    let b = tensorfile::read(reference)?;
    let names: Vec<String> = if names.is_empty() {
        a.keys().filter(|k| b.contains_key(*k)).cloned().collect()
    } else {
        names.to_vec()
    };
    anyhow::ensure!(!names.is_empty(), "no tensor name is in both files");
    let mut failed = Vec::new();
    for name in &names {
        let (x, y) = match (a.get(name), b.get(name)) {
            (Some(x), Some(y)) => (x, y),
            _ => anyhow::bail!("--tensor {name}: not in both files"),
        };
        anyhow::ensure!(
            x.shape == y.shape,
            "{name}: shape {:?} vs reference {:?}",
            x.shape,
            y.shape
        );
        let (xv, yv) = match (x.to_f32(), y.to_f32()) {
            (Some(xv), Some(yv)) => (xv, yv),
            _ => anyhow::bail!("{name}: not a float tensor"),
        };
        let mut max_abs = 0f32;
        let mut worst = 0f32;
        for (p, q) in xv.iter().zip(&yv) {
            let d = (p - q).abs();
            max_abs = max_abs.max(d);
            worst = worst.max(if d.is_nan() {
                f32::INFINITY
            } else {
                d / (atol + rtol * q.abs())
            });
        }
        let verdict = if worst <= 1.0 { "ok" } else { "MISMATCH" };
        println!(
            "{name:<40} {:?} max|a-b| {max_abs:.3e}  worst/tol {worst:.3}  {verdict}",
            x.shape
        );
        if worst > 1.0 {
            failed.push(name.clone());
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} tensor(s) outside |a-b| <= {atol} + {rtol}*|b|: {}",
        failed.len(),
        failed.join(", ")
    );
    Ok(())
}

fn run() -> Result<()> {
    match Args::parse().command {
        Command::Component {
            network,
            engines,
            input,
            output,
            backend,
            overwrite,
        } => {
            if output.exists() && !overwrite {
                anyhow::bail!(
                    "{} exists; pass --overwrite to replace it",
                    output.display()
                );
            }
            let artifacts = Artifacts::open(&engines)?;
            let inputs = tensorfile::read(&input)?;
            let start = std::time::Instant::now();
            let mut net = artifacts.load(network, backend)?;
            let loaded = start.elapsed();
            let outputs = net
                .run(&inputs)
                .with_context(|| format!("running {network} on {}", input.display()))?;
            let ran = start.elapsed() - loaded;
            tensorfile::write(&output, &outputs, overwrite)?;
            let names: Vec<String> = outputs
                .iter()
                .map(|(n, t)| format!("{n} {:?}", t.shape))
                .collect();
            eprintln!(
                "{network} on {backend}: load {:.2} s, run {:.3} s; wrote {} ({})",
                loaded.as_secs_f64(),
                ran.as_secs_f64(),
                output.display(),
                names.join(", ")
            );
            Ok(())
        }
        Command::Inspect {
            engines,
            load,
            backend,
        } => {
            let artifacts = Artifacts::open(&engines)?;
            let m = &artifacts.manifest;
            println!(
                "{} (format {} v{}), {} model, layout {}",
                engines.display(),
                m.format,
                m.version,
                m.model.task.name(),
                m.model.layout
            );
            for (kind, e) in &m.networks {
                let p = &e.profile;
                println!(
                    "  {kind}: {} ({:.1} MiB weights), {}, profile {} {}x{}x{} text {} batch {:?}, wanrt {}",
                    e.file,
                    e.external_data_bytes as f64 / (1 << 20) as f64,
                    e.precision,
                    p.name,
                    p.width,
                    p.height,
                    p.frames,
                    p.text_len,
                    p.batch,
                    e.tools.wanrt
                );
                for t in e.inputs.iter() {
                    println!("    in  {} {} {}", t.name, t.dtype, t.shape_string());
                }
                for t in e.outputs.iter() {
                    println!("    out {} {} {}", t.name, t.dtype, t.shape_string());
                }
                if load {
                    let start = std::time::Instant::now();
                    artifacts.load(*kind, backend)?;
                    println!(
                        "    loaded on {backend} in {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                }
            }
            Ok(())
        }
        Command::Compare {
            input,
            reference,
            tensors,
            atol,
            rtol,
        } => compare(&input, &reference, &tensors, atol, rtol),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wan-run: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
