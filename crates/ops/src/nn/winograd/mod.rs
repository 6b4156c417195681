//! Winograd F(2x2, 3x3) kernels for the 3x3, stride-1, padding-1 convolutions (conv4's layers
//! after the first, the residual blocks' inner convolutions): forward, input gradient and weight
//! gradient. `conv` decides which convolutions come here (`Geom::winograd`); on AVX-512 CPUs
//! the forward pass of those with input channels in 16s and output channels in 32s runs on the
//! channel-blocked layout of `nn::blocked` instead, with the same transforms.
//!
//! The output is cut into 2x2 tiles; each tile reads a 4x4 input patch. With `B`, `G`, `A` of
//! Lavin & Gray (2016), a tile's output is `A^T [(G w G^T) ⊙ (B^T d B)] A`, so the 36
//! multiplications a tile and channel pair costs directly become 16, done as 16 matrix products
//! (one per position `ξ` of the 4x4 transformed tile) over all tiles of a chunk:
//! `M_ξ[Cout, tiles] = U_ξ[Cout, Cin] x V_ξ[Cin, tiles]`.
//! - Input gradient: the same forward pass over `dy`, with the kernel flipped and its two
//!   channel axes swapped.
//! - Weight gradient: by linearity, `dW = G^T [Σ_tiles (A g A^T) ⊙ (B^T d B)] G` for each 2x2
//!   output-gradient tile `g`: 16 products `Q_ξ[Cout, Cin] += W_ξ[Cout, tiles] x V_ξ[Cin, tiles]^T`.
//!
//! Tiles past an odd output edge read zeros and their outputs are dropped (their gradient is
//! zero). Transforms run along whole tile rows with the even and odd input columns split apart,
//! 16 tiles to a vector on AVX-512 (`avx512.rs`, chosen at run time), contiguous runs the
//! compiler vectorises elsewhere. Chunks are whole images (grouped while small) or bands of tile
//! rows of one image; images are spread over threads as the im2col path spreads them, and a
//! batch smaller than the thread count spreads the 16 products instead.
//!
//! Measured with `cargo bench -p siamese-ops -- conv-resnet` (batch 64, `f32` against
//! `f32-im2col` in the same run): the resnet's 32-channel 56x46 layer 18.6 ms against 39.8 ms
//! forward, 18.9 against 31.5 input gradient, 24.9 against 41.1 weight gradient.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Result;
use rayon::prelude::*;

use super::conv::{each_group, sum_over_slices, Scratch};
use super::gemm::{matmul_with, Mat, Parallelism};

