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
