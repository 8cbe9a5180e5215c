//! The decision rules of TeaCache and MagCache, worked out for a whole
//! schedule before the loop (`docs/WAN.md` §cache). Host arithmetic in
//! float64; the tensor means are sums in float64 divided by the count.

/// One call's decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The block stack runs.
    pub computed: bool,
    /// The value compared with the threshold, where one was compared.
    pub indicator: Option<f64>,
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).sum();
    s / a.len().max(1) as f64
}

fn mean_abs(a: &[f32]) -> f64 {
    a.iter().map(|x| f64::from(x.abs())).sum::<f64>() / a.len().max(1) as f64
}

/// `numpy.poly1d(c)(x)`: highest power first, Horner.
pub fn poly1d(c: &[f64], x: f64) -> f64 {
    c.iter().fold(0.0, |acc, &ci| acc * x + ci)
}

/// TeaCache4Wan2.1 for `branch` (0 cond, 1 uncond) over the steps whose
/// indicator tensors are `m[step]` (`e`, or `e0` with `ret`): the calls
/// `cnt = 2·step + branch` below the retention calls (2, or 10 with
/// `ret`) or from the cutoff on (`2N − 2`, or `2N` with `ret`) compute and
/// reset the accumulator; every other call adds the rescaled relative L1
/// change of its indicator against the branch's previous call and skips
/// while the sum stays under `threshold`, else computes and resets. The
/// previous indicator moves on at every call.
pub fn teacache_schedule(
    coefficients: &[f64; 5],
    threshold: f64,
    ret: bool,
    m: &[&[f32]],
    branch: usize,
) -> Vec<Decision> {
    let n = m.len();
    let (ret_calls, cutoff) = if ret {
        (10, 2 * n)
    } else {
        (2, (2 * n).saturating_sub(2))
    };
    let mut acc = 0f64;
    let mut prev: Option<&[f32]> = None;
    let mut out = Vec::with_capacity(n);
    for (step, cur) in m.iter().enumerate() {
        let cnt = 2 * step + branch;
        let d = match prev {
            // The first call has nothing cached: it computes (the
            // reference forces it through the retention calls).
            Some(p) if !(cnt < ret_calls || cnt >= cutoff) => {
                let rel = mean_abs_diff(cur, p) / mean_abs(p);
                acc += poly1d(coefficients, rel);
                let ind = acc;
                // Skip while under the threshold (a NaN computes).
                let skip = acc < threshold;
                let computed = !skip;
                if computed {
                    acc = 0.0;
                }
                Decision {
                    computed,
                    indicator: Some(ind),
                }
            }
            _ => {
                acc = 0.0;
                Decision {
                    computed: true,
                    indicator: None,
                }
            }
        };
        out.push(d);
        prev = Some(cur);
    }
    out
}

/// MagCache4Wan2.1 for `branch` over `steps` steps with `ratios` (2 per
/// step, interleaved): calls `cnt < ⌊2N · retention⌋` compute; every other
/// call multiplies the accumulated ratio by `ratios[cnt]`, counts a step
/// and adds `|1 − ratio|` to the accumulated error, and skips while the
/// error stays under `threshold` and the count at most `k`, else computes
/// and resets all three. The indicator is the accumulated error.
pub fn magcache_schedule(
    ratios: &[f64],
    threshold: f64,
    k: u32,
    retention: f64,
    steps: usize,
    branch: usize,
) -> Vec<Decision> {
    // Python's int() of the float product (truncation; both are ≥ 0).
    let retention_calls = ((2 * steps) as f64 * retention) as usize;
    let (mut ratio, mut count, mut err) = (1f64, 0u32, 0f64);
    let mut out = Vec::with_capacity(steps);
    for step in 0..steps {
        let cnt = 2 * step + branch;
        // The branch's first call has no residual to reuse: it computes
        // whatever the retention (the reference would fail there).
        if cnt < retention_calls || step == 0 {
            out.push(Decision {
                computed: true,
                indicator: None,
            });
            continue;
        }
        ratio *= ratios.get(cnt).copied().unwrap_or(1.0);
        count += 1;
        err += (1.0 - ratio).abs();
        let ind = err;
        let skip = err < threshold && count <= k;
        if !skip {
            (ratio, count, err) = (1.0, 0, 0.0);
        }
        out.push(Decision {
            computed: !skip,
            indicator: Some(ind),
        });
    }
    out
}

/// A MagCache table for `steps` steps: as it is when it has 2 entries per
/// step, else each branch's column resampled by nearest neighbour as the
/// reference does (index `round(i·(L−1)/(N−1))`, ties to even; one step
/// takes the last entry) and interleaved again.
pub fn resample_mag_ratios(table: &[f64], steps: usize) -> Vec<f64> {
    if table.len() == 2 * steps {
        return table.to_vec();
    }
    let column = |b: usize| -> Vec<f64> { table.iter().skip(b).step_by(2).copied().collect() };
    let nearest = |src: &[f64]| -> Vec<f64> {
        let Some(&last) = src.last() else {
            return vec![1.0; steps];
        };
        if steps == 1 {
            return vec![last];
        }
        let scale = (src.len() - 1) as f64 / (steps - 1) as f64;
        (0..steps)
            .map(|i| {
                let j = (i as f64 * scale).round_ties_even() as usize;
                src[j.min(src.len() - 1)]
            })
            .collect()
    };
    let (c, u) = (nearest(&column(0)), nearest(&column(1)));
    c.into_iter().zip(u).flat_map(|(a, b)| [a, b]).collect()
}
