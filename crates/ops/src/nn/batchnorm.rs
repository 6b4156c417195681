//! BatchNorm (training and eval mode) with an optional fused ReLU, as candle custom ops.
//!
//! Training mode runs three passes forward (per-channel mean, per-channel centred sum of squares,
//! then the normalisation writing `y`) and two backward (per-channel `sum dy` and
//! `sum dy * xhat`, then `dx`), where `dy` is masked by the recomputed ReLU when fused. Reductions
//! run in parallel over channels, elementwise passes over images; the sums are accumulated in
//! `f64` per image segment, so results do not depend on the thread count.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Result};
use candle_core::{Shape, Tensor};
use rayon::prelude::*;

use super::{check_f32, check_vectors, contiguous_f32, BatchNormTrain};

/// Checks a BatchNorm input; returns `(N, C, L)` with `L` the spatial size (1 for `[N, C]`).
fn check_bn(x: &Tensor, params: &[(&str, &Tensor)], op: &str) -> Result<(usize, usize, usize)> {
    check_f32(x, op)?;
    let (n, c, l) = bn_dims(x.dims(), op)?;
    check_vectors(params, c, "x of shape", x.dims(), op)?;
    Ok((n, c, l))
}

fn bn_dims(dims: &[usize], op: &str) -> Result<(usize, usize, usize)> {
    match *dims {
        [n, c] => Ok((n, c, 1)),
        [n, c, h, w] => Ok((n, c, h * w)),
        _ => bail!("{op}: expected x of shape [N, C, H, W] or [N, C], got {dims:?}"),
    }
}

/// Sum of a slice in eight `f32` lanes (vectorisable), returned as `f64`.
#[inline(always)]
fn sum_lanes(s: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; 8];
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] += f(c[i]);
        }
    }
    let mut total: f64 = chunks.remainder().iter().map(|&v| f(v) as f64).sum();
    total += acc.iter().map(|&v| v as f64).sum::<f64>();
    total
}

/// Two sums of a pair of slices in eight `f32` lanes each, returned as `f64`.
#[inline(always)]
fn sum2_lanes(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    let mut acc0 = [0f32; 8];
    let mut acc1 = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            let (u, v) = f(x[i], y[i]);
            acc0[i] += u;
            acc1[i] += v;
        }
    }
    let (mut t0, mut t1) = (0f64, 0f64);
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        let (u, v) = f(x, y);
        t0 += u as f64;
        t1 += v as f64;
    }
    t0 += acc0.iter().map(|&v| v as f64).sum::<f64>();
    t1 += acc1.iter().map(|&v| v as f64).sum::<f64>();
    (t0, t1)
}

/// `(x - mean) * a + beta`: the normalised value, shared by the forward pass and the ReLU mask.
#[inline(always)]
pub(crate) fn affine(x: f32, mean: f32, a: f32, beta: f32) -> f32 {
    (x - mean) * a + beta
}

pub(crate) fn batch_norm_train_impl(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrain> {
    let op = "batch_norm_train";
    let (n, c, l) = check_bn(x, &[("gamma", gamma), ("beta", beta)], op)?;
    let m = n * l;
    if m < 2 {
        bail!(
            "{op}: expected more than one value per channel in training mode, got x of shape {:?}",
            x.dims()
        );
    }
    if !matches!(x.device(), Device::Cpu) {
        return fallback_train(x, gamma, beta, eps, relu, (n, c, l));
    }
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&BnStats)?.to_vec2::<f32>()?;
    let (mean, var) = (stats[0].clone(), stats[1].clone());
    let bn = BnNorm {
        mean: mean.clone(),
        invstd: inv_std(&var, eps),
        relu,
        train: true,
    };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, bn)?;
    Ok(BatchNormTrain {
        y,
        mean: Tensor::from_vec(mean, c, &Device::Cpu)?,
        var: Tensor::from_vec(unbiased(&var, m), c, &Device::Cpu)?,
    })
}

pub(crate) fn batch_norm_eval_impl(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let op = "batch_norm_eval";
    let (n, c, l) = check_bn(
        x,
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", running_mean),
            ("running_var", running_var),
        ],
        op,
    )?;
    if !matches!(x.device(), Device::Cpu) {
        let scale = (gamma / running_var.affine(1.0, eps)?.sqrt()?)?;
        let shift = (beta - (running_mean * &scale)?)?;
        let mut y = x
            .reshape((n, c, l))?
            .broadcast_mul(&scale.reshape((1, c, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1))?)?;
        if relu {
            y = y.relu()?;
        }
        return y.reshape(x.dims());
    }
    let mean = running_mean.to_vec1::<f32>()?;
    let bn = BnNorm {
        mean,
        invstd: inv_std(&running_var.to_vec1::<f32>()?, eps),
        relu,
        train: false,
    };
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, bn)
}

