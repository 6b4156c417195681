//! The fused blocks `max_pool(relu(batch_norm(conv(x))))` and `relu?(batch_norm(conv(x)))`
//! (training mode) and `max_pool(relu(conv(x) + bias))` as one candle custom op.
//!
//! Unfused, the block puts three large tensors into the autograd graph (the convolution output,
//! the normalised output, the pooled output), and candle's backward pass gives each of them a
//! zero-filled gradient buffer plus an addition. Fused, only the pooled output is a graph node.
//! Without pooling (the residual blocks), the convolution output still leaves the graph.
//!
//! Forward: the convolution output `y` (kept for the backward pass), per-channel batch
//! statistics, then one pass that normalises, applies ReLU and max-pools, recording which
//! position of each window won (one byte per pooled value). Backward: the per-channel sums
//! `sum g'` and `sum g' * xhat` need only the pooled gradient and the recorded positions (`g'` is
//! zero everywhere else), then one pass writes the convolution's output gradient
//! `dy = a * (g' - sum g' / M - xhat * sum(g' * xhat) / M)`, which the convolution's own
//! backward kernels take from there. Without pooling, `g'` is the gradient itself (masked by the
//! ReLU), and BatchNorm's own backward passes compute `dy`.
//!
//! The tapped variant also reads each plane's mean and maximum after the ReLU (the encoder's
//! taps), in the same op: its output holds, per plane, the pooled values followed by those two.
//! Their gradients make `g'` dense (the mean's reaches every position), so its backward pass
//! scatters all three into a full-size `g'` and takes BatchNorm's own backward passes.
//!
//! Sums are accumulated in `f64` per channel over images in order, so the results do not depend
//! on the thread count (the convolution's weight gradient keeps its own rule).

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::batchnorm::{affine, batch_stats, inv_std, normalise, unbiased, BnGradSums};
use super::conv::{self, forward_raw};
use super::{contiguous_f32, BatchNormTrain, Conv2dParams};

/// Windows larger than this cannot record their winner in one byte.
const MAX_POOL_KERNEL: usize = 15;

/// What follows the normalisation.
#[derive(Clone, Copy, Debug)]
enum Tail {
    /// ReLU, then max-pooling with this kernel and stride.
    ReluPool(usize, usize),
    /// ReLU or nothing; the output has the convolution's shape.
    Plain { relu: bool },
    /// As `ReluPool`, and each plane's mean and maximum after the ReLU appended to its pooled
    /// values: the output is `[N, C, Po * Qo + 2]`.
    ReluPoolTap(usize, usize),
}

/// What the forward pass keeps for the backward pass.
struct Saved {
    /// Whether the block normalises with batch statistics (else it adds a bias).
    batch_norm: bool,
    tail: Tail,
    /// The convolution output `[N, C, H, W]`.
    y: Vec<f32>,
    /// Winner of each pooling window, `ky * kernel + kx`, `[N, C, Ho, Wo]` (empty without
    /// pooling).
    arg: Vec<u8>,
    /// With `ReluPoolTap`: the position of each plane's first maximum after the ReLU, `[N, C]`
    /// (zeros otherwise).
    peak: Vec<u32>,
    dims: [usize; 4],
    pooled: (usize, usize),
    mean: Vec<f32>,
    invstd: Vec<f32>,
    /// `invstd * gamma`.
    a: Vec<f32>,
    beta: Vec<f32>,
}

/// Two per-channel vectors an op hands back to its caller beside its output (the batch
/// statistics of the forward pass, the parameter gradients of the backward pass).
type Stats = Arc<Mutex<Option<(Vec<f32>, Vec<f32>)>>>;

/// What an op left in `slot`, or an error naming `op` and `what` was missing.
fn take(slot: &Stats, op: &str, what: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    match slot.lock().map(|mut s| s.take()) {
        Ok(Some(v)) => Ok(v),
        _ => bail!("{op}: the op left no {what}"),
    }
}

pub(crate) fn conv_bn_relu_pool_train_impl(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    p: Conv2dParams,
    eps: f64,
    kernel: usize,
    stride: usize,
) -> Result<BatchNormTrain> {
    let tail = Tail::ReluPool(kernel, stride);
    conv_bn_train_impl(x, w, gamma, beta, p, eps, tail, "conv_bn_relu_pool_train")
}

