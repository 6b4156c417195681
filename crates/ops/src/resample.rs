//! Area resampling of image batches to another size, as two matrix products.

use candle_core::{bail, Device, Result, Tensor};

/// The `[to, from]` matrix of area resampling along one axis: output pixel `j` averages the
/// input interval `[j·s, (j+1)·s)` with `s = from / to`, each input pixel weighted by how much
/// of it the interval covers. Every row sums to 1; `from == to` gives the identity.
pub fn area_weights(from: usize, to: usize) -> Result<Vec<f32>> {
    if from == 0 || to == 0 {
        bail!("area_weights: sizes must be positive, got {from} → {to}")
    }
    let s = from as f64 / to as f64;
    let mut m = vec![0f32; to * from];
    for j in 0..to {
        let (lo, hi) = (j as f64 * s, (j + 1) as f64 * s);
        let first = lo.floor() as usize;
        let last = (hi.ceil() as usize).min(from);
        for i in first..last {
            let overlap = (hi.min((i + 1) as f64) - lo.max(i as f64)).max(0.0);
            m[j * from + i] = (overlap / s) as f32;
        }
    }
    Ok(m)
}

/// Area resampling of `[N, C, H, W]` batches from one size to another (see [`area_weights`]).
#[derive(Debug, Clone)]
pub struct AreaResize {
    from: (usize, usize),
    to: (usize, usize),
    /// `[W, Wo]`: resamples rows.
    cols: Tensor,
    /// `[H, Ho]`: resamples columns (applied to the transposed image).
    rows: Tensor,
}

impl AreaResize {
    /// A resampler from `(height, width)` `from` to `to`.
    pub fn new(from: (usize, usize), to: (usize, usize), device: &Device) -> Result<Self> {
        let cols = Tensor::from_vec(area_weights(from.1, to.1)?, (to.1, from.1), device)?.t()?;
        let rows = Tensor::from_vec(area_weights(from.0, to.0)?, (to.0, from.0), device)?.t()?;
        Ok(Self {
            from,
            to,
            cols: cols.contiguous()?,
            rows: rows.contiguous()?,
        })
    }

    /// # Shapes
    /// `xs`: `[N, C, from.0, from.1]` f32 → `[N, C, to.0, to.1]`.
    pub fn apply(&self, xs: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = match xs.dims() {
            &[n, c, h, w] if (h, w) == self.from => (n, c, h, w),
            dims => bail!(
                "area_resize: expected [N, C, {}, {}], got {dims:?}",
                self.from.0,
                self.from.1
            ),
        };
        let (ho, wo) = self.to;
        let y = xs.reshape((n * c, h, w))?.broadcast_matmul(&self.cols)?; // [B, H, Wo]
        let y = y
            .transpose(1, 2)?
            .contiguous()?
            .broadcast_matmul(&self.rows)?; // [B, Wo, Ho]
        y.transpose(1, 2)?.contiguous()?.reshape((n, c, ho, wo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_weights_average_the_covered_pixels() -> Result<()> {
        // 4 → 2: pairs averaged.
        assert_eq!(
            area_weights(4, 2)?,
            vec![0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5]
        );
        // 3 → 2: output 0 covers [0, 1.5): all of pixel 0 and half of pixel 1.
        let m = area_weights(3, 2)?;
        let want = [2.0 / 3.0, 1.0 / 3.0, 0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0];
        for (a, b) in m.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{m:?}");
        }
        // Same size: the identity; every row of a 40 → 28 map sums to 1.
        assert_eq!(
            area_weights(3, 3)?,
            vec![1., 0., 0., 0., 1., 0., 0., 0., 1.]
        );
        for row in area_weights(40, 28)?.chunks(40) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        assert!(area_weights(0, 3).is_err());
        Ok(())
    }

    #[test]
    fn area_resize_of_a_batch_matches_block_means() -> Result<()> {
        // 2 images × 2 channels of 4×6 → 2×3: each output is the mean of a 2×2 block.
        let dev = Device::Cpu;
        let v: Vec<f32> = (0..2 * 2 * 4 * 6).map(|i| (i * 7 % 11) as f32).collect();
        let xs = Tensor::from_vec(v.clone(), (2, 2, 4, 6), &dev)?;
        let r = AreaResize::new((4, 6), (2, 3), &dev)?;
        let y = r.apply(&xs)?;
        assert_eq!(y.dims(), &[2, 2, 2, 3]);
        let y = y.flatten_all()?.to_vec1::<f32>()?;
        for p in 0..4 {
            for i in 0..2 {
                for j in 0..3 {
                    let at = |a: usize, b: usize| v[p * 24 + a * 6 + b];
                    let want = (at(2 * i, 2 * j)
                        + at(2 * i, 2 * j + 1)
                        + at(2 * i + 1, 2 * j)
                        + at(2 * i + 1, 2 * j + 1))
                        / 4.0;
                    assert!((y[p * 6 + i * 3 + j] - want).abs() < 1e-5);
                }
            }
        }
        assert!(r
            .apply(&Tensor::zeros((1, 1, 4, 5), candle_core::DType::F32, &dev)?)
            .is_err());
        Ok(())
    }
}
