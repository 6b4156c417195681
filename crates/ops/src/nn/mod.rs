//! Fast CPU layers for training encoders: convolution, max-pooling, BatchNorm, and fused
//! variants (conv+ReLU, BN+ReLU, ReLU+max-pool, add+ReLU, and the whole conv+BN+ReLU+max-pool
//! block), as candle custom ops.
//!
//! Each layer is a `CustomOp1/2/3` whose `cpu_fwd` runs our own kernels (im2col + `gemm` for the
//! convolution, Winograd F(2x2, 3x3) for the 3x3 stride-1 "same" ones with enough channels)
//! and whose `bwd` builds the gradients with further custom ops running our own kernels. An
//! argument that does not take part in autograd (`!track_op()`, e.g. the raw input images) gets
//! no gradient at all, which skips the most expensive part of the first layer's backward pass.
//!
//! On other devices (candle's `cuda` or `metal` features) the functions fall back to candle's
//! built-in ops, so the API works everywhere; max-pooling then round-trips through the CPU to keep
//! its backward pass correct.
//!
//! Conventions: NCHW layout, `f32` only (other dtypes are an error), non-contiguous inputs are
//! made contiguous before the op runs. [`set_matmul_precision`] can switch the convolutions'
//! matrix products to bf16 on CPUs with AMX tiles; tensors stay `f32` either way.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(not(target_arch = "x86_64"))]
#[path = "amx_none.rs"]
mod amx;
mod batchnorm;
mod block;
#[cfg(target_arch = "x86_64")]
mod blocked;
mod conv;
mod elementwise;
pub(crate) mod gemm;
mod init;
mod pool;
mod winograd;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Tensor};

pub use init::kaiming_uniform;

/// Below this many values a buffer is zeroed on the calling thread.
const PAR_ZERO_MIN: usize = 1 << 16;

/// `vec![T::default(); len]`, zeroed by the rayon pool in parallel when it is large.
///
/// An op's output buffer is freed and allocated again every training step, so the allocator
/// hands back used memory and must clear it: a serial `memset` of tens of megabytes, with the
/// other core idle (8% of a training step's samples were `memset`, most of it here).
pub(crate) fn zeroed<T: Copy + Default + Send + Sync>(len: usize) -> Vec<T> {
    if len < PAR_ZERO_MIN {
        return vec![T::default(); len];
    }
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(T::default(), len));
    v
}

/// Runs `f` compiled for AVX-512 when the CPU has it, else as compiled (baseline x86-64 or
/// another architecture's default): for the per-value loops of BatchNorm, ReLU, pooling and
/// additions, which the compiler vectorises 16 wide instead of 4 when it may. Mark the closure
/// `#[inline(always)]` so its body is compiled into the AVX-512 caller. The loops fix their own
/// order of additions (explicit lanes), so both paths give the same bits.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { wide_avx512(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wide_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Number format of the matrix products inside the convolutions (forward and backward).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    /// f32 operands and accumulation (the default).
    #[default]
    F32,
    /// Operands rounded to bf16, products accumulated in f32, on Intel AMX tiles; as PyTorch's
    /// bf16 autocast does for convolutions.
    Bf16,
}

/// Whether this machine can run [`MatmulPrecision::Bf16`] (a CPU with AMX-BF16 and an operating
/// system that grants the process the tile state).
pub fn bf16_supported() -> bool {
    amx::supported()
}

/// Selects the precision of every later convolution in this process; fails (and keeps f32) when
/// bf16 is asked for on a machine without it.
pub fn set_matmul_precision(p: MatmulPrecision) -> Result<()> {
    if p == MatmulPrecision::Bf16 && !bf16_supported() {
        bail!(
            "bf16 matrix products need a CPU with AMX-BF16 tiles (Intel Sapphire Rapids or later)"
        );
    }
    gemm::set_bf16(p == MatmulPrecision::Bf16);
    Ok(())
}

/// The precision selected by [`set_matmul_precision`].
pub fn matmul_precision() -> MatmulPrecision {
    if gemm::bf16() {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::F32
    }
}