/// candle's built-in ops, for devices without our kernels.
fn fallback_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
    (n, c, l): (usize, usize, usize),
) -> Result<BatchNormTrain> {
    let m = n * l;
    let x3 = x.reshape((n, c, l))?;
    let mean = x3
        .sum_keepdim(2)?
        .sum_keepdim(0)?
        .affine(1.0 / m as f64, 0.0)?;
    let xc = x3.broadcast_sub(&mean)?;
    let var = xc
        .sqr()?
        .sum_keepdim(2)?
        .sum_keepdim(0)?
        .affine(1.0 / m as f64, 0.0)?;
    let inv = var.affine(1.0, eps)?.sqrt()?.recip()?;
    let mut y = xc
        .broadcast_mul(&inv)?
        .broadcast_mul(&gamma.reshape((1, c, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1))?)?;
    if relu {
        y = y.relu()?;
    }
    Ok(BatchNormTrain {
        y: y.reshape(x.dims())?,
        mean: mean.flatten_all()?.detach(),
        var: var
            .flatten_all()?
            .affine(m as f64 / (m - 1) as f64, 0.0)?
            .detach(),
    })
}

/// Runs `f(channel, segments)` in parallel over channels, where `segments` yields the `N`
/// contiguous length-`L` runs of that channel.
fn per_channel<T: Send>(
    (n, c, l): (usize, usize, usize),
    f: impl Fn(usize, &mut dyn Iterator<Item = (usize, usize)>) -> T + Sync,
) -> Vec<T> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            super::wide(
                #[inline(always)]
                || {
                    let mut segs = (0..n).map(|i| ((i * c + ch) * l, (i * c + ch + 1) * l));
                    f(ch, &mut segs)
                },
            )
        })
        .collect()
}

/// `x -> [2, C]`: per-channel batch mean and biased variance.
struct BnStats;

impl CustomOp1 for BnStats {
    fn name(&self) -> &'static str {
        "siamese-batch-norm-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = bn_dims(l.dims(), self.name())?;
        let x = contiguous_f32(s, l, self.name())?;
        let (mean, var) = batch_stats(x, dims);
        let mut out = mean;
        out.extend(var);
        Ok((CpuStorage::F32(out), Shape::from((2, dims.1))))
    }
}

/// `1 / sqrt(var + eps)` per channel (computed in `f64`).
pub(crate) fn inv_std(var: &[f32], eps: f64) -> Vec<f32> {
    var.iter()
        .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
        .collect()
}

/// The unbiased variance of `m` values from the biased one (what PyTorch's running variance
/// takes).
pub(crate) fn unbiased(var: &[f32], m: usize) -> Vec<f32> {
    let m = m as f64;
    var.iter()
        .map(|&v| (v as f64 * m / (m - 1.0)) as f32)
        .collect()
}

