//! LCM-style sampling for step-distilled models (FastWan, CausVid,
//! ComfyUI's `lcm` sampler): at each step the data prediction
//! `x0 = x_i − σ_i·v_i` is re-noised to the next σ with *fresh* noise,
//! `x_{i+1} = (1 − σ_{i+1})·x0 + σ_{i+1}·ε_i`, instead of following the ODE.
//! The last step (σ_N = 0) returns x0. In f32, in that order of operations.

/// Coefficients of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Step {
    sigma: f32,
    sigma_next: f32,
}

impl Step {
    pub(super) fn is_finite(&self) -> bool {
        self.sigma.is_finite() && self.sigma_next.is_finite()
    }

    /// Whether the step re-noises (every step but the last).
    pub(super) fn needs_noise(&self) -> bool {
        self.sigma_next > 0.0
    }
}

/// Precomputes every step of the grid `sigmas` (N + 1 entries, last 0).
pub(super) fn plan(sigmas: &[f32]) -> Vec<Step> {
    sigmas
        .windows(2)
        .map(|w| Step {
            sigma: w[0],
            sigma_next: w[1],
        })
        .collect()
}

/// One step: `latents` x_i → x_{i+1}; `noise` is ε_i (ignored on the last
/// step, where it may be empty).
pub(super) fn step(s: &Step, latents: &mut [f32], velocity: &[f32], noise: &[f32]) {
    if !s.needs_noise() {
        for (x, &v) in latents.iter_mut().zip(velocity) {
            *x -= s.sigma * v;
        }
        return;
    }
    let keep = 1.0 - s.sigma_next;
    for ((x, &v), &e) in latents.iter_mut().zip(velocity).zip(noise) {
        let x0 = *x - s.sigma * v;
        *x = keep * x0 + s.sigma_next * e;
    }
}
