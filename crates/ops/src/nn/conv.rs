//! 2-D convolution (optionally fused with ReLU) as a candle custom op.
//!
//! Forward: per image, im2col of a band of output rows (so the column tile stays cache-sized)
//! followed by one `gemm` `W[Cout, K] x col[K, band]` written straight into the output, with the
//! bias and ReLU applied while the band is hot. Backward, as three independent ops:
//! - input gradient: `W^T x dy` per band, then col2im (skipped when the input is not tracked),
//! - weight gradient: `dy x col^T` accumulated over the images of each thread's contiguous slice
//!   of the batch, then the per-thread partial sums are added in a fixed order (deterministic),
//! - bias gradient: per-channel sums of `dy`.
//!
//! 3x3 stride-1 padding-1 convolutions with enough channels and pixels (see `Geom::winograd`)
//! hand all three passes to the Winograd kernels of `nn::winograd` instead.
//!
//! On AVX-512 CPUs, the forward pass of a convolution with input channels in 16s and output
//! channels in 32s runs on the channel-blocked kernels of `nn::blocked` instead (see
//! `Geom::blocked`): direct, or Winograd for the layers `nn::winograd` would take.
//!
//! A 1x1 kernel with stride 1 and no padding skips im2col and reads the input directly. Images
//! are spread over rayon threads (single-threaded `gemm` inside); a batch smaller than the thread
//! count runs image by image with a multi-threaded `gemm` instead.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Result};
use candle_core::{Shape, Tensor};
use rayon::prelude::*;

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use super::amx;
#[cfg(target_arch = "x86_64")]
use super::blocked::Blocked;
use super::gemm::{bf16, matmul, use_amx, Mat, Out, Parallelism, Rhs};
use super::winograd::{self, Isa, Wino};
use super::{check_f32, check_vectors, contiguous_f32, rank4, Conv2dParams};

/// Whether the blocked kernels may run (see `nn::set_blocked`).
static BLOCKED: AtomicBool = AtomicBool::new(true);

pub(super) fn set_blocked(on: bool) {
    BLOCKED.store(on, Ordering::Relaxed);
}

pub(super) fn blocked_enabled() -> bool {
    BLOCKED.load(Ordering::Relaxed)
}

/// Target size, in floats, of one im2col band (4 MiB; measured better than 1 MiB for K >= 2048).
const BAND_FLOATS: usize = 1024 * 1024;

/// Fewest input and output channels for which a 3x3 convolution runs as Winograd F(2x2, 3x3):
/// with one input channel (a first layer) the transforms cost more than the products they save
/// (conv4's first layer at 40x40: 8.1 ms against 3.5 ms forward).
const WINOGRAD_MIN_CHANNELS: usize = 16;

/// Fewest pixels of a plane for Winograd: on small planes the tiles past an odd edge waste a
/// large share of the work (5x5: 36 outputs computed for 25) and im2col already runs near the
/// product's peak (conv4's 5x5 layer 1.83 ms against 1.62 ms, the resnet's 7x6 no faster).
const WINOGRAD_MIN_PLANE: usize = 64;

/// Largest `K = Cin * Kh * Kw` whose forward pass adds one kernel value at a time into the
/// output rows rather than running a matrix product: the 1-channel 3x3 first layers (K = 9),
/// where a product's packing and its `Cout x P` result matrix cost more than the arithmetic.
const DIRECT_MAX_K: usize = 16;

/// Checks the arguments of a convolution; returns the output height and width.
pub(crate) fn check_conv(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
    op: &str,
) -> Result<(usize, usize)> {
    let (_, cin, h, wd) = rank4(x.dims(), op)?;
    let (cout, wcin, kh, kw) = rank4(w.dims(), op)?;
    check_f32(x, op)?;
    check_f32(w, op)?;
    if wcin != cin {
        bail!(
            "{op}: input {:?} has {cin} channels but the weight {:?} expects {wcin}",
            x.dims(),
            w.dims()
        );
    }
    if let Some(b) = bias {
        check_vectors(&[("bias", b)], cout, "the weight", w.dims(), op)?;
    }
    if p.stride == 0 {
        bail!("{op}: stride must be at least 1, got {p:?}");
    }
    if kh == 0 || kw == 0 || h + 2 * p.padding < kh || wd + 2 * p.padding < kw {
        bail!(
            "{op}: kernel {:?} does not fit the input {:?} padded by {}",
            w.dims(),
            x.dims(),
            p.padding
        );
    }
    Ok((
        (h + 2 * p.padding - kh) / p.stride + 1,
        (wd + 2 * p.padding - kw) / p.stride + 1,
    ))
}

pub(crate) fn conv2d_impl(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
    relu: bool,
) -> Result<Tensor> {
    let op = if relu { "conv2d_relu" } else { "conv2d" };
    check_conv(x, w, bias, p, op)?;
    if !matches!(x.device(), Device::Cpu) {
        return fallback(x, w, bias, p, relu);
    }
    let zeros;
    let b = match bias {
        Some(b) => b.contiguous()?,
        None => {
            zeros = Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?;
            zeros
        }
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b, ConvOp { p, relu })
}

/// `relu(conv(x, w) + bias + res)` in one pass over the output (see `nn::conv2d_add_relu`).
pub(crate) fn conv2d_add_relu_impl(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    res: &Tensor,
    p: Conv2dParams,
) -> Result<Tensor> {
    let op = "conv2d_add_relu";
    let (ho, wo) = check_conv(x, w, bias, p, op)?;
    check_f32(res, op)?;
    let (n, cout) = (x.dim(0)?, w.dim(0)?);
    if res.dims() != [n, cout, ho, wo] {
        bail!(
            "{op}: residual {:?} does not match the output [{n}, {cout}, {ho}, {wo}] of input \
             {:?} and weight {:?}",
            res.dims(),
            x.dims(),
            w.dims()
        );
    }
    if !matches!(x.device(), Device::Cpu) {
        return super::add_relu(&fallback(x, w, bias, p, false)?, res);
    }
    let bias = match bias {
        Some(b) => b.to_vec1::<f32>()?,
        None => vec![0f32; cout],
    };
    x.contiguous()?.apply_op3_no_bwd(
        &w.contiguous()?,
        &res.contiguous()?,
        &ConvAddReluOp { p, bias },
    )
}

