//! Tests of the samplers: golden schedules and a replay of the reference's
//! whole sampling loop (tests/fixtures/*/golden/pipeline.safetensors), plus
//! properties of the solvers that hold for any correct implementation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::ErrorKind;
use crate::tensorfile::{self, HostTensor};

// ---------------------------------------------------------------- helpers --

fn golden(case: &str) -> BTreeMap<String, HostTensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(case)
        .join("golden/pipeline.safetensors");
    tensorfile::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(t: &BTreeMap<String, HostTensor>, name: &str) -> (Vec<u64>, Vec<f32>) {
    let h = &t[name];
    (
        h.shape.clone(),
        h.to_f32().unwrap_or_else(|| panic!("{name} is not float")),
    )
}

fn i64s(t: &BTreeMap<String, HostTensor>, name: &str) -> Vec<i64> {
    t[name]
        .to_i64()
        .unwrap_or_else(|| panic!("{name} is not int64"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn assert_err_kind<T: std::fmt::Debug>(r: Result<T>, kind: ErrorKind) {
    match r {
        Err(e) => assert_eq!(e.kind(), kind, "{e}"),
        Ok(v) => panic!("expected {kind:?}, got Ok({v:?})"),
    }
}

/// A deterministic stream of values in [−2, 2) (xorshift), so that property
/// tests need no RNG crate.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

// ---------------------------------------------------------- golden grids --

fn check_grid(
    g: &BTreeMap<String, HostTensor>,
    steps: usize,
    shift: f64,
    ts: &str,
    sg: &str,
) -> f32 {
    let s = Schedule::wan_flow(steps, shift).expect("valid grid");
    assert_eq!(s.timesteps(), i64s(g, ts).as_slice(), "{ts}");
    let (shape, want) = f32s(g, sg);
    assert_eq!(shape, [steps as u64 + 1]);
    let err = max_abs_diff(s.sigmas(), &want);
    assert!(err <= 1e-6, "{sg}: max |Δσ| = {err}");
    err
}

#[test]
fn golden_schedules() {
    for case in ["t2v-tiny", "i2v-tiny"] {
        let g = golden(case);
        let errs = [
            check_grid(&g, 4, 3.0, "timesteps", "sigmas"),
            check_grid(
                &g,
                50,
                3.0,
                "sched50_shift3_timesteps",
                "sched50_shift3_sigmas",
            ),
            check_grid(
                &g,
                50,
                5.0,
                "sched50_shift5_timesteps",
                "sched50_shift5_sigmas",
            ),
        ];
        // The grid is built in float64 like the reference, so the float32
        // tables come out bit-identical, not merely within 1e-6.
        assert_eq!(errs, [0.0; 3], "{case}");
        // The DiT saw exactly these timesteps at each step.
        let seen: Vec<i64> = i64s(&g, "step_timestep");
        assert_eq!(seen, i64s(&g, "timesteps"), "{case}");
    }
}

fn spec_list(s: &str) -> Vec<i64> {
    s.split_whitespace()
        .map(|t| t.parse().expect("integer"))
        .collect()
}

#[test]
fn spec_schedules() {
    // docs/WAN.md §7.2, as printed there.
    let cases = [
        (
            50,
            5.0,
            "999 995 991 987 982 978 973 968 963 957 952 946 940 934 927 920 913 906 898 890 \
             882 873 863 854 843 833 821 809 796 783 768 753 737 720 701 681 660 636 611 584 \
             555 522 487 448 405 356 302 241 172 92",
        ),
        (
            40,
            5.0,
            "999 994 989 983 978 972 965 959 952 944 937 929 920 911 902 892 882 870 859 846 \
             833 818 803 786 768 749 728 706 681 654 624 591 555 514 468 416 356 288 208 113",
        ),
        (
            40,
            3.0,
            "999 991 982 973 963 954 944 933 922 911 899 887 874 861 847 832 817 801 785 767 \
             749 730 710 688 666 642 617 590 562 531 499 465 428 388 345 299 249 195 136 71",
        ),
        (
            50,
            16.0,
            "999 998 997 995 994 993 991 989 988 986 984 982 980 978 976 973 971 968 965 963 \
             959 956 953 949 945 941 936 931 926 920 914 907 899 891 882 872 861 848 834 818 \
             799 778 752 722 685 639 581 504 399 245",
        ),
    ];
    for (steps, shift, want) in cases {
        let s = Schedule::wan_flow(steps, shift).expect("valid grid");
        assert_eq!(
            s.timesteps(),
            spec_list(want).as_slice(),
            "{steps} steps, shift {shift}"
        );
        assert!(!s.first_timestep_repeats());
    }
    let s = Schedule::wan_flow(50, 5.0).expect("valid grid");
    assert!(
        (s.sigmas()[0] - 0.999_799_8).abs() < 1e-7,
        "{}",
        s.sigmas()[0]
    );
    assert!(
        (s.sigmas()[49] - 0.092_506_9).abs() < 1e-7,
        "{}",
        s.sigmas()[49]
    );
    assert_eq!(s.sigmas()[50], 0.0);
}

// --------------------------------------------------------- golden replay --

/// Replays the reference's sampling loop on its own recorded model outputs:
/// CFG(5.0) of `step_noise_pred_cond/_uncond`, then one UniPC step, from
/// `latents_init`. Returns the largest |Δ| against `step_latents`.
fn replay(case: &str) -> f32 {
    let g = golden(case);
    let (_, init) = f32s(&g, "latents_init");
    let (in_shape, inputs) = f32s(&g, "step_model_input");
    let (_, cond) = f32s(&g, "step_noise_pred_cond");
    let (_, uncond) = f32s(&g, "step_noise_pred_uncond");
    let (lat_shape, step_latents) = f32s(&g, "step_latents");
    let (_, out) = f32s(&g, "latents_out");
    let steps = lat_shape[0] as usize;
    let n = init.len();
    assert_eq!(step_latents.len(), steps * n);
    // step_model_input is [S, 1, C, F, H, W]; the first 16 channels are the
    // latents (i2v appends 20 conditioning channels).
    let in_stride = inputs.len() / steps;
    assert_eq!(in_shape[2] as usize * (n / 16), in_stride);

    let guidance = 5.0_f32;
    assert!(guidance_needs_uncond(guidance));
    let mut sampler = Sampler::new(Solver::UniPc, steps, 3.0, n).expect("sampler");
    assert_eq!(
        sampler.schedule().timesteps(),
        i64s(&g, "timesteps").as_slice()
    );
    let mut x = init.clone();
    let mut worst = 0.0_f32;
    for i in 0..steps {
        assert_eq!(sampler.step_index(), i);
        assert_eq!(sampler.timestep(), Some(i64s(&g, "timesteps")[i]));
        // What we are about to feed the DiT is what the reference fed it.
        let model_in = &inputs[i * in_stride..i * in_stride + n];
        let d_in = max_abs_diff(&x, model_in);
        assert!(
            d_in <= 1e-6,
            "{case} step {i}: model input differs by {d_in}"
        );
        let mut v = cond[i * n..(i + 1) * n].to_vec();
        apply_guidance(&mut v, &uncond[i * n..(i + 1) * n], guidance).expect("same sizes");
        sampler.step(&mut x, &v).expect("step");
        let want = &step_latents[i * n..(i + 1) * n];
        for (j, (&a, &b)) in x.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 + 1e-5 * b.abs(),
                "{case} step {i} element {j}: {a} vs {b}"
            );
        }
        let d = max_abs_diff(&x, want);
        eprintln!("{case} step {i}: max |Δ| = {d:e}, model input max |Δ| = {d_in:e}");
        worst = worst.max(d);
    }
    assert!(sampler.is_finished());
    assert_eq!(sampler.timestep(), None);
    let d_out = max_abs_diff(&x, &out);
    assert!(d_out <= 1e-6, "{case}: latents_out differs by {d_out}");
    worst.max(d_out)
}

#[test]
fn golden_replay_t2v() {
    let worst = replay("t2v-tiny");
    // Same f32 operations in the same order as the reference: bit-exact.
    assert_eq!(worst, 0.0, "t2v-tiny replay is not bit-exact");
}

#[test]
fn golden_replay_i2v() {
    let worst = replay("i2v-tiny");
    assert_eq!(worst, 0.0, "i2v-tiny replay is not bit-exact");
}

// ------------------------------------------------------ solver structure --

#[test]
fn unipc_orders_and_lower_order_final() {
    for n in 1..=6 {
        let plan = unipc::plan(Schedule::wan_flow(n, 5.0).expect("grid").sigmas());
        let pred: Vec<usize> = plan.iter().map(unipc::Step::predictor_order).collect();
        let corr: Vec<usize> = plan.iter().map(unipc::Step::corrector_order).collect();
        // Predictor: 1 to warm up, 2 in the middle, 1 at the last step.
        let want_pred: Vec<usize> = (0..n)
            .map(|i| if i == 0 || i == n - 1 { 1 } else { 2 })
            .collect();
        assert_eq!(pred, want_pred, "{n} steps");
        // The corrector at step i runs at the previous predictor's order.
        let want_corr: Vec<usize> = (0..n)
            .map(|i| if i == 0 { 0 } else { want_pred[i - 1] })
            .collect();
        assert_eq!(corr, want_corr, "{n} steps");
    }
}

#[test]
fn unipc_corrector_rho_solves_its_system() {
    let sigmas = Schedule::wan_flow(20, 5.0).expect("grid").sigmas().to_vec();
    let plan = unipc::plan(&sigmas);
    let lam = |s: f32| (1.0 - s as f64).ln() - (s as f64).ln();
    for (i, step) in plan.iter().enumerate().skip(2) {
        let rho = step.corrector_rho().expect("order-2 corrector");
        // Independent f64 evaluation of R·ρ = b (docs/WAN.md §7.3 step 2).
        let h = lam(sigmas[i]) - lam(sigmas[i - 1]);
        let r = (lam(sigmas[i - 2]) - lam(sigmas[i - 1])) / h;
        let hh = -h;
        let phi1 = hh.exp_m1();
        let g0 = phi1 / hh - 1.0;
        let g1 = g0 / hh - 0.5;
        let b = [g0 / phi1, 2.0 * g1 / phi1];
        let rho0 = (b[1] - b[0]) / (r - 1.0);
        let rho1 = b[0] - rho0;
        let (e0, e1) = (rho[0] as f64 - rho0, rho[1] as f64 - rho1);
        assert!(
            e0.abs() < 1e-4 && e1.abs() < 1e-4,
            "step {i}: ρ {rho:?} vs ({rho0}, {rho1})"
        );
    }
}

#[test]
fn solve2_pivots_like_lapack() {
    // No swap: |r| <= 1.
    let x = unipc::solve2([[1.0, 1.0], [0.5, 1.0]], [3.0, 2.0]);
    assert_eq!(x, [2.0, 1.0]);
    // Swap: |r| > 1.
    let x = unipc::solve2([[1.0, 1.0], [-4.0, 1.0]], [1.0, -9.0]);
    assert_eq!(x, [2.0, -1.0]);
}

#[test]
fn dpmpp_grid_and_orders() {
    for n in [1, 2, 3, 10, 50] {
        let s = Schedule::wan_dpmpp(n, 5.0).expect("grid");
        assert_eq!(s.sigmas()[0], 1.0);
        assert_eq!(s.timesteps()[0], 1000);
        assert_eq!(*s.sigmas().last().expect("N+1 sigmas"), 0.0);
        let orders: Vec<usize> = dpmpp::plan(s.sigmas())
            .iter()
            .map(dpmpp::Step::order)
            .collect();
        let want: Vec<usize> = (0..n)
            .map(|i| if i == 0 || i == n - 1 { 1 } else { 2 })
            .collect();
        assert_eq!(orders, want, "{n} steps");
    }
    // The dpm++ grid is the unshifted linspace(1, 0) under the same shift.
    let s = Schedule::wan_dpmpp(4, 3.0).expect("grid");
    let want = [1.0, 0.9, 0.75, 0.5, 0.0];
    assert!(max_abs_diff(s.sigmas(), &want) < 1e-7, "{:?}", s.sigmas());
    assert_eq!(s.timesteps(), [1000, 900, 750, 500]);
}

#[test]
fn dpmpp_first_step_from_pure_noise() {
    // docs/WAN.md §7.4: with σ_0 = 1 the first step is x_1 = σ_1·x_0 + α_1·m_0.
    let n = 64;
    let x0 = values(1, n);
    let v = values(2, n);
    let mut s = Sampler::new(Solver::DpmPp, 5, 5.0, n).expect("sampler");
    let sigma1 = s.schedule().sigmas()[1];
    let mut x = x0.clone();
    s.step(&mut x, &v).expect("step");
    for j in 0..n {
        let m = x0[j] - v[j];
        let want = sigma1 * x0[j] + (1.0 - sigma1) * m;
        assert!((x[j] - want).abs() <= 1e-6, "{} vs {want}", x[j]);
    }
}

// ------------------------------------------- solvers on known flow fields --

/// Runs a whole sampling loop with a velocity oracle `v(x, σ)`.
fn sample(
    solver: Solver,
    steps: usize,
    shift: f64,
    x: &mut [f32],
    oracle: impl Fn(&[f32], f32) -> Vec<f32>,
) {
    let mut s = Sampler::new(solver, steps, shift, x.len()).expect("sampler");
    while let Some(sigma) = s.sigma() {
        let v = oracle(x, sigma);
        s.step(x, &v).expect("step");
    }
    assert!(s.is_finished());
}

#[test]
fn straight_line_flow_returns_x0() {
    // x_σ = (1 − σ)·x0 + σ·ε; the exact velocity at any x is (x − x0)/σ
    // (= ε − x0 on the line). Every solver must land on x0.
    let n = 256;
    let x0 = values(3, n);
    let eps = values(4, n);
    for solver in Solver::ALL {
        for steps in [1, 2, 3, 4, 10, 50] {
            let sigma0 = Schedule::for_solver(solver, steps, 5.0)
                .expect("grid")
                .sigmas()[0];
            let mut x: Vec<f32> = (0..n)
                .map(|j| (1.0 - sigma0) * x0[j] + sigma0 * eps[j])
                .collect();
            sample(solver, steps, 5.0, &mut x, |x, sigma| {
                x.iter()
                    .zip(&x0)
                    .map(|(&x, &x0)| (x - x0) / sigma)
                    .collect()
            });
            let err = max_abs_diff(&x, &x0);
            assert!(err <= 1e-5, "{solver}, {steps} steps: max |x − x0| = {err}");
        }
    }
}

/// The flow of a Gaussian data distribution N(μ, s²) has a closed form: the
/// ODE keeps z = (x − (1−σ)μ)/std(σ) fixed, std(σ)² = (1−σ)²s² + σ². Its
/// velocity is (x − E[x0|x])/σ with E[x0|x] = μ + (1−σ)s²/std²·(x − (1−σ)μ).
///
/// Returns the max error of `solver` with `steps` steps against the exact
/// solution (a) at σ_{N−1}, before the last step, and (b) at σ = 0. The last
/// step lands on the data prediction E[x0|x] (final σ zero), whose own error
/// O(σ_{N−1}²) dominates (b); (a) shows the order of the interior steps.
fn gaussian_errors(solver: Solver, steps: usize) -> (f64, f64) {
    let (mu, s2) = (0.7_f64, 1.0_f64);
    let std = |sigma: f64| ((1.0 - sigma).powi(2) * s2 + sigma * sigma).sqrt();
    let exact = |z: f32, sigma: f64| (1.0 - sigma) * mu + std(sigma) * z as f64;
    let max_err = |x: &[f32], z: &[f32], sigma: f64| {
        x.iter()
            .zip(z)
            .map(|(&x, &z)| (x as f64 - exact(z, sigma)).abs())
            .fold(0.0, f64::max)
    };
    let z = values(5, 64);
    let mut s = Sampler::new(solver, steps, 3.0, z.len()).expect("sampler");
    let sigmas = s.schedule().sigmas().to_vec();
    let mut x: Vec<f32> = z
        .iter()
        .map(|&z| exact(z, sigmas[0] as f64) as f32)
        .collect();
    let mut before_last = f64::NAN;
    while let Some(sigma) = s.sigma() {
        if s.step_index() == steps - 1 {
            before_last = max_err(&x, &z, sigma as f64);
        }
        let sg = sigma as f64;
        let v: Vec<f32> = x
            .iter()
            .map(|&x| {
                let x = x as f64;
                let x0_hat = mu + (1.0 - sg) * s2 / std(sg).powi(2) * (x - (1.0 - sg) * mu);
                ((x - x0_hat) / sg) as f32
            })
            .collect();
        s.step(&mut x, &v).expect("step");
    }
    (before_last, max_err(&x, &z, 0.0))
}

#[test]
fn gaussian_flow_convergence_orders() {
    // Asymptotic regime: 64, 128, 256 steps (below ~32 steps the error terms
    // of the coarse shifted grid still cancel each other irregularly).
    let errs = |solver| [64, 128, 256].map(|n| gaussian_errors(solver, n));
    let euler = errs(Solver::Euler);
    // LCM re-noises with fresh noise: it follows no ODE, so it has no order.
    for solver in Solver::ODE {
        let e = errs(solver);
        eprintln!("{solver}: (before last step, final) at 64/128/256 steps: {e:?}");
        // Every solver converges, before the last step and at σ = 0.
        assert!(e[0].0 > e[1].0 && e[1].0 > e[2].0, "{solver}: {e:?}");
        assert!(e[0].1 > e[1].1 && e[1].1 > e[2].1, "{solver}: {e:?}");
    }
    // Euler is first order: doubling the steps halves the error.
    for k in 0..2 {
        let ratio = euler[k].0 / euler[k + 1].0;
        assert!((1.6..2.4).contains(&ratio), "euler: {euler:?}");
    }
    // The multistep solvers are second order (ratio → 4; measured ≈ 4.0 for
    // UniPC and ≈ 3.3 for DPM++ at 128 → 256) and much more accurate.
    for solver in [Solver::UniPc, Solver::DpmPp] {
        let e = errs(solver);
        let ratio = e[1].0 / e[2].0;
        assert!(ratio > 2.9, "{solver}: order ratio {ratio}, {e:?}");
        assert!(
            e[1].0 * 5.0 < euler[1].0,
            "{solver}: {e:?} vs euler {euler:?}"
        );
    }
}

/// A literal float64 port of the reference's DPM-Solver++ `step()` (model
/// output list, `lower_order_nums`, `lower_order_final`), written the way
/// the Python reads, to cross-check the precomputed, fused f32 version.
fn dpmpp_reference_f64(sigmas: &[f32], x: &mut [f64], velocities: &[Vec<f32>]) -> Vec<Vec<f64>> {
    let sigma = |i: usize| sigmas[i] as f64;
    let lambda = |s: f64| (1.0 - s).ln() - s.ln();
    let n = sigmas.len() - 1;
    let mut model_outputs: Vec<Vec<f64>> = Vec::new();
    let mut lower_order_nums = 0;
    let mut trajectory = Vec::new();
    for (step_index, v) in velocities.iter().enumerate() {
        let m: Vec<f64> = x
            .iter()
            .zip(v)
            .map(|(&x, &v)| x - sigma(step_index) * v as f64)
            .collect();
        model_outputs.push(m);
        let lower_order_final = step_index == n - 1;
        let (sigma_t, sigma_s0) = (sigma(step_index + 1), sigma(step_index));
        let (alpha_t, lambda_t, lambda_s0) = (1.0 - sigma_t, lambda(sigma_t), lambda(sigma_s0));
        let h = lambda_t - lambda_s0;
        let m0 = &model_outputs[model_outputs.len() - 1];
        if lower_order_nums < 1 || lower_order_final {
            for (x, &m0) in x.iter_mut().zip(m0) {
                *x = (sigma_t / sigma_s0) * *x - (alpha_t * ((-h).exp() - 1.0)) * m0;
            }
        } else {
            let m1 = &model_outputs[model_outputs.len() - 2];
            let h_0 = lambda_s0 - lambda(sigma(step_index - 1));
            let r0 = h_0 / h;
            for ((x, &m0), &m1) in x.iter_mut().zip(m0).zip(m1) {
                let d1 = (1.0 / r0) * (m0 - m1);
                *x = (sigma_t / sigma_s0) * *x
                    - (alpha_t * ((-h).exp() - 1.0)) * m0
                    - 0.5 * (alpha_t * ((-h).exp() - 1.0)) * d1;
            }
        }
        lower_order_nums = (lower_order_nums + 1).min(2);
        trajectory.push(x.to_vec());
    }
    trajectory
}

#[test]
fn dpmpp_matches_a_literal_f64_port_of_the_reference() {
    let len = 128;
    for (steps, shift) in [(1, 5.0), (2, 5.0), (4, 3.0), (12, 5.0), (50, 16.0)] {
        let velocities: Vec<Vec<f32>> = (0..steps).map(|i| values(100 + i as u64, len)).collect();
        let init = values(99, len);
        let mut s = Sampler::new(Solver::DpmPp, steps, shift, len).expect("sampler");
        let mut want: Vec<f64> = init.iter().map(|&v| v as f64).collect();
        let reference = dpmpp_reference_f64(s.schedule().sigmas(), &mut want, &velocities);
        let mut x = init.clone();
        for (i, v) in velocities.iter().enumerate() {
            s.step(&mut x, v).expect("step");
            for (&a, &b) in x.iter().zip(&reference[i]) {
                assert!(
                    (a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{steps} steps, shift {shift}, step {i}: {a} vs {b}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- errors --

#[test]
fn invalid_steps_and_shift_are_typed_errors() {
    for solver in Solver::ALL {
        assert_err_kind(Sampler::new(solver, 0, 5.0, 4), ErrorKind::InvalidArgument);
        assert_err_kind(
            Sampler::new(solver, MAX_STEPS + 1, 5.0, 4),
            ErrorKind::InvalidArgument,
        );
        for shift in [0.0, -1.0, -0.0, f64::NAN, f64::INFINITY] {
            assert_err_kind(
                Sampler::new(solver, 10, shift, 4),
                ErrorKind::InvalidArgument,
            );
        }
        // A shift so large that neighbouring σ's collapse in float32.
        assert_err_kind(
            Sampler::new(solver, 50, 1e12, 4),
            ErrorKind::InvalidArgument,
        );
        // The largest step count still works.
        assert!(Sampler::new(solver, MAX_STEPS, 5.0, 4).is_ok());
    }
    // Shift 1e5: σ_0 rounds to 1.0f32 (λ_0 = −∞) while the rest of the grid
    // stays distinct. DPM++ is built for σ_0 = 1 and Euler does not care,
    // but UniPC's order-2 corrector would get r = −∞: refused, not NaN.
    let s = Schedule::wan_flow(50, 1e5).expect("distinct sigmas");
    assert_eq!(s.sigmas()[0], 1.0);
    assert_err_kind(
        Sampler::new(Solver::UniPc, 50, 1e5, 4),
        ErrorKind::InvalidArgument,
    );
    assert!(Sampler::new(Solver::DpmPp, 50, 1e5, 4).is_ok());
    assert!(Sampler::new(Solver::Euler, 50, 1e5, 4).is_ok());
}

#[test]
fn misuse_of_a_sampler_is_a_typed_error() {
    let mut s = Sampler::new(Solver::UniPc, 2, 3.0, 4).expect("sampler");
    let mut x = vec![0.5; 4];
    assert_err_kind(s.step(&mut x, &[0.0; 3]), ErrorKind::InvalidArgument);
    assert_err_kind(s.step(&mut [0.0; 5], &[0.0; 5]), ErrorKind::InvalidArgument);
    assert_eq!(s.step_index(), 0, "a rejected step must not advance");
    s.step(&mut x, &[0.1; 4]).expect("step 0");
    s.step(&mut x, &[0.1; 4]).expect("step 1");
    assert_err_kind(s.step(&mut x, &[0.1; 4]), ErrorKind::InvalidArgument);
}

#[test]
fn solver_names() {
    for solver in Solver::ALL {
        assert_eq!(
            solver.to_string().parse::<Solver>().expect("round trip"),
            solver
        );
    }
    assert_eq!("unipc".parse::<Solver>().expect("unipc"), Solver::UniPc);
    assert_eq!("dpm++".parse::<Solver>().expect("dpm++"), Solver::DpmPp);
    assert_eq!("euler".parse::<Solver>().expect("euler"), Solver::Euler);
    assert_eq!(Solver::default(), Solver::UniPc);
    for bad in ["", "UniPC", "dpm", "dpmpp", "euler ", "ddim"] {
        let e = bad.parse::<Solver>().expect_err(bad);
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("unipc, dpm++, euler"), "{e}");
    }
}

#[test]
fn duplicate_first_timestep_is_reported_and_harmless() {
    // Shift 100 with 50 steps: σ_0 and σ_1 both truncate to t = 999.
    let s = Schedule::wan_flow(50, 100.0).expect("still a valid grid");
    assert_eq!(&s.timesteps()[..2], &[999, 999]);
    assert!(s.first_timestep_repeats());
    // We start at index 0 and run all 50 steps regardless.
    let mut x = vec![1.0_f32; 8];
    sample(Solver::UniPc, 50, 100.0, &mut x, |x, sigma| {
        x.iter().map(|&x| x / sigma).collect()
    });
    assert!(x.iter().all(|&v| v.abs() < 1e-5), "{x:?}");
}

// ------------------------------------------------------------------- CFG --

#[test]
fn guidance_predicate() {
    assert!(guidance_needs_uncond(5.0));
    assert!(guidance_needs_uncond(1.0001));
    assert!(!guidance_needs_uncond(1.0));
    assert!(!guidance_needs_uncond(0.5));
    assert!(!guidance_needs_uncond(0.0));
    assert!(!guidance_needs_uncond(f32::NAN));
}

#[test]
fn guidance_combines_in_f32() {
    let cond = values(6, 1000);
    let uncond = values(7, 1000);
    for g in [5.0_f32, 6.0, 1.5, 7.3] {
        let mut v = cond.clone();
        apply_guidance(&mut v, &uncond, g).expect("same sizes");
        for j in 0..v.len() {
            // Exactly the reference's f32 expression …
            assert_eq!(v[j], uncond[j] + g * (cond[j] - uncond[j]));
            // … which is the intended value up to f32 rounding.
            let exact = uncond[j] as f64 + g as f64 * (cond[j] as f64 - uncond[j] as f64);
            assert!((v[j] as f64 - exact).abs() <= 1e-5 * (1.0 + exact.abs()));
        }
    }
    // g = 0 gives the unconditional velocity.
    let mut v = cond.clone();
    apply_guidance(&mut v, &uncond, 0.0).expect("same sizes");
    assert_eq!(v, uncond);
    // Mismatched sizes and non-finite scales are typed errors.
    let mut v = cond.clone();
    assert_err_kind(
        apply_guidance(&mut v, &uncond[1..], 5.0),
        ErrorKind::InvalidArgument,
    );
    assert_err_kind(
        apply_guidance(&mut v, &uncond, f32::NAN),
        ErrorKind::InvalidArgument,
    );
    assert_eq!(v, cond, "a rejected call must not modify its input");
}

// ------------------------------------------------------ step distill, LCM --

#[test]
fn step_distill_grid_is_lightx2v_s() {
    // LightX2V's 4-step list at shift 5: σ = 5s/(1+4s) for s = d/1000, and
    // the DiT gets 1000·σ as a float, not truncated.
    let s = Schedule::step_distill(&[1000, 750, 500, 250], 5.0).expect("grid");
    assert_eq!(s.sigmas(), &[1.0, 0.9375, 0.833_333_3, 0.625, 0.0]);
    // The values the golden data print (float32 widened to float64).
    assert_eq!(f64::from(s.sigmas()[2]), 0.833_333_313_465_118_4);
    assert_eq!(s.dit_timesteps(), &[1000.0, 937.5, 833.333_3, 625.0]);
    assert_eq!(f64::from(s.dit_timesteps()[2]), 833.333_312_988_281_2);
    assert_eq!(s.timesteps(), &[1000, 937, 833, 625]);
    // Shift 1 leaves s unchanged: σ = d/1000 (torch's linspace values).
    let s = Schedule::step_distill(&[999, 501, 500, 3, 1], 1.0).expect("grid");
    for (&sigma, d) in s.sigmas().iter().zip([999u32, 501, 500, 3, 1]) {
        assert!((sigma - d as f32 / 1000.0).abs() <= 1e-7, "{d}: {sigma}");
    }
    // Integer grids keep their integer DiT timesteps exactly.
    let g = Schedule::wan_flow(50, 5.0).expect("grid");
    assert!(
        g.dit_timesteps()
            .iter()
            .zip(g.timesteps())
            .all(|(&f, &i)| f == i as f32)
    );
}

#[test]
fn bad_step_lists_are_typed_errors() {
    for bad in [&[][..], &[1000, 1000], &[250, 500], &[1001, 500], &[500, 0]] {
        let e = Schedule::step_distill(bad, 5.0).expect_err("must refuse");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        assert!(e.to_string().contains("--timesteps"), "{bad:?}: {e}");
    }
    assert_err_kind(
        Schedule::step_distill(&[1000, 500], f64::NAN),
        ErrorKind::InvalidArgument,
    );
}

#[test]
fn euler_on_the_distill_grid_is_flow_euler() {
    // x ← x + (σ_next − σ)·v, the last step landing on x − σ·v.
    let schedule = Schedule::step_distill(&[1000, 750, 500, 250], 5.0).expect("grid");
    let sig = schedule.sigmas().to_vec();
    let mut s = Sampler::with_schedule(Solver::Euler, schedule, 3).expect("sampler");
    let mut x = vec![1.0f32, -2.0, 0.5];
    let mut want = x.clone();
    let v = [0.25f32, 0.5, -1.0];
    for i in 0..4 {
        assert_eq!(s.dit_timestep(), Some(sig[i] * 1000.0));
        s.step(&mut x, &v).expect("step");
        for (w, &v) in want.iter_mut().zip(&v) {
            *w += (sig[i + 1] - sig[i]) * v;
        }
    }
    assert_eq!(x, want);
    assert_eq!(s.dit_timestep(), None);
}

#[test]
fn lcm_renoises_the_data_prediction_with_fresh_noise() {
    let n = 64;
    let schedule = Schedule::step_distill(&[1000, 750, 500, 250], 5.0).expect("grid");
    let sig = schedule.sigmas().to_vec();
    let x_init = values(7, n);
    let v = values(8, n);
    let run = |seed| {
        let mut s = Sampler::with_schedule(Solver::Lcm, schedule.clone(), n)
            .expect("sampler")
            .with_noise_seed(seed);
        let mut x = x_init.clone();
        let mut trace = Vec::new();
        while s.sigma().is_some() {
            s.step(&mut x, &v).expect("step");
            trace.push(x.clone());
        }
        trace
    };
    let a = run(11);
    assert_eq!(a, run(11), "seeded: reproducible");
    let b = run(12);
    // Step 0: x1 = (1 − σ1)·(x0 − σ0·v) + σ1·ε. Recover ε and check it is a
    // fresh standard-normal draw that depends on the seed.
    let x0: Vec<f32> = x_init.iter().zip(&v).map(|(x, v)| x - sig[0] * v).collect();
    let eps = |t: &[f32]| -> Vec<f32> {
        t.iter()
            .zip(&x0)
            .map(|(x1, x0)| (x1 - (1.0 - sig[1]) * x0) / sig[1])
            .collect()
    };
    let (ea, eb) = (eps(&a[0]), eps(&b[0]));
    assert!(max_abs_diff(&ea, &eb) > 0.5, "the noise follows the seed");
    let var = ea.iter().map(|e| e * e).sum::<f32>() / n as f32;
    assert!((0.4..2.0).contains(&var), "noise variance {var}");
    // Each step draws new noise (not the same ε again).
    let x1_0: Vec<f32> = a[0].iter().zip(&v).map(|(x, v)| x - sig[1] * v).collect();
    let e1: Vec<f32> = a[1]
        .iter()
        .zip(&x1_0)
        .map(|(x2, x0)| (x2 - (1.0 - sig[2]) * x0) / sig[2])
        .collect();
    assert!(max_abs_diff(&e1, &ea) > 0.5, "fresh noise per step");
    // The last step returns the data prediction x − σ·v, without noise.
    let last: Vec<f32> = a[2].iter().zip(&v).map(|(x, v)| x - sig[3] * v).collect();
    assert_eq!(a[3], last);
}

// -------------------------------------------------------------- CFG-Zero* --

#[test]
fn cfg_zero_star_uses_one_scale_per_sample() {
    // Sample 0: v_c = 2·v_u → s* = 2, v = 2·v_u + g·0 = v_c.
    // Sample 1: v_c ⊥ v_u → s* = 0, v = g·v_c.
    let uncond = [1.0f32, 2.0, 0.0, 1.0, 0.0, 0.0];
    let mut cond = [2.0f32, 4.0, 0.0, 0.0, 3.0, 0.0];
    let s = apply_guidance_zero_star(&mut cond, &uncond, 5.0, 2).expect("guided");
    assert!((s[0] - 2.0).abs() < 1e-6 && s[1] == 0.0, "{s:?}");
    let want = [2.0f32, 4.0, 0.0, 0.0, 15.0, 0.0];
    assert!(max_abs_diff(&cond, &want) < 1e-5, "{cond:?}");
    // With s* = 1 it is plain CFG.
    let uncond = [1.0f32, 0.0];
    let (mut a, mut b) = ([1.0f32, 0.5], [1.0f32, 0.5]);
    apply_guidance_zero_star(&mut a, &uncond, 3.0, 1).expect("guided");
    apply_guidance(&mut b, &uncond, 3.0).expect("guided");
    assert_eq!(a, b);
    assert_err_kind(
        apply_guidance_zero_star(&mut [0.0; 5], &[0.0; 5], 5.0, 2),
        ErrorKind::InvalidArgument,
    );
}
