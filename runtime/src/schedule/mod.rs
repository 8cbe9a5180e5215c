//! Step-scheduled flow-matching samplers of Wan2.1 (docs/WAN.md §7) and the
//! classifier-free-guidance helper (§7.6).
//!
//! The DiT predicts the flow velocity `v = ε − x0` of `x_σ = (1 − σ)·x0 + σ·ε`
//! (§7.1). A sampler turns the velocity at the current latent into the latent
//! at the next, smaller σ. Three solvers exist, chosen with [`Solver`]:
//!
//! * [`Solver::UniPc`] (default, ORIG `FlowUniPCMultistepScheduler`): order-2
//!   UniP predictor + UniC corrector, `bh2`, lower order at the first and last
//!   step, final σ = 0 (§7.3), on the grid of §7.2.
//! * [`Solver::DpmPp`] (ORIG `--sample_solver dpm++`): multistep DPM-Solver++
//!   (2M, midpoint) on its own grid that starts at σ = 1 (§7.4).
//! * [`Solver::Euler`]: `x_{i+1} = x_i + (σ_{i+1} − σ_i)·v_i` on the §7.2 grid (§7.5).
//! * [`Solver::Lcm`]: the data prediction re-noised to the next σ with fresh
//!   noise at every step (for step-distilled models).
//!
//! [`Schedule::step_distill`] builds the grid of a step-distilled model from
//! its denoising step list (`--timesteps 1000,750,500,250`), mapped through
//! the shift as LightX2V's Wan step-distill scheduler does; the DiT is then
//! conditioned on float timesteps 1000·σ (docs/WAN.md §12.2).
//!
//! [`apply_guidance`] is classifier-free guidance; [`apply_guidance_zero_star`]
//! is CFG-Zero*'s per-sample optimised scale (docs/WAN.md §12.3).
//!
//! "Step-scheduled" means that everything that depends only on the σ grid
//! (timesteps, α, λ, h, φ/B coefficients, the UniPC corrector's ρ, which is
//! the solution of a 2×2 system fixed by the σ's) is computed once in
//! [`Sampler::new`]; a step is then one fused pass over the latent, which also
//! keeps the data predictions the multistep solvers need later.
//!
//! # Numerics
//!
//! The golden data were produced by torch with float32 tensors, so both the
//! latent arithmetic and the per-step scalar coefficients are evaluated here
//! in f32, operation by operation in the reference's order (0-d float32
//! tensors for σ, α, λ, h, …; elementwise float32 ops for the latent). Each
//! fused update performs exactly the same sequence of rounded f32 operations
//! that the reference's separate tensor kernels perform, so the result is
//! reproducible to the last bit wherever `ln`/`expm1`/`exp` round like the
//! reference's (the golden replay tests measure this). Only the σ grid itself
//! is built in f64, because that is where the reference builds it (numpy
//! float64, cast to float32 at the end); doing it in f32 moves ~30 of the
//! 51 table entries by one ulp.
//!
//! Rust never contracts `a * b + c` into an FMA on its own, which is what
//! keeps the fused loops bit-identical to the unfused reference.

mod dpmpp;
mod euler;
mod lcm;
mod unipc;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Number of training timesteps of Wan2.1; the model is conditioned on
/// `t = int64(1000·σ)`.
pub const NUM_TRAIN_TIMESTEPS: u32 = 1000;

/// Upper bound on the number of sampling steps. With more steps than
/// training timesteps the integer timesteps necessarily repeat, which the
/// reference cannot handle (see [`Schedule`]); it also keeps a typo such as
/// `--steps 5000000` from allocating a huge table.
pub const MAX_STEPS: usize = NUM_TRAIN_TIMESTEPS as usize;

/// σ_max of the training grid: float32(0.999) = 0.9990000128746033 (§7.2).
const SIGMA_MAX_F32: f32 = 0.999;

/// The ODE solver of the sampling loop (the CLI's `--solver` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Solver {
    /// UniPC multistep, order 2, bh2 (§7.3). The official default.
    #[default]
    UniPc,
    /// DPM-Solver++ 2M midpoint on the σ = 1 grid (§7.4).
    DpmPp,
    /// First-order flow Euler on the UniPC grid.
    Euler,
    /// Re-noise the data prediction with fresh noise each step (LCM).
    Lcm,
}