/// `relu?(conv(x, w) + b)` of a contiguous `x` shaped `x_dims` with a contiguous `w` shaped
/// `w_dims` and an optional bias, on plain slices: returns the `[N, Cout, Ho, Wo]` values and
/// that shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_raw(
    x: &[f32],
    x_dims: &[usize],
    w: &[f32],
    w_dims: &[usize],
    b: Option<&[f32]>,
    res: Option<&[f32]>,
    relu: bool,
    p: Conv2dParams,
    op: &str,
) -> Result<(Vec<f32>, [usize; 4])> {
    let g = Geom::new(x_dims, w_dims, p, op)?;
    if x.len() != g.n * g.in_img() || w.len() != g.cout * g.k() {
        bail!("{op}: input {x_dims:?} or weight {w_dims:?} does not match its data");
    }
    if res.is_some_and(|r| r.len() != g.n * g.out_img()) {
        bail!("{op}: the residual does not match the output of {x_dims:?} and {w_dims:?}");
    }
    let zeros;
    let b = match b {
        Some(b) if b.len() == g.cout => b,
        Some(b) => bail!("{op}: bias of {} values, expected [{}]", b.len(), g.cout),
        None => {
            zeros = vec![0f32; g.cout];
            &zeros
        }
    };
    #[cfg(target_arch = "x86_64")]
    if let Some(bl) = g.blocked() {
        let y = bl.forward(x, w, (b, res), relu)?;
        return Ok((y, [g.n, g.cout, g.ho, g.wo]));
    }
    if let Some(wg) = g.winograd() {
        let y = wg.forward(x, w, Some(b), res, relu)?;
        return Ok((y, [g.n, g.cout, g.ho, g.wo]));
    }
    let y = per_group(&g, g.out_img(), |i, gn, yi, s, par| {
        let xi = &x[i * g.in_img()..(i + gn) * g.in_img()];
        let ri = res.map(|r| &r[i * g.out_img()..(i + gn) * g.out_img()]);
        g.forward_group(xi, gn, w, (b, ri), relu, yi, s, par)
    })?;
    Ok((y, [g.n, g.cout, g.ho, g.wo]))
}

/// Checks `dy` against the output shape of a convolution of `x_dims` with `w_dims`.
fn check_grad_args(
    dy: &Tensor,
    x_dims: &[usize],
    w_dims: &[usize],
    p: Conv2dParams,
    op: &str,
) -> Result<Geom> {
    check_f32(dy, op)?;
    let g = Geom::new(x_dims, w_dims, p, op)?;
    if dy.dims() != [g.n, g.cout, g.ho, g.wo] {
        bail!(
            "{op}: gradient shape {:?} does not match the output [{}, {}, {}, {}] of input \
             {x_dims:?} and weight {w_dims:?} ({p:?})",
            dy.dims(),
            g.n,
            g.cout,
            g.ho,
            g.wo
        );
    }
    Ok(g)
}

pub(crate) fn input_grad(
    dy: &Tensor,
    w: &Tensor,
    x_dims: &[usize],
    p: Conv2dParams,
) -> Result<Tensor> {
    let op = "conv2d_input_grad";
    check_f32(w, op)?;
    check_grad_args(dy, x_dims, w.dims(), p, op)?;
    if !matches!(dy.device(), Device::Cpu) {
        bail!("{op}: only implemented on the CPU");
    }
    let op = ConvInputGrad {
        p,
        x_dims: x_dims.to_vec(),
    };
    w.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &op)
}

pub(crate) fn weight_grad(
    x: &Tensor,
    dy: &Tensor,
    w_dims: &[usize],
    p: Conv2dParams,
) -> Result<Tensor> {
    let op = "conv2d_weight_grad";
    check_f32(x, op)?;
    check_grad_args(dy, x.dims(), w_dims, p, op)?;
    if !matches!(dy.device(), Device::Cpu) {
        bail!("{op}: only implemented on the CPU");
    }
    let op = ConvWeightGrad {
        p,
        w_dims: w_dims.to_vec(),
    };
    x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &op)
}

/// candle's built-in convolution, for devices without our kernels.
fn fallback(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
    relu: bool,
) -> Result<Tensor> {
    let mut y = x.conv2d(w, p.padding, p.stride, 1, 1)?;
    if let Some(b) = bias {
        y = y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?;
    }
    if relu {
        y = y.relu()?;
    }
    Ok(y)
}

/// `dst[i] = src[i * S]`: whole windows of `S` values first (a constant stride the compiler
/// turns into vector shuffles), then the last value, whose window may be cut short.
#[inline(always)]
fn every<const S: usize>(src: &[f32], dst: &mut [f32]) {
    let whole = (src.len() / S).min(dst.len());
    for (d, win) in dst[..whole].iter_mut().zip(src.chunks_exact(S)) {
        *d = win[0];
    }
    for (i, d) in dst.iter_mut().enumerate().skip(whole) {
        *d = src[i * S];
    }
}

/// The output rows `a..b` of a band that read inside the input plane, at one kernel position of
/// a stride-1 "same" convolution, and the one run of the plane they read: their values
/// `skip..skip + len` read `plane[start..start + len]`; the others read outside the plane.
#[derive(Clone, Copy, Debug)]
struct Span {
    a: usize,
    b: usize,
    start: usize,
    skip: usize,
    len: usize,
}

