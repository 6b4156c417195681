//! Helpers shared by the tests: float comparison and gradient checks against central finite
//! differences.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Asserts `got` and `want` agree element-wise within `tol` (absolute).
pub fn check(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tol {tol})\n got  {got:?}\n want {want:?}"
        );
    }
}

/// Asserts one value within `tol`.
pub fn check1(got: f64, want: f64, tol: f64, what: &str) {
    check(&[got], &[want], tol, what);
}

/// A tensor's values as `f64`, flattened.
pub fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// A scalar tensor's value.
pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Row-major points on the unit circle at these angles (degrees), as `[N, 2]` `f64`.
pub fn circle(angles_deg: &[f64]) -> Result<Tensor> {
    let data: Vec<f64> = angles_deg
        .iter()
        .flat_map(|a| {
            let r = a.to_radians();
            [r.cos(), r.sin()]
        })
        .collect();
    Ok(Tensor::from_vec(data, (angles_deg.len(), 2), &Device::Cpu)?)
}

/// `n` values uniform in `[-1, 1)` from a fixed seed.
pub fn uniform(seed: u64, n: usize) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Compares the autograd gradient of the scalar `f(x)` at `x0` with central finite differences
/// (step 1e-6, in `f64`).
pub fn grad_check(
    x0: &[f64],
    shape: &[usize],
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    tol: f64,
    what: &str,
) -> Result<()> {
    let dev = Device::Cpu;
    let var = Var::from_tensor(&Tensor::from_vec(x0.to_vec(), shape, &dev)?)?;
    let loss = f(var.as_tensor())?;
    assert_eq!(loss.rank(), 0, "{what}: the loss must be a scalar");
    let grads = loss.backward()?;
    let got = match grads.get(var.as_tensor()) {
        Some(g) => values(g)?,
        None => vec![0.0; x0.len()],
    };
    let h = 1e-6;
    let mut want = Vec::with_capacity(x0.len());
    for i in 0..x0.len() {
        let (mut plus, mut minus) = (x0.to_vec(), x0.to_vec());
        plus[i] += h;
        minus[i] -= h;
        let fp = scalar(&f(&Tensor::from_vec(plus, shape, &dev)?)?)?;
        let fm = scalar(&f(&Tensor::from_vec(minus, shape, &dev)?)?)?;
        want.push((fp - fm) / (2.0 * h));
    }
    check(&got, &want, tol, what);
    assert!(
        got.iter().any(|g| g.abs() > 1e-6),
        "{what}: the gradient is all zero, the check proves nothing"
    );
    Ok(())
}