impl Solver {
    /// Every solver, in the order of [`Solver::name`]s shown in help texts.
    pub const ALL: [Solver; 4] = [Solver::UniPc, Solver::DpmPp, Solver::Euler, Solver::Lcm];

    /// The deterministic ODE solvers (all but [`Solver::Lcm`]).
    pub const ODE: [Solver; 3] = [Solver::UniPc, Solver::DpmPp, Solver::Euler];

    /// The CLI spelling: `unipc`, `dpm++`, `euler` or `lcm`.
    pub fn name(self) -> &'static str {
        match self {
            Solver::UniPc => "unipc",
            Solver::DpmPp => "dpm++",
            Solver::Euler => "euler",
            Solver::Lcm => "lcm",
        }
    }
}

impl fmt::Display for Solver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Solver {
    type Err = Error;

    /// Parses the exact CLI spellings (`unipc`, `dpm++`, `euler`, `lcm`); anything
    /// else is an [`crate::ErrorKind::InvalidArgument`] naming the choices.
    fn from_str(s: &str) -> Result<Self> {
        Solver::ALL
            .into_iter()
            .find(|solver| solver.name() == s)
            .ok_or_else(|| {
                Error::arg(
                    "--solver",
                    format!("unknown solver {s:?}; expected one of unipc, dpm++, euler, lcm"),
                )
            })
    }
}

/// The σ grid and the integer timesteps of one sampling run.
///
/// `sigmas` has `steps + 1` float32 entries, strictly decreasing, the last
/// one 0; `timesteps[i] = int64(1000·σ_i)` (truncated toward zero, computed
/// from the float64 σ before its cast to float32, as the reference does). The
/// model is conditioned on `timesteps[i]` while the solver uses `sigmas[i]`.
///
/// # The duplicate-`t_0` quirk (§7.2)
///
/// The reference finds its step index by looking `t_0` up in the timestep
/// list and, if `t_0` occurs twice, starts at the *second* occurrence; it then
/// runs off the end of its σ table on the last step. Samplers here index the
/// grid by position and always start at step 0, which is the schedule the
/// reference intends. The quirk cannot arise with sane settings (none of the
/// official step/shift combinations repeat a timestep);
/// [`Schedule::first_timestep_repeats`] tells a caller when a setting would
/// have triggered it in the reference, e.g. to warn that results will differ.
///
/// # Step-distilled schedules
///
/// [`Schedule::step_distill`] conditions the DiT on the float timesteps
/// 1000·σ ([`Schedule::dit_timesteps`]); `timesteps` then holds their
/// truncation, for display only. For every other grid the DiT timesteps are
/// the integer timesteps, exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    sigmas: Vec<f32>,
    timesteps: Vec<i64>,
    /// What the DiT is conditioned on at each step.
    dit_timesteps: Vec<f32>,
}

impl Schedule {
    /// The official UniPC grid of §7.2, also used by [`Solver::Euler`]:
    /// `σ_k = shift(linspace(float32(0.999), 0, N+1)[k])`, k < N, then 0.
    pub fn wan_flow(steps: usize, shift: f64) -> Result<Schedule> {
        check_steps_shift(steps, shift)?;
        // numpy.linspace(start, 0, N+1) in float64: y_k = k·((0 − start)/N) + start.
        let start = f64::from(SIGMA_MAX_F32);
        let delta = (0.0 - start) / steps as f64;
        Self::from_unshifted((0..steps).map(|k| k as f64 * delta + start), shift)
    }

    /// The DPM-Solver++ grid of §7.4: `σ_k = shift(linspace(1, 0, N+1)[k])`,
    /// starting at exactly 1.0 (first timestep 1000), then 0.
    pub fn wan_dpmpp(steps: usize, shift: f64) -> Result<Schedule> {
        check_steps_shift(steps, shift)?;
        let delta = -1.0 / steps as f64;
        Self::from_unshifted((0..steps).map(|k| k as f64 * delta + 1.0), shift)
    }