/// The full geometry of one convolution.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) cin: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cout: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl Geom {
    pub(super) fn new(x: &[usize], w: &[usize], p: Conv2dParams, op: &str) -> Result<Self> {
        let (n, cin, h, wd) = rank4(x, op)?;
        let (cout, wcin, kh, kw) = rank4(w, op)?;
        if wcin != cin || p.stride == 0 || h + 2 * p.padding < kh || wd + 2 * p.padding < kw {
            bail!("{op}: input {x:?} and weight {w:?} do not match ({p:?})");
        }
        Ok(Self {
            n,
            cin,
            h,
            w: wd,
            cout,
            kh,
            kw,
            stride: p.stride,
            pad: p.padding,
            ho: (h + 2 * p.padding - kh) / p.stride + 1,
            wo: (wd + 2 * p.padding - kw) / p.stride + 1,
        })
    }

    /// Rows of the im2col matrix: `Cin * KH * KW`.
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// Output pixels per channel.
    pub(super) fn p(&self) -> usize {
        self.ho * self.wo
    }

    fn in_img(&self) -> usize {
        self.cin * self.h * self.w
    }

    fn out_img(&self) -> usize {
        self.cout * self.p()
    }

    /// A 1x1, stride-1, unpadded convolution of one image per gemm reads its input directly as
    /// the column matrix.
    fn direct(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0 && self.group() == 1
    }

    /// A stride-1 convolution whose output rows are as wide as its input rows ("same" padding):
    /// each kernel position's im2col rows are one shifted run of the input plane.
    fn same(&self) -> bool {
        self.stride == 1 && self.wo == self.w
    }

    /// The shape the Winograd kernels take, when they run this convolution: 3x3, stride 1,
    /// padding 1, in f32 (bf16 keeps the AMX im2col path), with enough channels for the
    /// transforms to pay.
    fn winograd(&self) -> Option<Wino> {
        (self.winograd_fits() && self.h * self.w >= WINOGRAD_MIN_PLANE).then(|| Wino {
            n: self.n,
            cin: self.cin,
            cout: self.cout,
            h: self.h,
            w: self.w,
            isa: Isa::detect(),
        })
    }

    /// 3x3, stride 1, padding 1, in f32 (bf16 keeps the AMX im2col path), with enough channels
    /// for the transforms to pay, and Winograd not turned off.
    fn winograd_fits(&self) -> bool {
        let fits = self.kh == 3 && self.kw == 3 && self.stride == 1 && self.pad == 1;
        fits && !bf16() && winograd::enabled() && self.cin.min(self.cout) >= WINOGRAD_MIN_CHANNELS
    }

    /// The shape the blocked kernels take, when they run this convolution's forward pass: f32,
    /// AVX-512, input channels in 16s and output channels in 32s, and not a 1x1 stride-1
    /// product that reads its input as it lies; as Winograd when [`Geom::winograd_fits`]
    /// (whatever the plane size: the blocked transforms are cheap even on 7x6 planes).
    #[cfg(target_arch = "x86_64")]
    fn blocked(&self) -> Option<Blocked> {
        let fits =
            !bf16() && blocked_enabled() && !self.direct() && Blocked::fits(self.cin, self.cout);
        fits.then(|| {
            let bl = Blocked {
                g: *self,
                winograd: None,
            };
            if self.winograd_fits() {
                bl.with_winograd()
            } else {
                bl
            }
        })
    }

    /// Output rows per band (a band never spans two images).
    fn band_rows(&self) -> usize {
        (BAND_FLOATS / (self.k() * self.wo).max(1)).clamp(1, self.ho.max(1))
    }

    /// Images per gemm. Small outputs are grouped so that the gemm's column count stays large,
    /// but never so many that a thread would be left without a group.
    fn group(&self) -> usize {
        if self.band_rows() < self.ho {
            return 1;
        }
        let (t, _) = threading(self.n);
        (BAND_FLOATS / (self.k() * self.p()).max(1))
            .min(self.n.div_ceil(t))
            .max(1)
    }

    /// Per-thread scratch buffers: the column matrix, and (when grouping images) the gathered
    /// `[Cout, G * P]` output or output gradient.
    fn scratch(&self) -> Scratch {
        let grp = self.group();
        let cols = if grp > 1 {
            grp * self.p()
        } else {
            self.band_rows() * self.wo
        };
        let col = if self.direct() { 0 } else { self.k() * cols };
        let aux = if grp > 1 { self.cout * cols } else { 0 };
        Scratch::take(col, aux)
    }

    /// Valid output columns `[lo, hi)` for kernel column `kx` (those that read inside the input).
    fn ox_range(&self, kx: usize) -> (usize, usize) {
        let (s, pad) = (self.stride, self.pad);
        let hi = if self.w + pad > kx {
            ((self.w - 1 + pad - kx) / s + 1).min(self.wo)
        } else {
            0
        };
        let lo = if kx >= pad { 0 } else { (pad - kx).div_ceil(s) };
        let lo = lo.min(self.wo);
        (lo, hi.max(lo))
    }

    /// Fills the patches of output rows `oy0..oy1` of one image into the column matrix: row `r`
    /// (of `K`) starts at `col[r * ld + off]`.
    fn im2col(&self, x: &[f32], oy0: usize, oy1: usize, col: &mut [f32], ld: usize, off: usize) {
        let tp = (oy1 - oy0) * self.wo;
        for r in 0..self.k() {
            self.im2col_row(x, r, oy0, oy1, &mut col[r * ld + off..r * ld + off + tp]);
        }
    }

    /// Row `r` of the column matrix of a group of `gn` whole images (`x` holds them), into `row`
    /// (`gn * P` values, image after image).
    fn im2col_group_row(&self, x: &[f32], gn: usize, r: usize, row: &mut [f32]) {
        for (g, seg) in row.chunks_exact_mut(self.p()).take(gn).enumerate() {
            self.im2col_row(&x[g * self.in_img()..], r, 0, self.ho, seg);
        }
    }

    /// Row `r` (channel, kernel row, kernel column) of the column matrix of output rows
    /// `oy0..oy1` of one image, into `row` (`(oy1 - oy0) * Wo` values).
    fn im2col_row(&self, x: &[f32], r: usize, oy0: usize, oy1: usize, row: &mut [f32]) {
        let (c, ky, kx) = (
            r / (self.kh * self.kw),
            (r / self.kw) % self.kh,
            r % self.kw,
        );
        let plane = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
        let cols = self.ox_range(kx);
        if self.same() {
            self.shifted_rows(plane, (ky, kx), cols, oy0, oy1, row);
        } else {
            self.row_by_row(plane, (ky, kx), cols, oy0, oy1, row);
        }
    }

    /// [`Geom::im2col_row`] one output row at a time (any stride and padding).
    fn row_by_row(
        &self,
        plane: &[f32],
        (ky, kx): (usize, usize),
        (lo, hi): (usize, usize),
        oy0: usize,
        oy1: usize,
        row: &mut [f32],
    ) {
        let (wo, s, pad) = (self.wo, self.stride, self.pad);
        for oy in oy0..oy1 {
            let seg = &mut row[(oy - oy0) * wo..(oy - oy0 + 1) * wo];
            let iy = oy * s + ky;
            if iy < pad || iy - pad >= self.h {
                seg.fill(0.0);
                continue;
            }
            let src = &plane[(iy - pad) * self.w..(iy - pad + 1) * self.w];
            seg[..lo].fill(0.0);
            seg[hi..].fill(0.0);
            if lo < hi {
                let src = &src[lo * s + kx - pad..];
                match s {
                    1 => seg[lo..hi].copy_from_slice(&src[..hi - lo]),
                    2 => every::<2>(src, &mut seg[lo..hi]),
                    _ => {
                        for (ox, d) in seg[lo..hi].iter_mut().enumerate() {
                            *d = src[ox * s];
                        }
                    }
                }
            }
        }
    }

    /// [`Geom::im2col_row`] with stride 1 and output rows as wide as input rows ("same"
    /// padding): the valid output rows then read one contiguous run of the input plane, shifted
    /// by `kx - pad`, so they take one copy rather than one per output row, and only the
    /// `lo` + `wo - hi` values per row that wrapped around from the neighbouring rows (or lie
    /// outside the plane) are cleared afterwards.
    fn shifted_rows(
        &self,
        plane: &[f32],
        (ky, kx): (usize, usize),
        (lo, hi): (usize, usize),
        oy0: usize,
        oy1: usize,
        row: &mut [f32],
    ) {
        let w = self.w;
        let span = self.same_span((ky, kx), oy0, oy1, plane.len());
        let row = &mut row[..(oy1 - oy0) * w];
        row[..(span.a - oy0) * w].fill(0.0);
        row[(span.b - oy0) * w..].fill(0.0);
        let dst = &mut row[(span.a - oy0) * w..(span.b - oy0) * w];
        let (skip, len, start) = (span.skip, span.len, span.start);
        dst[skip..skip + len].copy_from_slice(&plane[start..start + len]);
        dst[..skip].fill(0.0);
        dst[skip + len..].fill(0.0);
        for seg in dst.chunks_exact_mut(w) {
            seg[..lo].fill(0.0);
            seg[hi..].fill(0.0);
        }
    }

    /// Where kernel position `(ky, kx)` of a stride-1 "same" convolution reads a plane of
    /// `plane_len` values for output rows `oy0..oy1`.
    fn same_span(
        &self,
        (ky, kx): (usize, usize),
        oy0: usize,
        oy1: usize,
        plane_len: usize,
    ) -> Span {
        let (w, pad) = (self.w, self.pad);
        // Output rows whose input row `oy + ky - pad` lies in the plane.
        let a = pad.saturating_sub(ky).clamp(oy0, oy1);
        let b = (self.h + pad).saturating_sub(ky).clamp(a, oy1);
        let none = Span {
            a,
            b: a,
            start: 0,
            skip: 0,
            len: 0,
        };
        if a == b {
            return none;
        }
        // Output value j of rows a..b reads plane[first + j + kx - pad], where that is in range.
        let first = (a + ky - pad) * w;
        let (start, skip) = match (first + kx).checked_sub(pad) {
            Some(v) => (v, 0),
            None => (0, pad - kx - first),
        };
        let n = (b - a) * w;
        let skip = skip.min(n);
        let len = (n - skip).min(plane_len.saturating_sub(start));
        if len == 0 {
            // Every value reads outside the plane (planes narrower than the padding).
            return none;
        }
        Span {
            a,
            b,
            start,
            skip,
            len,
        }
    }

    /// Adds the column-matrix gradient of output rows `oy0..oy1` (laid out as in
    /// [`Geom::im2col`]) back into the input-shaped gradient `dx` of one image.
    ///
    /// `col` is scratch: stride-1 "same" convolutions clear the values of it that read outside
    /// the input, so that each kernel position adds one contiguous run into the plane.
    fn col2im(
        &self,
        col: &mut [f32],
        oy0: usize,
        oy1: usize,
        dx: &mut [f32],
        ld: usize,
        off: usize,
    ) {
        let tp = (oy1 - oy0) * self.wo;
        let same = self.same();
        for c in 0..self.cin {
            let plane = &mut dx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let r = (c * self.kh + ky) * self.kw + kx;
                    let row = &mut col[r * ld + off..r * ld + off + tp];
                    let cols = self.ox_range(kx);
                    if cols.0 >= cols.1 {
                        continue;
                    }
                    if same {
                        self.shifted_add(row, (ky, kx), cols, oy0, oy1, plane);
                    } else {
                        self.add_row_by_row(row, (ky, kx), cols, oy0, oy1, plane);
                    }
                }
            }
        }
    }

    /// [`Geom::col2im`] of one kernel position, one output row at a time.
    fn add_row_by_row(
        &self,
        row: &[f32],
        (ky, kx): (usize, usize),
        (lo, hi): (usize, usize),
        oy0: usize,
        oy1: usize,
        plane: &mut [f32],
    ) {
        let (wo, s, pad) = (self.wo, self.stride, self.pad);
        for oy in oy0..oy1 {
            let iy = oy * s + ky;
            if iy < pad || iy - pad >= self.h {
                continue;
            }
            let seg = &row[(oy - oy0) * wo..(oy - oy0 + 1) * wo];
            let dst = &mut plane[(iy - pad) * self.w..(iy - pad + 1) * self.w];
            if s == 1 {
                let d = &mut dst[lo + kx - pad..hi + kx - pad];
                for (d, v) in d.iter_mut().zip(&seg[lo..hi]) {
                    *d += v;
                }
            } else {
                for ox in lo..hi {
                    dst[ox * s + kx - pad] += seg[ox];
                }
            }
        }
    }

    /// [`Geom::col2im`] of one kernel position of a stride-1 "same" convolution: the values
    /// that read outside the input are cleared in `row`, then the valid rows add as one run.
    fn shifted_add(
        &self,
        row: &mut [f32],
        (ky, kx): (usize, usize),
        (lo, hi): (usize, usize),
        oy0: usize,
        oy1: usize,
        plane: &mut [f32],
    ) {
        let w = self.w;
        let span = self.same_span((ky, kx), oy0, oy1, plane.len());
        let src = &mut row[(span.a - oy0) * w..(span.b - oy0) * w];
        for seg in src.chunks_exact_mut(w) {
            seg[..lo].fill(0.0);
            seg[hi..].fill(0.0);
        }
        let src = &src[span.skip..span.skip + span.len];
        for (d, v) in plane[span.start..span.start + span.len].iter_mut().zip(src) {
            *d += v;
        }
    }

    /// The bands of output rows, `(oy0, oy1)`.
    fn bands(&self) -> impl Iterator<Item = (usize, usize)> {
        let step = self.band_rows();
        let ho = self.ho;
        (0..ho).step_by(step).map(move |o| (o, (o + step).min(ho)))
    }

    /// Copies `[Cout, P]` blocks of the `gn` images of a group (`src`, one image after another)
    /// into the gathered `[Cout, gn * P]` matrix `dst`.
    fn gather(&self, src: &[f32], gn: usize, dst: &mut [f32]) {
        let (p, tp) = (self.p(), gn * self.p());
        for g in 0..gn {
            for co in 0..self.cout {
                dst[co * tp + g * p..co * tp + (g + 1) * p]
                    .copy_from_slice(&src[(g * self.cout + co) * p..(g * self.cout + co + 1) * p]);
            }
        }
    }

    /// [`Geom::forward_group`] for `K <= DIRECT_MAX_K`: per band of output rows, the patches
    /// (`K` rows of the column matrix, in L2), then each output channel's rows as `b + Σ_r
    /// w[r] col[r]`, accumulated in place (in L1) and written once. Measured on the resnet's
    /// stem (1 channel to 32, 3x3 stride 2, 112x92, batch 64) with `cargo bench -p siamese-ops
    /// -- conv-resnet/forward/f32/res-stem`.
    #[allow(clippy::too_many_arguments)]
    fn forward_small_k(
        &self,
        x: &[f32],
        gn: usize,
        w: &[f32],
        (b, res): (&[f32], Option<&[f32]>),
        relu: bool,
        y: &mut [f32],
        s: &mut Scratch,
    ) {
        let (k, p, wo) = (self.k(), self.p(), self.wo);
        for g in 0..gn {
            let xi = &x[g * self.in_img()..(g + 1) * self.in_img()];
            let yi = &mut y[g * self.out_img()..(g + 1) * self.out_img()];
            let ri = res.map(|r| &r[g * self.out_img()..(g + 1) * self.out_img()]);
            for (oy0, oy1) in self.bands() {
                let tp = (oy1 - oy0) * wo;
                self.im2col(xi, oy0, oy1, &mut s.col, tp, 0);
                let col = &s.col[..k * tp];
                super::wide(
                    #[inline(always)]
                    || {
                        for (co, (wk, &bias)) in w.chunks_exact(k).zip(b).enumerate() {
                            let at = co * p + oy0 * wo;
                            let out = &mut yi[at..][..tp];
                            out.fill(bias);
                            for (&c, src) in wk.iter().zip(col.chunks_exact(tp)) {
                                out.iter_mut().zip(src).for_each(|(o, v)| *o += c * v);
                            }
                            finish(out, None, ri.map(|r| &r[at..][..tp]), 0.0, relu);
                        }
                    },
                );
            }
        }
    }

    /// Forward pass of a group of `gn` images: `y[Cout, P] = relu?(W x col + b)` per image;
    /// `x` and `y` are the group's chunks of the batch.
    fn forward_group(
        &self,
        x: &[f32],
        gn: usize,
        w: &[f32],
        (b, res): (&[f32], Option<&[f32]>),
        relu: bool,
        y: &mut [f32],
        s: &mut Scratch,
        par: Parallelism,
    ) -> Result<()> {
        if self.k() <= DIRECT_MAX_K && !bf16() && !self.direct() {
            self.forward_small_k(x, gn, w, (b, res), relu, y, s);
            return Ok(());
        }
        let (k, p, wo, cout) = (self.k(), self.p(), self.wo, self.cout);
        // `y[at..at + len]` from the product's values (`src`, else in place), the bias and the
        // residual at the same place.
        let epilogue = |y: &mut [f32], at: usize, len: usize, src: Option<&[f32]>, bias: f32| {
            let r = res.map(|r| &r[at..][..len]);
            finish(&mut y[at..][..len], src, r, bias, relu);
        };
        if gn > 1 {
            let tp = gn * p;
            if use_amx(cout, tp, k) {
                let rows = |r: usize, row: &mut [f32]| self.im2col_group_row(x, gn, r, row);
                let out = Out {
                    dst: &mut s.aux,
                    rs: tp,
                    accumulate: false,
                };
                amx::product(cout, tp, k, Mat::rows(w, k), Rhs::Rows(&rows), out, par)?;
            } else {
                for g in 0..gn {
                    self.im2col(&x[g * self.in_img()..], 0, self.ho, &mut s.col, tp, g * p);
                }
                let rhs = Mat::rows(&s.col[..k * tp], tp);
                let lhs = Mat::rows(w, k);
                matmul(cout, tp, k, &mut s.aux, tp, false, lhs, rhs, par)?;
            }
            for g in 0..gn {
                for co in 0..cout {
                    let src = &s.aux[co * tp + g * p..co * tp + (g + 1) * p];
                    epilogue(y, (g * cout + co) * p, p, Some(src), b[co]);
                }
            }
            return Ok(());
        }
        for (oy0, oy1) in self.bands() {
            let (p0, tp) = (oy0 * wo, (oy1 - oy0) * wo);
            if !self.direct() && use_amx(cout, tp, k) {
                let rows = |r: usize, row: &mut [f32]| self.im2col_row(x, r, oy0, oy1, row);
                let out = Out {
                    dst: &mut y[p0..],
                    rs: p,
                    accumulate: false,
                };
                amx::product(cout, tp, k, Mat::rows(w, k), Rhs::Rows(&rows), out, par)?;
                for co in 0..cout {
                    epilogue(y, co * p + p0, tp, None, b[co]);
                }
                continue;
            }
            let rhs = if self.direct() {
                Mat::rows(&x[p0..], p)
            } else {
                self.im2col(x, oy0, oy1, &mut s.col, tp, 0);
                Mat::rows(&s.col[..k * tp], tp)
            };
            matmul(
                cout,
                tp,
                k,
                &mut y[p0..],
                p,
                false,
                Mat::rows(w, k),
                rhs,
                par,
            )?;
            for co in 0..cout {
                epilogue(y, co * p + p0, tp, None, b[co]);
            }
        }
        Ok(())
    }

    /// Input gradient of a group of `gn` images: `dx = col2im(W^T x dy)`; `dx` starts zeroed.
    fn input_grad_group(
        &self,
        w: &[f32],
        dy: &[f32],
        gn: usize,
        dx: &mut [f32],
        s: &mut Scratch,
        par: Parallelism,
    ) -> Result<()> {
        let (k, p, wo, cout) = (self.k(), self.p(), self.wo, self.cout);
        let lhs = Mat::rows_t(w, k);
        if gn > 1 {
            let tp = gn * p;
            self.gather(dy, gn, &mut s.aux);
            let rhs = Mat::rows(&s.aux[..cout * tp], tp);
            matmul(k, tp, cout, &mut s.col[..k * tp], tp, false, lhs, rhs, par)?;
            for g in 0..gn {
                let dxi = &mut dx[g * self.in_img()..(g + 1) * self.in_img()];
                self.col2im(&mut s.col, 0, self.ho, dxi, tp, g * p);
            }
            return Ok(());
        }
        for (oy0, oy1) in self.bands() {
            let (p0, tp) = (oy0 * wo, (oy1 - oy0) * wo);
            let rhs = Mat::rows(&dy[p0..], p);
            if self.direct() {
                matmul(k, tp, cout, &mut dx[p0..], p, false, lhs, rhs, par)?;
            } else {
                matmul(k, tp, cout, &mut s.col[..k * tp], tp, false, lhs, rhs, par)?;
                self.col2im(&mut s.col, oy0, oy1, dx, tp, 0);
            }
        }
        Ok(())
    }

    /// Weight gradient of a group of `gn` images, accumulated: `dw[Cout, K] += dy x col^T`.
    fn weight_grad_group(
        &self,
        x: &[f32],
        dy: &[f32],
        gn: usize,
        dw: &mut [f32],
        s: &mut Scratch,
        par: Parallelism,
    ) -> Result<()> {
        let (k, p, wo, cout) = (self.k(), self.p(), self.wo, self.cout);
        if gn > 1 {
            let tp = gn * p;
            self.gather(dy, gn, &mut s.aux);
            let lhs = Mat::rows(&s.aux[..cout * tp], tp);
            if use_amx(cout, k, tp) {
                let cols = |j: usize, col: &mut [f32]| self.im2col_group_row(x, gn, j, col);
                let out = Out {
                    dst: dw,
                    rs: k,
                    accumulate: true,
                };
                return amx::product(cout, k, tp, lhs, Rhs::Cols(&cols), out, par);
            }
            for g in 0..gn {
                self.im2col(&x[g * self.in_img()..], 0, self.ho, &mut s.col, tp, g * p);
            }
            let rhs = Mat::rows_t(&s.col[..k * tp], tp);
            return matmul(cout, k, tp, dw, k, true, lhs, rhs, par);
        }
        for (oy0, oy1) in self.bands() {
            let (p0, tp) = (oy0 * wo, (oy1 - oy0) * wo);
            if !self.direct() && use_amx(cout, k, tp) {
                let cols = |j: usize, col: &mut [f32]| self.im2col_row(x, j, oy0, oy1, col);
                let out = Out {
                    dst: &mut *dw,
                    rs: k,
                    accumulate: true,
                };
                let lhs = Mat::rows(&dy[p0..], p);
                amx::product(cout, k, tp, lhs, Rhs::Cols(&cols), out, par)?;
                continue;
            }
            let rhs = if self.direct() {
                Mat::rows_t(&x[p0..], p)
            } else {
                self.im2col(x, oy0, oy1, &mut s.col, tp, 0);
                Mat::rows_t(&s.col[..k * tp], tp)
            };
            matmul(cout, k, tp, dw, k, true, Mat::rows(&dy[p0..], p), rhs, par)?;
        }
        Ok(())
    }
}

