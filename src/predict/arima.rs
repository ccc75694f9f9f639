//! ARIMA(p, d, q) for one series, fitted by the Hannan-Rissanen two-stage regression: a long
//! autoregression estimates the innovations, then the differenced series is regressed on its own
//! `p` lags, the `q` lagged innovations and a constant. Forecasts set future innovations to 0 and
//! undo the differencing.

/// ARIMA orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArimaOrder {
    /// Autoregressive lags.
    pub p: usize,
    /// Differencing passes.
    pub d: usize,
    /// Moving-average lags.
    pub q: usize,
}

impl ArimaOrder {
    /// The shortest series [`Arima::fit`] can fit with these orders.
    pub fn min_series(&self) -> usize {
        let lags = self.p.max(self.q);
        self.d + (lags + 5).max(10) + lags + 10
    }
}

/// A fitted model.
#[derive(Debug, Clone)]
pub struct Arima {
    /// The orders actually fitted (lower than asked when the asked ones were not stationary
    /// or not invertible on this series).
    pub order: ArimaOrder,
    /// Constant of the differenced series (0 unless fitted with one).
    pub constant: f64,
    /// AR coefficients `phi_1..phi_p`.
    pub phi: Vec<f64>,
    /// MA coefficients `theta_1..theta_q`.
    pub theta: Vec<f64>,
    /// Differenced series and its innovations (for forecasting).
    z: Vec<f64>,
    e: Vec<f64>,
    /// The last value of each differencing level, to undo it.
    tails: Vec<f64>,
}

/// Ridge added to the normal equations so flat or collinear windows stay solvable.
const RIDGE: f64 = 1e-9;

/// The regression design: which columns `[1, z lags, e lags]` are present.
#[derive(Clone, Copy)]
struct Design {
    constant: bool,
    p: usize,
    q: usize,
}

impl Design {
    fn cols(&self) -> usize {
        self.constant as usize + self.p + self.q
    }

    fn fill(&self, row: &mut [f64], z: &[f64], e: &[f64], t: usize) {
        let c = self.constant as usize;
        if self.constant {
            row[0] = 1.0;
        }
        for i in 0..self.p {
            row[c + i] = z[t - 1 - i];
        }
        for i in 0..self.q {
            row[c + self.p + i] = e[t - 1 - i];
        }
    }
}

impl Arima {
    /// Fits `order` to `y`, with a constant in the differenced series when `constant` (the
    /// usual choice is a constant for `d = 0` only: with `d >= 1` it is a drift that grows
    /// linearly over the horizon). `None` when `y` is too short for the orders.
    ///
    /// A fit whose AR part is not stationary or whose MA part is not invertible would forecast
    /// explosively; it is refitted without the MA part, then as a plain (differenced) mean.
    pub fn fit(y: &[f64], order: ArimaOrder, constant: bool) -> Option<Self> {
        let mut z = y.to_vec();
        let mut tails = Vec::with_capacity(order.d);
        for _ in 0..order.d {
            tails.push(*z.last()?);
            z = z.windows(2).map(|w| w[1] - w[0]).collect();
        }
        let long = (order.p.max(order.q) + 5).max(10);
        if y.len() < order.min_series() {
            return None;
        }
        // Stage 1: innovations from a long AR (valid from row `long` on).
        let long_ar = Design {
            constant: true,
            p: long,
            q: 0,
        };
        let zeros = vec![0.0; z.len()];
        let innovations = if order.q > 0 {
            let coef = regress(&z, &zeros, long_ar, long)?;
            residuals(&z, &zeros, &coef, long_ar)
        } else {
            zeros.clone()
        };
        // Stage 2: z_t on [1, z_{t-1..t-p}, e_{t-1..t-q}], on rows whose lags are all valid.
        let candidates = [(order.p, order.q), (order.p, 0), (0, 0)];
        for (p, q) in candidates {
            let design = Design { constant, p, q };
            let from = if q > 0 { long + q } else { p };
            let Some(coef) = regress(&z, &innovations, design, from) else {
                continue;
            };
            let c = constant as usize;
            let phi = coef[c..c + p].to_vec();
            let theta = coef[c + p..].to_vec();
            let minus_theta: Vec<f64> = theta.iter().map(|t| -t).collect();
            if !(is_stationary(&phi) && is_stationary(&minus_theta)) {
                continue;
            }
            let e = residuals(&z, &innovations, &coef, design);
            return Some(Arima {
                order: ArimaOrder { p, d: order.d, q },
                constant: if constant { coef[0] } else { 0.0 },
                phi,
                theta,
                z,
                e,
                tails,
            });
        }
        None
    }