/// Which kernels run the transforms and products: the AVX-512 ones where the CPU has it, else
/// portable Rust (transforms the compiler vectorises, products through `gemm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The best this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        Isa::Portable
    }

    /// One transformed position's product, `m x n` into `c` (row stride `n`), reducing over `k`;
    /// both operands are a chunk's worth, small enough that register-blocked kernels reading
    /// them where they lie beat a general matrix product that packs them first.
    fn product(
        self,
        p: Product,
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
    ) -> Result<()> {
        if a.len() < m * k || b.len() < k * n || c.len() < m * n {
            candle_core::bail!("winograd: product operands too short (m={m}, n={n}, k={k})");
        }
        match (self, p) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx512` is only chosen on CPUs with AVX-512F; lengths checked above.
            (Isa::Avx512, Product::Channels) => unsafe { avx512::product(m, n, k, a, b, c) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            (Isa::Avx512, Product::Tiles) => unsafe { avx512::product_nt(m, n, k, a, b, c) },
            (Isa::Portable, Product::Channels) => {
                let (lhs, rhs) = (Mat::rows_t(a, m), Mat::rows(b, n));
                return matmul_with(m, n, k, c, n, false, lhs, rhs, Parallelism::None, false);
            }
            (Isa::Portable, Product::Tiles) => {
                let (lhs, rhs) = (Mat::rows(a, k), Mat::rows_t(b, k));
                return matmul_with(m, n, k, c, n, true, lhs, rhs, Parallelism::None, false);
            }
        }
        Ok(())
    }
}

/// The two products of the Winograd passes.
#[derive(Clone, Copy, Debug)]
enum Product {
    /// `c[i * n + j] = Σ_k a[k * m + i] · b[k * n + j]`: forward and input gradient, `m` output
    /// channels by `n` tiles, reducing over `k` input channels.
    Channels,
    /// `c[i * n + j] += Σ_t a[i * k + t] · b[j * k + t]`: the weight gradient, `m` output
    /// channels by `n` input channels, reducing over `k` tiles.
    Tiles,
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512;

/// Target floats of transformed data (both sides of the products) in one chunk (4 MiB: more
/// than L2, but one position's slices, which the products work on, fit; measured against 1 MiB
/// with `cargo bench -p siamese-ops -- conv-resnet`, where 1 MiB chunks of the 256-channel
/// layers held too few tiles to pay for reading the transformed kernel).
const CHUNK_FLOATS: usize = 1024 * 1024;

/// Whether eligible convolutions run here (see `nn::set_winograd`).
static ENABLED: AtomicBool = AtomicBool::new(true);

pub(super) fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub(super) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `G` (4x3): the kernel transform.
const G: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// `G` (6x3) of F(4x4, 3x3) (Lavin & Gray 2016, points 0, ±1, ±2 and infinity), for the
/// blocked kernels' forward pass.
const G4: [[f32; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// The shape of one 3x3 stride-1 padding-1 convolution: `[n, cin, h, w]` in, `[n, cout, h, w]`
/// out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wino {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub isa: Isa,
}

/// Where one chunk's tiles come from: images `i0..i0 + gn` of the slice handed over, tile rows
/// `ty0..ty1` of each.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    gn: usize,
    ty0: usize,
    ty1: usize,
}

impl Wino {
    fn th(&self) -> usize {
        self.h.div_ceil(2)
    }

    fn tw(&self) -> usize {
        self.w.div_ceil(2)
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    /// The same convolution run backwards: `dy` (`cout` channels) in, `dx` (`cin`) out.
    fn swapped(&self) -> Self {
        Self {
            cin: self.cout,
            cout: self.cin,
            ..*self
        }
    }

    /// Images per chunk and tile rows per band, for `a + b` transformed channels a tile.
    fn chunking(&self, a: usize, b: usize, threads: usize) -> (usize, usize) {
        let per_tile = 16 * (a + b);
        let tiles = (CHUNK_FLOATS / per_tile.max(1)).max(self.tw());
        let img = self.th() * self.tw();
        if img <= tiles {
            let gn = (tiles / img).min(self.n.div_ceil(threads.max(1))).max(1);
            (gn, self.th())
        } else {
            (1, (tiles / self.tw()).clamp(1, self.th()))
        }
    }

    /// The chunks of a group of `gn` images: the whole group, or one band after another.
    fn chunks(&self, gn: usize, band: usize) -> impl Iterator<Item = Chunk> {
        let th = self.th();
        (0..th).step_by(band.max(1)).map(move |ty0| Chunk {
            gn,
            ty0,
            ty1: (ty0 + band).min(th),
        })
    }

    /// Tiles of a chunk.
    fn tiles(&self, c: Chunk) -> usize {
        c.gn * (c.ty1 - c.ty0) * self.tw()
    }

    /// Scratch floats of a chunk: transformed tiles of both sides, and the row buffers.
    fn scratch(&self, gn: usize, band: usize, a: usize, b: usize) -> Scratch {
        let nt = gn * band * self.tw();
        Scratch::take(16 * (a + b) * nt, 8 * (self.tw() + 1))
    }

    /// `B^T d B` of every tile of chunk `c` of `x` (the chunk's images, `self.cin` channels)
    /// into `v[ξ][ci][tile]`.
    fn transform_input(&self, x: &[f32], c: Chunk, v: &mut [f32], tmp: &mut [f32]) {
        let (tw, cin) = (self.tw(), self.cin);
        let nt = self.tiles(c);
        let rows = c.ty1 - c.ty0;
        for g in 0..c.gn {
            for ci in 0..cin {
                let plane = &x[(g * cin + ci) * self.plane()..][..self.plane()];
                for ty in c.ty0..c.ty1 {
                    let j0 = (g * rows + ty - c.ty0) * tw;
                    let at = (ci * nt + j0, cin * nt);
                    match self.isa {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: `Avx512` is only chosen on CPUs with AVX-512F.
                        Isa::Avx512 => unsafe {
                            avx512::input_row(plane, (self.h, self.w), ty, v, at)
                        },
                        Isa::Portable => input_row(plane, self.h, self.w, ty, tmp, v, at.0, at.1),
                    }
                }
            }
        }
    }

    /// Forward pass of chunk `c`: `y = relu?(conv(x, w) + b + res)` with `u` the transformed
    /// kernel (`[16][cin][cout]`); `x`, `res` and `y` hold the chunk's images.
    #[allow(clippy::too_many_arguments)]
    fn forward_chunk(
        &self,
        x: &[f32],
        u: &[f32],
        (bias, res): (Option<&[f32]>, Option<&[f32]>),
        relu: bool,
        y: &mut [f32],
        c: Chunk,
        s: &mut Scratch,
        par: Parallelism,
    ) -> Result<()> {
        let (cin, cout, tw) = (self.cin, self.cout, self.tw());
        let nt = self.tiles(c);
        let (v, m) = s.col.split_at_mut(16 * cin * nt);
        self.transform_input(x, c, v, &mut s.aux);
        each_position(m, cout * nt, par, |(xi, mx)| {
            let ux = &u[xi * cout * cin..(xi + 1) * cout * cin];
            let vx = &v[xi * cin * nt..(xi + 1) * cin * nt];
            self.isa
                .product(Product::Channels, (cout, nt, cin), ux, vx, mx)
        })?;
        let rows = c.ty1 - c.ty0;
        for g in 0..c.gn {
            for co in 0..cout {
                let at = (g * cout + co) * self.plane();
                let plane = &mut y[at..][..self.plane()];
                let r = res.map(|r| &r[at..][..self.plane()]);
                let b = bias.map_or(0.0, |b| b[co]);
                for ty in c.ty0..c.ty1 {
                    let j0 = (g * rows + ty - c.ty0) * tw;
                    let at = (co * nt + j0, cout * nt);
                    let hw = (self.h, self.w);
                    match self.isa {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: as in `transform_input`.
                        Isa::Avx512 => unsafe {
                            avx512::output_row(m, at, (plane, r), hw, ty, b, relu)
                        },
                        Isa::Portable => {
                            output_row(m, at, tw, (plane, r), hw, ty, b, relu, &mut s.aux)
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// `relu?(conv(x, w) + b + res)`: `x` is `[n, cin, h, w]`, `w` `[cout, cin, 3, 3]`, `res`
    /// (when given) and the result `[n, cout, h, w]`.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        res: Option<&[f32]>,
        relu: bool,
    ) -> Result<Vec<f32>> {
        let u = transform_kernel(w, self.cout, self.cin, false);
        self.forward_with(x, &u, (bias, res), relu)
    }

    /// The input gradient `dx` (`[n, cin, h, w]`) of `dy` (`[n, cout, h, w]`).
    pub(crate) fn input_grad(&self, w: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
        let u = transform_kernel(w, self.cout, self.cin, true);
        self.swapped().forward_with(dy, &u, (None, None), false)
    }

    fn forward_with(
        &self,
        x: &[f32],
        u: &[f32],
        (bias, res): (Option<&[f32]>, Option<&[f32]>),
        relu: bool,
    ) -> Result<Vec<f32>> {
        let t = candle_core::utils::get_num_threads().max(1);
        let (gn, band) = self.chunking(self.cin, self.cout, t);
        let (in_img, out_img) = (self.cin * self.plane(), self.cout * self.plane());
        let scratch = || self.scratch(gn, band, self.cin, self.cout);
        each_group(self.n, gn, out_img, scratch, |i, n, yi, s, par| {
            let xi = &x[i * in_img..(i + n) * in_img];
            let ri = res.map(|r| &r[i * out_img..(i + n) * out_img]);
            for c in self.chunks(n, band) {
                self.forward_chunk(xi, u, (bias, ri), relu, yi, c, s, par)?;
            }
            Ok(())
        })
    }

    /// Weight gradient of the images `x` / `dy` hold, accumulated in the transformed domain:
    /// `q[ξ][co][ci] += Σ_tiles (A g A^T)_ξ (B^T d B)_ξ`.
    fn weight_grad_q(&self, x: &[f32], dy: &[f32], q: &mut [f32], par: Parallelism) -> Result<()> {
        let t = candle_core::utils::get_num_threads().max(1);
        let (cin, cout, tw) = (self.cin, self.cout, self.tw());
        let n = x.len() / (cin * self.plane()).max(1);
        let (gn, band) = self.chunking(cin, cout, t);
        let mut s = self.scratch(gn, band, cin, cout);
        for i in (0..n).step_by(gn) {
            let gi = gn.min(n - i);
            let xi = &x[i * cin * self.plane()..(i + gi) * cin * self.plane()];
            let dyi = &dy[i * cout * self.plane()..(i + gi) * cout * self.plane()];
            for c in self.chunks(gi, band) {
                let nt = self.tiles(c);
                let rows = c.ty1 - c.ty0;
                let (v, wt) = s.col.split_at_mut(16 * cin * nt);
                self.transform_input(xi, c, v, &mut s.aux);
                for g in 0..c.gn {
                    for co in 0..cout {
                        let plane = &dyi[(g * cout + co) * self.plane()..][..self.plane()];
                        for ty in c.ty0..c.ty1 {
                            let j0 = (g * rows + ty - c.ty0) * tw;
                            let at = (co * nt + j0, cout * nt);
                            let hw = (self.h, self.w);
                            match self.isa {
                                #[cfg(target_arch = "x86_64")]
                                // SAFETY: as in `transform_input`.
                                Isa::Avx512 => unsafe { avx512::grad_row(plane, hw, ty, wt, at) },
                                Isa::Portable => grad_row(plane, hw, ty, &mut s.aux, wt, at),
                            }
                        }
                    }
                }
                each_position(q, cout * cin, par, |(xi, qx)| {
                    let wx = &wt[xi * cout * nt..(xi + 1) * cout * nt];
                    let vx = &v[xi * cin * nt..(xi + 1) * cin * nt];
                    self.isa
                        .product(Product::Tiles, (cout, cin, nt), wx, vx, qx)
                })?;
            }
        }
        Ok(())
    }

    /// The weight gradient `[cout, cin, 3, 3]` of input `x` and output gradient `dy`: per-thread
    /// partial sums over contiguous slices of the batch, added in order (deterministic for a
    /// given thread count).
    pub(crate) fn weight_grad(&self, x: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
        let (cin, cout) = (self.cin, self.cout);
        let qlen = 16 * cout * cin;
        let t = candle_core::utils::get_num_threads().max(1);
        let (gn, _) = self.chunking(cin, cout, t);
        let (xi, di) = (cin * self.plane(), cout * self.plane());
        let q = sum_over_slices(self.n, gn, qlen, |r, par| {
            let mut q = vec![0f32; qlen];
            let (x, dy) = (&x[r.start * xi..r.end * xi], &dy[r.start * di..r.end * di]);
            self.weight_grad_q(x, dy, &mut q, par)?;
            Ok(q)
        })?;
        Ok(untransform_kernel_grad(&q, cout, cin))
    }
}

/// `f((ξ, out_ξ))` for the 16 positions, `out` cut into 16 slices of `len` values: in turn, or
/// spread over the threads when the batch left them no images of their own (`par`).
fn each_position<F>(out: &mut [f32], len: usize, par: Parallelism, f: F) -> Result<()>
where
    F: Fn((usize, &mut [f32])) -> Result<()> + Sync + Send,
{
    let out = &mut out[..16 * len];
    match par {
        Parallelism::None => out.chunks_mut(len).enumerate().try_for_each(f),
        _ => out.par_chunks_mut(len).enumerate().try_for_each(f),
    }
}

/// `G w G^T` of every 3x3 kernel of `w` (`[cout, cin, 3, 3]`), as `[16][cin][cout]` (the
/// products' left operand, reduction axis first); or, when `flip`, of the kernels of the input
/// gradient (each rotated by 180° and the channel axes swapped) as `[16][cout][cin]`.
///
/// Each transformed value is a 9-term sum over its kernel, `u_pq = Σ_ab G[p][a] G[q][b] k_ab`:
/// the kernels are first laid out value by value in the destination's order, then each
/// position's run is written in one pass over all pairs. (Writing the 16 positions of one pair
/// at a time scattered the stores over 16 runs `cout * cin` floats apart, which share cache
/// sets: 5.3% of the resnet's 128-channel 14x12 layer's forward and input-gradient time on a
/// batch of 64 in `perf`, 0.8% now.)
fn transform_kernel(w: &[f32], cout: usize, cin: usize, flip: bool) -> Vec<f32> {
    let pair = |j: usize| {
        if flip {
            (j / cin, j % cin)
        } else {
            (j % cout, j / cout)
        }
    };
    transform_kernel_with(&G, w, (cout, cin), pair, flip)
}

/// `G w G^T` of every 3x3 kernel of `w` for the blocked kernels' F(m x m, 3x3) forward pass
/// (`nn::blocked`, `m` 2 or 4), already in their order: `[(m + 2)^2][Cout / bw][Cin][bw]`.
pub(super) fn transform_kernel_blocked(
    w: &[f32],
    (cout, cin): (usize, usize),
    m: usize,
    bw: usize,
) -> Vec<f32> {
    // Pair `j` is output channel `c` of block `ob`, input channel `ci`.
    let pair = |j: usize| ((j / (cin * bw)) * bw + j % bw, (j / bw) % cin);
    if m == 4 {
        transform_kernel_with(&G4, w, (cout, cin), pair, false)
    } else {
        transform_kernel_with(&G, w, (cout, cin), pair, false)
    }
}

/// `G w G^T` for a `P x 3` kernel transform `g`, as `[P * P][pairs]`, pair `j` being the kernel
/// of `pair(j) = (co, ci)` (rotated by 180° when `flip`).
fn transform_kernel_with<const P: usize>(
    g: &[[f32; 3]; P],
    w: &[f32],
    (cout, cin): (usize, usize),
    pair: impl Fn(usize) -> (usize, usize),
    flip: bool,
) -> Vec<f32> {
    let pairs = cout * cin;
    let mut wt = vec![0f32; 9 * pairs];
    for j in 0..pairs {
        let (co, ci) = pair(j);
        let k = &w[(co * cin + ci) * 9..][..9];
        for t in 0..9 {
            wt[t * pairs + j] = if flip { k[8 - t] } else { k[t] };
        }
    }
    let mut u = vec![0f32; P * P * pairs];
    super::wide(
        #[inline(always)]
        || {
            for (pos, up) in u.chunks_exact_mut(pairs.max(1)).enumerate() {
                let (p, q) = (pos / P, pos % P);
                for t in 0..9 {
                    let c = g[p][t / 3] * g[q][t % 3];
                    if c == 0.0 {
                        continue;
                    }
                    let src = &wt[t * pairs..][..pairs];
                    up.iter_mut().zip(src).for_each(|(d, s)| *d += c * s);
                }
            }
        },
    );
    u
}

/// `G^T Q G` of every transformed kernel gradient (`q` as `[16][cout][cin]`): `[cout, cin, 3, 3]`.
fn untransform_kernel_grad(q: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut dw = vec![0f32; cout * cin * 9];
    let stride = cout * cin;
    for (j, k) in dw.chunks_exact_mut(9).enumerate() {
        let at = |p: usize, r: usize| q[(p * 4 + r) * stride + j];
        for a in 0..3 {
            for b in 0..3 {
                let mut v = 0f32;
                for p in 0..4 {
                    if G[p][a] == 0.0 {
                        continue;
                    }
                    let inner: f32 = (0..4).map(|r| at(p, r) * G[r][b]).sum();
                    v += G[p][a] * inner;
                }
                k[a * 3 + b] = v;
            }
        }
    }
    dw
}

/// Splits `row` (padded by one zero on the left, zeros past its end) into its even and odd
/// padded positions: `e[i] = row[2i - 1]`, `o[i] = row[2i]`, `e.len() == o.len()`.
fn split_padded(row: &[f32], e: &mut [f32], o: &mut [f32]) {
    e.fill(0.0);
    o.fill(0.0);
    for (i, pair) in row.chunks_exact(2).enumerate() {
        o[i] = pair[0];
        e[i + 1] = pair[1];
    }
    if row.len() % 2 == 1 {
        o[row.len() / 2] = row[row.len() - 1];
    }
}

/// `B^T d B` of the tiles of tile row `ty` of one input plane (`h x w`), tile `tx` to
/// `dst[ξ * xs + off + tx]`. `tmp` holds `8 * (tw + 1)` floats.
#[allow(clippy::too_many_arguments)]
fn input_row(
    plane: &[f32],
    h: usize,
    w: usize,
    ty: usize,
    tmp: &mut [f32],
    dst: &mut [f32],
    off: usize,
    xs: usize,
) {
    let tw = w.div_ceil(2);
    let k = tw + 1;
    let (e, o) = tmp[..8 * k].split_at_mut(4 * k);
    for r in 0..4 {
        let (er, or) = (&mut e[r * k..(r + 1) * k], &mut o[r * k..(r + 1) * k]);
        match (2 * ty + r).checked_sub(1) {
            Some(iy) if iy < h => split_padded(&plane[iy * w..(iy + 1) * w], er, or),
            _ => {
                er.fill(0.0);
                or.fill(0.0);
            }
        }
    }
    // Rows: B^T d = (d0 - d2, d1 + d2, d2 - d1, d1 - d3), on the even and odd runs alike.
    for arr in [&mut *e, &mut *o] {
        let (r01, r23) = arr.split_at_mut(2 * k);
        let (r0, r1) = r01.split_at_mut(k);
        let (r2, r3) = r23.split_at_mut(k);
        for i in 0..k {
            let (d0, d1, d2, d3) = (r0[i], r1[i], r2[i], r3[i]);
            r0[i] = d0 - d2;
            r1[i] = d1 + d2;
            r2[i] = d2 - d1;
            r3[i] = d1 - d3;
        }
    }
    // Columns: tile tx reads (e[tx], o[tx], e[tx + 1], o[tx + 1]).
    for q in 0..4 {
        let (te, to) = (&e[q * k..(q + 1) * k], &o[q * k..(q + 1) * k]);
        let base = q * 4 * xs + off;
        let (e0, e1, o0, o1) = (&te[..tw], &te[1..], &to[..tw], &to[1..]);
        let out = &mut dst[base..][..tw];
        for (tx, d) in out.iter_mut().enumerate() {
            *d = e0[tx] - e1[tx];
        }
        let out = &mut dst[base + xs..][..tw];
        for (tx, d) in out.iter_mut().enumerate() {
            *d = o0[tx] + e1[tx];
        }
        let out = &mut dst[base + 2 * xs..][..tw];
        for (tx, d) in out.iter_mut().enumerate() {
            *d = e1[tx] - o0[tx];
        }
        let out = &mut dst[base + 3 * xs..][..tw];
        for (tx, d) in out.iter_mut().enumerate() {
            *d = o0[tx] - o1[tx];
        }
    }
}

/// `A^T m A` of the tiles of tile row `ty` (`m[ξ * xs + off + tx]`, `at = (off, xs)`), plus
/// `bias`, plus the residual plane `res` at the same place when given, through ReLU when
/// `relu`, into output rows `2ty, 2ty + 1` of `plane` (`h x w`, only what lies inside it).
/// `tmp` holds `4 * tw` floats.
#[allow(clippy::too_many_arguments)]
fn output_row(
    m: &[f32],
    (off, xs): (usize, usize),
    tw: usize,
    (plane, res): (&mut [f32], Option<&[f32]>),
    (h, w): (usize, usize),
    ty: usize,
    bias: f32,
    relu: bool,
    tmp: &mut [f32],
) {
    let mm = |xi: usize| &m[xi * xs + off..][..tw];
    let (y0, rest) = tmp[..4 * tw].split_at_mut(tw);
    let (y1, rest) = rest.split_at_mut(tw);
    let (y2, y3) = rest.split_at_mut(tw);
    // Rows: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (per column c); then the same on columns.
    let (m00, m01, m02, m03) = (mm(0), mm(1), mm(2), mm(3));
    let (m10, m11, m12, m13) = (mm(4), mm(5), mm(6), mm(7));
    let (m20, m21, m22, m23) = (mm(8), mm(9), mm(10), mm(11));
    let (m30, m31, m32, m33) = (mm(12), mm(13), mm(14), mm(15));
    for tx in 0..tw {
        let s0 = [
            m00[tx] + m10[tx] + m20[tx],
            m01[tx] + m11[tx] + m21[tx],
            m02[tx] + m12[tx] + m22[tx],
            m03[tx] + m13[tx] + m23[tx],
        ];
        let s1 = [
            m10[tx] - m20[tx] - m30[tx],
            m11[tx] - m21[tx] - m31[tx],
            m12[tx] - m22[tx] - m32[tx],
            m13[tx] - m23[tx] - m33[tx],
        ];
        y0[tx] = s0[0] + s0[1] + s0[2] + bias;
        y1[tx] = s0[1] - s0[2] - s0[3] + bias;
        y2[tx] = s1[0] + s1[1] + s1[2] + bias;
        y3[tx] = s1[1] - s1[2] - s1[3] + bias;
    }
    let (y0, rest) = tmp[..4 * tw].split_at(tw);
    let (y1, rest) = rest.split_at(tw);
    let (y2, y3) = rest.split_at(tw);
    for (i, (a, b)) in [(y0, y1), (y2, y3)].into_iter().enumerate() {
        let oy = 2 * ty + i;
        if oy >= h {
            break;
        }
        let row = &mut plane[oy * w..(oy + 1) * w];
        let mut pairs = row.chunks_exact_mut(2);
        for ((p, &va), &vb) in (&mut pairs).zip(a).zip(b) {
            p[0] = va;
            p[1] = vb;
        }
        if let [last] = pairs.into_remainder() {
            *last = a[tw - 1];
        }
        if let Some(r) = res {
            let r = &r[oy * w..(oy + 1) * w];
            row.iter_mut().zip(r).for_each(|(v, r)| *v += r);
        }
        if relu {
            row.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
}

/// `out = (e, e + o, e - o, -o)[c]`: column `c` of `g A^T` for a row of tiles whose first and
/// second columns are `e` and `o`.
fn grad_col(c: usize, e: &[f32], o: &[f32], out: &mut [f32]) {
    let pairs = out.iter_mut().zip(e.iter().zip(o));
    match c {
        0 => out.copy_from_slice(e),
        1 => pairs.for_each(|(d, (e, o))| *d = e + o),
        2 => pairs.for_each(|(d, (e, o))| *d = e - o),
        _ => pairs.for_each(|(d, (_, o))| *d = -o),
    }
}

/// `A g A^T` of the 2x2 output-gradient tiles of tile row `ty` of one `dy` plane (`h x w`;
/// values past its edges read as zero), tile `tx` to `dst[ξ * xs + off + tx]` (`at = (off,
/// xs)`). `tmp` holds `6 * tw` floats.
fn grad_row(
    plane: &[f32],
    (h, w): (usize, usize),
    ty: usize,
    tmp: &mut [f32],
    dst: &mut [f32],
    (off, xs): (usize, usize),
) {
    let tw = w.div_ceil(2);
    let (rows, rest) = tmp[..6 * tw].split_at_mut(4 * tw);
    let (ra, rb) = rest.split_at_mut(tw);
    let (e0, rest) = rows.split_at_mut(tw);
    let (o0, rest) = rest.split_at_mut(tw);
    let (e1, o1) = rest.split_at_mut(tw);
    for (r, (e, o)) in [(&mut *e0, &mut *o0), (&mut *e1, &mut *o1)]
        .into_iter()
        .enumerate()
    {
        e.fill(0.0);
        o.fill(0.0);
        let oy = 2 * ty + r;
        if oy >= h {
            continue;
        }
        let row = &plane[oy * w..(oy + 1) * w];
        for (i, pair) in row.chunks_exact(2).enumerate() {
            e[i] = pair[0];
            o[i] = pair[1];
        }
        if w % 2 == 1 {
            e[tw - 1] = row[w - 1];
        }
    }
    // Columns first (g A^T on each of the two rows), then rows: A (.) = (r0, r0 + r1,
    // r0 - r1, -r1).
    for c in 0..4 {
        grad_col(c, e0, o0, ra);
        grad_col(c, e1, o1, rb);
        let at = |q: usize| (q * 4 + c) * xs + off;
        dst[at(0)..][..tw].copy_from_slice(ra);
        let out = &mut dst[at(1)..][..tw];
        out.iter_mut()
            .zip(ra.iter().zip(&*rb))
            .for_each(|(d, (a, b))| *d = a + b);
        let out = &mut dst[at(2)..][..tw];
        out.iter_mut()
            .zip(ra.iter().zip(&*rb))
            .for_each(|(d, (a, b))| *d = a - b);
        let out = &mut dst[at(3)..][..tw];
        out.iter_mut().zip(rb.iter()).for_each(|(d, b)| *d = -b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct 3x3 stride-1 padding-1 convolution in f64.
    fn direct(x: &[f32], w: &[f32], s: Wino) -> Vec<f64> {
        let (h, wd) = (s.h as isize, s.w as isize);
        let mut y = vec![0f64; s.n * s.cout * s.h * s.w];
        for n in 0..s.n {
            for co in 0..s.cout {
                for oy in 0..h {
                    for ox in 0..wd {
                        let mut acc = 0f64;
                        for ci in 0..s.cin {
                            for a in 0..3isize {
                                for b in 0..3isize {
                                    let (iy, ix) = (oy + a - 1, ox + b - 1);
                                    if iy < 0 || ix < 0 || iy >= h || ix >= wd {
                                        continue;
                                    }
                                    let xv = x[((n * s.cin + ci) * s.h + iy as usize) * s.w
                                        + ix as usize];
                                    let wv = w[(co * s.cin + ci) * 9 + (a * 3 + b) as usize];
                                    acc += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        y[((n * s.cout + co) * s.h + oy as usize) * s.w + ox as usize] = acc;
                    }
                }
            }
        }
        y
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 2e-5 * scale,
                "{what}[{i}]: {g} against {w} (scale {scale})"
            );
        }
    }

    /// Every shape class: odd and even sides, a plane smaller than one tile, one image and
    /// several, bands of one image (a plane too large for one chunk) and groups of images.
    const SHAPES: [Wino; 7] = [
        Wino {
            n: 2,
            cin: 100,
            cout: 9,
            h: 5,
            w: 6,
            isa: Isa::Portable,
        },
        Wino {
            n: 3,
            cin: 5,
            cout: 7,
            h: 6,
            w: 8,
            isa: Isa::Portable,
        },
        Wino {
            n: 2,
            cin: 4,
            cout: 3,
            h: 7,
            w: 5,
            isa: Isa::Portable,
        },
        Wino {
            n: 1,
            cin: 3,
            cout: 2,
            h: 1,
            w: 1,
            isa: Isa::Portable,
        },
        Wino {
            n: 1,
            cin: 6,
            cout: 4,
            h: 9,
            w: 11,
            isa: Isa::Portable,
        },
        Wino {
            n: 5,
            cin: 2,
            cout: 3,
            h: 3,
            w: 2,
            isa: Isa::Portable,
        },
        Wino {
            n: 2,
            cin: 64,
            cout: 64,
            h: 47,
            w: 45,
            isa: Isa::Portable,
        },
    ];

    /// Every shape on the portable kernels and on this CPU's own (AVX-512 where it has it).
    fn cases() -> impl Iterator<Item = (usize, Wino)> {
        [Isa::Portable, Isa::detect()]
            .into_iter()
            .flat_map(|isa| SHAPES.into_iter().map(move |s| Wino { isa, ..s }))
            .enumerate()
    }

    #[test]
    fn forward_matches_the_direct_convolution() -> Result<()> {
        for (k, s) in cases() {
            let x = values(s.n * s.cin * s.h * s.w, 2 * k as u64 + 1);
            let w = values(s.cout * s.cin * 9, 2 * k as u64 + 2);
            let b: Vec<f32> = (0..s.cout).map(|c| c as f32 * 0.25 - 0.5).collect();
            let want = direct(&x, &w, s);
            let y = s.forward(&x, &w, None, None, false)?;
            assert_close(&y, &want, &format!("forward {s:?}"));
            let y = s.forward(&x, &w, Some(&b), None, true)?;
            let plane = s.h * s.w;
            let want: Vec<f64> = want
                .iter()
                .enumerate()
                .map(|(i, v)| (v + f64::from(b[(i / plane) % s.cout])).max(0.0))
                .collect();
            assert_close(&y, &want, &format!("forward+bias+relu {s:?}"));
            let res = values(want.len(), 2 * k as u64 + 99);
            let y = s.forward(&x, &w, Some(&b), Some(&res), true)?;
            let plane = s.h * s.w;
            let want: Vec<f64> = direct(&x, &w, s)
                .iter()
                .zip(&res)
                .enumerate()
                .map(|(i, (v, r))| {
                    (v + f64::from(b[(i / plane) % s.cout]) + f64::from(*r)).max(0.0)
                })
                .collect();
            assert_close(&y, &want, &format!("forward+bias+residual+relu {s:?}"));
        }
        Ok(())
    }

    /// The gradients against those of the direct convolution: `<dy, conv(x, w)>` is linear in
    /// `x` and in `w`, so its exact gradients are the direct convolution's transposes, computed
    /// here by brute force in f64.
    #[test]
    fn gradients_match_the_direct_convolution() -> Result<()> {
        for (k, s) in cases() {
            let x = values(s.n * s.cin * s.h * s.w, 7 * k as u64 + 3);
            let w = values(s.cout * s.cin * 9, 7 * k as u64 + 4);
            let dy = values(s.n * s.cout * s.h * s.w, 7 * k as u64 + 5);
            let (h, wd) = (s.h as isize, s.w as isize);
            let mut dx = vec![0f64; x.len()];
            let mut dw = vec![0f64; w.len()];
            for n in 0..s.n {
                for co in 0..s.cout {
                    for oy in 0..h {
                        for ox in 0..wd {
                            let g = f64::from(
                                dy[((n * s.cout + co) * s.h + oy as usize) * s.w + ox as usize],
                            );
                            for ci in 0..s.cin {
                                for a in 0..3isize {
                                    for b in 0..3isize {
                                        let (iy, ix) = (oy + a - 1, ox + b - 1);
                                        if iy < 0 || ix < 0 || iy >= h || ix >= wd {
                                            continue;
                                        }
                                        let xi = ((n * s.cin + ci) * s.h + iy as usize) * s.w
                                            + ix as usize;
                                        let wi = (co * s.cin + ci) * 9 + (a * 3 + b) as usize;
                                        dx[xi] += g * f64::from(w[wi]);
                                        dw[wi] += g * f64::from(x[xi]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let got = s.input_grad(&w, &dy)?;
            assert_close(&got, &dx, &format!("input grad {s:?}"));
            assert_close(&s.weight_grad(&x, &dy)?, &dw, &format!("weight grad {s:?}"));
        }
        Ok(())
    }
}