/// One thread's scratch buffers (see [`Geom::scratch`]). They come from, and go back to, a
/// per-thread pool: every convolution of a training step needs them, and allocating them afresh
/// cost a zero-fill of several MiB each time (every kernel writes a buffer before reading it,
/// so reused contents never leak into results).
pub(super) struct Scratch {
    pub(super) col: Vec<f32>,
    pub(super) aux: Vec<f32>,
}

thread_local! {
    static POOL: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

impl Scratch {
    /// Buffers of at least `col` and `aux` floats, from this thread's pool when it has them.
    pub(super) fn take(col: usize, aux: usize) -> Self {
        let (mut c, mut a) = POOL
            .try_with(|p| std::mem::take(&mut *p.borrow_mut()))
            .unwrap_or_default();
        if c.len() < col {
            c.resize(col, 0.0);
        }
        if a.len() < aux {
            a.resize(aux, 0.0);
        }
        Scratch { col: c, aux: a }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let bufs = (std::mem::take(&mut self.col), std::mem::take(&mut self.aux));
        let _ = POOL.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                // Keep the larger of what the pool holds and what comes back.
                if bufs.0.len() >= p.0.len() {
                    p.0 = bufs.0;
                }
                if bufs.1.len() >= p.1.len() {
                    p.1 = bufs.1;
                }
            }
        });
    }
}