/// Turns the Winograd F(2x2, 3x3) kernels of the 3x3, stride-1, padding-1 convolutions on (the
/// default) or off for every later convolution in this process; off, they run as im2col and a
/// matrix product like every other convolution. For comparisons (benchmarks, tests): both give
/// the same values up to f32 rounding.
pub fn set_winograd(on: bool) {
    winograd::set_enabled(on);
}

/// Whether [`set_winograd`] left the Winograd kernels on.
pub fn winograd_enabled() -> bool {
    winograd::enabled()
}

/// Turns the channel-blocked kernels (the forward pass of convolutions with input channels in
/// 16s and output channels in 32s, on AVX-512 CPUs: direct, or Winograd for the 3x3 stride-1
/// padding-1 ones) on (the default) or off for every later convolution in this process; off,
/// those run as the planar Winograd kernels or im2col and a matrix product. For comparisons
/// (benchmarks, tests): all give the same values up to f32 rounding.
pub fn set_blocked(on: bool) {
    conv::set_blocked(on);
}

/// Whether [`set_blocked`] left the blocked kernels on.
pub fn blocked_enabled() -> bool {
    conv::blocked_enabled()
}

/// Stride and zero padding of a 2-D convolution, the same along both axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between neighbouring output positions, in input pixels (at least 1).
    pub stride: usize,
    /// Zeros added on every side of the input.
    pub padding: usize,
}

impl Default for Conv2dParams {
    /// Stride 1, no padding.
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
        }
    }
}

/// 2-D convolution (cross-correlation, as PyTorch's `conv2d`) with an optional bias.
///
/// # Shapes
/// - `x`: `[N, Cin, H, W]`, `f32`
/// - `w`: `[Cout, Cin, KH, KW]`
/// - `bias`: `[Cout]`
/// - returns `[N, Cout, Ho, Wo]` with `Ho = (H + 2p - KH) / s + 1` (floor), likewise `Wo`.
///
/// Differentiable with respect to `x`, `w` and `bias`; no gradient is computed for an `x` that
/// is not tracked by autograd.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
    conv::conv2d_impl(x, w, bias, p, false)
}

/// [`conv2d`] followed by ReLU, fused in one pass; the backward pass masks by `output > 0`.
///
/// # Shapes
/// As [`conv2d`]: `x [N, Cin, H, W]`, `w [Cout, Cin, KH, KW]`, `bias [Cout]` ->
/// `[N, Cout, Ho, Wo]`, `f32`.
pub fn conv2d_relu(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
) -> Result<Tensor> {
    conv::conv2d_impl(x, w, bias, p, true)
}

/// `relu(conv2d(x, w, bias) + res)` in one pass over the output, for evaluation: a residual
/// block's second convolution and its shortcut's addition, without writing the convolution's
/// output and reading it back. Equals [`add_relu`] of [`conv2d`] and `res` (the same additions
/// in the same order). Not differentiable: training keeps the separate ops.
///
/// # Shapes
/// As [`conv2d`]; `res` has the output's shape `[N, Cout, Ho, Wo]`, `f32`.
pub fn conv2d_add_relu(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    res: &Tensor,
    p: Conv2dParams,
) -> Result<Tensor> {
    conv::conv2d_add_relu_impl(x, w, bias, res, p)
}

/// The input gradient of [`conv2d`] on its own (what its backward pass runs): the gradient
/// `dy` of the output scattered back through the weights. Not differentiable.
///
/// # Shapes
/// - `dy`: `[N, Cout, Ho, Wo]`, `f32`, the output shape of a convolution of an input shaped
///   `x_dims` with `w`
/// - `w`: `[Cout, Cin, KH, KW]`
/// - `x_dims`: `[N, Cin, H, W]`
/// - returns `[N, Cin, H, W]`.
pub fn conv2d_input_grad(
    dy: &Tensor,
    w: &Tensor,
    x_dims: &[usize],
    p: Conv2dParams,
) -> Result<Tensor> {
    conv::input_grad(dy, w, x_dims, p)
}

/// The weight gradient of [`conv2d`] on its own (what its backward pass runs), summed over the
/// batch. Not differentiable.
///
/// # Shapes
/// - `x`: `[N, Cin, H, W]`, `f32`
/// - `dy`: `[N, Cout, Ho, Wo]`, the output shape of a convolution of `x` with a weight shaped
///   `w_dims`
/// - `w_dims`: `[Cout, Cin, KH, KW]`
/// - returns `[Cout, Cin, KH, KW]`.
pub fn conv2d_weight_grad(
    x: &Tensor,
    dy: &Tensor,
    w_dims: &[usize],
    p: Conv2dParams,
) -> Result<Tensor> {
    conv::weight_grad(x, dy, w_dims, p)
}

