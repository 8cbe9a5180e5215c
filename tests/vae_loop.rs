//! The VAE chunk loop's persistent state: its buffers are allocated and
//! bound once per loaded network and never zero-filled, so a second decode
//! on the same network must equal the first and a fresh network's (a cache
//! set read before it is written, or a zero buffer overwritten, shows up
//! here); and the CUDA-graph path is refused on the CPU and checked against
//! plain calls where a CUDA device is at hand.

mod common;

use common::Case;
use wanrt::core::{BatchMode, NetworkKind, Precision};
use wanrt::runtime::pipeline::gaussian_noise;
use wanrt::runtime::{Artifacts, Backend, ErrorKind, ExecutionSettings, HostTensor};

fn compile(dir: &std::path::Path) {
    let case = Case::new("t2v-tiny");
    let opts = case
        .options(false, Precision::Fp32, BatchMode::Fixed(1), dir)
        .with_networks([NetworkKind::VaeDecoder]);
    wanrt::compiler::compile(&opts).unwrap();
}

fn latents(a: &Artifacts, seed: u64) -> HostTensor {
    let shape = a.entry(NetworkKind::VaeDecoder).unwrap().inputs[0].concrete_shape(1);
    let n = shape.iter().product::<u64>() as usize;
    HostTensor::from_f32(shape, &gaussian_noise(seed, n))
}

fn decode(net: &mut wanrt::runtime::Network, z: &HostTensor) -> Vec<f32> {
    let inputs = [("latents".to_string(), z.clone())].into_iter().collect();
    net.run(&inputs).unwrap()["video"].to_f32().unwrap()
}

/// Bit-equality, reported as a count and the largest difference.
fn same(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let diff = got.iter().zip(want).filter(|(a, b)| a != b).count();
    let max = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert_eq!(diff, 0, "{what}: {diff} values differ (max {max:.3e})");
}

#[test]
fn repeated_decodes_reuse_the_loop_without_zero_filling() {
    let dir = tempfile::tempdir().unwrap();
    compile(dir.path());
    let a = Artifacts::open(dir.path()).unwrap();
    let (z1, z2) = (latents(&a, 1), latents(&a, 2));
    let mut net = a.load(NetworkKind::VaeDecoder, Backend::OrtCpu).unwrap();
    let bytes = net.chunked().unwrap().bound_bytes();
    assert!(!net.chunked().unwrap().uses_cuda_graphs());
    let first = decode(&mut net, &z1);
    let other = decode(&mut net, &z2);
    let again = decode(&mut net, &z1);
    assert_eq!(net.chunked().unwrap().bound_bytes(), bytes);
    same("a second decode on the same network", &again, &first);
    let mut fresh = a.load(NetworkKind::VaeDecoder, Backend::OrtCpu).unwrap();
    same("a fresh network's decode", &other, &decode(&mut fresh, &z2));
    eprintln!(
        "vae_decoder loop: {:.1} KiB bound once per loaded network",
        bytes as f64 / 1024.0
    );
}

#[test]
fn cuda_graphs_are_refused_on_the_cpu_and_replay_fresh_inputs_on_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    compile(dir.path());
    let a = Artifacts::open(dir.path()).unwrap();
    let graphs = ExecutionSettings::default().with_cuda_graph(true);
    let e = a
        .load_with(NetworkKind::VaeDecoder, Backend::OrtCpu, &graphs)
        .err()
        .expect("ort-cpu has no CUDA graphs");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().starts_with("--cuda-graph"), "{e}");

    // On a GPU: two different inputs through the captured graphs must
    // equal plain calls (a replay that read a stale address would repeat
    // the first input's frames).
    let gpu = ExecutionSettings::default();
    let mut plain = match a.load_with(NetworkKind::VaeDecoder, Backend::OrtCuda, &gpu) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("skipped the CUDA-graph replay check: no CUDA device here ({e})");
            return;
        }
    };
    let mut captured = a
        .load_with(NetworkKind::VaeDecoder, Backend::OrtCuda, &graphs)
        .unwrap();
    assert!(captured.chunked().unwrap().uses_cuda_graphs());
    for seed in [1, 2, 1] {
        let z = latents(&a, seed);
        let want = decode(&mut plain, &z);
        let got = decode(&mut captured, &z);
        common::assert_close(
            &format!("cuda graph, input {seed}"),
            &got,
            &want,
            1e-5,
            1e-5,
        );
    }
}