/// Threads to use, and whether the batch is large enough to give each thread whole images.
pub(super) fn threading(n: usize) -> (usize, bool) {
    let t = candle_core::utils::get_num_threads().max(1);
    (t, n >= t && t > 1)
}

/// `run(images, parallelism)` over contiguous slices of a batch of `n` images (each a whole
/// number of `grp`-image groups), one slice per thread, each returning `len` partial sums, added
/// in slice order: deterministic for a given thread count. A batch smaller than the thread
/// count runs as one slice with parallel matrix products inside.
pub(super) fn sum_over_slices<F>(n: usize, grp: usize, len: usize, run: F) -> Result<Vec<f32>>
where
    F: Fn(std::ops::Range<usize>, Parallelism) -> Result<Vec<f32>> + Sync,
{
    let (t, by_image) = threading(n);
    if !by_image {
        return run(0..n, Parallelism::Rayon(t));
    }
    let per = n.div_ceil(grp.max(1)).div_ceil(t) * grp.max(1);
    let parts = (0..t)
        .into_par_iter()
        .map(|j| run((j * per).min(n)..((j + 1) * per).min(n), Parallelism::None))
        .collect::<Result<Vec<_>>>()?;
    let mut parts = parts.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![0f32; len]);
    for part in parts {
        sum.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
    }
    Ok(sum)
}

