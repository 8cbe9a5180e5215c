//! Mutation fuzzing of every parser of untrusted bytes, on stable Rust (no
//! nightly, no cargo-fuzz): a small deterministic mutator (bit flips, byte
//! sets, inserts, deletes, duplicated ranges, splices between seeds,
//! interesting integers, number rewrites for JSON) drives each parser from a
//! corpus seeded with the fixtures. Every input must give a typed error or a
//! valid result: a panic fails the test and the input is saved under
//! `$CARGO_TARGET_TMPDIR/fuzz-failures/` to replay. Peak memory (VmHWM) is
//! checked after each parser.
//!
//! `WANRT_FUZZ_ITERS` sets the inputs per parser (default 10,000, what CI
//! runs); `scripts/fuzz.sh --long` runs 1,000,000 each (docs/FUZZING.md has
//! the recorded result). `WANRT_FUZZ_SEED` changes the random stream.
//!
//! Parsers: the runtime's and the compiler's safetensors readers (one shared
//! strict reader, two entry points), the restricted unpickler, the `.pth` zip
//! reader (zip directory, CRC-32, unpickler, records), `manifest.json`, the
//! image loader, the shard index, `model_index.json` and the DiT's
//! `config.json`, the LoRA reader (`LoraFile::open`: the strict
//! safetensors reader, then key layouts and pairing), the MP4 reader (box
//! tree, sample tables, OpenH264) and the step-cache table reader.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{Case, fixtures};

/// Peak resident memory a fuzz run may reach (the whole test process).
const PEAK_RSS_LIMIT_MIB: f64 = 1536.0;
/// Largest input the mutator produces.
const MAX_INPUT: usize = 1 << 20;

fn iterations() -> usize {
    std::env::var("WANRT_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// xorshift64*: deterministic, fast, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(name: &str) -> Self {
        let base: u64 = std::env::var("WANRT_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x5eed);
        // A different stream per parser, stable across runs.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Rng((base ^ h) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    /// A position, half the time among the first 4 KiB and a quarter among
    /// the last 4 KiB (where headers and zip directories live).
    fn pos(&mut self, len: usize) -> usize {
        match self.below(4) {
            0 | 1 => self.below(len.min(4096)),
            2 => len - 1 - self.below(len.min(4096)),
            _ => self.below(len),
        }
    }
}

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 7,
];

const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "4611686018427387904",
    "1e309",
    "-0",
    "0.5",
    "NaN",
    "null",
    "[]",
    "{}",
    "\"x\"",
];

/// Replaces a decimal number (JSON sizes, offsets, dims) by an
/// interesting one.
fn rewrite_number(rng: &mut Rng, v: &mut Vec<u8>) {
    let len = v.len();
    if len == 0 {
        return;
    }
    let p = rng.below(len);
    if let Some(s) = (p..len).chain(0..p).find(|&i| v[i].is_ascii_digit()) {
        let e = (s..len).find(|&i| !v[i].is_ascii_digit()).unwrap_or(len);
        let n = NUMBERS[rng.below(NUMBERS.len())].as_bytes().to_vec();
        v.splice(s..e, n);
    }
}

/// One to four mutations of `input` (`seeds` feed splices).
fn mutate(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        if v.is_empty() {
            v.push(rng.next() as u8);
            continue;
        }
        let len = v.len();
        match rng.below(9) {
            0 => {
                let p = rng.pos(len);
                v[p] ^= 1 << rng.below(8);
            }
            1 => {
                let p = rng.pos(len);
                v[p] = rng.next() as u8;
            }
            2 => {
                let p = rng.pos(len);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(p..p, bytes);
            }
            3 => {
                let p = rng.pos(len);
                let n = (1 + rng.below(16)).min(len - p);
                v.drain(p..p + n);
            }
            4 => {
                // Duplicate a range (repeated structures, runaway lengths).
                let p = rng.pos(len);
                let n = (1 + rng.below(64)).min(len - p);
                let chunk = v[p..p + n].to_vec();
                let at = rng.pos(len);
                v.splice(at..at, chunk);
            }
            5 => {
                // Splice: our head, another seed's tail.
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let p = rng.pos(len);
                    let q = rng.below(other.len());
                    v.truncate(p);
                    v.extend_from_slice(&other[q..]);
                }
            }
            6 => {
                // An interesting integer, little-endian, 1/2/4/8 bytes.
                let x = INTERESTING[rng.below(INTERESTING.len())];
                let w = [1, 2, 4, 8][rng.below(4)];
                let p = rng.pos(len);
                let bytes = &x.to_le_bytes()[..w];
                let end = (p + w).min(len);
                v[p..end].copy_from_slice(&bytes[..end - p]);
            }
            7 => rewrite_number(rng, &mut v),
            _ => {
                // Truncate.
                v.truncate(rng.pos(len));
            }
        }
    }
    v.truncate(MAX_INPUT);
    v
}