/// Max pooling, floor mode, no padding, any `kernel` and `stride` (they need not be equal).
///
/// Ties send the gradient to the first maximum of the window in row-major order (as PyTorch).
///
/// # Shapes
/// `x [N, C, H, W]` (`f32`, `H, W >= kernel`) -> `[N, C, (H - kernel) / stride + 1,
/// (W - kernel) / stride + 1]`.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    pool_impl(x, kernel, stride, false, "max_pool2d")
}

/// ReLU then max-pool, fused; equal to `max_pool2d(relu(x))` in value and gradient.
///
/// # Shapes
/// As [`max_pool2d`]: `x [N, C, H, W]` -> `[N, C, Ho, Wo]`, `f32`.
pub fn relu_max_pool2d(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    pool_impl(x, kernel, stride, true, "relu_max_pool2d")
}

/// Output of BatchNorm in training mode.
#[derive(Clone, Debug)]
pub struct BatchNormTrain {
    /// The normalised (and, if asked, ReLU'd) output, same shape as the input.
    pub y: Tensor,
    /// Batch mean per channel, `[C]`, detached from autograd.
    pub mean: Tensor,
    /// *Unbiased* batch variance per channel, `[C]`, detached (what PyTorch uses to update
    /// `running_var`).
    pub var: Tensor,
}

/// BatchNorm in training mode: normalise each channel with the batch mean and the *biased*
/// batch variance (as PyTorch), scale by `gamma`, shift by `beta`, and optionally apply ReLU
/// (fused). Differentiable with respect to `x`, `gamma` and `beta`.
///
/// # Shapes
/// - `x`: `[N, C, H, W]` or `[N, C]`, `f32`, with at least two values per channel
/// - `gamma`, `beta`: `[C]`
/// - returns `y` shaped like `x`, and `mean`, `var` shaped `[C]`.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrain> {
    batchnorm::batch_norm_train_impl(x, gamma, beta, eps, relu)
}

/// BatchNorm in eval mode with running statistics: `(x - mean) / sqrt(var + eps) * gamma + beta`,
/// optionally followed by ReLU (fused). Differentiable with respect to `x`, `gamma` and `beta`.
///
/// # Shapes
/// - `x`: `[N, C, H, W]` or `[N, C]`, `f32`
/// - `gamma`, `beta`, `running_mean`, `running_var`: `[C]`
/// - returns a tensor shaped like `x`.
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    batchnorm::batch_norm_eval_impl(x, gamma, beta, running_mean, running_var, eps, relu)
}

/// The block `max_pool2d(relu(batch_norm_train(conv2d(x, w))), kernel, stride)` in training
/// mode, fused: one autograd node instead of three, so the convolution and normalisation outputs
/// never get gradient buffers of their own. The convolution has no bias (BatchNorm's `beta`
/// takes its place). Equal to the unfused composition in value and gradient.
///
/// # Shapes
/// - `x`: `[N, Cin, H, W]`, `f32`; `w`: `[Cout, Cin, KH, KW]`; `gamma`, `beta`: `[Cout]`
/// - returns `y` `[N, Cout, Po, Qo]` (the pooled output of the `[N, Cout, Ho, Wo]` convolution,
///   `Po = (Ho - kernel) / stride + 1`), and the batch `mean` and *unbiased* `var`, `[Cout]`.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_relu_pool_train(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    p: Conv2dParams,
    eps: f64,
    kernel: usize,
    stride: usize,
) -> Result<BatchNormTrain> {
    block::conv_bn_relu_pool_train_impl(x, w, gamma, beta, p, eps, kernel, stride)
}

/// Each channel's mean and maximum over the plane, `[N, C, H, W]` → `[N, 2C]` (all means,
/// then all maxima): a conv4 block's taps, through candle's differentiable reductions.
pub fn plane_mean_max(z: &Tensor) -> Result<Tensor> {
    Tensor::cat(&[z.mean((2, 3))?, z.max(3)?.max(2)?], 1)
}