/// The block with its taps: the [`BatchNormTrain`] of the pooled output, and each plane's mean
/// and maximum after the ReLU, `[N, 2C]` (all means, then all maxima).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_bn_relu_pool_tap_train_impl(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    p: Conv2dParams,
    eps: f64,
    kernel: usize,
    stride: usize,
) -> Result<(BatchNormTrain, Tensor)> {
    let op = "conv_bn_relu_pool_tap_train";
    if !matches!(x.device(), Device::Cpu) {
        let z = conv_bn_plain_train_impl(x, w, gamma, beta, p, eps, true)?;
        let taps = super::plane_mean_max(&z.y)?;
        let y = super::max_pool2d(&z.y, kernel, stride)?;
        return Ok((BatchNormTrain { y, ..z }, taps));
    }
    let tail = Tail::ReluPoolTap(kernel, stride);
    let out = conv_bn_train_impl(x, w, gamma, beta, p, eps, tail, op)?;
    let (n, c, _) = out.y.dims3()?;
    let (ho, wo) = conv::check_conv(x, w, None, p, op)?;
    let (po, qo) = ((ho - kernel) / stride + 1, (wo - kernel) / stride + 1);
    let y = out.y.narrow(2, 0, po * qo)?.reshape((n, c, po, qo))?;
    let taps = out
        .y
        .narrow(2, po * qo, 2)?
        .transpose(1, 2)?
        .reshape((n, 2 * c))?;
    Ok((BatchNormTrain { y, ..out }, taps))
}

pub(crate) fn conv_bn_plain_train_impl(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    p: Conv2dParams,
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrain> {
    let tail = Tail::Plain { relu };
    conv_bn_train_impl(x, w, gamma, beta, p, eps, tail, "conv_bn_train")
}

#[allow(clippy::too_many_arguments)]
fn conv_bn_train_impl(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    p: Conv2dParams,
    eps: f64,
    tail: Tail,
    op: &str,
) -> Result<BatchNormTrain> {
    let (ho, wo) = conv::check_conv(x, w, None, p, op)?;
    let cout = super::check_channel_params(w, &[("gamma", gamma), ("beta", beta)], op)?;
    if let Tail::ReluPool(kernel, stride) | Tail::ReluPoolTap(kernel, stride) = tail {
        check_pool(kernel, stride, ho, wo, x, op)?;
    }
    if x.dim(0)? * ho * wo < 2 {
        bail!(
            "{op}: expected more than one value per channel in training mode, got input {:?}",
            x.dims()
        );
    }
    if !matches!(x.device(), Device::Cpu) {
        let y = super::conv2d(x, w, None, p)?;
        return match tail {
            Tail::ReluPool(kernel, stride) => {
                let bn = super::batch_norm_train(&y, gamma, beta, eps, true)?;
                Ok(BatchNormTrain {
                    y: super::max_pool2d(&bn.y, kernel, stride)?,
                    ..bn
                })
            }
            Tail::Plain { relu } => super::batch_norm_train(&y, gamma, beta, eps, relu),
            Tail::ReluPoolTap(..) => bail!("{op}: the tapped block runs on the CPU only"),
        };
    }
    let gb = Tensor::cat(&[gamma, beta], 0)?;
    let stats: Stats = Arc::default();
    let block = BlockOp {
        p,
        batch_norm: true,
        eps,
        tail,
        saved: Mutex::new(None),
        stats: Some(stats.clone()),
    };
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &gb, block)?;
    let (mean, var) = take(&stats, op, "batch statistics")?;
    Ok(BatchNormTrain {
        y,
        mean: Tensor::from_vec(mean, cout, &Device::Cpu)?,
        var: Tensor::from_vec(var, cout, &Device::Cpu)?,
    })
}

pub(crate) fn conv_relu_pool_impl(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    p: Conv2dParams,
    kernel: usize,
    stride: usize,
) -> Result<Tensor> {
    let op = "conv2d_relu_max_pool2d";
    let (ho, wo) = conv::check_conv(x, w, Some(bias), p, op)?;
    check_pool(kernel, stride, ho, wo, x, op)?;
    if !matches!(x.device(), Device::Cpu) {
        return super::max_pool2d(&super::conv2d_relu(x, w, Some(bias), p)?, kernel, stride);
    }
    let block = BlockOp {
        p,
        batch_norm: false,
        eps: 0.0,
        tail: Tail::ReluPool(kernel, stride),
        saved: Mutex::new(None),
        stats: None,
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &bias.contiguous()?, block)
}

