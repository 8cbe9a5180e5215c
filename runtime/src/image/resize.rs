//! Torch-compatible bicubic resize of `[C, H, W]` f32 planes.
//!
//! Mirrors `torch.nn.functional.interpolate(x, size=(h, w), mode='bicubic',
//! align_corners=False)` without antialias, as computed by PyTorch's CPU
//! kernel (`aten/src/ATen/native/cpu/UpSampleKernel.cpp`,
//! `upsample_bicubic2d_kernel_impl` → `upsample_generic_Nd_kernel_impl` with
//! `HelperInterpCubic`; helpers in `aten/src/ATen/native/UpSample.h`):
//!
//! * scale = `in / out` in f32 (`area_pixel_compute_scale`, no explicit
//!   scale factor: `F.interpolate(size=…)` passes none);
//! * source coordinate `scale · (dst + 0.5) − 0.5`, not clamped
//!   (`area_pixel_compute_source_index(cubic=true)`);
//! * `i = min(floor(src), in − 1)`, `t = clamp(src − i, 0, 1)`
//!   (`guard_index_and_lambda`);
//! * cubic convolution with A = −0.75 (`get_cubic_upsample_coefficients`);
//! * taps `i − 1 … i + 2`, each index clamped to `[0, in − 1]`;
//! * output `Σ_a wh[a] · (Σ_b ww[b] · x[h_a, w_b])` in f32; values are not
//!   clamped (bicubic over- and undershoots).
//!
//! Rounding: PyTorch's x86-64 wheels run this kernel in their AVX2/AVX512
//! builds of `UpSampleKernel.cpp` (identical results on both), where GCC
//! contracts some multiply-adds into FMAs. The exact pattern was determined
//! against torch 2.15 (CPU capability AVX512 and AVX2) and is reproduced here
//! with `f32::mul_add`, so results are bit-identical to those wheels:
//!
//! * source coordinate: `fma(scale, dst + 0.5, −0.5)`;
//! * `cubic_convolution1(x) = ((fma(A + 2, x, −(A + 3)) · x) · x) + 1`;
//! * `cubic_convolution2(x) = (fma(fma(A, x, −5A), x, 8A) · x) − 4A`;
//! * each 4-tap sum `o = v0·w0; o += v1·w1; o += v2·w2; o += v3·w3` is
//!   `fma(v3, w3, fma(v2, w2, fma(v0, w0, v1·w1)))` (GCC fuses the *first*
//!   product into the first addition).
//!
//! PyTorch's scalar (`DEFAULT` capability) build and its CUDA kernel round
//! differently (up to a few f32 ulps of the value range). The official Wan
//! code resizes the VAE conditioning frame on the CPU and the CLIP input on
//! the GPU; both are matched here to the CPU result.
//!
//! The two passes are separable without changing a single rounding: the
//! inner (width) sums depend only on the input row and output column, so
//! they are computed once per input row and reused for every output row.

/// Cubic convolution parameter of PyTorch's bicubic mode.
const A: f32 = -0.75;

/// Four input indices and their weights for one output position on one axis.
#[derive(Debug, Clone, Copy)]
struct Taps {
    index: [usize; 4],
    weight: [f32; 4],
}

/// `cubic_convolution1`: weight of the two nearest taps (|x| ≤ 1).
#[inline(always)]
fn cubic1(x: f32) -> f32 {
    let u = (A + 2.0).mul_add(x, -(A + 3.0));
    ((u * x) * x) + 1.0
}

/// `cubic_convolution2`: weight of the two outer taps (1 ≤ |x| ≤ 2).
#[inline(always)]
fn cubic2(x: f32) -> f32 {
    let u = A.mul_add(x, -(5.0 * A));
    let u = u.mul_add(x, 8.0 * A);
    (u * x) - 4.0 * A
}

/// `get_cubic_upsample_coefficients`.
#[inline(always)]
fn coefficients(t: f32) -> [f32; 4] {
    let x2 = 1.0 - t;
    [cubic2(t + 1.0), cubic1(t), cubic1(x2), cubic2(x2 + 1.0)]
}