/// What one parser run saw.
struct Report {
    ok: usize,
    refused: usize,
    slowest_ms: f64,
}

/// Feeds `iterations()` mutated inputs to `parse` (`Ok(())` valid, `Err`
/// a typed refusal with a non-empty message); fails on a panic, an empty
/// error message or a peak RSS over the limit.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, parse: impl Fn(&[u8]) -> Result<(), String>) {
    fuzz_with(name, seeds, mutate, parse)
}

/// [`fuzz`] with a parser-specific mutator.
fn fuzz_with(
    name: &str,
    seeds: Vec<Vec<u8>>,
    mutator: impl Fn(&mut Rng, &[u8], &[Vec<u8>]) -> Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<(), String>,
) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let n = iterations();
    let mut rng = Rng::new(name);
    let mut report = Report {
        ok: 0,
        refused: 0,
        slowest_ms: 0.0,
    };
    let start = Instant::now();
    // The seeds themselves first: they must parse (a sanity check that the
    // harness reaches the parser at all).
    for (i, s) in seeds.iter().enumerate() {
        if let Err(e) = parse(s) {
            panic!("{name}: seed {i} does not parse: {e}");
        }
    }
    let mut pool = seeds.clone();
    for i in 0..n {
        let base = &pool[rng.below(pool.len())];
        let input = mutator(&mut rng, base, &seeds);
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| parse(&input)));
        report.slowest_ms = report.slowest_ms.max(t.elapsed().as_secs_f64() * 1e3);
        match result {
            Ok(Ok(())) => {
                report.ok += 1;
                // Valid mutants become bases too (deeper paths), bounded.
                if pool.len() < 256 {
                    pool.push(input);
                }
            }
            Ok(Err(e)) => {
                assert!(!e.trim().is_empty(), "{name}: empty error message");
                report.refused += 1;
            }
            Err(_) => {
                let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
                std::fs::create_dir_all(&dir).unwrap();
                let f = dir.join(format!("{name}-{i}.bin"));
                std::fs::write(&f, &input).unwrap();
                panic!(
                    "{name}: input {i} panicked the parser; saved as {}",
                    f.display()
                );
            }
        }
    }
    let peak = wanrt::runtime::peak_rss_mib().unwrap_or(0.0);
    println!(
        "fuzz {name}: {n} inputs, 0 panics, {} valid, {} refused, slowest {:.2} ms, peak RSS {peak:.0} MiB, {:.1} s",
        report.ok,
        report.refused,
        report.slowest_ms,
        start.elapsed().as_secs_f64()
    );
    assert!(
        peak < PEAK_RSS_LIMIT_MIB,
        "{name}: peak RSS {peak:.0} MiB over {PEAK_RSS_LIMIT_MIB} MiB"
    );
}

fn read(p: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    use std::collections::BTreeMap;
    use wanrt::runtime::{HostTensor, tensorfile};
    let small = BTreeMap::from([
        (
            "a".to_string(),
            HostTensor::from_f32(vec![2, 3], &[1., 2., 3., 4., 5., 6.]),
        ),
        (
            "ids".to_string(),
            HostTensor::from_i64(vec![3], &[7, -1, 0]),
        ),
    ]);
    vec![
        read(fixtures().join("t2v-tiny/golden/dit.safetensors")),
        tensorfile::serialize(&small),
        tensorfile::serialize(&BTreeMap::new()),
    ]
}

