//! Separable CMA-ES (Ros and Hansen, 2008): the evolution strategy's search
//! distribution `N(mean, sigma² · diag(c))`, whose step size `sigma` and
//! per-weight variances `c` adapt to the selected steps (cumulative step-size
//! adaptation and the rank-one + rank-mu update of the diagonal), with the
//! default parameters of Hansen's tutorial ("The CMA Evolution Strategy",
//! 2016) and the diagonal learning rates scaled by `(n + 2) / 3`.
//!
//! The state is plain `f64` and every update is a fixed sequence of
//! operations, so a run depends only on its inputs; [`SepCma`] is
//! checkpointed whole (the `population/cma` node).

/// The state of the search distribution.
#[derive(Clone, Debug, PartialEq)]
pub struct SepCma {
    /// The distribution's mean.
    pub mean: Vec<f64>,
    /// The diagonal of the covariance matrix.
    pub diag: Vec<f64>,
    /// The step size.
    pub sigma: f64,
    /// The conjugate evolution path (step-size adaptation).
    pub p_sigma: Vec<f64>,
    /// The evolution path (rank-one update).
    pub p_c: Vec<f64>,
    /// Updates done.
    pub updates: u64,
}

/// Learning rates and recombination weights for a dimension and population.
struct Params {
    weights: Vec<f64>,
    mu_eff: f64,
    c_sigma: f64,
    d_sigma: f64,
    c_c: f64,
    c_1: f64,
    c_mu: f64,
    chi_n: f64,
}

impl Params {
    fn new(n: usize, mu: usize) -> Params {
        let nf = n as f64;
        let raw: Vec<f64> = (1..=mu)
            .map(|i| (mu as f64 + 0.5).ln() - (i as f64).ln())
            .collect();
        let sum: f64 = raw.iter().sum();
        let weights: Vec<f64> = raw.iter().map(|w| w / sum).collect();
        let mu_eff = 1.0 / weights.iter().map(|w| w * w).sum::<f64>();
        let c_sigma = (mu_eff + 2.0) / (nf + mu_eff + 5.0);
        let d_sigma = 1.0 + 2.0 * (((mu_eff - 1.0) / (nf + 1.0)).sqrt() - 1.0).max(0.0) + c_sigma;
        let c_c = (4.0 + mu_eff / nf) / (nf + 4.0 + 2.0 * mu_eff / nf);
        let sep = (nf + 2.0) / 3.0;
        let c_1 = (sep * 2.0 / ((nf + 1.3).powi(2) + mu_eff)).min(1.0);
        let c_mu = (sep * 2.0 * (mu_eff - 2.0 + 1.0 / mu_eff) / ((nf + 2.0).powi(2) + mu_eff))
            .min(1.0 - c_1);
        let chi_n = nf.sqrt() * (1.0 - 1.0 / (4.0 * nf) + 1.0 / (21.0 * nf * nf));
        Params {
            weights,
            mu_eff,
            c_sigma,
            d_sigma,
            c_c,
            c_1,
            c_mu,
            chi_n,
        }
    }
}

impl SepCma {
    /// A distribution around `mean` with step size `sigma` and unit variances.
    #[must_use]
    pub fn new(mean: Vec<f64>, sigma: f64) -> SepCma {
        let n = mean.len();
        SepCma {
            mean,
            diag: vec![1.0; n],
            sigma,
            p_sigma: vec![0.0; n],
            p_c: vec![0.0; n],
            updates: 0,
        }
    }

    /// The distribution over `times` copies of the coordinates, each copy's
    /// mean and variances those of `self`, with the step size kept and the
    /// evolution paths started afresh (the next update is the first of a new
    /// search in the larger space).
    #[must_use]
    pub fn repeated(&self, times: usize) -> SepCma {
        let n = self.mean.len() * times;
        let mut split = SepCma::new(
            self.mean.iter().copied().cycle().take(n).collect(),
            self.sigma,
        );
        split.diag = self.diag.iter().copied().cycle().take(n).collect();
        split
    }

