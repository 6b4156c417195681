//! Convolutions on channel-blocked images, AVX-512: the forward pass of the convolutions whose
//! input channels come in 16s and output channels in 32s (`conv` decides which:
//! `Geom::blocked`), without an im2col matrix and without a general matrix product's packing.
//!
//! Per group of images:
//! 1. each image is copied, 16 channels at a time, into a zero-bordered `[Cin/16][Hp][Wp][16]`
//!    layout (16x16 in-register transposes), so one input pixel's 16 channels are one cache line
//!    and padding needs no edge cases;
//! 2. direct: the output is computed in tiles of `R` consecutive output pixels by `16·B`
//!    output channels (`R·B = 24` accumulators, or fewer at an image's end): for each kernel
//!    position and input channel, `B` vectors of packed weights and `R` broadcast input values,
//!    `R·B` fused multiply-adds. Tiles go pixel-major (`[P][Cout]`) into a staging buffer.
//!    Winograd F(2x2, 3x3) or F(4x4, 3x3) (3x3 stride-1 padding-1 layers, see
//!    [`Blocked::with_winograd`]): per band of tile rows, `B^T d B` on 16-channel vectors, the
//!    16 or 36 products on the same register tiles (Winograd tiles for pixels, `Cin` for the
//!    reduction), and `A^T m A` into the staging buffer;
//! 3. the staging buffer is transposed back to `[Cout][P]` in 16x16 blocks, adding bias and
//!    residual and applying ReLU on the way, in the order `nn::conv`'s epilogue adds them.
//!
//! Every output value is reduced in the same order whatever its tile, group, thread or batch
//! size, so results do not depend on the batch.
//!
//! Measured with `cargo bench -p siamese-ops -- conv-resnet/forward` (batch 64, one run):
//! direct against im2col and `gemm`, the resnet's stride-2 layers 4.1 to 4.7 against 5.2 to 6.0
//! ms; Winograd on this layout against the planar Winograd kernels, the 32-channel 56x46 layer
//! 4.4 (F(4x4)) against 8.4 ms, the 64- and 128-channel ones 3.4 and 3.7 against 6.0 and 5.2
//! ms; the 256-channel 7x6 layer (too small for the planar kernels) 6.0 (F(2x2)) against 9.4
//! for im2col.
//!
//! Output-channel blocks run outermost within a group, so one block's packed weights (at most
//! `Cin·Kh·Kw·64` floats) stay in L2 while every image of the group runs against them.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use candle_core::{bail, Result};
use rayon::prelude::*;

use super::conv::{each_group_uninit, threading, Geom, Scratch};
use super::gemm::Parallelism;
use super::winograd::avx512::mask;

/// Target floats of one group's blocked input plus staged output (4 MiB, as the im2col bands).
const GROUP_FLOATS: usize = 1024 * 1024;

/// Target floats of one Winograd band's transformed input and products (1 MiB, within L2).
const WINO_FLOATS: usize = 256 * 1024;

/// Accumulators of one tile (of the 32 vector registers, the rest hold weights and a broadcast).
const ACC: usize = 24;

/// One convolution as the blocked kernels run it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blocked {
    /// The convolution's shape.
    pub g: Geom,
    /// Run as Winograd F(m x m, 3x3) on the blocked layout, `Some(m)` with `m` 2 or 4 (3x3,
    /// stride 1, padding 1 only).
    pub winograd: Option<usize>,
}

