//! The PPM's Bradley–Terry pairwise loss (paper Eq. 4; the official `train/rm.py`).
//!
//! For a pair with rewards r⁺ (chosen) and r⁻ (rejected) the loss is `−log σ(r⁺ − r⁻)`
//! = `softplus(r⁻ − r⁺)`. Each pair carries a weight (the official code's `1/(pos·neg)`, so a
//! node with many candidates does not outweigh one with few); a batch's loss is the weighted mean,
//! which keeps the learning rate independent of the batch size (the official code sums instead).
//!
//! [`bt_loss`] is the differentiable candle version used in training; [`bt_loss_reference`] is a
//! plain f64 version with its analytic gradient, which the tests check both against and against
//! finite differences.

use candle_core::{Result, Tensor};

/// `softplus(x) = log(1 + eˣ)`, computed as `max(x, 0) + log(1 + e^{−|x|})` so that large
/// margins neither overflow nor lose the gradient.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    x.relu()? + tail
}

/// Weighted mean Bradley–Terry loss `Σᵢ wᵢ·softplus(r⁻ᵢ − r⁺ᵢ) / Σᵢ wᵢ`.
///
/// `r_pos`, `r_neg`, `weights`: `[n]` f32, the rewards of the chosen and rejected items and the
/// pair weights (> 0). Returns a scalar tensor.
pub fn bt_loss(r_pos: &Tensor, r_neg: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let per_pair = softplus(&(r_neg - r_pos)?)?;
    let num = (per_pair * weights)?.sum_all()?;
    let den = weights.sum_all()?;
    num.broadcast_div(&den)
}

/// The loss and its gradient in f64: `(loss, d loss / d r⁺, d loss / d r⁻)`, for
/// `(r⁺, r⁻, w)` triples. `d/dr⁺ = −wᵢ·σ(r⁻ᵢ − r⁺ᵢ) / Σw` and `d/dr⁻` is its negation.
pub fn bt_loss_reference(pairs: &[(f64, f64, f64)]) -> (f64, Vec<f64>, Vec<f64>) {
    let total: f64 = pairs.iter().map(|p| p.2).sum();
    if pairs.is_empty() || total <= 0.0 {
        return (0.0, vec![0.0; pairs.len()], vec![0.0; pairs.len()]);
    }
    let mut loss = 0.0;
    let mut g_pos = Vec::with_capacity(pairs.len());
    for &(p, n, w) in pairs {
        let x = n - p;
        loss += w * (x.max(0.0) + (-x.abs()).exp().ln_1p());
        let sig = 1.0 / (1.0 + (-x).exp());
        g_pos.push(-w * sig / total);
    }
    let g_neg = g_pos.iter().map(|g| -g).collect();
    (loss / total, g_pos, g_neg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn triples() -> Vec<(f64, f64, f64)> {
        // Margins from strongly right to strongly wrong, with uneven weights; |x| = 40 checks the
        // stable form (a naive log(1 + e^x) gives inf there).
        vec![
            (2.0, -1.0, 1.0),
            (0.1, 0.3, 0.5),
            (-3.0, 2.5, 0.25),
            (40.0, 0.0, 1.0),
            (-20.0, 20.0, 0.125),
            (0.0, 0.0, 1.0),
        ]
    }

    #[test]
    fn candle_loss_and_gradient_match_the_reference() {
        let t = triples();
        let dev = Device::Cpu;
        let col = |f: fn(&(f64, f64, f64)) -> f64| -> Vec<f32> {
            t.iter().map(|x| f(x) as f32).collect()
        };
        let pos = Var::from_vec(col(|x| x.0), t.len(), &dev).unwrap();
        let neg = Var::from_vec(col(|x| x.1), t.len(), &dev).unwrap();
        let w = Tensor::from_vec(col(|x| x.2), t.len(), &dev).unwrap();
        let loss = bt_loss(pos.as_tensor(), neg.as_tensor(), &w).unwrap();
        let (ref_loss, ref_gp, ref_gn) = bt_loss_reference(&t);
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - ref_loss).abs() < 1e-5, "{got} vs {ref_loss}");
        let grads = loss.backward().unwrap();
        let gp = grads.get(&pos).unwrap().to_vec1::<f32>().unwrap();
        let gn = grads.get(&neg).unwrap().to_vec1::<f32>().unwrap();
        for i in 0..t.len() {
            assert!((gp[i] as f64 - ref_gp[i]).abs() < 1e-5, "d/dpos[{i}]");
            assert!((gn[i] as f64 - ref_gn[i]).abs() < 1e-5, "d/dneg[{i}]");
        }
    }

    #[test]
    fn reference_gradient_matches_finite_differences() {
        let t = triples();
        let (_, gp, gn) = bt_loss_reference(&t);
        let h = 1e-6;
        for i in 0..t.len() {
            for side in 0..2 {
                let mut up = t.clone();
                let mut down = t.clone();
                if side == 0 {
                    up[i].0 += h;
                    down[i].0 -= h;
                } else {
                    up[i].1 += h;
                    down[i].1 -= h;
                }
                let fd = (bt_loss_reference(&up).0 - bt_loss_reference(&down).0) / (2.0 * h);
                let an = if side == 0 { gp[i] } else { gn[i] };
                assert!(
                    (fd - an).abs() < 1e-6,
                    "pair {i} side {side}: fd {fd} vs {an}"
                );
            }
        }
    }

    #[test]
    fn loss_values() {
        // One pair with equal rewards: log 2. A large right margin: ~0. A large wrong one: ~margin.
        assert!((bt_loss_reference(&[(0.0, 0.0, 1.0)]).0 - std::f64::consts::LN_2).abs() < 1e-12);
        assert!(bt_loss_reference(&[(50.0, 0.0, 1.0)]).0 < 1e-20);
        assert!((bt_loss_reference(&[(0.0, 50.0, 1.0)]).0 - 50.0).abs() < 1e-9);
        // Weights average, not sum: two identical pairs cost what one does.
        let one = bt_loss_reference(&[(0.3, 0.1, 1.0)]).0;
        let two = bt_loss_reference(&[(0.3, 0.1, 1.0), (0.3, 0.1, 1.0)]).0;
        assert!((one - two).abs() < 1e-12);
    }
}
