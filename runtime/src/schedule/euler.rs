//! First-order flow Euler: `x_{i+1} = x_i + (σ_{i+1} − σ_i)·v_i`, in f32 like
//! diffusers' `FlowMatchEulerDiscreteScheduler` (`sample + dt·model_output`).
//! It keeps no history; the last step (σ_N = 0) lands on `x − σ·v`, the data
//! prediction.

/// Coefficients of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Step {
    /// dt = σ_{i+1} − σ_i (negative).
    dt: f32,
}

impl Step {
    pub(super) fn is_finite(&self) -> bool {
        self.dt.is_finite()
    }
}

/// Precomputes every step of the grid `sigmas` (N + 1 entries, last 0).
pub(super) fn plan(sigmas: &[f32]) -> Vec<Step> {
    sigmas
        .windows(2)
        .map(|w| Step { dt: w[1] - w[0] })
        .collect()
}

/// One fused Euler step: `latents` x_i → x_{i+1}.
pub(super) fn step(s: &Step, latents: &mut [f32], velocity: &[f32]) {
    for (x, &v) in latents.iter_mut().zip(velocity) {
        *x += s.dt * v;
    }
}