    /// The grid [`Sampler`] uses for `solver`.
    pub fn for_solver(solver: Solver, steps: usize, shift: f64) -> Result<Schedule> {
        match solver {
            Solver::UniPc | Solver::Euler | Solver::Lcm => Self::wan_flow(steps, shift),
            Solver::DpmPp => Self::wan_dpmpp(steps, shift),
        }
    }

    /// The grid of a step-distilled model from its denoising step list
    /// (strictly decreasing training timesteps in 1..=1000, e.g. LightX2V's
    /// `[1000, 750, 500, 250]`), as LightX2V's Wan step-distill scheduler
    /// builds it, all in float32: `s = linspace(1, 0, 1001)[1000 − d]`,
    /// `σ = shift·s / (1 + (shift − 1)·s)`, DiT timestep `1000·σ` (not
    /// truncated), then a final σ = 0.
    pub fn step_distill(step_list: &[u32], shift: f64) -> Result<Schedule> {
        check_steps_shift(step_list.len().max(1), shift)?;
        let bad = |reason: String| Error::arg("--timesteps", reason);
        if step_list.is_empty() || step_list.len() > MAX_STEPS {
            return Err(bad(format!(
                "{} denoising steps; expected 1..={MAX_STEPS}",
                step_list.len()
            )));
        }
        if let Some(&d) = step_list
            .iter()
            .find(|&&d| d == 0 || d > NUM_TRAIN_TIMESTEPS)
        {
            return Err(bad(format!(
                "timestep {d}; expected values in 1..={NUM_TRAIN_TIMESTEPS}"
            )));
        }
        if step_list.windows(2).any(|w| w[1] >= w[0]) {
            return Err(bad(format!("{step_list:?} is not strictly decreasing")));
        }
        let (shift32, shift_m1) = (shift as f32, (shift - 1.0) as f32);
        let mut sigmas = Vec::with_capacity(step_list.len() + 1);
        let mut dit_timesteps = Vec::with_capacity(step_list.len());
        for &d in step_list {
            let s = distill_linspace(d);
            let sigma = shift32 * s / (1.0 + shift_m1 * s);
            sigmas.push(sigma);
            dit_timesteps.push(sigma * NUM_TRAIN_TIMESTEPS as f32);
        }
        sigmas.push(0.0);
        if sigmas.windows(2).any(|w| w[1] >= w[0]) || sigmas.iter().any(|s| !s.is_finite()) {
            return Err(Error::arg(
                "--shift",
                format!("shift {shift} gives a degenerate σ grid for {step_list:?}"),
            ));
        }
        Ok(Schedule {
            sigmas,
            // Truncated, as `as` does: display only.
            timesteps: dit_timesteps.iter().map(|&t| t as i64).collect(),
            dit_timesteps,
        })
    }

    fn from_unshifted(unshifted: impl Iterator<Item = f64>, shift: f64) -> Result<Schedule> {
        let mut sigmas = Vec::new();
        let mut timesteps = Vec::new();
        for x in unshifted {
            // Same expression order as the reference: (s·σ) / (1 + (s − 1)·σ).
            let s = shift * x / (1.0 + (shift - 1.0) * x);
            // `as` truncates toward zero, like numpy's astype(int64).
            timesteps.push((s * f64::from(NUM_TRAIN_TIMESTEPS)) as i64);
            sigmas.push(s as f32);
        }
        sigmas.push(0.0); // final_sigmas_type = "zero"
        // An extreme shift squeezes neighbouring σ's into one float32 value
        // (or to 1.0 after index 0), where h = 0 or λ = −∞ would turn the
        // solvers' coefficients into NaN: refuse such grids up front.
        let degenerate = sigmas.windows(2).any(|w| w[1] >= w[0])
            || sigmas[1..].iter().any(|&s| s >= 1.0)
            || sigmas[0] > 1.0;
        if degenerate {
            return Err(Error::arg(
                "--shift",
                format!(
                    "shift {shift} with {} steps gives a degenerate σ grid \
                     (repeated or saturated float32 sigmas)",
                    timesteps.len()
                ),
            ));
        }
        let dit_timesteps = timesteps.iter().map(|&t| t as f32).collect();
        Ok(Schedule {
            sigmas,
            timesteps,
            dit_timesteps,
        })
    }