    /// The candidate for the standard normal sample `z`: `mean + sigma·sqrt(c)·z`.
    #[must_use]
    pub fn candidate(&self, z: &[f64]) -> Vec<f64> {
        self.mean
            .iter()
            .zip(&self.diag)
            .zip(z)
            .map(|((m, c), z)| m + self.sigma * c.sqrt() * z)
            .collect()
    }

    /// The mean's root mean square.
    #[must_use]
    pub fn mean_rms(&self) -> f64 {
        (self.mean.iter().map(|v| v * v).sum::<f64>() / self.mean.len() as f64).sqrt()
    }

    /// Rescales the mean to root mean square `rms` (nothing while it is
    /// zero); the step size, variances and paths stay as they are, so the
    /// step relative to the mean is what they say.
    pub fn rescale_mean(&mut self, rms: f64) {
        let now = self.mean_rms();
        if now > 0.0 {
            let s = rms / now;
            self.mean.iter_mut().for_each(|m| *m *= s);
        }
    }

    /// Removes from the sample `z` the part of its step `sqrt(c)·z` along the
    /// mean (nothing while the mean is zero), so that the candidate differs
    /// from the mean in direction only: where the scale of the weights does
    /// not matter (a 1-ply player; see `es_normalize`), a step along the
    /// mean only dilutes the others, and selection would keep favouring it.
    pub fn tangent(&self, z: &mut [f64]) {
        let norm = self.mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            return;
        }
        let along: f64 = z
            .iter()
            .zip(&self.diag)
            .zip(&self.mean)
            .map(|((z, c), m)| z * c.sqrt() * m / norm)
            .sum();
        for ((z, c), m) in z.iter_mut().zip(&self.diag).zip(&self.mean) {
            *z -= along * m / norm / c.sqrt();
        }
    }

    /// One update from the standard normal samples of the selected
    /// candidates, best first; the mean moves `mean_rate` (c_m, 1 in the
    /// standard algorithm) of the way to the recombined candidate, which
    /// averages the selection noise of a noisy fitness over generations.
    pub fn update(&mut self, selected_z: &[&[f64]], mean_rate: f64) {
        let n = self.mean.len();
        let p = Params::new(n, selected_z.len());
        // z_w = sum w_i z_i; y_w = sqrt(c) z_w.
        let mut z_w = vec![0.0; n];
        for (w, z) in p.weights.iter().zip(selected_z) {
            for (a, b) in z_w.iter_mut().zip(z.iter()) {
                *a += w * b;
            }
        }
        let sd: Vec<f64> = self.diag.iter().map(|c| c.sqrt()).collect();
        let y_w: Vec<f64> = z_w.iter().zip(&sd).map(|(z, s)| z * s).collect();
        for (m, y) in self.mean.iter_mut().zip(&y_w) {
            *m += mean_rate * self.sigma * y;
        }
        let ps_gain = (p.c_sigma * (2.0 - p.c_sigma) * p.mu_eff).sqrt();
        for (ps, z) in self.p_sigma.iter_mut().zip(&z_w) {
            *ps = (1.0 - p.c_sigma) * *ps + ps_gain * z;
        }
        self.updates += 1;
        let ps_norm = self.p_sigma.iter().map(|v| v * v).sum::<f64>().sqrt();
        let damp = (1.0 - (1.0 - p.c_sigma).powf(2.0 * self.updates as f64)).sqrt();
        let h_sigma = ps_norm / damp < (1.4 + 2.0 / (n as f64 + 1.0)) * p.chi_n;
        let pc_gain = if h_sigma {
            (p.c_c * (2.0 - p.c_c) * p.mu_eff).sqrt()
        } else {
            0.0
        };
        for (pc, y) in self.p_c.iter_mut().zip(&y_w) {
            *pc = (1.0 - p.c_c) * *pc + pc_gain * y;
        }
        let lost = if h_sigma {
            0.0
        } else {
            p.c_1 * p.c_c * (2.0 - p.c_c)
        };
        for i in 0..n {
            let rank_mu: f64 = p
                .weights
                .iter()
                .zip(selected_z)
                .map(|(w, z)| w * z[i] * z[i] * self.diag[i])
                .sum();
            self.diag[i] = (1.0 - p.c_1 - p.c_mu + lost) * self.diag[i]
                + p.c_1 * self.p_c[i] * self.p_c[i]
                + p.c_mu * rank_mu;
        }
        self.sigma *= ((p.c_sigma / p.d_sigma) * (ps_norm / p.chi_n - 1.0))
            .min(1.0)
            .exp();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::train::evolve::gaussian;

    /// Minimises `f` with (mu/mu_w, lambda) sep-CMA-ES for `gens` generations.
    fn minimise(f: impl Fn(&[f64]) -> f64, n: usize, gens: u64) -> SepCma {
        let (mu, lambda) = (5, 10);
        let mut es = SepCma::new(vec![1.0; n], 0.5);
        for g in 0..gens {
            let zs: Vec<Vec<f64>> = (0..lambda)
                .map(|k| {
                    let mut rng = Rng::new(1, (g << 8) | k);
                    (0..n).map(|_| gaussian(&mut rng)).collect()
                })
                .collect();
            let fit: Vec<f64> = zs.iter().map(|z| f(&es.candidate(z))).collect();
            let mut order: Vec<usize> = (0..lambda as usize).collect();
            order.sort_by(|&a, &b| fit[a].total_cmp(&fit[b]));
            let sel: Vec<&[f64]> = order[..mu].iter().map(|&i| zs[i].as_slice()).collect();
            es.update(&sel, 1.0);
        }
        es
    }

    #[test]
    fn it_finds_the_minimum_of_a_badly_scaled_quadratic() {
        // Scales 1 to 1e3 per axis: the diagonal has to learn them.
        let f = |x: &[f64]| {
            x.iter()
                .enumerate()
                .map(|(i, v)| 10f64.powf(3.0 * i as f64 / 9.0) * v * v)
                .sum()
        };
        let es = minimise(f, 10, 400);
        assert!(f(&es.mean) < 1e-8, "f = {}", f(&es.mean));
        // The learnt standard deviations follow the axes' scales.
        assert!(es.diag[0] > 100.0 * es.diag[9], "{:?}", es.diag);
        // A step size that only ever grew would not converge.
        assert!(es.sigma < 0.5);
        assert_eq!(minimise(f, 10, 50), minimise(f, 10, 50));
    }

    #[test]
    fn rescaling_sets_the_means_rms_and_keeps_its_direction() {
        let mut es = SepCma::new(vec![0.0; 4], 0.1);
        es.rescale_mean(1.0);
        assert_eq!(es.mean, vec![0.0; 4], "a zero mean has no direction");
        es.mean = vec![3.0, -4.0, 0.0, 0.0];
        es.rescale_mean(1.0);
        assert!((es.mean_rms() - 1.0).abs() < 1e-12);
        assert!((es.mean[0] / es.mean[1] + 0.75).abs() < 1e-12);
        assert_eq!(es.sigma, 0.1);
    }

    #[test]
    fn a_tangent_sample_steps_orthogonally_to_the_mean() {
        let mut es = SepCma::new(vec![0.0; 3], 0.1);
        let mut z = vec![1.0, 2.0, -1.0];
        es.tangent(&mut z);
        assert_eq!(z, vec![1.0, 2.0, -1.0], "a zero mean has no direction");
        es.mean = vec![1.0, 2.0, 0.5];
        es.diag = vec![4.0, 0.25, 1.0];
        es.tangent(&mut z);
        let step: Vec<f64> = z.iter().zip(&es.diag).map(|(z, c)| z * c.sqrt()).collect();
        let along: f64 = step.iter().zip(&es.mean).map(|(a, b)| a * b).sum();
        assert!(along.abs() < 1e-12, "{along}");
        // The part across the mean is kept: (2, 1, -1) less its projection.
        assert!((step[0] - (2.0 - 3.5 / 5.25)).abs() < 1e-12, "{step:?}");
    }
}