fn check_pool(
    kernel: usize,
    stride: usize,
    ho: usize,
    wo: usize,
    x: &Tensor,
    op: &str,
) -> Result<()> {
    if kernel == 0 || stride == 0 || kernel > MAX_POOL_KERNEL {
        bail!("{op}: pooling kernel {kernel} and stride {stride} must be in 1..={MAX_POOL_KERNEL}");
    }
    if ho < kernel || wo < kernel {
        bail!(
            "{op}: the convolution output {ho}x{wo} of input {:?} is smaller than the \
             {kernel}x{kernel} pooling window",
            x.dims()
        );
    }
    Ok(())
}

/// `(x, w, [gamma; beta]) -> max_pool(relu(batch_norm(conv(x, w))))` (or `relu?(..)` without
/// pooling), or, without `batch_norm`, `(x, w, bias) -> max_pool(relu(conv(x, w) + bias))`.
struct BlockOp {
    p: Conv2dParams,
    batch_norm: bool,
    eps: f64,
    tail: Tail,
    saved: Mutex<Option<Arc<Saved>>>,
    /// With `batch_norm`: where the batch mean and unbiased variance go, for the caller's
    /// running statistics.
    stats: Option<Stats>,
}

impl BlockOp {
    /// Keeps what the backward pass needs.
    fn save(&self, saved: Saved) -> Result<()> {
        match self.saved.lock() {
            Ok(mut sv) => *sv = Some(Arc::new(saved)),
            Err(_) => bail!("{}: a lock was poisoned", self.name()),
        }
        Ok(())
    }
}

impl CustomOp3 for BlockOp {
    fn name(&self) -> &'static str {
        "siamese-conv-bn-relu-pool"
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
        let name = self.name();
        let x = contiguous_f32(s1, l1, name)?;
        let w = contiguous_f32(s2, l2, name)?;
        let gb = contiguous_f32(s3, l3, name)?;
        let (y, dims) = forward_raw(x, l1.dims(), w, l2.dims(), None, None, false, self.p, name)?;
        let [n, c, h, wd] = dims;
        let params = if self.batch_norm { 2 * c } else { c };
        if gb.len() != params {
            bail!("{name}: expected {params} parameters, got {}", gb.len());
        }
        // Without BatchNorm the "normalisation" is the identity plus the bias.
        let (mean, invstd, a, beta) = if self.batch_norm {
            let (mean, var) = batch_stats(&y, (n, c, h * wd));
            let invstd = inv_std(&var, self.eps);
            if let Some(stats) = &self.stats {
                match stats.lock() {
                    Ok(mut st) => *st = Some((mean.clone(), unbiased(&var, n * h * wd))),
                    Err(_) => bail!("{name}: a lock was poisoned"),
                }
            }
            let a = (0..c).map(|ch| invstd[ch] * gb[ch]).collect();
            (mean, invstd, a, gb[c..].to_vec())
        } else {
            (vec![0.0; c], vec![1.0; c], vec![1.0; c], gb.to_vec())
        };
        let norm = (&mean[..], &a[..], &beta[..]);
        let (out, arg, peak, pooled) = match self.tail {
            Tail::Plain { relu } => {
                let out = normalise(&y, (c, h * wd), &mean, &a, &beta, relu);
                (out, Vec::new(), Vec::new(), (h, wd))
            }
            Tail::ReluPool(k, s) => relu_pool(&y, dims, norm, (k, s), false),
            Tail::ReluPoolTap(k, s) => relu_pool(&y, dims, norm, (k, s), true),
        };
        let shape = match self.tail {
            Tail::ReluPoolTap(..) => Shape::from((n, c, pooled.0 * pooled.1 + 2)),
            _ => Shape::from((n, c, pooled.0, pooled.1)),
        };
        let saved = Saved {
            batch_norm: self.batch_norm,
            tail: self.tail,
            y,
            arg,
            peak,
            dims,
            pooled,
            mean,
            invstd,
            a,
            beta,
        };
        self.save(saved)?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        gb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = match self.saved.lock() {
            Ok(s) => s.clone(),
            Err(_) => bail!("{}: a lock was poisoned", self.name()),
        };
        let Some(saved) = saved else {
            bail!("{}: backward pass before the forward pass", self.name());
        };
        let sums: Stats = Arc::default();
        let back = BlockBwd {
            saved: saved.clone(),
            sums: sums.clone(),
        };
        let dy = grad.contiguous()?.apply_op1_no_bwd(&back)?;
        let (dgamma, dbeta) = take(&sums, self.name(), "parameter gradients")?;
        let dgb = if gb.track_op() {
            let v = if self.batch_norm {
                let mut v = dgamma;
                v.extend(dbeta);
                v
            } else {
                dbeta
            };
            Some(Tensor::from_vec(v, gb.dims(), &Device::Cpu)?)
        } else {
            None
        };
        let dx = if x.track_op() {
            Some(conv::input_grad(&dy, w, x.dims(), self.p)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(conv::weight_grad(x, &dy, w.dims(), self.p)?)
        } else {
            None
        };
        Ok((dx, dw, dgb))
    }
}