    /// Forecasts the next `horizon` values of the original series.
    pub fn forecast(&self, horizon: usize) -> Vec<f64> {
        let mut z = self.z.clone();
        let mut e = self.e.clone();
        for _ in 0..horizon {
            let t = z.len();
            let mut v = self.constant;
            for (i, phi) in self.phi.iter().enumerate() {
                v += phi * z[t - 1 - i];
            }
            for (i, theta) in self.theta.iter().enumerate() {
                v += theta * e[t - 1 - i];
            }
            z.push(v);
            e.push(0.0);
        }
        let mut out: Vec<f64> = z[self.z.len()..].to_vec();
        // Undo the differencing, innermost level first.
        for &last in self.tails.iter().rev() {
            let mut level = last;
            for v in out.iter_mut() {
                level += *v;
                *v = level;
            }
        }
        out
    }
}

/// True when `1 - phi_1 z - ... - phi_p z^p` has all its roots outside the unit circle, by the
/// step-down (Schur-Cohn) recursion: every partial autocorrelation must be below 1 in size.
pub fn is_stationary(phi: &[f64]) -> bool {
    let mut a = phi.to_vec();
    while let Some(&last) = a.last() {
        if !last.is_finite() || last.abs() >= 1.0 {
            return false;
        }
        let k = a.len();
        let denom = 1.0 - last * last;
        a = (0..k - 1)
            .map(|j| (a[j] + last * a[k - 2 - j]) / denom)
            .collect();
    }
    true
}

/// Least squares of `z_t` on the design's columns over rows `t >= from`.
fn regress(z: &[f64], e: &[f64], design: Design, from: usize) -> Option<Vec<f64>> {
    let start = design.p.max(design.q).max(from);
    let cols = design.cols();
    if cols == 0 {
        return Some(Vec::new());
    }
    if z.len() <= start + cols {
        return None;
    }
    let mut xtx = vec![0.0; cols * cols];
    let mut xty = vec![0.0; cols];
    let mut row = vec![0.0; cols];
    for t in start..z.len() {
        design.fill(&mut row, z, e, t);
        for i in 0..cols {
            xty[i] += row[i] * z[t];
            for j in 0..cols {
                xtx[i * cols + j] += row[i] * row[j];
            }
        }
    }
    for i in 0..cols {
        xtx[i * cols + i] += RIDGE * (1.0 + xtx[i * cols + i]);
    }
    solve(xtx, xty, cols)
}

/// In-sample innovations of the fitted regression (0 where the lags do not exist).
fn residuals(z: &[f64], e: &[f64], coef: &[f64], design: Design) -> Vec<f64> {
    let start = design.p.max(design.q);
    let mut row = vec![0.0; coef.len()];
    (0..z.len())
        .map(|t| {
            if t < start {
                return 0.0;
            }
            design.fill(&mut row, z, e, t);
            z[t] - row.iter().zip(coef).map(|(a, b)| a * b).sum::<f64>()
        })
        .collect()
}