    /// Number of sampling steps N (model evaluations per guidance branch).
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The N + 1 float32 sigmas, ending with 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The N integer timesteps (what the DiT is conditioned on, except on
    /// a [`Schedule::step_distill`] grid, where they are truncated).
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// The N timesteps the DiT is conditioned on, as the float32 values it
    /// receives.
    pub fn dit_timesteps(&self) -> &[f32] {
        &self.dit_timesteps
    }

    /// Whether `t_0` occurs again later in the list, the case in which the
    /// reference would start at the second occurrence (see the type docs).
    pub fn first_timestep_repeats(&self) -> bool {
        // Indexing is safe: a Schedule always has at least one step.
        self.timesteps[1..].contains(&self.timesteps[0])
    }
}

/// Entry `1000 − d` of torch's float32 `linspace(1, 0, 1001)`, which
/// evaluates `start + step·i` in the first half and `end − step·(n − 1 − i)`
/// in the second, with `step = float32(−1/1000)`.
fn distill_linspace(d: u32) -> f32 {
    let step = -1.0f32 / NUM_TRAIN_TIMESTEPS as f32;
    let i = NUM_TRAIN_TIMESTEPS - d;
    // torch: `halfway = steps / 2` for the 1001 points.
    let points = NUM_TRAIN_TIMESTEPS + 1;
    let halfway = points / 2;
    if i < halfway {
        1.0 + step * i as f32
    } else {
        0.0 - step * d as f32
    }
}

fn check_steps_shift(steps: usize, shift: f64) -> Result<()> {
    if steps == 0 || steps > MAX_STEPS {
        return Err(Error::arg(
            "--steps",
            format!("{steps} sampling steps; expected 1..={MAX_STEPS}"),
        ));
    }
    if !(shift.is_finite() && shift > 0.0) {
        return Err(Error::arg(
            "--shift",
            format!("shift {shift}; expected a finite number > 0"),
        ));
    }
    Ok(())
}

/// The log-SNR `λ(σ) = ln(1 − σ) − ln σ` in float32, as the reference
/// evaluates it on 0-d float32 tensors (α = 1 − σ rounded first). σ = 0
/// gives +∞ and σ = 1 gives −∞, which the solvers rely on at the ends.
fn lambda(sigma: f32) -> f32 {
    (1.0 - sigma).ln() - sigma.ln()
}

/// The precomputed per-step coefficients of one solver.
#[derive(Debug, Clone)]
enum Plan {
    UniPc(Vec<unipc::Step>),
    DpmPp(Vec<dpmpp::Step>),
    Euler(Vec<euler::Step>),
    Lcm(Vec<lcm::Step>),
}

/// A sampling loop in progress: the schedule, the precomputed coefficients
/// and the history the multistep solvers keep between steps.
///
/// ```text
/// let mut s = Sampler::new(Solver::UniPc, 50, 5.0, latents.len())?;
/// while let Some(t) = s.timestep() {
///     let v = dit(&latents, t);          // guided velocity at the current latent
///     s.step(&mut latents, &v)?;         // latents ← latents at the next σ
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Sampler {
    solver: Solver,
    schedule: Schedule,
    plan: Plan,
    /// Index of the next step to take (== steps once finished).
    index: usize,
    /// Elements of the latent every step works on.
    len: usize,
    /// Data prediction m_{i−1} of the previous step (UniPC, DPM++).
    m_prev: Vec<f32>,
    /// m_{i−2} (UniPC's order-2 corrector); reused as the write buffer for
    /// m_i and swapped with `m_prev` after each step.
    m_prev2: Vec<f32>,
    /// UniPC's `last_sample`: the corrected x_{i−1} the corrector starts from.
    last: Vec<f32>,
    /// Seed of the fresh noise [`Solver::Lcm`] draws at each step.
    noise_seed: u64,
}

impl Sampler {
    /// Builds the schedule of `solver` and precomputes every step's
    /// coefficients for latents of `len` float32 elements.
    pub fn new(solver: Solver, steps: usize, shift: f64, len: usize) -> Result<Sampler> {
        Self::with_schedule(solver, Schedule::for_solver(solver, steps, shift)?, len)
    }