/// ReLU and max-pooling (`kernel`, `stride`) of the normalised convolution output `y`
/// (`dims`, normalised per channel with `(mean, a, beta)`): the pooled output, the winner of
/// each window (`ky * kernel + kx`, one byte each), and the pooled size. With `taps`, each
/// plane's pooled values are followed by the plane's mean and first maximum after the ReLU
/// (`[N, C, Po * Qo + 2]`), and the positions of those maxima come back too (else zeros).
fn relu_pool(
    y: &[f32],
    [n, c, h, wd]: [usize; 4],
    (mean, a, beta): (&[f32], &[f32], &[f32]),
    (k, s): (usize, usize),
    taps: bool,
) -> (Vec<f32>, Vec<u8>, Vec<u32>, (usize, usize)) {
    let (po, qo) = ((h - k) / s + 1, (wd - k) / s + 1);
    let plane_out = po * qo;
    let chunk = plane_out + if taps { 2 } else { 0 };
    let mut out = super::zeroed::<f32>(n * c * chunk);
    let mut arg = super::zeroed::<u8>(n * c * plane_out);
    let mut peak = vec![0u32; n * c];
    out.par_chunks_mut(chunk)
        .zip(arg.par_chunks_mut(plane_out))
        .zip(peak.par_iter_mut())
        .zip(y.par_chunks(h * wd))
        .enumerate()
        .with_min_len(16)
        .for_each(|(pl, (((o, ag), pk), plane))| {
            super::wide(
                #[inline(always)]
                || {
                    let ch = pl % c;
                    let (mu, aa, bb) = (mean[ch], a[ch], beta[ch]);
                    let z = |v: f32| affine(v, mu, aa, bb).max(0.0);
                    let (o, tail) = o.split_at_mut(plane_out);
                    if k == 2 && s == 2 {
                        // conv4's and koch's window, without the inner loops: the same first
                        // maximum in row-major order, by branch-free pairwise selection.
                        for oy in 0..po {
                            let r0 = &plane[2 * oy * wd..2 * oy * wd + 2 * qo];
                            let r1 = &plane[(2 * oy + 1) * wd..(2 * oy + 1) * wd + 2 * qo];
                            let o = &mut o[oy * qo..(oy + 1) * qo];
                            let ag = &mut ag[oy * qo..(oy + 1) * qo];
                            for (ox, (ov, av)) in o.iter_mut().zip(ag.iter_mut()).enumerate() {
                                let (z0, z1) = (z(r0[2 * ox]), z(r0[2 * ox + 1]));
                                let (z2, z3) = (z(r1[2 * ox]), z(r1[2 * ox + 1]));
                                let (b01, i01) = if z1 > z0 { (z1, 1u8) } else { (z0, 0u8) };
                                let (b23, i23) = if z3 > z2 { (z3, 3u8) } else { (z2, 2u8) };
                                (*ov, *av) = if b23 > b01 { (b23, i23) } else { (b01, i01) };
                            }
                        }
                    } else {
                        for oy in 0..po {
                            for ox in 0..qo {
                                let (mut best, mut bi) = (f32::NEG_INFINITY, 0u8);
                                for ky in 0..k {
                                    let row = (oy * s + ky) * wd + ox * s;
                                    for kx in 0..k {
                                        let zv = z(plane[row + kx]);
                                        // Strict `>` keeps the first maximum in row-major order.
                                        if zv > best {
                                            best = zv;
                                            bi = (ky * k + kx) as u8;
                                        }
                                    }
                                }
                                o[oy * qo + ox] = best;
                                ag[oy * qo + ox] = bi;
                            }
                        }
                    }
                    if let [m, mx] = tail {
                        let (mut sum, mut best, mut at) = (0f64, f32::NEG_INFINITY, 0usize);
                        for (i, &v) in plane.iter().enumerate() {
                            let zv = z(v);
                            sum += f64::from(zv);
                            // Strict `>` keeps the first maximum in row-major order.
                            if zv > best {
                                best = zv;
                                at = i;
                            }
                        }
                        (*m, *mx) = ((sum / plane.len() as f64) as f32, best);
                        *pk = at as u32;
                    }
                },
            )
        });
    (out, arg, peak, (po, qo))
}

