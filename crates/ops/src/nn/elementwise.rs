//! `relu(a + b)` fused in one pass, for residual connections; the backward pass masks the
//! gradient by `output > 0` and hands it to both arguments.

use candle_core::{bail, CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::ReluMask;
use super::{check_f32, contiguous_f32};

pub(crate) fn add_relu_impl(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_f32(a, "add_relu")?;
    check_f32(b, "add_relu")?;
    if a.dims() != b.dims() {
        bail!("add_relu: shapes differ: {:?} and {:?}", a.dims(), b.dims());
    }
    if !matches!(a.device(), Device::Cpu) {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

/// `(a, b) -> relu(a + b)`.
struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "siamese-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            bail!(
                "{}: shapes differ: {:?} and {:?}",
                self.name(),
                l1.dims(),
                l2.dims()
            );
        }
        let a = contiguous_f32(s1, l1, self.name())?;
        let b = contiguous_f32(s2, l2, self.name())?;
        let mut out = super::zeroed::<f32>(a.len());
        const CHUNK: usize = 1 << 16;
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| {
                super::wide(
                    #[inline(always)]
                    || {
                        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                            *o = (a + b).max(0.0);
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !a.track_op() && !b.track_op() {
            return Ok((None, None));
        }
        let g = grad
            .contiguous()?
            .apply_op2_no_bwd(&res.contiguous()?, &ReluMask)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}