    /// A sampler running `solver` on a given grid (a
    /// [`Schedule::step_distill`] one, say).
    pub fn with_schedule(solver: Solver, schedule: Schedule, len: usize) -> Result<Sampler> {
        let steps = schedule.steps();
        let sigmas = schedule.sigmas();
        let plan = match solver {
            Solver::UniPc => Plan::UniPc(unipc::plan(sigmas)),
            Solver::DpmPp => Plan::DpmPp(dpmpp::plan(sigmas)),
            Solver::Euler => Plan::Euler(euler::plan(sigmas)),
            Solver::Lcm => Plan::Lcm(lcm::plan(sigmas)),
        };
        let finite = match &plan {
            Plan::UniPc(p) => p.iter().all(unipc::Step::is_finite),
            Plan::DpmPp(p) => p.iter().all(dpmpp::Step::is_finite),
            Plan::Euler(p) => p.iter().all(euler::Step::is_finite),
            Plan::Lcm(p) => p.iter().all(lcm::Step::is_finite),
        };
        if !finite {
            // Reached when an extreme shift (≳ 3e4) rounds σ_0 to 1.0f32 on
            // the UniPC grid: λ_0 = −∞ makes the corrector's r infinite (the
            // reference would produce NaN latents). Refuse instead.
            return Err(Error::arg(
                "--shift",
                format!(
                    "this shift gives a σ grid (σ_0 = {}, {steps} steps) with non-finite {solver} coefficients",
                    schedule.sigmas()[0]
                ),
            ));
        }
        let (history, keeps_last) = match solver {
            Solver::UniPc => (len, true),
            Solver::DpmPp => (len, false),
            Solver::Euler | Solver::Lcm => (0, false),
        };
        Ok(Sampler {
            solver,
            schedule,
            plan,
            index: 0,
            len,
            m_prev: vec![0.0; history],
            m_prev2: vec![0.0; history],
            last: vec![0.0; if keeps_last { len } else { 0 }],
            noise_seed: 0,
        })
    }

    /// Seeds the fresh noise of [`Solver::Lcm`] (step i draws
    /// `gaussian_noise(mix(seed, i))`); other solvers draw none.
    pub fn with_noise_seed(mut self, seed: u64) -> Self {
        self.noise_seed = seed;
        self
    }

    /// The solver this sampler runs.
    pub fn solver(&self) -> Solver {
        self.solver
    }

    /// The σ grid and timesteps.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Number of steps N.
    pub fn steps(&self) -> usize {
        self.schedule.steps()
    }

    /// Index of the next step (0-based); equals [`Sampler::steps`] when done.
    pub fn step_index(&self) -> usize {
        self.index
    }

    /// Whether every step has been taken.
    pub fn is_finished(&self) -> bool {
        self.index == self.steps()
    }

    /// The integer timestep of the next step, `None` when finished (see
    /// [`Schedule::timesteps`]).
    pub fn timestep(&self) -> Option<i64> {
        self.schedule.timesteps.get(self.index).copied()
    }

    /// The timestep to condition the DiT on for the next step, `None` when
    /// finished.
    pub fn dit_timestep(&self) -> Option<f32> {
        self.schedule.dit_timesteps.get(self.index).copied()
    }

    /// σ of the current latent (before the next step), `None` when finished.
    pub fn sigma(&self) -> Option<f32> {
        (!self.is_finished()).then(|| self.schedule.sigmas[self.index])
    }