/// Gaussian elimination with partial pivoting on the `n x n` system `a x = b`.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if a[pivot * n + col].abs() < 1e-300 {
            return None;
        }
        if pivot != col {
            for k in 0..n {
                a.swap(col * n + k, pivot * n + k);
            }
            b.swap(col, pivot);
        }
        for row in col + 1..n {
            let f = a[row * n + col] / a[col * n + col];
            for k in col..n {
                a[row * n + k] -= f * a[col * n + k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row * n + k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row * n + row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_series_is_the_shortest_series_that_fits() {
        for order in [
            ArimaOrder { p: 5, d: 1, q: 5 },
            ArimaOrder { p: 2, d: 0, q: 0 },
            ArimaOrder { p: 1, d: 2, q: 3 },
        ] {
            let n = order.min_series();
            let y: Vec<f64> = noise(n, 11).iter().map(|v| 0.5 + 0.01 * v).collect();
            assert!(Arima::fit(&y[1..], order, true).is_none(), "{order:?}");
            assert!(Arima::fit(&y, order, true).is_some(), "{order:?}");
        }
    }

    fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::test_rng::TestRng::new(seed);
        // Sum of 12 uniforms - 6: close enough to N(0, 1) for these tests.
        (0..n)
            .map(|_| (0..12).map(|_| rng.uniform()).sum::<f64>() - 6.0)
            .collect()
    }

    #[test]
    fn recovers_ar1_and_arma11_coefficients() {
        let eps = noise(20_000, 1);
        let mut y = vec![0.0; eps.len()];
        for t in 1..y.len() {
            y[t] = 0.7 * y[t - 1] + eps[t];
        }
        let m = Arima::fit(&y, ArimaOrder { p: 1, d: 0, q: 0 }, true).unwrap();
        assert!((m.phi[0] - 0.7).abs() < 0.02, "phi {}", m.phi[0]);

        let mut y = vec![0.0; eps.len()];
        for t in 1..y.len() {
            y[t] = 0.5 * y[t - 1] + eps[t] + 0.3 * eps[t - 1];
        }
        let m = Arima::fit(&y, ArimaOrder { p: 1, d: 0, q: 1 }, true).unwrap();
        assert!((m.phi[0] - 0.5).abs() < 0.05, "phi {}", m.phi[0]);
        assert!((m.theta[0] - 0.3).abs() < 0.05, "theta {}", m.theta[0]);
    }

    #[test]
    fn stationarity_by_step_down() {
        assert!(is_stationary(&[0.5]) && !is_stationary(&[1.0]) && !is_stationary(&[-1.2]));
        // 1 - 1.5z + 0.56z^2 = (1 - 0.7z)(1 - 0.8z): stationary; (1 - 0.5z)(1 - 1.25z) is not.
        assert!(is_stationary(&[1.5, -0.56]));
        assert!(!is_stationary(&[1.75, -0.625]));
        assert!(is_stationary(&[]));
    }

    #[test]
    fn forecasts_constant_drift_and_periodic_series() {
        let flat = vec![0.25; 200];
        let f = Arima::fit(&flat, ArimaOrder { p: 2, d: 1, q: 1 }, false)
            .unwrap()
            .forecast(50);
        assert!(f.iter().all(|v| (v - 0.25).abs() < 1e-6), "{f:?}");

        let line: Vec<f64> = (0..300).map(|t| 0.1 + 0.001 * t as f64).collect();
        let f = Arima::fit(&line, ArimaOrder { p: 1, d: 1, q: 0 }, true)
            .unwrap()
            .forecast(100);
        for (h, v) in f.iter().enumerate() {
            let want = 0.1 + 0.001 * (300 + h) as f64;
            assert!((v - want).abs() < 1e-6, "h {h}: {v} vs {want}");
        }

        // A sinusoid is an exact AR(2): x_t = 2 cos(w) x_{t-1} - x_{t-2}. Over two periods the
        // fitted model must track it far better than the series mean does.
        let eps = noise(600, 2);
        let w = std::f64::consts::TAU / 25.0;
        let series: Vec<f64> = (0..600)
            .map(|t| 0.5 + 0.1 * (w * t as f64).sin() + 0.0005 * eps[t])
            .collect();
        let f = Arima::fit(&series[..500], ArimaOrder { p: 2, d: 0, q: 0 }, true)
            .unwrap()
            .forecast(50);
        let err = |pred: &dyn Fn(usize) -> f64| {
            (0..50)
                .map(|h| (pred(h) - series[500 + h]).abs())
                .sum::<f64>()
                / 50.0
        };
        let arima = err(&|h| f[h]);
        let flat = err(&|_| 0.5);
        assert!(arima < 0.2 * flat, "arima {arima}, mean forecast {flat}");
    }
}
