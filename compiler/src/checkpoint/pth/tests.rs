//! Tests of `pth`.

use std::collections::BTreeMap;

use half::bf16;
use safetensors::SafeTensors;
use wanrt_graphs::names::{self, Derivation};

use super::super::pickle::build::P;
use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn original(case: &str, file: &str) -> PathBuf {
    fixtures().join(case).join("model/original").join(file)
}

const T5: &str = "models_t5_umt5-xxl-enc-bf16.pth";
const VAE: &str = "Wan2.1_VAE.pth";
const CLIP: &str = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth";

/// A zip of stored entries, optionally with zip64 records throughout
/// (sizes and offsets in the zip64 extra field, zip64 end records).
fn zip_stored(entries: &[(String, Vec<u8>)], zip64: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let off = out.len() as u64;
        let crc = crc32(data);
        let n = name.len() as u16;
        // local header
        out.extend(SIG_LOCAL.to_le_bytes());
        out.extend([45u8, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(crc.to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend(n.to_le_bytes());
        // an alignment pad in the extra field, as torch writes
        let pad = (64 - (out.len() + 2 + name.len() + 4) % 64) % 64;
        out.extend(((4 + pad) as u16).to_le_bytes());
        out.extend(name.as_bytes());
        out.extend([b'F', b'B']);
        out.extend((pad as u16).to_le_bytes());
        out.extend(std::iter::repeat_n(b'Z', pad));
        out.extend(data);
        // central header
        let (sz32, off32, extra) = if zip64 {
            let mut e = vec![1u8, 0, 24, 0];
            e.extend((data.len() as u64).to_le_bytes());
            e.extend((data.len() as u64).to_le_bytes());
            e.extend(off.to_le_bytes());
            (0xffff_ffffu32, 0xffff_ffffu32, e)
        } else {
            (data.len() as u32, off as u32, vec![])
        };
        central.extend(SIG_CENTRAL.to_le_bytes());
        central.extend([45u8, 3, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend(crc.to_le_bytes());
        central.extend(sz32.to_le_bytes());
        central.extend(sz32.to_le_bytes());
        central.extend(n.to_le_bytes());
        central.extend((extra.len() as u16).to_le_bytes());
        central.extend([0u8; 10]);
        central.extend(off32.to_le_bytes());
        central.extend(name.as_bytes());
        central.extend(extra);
    }
    let cd_off = out.len() as u64;
    let cd_size = central.len() as u64;
    out.extend(central);
    let count = entries.len() as u64;
    if zip64 {
        let z = out.len() as u64;
        out.extend(SIG_EOCD64.to_le_bytes());
        out.extend(44u64.to_le_bytes());
        out.extend([45u8, 3, 45, 0]);
        out.extend([0u8; 8]);
        out.extend(count.to_le_bytes());
        out.extend(count.to_le_bytes());
        out.extend(cd_size.to_le_bytes());
        out.extend(cd_off.to_le_bytes());
        out.extend(SIG_EOCD64_LOCATOR.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(z.to_le_bytes());
        out.extend(1u32.to_le_bytes());
    }
    out.extend(SIG_EOCD.to_le_bytes());
    out.extend([0u8; 4]);
    let (c16, s32, o32) = if zip64 {
        (0xffffu16, 0xffff_ffffu32, 0xffff_ffffu32)
    } else {
        (count as u16, cd_size as u32, cd_off as u32)
    };
    out.extend(c16.to_le_bytes());
    out.extend(c16.to_le_bytes());
    out.extend(s32.to_le_bytes());
    out.extend(o32.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn entries_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let d = std::fs::read(path).unwrap();
    parse_zip(&d)
        .unwrap()
        .into_iter()
        .map(|e| (e.name, d[e.start..e.start + e.size].to_vec()))
        .collect()
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A one-storage checkpoint: `pkl` over `archive/data/0` = `storage`.
fn archive(pkl: Vec<u8>, storage: &[u8]) -> Vec<u8> {
    zip_stored(
        &[
            ("archive/data.pkl".into(), pkl),
            ("archive/byteorder".into(), b"little".to_vec()),
            ("archive/data/0".into(), storage.to_vec()),
        ],
        false,
    )
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Opens `path`, expecting an error of `kind` whose message names the
/// file and contains every `needle`.
fn expect_err(path: &Path, kind: PthErrorKind, needles: &[&str]) -> PthError {
    let e = PthCheckpoint::open(path).expect_err("opening must fail");
    assert_eq!(e.kind(), kind, "{e}");
    assert_eq!(e.file(), path);
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "'{n}' not in: {msg}");
    }
    e
}

// -- fixtures against the diffusers-layout safetensors ------------------

struct Diffusers {
    bytes: Vec<u8>,
}

impl Diffusers {
    fn load(case: &str, rel: &str) -> Self {
        Diffusers {
            bytes: std::fs::read(fixtures().join(case).join("model").join(rel)).unwrap(),
        }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
}

fn f32s(d: &[u8]) -> Vec<f32> {
    d.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `t` transformed as `how` says, as (shape, f32 values).
fn derive(shape: &[usize], v: &[f32], how: Derivation) -> (Vec<usize>, Vec<f32>) {
    match how {
        Derivation::Same => (shape.to_vec(), v.to_vec()),
        Derivation::Reshape => {
            let first = shape.iter().position(|&n| n != 1).unwrap_or(shape.len());
            (shape[first..].to_vec(), v.to_vec())
        }
        Derivation::Transpose => {
            let (r, c) = (shape[0], shape[1]);
            let mut o = vec![0.0; v.len()];
            for i in 0..r {
                for j in 0..c {
                    o[j * r + i] = v[i * c + j];
                }
            }
            (vec![c, r], o)
        }
        Derivation::Rows { index, parts } => {
            let rows = shape[0] / parts;
            let row: usize = shape[1..].iter().product();
            let mut s = shape.to_vec();
            s[0] = rows;
            (s, v[index * rows * row..(index + 1) * rows * row].to_vec())
        }
    }
}

/// Every pth tensor equals its diffusers counterpart(s) bit for bit, and
/// the mapping covers every diffusers tensor exactly once. Returns the
/// pth names with no counterpart.
fn compare(
    pth: &Path,
    diffusers: &Diffusers,
    map: impl Fn(&str) -> Option<Vec<(String, Derivation)>>,
    dtype: DType,
) -> Vec<String> {
    let ck = PthCheckpoint::open(pth).unwrap();
    let st = diffusers.st();
    let mut covered: BTreeMap<String, String> = BTreeMap::new();
    let mut unmapped = Vec::new();
    assert!(!ck.is_empty());
    for name in ck.names() {
        let t = ck.get(name).unwrap();
        assert_eq!(t.dtype, dtype, "{name}");
        assert_eq!(t.data.len(), t.numel() * dtype.size(), "{name}");
        // Contiguous tensors are borrowed from the map, not copied.
        assert!(matches!(t.data, Cow::Borrowed(_)), "{name} was copied");
        let Some(targets) = map(name) else {
            unmapped.push(name.to_string());
            continue;
        };
        let values = t.to_f32(name, "").unwrap();
        for (dname, how) in targets {
            let d = st
                .tensor(&dname)
                .unwrap_or_else(|e| panic!("{name} → {dname}: {e}"));
            assert_eq!(d.dtype(), safetensors::Dtype::F32, "{dname}");
            let (shape, v) = derive(&t.shape, &values, how);
            assert_eq!(shape, d.shape(), "{name} → {dname}");
            let dv = f32s(d.data());
            match dtype {
                DType::Float32 => {
                    let a: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
                    let b: Vec<u32> = dv.iter().map(|x| x.to_bits()).collect();
                    assert!(a == b, "{name} → {dname}: values differ");
                }
                DType::Bfloat16 => {
                    let a: Vec<u16> = v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
                    let b: Vec<u16> = dv.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
                    assert!(
                        a == b,
                        "{name} → {dname}: values differ after bf16 rounding"
                    );
                }
                other => panic!("{other}"),
            }
            if let Some(prev) = covered.insert(dname.clone(), name.to_string()) {
                panic!("{dname} is the image of both {prev} and {name}");
            }
        }
    }
    let all: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    let missing: Vec<&String> = all.iter().filter(|n| !covered.contains_key(*n)).collect();
    assert!(
        missing.is_empty(),
        "diffusers tensors not covered: {missing:?}"
    );
    assert_eq!(covered.len(), all.len());
    unmapped
}

fn renamed(f: fn(&str) -> Option<String>) -> impl Fn(&str) -> Option<Vec<(String, Derivation)>> {
    move |n| f(n).map(|d| vec![(d, Derivation::Same)])
}

#[test]
fn t5_fixtures_equal_the_diffusers_text_encoder() {
    for case in ["t2v-tiny", "i2v-tiny"] {
        let d = Diffusers::load(case, "text_encoder/model.safetensors");
        let path = original(case, T5);
        let unmapped = compare(&path, &d, renamed(names::t5_to_diffusers), DType::Float32);
        assert!(unmapped.is_empty(), "{unmapped:?}");
        let ck = PthCheckpoint::open(&path).unwrap();
        assert_eq!(ck.len(), 22);
        for n in ck.names() {
            assert_eq!(
                names::t5_from_diffusers(&names::t5_to_diffusers(n).unwrap()).as_deref(),
                Some(n)
            );
        }
        ck.verify_crc32().unwrap();
    }
}

#[test]
fn t5_bf16_fixture_equals_the_diffusers_text_encoder_rounded() {
    let path = fixtures().join("t2v-tiny/extra/models_t5_umt5-xxl-enc-bf16.as-released-dtype.pth");
    let d = Diffusers::load("t2v-tiny", "text_encoder/model.safetensors");
    let unmapped = compare(&path, &d, renamed(names::t5_to_diffusers), DType::Bfloat16);
    assert!(unmapped.is_empty(), "{unmapped:?}");
    let ck = PthCheckpoint::open(&path).unwrap();
    let info = ck.info("blocks.0.ffn.fc2.weight").unwrap();
    assert_eq!(
        (info.dtype, info.shape.as_slice()),
        (DType::Bfloat16, &[32usize, 64][..])
    );
    assert_eq!(
        ck.total_bytes(),
        ck.infos().iter().map(|t| t.numel() as u64 * 2).sum::<u64>()
    );
    ck.verify_crc32().unwrap();
}

#[test]
fn vae_fixtures_equal_the_diffusers_vae() {
    for case in ["t2v-tiny", "i2v-tiny"] {
        let d = Diffusers::load(case, "vae/diffusion_pytorch_model.safetensors");
        let path = original(case, VAE);
        let unmapped = compare(&path, &d, renamed(names::vae_to_diffusers), DType::Float32);
        assert!(unmapped.is_empty(), "{unmapped:?}");
        let ck = PthCheckpoint::open(&path).unwrap();
        assert_eq!(ck.len(), 194);
        for n in ck.names() {
            assert_eq!(
                names::vae_from_diffusers(&names::vae_to_diffusers(n).unwrap()).as_deref(),
                Some(n)
            );
        }
        // RMS-norm gammas are [C,1,1,1] with torch's strides (1,1,1,1):
        // contiguous despite the odd strides of the size-1 axes.
        let g = ck.info("decoder.head.0.gamma").unwrap();
        assert_eq!(g.shape, [8, 1, 1, 1]);
        assert_eq!(g.strides, [1, 1, 1, 1]);
        assert!(g.is_contiguous());
    }
}

#[test]
fn clip_fixture_equals_the_diffusers_image_encoder() {
    let d = Diffusers::load("i2v-tiny", "image_encoder/model.safetensors");
    let path = original("i2v-tiny", CLIP);
    let unmapped = compare(&path, &d, names::clip_to_diffusers, DType::Float32);
    assert_eq!(unmapped, ["log_scale"]);
    let ck = PthCheckpoint::open(&path).unwrap();
    assert_eq!(ck.get("log_scale").unwrap().shape, Vec::<usize>::new());
    assert_eq!(
        ck.info("visual.transformer.2.attn.to_qkv.weight")
            .unwrap()
            .shape,
        [96, 32]
    );
}

#[test]
fn weight_source_serves_original_names() {
    let path = original("t2v-tiny", T5);
    let ck = PthCheckpoint::open(&path).unwrap();
    let src: &dyn WeightSource = &ck;
    let w = wanrt_graphs::Weights::new(src);
    let (name, t) = w
        .pp("blocks")
        .pp(1)
        .get("attn.q.weight", &[32, 32])
        .unwrap();
    assert_eq!(name, "blocks.1.attn.q.weight");
    assert_eq!(t.data.len(), 32 * 32 * 4);
    assert!(src.tensor("no.such.tensor").unwrap().is_none());
    assert_eq!(src.location("x"), path.display().to_string());
    let Err(e) = w.get("token_embedding.weight", &[1, 32]) else {
        panic!("a wrong shape must fail");
    };
    assert_eq!(e.kind(), wanrt_graphs::ErrorKind::ShapeMismatch);
}

// -- a zip64 archive, strided views, shared storages ---------------------

#[test]
fn zip64_archives_read_like_plain_ones() {
    let dir = tempfile::tempdir().unwrap();
    let src = original("t2v-tiny", T5);
    let entries = entries_of(&src);
    let p64 = write(&dir, "z64.pth", &zip_stored(&entries, true));
    let p32 = write(&dir, "z32.pth", &zip_stored(&entries, false));
    let (a, b, c) = (
        PthCheckpoint::open(&src).unwrap(),
        PthCheckpoint::open(&p64).unwrap(),
        PthCheckpoint::open(&p32).unwrap(),
    );
    b.verify_crc32().unwrap();
    for n in a.names() {
        let x = a.get(n).unwrap();
        for other in [&b, &c] {
            let y = other.get(n).unwrap();
            assert_eq!(
                (x.shape.clone(), &*x.data),
                (y.shape.clone(), &*y.data),
                "{n}"
            );
        }
    }
}

#[test]
fn strided_views_are_copied_into_row_major_order() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Vec<f32> = (0..12).map(|i| i as f32).collect();
    // t = storage[1:7].view(2,3).t()  → shape (3,2), strides (1,3), offset 1
    // u = storage[0:12].view(3,4)     → contiguous
    // s = storage[5]                  → a 0-d tensor at offset 5
    // e = empty (0,4)
    let pkl = P::start()
        .op(b'}')
        .op(b'(')
        .s("t")
        .view("FloatStorage", "0", 12, 1, &[3, 2], &[1, 3])
        .s("u")
        .view("FloatStorage", "0", 12, 0, &[3, 4], &[4, 1])
        .s("s")
        .view("FloatStorage", "0", 12, 5, &[], &[])
        .s("e")
        .view("FloatStorage", "0", 12, 12, &[0, 4], &[4, 1])
        .op(b'u')
        .op(b'.');
    let p = write(&dir, "v.pth", &archive(pkl.0, &f32_bytes(&storage)));
    let ck = PthCheckpoint::open(&p).unwrap();
    let t = ck.get("t").unwrap();
    assert!(matches!(t.data, Cow::Owned(_)));
    assert_eq!(t.shape, [3, 2]);
    assert_eq!(f32s(&t.data), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    let u = ck.get("u").unwrap();
    assert!(matches!(u.data, Cow::Borrowed(_)));
    assert_eq!(f32s(&u.data), storage);
    let s = ck.get("s").unwrap();
    assert_eq!((s.shape.len(), f32s(&s.data)), (0, vec![5.0]));
    let e = ck.get("e").unwrap();
    assert_eq!((e.shape.as_slice(), e.data.len()), (&[0usize, 4][..], 0));
    assert_eq!(ck.names().collect::<Vec<_>>(), ["t", "u", "s", "e"]);
}

// -- bad input -----------------------------------------------------------

#[test]
fn forbidden_globals_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Hand-built: os.system('echo pwned').
    let pkl = P::start()
        .global("os", "system")
        .s("echo pwned")
        .op(0x85)
        .op(b'R')
        .op(b'.');
    let p = write(&dir, "os.pth", &archive(pkl.0, &[]));
    let e = expect_err(
        &p,
        PthErrorKind::ForbiddenGlobal,
        &["os.system", "archive/data.pkl", "byte 2"],
    );
    assert!(matches!(e, PthError::ForbiddenGlobal { .. }));

    // A real fixture whose OrderedDict global was swapped for
    // builtins.eval (same length keeps nothing aligned on purpose: the
    // pickle has no offsets) and re-zipped.
    let mut entries = entries_of(&original("t2v-tiny", VAE));
    let pkl = &mut entries[0].1;
    let needle = b"collections\nOrderedDict\n";
    let at = pkl.windows(needle.len()).position(|w| w == needle).unwrap();
    pkl.splice(at..at + needle.len(), b"builtins\neval\n".iter().copied());
    let p = write(&dir, "eval.pth", &zip_stored(&entries, false));
    expect_err(&p, PthErrorKind::ForbiddenGlobal, &["builtins.eval"]);

    // The legacy v1 rebuild function is not on the list either.
    let mut entries = entries_of(&original("t2v-tiny", T5));
    let pkl = &mut entries[0].1;
    let needle = b"_rebuild_tensor_v2\n";
    let at = pkl.windows(needle.len()).position(|w| w == needle).unwrap();
    pkl.splice(at..at + needle.len(), b"_rebuild_tensor\n".iter().copied());
    let p = write(&dir, "v1.pth", &zip_stored(&entries, false));
    expect_err(
        &p,
        PthErrorKind::ForbiddenGlobal,
        &["torch._utils._rebuild_tensor`"],
    );
}

#[test]
fn unknown_opcodes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = entries_of(&original("t2v-tiny", T5));
    // Byte 2 is EMPTY_DICT; make it INST, then an undefined byte.
    assert_eq!(entries[0].1[2], b'}');
    entries[0].1[2] = b'i';
    let p = write(&dir, "inst.pth", &zip_stored(&entries, false));
    expect_err(
        &p,
        PthErrorKind::UnsupportedOpcode,
        &["INST", "0x69", "byte 2", "data.pkl"],
    );
    entries[0].1[2] = 0xf0;
    let p = write(&dir, "f0.pth", &zip_stored(&entries, false));
    expect_err(
        &p,
        PthErrorKind::UnsupportedOpcode,
        &["0xf0", "not a pickle opcode"],
    );
    let pkl = P::start().op(b'}').op(0x95);
    let p = write(&dir, "frame.pth", &archive(pkl.0, &[]));
    expect_err(&p, PthErrorKind::UnsupportedOpcode, &["FRAME"]);
}

#[test]
fn truncated_archives_are_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    for file in [T5, VAE] {
        let full = std::fs::read(original("t2v-tiny", file)).unwrap();
        let entries = parse_zip(&full).unwrap();
        let pkl_end = entries[0].start + entries[0].size;
        let last_data = entries.last().unwrap();
        let cuts = [
            4,
            30,
            entries[0].start + 10,
            pkl_end,
            entries[5].start + 3,
            last_data.start + last_data.size,
            full.len() - 100,
            full.len() - 23,
            full.len() - 1,
        ];
        for cut in cuts {
            let p = write(&dir, &format!("cut{cut}.pth"), &full[..cut]);
            expect_err(&p, PthErrorKind::Truncated, &["truncated"]);
        }
    }
    // A directory that is intact but points past the end of the file.
    let mut entries = entries_of(&original("t2v-tiny", T5));
    let last = entries.len() - 1;
    entries[last].1 = vec![0u8; 4096];
    let mut bytes = zip_stored(&entries, false);
    // Rewrite the last entry's size in its central header to 1 GB.
    let cd = parse_zip(&bytes).unwrap();
    let start = cd[last].start;
    let name = entries[last].0.clone();
    let pos = bytes
        .windows(4)
        .rposition(|w| w == SIG_CENTRAL.to_le_bytes())
        .unwrap();
    assert_eq!(&bytes[pos + 46..pos + 46 + name.len()], name.as_bytes());
    for off in [20, 24] {
        bytes[pos + off..pos + off + 4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    }
    let p = write(&dir, "big.pth", &bytes);
    expect_err(&p, PthErrorKind::Truncated, &[&name, &format!("{start}..")]);
}

#[test]
fn missing_storage_entries_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let src = original("t2v-tiny", T5);
    let mut entries = entries_of(&src);
    let gone = "models_t5_umt5-xxl-enc-bf16/data/3";
    entries.retain(|(n, _)| n != gone);
    let p = write(&dir, "missing.pth", &zip_stored(&entries, false));
    let e = expect_err(
        &p,
        PthErrorKind::MissingStorage,
        &[gone, "'blocks.0.pos_embedding.embedding.weight'"],
    );
    let PthError::MissingStorage { tensor, key, .. } = e else {
        unreachable!()
    };
    assert_eq!(
        (tensor.as_str(), key.as_str()),
        ("blocks.0.pos_embedding.embedding.weight", "3")
    );
}

#[test]
fn files_that_are_not_torch_zips() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.pth", vec![], "empty"),
        (
            "text.pth",
            b"hello, this is not a checkpoint\n".to_vec(),
            "no zip signature",
        ),
        (
            "st.pth",
            std::fs::read(fixtures().join("t2v-tiny/model/text_encoder/model.safetensors"))
                .unwrap(),
            "no zip signature",
        ),
        (
            "legacy.pth",
            vec![0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc],
            "legacy",
        ),
        (
            "plainzip.pth",
            zip_stored(&[("readme.txt".into(), b"hi".to_vec())], false),
            "data.pkl",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = write(&dir, name, &bytes);
        expect_err(&p, PthErrorKind::NotAZip, &[needle]);
    }
    let e = PthCheckpoint::open(dir.path().join("absent.pth")).unwrap_err();
    assert_eq!(e.kind(), PthErrorKind::Io);
    assert!(e.to_string().contains("absent.pth"));
}

#[test]
fn bad_tensors_and_unsupported_archives() {
    let dir = tempfile::tempdir().unwrap();
    let storage = f32_bytes(&[0.0; 6]);
    let one = |v: P| v.op(b'.').0;
    let cases: Vec<(P, &str)> = vec![
        (
            P::start()
                .op(b'}')
                .s("big")
                .view("FloatStorage", "0", 6, 2, &[5], &[1])
                .op(b's'),
            "reaches element 6",
        ),
        (
            P::start()
                .op(b'}')
                .s("empty")
                .view("FloatStorage", "0", 6, 1 << 30, &[0], &[1])
                .op(b's'),
            "storage offset 1073741824 is past the end",
        ),
        (
            P::start()
                .op(b'}')
                .s("neg")
                .view("FloatStorage", "0", 6, 0, &[-2, 3], &[3, 1])
                .op(b's'),
            "size -2 is negative",
        ),
        (
            P::start()
                .op(b'}')
                .s("numel")
                .view("FloatStorage", "0", 7, 0, &[6], &[1])
                .op(b's'),
            "holds 24 bytes",
        ),
        (
            P::start()
                .op(b'}')
                .op(b'(')
                .s("a")
                .view("FloatStorage", "0", 6, 0, &[6], &[1])
                .s("b")
                .view("HalfStorage", "0", 12, 0, &[12], &[1])
                .op(b'u'),
            "read as",
        ),
    ];
    for (pkl, needle) in cases {
        let p = write(&dir, "bad.pth", &archive(one(pkl), &storage));
        expect_err(&p, PthErrorKind::BadTensor, &[needle]);
    }
    // A state dict whose value is not a tensor.
    let p = write(
        &dir,
        "notensor.pth",
        &archive(one(P::start().op(b'}').s("k").int(1).op(b's')), &[]),
    );
    expect_err(&p, PthErrorKind::BadPickle, &["'k' is a int"]);

    // Big-endian storages.
    let pkl = one(P::start().op(b'}'));
    let bytes = zip_stored(
        &[
            ("a/data.pkl".into(), pkl.clone()),
            ("a/byteorder".into(), b"big".to_vec()),
        ],
        false,
    );
    let p = write(&dir, "be.pth", &bytes);
    expect_err(&p, PthErrorKind::Unsupported, &["byteorder 'big'"]);

    // A compressed entry: flip the method to deflate in the directory.
    let mut bytes = zip_stored(&[("a/data.pkl".into(), pkl)], false);
    let pos = bytes
        .windows(4)
        .position(|w| w == SIG_CENTRAL.to_le_bytes())
        .unwrap();
    bytes[pos + 10] = 8;
    let p = write(&dir, "deflate.pth", &bytes);
    expect_err(&p, PthErrorKind::Unsupported, &["compressed (method 8)"]);

    // An empty state dict is valid.
    let p = write(
        &dir,
        "empty_sd.pth",
        &archive(one(P::start().op(b'}')), &[]),
    );
    assert!(PthCheckpoint::open(&p).unwrap().is_empty());
}

/// Single-byte changes (to 0xff, and of the low bit) of every byte of the
/// pickle, the first local header and (T5) the zip directory, and cuts
/// every 1009 bytes: an error or a valid
/// index whose tensors all read back with their size, never a panic.
#[test]
fn mutated_archives_never_panic() {
    let path = Path::new("mutated.pth");
    for file in [original("t2v-tiny", T5), original("i2v-tiny", CLIP)] {
        let full = std::fs::read(&file).unwrap();
        let entries = parse_zip(&full).unwrap();
        let pkl = &entries[0];
        assert!(pkl.name.ends_with("/data.pkl"));
        let cd_start = full
            .windows(4)
            .position(|w| w == SIG_CENTRAL.to_le_bytes())
            .unwrap();
        // The directory once (the fixtures share its structure).
        let dir_end = if file.ends_with(T5) {
            full.len()
        } else {
            cd_start
        };
        let positions = (0..pkl.start + pkl.size).chain(cd_start..dir_end);
        let (mut ok, mut err) = (0, 0);
        let mut m = full.clone();
        for pos in positions {
            let orig = full[pos];
            for v in [0xff, orig ^ 0x01] {
                if v == orig {
                    continue;
                }
                m[pos] = v;
                match index_archive(path, &m) {
                    Ok((_, tensors)) => {
                        ok += 1;
                        for t in &tensors {
                            assert_eq!(tensor_data(&m, t).len(), t.nbytes(), "{}", t.name);
                        }
                    }
                    Err(e) => {
                        err += 1;
                        assert_eq!(e.file(), path);
                    }
                }
                m[pos] = orig;
            }
        }
        assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
        for cut in (4..full.len()).step_by(1009) {
            let e = index_archive(path, &full[..cut]).unwrap_err();
            assert_eq!(e.kind(), PthErrorKind::Truncated, "cut at {cut}: {e}");
        }
    }
}

#[test]
fn corrupted_bytes_fail_the_crc_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(original("t2v-tiny", T5)).unwrap();
    let entries = parse_zip(&bytes).unwrap();
    let last = entries.last().unwrap().clone();
    bytes[last.start + 1] ^= 0x40;
    let p = write(&dir, "flip.pth", &bytes);
    let ck = PthCheckpoint::open(&p).unwrap();
    let e = ck.verify_crc32().unwrap_err();
    assert_eq!(e.kind(), PthErrorKind::Corrupt);
    assert!(e.to_string().contains(&last.name), "{e}");
    assert!(e.to_string().contains("flip.pth"), "{e}");
}

#[test]
fn errors_convert_into_graph_source_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "x.pth", b"nope");
    let e = PthCheckpoint::open(&p).unwrap_err();
    let msg = e.to_string();
    let g: wanrt_graphs::Error = e.into();
    assert_eq!(g.kind(), wanrt_graphs::ErrorKind::Source);
    assert_eq!(g.to_string(), msg);
}

// -- open reads metadata only --------------------------------------------

#[cfg(target_os = "linux")]
fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A 1 GiB storage (a sparse file: nothing on disk) behind a small
/// pickle. Opening and indexing it must leave the resident set nearly
/// unchanged; touching the tensor's pages must grow it, which shows the
/// measurement would catch an `open` that read the data.
#[cfg(target_os = "linux")]
#[test]
fn open_reads_metadata_only() {
    use std::io::{Seek, SeekFrom, Write};
    const N: i32 = 1 << 28; // f32 elements: 1 GiB
    let dir = tempfile::tempdir().unwrap();
    let pkl = P::start()
        .op(b'}')
        .s("huge")
        .view(
            "FloatStorage",
            "0",
            N,
            0,
            &[1 << 14, 1 << 14],
            &[1 << 14, 1],
        )
        .op(b's')
        .op(b'.')
        .0;
    // Zip it with a placeholder storage, then grow that entry in place.
    let head = zip_stored(
        &[
            ("big/data.pkl".into(), pkl.clone()),
            ("big/data/0".into(), vec![]),
        ],
        true,
    );
    let entries = parse_zip(&head).unwrap();
    let data_start = entries[1].start;
    let size = (N as u64) * 4;
    // Rebuild: local headers as written, sparse data, then a fresh
    // directory describing the grown entry.
    let mut local = head[..data_start].to_vec();
    // Local header of the storage: sizes are informational for us, but
    // keep them consistent (zip64 would be needed past 4 GiB).
    let lho = local
        .windows(4)
        .rposition(|w| w == SIG_LOCAL.to_le_bytes())
        .unwrap();
    local[lho + 18..lho + 26].copy_from_slice(
        &[
            &(size as u32).to_le_bytes()[..],
            &(size as u32).to_le_bytes()[..],
        ]
        .concat(),
    );
    let path = dir.path().join("huge.pth");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&local).unwrap();
    f.seek(SeekFrom::Current(size as i64)).unwrap();
    let cd_off = data_start as u64 + size;
    let mut tail = Vec::new();
    let mut cd = Vec::new();
    for (i, (name, sz, crc)) in [
        ("big/data.pkl", pkl.len() as u64, crc32(&pkl)),
        ("big/data/0", size, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let off = if i == 0 { 0u64 } else { lho as u64 };
        cd.extend(SIG_CENTRAL.to_le_bytes());
        cd.extend([45u8, 3, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        cd.extend(crc.to_le_bytes());
        cd.extend(0xffff_ffffu32.to_le_bytes());
        cd.extend(0xffff_ffffu32.to_le_bytes());
        cd.extend((name.len() as u16).to_le_bytes());
        cd.extend(28u16.to_le_bytes());
        cd.extend([0u8; 10]);
        cd.extend(0xffff_ffffu32.to_le_bytes());
        cd.extend(name.as_bytes());
        cd.extend([1u8, 0, 24, 0]);
        cd.extend(sz.to_le_bytes());
        cd.extend(sz.to_le_bytes());
        cd.extend(off.to_le_bytes());
    }
    let z = cd_off + cd.len() as u64;
    tail.extend(&cd);
    tail.extend(SIG_EOCD64.to_le_bytes());
    tail.extend(44u64.to_le_bytes());
    tail.extend([45u8, 3, 45, 0]);
    tail.extend([0u8; 8]);
    tail.extend(2u64.to_le_bytes());
    tail.extend(2u64.to_le_bytes());
    tail.extend((cd.len() as u64).to_le_bytes());
    tail.extend(cd_off.to_le_bytes());
    tail.extend(SIG_EOCD64_LOCATOR.to_le_bytes());
    tail.extend(0u32.to_le_bytes());
    tail.extend(z.to_le_bytes());
    tail.extend(1u32.to_le_bytes());
    tail.extend(SIG_EOCD.to_le_bytes());
    tail.extend([0u8; 4]);
    tail.extend(0xffffu16.to_le_bytes());
    tail.extend(0xffffu16.to_le_bytes());
    tail.extend(0xffff_ffffu32.to_le_bytes());
    tail.extend(0xffff_ffffu32.to_le_bytes());
    tail.extend(0u16.to_le_bytes());
    f.write_all(&tail).unwrap();
    drop(f);

    let before = rss_bytes();
    let ck = PthCheckpoint::open(&path).unwrap();
    let info = ck.info("huge").unwrap().clone();
    let t = ck.get("huge").unwrap();
    let after_open = rss_bytes();
    assert_eq!(info.shape, [1 << 14, 1 << 14]);
    assert_eq!(t.data.len() as u64, size);
    assert!(matches!(t.data, Cow::Borrowed(_)));
    let grown = after_open.saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "open + get grew the resident set by {grown} bytes"
    );

    // Touch 256 MiB of it: the resident set must follow.
    let mut sum = 0u64;
    for b in t.data[..256 << 20].iter().step_by(4096) {
        sum += u64::from(*b);
    }
    assert_eq!(sum, 0);
    let touched = rss_bytes().saturating_sub(after_open);
    assert!(
        touched > 200 << 20,
        "touching 256 MiB grew the resident set by only {touched} bytes"
    );
}
