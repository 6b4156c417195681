//! A bounds-checked wrapper around the `gemm` crate for strided `f32` matrices.
//!
//! Every call checks, before entering `unsafe`, that the last element each matrix view can touch
//! lies inside its slice, so the kernels above never hand `gemm` an out-of-range view.

use candle_core::{bail, Result};
pub(crate) use gemm::Parallelism;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether [`matmul`] runs in bf16 on AMX tiles (set through `nn::set_matmul_precision`).
static BF16: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_bf16(on: bool) {
    BF16.store(on, Ordering::Relaxed);
}

pub(crate) fn bf16() -> bool {
    BF16.load(Ordering::Relaxed)
}

/// Whether an `m x k` by `k x n` product runs on AMX tiles: bf16 is selected and the product is
/// large enough for the padding to 32 and the packing to pay (measured with `cargo bench -p
/// siamese-ops -- conv`: single-channel first layers, K = 9 or 49, and 1x1 shortcuts with
/// K = 32 ran slower in bf16).
pub(crate) fn use_amx(m: usize, n: usize, k: usize) -> bool {
    bf16() && m >= 32 && n >= 32 && k >= 64
}

/// A read-only strided matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major view with row stride `rs` (column stride 1).
    pub fn rows(data: &'a [f32], rs: usize) -> Self {
        Self { data, rs, cs: 1 }
    }

    /// Whether every element of a `rows x cols` view lies inside the slice (an empty view
    /// always does).
    pub fn covers(&self, rows: usize, cols: usize) -> bool {
        extent(rows, cols, self.rs, self.cs).is_none_or(|e| e < self.data.len())
    }

    /// The transpose of a row-major matrix whose rows are `rs` apart.
    pub fn rows_t(data: &'a [f32], rs: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: rs,
        }
    }
}

/// The right operand of [`amx::product`](super::amx::product): a matrix, or a producer of its rows or columns (so a
/// convolution can pack its im2col patches straight into tile order, without the f32 column
/// matrix ever reaching memory).
pub(crate) enum Rhs<'a> {
    /// A strided `k x n` matrix.
    Mat(Mat<'a>),
    /// `f(r, row)` writes row `r` (of `k`) into `row` (`n` floats).
    Rows(&'a (dyn Fn(usize, &mut [f32]) + Sync)),
    /// `f(j, col)` writes column `j` (of `n`) into `col` (`k` floats).
    Cols(&'a (dyn Fn(usize, &mut [f32]) + Sync)),
}

/// Where [`amx::product`](super::amx::product) puts the result:
/// `dst[i * rs + j] = (accumulate ? dst[i * rs + j] : 0) + result[i][j]`.
pub(crate) struct Out<'a> {
    pub dst: &'a mut [f32],
    pub rs: usize,
    pub accumulate: bool,
}

/// Index of the last element of an `m x n` view, or `None` for an empty one.
fn extent(m: usize, n: usize, rs: usize, cs: usize) -> Option<usize> {
    if m == 0 || n == 0 {
        None
    } else {
        Some((m - 1) * rs + (n - 1) * cs)
    }
}

/// `dst[m x n] (row stride dst_rs) = (accumulate ? dst : 0) + lhs[m x k] * rhs[k x n]`, on AMX
/// tiles in bf16 when [`use_amx`] says so.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    par: Parallelism,
) -> Result<()> {
    let amx = use_amx(m, n, k);
    matmul_with(m, n, k, dst, dst_rs, accumulate, lhs, rhs, par, amx)
}

/// [`matmul`], on AMX tiles only when `amx` (false: always f32, whatever the process-wide
/// precision, for products outside the network such as [`crate::distance::Matcher`]'s).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_with(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    par: Parallelism,
    amx: bool,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    if !Mat::rows(dst, dst_rs).covers(m, n) || (k > 0 && (!lhs.covers(m, k) || !rhs.covers(k, n))) {
        bail!("siamese-ops gemm: matrix view out of bounds (m={m}, n={n}, k={k})");
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * dst_rs..i * dst_rs + n].fill(0.0);
            }
        }
        return Ok(());
    }
    if amx {
        let out = Out {
            dst,
            rs: dst_rs,
            accumulate,
        };
        return super::amx::product(m, n, k, lhs, Rhs::Mat(rhs), out, par);
    }
    // SAFETY: the checks above guarantee that every element addressed through the three views
    // (indices up to `(rows-1)*rs + (cols-1)*cs`) lies inside the corresponding slice; `dst` is
    // borrowed mutably, so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}