/// `HelperInterpCubic::compute_indices_weights` for one axis.
#[inline(always)]
fn axis_taps(input: usize, output: usize) -> Vec<Taps> {
    // `static_cast<float>(input_size) / output_size`; sizes are at most
    // `MAX_RESIZE_SIDE`, so the conversions to f32 are exact.
    let scale = input as f32 / output as f32;
    let last = input - 1;
    (0..output)
        .map(|dst| {
            let src = scale.mul_add(dst as f32 + 0.5, -0.5);
            // `floorf` of a value ≥ −0.5 and < `input`: fits an i64.
            let floor = src.floor() as i64;
            let base = floor.min(last as i64);
            let t = (src - base as f32).clamp(0.0, 1.0);
            let clampi = |k: i64| k.clamp(0, last as i64) as usize;
            Taps {
                index: [
                    clampi(base - 1),
                    clampi(base),
                    clampi(base + 1),
                    clampi(base + 2),
                ],
                weight: coefficients(t),
            }
        })
        .collect()
}

/// One 4-tap sum with PyTorch's FMA contraction (see the module docs).
#[inline(always)]
fn dot4(v: [f32; 4], w: [f32; 4]) -> f32 {
    let acc = v[0].mul_add(w[0], v[1] * w[1]);
    let acc = v[2].mul_add(w[2], acc);
    v[3].mul_add(w[3], acc)
}

/// The kernel proper. `#[inline(always)]` so that the FMA-enabled wrapper
/// below compiles `mul_add` to hardware FMA instructions; elsewhere
/// `mul_add` is a (correctly rounded, slower) library call. Both give the
/// same bits.
#[inline(always)]
fn resize_kernel(
    input: &[f32],
    channels: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    let rows = axis_taps(in_h, out_h);
    let cols = axis_taps(in_w, out_w);
    let mut out = vec![0.0f32; channels * out_h * out_w];
    // Horizontal pass of one channel: `tmp[r][j]` for every input row r.
    let mut tmp = vec![0.0f32; in_h * out_w];
    for c in 0..channels {
        let plane = &input[c * in_h * in_w..(c + 1) * in_h * in_w];
        for (r, tmp_row) in tmp.chunks_exact_mut(out_w).enumerate() {
            let row = &plane[r * in_w..(r + 1) * in_w];
            for (dst, tap) in tmp_row.iter_mut().zip(&cols) {
                let v = tap.index.map(|k| row[k]);
                *dst = dot4(v, tap.weight);
            }
        }
        let out_plane = &mut out[c * out_h * out_w..(c + 1) * out_h * out_w];
        for (out_row, tap) in out_plane.chunks_exact_mut(out_w).zip(&rows) {
            let src: [&[f32]; 4] = tap.index.map(|k| &tmp[k * out_w..(k + 1) * out_w]);
            for (j, dst) in out_row.iter_mut().enumerate() {
                *dst = dot4([src[0][j], src[1][j], src[2][j], src[3][j]], tap.weight);
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn resize_kernel_fma(
    input: &[f32],
    channels: usize,
    input_hw: (usize, usize),
    output_hw: (usize, usize),
) -> Vec<f32> {
    resize_kernel(input, channels, input_hw, output_hw)
}

/// Resizes `channels` planes of `input_hw` (row-major `[C, H, W]`) to
/// `output_hw`. Callers have checked that all sizes are non-zero and that
/// `input.len() == channels · H · W`.
pub(super) fn bicubic_planes(
    input: &[f32],
    channels: usize,
    input_hw: (usize, usize),
    output_hw: (usize, usize),
) -> Vec<f32> {
    debug_assert_eq!(input.len(), channels * input_hw.0 * input_hw.1);
    if input_hw == output_hw {
        // Identity: PyTorch's weights are then exactly [0, 1, 0, 0] and the
        // result equals the input for finite values; return it unchanged.
        return input.to_vec();
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA, checked just above; that is the only
        // requirement of the `target_feature` function.
        return unsafe { resize_kernel_fma(input, channels, input_hw, output_hw) };
    }
    resize_kernel(input, channels, input_hw, output_hw)
}