impl Blocked {
    /// Whether this CPU and shape can run blocked: AVX-512F, input channels a multiple of 16,
    /// output channels of 32.
    pub(crate) fn fits(cin: usize, cout: usize) -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && cin > 0
            && cin.is_multiple_of(16)
            && cout > 0
            && cout.is_multiple_of(32)
    }

    /// This 3x3 stride-1 padding-1 convolution as Winograd, with the output tile side (2 or 4)
    /// that needs fewer multiply-adds once the register tiles' unused slots are counted:
    /// `positions x slots`, where a band's tiles go to the register tiles `R` at a time. F(4x4)
    /// does 36 products per 16 outputs against F(2x2)'s 16 per 4, but on small planes its
    /// tiles run past the edge and fill few register tiles. Measured with `cargo bench -p
    /// siamese-ops -- forward/f32/` (batch 64): F(4x4) against F(2x2) 4.4 against 5.8 ms on
    /// the resnet's 56x46 layer, 3.4 against 5.1 on 28x23, 3.7 against 4.3 on 14x12, but 8.4
    /// against 6.0 on 7x6 and 0.45 against 0.37 on conv4's 5x5, which this count picks F(2x2)
    /// for (the direct kernels: 7.4 and 0.42).
    pub(crate) fn with_winograd(self) -> Self {
        let cost = |m: usize| {
            let b = Blocked {
                winograd: Some(m),
                ..self
            };
            b.positions() * b.slots()
        };
        Blocked {
            winograd: Some(if cost(4) < cost(2) { 4 } else { 2 }),
            ..self
        }
    }

    /// Register-tile slots the Winograd products of one image fill: each band's tiles, rounded
    /// up to whole register tiles.
    fn slots(&self) -> usize {
        let rmax = ACC * 16 / self.bw();
        self.tile_bands()
            .map(|(ty0, ty1)| ((ty1 - ty0) * self.tw()).div_ceil(rmax) * rmax)
            .sum()
    }

    /// The Winograd bands of tile rows, `(ty0, ty1)`.
    fn tile_bands(&self) -> impl Iterator<Item = (usize, usize)> {
        let (th, band) = (self.th(), self.band());
        (0..th)
            .step_by(band)
            .map(move |ty0| (ty0, (ty0 + band).min(th)))
    }

    /// Output channels per tile: 64 (`B = 4`) when they divide `Cout`, else 32.
    fn bw(&self) -> usize {
        if self.g.cout.is_multiple_of(64) {
            64
        } else {
            32
        }
    }

    /// Winograd's output tile side `m` (1 for the direct kernels, where it is unused).
    fn m(&self) -> usize {
        self.winograd.unwrap_or(1)
    }

    /// Padded rows: Winograd's tiles past the edge read zero rows up to the last tile's end.
    fn hp(&self) -> usize {
        match self.winograd {
            Some(m) => m * self.th() + 2,
            None => self.g.h + 2 * self.g.pad,
        }
    }

    /// Padded columns (likewise).
    fn wp(&self) -> usize {
        match self.winograd {
            Some(m) => m * self.tw() + 2,
            None => self.g.w + 2 * self.g.pad,
        }
    }

    /// Winograd tile rows and columns.
    fn th(&self) -> usize {
        self.g.ho.div_ceil(self.m())
    }

    fn tw(&self) -> usize {
        self.g.wo.div_ceil(self.m())
    }

    /// Winograd positions per tile: `(m + 2)^2`.
    fn positions(&self) -> usize {
        (self.m() + 2) * (self.m() + 2)
    }

    /// Floats of one blocked, padded image.
    fn img(&self) -> usize {
        self.g.cin * self.hp() * self.wp()
    }

    /// Images per group: as many as fit [`GROUP_FLOATS`], but never so many that a thread
    /// would be left without a group.
    fn group(&self) -> usize {
        let (t, by_image) = threading(self.g.n);
        if !by_image {
            return 1;
        }
        let per = self.img() + self.g.p() * self.g.cout;
        (GROUP_FLOATS / per.max(1)).clamp(1, self.g.n.div_ceil(t))
    }

    /// The weights `[Cout, Cin, Kh, Kw]` as `[Cout/bw][Cin/16][Kh][Kw][16][bw]`: a tile's
    /// reduction reads its block's weights front to back.
    fn pack_weights(&self, w: &[f32]) -> Vec<f32> {
        let (bw, cin, kk) = (self.bw(), self.g.cin, self.g.kh * self.g.kw);
        let mut out = vec![0f32; w.len()];
        let mut at = 0;
        for ob in 0..self.g.cout / bw {
            for cb in 0..cin / 16 {
                for k in 0..kk {
                    for ci in 0..16 {
                        for c in 0..bw {
                            let co = ob * bw + c;
                            out[at] = w[(co * cin + cb * 16 + ci) * kk + k];
                            at += 1;
                        }
                    }
                }
            }
        }
        out
    }

    /// The offsets, in a blocked image, of each reduction step `(cb, ky, kx)` relative to an
    /// output pixel's window corner.
    fn steps(&self) -> Vec<usize> {
        let (hp, wp) = (self.hp(), self.wp());
        let mut v = Vec::with_capacity(self.g.cin / 16 * self.g.kh * self.g.kw);
        for cb in 0..self.g.cin / 16 {
            for ky in 0..self.g.kh {
                for kx in 0..self.g.kw {
                    v.push(((cb * hp + ky) * wp + kx) * 16);
                }
            }
        }
        v
    }

    /// Copies one `[Cin, H, W]` image into its blocked, padded layout `dst` (whose border is
    /// already zero).
    fn block_input(&self, x: &[f32], dst: &mut [f32]) {
        let (h, w, hp, wp, pad) = (self.g.h, self.g.w, self.hp(), self.wp(), self.g.pad);
        assert!(x.len() >= self.g.cin * h * w && dst.len() >= self.img());
        for cb in 0..self.g.cin / 16 {
            for y in 0..h {
                let src = &x[cb * 16 * h * w + y * w..];
                let at = ((cb * hp + y + pad) * wp + pad) * 16;
                // SAFETY: AVX-512F is checked by `fits`; rows `cb*16 + ci` of `x` hold `w` values
                // from `src` at stride `h*w`, and `dst[at..at + 16*w]` is inside the image.
                unsafe { planes_to_pixels(src, h * w, w, &mut dst[at..at + 16 * w]) };
            }
        }
    }

    /// Zeroes the padding border of the `gn` blocked images in `xb`.
    fn zero_borders(&self, xb: &mut [f32], gn: usize) {
        let (hp, wp, pad) = (self.hp(), self.wp(), self.g.pad);
        let (bottom, right) = (pad + self.g.h, pad + self.g.w);
        if (pad, bottom, right) == (0, hp, wp) {
            return;
        }
        for plane in xb[..gn * self.img()].chunks_exact_mut(hp * wp * 16) {
            plane[..pad * wp * 16].fill(0.0);
            plane[bottom * wp * 16..].fill(0.0);
            for y in pad..bottom {
                let row = &mut plane[y * wp * 16..(y + 1) * wp * 16];
                row[..pad * 16].fill(0.0);
                row[right * 16..].fill(0.0);
            }
        }
    }

    /// `relu?(conv(x, w) + b + res)`: `x` is `[n, cin, h, w]`, `w` `[cout, cin, kh, kw]`,
    /// `res` (when given) and the result `[n, cout, ho, wo]`.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        w: &[f32],
        (b, res): (&[f32], Option<&[f32]>),
        relu: bool,
    ) -> Result<Vec<f32>> {
        let (p, cout, bw) = (self.g.p(), self.g.cout, self.bw());
        let in_img = self.g.cin * self.g.h * self.g.w;
        if x.len() < self.g.n * in_img || w.len() != cout * self.g.cin * self.g.kh * self.g.kw {
            bail!("conv2d: blocked kernel handed mismatched input or weight");
        }
        if self.winograd.is_some() {
            return self.winograd_forward(x, w, (b, res), relu);
        }
        let wb = self.pack_weights(w);
        let steps = self.steps();
        let per_block = steps.len() * 16 * bw;
        self.grouped(x, (b, res), relu, 0, |xb, st, _, par| match par {
            Parallelism::None => {
                for ob in 0..cout / bw {
                    let wk = &wb[ob * per_block..(ob + 1) * per_block];
                    for (g, sg) in st.chunks_exact_mut(p * cout).enumerate() {
                        let xg = &xb[g * self.img()..(g + 1) * self.img()];
                        self.tiles(xg, wk, &steps, ob, (0, p), sg);
                    }
                }
            }
            _ => {
                // Fewer images than threads: each thread takes a run of pixels.
                let (t, _) = threading(self.g.n);
                let run = p.div_ceil(t).max(1);
                for (g, sg) in st.chunks_exact_mut(p * cout).enumerate() {
                    let xg = &xb[g * self.img()..(g + 1) * self.img()];
                    sg.par_chunks_mut(run * cout)
                        .enumerate()
                        .for_each(|(j, part)| {
                            let p0 = j * run;
                            let p1 = p0 + part.len() / cout;
                            for ob in 0..cout / bw {
                                let wk = &wb[ob * per_block..(ob + 1) * per_block];
                                self.tiles(xg, wk, &steps, ob, (p0, p1), part);
                            }
                        });
                }
            }
        })
    }

    /// The frame of both forward passes: for each group of images, the blocked inputs (`xb`,
    /// borders zeroed), then `body(xb, st, rest, par)`, which fills the staging rows `st`
    /// (`[gn][P][Cout]`) using `extra` floats of scratch `rest`, then each image's staging rows
    /// back to the returned `[n, Cout, Ho, Wo]` output with bias, residual and ReLU.
    fn grouped<F>(
        &self,
        x: &[f32],
        (b, res): (&[f32], Option<&[f32]>),
        relu: bool,
        extra: usize,
        body: F,
    ) -> Result<Vec<f32>>
    where
        F: Fn(&[f32], &mut [f32], &mut [f32], Parallelism) + Sync,
    {
        let (p, cout) = (self.g.p(), self.g.cout);
        let (in_img, out_img) = (self.g.cin * self.g.h * self.g.w, cout * p);
        let grp = self.group();
        let scratch = || Scratch::take(grp * self.img() + extra, grp * p * cout);
        let run = |i, gn, yg: &mut [MaybeUninit<f32>], s: &mut Scratch, par| -> Result<()> {
            let (xb, rest) = s.col.split_at_mut(gn * self.img());
            self.zero_borders(xb, gn);
            for g in 0..gn {
                self.block_input(&x[(i + g) * in_img..], &mut xb[g * self.img()..]);
            }
            let st = &mut s.aux[..gn * p * cout];
            body(xb, st, &mut rest[..extra], par);
            for (g, sg) in st.chunks_exact(p * cout).enumerate() {
                let at = (i + g) * out_img;
                let r = res.map(|r| &r[at..at + out_img]);
                let yi = &mut yg[g * out_img..(g + 1) * out_img];
                // SAFETY: AVX-512F (see `fits`); `sg` is `[p][cout]`, `yi` (and `r`) `[cout][p]`.
                unsafe { unstage(sg, (p, cout), b, r, relu, yi) };
            }
            Ok(())
        };
        // SAFETY: `unstage` writes every value of each image's `[Cout][P]` output.
        unsafe { each_group_uninit(self.g.n, grp, out_img, scratch, run) }
    }

    /// Tile rows per Winograd band: the band's transformed input and products
    /// (`positions * tiles * (Cin + Cout)` floats) within [`WINO_FLOATS`].
    fn band(&self) -> usize {
        let per_row = self.positions() * self.tw() * (self.g.cin + self.g.cout);
        (WINO_FLOATS / per_row.max(1)).clamp(1, self.th())
    }

    /// [`Blocked::forward`] (which checked the lengths) as Winograd F(m x m, 3x3) (see
    /// `nn::winograd` for the algebra):
    /// per band of tile rows of one blocked image, `B^T d B` of every tile into
    /// `v[ξ][cb][tile][16]` (vectors of 16 channels, so the transforms are plain vector
    /// arithmetic), the `(m + 2)^2` products `M_ξ[tile][Cout] = V_ξ[tile][Cin] x U_ξ[Cin][Cout]`
    /// on the direct kernels' tiles, and `A^T m A` of every tile into the staging rows.
    fn winograd_forward(
        &self,
        x: &[f32],
        w: &[f32],
        (b, res): (&[f32], Option<&[f32]>),
        relu: bool,
    ) -> Result<Vec<f32>> {
        let (p, cin, cout, bw) = (self.g.p(), self.g.cin, self.g.cout, self.bw());
        let (ncb, nob) = (cin / 16, cout / bw);
        // `U[ξ][ob][ci][bw]`.
        let pp = self.positions();
        let ub = super::winograd::transform_kernel_blocked(w, (cout, cin), self.m(), bw);
        let per_u = ncb * 16 * bw;
        let (tw, band) = (self.tw(), self.band());
        let (vlen, mlen) = (pp * band * tw * cin, pp * band * tw * cout);
        // Each band's tile rows, and the offsets of its reduction steps in `v`.
        let bands: Vec<(usize, usize, Vec<usize>)> = self
            .tile_bands()
            .map(|(ty0, ty1)| {
                let nt = (ty1 - ty0) * tw;
                (ty0, ty1, (0..ncb).map(|cb| cb * nt * 16).collect())
            })
            .collect();
        self.grouped(x, (b, res), relu, vlen + mlen, |xb, st, rest, par| {
            let (v, m) = rest.split_at_mut(vlen);
            for (g, sg) in st.chunks_exact_mut(p * cout).enumerate() {
                let xg = &xb[g * self.img()..(g + 1) * self.img()];
                for (ty0, ty1, steps) in &bands {
                    let (ty0, ty1) = (*ty0, *ty1);
                    let nt = (ty1 - ty0) * tw;
                    // SAFETY: AVX-512F (see `fits`); the transforms check their lengths.
                    unsafe {
                        let v = &mut v[..pp * nt * cin];
                        if self.m() == 4 {
                            self.wino_input::<6>(xg, (ty0, ty1), v);
                        } else {
                            self.wino_input::<4>(xg, (ty0, ty1), v);
                        }
                    }
                    let v = &v[..pp * nt * cin];
                    let position = |(xi, mx): (usize, &mut [f32])| {
                        let vx = &v[xi * ncb * nt * 16..(xi + 1) * ncb * nt * 16];
                        for ob in 0..nob {
                            let wk = &ub[(xi * nob + ob) * per_u..][..per_u];
                            self.products(vx, wk, steps, nt, &mut mx[ob * bw..]);
                        }
                    };
                    let m = &mut m[..pp * nt * cout];
                    match par {
                        Parallelism::None => m.chunks_mut(nt * cout).enumerate().for_each(position),
                        _ => m.par_chunks_mut(nt * cout).enumerate().for_each(position),
                    }
                    // SAFETY: as above.
                    unsafe {
                        if self.m() == 4 {
                            self.wino_output::<6>(m, (ty0, ty1), sg);
                        } else {
                            self.wino_output::<4>(m, (ty0, ty1), sg);
                        }
                    }
                }
            }
        })
    }

    /// One position's product for one output-channel block: `out[t * Cout + c] = Σ_cb Σ_ci
    /// v[cb * nt * 16 + t * 16 + ci] · wk[cb][ci][c]` for the `nt` tiles `t`.
    fn products(&self, v: &[f32], wk: &[f32], steps: &[usize], nt: usize, out: &mut [f32]) {
        let (bw, cout) = (self.bw(), self.g.cout);
        let rmax = ACC * 16 / bw;
        assert!(v.len() >= steps.len() * nt * 16 && wk.len() >= steps.len() * 16 * bw);
        assert!(nt == 0 || out.len() >= (nt - 1) * cout + bw);
        let mut t0 = 0;
        while t0 < nt {
            let r = rmax.min(nt - t0);
            let mut base = [0usize; ACC];
            for (j, b) in base[..r].iter_mut().enumerate() {
                *b = (t0 + j) * 16;
            }
            let out = &mut out[t0 * cout..];
            // SAFETY: tile `t0 + j < nt` reads `v[step + (t0 + j) * 16..][..16]`, inside `v`
            // (checked); rows `0..r` of `out`, `cout` apart and `bw` wide, are inside it
            // (checked).
            unsafe { self.tile(r, v, &base, steps, wk, out) };
            t0 += r;
        }
    }

    /// One register tile of `r` pixels (or Winograd tiles) at `base` in `xb`, this layer's
    /// output-channel width, into `out` (rows `Cout` apart).
    ///
    /// # Safety
    /// The reads `xb[base[j] + step + ci]` (`j < r`, `ci < 16`), the weights `wk[..steps * 16 *
    /// bw]` and the writes `out[j * Cout..][..bw]` must lie inside their slices.
    unsafe fn tile(
        &self,
        r: usize,
        xb: &[f32],
        base: &[usize; ACC],
        steps: &[usize],
        wk: &[f32],
        out: &mut [f32],
    ) {
        let (x, w, o, ld) = (xb.as_ptr(), wk.as_ptr(), out.as_mut_ptr(), self.g.cout);
        // SAFETY: AVX-512F (see `fits`); the caller's bounds.
        unsafe {
            if self.bw() == 64 {
                tile_dispatch::<4>(r, x, base, steps, w, o, ld);
            } else {
                tile_dispatch::<2>(r, x, base, steps, w, o, ld);
            }
        }
    }

    /// `B^T d B` of the tiles of tile rows `ty0..ty1` of one blocked image `xb`, each input
    /// channel block, into `v[ξ][cb][tile][16]` (`tile` counted from `(ty0, 0)`): for F(m x m,
    /// 3x3) with `K = m + 2`, `K x K` patches `m` apart, `K^2` positions.
    #[target_feature(enable = "avx512f")]
    unsafe fn wino_input<const K: usize>(
        &self,
        xb: &[f32],
        (ty0, ty1): (usize, usize),
        v: &mut [f32],
    ) {
        let (hp, wp, tw, ncb) = (self.hp(), self.wp(), self.tw(), self.g.cin / 16);
        let (m, nt) = (K - 2, (ty1 - ty0) * tw);
        assert!(K == self.m() + 2 && (K == 4 || K == 6));
        assert!(xb.len() >= ncb * hp * wp * 16 && v.len() >= K * K * ncb * nt * 16);
        assert!(m * ty1 + 2 <= hp && m * tw + 2 <= wp);
        // SAFETY: tile (ty, tx) reads rows m·ty..m·ty+K and columns m·tx..m·tx+K of its
        // channel block's padded plane (inside, checked above), and writes `v` below `K² * ncb
        // * nt * 16` (checked).
        unsafe {
            let (src, dst) = (xb.as_ptr(), v.as_mut_ptr());
            for cb in 0..ncb {
                for ty in ty0..ty1 {
                    for tx in 0..tw {
                        let tile = (ty - ty0) * tw + tx;
                        let at = ((cb * hp + m * ty) * wp + m * tx) * 16;
                        // `B^T` down each column q, then along each row p.
                        let mut t = [[_mm512_setzero_ps(); 6]; 6];
                        for q in 0..K {
                            let col: [__m512; 6] = std::array::from_fn(|p| {
                                if p < K {
                                    _mm512_loadu_ps(src.add(at + (p * wp + q) * 16))
                                } else {
                                    _mm512_setzero_ps()
                                }
                            });
                            for (p, v) in bt::<K>(&col).into_iter().take(K).enumerate() {
                                t[p][q] = v;
                            }
                        }
                        for (p, row) in t.iter().take(K).enumerate() {
                            for (q, o) in bt::<K>(row).iter().take(K).enumerate() {
                                let xi = K * p + q;
                                _mm512_storeu_ps(dst.add(((xi * ncb + cb) * nt + tile) * 16), *o);
                            }
                        }
                    }
                }
            }
        }
    }

    /// `A^T m A` of the tiles of tile rows `ty0..ty1` (`m[ξ][tile][Cout]`, `K^2` positions)
    /// into the staging rows `st` (`[P][Cout]` of the image), only the outputs inside the plane.
    #[target_feature(enable = "avx512f")]
    unsafe fn wino_output<const K: usize>(
        &self,
        m: &[f32],
        (ty0, ty1): (usize, usize),
        st: &mut [f32],
    ) {
        let (tw, cout, ho, wo) = (self.tw(), self.g.cout, self.g.ho, self.g.wo);
        let (side, nt) = (K - 2, (ty1 - ty0) * tw);
        assert!(K == self.m() + 2 && (K == 4 || K == 6));
        assert!(m.len() >= K * K * nt * cout && st.len() >= ho * wo * cout);
        // SAFETY: loads below `K² * nt * cout` (checked); stores at pixels inside the plane,
        // each `cout` floats of `st` (checked).
        unsafe {
            let (src, dst) = (m.as_ptr(), st.as_mut_ptr());
            for ty in ty0..ty1 {
                for tx in 0..tw {
                    let tile = (ty - ty0) * tw + tx;
                    for c0 in (0..cout).step_by(16) {
                        let mm = |xi: usize| _mm512_loadu_ps(src.add((xi * nt + tile) * cout + c0));
                        // `A^T` down each column q, then along each output row r.
                        let mut s = [[_mm512_setzero_ps(); 6]; 4];
                        for q in 0..K {
                            let col: [__m512; 6] = std::array::from_fn(|p| {
                                if p < K {
                                    mm(K * p + q)
                                } else {
                                    _mm512_setzero_ps()
                                }
                            });
                            for (r, v) in at::<K>(&col).into_iter().take(side).enumerate() {
                                s[r][q] = v;
                            }
                        }
                        for (r, row) in s.iter().take(side).enumerate() {
                            let oy = side * ty + r;
                            if oy >= ho {
                                break;
                            }
                            for (c, v) in at::<K>(row).iter().take(side).enumerate() {
                                let ox = side * tx + c;
                                if ox < wo {
                                    _mm512_storeu_ps(dst.add((oy * wo + ox) * cout + c0), *v);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Tiles of output pixels `p0..p1` of one blocked image `xb`, output-channel block `ob`
    /// (its packed weights `wk`), into the staging rows `part` (`[p1 - p0][Cout]`, pixel `p0`
    /// first).
    #[allow(clippy::too_many_arguments)]
    fn tiles(
        &self,
        xb: &[f32],
        wk: &[f32],
        steps: &[usize],
        ob: usize,
        (p0, p1): (usize, usize),
        part: &mut [f32],
    ) {
        let bw = self.bw();
        let rmax = ACC * 16 / bw;
        let (s, wp, wo) = (self.g.stride, self.wp(), self.g.wo);
        let mut q = p0;
        while q < p1 {
            let r = rmax.min(p1 - q);
            let mut base = [0usize; ACC];
            for (j, b) in base[..r].iter_mut().enumerate() {
                let (oy, ox) = ((q + j) / wo, (q + j) % wo);
                *b = (oy * s * wp + ox * s) * 16;
            }
            let last = base[r - 1] + steps.last().copied().unwrap_or(0) + 16;
            assert!(last <= xb.len() && wk.len() >= steps.len() * 16 * bw);
            assert!(part.len() >= (q - p0 + r) * self.g.cout);
            let out = &mut part[(q - p0) * self.g.cout + ob * bw..];
            // SAFETY: every input read is below `last` (checked), the weights hold `steps * 16 *
            // bw` floats (checked), and the writes are rows `0..r` of `out`, `cout` apart, `bw`
            // wide (checked).
            unsafe { self.tile(r, xb, &base, steps, wk, out) };
            q += r;
        }
    }
}

/// Runs [`tile`] with `R = r` (`1..=24 / B`).
#[inline(always)]
unsafe fn tile_dispatch<const B: usize>(
    r: usize,
    xb: *const f32,
    base: &[usize; ACC],
    steps: &[usize],
    wk: *const f32,
    out: *mut f32,
    ld: usize,
) {
    macro_rules! go {
        ($($n:literal)*) => {
            match r {
                $($n => tile::<$n, B>(xb, base, steps, wk, out, ld),)*
                _ => unreachable!("tile of {r} pixels"),
            }
        };
    }
    // SAFETY: the caller's bounds.
    unsafe {
        if B == 4 {
            go!(1 2 3 4 5 6)
        } else {
            go!(1 2 3 4 5 6 7 8 9 10 11 12)
        }
    }
}

/// One tile: `out[j * ld + c] = Σ_steps Σ_ci xb[base[j] + step + ci] · wk[.., ci, c]` for the
/// `R` pixels `j` and `16·B` channels `c`.
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize, const B: usize>(
    xb: *const f32,
    base: &[usize; ACC],
    steps: &[usize],
    wk: *const f32,
    out: *mut f32,
    ld: usize,
) {
    // SAFETY: the caller's bounds.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); B]; R];
        let px: [*const f32; R] = std::array::from_fn(|j| xb.add(base[j]));
        let mut wp = wk;
        for &step in steps {
            for ci in 0..16 {
                let wv: [__m512; B] = std::array::from_fn(|b| _mm512_loadu_ps(wp.add(b * 16)));
                for j in 0..R {
                    let a = _mm512_set1_ps(*px[j].add(step + ci));
                    for b in 0..B {
                        acc[j][b] = _mm512_fmadd_ps(a, wv[b], acc[j][b]);
                    }
                }
                wp = wp.add(16 * B);
            }
        }
        for (j, row) in acc.iter().enumerate() {
            for (b, v) in row.iter().enumerate() {
                _mm512_storeu_ps(out.add(j * ld + b * 16), *v);
            }
        }
    }
}

/// `B^T x` of F(m x m, 3x3) for `K = m + 2` values (the first `K` of `x` and of the result;
/// the rest zero).
#[inline(always)]
unsafe fn bt<const K: usize>(x: &[__m512; 6]) -> [__m512; 6] {
    // SAFETY: register operations (the caller runs with AVX-512F).
    unsafe {
        if K == 4 {
            let z = _mm512_setzero_ps();
            [
                _mm512_sub_ps(x[0], x[2]),
                _mm512_add_ps(x[1], x[2]),
                _mm512_sub_ps(x[2], x[1]),
                _mm512_sub_ps(x[1], x[3]),
                z,
                z,
            ]
        } else {
            bt4(x)
        }
    }
}

/// `A^T m` of F(m x m, 3x3) for `K = m + 2` values (the first `m` of the result; the rest
/// zero).
#[inline(always)]
unsafe fn at<const K: usize>(m: &[__m512; 6]) -> [__m512; 4] {
    // SAFETY: register operations (the caller runs with AVX-512F).
    unsafe {
        if K == 4 {
            let z = _mm512_setzero_ps();
            [
                _mm512_add_ps(_mm512_add_ps(m[0], m[1]), m[2]),
                _mm512_sub_ps(_mm512_sub_ps(m[1], m[2]), m[3]),
                z,
                z,
            ]
        } else {
            at4(m)
        }
    }
}

/// `B^T x` of F(4x4, 3x3), lane by lane (`B^T` of Lavin & Gray 2016, points 0, ±1, ±2).
#[inline(always)]
unsafe fn bt4(x: &[__m512; 6]) -> [__m512; 6] {
    // SAFETY: register operations (the caller runs with AVX-512F).
    unsafe {
        let (c4, c5, c2) = (
            _mm512_set1_ps(4.0),
            _mm512_set1_ps(5.0),
            _mm512_set1_ps(2.0),
        );
        let x24 = _mm512_sub_ps(x[4], x[2]);
        let x12 = _mm512_sub_ps(x[1], x[2]);
        let x31 = _mm512_sub_ps(x[3], x[1]);
        [
            // 4 x0 - 5 x2 + x4
            _mm512_fmadd_ps(c4, x[0], _mm512_fnmadd_ps(c5, x[2], x[4])),
            // x3 + x4 - 4 (x1 + x2)
            _mm512_fnmadd_ps(c4, _mm512_add_ps(x[1], x[2]), _mm512_add_ps(x[3], x[4])),
            // 4 (x1 - x2) + x4 - x3
            _mm512_fmadd_ps(c4, x12, _mm512_sub_ps(x[4], x[3])),
            // 2 (x3 - x1) + x4 - x2
            _mm512_fmadd_ps(c2, x31, x24),
            // 2 (x1 - x3) + x4 - x2
            _mm512_fnmadd_ps(c2, x31, x24),
            // 4 x1 - 5 x3 + x5
            _mm512_fmadd_ps(c4, x[1], _mm512_fnmadd_ps(c5, x[3], x[5])),
        ]
    }
}

/// `A^T m` of F(4x4, 3x3), lane by lane.
#[inline(always)]
unsafe fn at4(m: &[__m512; 6]) -> [__m512; 4] {
    // SAFETY: register operations (the caller runs with AVX-512F).
    unsafe {
        let (p1, m1) = (_mm512_add_ps(m[1], m[2]), _mm512_sub_ps(m[1], m[2]));
        let (p3, m3) = (_mm512_add_ps(m[3], m[4]), _mm512_sub_ps(m[3], m[4]));
        [
            _mm512_add_ps(_mm512_add_ps(m[0], p1), p3),
            _mm512_fmadd_ps(_mm512_set1_ps(2.0), m3, m1),
            _mm512_fmadd_ps(_mm512_set1_ps(4.0), p3, p1),
            _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0), m3, m1), m[5]),
        ]
    }
}

/// The 16x16 transpose of `r` (row `i` becomes column `i`).
#[inline(always)]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // SAFETY: register operations only.
    unsafe {
        // Interleave 32-bit lanes of row pairs, then 64-bit pairs of those, then 128-bit blocks.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            u[4 * i] =
                _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
            u[4 * i + 1] =
                _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
            u[4 * i + 2] =
                _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
            u[4 * i + 3] =
                _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
        }
        // u[4i + k] holds, per 128-bit block q, column 4q + k of rows 4i..4i+4.
        let mut v = [_mm512_setzero_ps(); 16];
        for k in 0..4 {
            // Rows 0..8: blocks (q of u[k], q of u[4 + k]) for q = 0, 1 then 2, 3.
            v[k] = _mm512_shuffle_f32x4::<0x88>(u[k], u[4 + k]);
            v[4 + k] = _mm512_shuffle_f32x4::<0xdd>(u[k], u[4 + k]);
            v[8 + k] = _mm512_shuffle_f32x4::<0x88>(u[8 + k], u[12 + k]);
            v[12 + k] = _mm512_shuffle_f32x4::<0xdd>(u[8 + k], u[12 + k]);
        }
        let mut o = [_mm512_setzero_ps(); 16];
        for k in 0..4 {
            o[k] = _mm512_shuffle_f32x4::<0x88>(v[k], v[8 + k]);
            o[8 + k] = _mm512_shuffle_f32x4::<0xdd>(v[k], v[8 + k]);
            o[4 + k] = _mm512_shuffle_f32x4::<0x88>(v[4 + k], v[12 + k]);
            o[12 + k] = _mm512_shuffle_f32x4::<0xdd>(v[4 + k], v[12 + k]);
        }
        o
    }
}

/// `dst[x * 16 + c] = src[c * stride + x]` for `x < w`, `c < 16`: one image row of 16 channel
/// planes into pixel-major order.
#[target_feature(enable = "avx512f")]
unsafe fn planes_to_pixels(src: &[f32], stride: usize, w: usize, dst: &mut [f32]) {
    assert!(src.len() >= 15 * stride + w && dst.len() >= 16 * w);
    // SAFETY: lanes below `w - x0` of rows `c * stride` are inside `src` (checked), and the
    // stores write `dst[(x0 + i) * 16..][..16]` for `x0 + i < w`.
    unsafe {
        let mut x0 = 0;
        while x0 < w {
            let m = mask(w - x0);
            let rows: [__m512; 16] = std::array::from_fn(|c| {
                _mm512_maskz_loadu_ps(m, src.as_ptr().add(c * stride + x0))
            });
            let cols = transpose16(rows);
            for (i, v) in cols.iter().enumerate().take((w - x0).min(16)) {
                _mm512_storeu_ps(dst.as_mut_ptr().add((x0 + i) * 16), *v);
            }
            x0 += 16;
        }
    }
}

/// `y[c * p + j] = relu?(st[j * cout + c] + b[c] + res[c * p + j])`: the staged `[p][cout]`
/// tiles back to channel planes with the epilogue, 16x16 blocks at a time; writes every value
/// of `y[..p * cout]`.
#[target_feature(enable = "avx512f")]
unsafe fn unstage(
    st: &[f32],
    (p, cout): (usize, usize),
    b: &[f32],
    res: Option<&[f32]>,
    relu: bool,
    y: &mut [MaybeUninit<f32>],
) {
    assert!(st.len() >= p * cout && y.len() >= p * cout && b.len() >= cout);
    assert!(res.is_none_or(|r| r.len() >= p * cout));
    // SAFETY: pixel lanes are masked below `p`; channel blocks are below `cout` (a multiple
    // of 16); every index is checked against the lengths above.
    unsafe {
        let zero = _mm512_setzero_ps();
        for c0 in (0..cout).step_by(16) {
            let mut j0 = 0;
            while j0 < p {
                let n = (p - j0).min(16);
                let m = mask(n);
                let rows: [__m512; 16] = std::array::from_fn(|i| {
                    if i < n {
                        _mm512_loadu_ps(st.as_ptr().add((j0 + i) * cout + c0))
                    } else {
                        zero
                    }
                });
                let cols = transpose16(rows);
                for (c, v) in cols.iter().enumerate() {
                    let at = (c0 + c) * p + j0;
                    let mut v = _mm512_add_ps(*v, _mm512_set1_ps(b[c0 + c]));
                    if let Some(r) = res {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, r.as_ptr().add(at)));
                    }
                    if relu {
                        v = _mm512_max_ps(v, zero);
                    }
                    _mm512_mask_storeu_ps(y.as_mut_ptr().add(at).cast::<f32>(), m, v);
                }
                j0 += 16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_transposes() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let mut out = vec![0f32; 256];
        // SAFETY: AVX-512F checked above; 16 rows of 16 floats in and out.
        unsafe { check(&m, &mut out) };
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(out[i * 16 + j], m[j * 16 + i], "({i}, {j})");
            }
        }
    }

    /// Both Winograd tiles against the direct kernels on the same blocked layout, over planes
    /// of several bands of tile rows, odd sizes, one image (pixels spread over threads) and a
    /// group, with bias, residual and ReLU.
    #[test]
    fn winograd_tiles_match_the_direct_kernels() -> Result<()> {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return Ok(());
        }
        let mut seed = 1u32;
        let mut values = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        for (n, cin, h, w, cout) in [(3, 16, 64, 37, 32), (1, 32, 9, 7, 64), (2, 16, 5, 6, 64)] {
            let p = super::super::Conv2dParams {
                stride: 1,
                padding: 1,
            };
            let direct = Blocked {
                g: Geom::new(&[n, cin, h, w], &[cout, cin, 3, 3], p, "test")?,
                winograd: None,
            };
            let (x, k) = (values(n * cin * h * w), values(cout * cin * 9));
            let (b, res) = (values(cout), values(n * cout * h * w));
            let want = direct.forward(&x, &k, (&b, Some(&res)), true)?;
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for m in [2, 4] {
                let wino = Blocked {
                    winograd: Some(m),
                    ..direct
                };
                if (n, h) == (3, 64) {
                    assert!(wino.band() < wino.th(), "F({m}): one band only");
                }
                let got = wino.forward(&x, &k, (&b, Some(&res)), true)?;
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - e).abs() <= 2e-5 * scale,
                        "F({m}) {n}x{cin}x{h}x{w}: [{i}] {g} vs {e}"
                    );
                }
            }
        }
        Ok(())
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn check(m: &[f32], out: &mut [f32]) {
        unsafe {
            let rows: [__m512; 16] =
                std::array::from_fn(|i| _mm512_loadu_ps(m.as_ptr().add(i * 16)));
            for (i, v) in transpose16(rows).iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(i * 16), *v);
            }
        }
    }
}