/// `g [N, C, Ho, Wo] -> dy [N, C, H, W]`, the convolution output's gradient; leaves
/// `(dgamma, dbeta)` in `sums`.
struct BlockBwd {
    saved: Arc<Saved>,
    sums: Stats,
}

impl BlockBwd {
    /// Position (within its plane) of the winner of pooled value `j` of a `k`×`k` window at
    /// stride `s`.
    #[inline(always)]
    fn winner(&self, ag: &[u8], j: usize, (k, s): (usize, usize)) -> usize {
        let sv = &*self.saved;
        let (wd, qo) = (sv.dims[3], sv.pooled.1);
        let (oy, ox) = (j / qo, j % qo);
        let (ky, kx) = (ag[j] as usize / k, ag[j] as usize % k);
        (oy * s + ky) * wd + ox * s + kx
    }
}

impl CustomOp1 for BlockBwd {
    fn name(&self) -> &'static str {
        "siamese-conv-bn-relu-pool-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let sv = &*self.saved;
        let [n, c, h, wd] = sv.dims;
        let (po, qo) = sv.pooled;
        let want: &[usize] = match sv.tail {
            Tail::ReluPoolTap(..) => &[n, c, po * qo + 2],
            _ => &[n, c, po, qo],
        };
        if l.dims() != want {
            bail!(
                "{}: gradient shape {:?}, expected {want:?}",
                self.name(),
                l.dims()
            );
        }
        let g = contiguous_f32(s, l, self.name())?;
        let pool = match sv.tail {
            Tail::Plain { relu } => return self.plain(g, relu),
            Tail::ReluPoolTap(k, s) => return self.plain(&self.tapped_grad(g, (k, s)), true),
            Tail::ReluPool(k, s) => (k, s),
        };
        let (pl_in, pl_out) = (h * wd, po * qo);
        // Per plane: the ReLU-masked gradient g' of each winner, and the plane's sums of g' and
        // g' * xhat (g' is zero away from the winners).
        let mut gm = super::zeroed::<f32>(g.len());
        let partial: Vec<(f32, f32)> = gm
            .par_chunks_mut(pl_out)
            .enumerate()
            .with_min_len(16)
            .map(|(pl, gmp)| {
                super::wide(
                    #[inline(always)]
                    || {
                        let ch = pl % c;
                        let (mu, inv, a, b) = (sv.mean[ch], sv.invstd[ch], sv.a[ch], sv.beta[ch]);
                        let plane = &sv.y[pl * pl_in..(pl + 1) * pl_in];
                        let ag = &sv.arg[pl * pl_out..(pl + 1) * pl_out];
                        let gp = &g[pl * pl_out..(pl + 1) * pl_out];
                        let (mut db, mut dg) = (0f32, 0f32);
                        for (j, gv) in gmp.iter_mut().enumerate() {
                            let v = plane[self.winner(ag, j, pool)];
                            if affine(v, mu, a, b) > 0.0 {
                                *gv = gp[j];
                                db += gp[j];
                                dg += gp[j] * (v - mu) * inv;
                            }
                        }
                        (db, dg)
                    },
                )
            })
            .collect();
        // Per channel, over images in order: sum g' and sum g' * xhat.
        let sums: Vec<(f64, f64)> = (0..c)
            .map(|ch| {
                (0..n).fold((0f64, 0f64), |(db, dg), i| {
                    let (b, g) = partial[i * c + ch];
                    (db + b as f64, dg + g as f64)
                })
            })
            .collect();
        // Without BatchNorm the batch statistics are constants: no mean terms.
        let inv_m = if sv.batch_norm {
            1.0 / (n * pl_in) as f32
        } else {
            0.0
        };
        let mut dy = super::zeroed::<f32>(n * c * pl_in);
        dy.par_chunks_mut(pl_in)
            .enumerate()
            .with_min_len(16)
            .for_each(|(pl, d)| {
                super::wide(
                    #[inline(always)]
                    || {
                        let ch = pl % c;
                        let (mu, a, inv) = (sv.mean[ch], sv.a[ch], sv.invstd[ch]);
                        let k0 = sums[ch].0 as f32 * inv_m;
                        let k1 = sums[ch].1 as f32 * inv_m * inv;
                        let plane = &sv.y[pl * pl_in..(pl + 1) * pl_in];
                        for (d, &v) in d.iter_mut().zip(plane) {
                            *d = -a * (k0 + (v - mu) * k1);
                        }
                        let ag = &sv.arg[pl * pl_out..(pl + 1) * pl_out];
                        for (j, &gv) in gm[pl * pl_out..(pl + 1) * pl_out].iter().enumerate() {
                            d[self.winner(ag, j, pool)] += a * gv;
                        }
                    },
                )
            });
        let (dbeta, dgamma) = sums.iter().map(|&(b, g)| (b as f32, g as f32)).unzip();
        self.finish(dy, dgamma, dbeta)
    }
}