/// [`each_group`] with the convolution's own group size and scratch buffers.
fn per_group<F>(g: &Geom, out_len: usize, f: F) -> Result<Vec<f32>>
where
    F: Fn(usize, usize, &mut [f32], &mut Scratch, Parallelism) -> Result<()> + Sync,
{
    each_group(g.n, g.group(), out_len, || g.scratch(), f)
}

/// Runs `f(first image, images, out chunk, scratch, gemm parallelism)` over the `grp`-image
/// groups of a batch of `n`, each writing its own chunk of a new `n * out_len`-float output,
/// which it returns; `scratch` makes one set of buffers per thread. A batch at least as large
/// as the thread count is cut into one contiguous slice per thread, its groups run in turn:
/// equal shares whatever the group size (64 images in groups of 21 were 42 against 22 images).
/// A smaller batch runs its groups in turn with parallel matrix products inside.
///
/// Each chunk reaches `f` zeroed, by the thread that runs it, just before `f` writes it: the
/// lines are then still in cache when the kernel stores its values, where zeroing the whole
/// output first was a separate pass over memory (`embed` with a resnet ran 0.91x the wall
/// time without that pass, measured alternately).
pub(super) fn each_group<F, S>(
    n: usize,
    grp: usize,
    out_len: usize,
    scratch: S,
    f: F,
) -> Result<Vec<f32>>
where
    F: Fn(usize, usize, &mut [f32], &mut Scratch, Parallelism) -> Result<()> + Sync,
    S: Fn() -> Scratch + Sync,
{
    let zeroed =
        |i, gn, o: &mut [MaybeUninit<f32>], s: &mut Scratch, par| f(i, gn, zero(o), s, par);
    // SAFETY: `zeroed` writes every value of its chunk (`zero`) before `f` sees it.
    unsafe { each_group_uninit(n, grp, out_len, scratch, zeroed) }
}

