//! Multistep DPM-Solver++ (2M, midpoint, data prediction) for flow
//! matching: ORIG `FlowDPMSolverMultistepScheduler` as `--sample_solver dpm++`
//! configures it (docs/WAN.md §7.4).
//!
//! With `m_i = x_i − σ_i·v_i` and `h = λ_{i+1} − λ_i`:
//!
//! * first order (i = 0, and the last step since the final σ is 0):
//!   `x_{i+1} = (σ_{i+1}/σ_i)·x_i − α_{i+1}(e^{−h} − 1)·m_i`;
//! * second order otherwise: with `r0 = (λ_i − λ_{i−1})/h` and
//!   `D1 = (1/r0)·(m_i − m_{i−1})`, subtract further `0.5·α_{i+1}(e^{−h} − 1)·D1`.
//!
//! The grid starts at σ = 1, where α = 0 and λ = −∞: step 0 then has h = +∞,
//! e^{−h} = 0, so `x_1 = σ_1·x_0 + α_1·m_0`, and step 1 has r0 = +∞, 1/r0 = 0,
//! so D1 = 0. IEEE arithmetic gives these limits without special cases.
//!
//! The reference uses `exp(−h) − 1` here (not `expm1`), which this module
//! mirrors.

/// Coefficients of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Step {
    /// σ_i, for m_i = x_i − σ_i·v_i.
    sigma: f32,
    /// σ_{i+1}/σ_i.
    ratio: f32,
    /// α_{i+1}·(e^{−h} − 1).
    c: f32,
    /// Second order only: (1/r0, 0.5·c).
    second: Option<(f32, f32)>,
}

impl Step {
    pub(super) fn is_finite(&self) -> bool {
        let (inv_r0, half_c) = self.second.unwrap_or((0.0, 0.0));
        [self.sigma, self.ratio, self.c, inv_r0, half_c]
            .iter()
            .all(|x| x.is_finite())
    }

    /// Order of this step (1 or 2).
    #[cfg(test)]
    pub(super) fn order(&self) -> usize {
        if self.second.is_some() { 2 } else { 1 }
    }
}

/// Precomputes every step of the grid `sigmas` (N + 1 entries, last 0).
pub(super) fn plan(sigmas: &[f32]) -> Vec<Step> {
    let n = sigmas.len() - 1;
    (0..n)
        .map(|i| {
            let (sigma_s, sigma_t) = (sigmas[i], sigmas[i + 1]);
            let alpha_t = 1.0 - sigma_t;
            let lambda_s = super::lambda(sigma_s);
            let h = super::lambda(sigma_t) - lambda_s;
            let c = alpha_t * ((-h).exp() - 1.0);
            // solver_order 2 with warm-up at i = 0; final_sigmas_type "zero"
            // forces first order at the last step (lower_order_final).
            let second = (i > 0 && i + 1 < n).then(|| {
                let h0 = lambda_s - super::lambda(sigmas[i - 1]);
                let r0 = h0 / h;
                (1.0 / r0, 0.5 * c)
            });
            Step {
                sigma: sigma_s,
                ratio: sigma_t / sigma_s,
                c,
                second,
            }
        })
        .collect()
}

/// One fused DPM-Solver++ step: `latents` x_i → x_{i+1}; reads m_{i−1} from
/// `m_prev` and writes m_i to `m_out`.
pub(super) fn step(
    s: &Step,
    latents: &mut [f32],
    velocity: &[f32],
    m_prev: &[f32],
    m_out: &mut [f32],
) {
    let lanes = latents
        .iter_mut()
        .zip(velocity)
        .zip(m_prev)
        .zip(m_out.iter_mut());
    for (((x_io, &v), &m1), m_io) in lanes {
        let x = *x_io;
        let m = x - s.sigma * v;
        let first = s.ratio * x - s.c * m;
        *x_io = match s.second {
            Some((inv_r0, half_c)) => first - half_c * (inv_r0 * (m - m1)),
            None => first,
        };
        *m_io = m;
    }
}
