//! UniPC multistep (order 2, `bh2`, data prediction) for flow matching:
//! ORIG `FlowUniPCMultistepScheduler` / DIFF `UniPCMultistepScheduler` with
//! `use_flow_sigmas` (docs/WAN.md §7.3).
//!
//! Step i (0-based, N steps) with model output v_i at the model input x_i:
//!
//! 1. `m_i = x_i − σ_i·v_i` from the *uncorrected* x_i;
//! 2. for i > 0 the UniC corrector rebuilds x_i from the corrected x_{i−1}
//!    (`last`), m_{i−1}, m_{i−2} and the fresh m_i, with the order the
//!    previous predictor used;
//! 3. the UniP predictor goes from the corrected x_i to σ_{i+1}, with order
//!    1 at i = 0 (warm-up) and at i = N − 1 (`lower_order_final`), else 2.
//!
//! Every scalar (ratios, α·φ1, α·B, r, ρ) depends on the σ grid only, so
//! [`plan`] computes them once, in float32 and in the reference's operation
//! order; [`step`] is one fused elementwise pass.

/// UniP predictor coefficients of one step (σ_i → σ_{i+1}).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Predictor {
    /// σ_{i+1}/σ_i.
    ratio: f32,
    /// α_{i+1}·φ1 with φ1 = expm1(−h).
    alpha_phi: f32,
    /// α_{i+1}·B, B = expm1(−h) for bh2 (equal to φ1, kept apart to mirror
    /// the reference and to make a bh1 variant a one-line change).
    alpha_b: f32,
    /// Order 2 only: r = (λ_{i−1} − λ_i)/h. The order-2 predictor uses the
    /// fixed ρ = 0.5, so no system is solved here.
    r: Option<f32>,
}

/// UniC corrector coefficients of one step (rebuilds x_i from x_{i−1}).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Corrector {
    /// σ_i/σ_{i−1}.
    ratio: f32,
    /// α_i·φ1.
    alpha_phi: f32,
    /// α_i·B.
    alpha_b: f32,
    /// Order 2 only: (r_1, ρ_0) with r_1 = (λ_{i−2} − λ_{i−1})/h.
    second: Option<(f32, f32)>,
    /// ρ of the D1_t = m_i − m_{i−1} term (0.5 at order 1).
    rho_last: f32,
}

/// Everything step i needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Step {
    /// σ_i, for the data prediction m_i = x_i − σ_i·v_i.
    sigma: f32,
    corrector: Option<Corrector>,
    predictor: Predictor,
}

impl Step {
    pub(super) fn is_finite(&self) -> bool {
        let p = &self.predictor;
        let pred = [p.ratio, p.alpha_phi, p.alpha_b, p.r.unwrap_or(0.0)];
        let corr = self.corrector.map_or([0.0; 6], |c| {
            let (r, rho0) = c.second.unwrap_or((0.0, 0.0));
            [c.ratio, c.alpha_phi, c.alpha_b, r, rho0, c.rho_last]
        });
        self.sigma.is_finite() && pred.iter().chain(&corr).all(|x| x.is_finite())
    }

    /// Order of the predictor (1 or 2).
    #[cfg(test)]
    pub(super) fn predictor_order(&self) -> usize {
        if self.predictor.r.is_some() { 2 } else { 1 }
    }

    /// Order of the corrector (0 = no corrector at this step).
    #[cfg(test)]
    pub(super) fn corrector_order(&self) -> usize {
        match self.corrector {
            None => 0,
            Some(Corrector { second: None, .. }) => 1,
            Some(_) => 2,
        }
    }

    /// The corrector's ρ vector (order 2 only).
    #[cfg(test)]
    pub(super) fn corrector_rho(&self) -> Option<[f32; 2]> {
        let c = self.corrector?;
        c.second.map(|(_, rho0)| [rho0, c.rho_last])
    }
}

/// The solver order of step i of n: min(2, N − i) (`lower_order_final`),
/// capped by warm-up at min(i, 2) + 1.
fn order(i: usize, n: usize) -> usize {
    2.min(n - i).min(i.min(2) + 1)
}

/// The scalars shared by predictor and corrector for one interval
/// σ_s → σ_t: (σ_t/σ_s, α_t·φ1, α_t·B, h, hh, φ1, B).
struct Interval {
    ratio: f32,
    alpha_phi: f32,
    alpha_b: f32,
    h: f32,
    hh: f32,
    phi1: f32,
    b: f32,
    lambda_s: f32,
}

fn interval(sigma_s: f32, sigma_t: f32) -> Interval {
    let alpha_t = 1.0 - sigma_t;
    let lambda_s = super::lambda(sigma_s);
    let h = super::lambda(sigma_t) - lambda_s;
    // predict_x0: hh = −h. At σ_t = 0, h = +∞ and φ1 = B = expm1(−∞) = −1,
    // which makes the last predictor return m_{N−1} exactly.
    let hh = -h;
    let phi1 = hh.exp_m1();
    let b = hh.exp_m1();
    Interval {
        ratio: sigma_t / sigma_s,
        alpha_phi: alpha_t * phi1,
        alpha_b: alpha_t * b,
        h,
        hh,
        phi1,
        b,
        lambda_s,
    }
}