/// [`each_group`] for kernels that write every value of their chunk themselves: the chunks
/// reach `f` uninitialised (the blocked kernels store every output once, so zeroing them
/// first only cost a pass of stores).
///
/// # Safety
/// When `f` returns `Ok`, it must have written every value of the chunk it was given.
pub(super) unsafe fn each_group_uninit<F, S>(
    n: usize,
    grp: usize,
    out_len: usize,
    scratch: S,
    f: F,
) -> Result<Vec<f32>>
where
    F: Fn(usize, usize, &mut [MaybeUninit<f32>], &mut Scratch, Parallelism) -> Result<()> + Sync,
    S: Fn() -> Scratch + Sync,
{
    let len = n * out_len;
    let mut y = Vec::<f32>::with_capacity(len);
    if len == 0 {
        return Ok(y);
    }
    let out = &mut y.spare_capacity_mut()[..len];
    let grp = grp.max(1);
    let (t, by_image) = threading(n);
    let (per, par) = if by_image {
        (n.div_ceil(t), Parallelism::None)
    } else {
        (n.max(1), Parallelism::Rayon(t))
    };
    let slice = |(j, slice): (usize, &mut [MaybeUninit<f32>])| -> Result<()> {
        let mut s = scratch();
        for (k, o) in slice.chunks_mut(grp * out_len).enumerate() {
            f(j * per + k * grp, o.len() / out_len, o, &mut s, par)?;
        }
        Ok(())
    };
    if by_image {
        out.par_chunks_mut(per * out_len)
            .enumerate()
            .try_for_each(slice)?;
    } else {
        out.chunks_mut(per * out_len)
            .enumerate()
            .try_for_each(slice)?;
    }
    // SAFETY: the chunks above cover `out` (`len` values), and `f` wrote all of each (the
    // caller's contract); an error returned early, leaving `y` empty.
    unsafe { y.set_len(len) };
    Ok(y)
}

/// Zeroes `o` and hands it back as initialised floats.
fn zero(o: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    o.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was written just above, and `MaybeUninit<f32>` has the layout of
    // `f32`.
    unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `dst = relu?(src + bias + res)` value by value, `src` being `dst` itself when `None`: the
/// epilogue of every forward kernel, adding in the order the unfused ops would.
fn finish(dst: &mut [f32], src: Option<&[f32]>, res: Option<&[f32]>, bias: f32, relu: bool) {
    let act = |v: f32| if relu { v.max(0.0) } else { v };
    match (src, res) {
        (Some(s), Some(r)) => {
            let pairs = dst.iter_mut().zip(s.iter().zip(r));
            pairs.for_each(|(d, (v, r))| *d = act(v + bias + r));
        }
        (Some(s), None) => dst.iter_mut().zip(s).for_each(|(d, v)| *d = act(v + bias)),
        (None, Some(r)) => dst
            .iter_mut()
            .zip(r)
            .for_each(|(d, r)| *d = act(*d + bias + r)),
        (None, None) => dst.iter_mut().for_each(|d| *d = act(*d + bias)),
    }
}

/// [`forward_raw`] on an op's input and weight storages, with the epilogue `(bias, residual,
/// relu)`: the forward pass of [`ConvOp`] and [`ConvAddReluOp`].
fn forward_op(
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (b, res, relu): (Option<&[f32]>, Option<&[f32]>, bool),
    p: Conv2dParams,
    op: &str,
) -> Result<(CpuStorage, Shape)> {
    let x = contiguous_f32(s1, l1, op)?;
    let w = contiguous_f32(s2, l2, op)?;
    let (y, dims) = forward_raw(x, l1.dims(), w, l2.dims(), b, res, relu, p, op)?;
    Ok((CpuStorage::F32(y), Shape::from(dims.to_vec())))
}

/// The inference-only op `(x, w, res) -> relu(conv(x, w) + bias + res)` (no gradient).
struct ConvAddReluOp {
    p: Conv2dParams,
    bias: Vec<f32>,
}

impl CustomOp3 for ConvAddReluOp {
    fn name(&self) -> &'static str {
        "siamese-conv2d-add-relu"
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
        let res = contiguous_f32(s3, l3, self.name())?;
        let epilogue = (Some(self.bias.as_slice()), Some(res), true);
        forward_op((s1, l1), (s2, l2), epilogue, self.p, self.name())
    }
}