/// Per-channel batch mean and *biased* variance of `x` (`[N, C, L]` as `dims`), accumulated in
/// `f64` per image segment (independent of the thread count).
pub(crate) fn batch_stats(x: &[f32], dims: (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let m = (dims.0 * dims.2) as f64;
    let stats = per_channel(
        dims,
        #[inline(always)]
        |_, segs| {
            let segs: Vec<_> = segs.collect();
            let mean = segs
                .iter()
                .map(|&(a, b)| sum_lanes(&x[a..b], |v| v))
                .sum::<f64>()
                / m;
            let mf = mean as f32;
            let var = segs
                .iter()
                .map(|&(a, b)| sum_lanes(&x[a..b], |v| (v - mf) * (v - mf)))
                .sum::<f64>()
                / m;
            (mean as f32, var as f32)
        },
    );
    stats.into_iter().unzip()
}

/// `relu?((x - mean) * a + beta)` per channel of `x` (`C` channels of `L` values per image),
/// in parallel over images.
pub(crate) fn normalise(
    x: &[f32],
    (c, l): (usize, usize),
    mean: &[f32],
    a: &[f32],
    beta: &[f32],
    relu: bool,
) -> Vec<f32> {
    let mut y = super::zeroed::<f32>(x.len());
    y.par_chunks_mut((c * l).max(1))
        .zip(x.par_chunks((c * l).max(1)))
        .for_each(|(yi, xi)| {
            super::wide(
                #[inline(always)]
                || {
                    for ch in 0..c {
                        let (m, a, b) = (mean[ch], a[ch], beta[ch]);
                        let ys = &mut yi[ch * l..(ch + 1) * l];
                        let xs = &xi[ch * l..(ch + 1) * l];
                        if relu {
                            for (y, &x) in ys.iter_mut().zip(xs) {
                                *y = affine(x, m, a, b).max(0.0);
                            }
                        } else {
                            for (y, &x) in ys.iter_mut().zip(xs) {
                                *y = affine(x, m, a, b);
                            }
                        }
                    }
                },
            )
        });
    y
}

/// `(x, gamma, beta) -> relu?((x - mean) * invstd * gamma + beta)` with fixed statistics.
///
/// `train` says whether the statistics are the batch's own (so the gradient flows through them).
struct BnNorm {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    relu: bool,
    train: bool,
}

impl CustomOp3 for BnNorm {
    fn name(&self) -> &'static str {
        "siamese-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, l) = bn_dims(l1.dims(), self.name())?;
        let x = contiguous_f32(s1, l1, self.name())?;
        let gamma = contiguous_f32(s2, l2, self.name())?;
        let beta = contiguous_f32(s3, l3, self.name())?;
        if gamma.len() != c || beta.len() != c || self.mean.len() != c || self.invstd.len() != c {
            bail!("{}: parameters do not have {c} channels", self.name());
        }
        let a: Vec<f32> = (0..c).map(|ch| self.invstd[ch] * gamma[ch]).collect();
        let y = normalise(x, (c, l), &self.mean, &a, beta, self.relu);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let x = x.contiguous()?;
        let c = self.mean.len();
        let gam = gamma.to_vec1::<f32>()?;
        let bet = beta.to_vec1::<f32>()?;
        let a: Vec<f32> = (0..c).map(|ch| self.invstd[ch] * gam[ch]).collect();
        let red = BnGradSums {
            mean: self.mean.clone(),
            invstd: self.invstd.clone(),
            a: a.clone(),
            beta: bet.clone(),
            relu: self.relu,
        };
        let sums = x.apply_op2_no_bwd(&grad, &red)?.to_vec2::<f32>()?;
        let (dbeta, dgamma) = (sums[0].clone(), sums[1].clone());
        let dx = if x.track_op() {
            let op = BnInputGrad {
                sums: red,
                dbeta: dbeta.clone(),
                dgamma: dgamma.clone(),
                train: self.train,
            };
            Some(x.apply_op2_no_bwd(&grad, &op)?)
        } else {
            None
        };
        let dgamma = if gamma.track_op() {
            Some(Tensor::from_vec(dgamma, c, &Device::Cpu)?)
        } else {
            None
        };
        let dbeta = if beta.track_op() {
            Some(Tensor::from_vec(dbeta, c, &Device::Cpu)?)
        } else {
            None
        };
        Ok((dx, dgamma, dbeta))
    }
}

/// `(x, dy) -> [2, C]`: per-channel `sum dy'` and `sum dy' * xhat`, `dy'` masked by the ReLU.
pub(crate) struct BnGradSums {
    pub(crate) mean: Vec<f32>,
    pub(crate) invstd: Vec<f32>,
    /// `invstd * gamma`.
    pub(crate) a: Vec<f32>,
    pub(crate) beta: Vec<f32>,
    pub(crate) relu: bool,
}

/// The gradient `dy` at a value `x` of a channel normalised with `(mean, a, beta)`, masked by
/// the ReLU when `relu` (zero where the output was clamped).
#[inline(always)]
fn masked(relu: bool, (mean, a, beta): (f32, f32, f32), x: f32, dy: f32) -> f32 {
    if relu && affine(x, mean, a, beta) <= 0.0 {
        0.0
    } else {
        dy
    }
}

impl BnGradSums {
    /// Channel `ch`'s `(mean, a, beta)`, read once per channel so the per-value loops keep them
    /// in registers (and vectorise).
    fn norm(&self, ch: usize) -> (f32, f32, f32) {
        (self.mean[ch], self.a[ch], self.beta[ch])
    }