/// [`conv_bn_relu_pool_train`] that also reads the block's taps: each channel's mean and
/// maximum over the plane of `relu(batch_norm_train(conv2d(x, w)))`, before the pooling (the
/// encoder's inference-time features, here for a loss to train). One autograd node; equal to
/// the unfused composition in value and gradient (a plane's maximum sends its gradient to the
/// first maximum in row-major order).
///
/// # Shapes
/// - as [`conv_bn_relu_pool_train`]; also returns the taps `[N, 2 * Cout]`: all channels'
///   means, then all channels' maxima.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_relu_pool_tap_train(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    p: Conv2dParams,
    eps: f64,
    kernel: usize,
    stride: usize,
) -> Result<(BatchNormTrain, Tensor)> {
    block::conv_bn_relu_pool_tap_train_impl(x, w, gamma, beta, p, eps, kernel, stride)
}

/// `relu?(batch_norm_train(conv2d(x, w)))` in training mode, fused: one autograd node instead
/// of two, so the convolution output never gets a gradient buffer of its own (the residual
/// blocks' convolutions). The convolution has no bias. Equal to the unfused composition in value
/// and gradient.
///
/// # Shapes
/// - `x`: `[N, Cin, H, W]`, `f32`; `w`: `[Cout, Cin, KH, KW]`; `gamma`, `beta`: `[Cout]`
/// - returns `y` `[N, Cout, Ho, Wo]`, and the batch `mean` and *unbiased* `var`, `[Cout]`.
pub fn conv_bn_train(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    p: Conv2dParams,
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrain> {
    block::conv_bn_plain_train_impl(x, w, gamma, beta, p, eps, relu)
}

/// `max_pool2d(conv2d_relu(x, w, bias), kernel, stride)`, fused into one autograd node (Koch's
/// blocks). Equal to the unfused composition in value and gradient.
///
/// # Shapes
/// - `x`: `[N, Cin, H, W]`, `f32`; `w`: `[Cout, Cin, KH, KW]`; `bias`: `[Cout]`
/// - returns `[N, Cout, Po, Qo]`, the pooled `[N, Cout, Ho, Wo]` convolution output.
pub fn conv2d_relu_max_pool2d(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    p: Conv2dParams,
    kernel: usize,
    stride: usize,
) -> Result<Tensor> {
    block::conv_relu_pool_impl(x, w, bias, p, kernel, stride)
}

/// The same block in eval mode, with running statistics folded into the convolution:
/// `max_pool2d(relu(conv2d(x, w * s) + beta - mean * s))` with `s = gamma / sqrt(var + eps)`
/// per output channel. Differentiable (through candle's ops on the folded weights).
///
/// # Shapes
/// - `x`: `[N, Cin, H, W]`, `f32`; `w`: `[Cout, Cin, KH, KW]`; `gamma`, `beta`,
///   `running_mean`, `running_var`: `[Cout]`
/// - returns `[N, Cout, Po, Qo]` as [`conv_bn_relu_pool_train`].
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_relu_pool_eval(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    p: Conv2dParams,
    eps: f64,
    kernel: usize,
    stride: usize,
) -> Result<Tensor> {
    let op = "conv_bn_relu_pool_eval";
    conv::check_conv(x, w, None, p, op)?;
    let (wf, shift) = fold_batch_norm(w, gamma, beta, running_mean, running_var, eps)?;
    conv2d_relu_max_pool2d(x, &wf, &shift, p, kernel, stride)
}

/// Folds an eval-mode BatchNorm into the bias-free convolution before it: returns `(w', b')`
/// with `conv2d(x, w', b') = batch_norm_eval(conv2d(x, w))`, that is `w' = w * s` per output
/// channel and `b' = beta - mean * s`, `s = gamma / sqrt(var + eps)`.
///
/// # Shapes
/// - `w`: `[Cout, Cin, KH, KW]`, `f32`; `gamma`, `beta`, `running_mean`, `running_var`: `[Cout]`
/// - returns `w'` shaped like `w` and `b'` `[Cout]`.
pub fn fold_batch_norm(
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let params = [
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ];
    let cout = check_channel_params(w, &params, "fold_batch_norm")?;
    let scale = (gamma / running_var.affine(1.0, eps)?.sqrt()?)?;
    let shift = (beta - (running_mean * &scale)?)?;
    let wf = w.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
    Ok((wf, shift))
}

/// `relu(a + b)`, fused (residual connections). Differentiable in both arguments.
///
/// # Shapes
/// `a`, `b`: the same shape (any rank), `f32` -> the same shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    elementwise::add_relu_impl(a, b)
}