/// The forward op: `(x, w, b) -> relu?(conv(x, w) + b)`.
struct ConvOp {
    p: Conv2dParams,
    relu: bool,
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        if self.relu {
            "siamese-conv2d-relu"
        } else {
            "siamese-conv2d"
        }
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
        let b = contiguous_f32(s3, l3, self.name())?;
        let epilogue = (Some(b), None, self.relu);
        forward_op((s1, l1), (s2, l2), epilogue, self.p, self.name())
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let g = if self.relu {
            grad.apply_op2_no_bwd(&res.contiguous()?, &ReluMask)?
        } else {
            grad
        };
        let x = x.contiguous()?;
        let w = w.contiguous()?;
        let dx = if x.track_op() {
            let op = ConvInputGrad {
                p: self.p,
                x_dims: x.dims().to_vec(),
            };
            Some(w.apply_op2_no_bwd(&g, &op)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let op = ConvWeightGrad {
                p: self.p,
                w_dims: w.dims().to_vec(),
            };
            Some(x.apply_op2_no_bwd(&g, &op)?)
        } else {
            None
        };
        let db = if b.track_op() {
            Some(g.apply_op1_no_bwd(&ChannelSum)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// Checks that a gradient has the output shape of geometry `g`.
fn check_grad(g: &Geom, l: &Layout, op: &str) -> Result<()> {
    if l.dims() != [g.n, g.cout, g.ho, g.wo] {
        bail!(
            "{op}: gradient shape {:?} does not match the output [{}, {}, {}, {}]",
            l.dims(),
            g.n,
            g.cout,
            g.ho,
            g.wo
        );
    }
    Ok(())
}

/// `(w, dy) -> dx`, the input gradient.
struct ConvInputGrad {
    p: Conv2dParams,
    x_dims: Vec<usize>,
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "siamese-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(&self.x_dims, l1.dims(), self.p, self.name())?;
        check_grad(&g, l2, self.name())?;
        let w = contiguous_f32(s1, l1, self.name())?;
        let dy = contiguous_f32(s2, l2, self.name())?;
        if let Some(wg) = g.winograd() {
            let dx = wg.input_grad(w, dy)?;
            return Ok((CpuStorage::F32(dx), Shape::from(self.x_dims.clone())));
        }
        let dx = per_group(&g, g.in_img(), |i, gn, dxi, s, par| {
            let dyi = &dy[i * g.out_img()..(i + gn) * g.out_img()];
            g.input_grad_group(w, dyi, gn, dxi, s, par)
        })?;
        Ok((CpuStorage::F32(dx), Shape::from(self.x_dims.clone())))
    }
}

/// `(x, dy) -> dw`, the weight gradient.
struct ConvWeightGrad {
    p: Conv2dParams,
    w_dims: Vec<usize>,
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "siamese-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), &self.w_dims, self.p, self.name())?;
        check_grad(&g, l2, self.name())?;
        let x = contiguous_f32(s1, l1, self.name())?;
        let dy = contiguous_f32(s2, l2, self.name())?;
        if let Some(wg) = g.winograd() {
            let dw = wg.weight_grad(x, dy)?;
            return Ok((CpuStorage::F32(dw), Shape::from(self.w_dims.clone())));
        }
        let wlen = g.cout * g.k();
        let grp = g.group();
        // Images `range` (a whole number of groups), accumulated into one partial sum.
        let run = |range: std::ops::Range<usize>, par: Parallelism| -> Result<Vec<f32>> {
            let mut dw = vec![0f32; wlen];
            let mut s = g.scratch();
            for i in range.step_by(grp) {
                let gn = grp.min(g.n - i);
                let xi = &x[i * g.in_img()..(i + gn) * g.in_img()];
                let dyi = &dy[i * g.out_img()..(i + gn) * g.out_img()];
                g.weight_grad_group(xi, dyi, gn, &mut dw, &mut s, par)?;
            }
            Ok(dw)
        };
        let dw = sum_over_slices(g.n, grp, wlen, run)?;
        Ok((CpuStorage::F32(dw), Shape::from(self.w_dims.clone())))
    }
}

/// `dy [N, C, H, W] -> [C]`, the per-channel sum (the bias gradient).
struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "siamese-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = rank4(l.dims(), self.name())?;
        let dy = contiguous_f32(s, l, self.name())?;
        let plane = h * w;
        let sums: Vec<f32> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let mut acc = 0f64;
                for i in 0..n {
                    let start = (i * c + ch) * plane;
                    acc += dy[start..start + plane]
                        .iter()
                        .map(|&v| v as f64)
                        .sum::<f64>();
                }
                acc as f32
            })
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

/// `(grad, y) -> grad * (y > 0)`, the backward pass of a fused ReLU.
pub(crate) struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "siamese-relu-mask"
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
                "{}: gradient {:?} and output {:?} differ in shape",
                self.name(),
                l1.dims(),
                l2.dims()
            );
        }
        let g = contiguous_f32(s1, l1, self.name())?;
        let y = contiguous_f32(s2, l2, self.name())?;
        let mut out = super::zeroed::<f32>(g.len());
        const CHUNK: usize = 1 << 16;
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
            .for_each(|(o, (g, y))| {
                for ((o, &g), &y) in o.iter_mut().zip(g).zip(y) {
                    *o = if y > 0.0 { g } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_other_value_with_short_last_window() {
        let src: Vec<f32> = (0..9).map(|i| i as f32).collect();
        for n in 0..=5 {
            let mut dst = vec![f32::NAN; n];
            every::<2>(&src, &mut dst);
            let want: Vec<f32> = (0..n).map(|i| (2 * i) as f32).collect();
            assert_eq!(dst, want, "{n} values");
        }
    }

    /// The one-copy im2col rows of "same" stride-1 convolutions equal the row-by-row ones, and
    /// so does their col2im addition, for every kernel position and band of output rows,
    /// including paddings wider than the kernel reach and planes narrower than the padding.
    #[test]
    fn shifted_rows_equal_row_by_row() -> Result<()> {
        for &(h, w, k, pad) in &[
            (5, 7, 3, 1),
            (4, 4, 5, 2),
            (6, 3, 1, 0),
            (3, 2, 7, 3),
            (1, 1, 3, 1),
            (9, 5, 3, 1),
        ] {
            let p = Conv2dParams {
                stride: 1,
                padding: pad,
            };
            let g = Geom::new(&[1, 2, h, w], &[1, 2, k, k], p, "test")?;
            assert_eq!(g.wo, w);
            let x: Vec<f32> = (0..2 * h * w).map(|i| i as f32 + 1.0).collect();
            for r in 0..g.k() {
                let (c, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                let plane = &x[c * h * w..(c + 1) * h * w];
                for oy0 in 0..g.ho {
                    for oy1 in oy0 + 1..=g.ho {
                        let len = (oy1 - oy0) * w;
                        let mut fast = vec![f32::NAN; len];
                        let mut slow = vec![f32::NAN; len];
                        let cols = g.ox_range(kx);
                        g.shifted_rows(plane, (ky, kx), cols, oy0, oy1, &mut fast);
                        g.row_by_row(plane, (ky, kx), cols, oy0, oy1, &mut slow);
                        assert_eq!(fast, slow, "{h}x{w} k{k} pad{pad} r{r} rows {oy0}..{oy1}");
                        // And back: the one-run addition equals the row-by-row one (col2im
                        // skips kernel positions that read nothing inside the plane).
                        if cols.0 >= cols.1 {
                            continue;
                        }
                        let mut grad: Vec<f32> = (0..len).map(|i| 0.5 + i as f32).collect();
                        let (mut once, mut rows) = (vec![1.0; h * w], vec![1.0; h * w]);
                        g.add_row_by_row(&grad, (ky, kx), cols, oy0, oy1, &mut rows);
                        g.shifted_add(&mut grad, (ky, kx), cols, oy0, oy1, &mut once);
                        assert_eq!(once, rows, "col2im {h}x{w} k{k} pad{pad} r{r} {oy0}..{oy1}");
                    }
                }
            }
        }
        Ok(())
    }
}