    /// Takes one step: `latents` holds x_i (the sample the DiT just saw) and
    /// is overwritten with x_{i+1}; `velocity` is the (guided) model output
    /// at x_i. After the last step `latents` holds the final sample.
    pub fn step(&mut self, latents: &mut [f32], velocity: &[f32]) -> Result<()> {
        if self.is_finished() {
            return Err(Error::arg(
                "steps",
                format!("all {} sampling steps were already taken", self.steps()),
            ));
        }
        if latents.len() != self.len || velocity.len() != self.len {
            return Err(Error::arg(
                "latents",
                format!(
                    "sampler built for {} elements, got latents of {} and velocity of {}",
                    self.len,
                    latents.len(),
                    velocity.len()
                ),
            ));
        }
        let i = self.index;
        match &self.plan {
            Plan::UniPc(plan) => unipc::step(
                &plan[i],
                latents,
                velocity,
                &self.m_prev,
                &mut self.m_prev2,
                &mut self.last,
            ),
            Plan::DpmPp(plan) => {
                dpmpp::step(&plan[i], latents, velocity, &self.m_prev, &mut self.m_prev2)
            }
            Plan::Euler(plan) => euler::step(&plan[i], latents, velocity),
            Plan::Lcm(plan) => {
                let noise = if plan[i].needs_noise() {
                    let seed = self
                        .noise_seed
                        .wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    crate::pipeline::gaussian_noise(seed, self.len)
                } else {
                    Vec::new()
                };
                lcm::step(&plan[i], latents, velocity, &noise)
            }
        }
        // The data prediction just written to m_prev2 becomes m_{i}; the
        // old m_{i−1} becomes m_{i−2}.
        std::mem::swap(&mut self.m_prev, &mut self.m_prev2);
        self.index += 1;
        Ok(())
    }
}

/// Whether the unconditional (negative-prompt) DiT pass is needed: only when
/// `guidance > 1` (DIFF's `do_classifier_free_guidance`, §7.6). Otherwise
/// the conditional velocity is used as is and one DiT pass per step is saved.
pub fn guidance_needs_uncond(guidance: f32) -> bool {
    guidance > 1.0
}

/// Classifier-free guidance in place, in float32 like the reference:
/// `cond[j] ← uncond[j] + g·(cond[j] − uncond[j])`.
///
/// Callers skip it (and the unconditional pass) when
/// [`guidance_needs_uncond`] is false. The guidance scale is taken as f32
/// because torch multiplies a float32 tensor by a Python float in float32.
fn check_guidance(guidance: f32) -> Result<()> {
    if guidance.is_finite() {
        Ok(())
    } else {
        Err(Error::arg(
            "--guidance-scale",
            format!("guidance scale {guidance} is not finite"),
        ))
    }
}

pub fn apply_guidance(cond: &mut [f32], uncond: &[f32], guidance: f32) -> Result<()> {
    if cond.len() != uncond.len() {
        return Err(Error::arg(
            "guidance",
            format!(
                "conditional ({}) and unconditional ({}) velocities differ in size",
                cond.len(),
                uncond.len()
            ),
        ));
    }
    check_guidance(guidance)?;
    for (c, &u) in cond.iter_mut().zip(uncond) {
        *c = u + guidance * (*c - u);
    }
    Ok(())
}

/// CFG-Zero* in place (WeichenFan/CFG-Zero-star; diffusers'
/// `ClassifierFreeZeroStarGuidance`): per sample, the optimised scale
/// `s* = ⟨v_c, v_u⟩ / (‖v_u‖² + 1e-8)` over all of that sample's elements,
/// then `cond ← v_u·s* + g·(v_c − v_u·s*)`. `cond` and `uncond` hold
/// `samples` samples back to back; returns s* per sample.
///
/// The sums are accumulated in f64 and rounded to f32 (the reference sums
/// float32 tensors; both agree to ~1e-7 relative); the update is float32,
/// in the reference's order of operations.
pub fn apply_guidance_zero_star(
    cond: &mut [f32],
    uncond: &[f32],
    guidance: f32,
    samples: usize,
) -> Result<Vec<f32>> {
    if cond.len() != uncond.len() || samples == 0 || !cond.len().is_multiple_of(samples) {
        return Err(Error::arg(
            "guidance",
            format!(
                "conditional ({}) and unconditional ({}) velocities do not split into {samples} samples",
                cond.len(),
                uncond.len()
            ),
        ));
    }
    check_guidance(guidance)?;
    let n = cond.len() / samples;
    let mut scales = Vec::with_capacity(samples);
    for (c, u) in cond.chunks_exact_mut(n).zip(uncond.chunks_exact(n)) {
        let (mut dot, mut norm) = (0f64, 0f64);
        for (&c, &u) in c.iter().zip(u) {
            dot += f64::from(c) * f64::from(u);
            norm += f64::from(u) * f64::from(u);
        }
        let s = (dot as f32) / ((norm as f32) + 1e-8);
        for (c, &u) in c.iter_mut().zip(u) {
            let us = u * s;
            *c = us + guidance * (*c - us);
        }
        scales.push(s);
    }
    Ok(scales)
}