fn pool_impl(x: &Tensor, kernel: usize, stride: usize, relu: bool, op: &str) -> Result<Tensor> {
    let (_, _, h, w) = rank4(x.dims(), op)?;
    check_f32(x, op)?;
    if kernel == 0 || stride == 0 {
        bail!("{op}: kernel ({kernel}) and stride ({stride}) must be at least 1");
    }
    if h < kernel || w < kernel {
        bail!(
            "{op}: input {:?} is smaller than the {kernel}x{kernel} kernel",
            x.dims()
        );
    }
    let pool = pool::Pool {
        kernel,
        stride,
        relu,
    };
    match x.device() {
        Device::Cpu => x.contiguous()?.apply_op1(pool::MaxPoolOp(pool)),
        dev => {
            // candle's own max-pool backward is wrong (see the module doc): run ours on the CPU.
            let y = x
                .to_device(&Device::Cpu)?
                .contiguous()?
                .apply_op1(pool::MaxPoolOp(pool))?;
            y.to_device(dev)
        }
    }
}

/// Checks that each named per-channel parameter is `f32` and shaped `[Cout]` for the conv
/// weight `w` (`[Cout, Cin, KH, KW]`); returns `Cout`.
pub(crate) fn check_channel_params(
    w: &Tensor,
    params: &[(&str, &Tensor)],
    op: &str,
) -> Result<usize> {
    let (cout, _, _, _) = rank4(w.dims(), op)?;
    check_vectors(params, cout, "the weight", w.dims(), op)?;
    Ok(cout)
}

/// Checks that each named parameter is `f32` and shaped `[len]`, the length that `what` (of
/// shape `dims`) sets.
pub(crate) fn check_vectors(
    params: &[(&str, &Tensor)],
    len: usize,
    what: &str,
    dims: &[usize],
    op: &str,
) -> Result<()> {
    for (name, t) in params {
        check_f32(t, op)?;
        if t.dims() != [len] {
            bail!(
                "{op}: {name} has shape {:?}, expected [{len}] for {what} {dims:?}",
                t.dims()
            );
        }
    }
    Ok(())
}

/// Splits a rank-4 shape, or fails naming `op`.
pub(crate) fn rank4(dims: &[usize], op: &str) -> Result<(usize, usize, usize, usize)> {
    match *dims {
        [n, c, h, w] => Ok((n, c, h, w)),
        _ => bail!("{op}: expected a rank-4 [N, C, H, W] tensor, got shape {dims:?}"),
    }
}

/// Fails naming `op` unless `t` holds `f32`.
pub(crate) fn check_f32(t: &Tensor, op: &str) -> Result<()> {
    if t.dtype() != DType::F32 {
        bail!(
            "{op}: only f32 is supported, got {:?} for a tensor of shape {:?}",
            t.dtype(),
            t.dims()
        );
    }
    Ok(())
}

/// The `f32` values of a contiguous CPU storage, or an error naming `op`.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("{op}: only f32 is supported, got {:?}", s.dtype()),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "{op}: expected a contiguous tensor, got shape {:?} with strides {:?}",
            l.dims(),
            l.stride()
        ),
    }
}

#[cfg(test)]
mod tests {
    /// Small and large buffers (the serial and the parallel path) come back the length asked
    /// for and all zero, also when the allocator reuses memory that held other values.
    #[test]
    fn zeroed_buffers_are_zero() {
        for len in [0, 1, super::PAR_ZERO_MIN - 1, super::PAR_ZERO_MIN, 3 << 17] {
            let dirty = vec![7f32; len];
            drop(dirty);
            let v = super::zeroed::<f32>(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0), "len {len}");
            let b = super::zeroed::<u8>(len);
            assert!(b.len() == len && b.iter().all(|&x| x == 0));
        }
    }
}
