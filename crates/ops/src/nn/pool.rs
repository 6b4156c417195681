//! Max pooling (floor mode, no padding, any kernel and stride) with an optional fused ReLU, as a
//! candle custom op with its own CPU forward and backward kernels.
//!
//! The backward pass sends each output gradient to the *first* maximum of its window in row-major
//! order (PyTorch's tie rule), in full (candle 0.11's own backward divides it by the window size).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, rank4};

/// Geometry of one pooling call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pool {
    pub kernel: usize,
    pub stride: usize,
    pub relu: bool,
}

impl Pool {
    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h - self.kernel) / self.stride + 1,
            (w - self.kernel) / self.stride + 1,
        )
    }

    /// Index (within the plane) of the first maximum of the window of output `(oy, ox)`.
    #[inline]
    fn argmax(&self, plane: &[f32], w: usize, oy: usize, ox: usize) -> (usize, f32) {
        let y0 = oy * self.stride;
        let x0 = ox * self.stride;
        let mut best = y0 * w + x0;
        let mut bv = plane[best];
        for ky in 0..self.kernel {
            let row = (y0 + ky) * w + x0;
            for kx in 0..self.kernel {
                let v = plane[row + kx];
                // Strict `>` keeps the first maximum in row-major order.
                if v > bv {
                    bv = v;
                    best = row + kx;
                }
            }
        }
        (best, bv)
    }

    fn forward(&self, x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
        let (ho, wo) = self.out_hw(h, w);
        let mut y = super::zeroed::<f32>(planes * ho * wo);
        let relu = self.relu;
        let k = self.kernel;
        let s = self.stride;
        y.par_chunks_mut((ho * wo).max(1))
            .zip(x.par_chunks((h * w).max(1)))
            .for_each(|(yp, xp)| {
                super::wide(
                    #[inline(always)]
                    || {
                        for oy in 0..ho {
                            for ox in 0..wo {
                                let mut m = f32::NEG_INFINITY;
                                for ky in 0..k {
                                    let row = &xp[(oy * s + ky) * w + ox * s..][..k];
                                    for &v in row {
                                        m = if v > m { v } else { m };
                                    }
                                }
                                if relu && m < 0.0 {
                                    m = 0.0;
                                }
                                yp[oy * wo + ox] = m;
                            }
                        }
                    },
                )
            });
        y
    }

    fn backward(&self, x: &[f32], g: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
        let (ho, wo) = self.out_hw(h, w);
        let mut dx = super::zeroed::<f32>(planes * h * w);
        dx.par_chunks_mut((h * w).max(1))
            .zip(x.par_chunks((h * w).max(1)))
            .zip(g.par_chunks((ho * wo).max(1)))
            .for_each(|((dp, xp), gp)| {
                super::wide(
                    #[inline(always)]
                    || {
                        for oy in 0..ho {
                            for ox in 0..wo {
                                let (i, v) = self.argmax(xp, w, oy, ox);
                                if !self.relu || v > 0.0 {
                                    dp[i] += gp[oy * wo + ox];
                                }
                            }
                        }
                    },
                )
            });
        dx
    }
}

/// The forward op: `x [N,C,H,W] -> y [N,C,Ho,Wo]`.
pub(crate) struct MaxPoolOp(pub Pool);

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "siamese-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = rank4(l.dims(), self.name())?;
        if self.0.kernel == 0 || self.0.stride == 0 || h < self.0.kernel || w < self.0.kernel {
            candle_core::bail!(
                "{}: input {:?} does not fit {:?}",
                self.name(),
                l.dims(),
                self.0
            );
        }
        let x = contiguous_f32(s, l, self.name())?;
        let (ho, wo) = self.0.out_hw(h, w);
        let y = self.0.forward(x, n * c, h, w);
        Ok((CpuStorage::F32(y), Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let grad = grad.contiguous()?;
        let arg = arg.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&grad, &MaxPoolBwdOp(self.0))?))
    }
}

/// The backward op: `(x, dy) -> dx`.
struct MaxPoolBwdOp(Pool);

impl CustomOp2 for MaxPoolBwdOp {
    fn name(&self) -> &'static str {
        "siamese-max-pool2d-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = rank4(l1.dims(), self.name())?;
        let x = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let (ho, wo) = self.0.out_hw(h, w);
        if l2.dims() != [n, c, ho, wo] {
            candle_core::bail!(
                "{}: gradient shape {:?} does not match output [{n}, {c}, {ho}, {wo}]",
                self.name(),
                l2.dims()
            );
        }
        let dx = self.0.backward(x, g, n * c, h, w);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