impl BlockBwd {
    /// The tapped block's gradient `[N, C, Po * Qo + 2]` as the gradient of `relu(bn(y))`,
    /// `[N, C, H, W]`: each pooled value's to its window's winner, the plane mean's spread
    /// evenly, the plane maximum's to its position.
    fn tapped_grad(&self, g: &[f32], pool: (usize, usize)) -> Vec<f32> {
        let sv = &*self.saved;
        let [_, _, h, wd] = sv.dims;
        let (pl_in, pl_out) = (h * wd, sv.pooled.0 * sv.pooled.1);
        let mut gz = super::zeroed::<f32>(sv.y.len());
        gz.par_chunks_mut(pl_in)
            .zip(g.par_chunks(pl_out + 2))
            .enumerate()
            .with_min_len(16)
            .for_each(|(pl, (d, gp))| {
                super::wide(
                    #[inline(always)]
                    || {
                        d.fill(gp[pl_out] / pl_in as f32);
                        d[sv.peak[pl] as usize] += gp[pl_out + 1];
                        let ag = &sv.arg[pl * pl_out..(pl + 1) * pl_out];
                        for (j, &gv) in gp[..pl_out].iter().enumerate() {
                            d[self.winner(ag, j, pool)] += gv;
                        }
                    },
                )
            });
        gz
    }

    /// Without pooling: BatchNorm's own backward passes on the kept convolution output.
    fn plain(&self, g: &[f32], relu: bool) -> Result<(CpuStorage, Shape)> {
        let sv = &*self.saved;
        let [n, c, h, wd] = sv.dims;
        let norm = BnGradSums {
            mean: sv.mean.clone(),
            invstd: sv.invstd.clone(),
            a: sv.a.clone(),
            beta: sv.beta.clone(),
            relu,
        };
        let dims = (n, c, h * wd);
        let (dbeta, dgamma) = norm.sums(&sv.y, g, dims);
        let dy = norm.input_grad(&sv.y, g, dims, (&dbeta, &dgamma), sv.batch_norm);
        self.finish(dy, dgamma, dbeta)
    }

    /// Leaves the parameter gradients for the caller and returns `dy`.
    fn finish(
        &self,
        dy: Vec<f32>,
        dgamma: Vec<f32>,
        dbeta: Vec<f32>,
    ) -> Result<(CpuStorage, Shape)> {
        match self.sums.lock() {
            Ok(mut st) => *st = Some((dgamma, dbeta)),
            Err(_) => bail!("{}: a lock was poisoned", self.name()),
        }
        Ok((CpuStorage::F32(dy), Shape::from(self.saved.dims.to_vec())))
    }
}