    /// Per channel of `x` and `dy` (`[N, C, L]` as `dims`): `(sum dy', sum dy' * xhat)`, that
    /// is the gradients of `beta` and `gamma`.
    pub(crate) fn sums(
        &self,
        x: &[f32],
        dy: &[f32],
        dims: (usize, usize, usize),
    ) -> (Vec<f32>, Vec<f32>) {
        let relu = self.relu;
        per_channel(
            dims,
            #[inline(always)]
            |ch, segs| {
                let (m, inv, norm) = (self.mean[ch], self.invstd[ch], self.norm(ch));
                segs.map(|(a, b)| {
                    sum2_lanes(&x[a..b], &dy[a..b], |x, g| {
                        let g = masked(relu, norm, x, g);
                        (g, g * (x - m) * inv)
                    })
                })
                .fold((0f64, 0f64), |acc, v| (acc.0 + v.0, acc.1 + v.1))
            },
        )
        .into_iter()
        .map(|(db, dg)| (db as f32, dg as f32))
        .unzip()
    }

    /// The input gradient from the sums of [`Self::sums`]: `a * (dy' - k0 - (x - mean) * k1)`
    /// with batch statistics (`train`), `a * dy'` with fixed ones.
    pub(crate) fn input_grad(
        &self,
        x: &[f32],
        dy: &[f32],
        (n, c, l): (usize, usize, usize),
        (dbeta, dgamma): (&[f32], &[f32]),
        train: bool,
    ) -> Vec<f32> {
        let inv_m = 1.0 / (n * l) as f32;
        let (k0, k1): (Vec<f32>, Vec<f32>) = (0..c)
            .map(|ch| {
                if train {
                    (dbeta[ch] * inv_m, dgamma[ch] * inv_m * self.invstd[ch])
                } else {
                    (0.0, 0.0)
                }
            })
            .unzip();
        let mut dx = super::zeroed::<f32>(x.len());
        dx.par_chunks_mut((c * l).max(1))
            .zip(
                x.par_chunks((c * l).max(1))
                    .zip(dy.par_chunks((c * l).max(1))),
            )
            .for_each(|(dxi, (xi, dyi))| {
                super::wide(
                    #[inline(always)]
                    || {
                        for ch in 0..c {
                            let (m, a, k0, k1) = (self.mean[ch], self.a[ch], k0[ch], k1[ch]);
                            let (norm, relu) = (self.norm(ch), self.relu);
                            let range = ch * l..(ch + 1) * l;
                            for ((d, &x), &g) in dxi[range.clone()]
                                .iter_mut()
                                .zip(&xi[range.clone()])
                                .zip(&dyi[range])
                            {
                                let g = masked(relu, norm, x, g);
                                *d = a * (g - k0 - (x - m) * k1);
                            }
                        }
                    },
                )
            });
        dx
    }
}

impl CustomOp2 for BnGradSums {
    fn name(&self) -> &'static str {
        "siamese-batch-norm-grad-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = bn_dims(l1.dims(), self.name())?;
        if l1.dims() != l2.dims() || self.mean.len() != dims.1 {
            bail!(
                "{}: x {:?} and gradient {:?} differ",
                self.name(),
                l1.dims(),
                l2.dims()
            );
        }
        let x = contiguous_f32(s1, l1, self.name())?;
        let dy = contiguous_f32(s2, l2, self.name())?;
        let (mut out, dgamma) = self.sums(x, dy, dims);
        out.extend(dgamma);
        Ok((CpuStorage::F32(out), Shape::from((2, dims.1))))
    }
}

/// `(x, dy) -> dx`.
struct BnInputGrad {
    sums: BnGradSums,
    dbeta: Vec<f32>,
    dgamma: Vec<f32>,
    train: bool,
}

impl CustomOp2 for BnInputGrad {
    fn name(&self) -> &'static str {
        "siamese-batch-norm-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, l) = bn_dims(l1.dims(), self.name())?;
        if l1.dims() != l2.dims() || self.sums.mean.len() != c {
            bail!(
                "{}: x {:?} and gradient {:?} differ",
                self.name(),
                l1.dims(),
                l2.dims()
            );
        }
        let x = contiguous_f32(s1, l1, self.name())?;
        let dy = contiguous_f32(s2, l2, self.name())?;
        let sums = (&self.dbeta[..], &self.dgamma[..]);
        let dx = self.sums.input_grad(x, dy, (n, c, l), sums, self.train);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