/// Half the time a generic mutation of the whole file; half the time a
/// mutation of the JSON header alone with the length prefix fixed up, so
/// that mutated sizes, shapes and offsets reach the checks behind the JSON
/// parser instead of breaking the framing.
fn mutate_safetensors(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let n = input
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
        .filter(|&n| 8 + n <= input.len());
    match n {
        Some(n) if rng.below(2) == 0 => {
            let mut header = input[8..8 + n].to_vec();
            if rng.below(2) == 0 {
                rewrite_number(rng, &mut header);
            } else {
                header = mutate(rng, &header, seeds);
            }
            let mut out = (header.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&header);
            out.extend_from_slice(&input[8 + n..]);
            out
        }
        _ => mutate(rng, input, seeds),
    }
}

#[test]
fn fuzz_runtime_safetensors() {
    fuzz_with(
        "runtime-safetensors",
        safetensors_seeds(),
        mutate_safetensors,
        |b| wanrt::runtime::tensorfile::parse(b).map(|_| ()),
    );
}

#[test]
fn fuzz_compiler_safetensors() {
    fuzz_with(
        "compiler-safetensors",
        safetensors_seeds(),
        mutate_safetensors,
        |b| {
            wanrt::compiler::checkpoint::safetensors::validate_bytes(b).map(|h| {
                // A valid header's ranges lie inside the input.
                let end = h.file_len() as usize;
                assert_eq!(end, b.len());
            })
        },
    );
}

fn pth_seeds() -> Vec<Vec<u8>> {
    vec![
        read(fixtures().join("t2v-tiny/extra/models_t5_umt5-xxl-enc-bf16.as-released-dtype.pth")),
        read(fixtures().join(
            "i2v-tiny/model/original/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
        )),
    ]
}

/// The `data.pkl` entries of the `.pth` seeds (stored, so their bytes are
/// in the file: found through the central directory).
fn pickle_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for d in pth_seeds() {
        let mut i = 0;
        while i + 46 <= d.len() {
            if d[i..i + 4] == [0x50, 0x4b, 0x01, 0x02] {
                let n = u16::from_le_bytes([d[i + 28], d[i + 29]]) as usize;
                let name = &d[i + 46..i + 46 + n];
                if name.ends_with(b"/data.pkl") {
                    let size = u32::from_le_bytes(d[i + 20..i + 24].try_into().unwrap()) as usize;
                    let lho = u32::from_le_bytes(d[i + 42..i + 46].try_into().unwrap()) as usize;
                    let ln = u16::from_le_bytes([d[lho + 26], d[lho + 27]]) as usize;
                    let le = u16::from_le_bytes([d[lho + 28], d[lho + 29]]) as usize;
                    let start = lho + 30 + ln + le;
                    out.push(d[start..start + size].to_vec());
                }
            }
            i += 1;
        }
    }
    out
}