/// Precomputes every step of the grid `sigmas` (N + 1 entries, last 0).
pub(super) fn plan(sigmas: &[f32]) -> Vec<Step> {
    let n = sigmas.len() - 1;
    (0..n)
        .map(|i| {
            let p = interval(sigmas[i], sigmas[i + 1]);
            let predictor = Predictor {
                ratio: p.ratio,
                alpha_phi: p.alpha_phi,
                alpha_b: p.alpha_b,
                r: (order(i, n) == 2).then(|| (super::lambda(sigmas[i - 1]) - p.lambda_s) / p.h),
            };
            let corrector = (i > 0).then(|| corrector(sigmas, i, order(i - 1, n)));
            Step {
                sigma: sigmas[i],
                corrector,
                predictor,
            }
        })
        .collect()
}

/// The corrector of step i, of order `p` (the previous predictor's order).
fn corrector(sigmas: &[f32], i: usize, p: usize) -> Corrector {
    let c = interval(sigmas[i - 1], sigmas[i]);
    let second = (p == 2).then(|| {
        let r = (super::lambda(sigmas[i - 2]) - c.lambda_s) / c.h;
        // b_j = g_j·(j+1)!/B with g_0 = φ1/hh − 1, g_1 = g_0/hh − 1/2,
        // evaluated like the reference: (g·factorial)/B, in f32.
        let g0 = c.phi1 / c.hh - 1.0;
        let b0 = (g0 * 1.0) / c.b;
        let g1 = g0 / c.hh - 0.5;
        let b1 = (g1 * 2.0) / c.b;
        // R = [r^0; r^1] = [[1, 1], [r, 1]] (the last r is 1).
        let rho = solve2([[1.0, 1.0], [r, 1.0]], [b0, b1]);
        (r, rho)
    });
    match second {
        Some((r, rho)) => Corrector {
            ratio: c.ratio,
            alpha_phi: c.alpha_phi,
            alpha_b: c.alpha_b,
            second: Some((r, rho[0])),
            rho_last: rho[1],
        },
        None => Corrector {
            ratio: c.ratio,
            alpha_phi: c.alpha_phi,
            alpha_b: c.alpha_b,
            second: None,
            rho_last: 0.5,
        },
    }
}

/// Solves the 2×2 system `a·x = b` in f32 the way LAPACK `sgesv` does
/// (the reference calls `torch.linalg.solve` on float32): LU with partial
/// pivoting (`isamax` keeps the first row on ties), the column below the
/// pivot scaled by the pivot's reciprocal (`sgetf2`), then forward and back
/// substitution (`strsm`, dividing by the diagonal). Doing it in f64 instead
/// would round ρ differently by an ulp now and then.
pub(super) fn solve2(a: [[f32; 2]; 2], b: [f32; 2]) -> [f32; 2] {
    let (top, bot, b_top, b_bot) = if a[1][0].abs() > a[0][0].abs() {
        (a[1], a[0], b[1], b[0])
    } else {
        (a[0], a[1], b[0], b[1])
    };
    let l = bot[0] * (1.0 / top[0]);
    let u11 = bot[1] - l * top[1];
    let y1 = b_bot - l * b_top;
    let x1 = y1 / u11;
    let x0 = (b_top - x1 * top[1]) / top[0];
    [x0, x1]
}

/// One fused UniPC step over the latent.
///
/// * `latents`: x_i in, x_{i+1} out;
/// * `m_prev`: m_{i−1} (read);
/// * `m_prev2`: m_{i−2} in, m_i out (the caller swaps it with `m_prev`);
/// * `last`: corrected x_{i−1} in, corrected x_i out.
///
/// Each element goes through the same rounded f32 operations, in the same
/// order, as the reference's chain of tensor ops.
pub(super) fn step(
    s: &Step,
    latents: &mut [f32],
    velocity: &[f32],
    m_prev: &[f32],
    m_prev2: &mut [f32],
    last: &mut [f32],
) {
    let sigma = s.sigma;
    let pr = s.predictor;
    let lanes = latents
        .iter_mut()
        .zip(velocity)
        .zip(m_prev)
        .zip(m_prev2.iter_mut())
        .zip(last.iter_mut());
    // The matches on the step's orders are loop-invariant; the optimiser
    // unswitches them, and keeping one loop keeps the op order in one place.
    for ((((x_io, &v), &m1), m2_io), last_io) in lanes {
        let x = *x_io;
        let m = x - sigma * v;
        let xc = match &s.corrector {
            None => x,
            Some(c) => {
                // x_t_ − α·B·(ρ_0·D_1 + ρ_last·(m_i − m_{i−1})) with
                // D_1 = (m_{i−2} − m_{i−1})/r_1; at order 1 the sum is the
                // reference's integer 0.
                let corr = match c.second {
                    Some((r1, rho0)) => rho0 * ((*m2_io - m1) / r1),
                    None => 0.0,
                };
                (c.ratio * *last_io - c.alpha_phi * m1) - c.alpha_b * (corr + c.rho_last * (m - m1))
            }
        };
        let base = pr.ratio * xc - pr.alpha_phi * m;
        // Order 2: x_t_ − α·B·(0.5·D_1), D_1 = (m_{i−1} − m_i)/r. Order 1
        // (also the last step, where ratio = 0 and α·φ1 = −1 give
        // x_N = m_{N−1}): the reference subtracts α·B·0, i.e. nothing.
        *x_io = match pr.r {
            Some(r) => base - pr.alpha_b * (0.5 * ((m1 - m) / r)),
            None => base,
        };
        *last_io = xc;
        *m2_io = m;
    }
}