#[test]
fn fuzz_pickle() {
    fuzz("pickle", pickle_seeds(), |b| {
        wanrt::compiler::checkpoint::pickle::load_state_dict(b)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

#[test]
fn fuzz_pth_zip() {
    fuzz("pth-zip", pth_seeds(), |b| {
        wanrt::compiler::checkpoint::pth::PthCheckpoint::index_bytes(b)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

#[test]
fn fuzz_manifest() {
    // A real manifest: the tiny T2V model compiled (every network, the VAE
    // as chunk graphs).
    let case = Case::new("t2v-tiny");
    let out = tempfile::tempdir().unwrap();
    let opts = wanrt::compiler::CompileOptions::new(
        wanrt::compiler::ModelSource::Dir(case.model_dir(false)),
        out.path(),
        case.profile(wanrt::core::BatchMode::Fixed(1)),
    )
    .with_precision(wanrt::core::Precision::Fp32)
    .with_negative_cache(false);
    wanrt::compiler::compile(&opts).unwrap();
    let seed = read(out.path().join("manifest.json"));
    let file = Path::new("manifest.json");
    fuzz("manifest", vec![seed], |b| {
        let text = String::from_utf8_lossy(b);
        wanrt::core::Manifest::from_json(&text, file)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

#[test]
fn fuzz_image() {
    let file = Path::new("image.png");
    fuzz(
        "image",
        vec![read(fixtures().join("i2v-tiny/golden/image.png"))],
        |b| {
            wanrt::media::image::decode_image(b, file)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
}

#[test]
fn fuzz_shard_index() {
    let seed = br#"{"metadata": {"total_size": 123456}, "weight_map": {"blocks.0.attn1.to_q.weight": "diffusion_pytorch_model-00001-of-00002.safetensors", "blocks.0.attn1.to_k.weight": "diffusion_pytorch_model-00002-of-00002.safetensors", "proj_out.weight": "diffusion_pytorch_model-00001-of-00002.safetensors"}}"#;
    fuzz("shard-index", vec![seed.to_vec()], |b| {
        wanrt::compiler::checkpoint::safetensors::shard_names(&String::from_utf8_lossy(b))
            .map(|_| ())
    });
}

#[test]
fn fuzz_model_index_and_dit_config() {
    let root = Case::new("i2v-tiny").model_dir(false);
    let index = read(root.join("model_index.json"));
    fuzz("model-index", vec![index], |b| {
        wanrt::compiler::checkpoint::check_model_index_text(&String::from_utf8_lossy(b))
    });
    let cfg = read(root.join("transformer/config.json"));
    let file = Path::new("config.json");
    fuzz("dit-config", vec![cfg], |b| {
        let c: wanrt::core::config::WanTransformer3DModelConfig =
            serde_json::from_slice(b).map_err(|e| e.to_string())?;
        wanrt::core::DitConfig::from_diffusers(&c, file)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

#[test]
fn fuzz_lora() {
    use std::collections::BTreeMap;
    use wanrt::runtime::{HostTensor, tensorfile};
    // A PEFT LoRA of rank 2 on two projections of block 0 (24-wide, as the
    // tiny DiT).
    let mut t = BTreeMap::new();
    for m in ["attn1.to_q", "attn2.to_k"] {
        t.insert(
            format!("transformer.blocks.0.{m}.lora_A.weight"),
            HostTensor::from_f32(vec![2, 24], &[0.01; 48]),
        );
        t.insert(
            format!("transformer.blocks.0.{m}.lora_B.weight"),
            HostTensor::from_f32(vec![24, 2], &[0.02; 48]),
        );
    }
    let seed = tensorfile::serialize(&t);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lora.safetensors");
    let spec = wanrt::compiler::lora::LoraSpec::new(&file, 1.0);
    fuzz_with("lora", vec![seed], mutate_safetensors, |b| {
        std::fs::write(&file, b).map_err(|e| e.to_string())?;
        wanrt::compiler::lora::LoraFile::open(&spec)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

#[test]
fn fuzz_mp4() {
    use wanrt::media::video::{Mp4Options, RgbFrames, write_mp4};
    // Two small H.264 files of the project's writer: a moving gradient, 3
    // and 5 frames.
    let dir = tempfile::tempdir().unwrap();
    let seeds: Vec<Vec<u8>> = [(32usize, 32usize, 3usize), (48, 32, 5)]
        .iter()
        .map(|&(w, h, n)| {
            let rgb: Vec<u8> = (0..n * h * w * 3)
                .map(|i| ((i / 3 % w + i / (3 * w) % h + 7 * (i / (3 * w * h))) * 5) as u8)
                .collect();
            let frames = RgbFrames::new(w, h, n, rgb).unwrap();
            let path = dir.path().join(format!("seed-{w}x{h}x{n}.mp4"));
            write_mp4(&path, &frames, &Mp4Options::default(), false, None).unwrap();
            read(&path)
        })
        .collect();
    let file = Path::new("control.mp4");
    fuzz("mp4", seeds, |b| {
        wanrt::media::video::mp4::read::decode_mp4(b, file, "--control-video", 1025)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

#[test]
fn fuzz_cache_table() {
    use wanrt::runtime::cache::{CachePolicy, parse_table};
    let dir = fixtures().join("t2v-tiny/golden/cache");
    for (file, policies) in [
        ("magcache_table.json", &[CachePolicy::MagCache][..]),
        (
            "teacache_table.json",
            &[CachePolicy::TeaCache, CachePolicy::TeaCacheRet][..],
        ),
    ] {
        for &policy in policies {
            fuzz(
                &format!("cache-table-{policy}"),
                vec![read(dir.join(file))],
                |b| {
                    let text = std::str::from_utf8(b).map_err(|e| e.to_string())?;
                    parse_table(text, policy).map(|_| ())
                },
            );
        }
    }
}
