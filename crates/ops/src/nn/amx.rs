//! bf16 matrix products on Intel AMX tiles (Sapphire Rapids and later): the opt-in fast path
//! behind [`super::gemm::matmul`] when [`super::MatmulPrecision::Bf16`] is selected.
//!
//! Both operands are rounded to bf16 (round to nearest, ties to even) while they are packed into
//! tile order; products are accumulated in f32 by `TDPBF16PS` and the result is f32, as in
//! PyTorch's bf16 autocast. The reduction dimension is padded with zeros to a multiple of 32.
//!
//! Packed layouts (one `u32` holds two bf16 neighbours along the reduction dimension, the lower
//! index in the low half, as `TDPBF16PS` expects for both operands):
//! - left operand, per block of 32 rows: `[k/32][half: 2][row: 16][pair: 16]`, so each 16×32 bf16
//!   tile is 1 KiB of contiguous memory;
//! - right operand, per panel of 32 columns: `[k/32][pair: 16][column: 32]`, two 16-column tiles
//!   side by side in 128-byte rows.
//!
//! Each 32×32 block of the result lives in four accumulator tiles for the whole reduction
//! (tiles 0–3; tiles 4–5 hold the left operand's two row halves and 6–7 the right's two column
//! halves), then goes through a small f32 buffer into the destination.

use candle_core::{bail, Result};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::OnceLock;

use super::gemm::{Mat, Out, Parallelism, Rhs};

/// Whether this CPU and operating system let the process use AMX bf16 tiles (checked, and the
/// kernel's permission requested, once per process).
pub(crate) fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // CPUID leaf 1: OSXSAVE (ECX bit 27); leaf 7: AMX-BF16 (EDX bit 22), AMX-TILE (bit 24),
    // AVX512-F (EBX bit 16) and AVX512-BW (bit 30) for the packing loops.
    let leaf1 = __cpuid_count(1, 0);
    if leaf1.ecx & (1 << 27) == 0 {
        return false;
    }
    let leaf7 = __cpuid_count(7, 0);
    let amx = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
    let avx512 = leaf7.ebx & (1 << 16) != 0 && leaf7.ebx & (1 << 30) != 0;
    // Leaf 7 subleaf 1: AVX512-BF16 (EAX bit 5), for the conversions while packing.
    let bf16 = __cpuid_count(7, 1).eax & (1 << 5) != 0;
    if !amx || !avx512 || !bf16 {
        return false;
    }
    // XCR0 bits 17 and 18: the OS saves tile configuration and tile data on context switches.
    let (lo, _hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 is valid whenever OSXSAVE is set (checked above).
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi,
            options(nomem, nostack, preserves_flags));
    }
    if lo & (3 << 17) != 3 << 17 {
        return false;
    }
    // Linux hands out the large tile-data state only on request: arch_prctl(ARCH_REQ_XCOMP_PERM,
    // XFEATURE_XTILEDATA). The permission covers every thread of the process.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    r == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// `x` rounded to bf16 (nearest, ties to even), in the high 16 bits of the result.
#[inline(always)]
fn bf16_hi(x: f32) -> u32 {
    let b = x.to_bits();
    b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000
}

/// Two reduction neighbours as one packed pair: `lo` in the low half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_hi(hi) | (bf16_hi(lo) >> 16)
}

/// Converts 32 consecutive floats at `src` into 16 packed pairs at `dst` (`VCVTNE2PS2BF16`
/// rounds to nearest even, like [`pair`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn cvt_consecutive(src: &[f32], dst: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(src.len() >= 32 && dst.len() >= 16);
    // SAFETY: the lengths are checked above; unaligned loads and stores.
    unsafe {
        let lo = _mm512_loadu_ps(src.as_ptr());
        let hi = _mm512_loadu_ps(src.as_ptr().add(16));
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.as_mut_ptr().cast(), v);
    }
}

/// Interleaves 16 floats of two rows (`a[j]` low, `b[j]` high) into 16 packed pairs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn cvt_rows(a: &[f32], b: &[f32], dst: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(a.len() >= 16 && b.len() >= 16 && dst.len() >= 16);
    // SAFETY: the lengths are checked above; unaligned loads and stores.
    unsafe {
        // Words 0..16 hold a's values, 16..32 b's; the permutation interleaves them.
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(
            _mm512_loadu_ps(b.as_ptr()),
            _mm512_loadu_ps(a.as_ptr()),
        ));
        let idx = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        _mm512_storeu_si512(dst.as_mut_ptr().cast(), _mm512_permutexvar_epi16(idx, v));
    }
}

/// `x` rounded to bf16 and back: what the tiles see of an f32 operand (for tests).
#[cfg(test)]
pub(crate) fn round_bf16(x: f32) -> f32 {
    f32::from_bits(bf16_hi(x))
}

/// u32 words per packed 32-row (or 32-column) block per 32-deep reduction step.
const STEP: usize = 512;

thread_local! {
    /// Per-thread packing buffers for the left blocks and the right panels, reused between
    /// calls. A call takes its buffer out while it works (so a call re-entered on the same
    /// thread through rayon's work stealing gets a fresh one) and puts it back after.
    static PACK_A: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static PACK_B: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// The f32 rows or columns a right operand is gathered into before conversion.
    static GATHER: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the first `len` elements of a buffer taken from `pool` (grown with zeros when
/// short; otherwise holding whatever the last call left).
fn with_buffer<T: Copy + Default, R>(
    pool: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut v = pool.with_borrow_mut(std::mem::take);
    if v.len() < len {
        v.resize(len, T::default());
    }
    let r = f(&mut v[..len]);
    pool.with_borrow_mut(|p| {
        if p.len() < v.len() {
            *p = v;
        }
    });
    r
}

/// `lhs[m x k] * rhs[k x n]` on AMX tiles, delivered to `out`, the result's blocks of 32 rows
/// spread over `par` threads. Fails if the machine has no AMX bf16,
/// a size is zero, or a view or the destination is too short.
pub(crate) fn product(
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat<'_>,
    rhs: Rhs<'_>,
    out: Out<'_>,
    par: Parallelism,
) -> Result<()> {
    if !supported() {
        bail!("siamese-ops bf16 matmul: this CPU has no AMX bf16 tiles");
    }
    let Out {
        dst,
        rs,
        accumulate,
    } = out;
    let rhs_fits = match &rhs {
        Rhs::Mat(r) => r.covers(k, n),
        Rhs::Rows(_) | Rhs::Cols(_) => true,
    };
    if m == 0 || n == 0 || k == 0 {
        bail!("siamese-ops bf16 matmul: empty product (m={m}, n={n}, k={k})");
    }
    if !lhs.covers(m, k) || !rhs_fits || !Mat::rows(dst, rs).covers(m, n) {
        bail!("siamese-ops bf16 matmul: matrix view out of bounds (m={m}, n={n}, k={k})");
    }
    let ks = k.div_ceil(32);
    let (mb, nb) = (m.div_ceil(32), n.div_ceil(32));
    let threads = match par {
        Parallelism::Rayon(t) => t.max(1),
        Parallelism::None => 1,
    };
    with_buffer(&PACK_B, nb * ks * STEP, |bp| {
        // SAFETY: `supported()` checked AVX-512 F/BW/BF16, which the packing is compiled for.
        unsafe { pack_rhs(bp, &rhs, k, n, ks) };
        let bp = &*bp;
        let block = |rb: usize, emit: &mut dyn FnMut(usize, usize, &[f32])| {
            let rows = (m - rb * 32).min(32);
            with_buffer(&PACK_A, ks * STEP, |ap| {
                // SAFETY: as above.
                unsafe { pack_lhs(ap, lhs, rb * 32, rows, k, ks) };
                // SAFETY: `supported()` checked AMX; the packed buffers hold `ks` steps each.
                unsafe { row_block(ap, bp, ks, n, rows, emit) };
            });
        };
        let dst = &mut dst[..(m - 1) * rs + n];
        let rows = |(rb, chunk): (usize, &mut [f32])| {
            block(rb, &mut |r, j0, v: &[f32]| {
                let d = &mut chunk[r * rs + j0..r * rs + j0 + v.len()];
                if accumulate {
                    d.iter_mut().zip(v).for_each(|(d, v)| *d += v);
                } else {
                    d.copy_from_slice(v);
                }
            })
        };
        if threads > 1 && mb > 1 {
            dst.par_chunks_mut(32 * rs).enumerate().for_each(rows);
        } else {
            dst.chunks_mut(32 * rs).enumerate().for_each(rows);
        }
    });
    Ok(())
}

/// Packs rows `r0..r0 + rows` of `lhs` (`k` deep) into one left block of `ks` steps, zero-padded
/// to 32 rows and `32 * ks` deep.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_lhs(ap: &mut [u32], lhs: Mat<'_>, r0: usize, rows: usize, k: usize, ks: usize) {
    let d = lhs.data;
    for r in 0..32 {
        let base = (r / 16) * 256 + (r % 16) * 16;
        if r >= rows {
            for s in 0..ks {
                ap[s * STEP + base..s * STEP + base + 16].fill(0);
            }
            continue;
        }
        let i = r0 + r;
        for s in 0..ks {
            let out = &mut ap[s * STEP + base..s * STEP + base + 16];
            let k0 = s * 32;
            if lhs.cs == 1 && k0 + 32 <= k {
                // SAFETY: the caller runs with AVX-512 BF16 (this function's features).
                unsafe { cvt_consecutive(&d[i * lhs.rs + k0..i * lhs.rs + k0 + 32], out) };
            } else {
                let at = |kk: usize| {
                    if kk < k {
                        d[i * lhs.rs + kk * lhs.cs]
                    } else {
                        0.0
                    }
                };
                for (q, o) in out.iter_mut().enumerate() {
                    *o = pair(at(k0 + 2 * q), at(k0 + 2 * q + 1));
                }
            }
        }
    }
}

/// Packs `rhs` (`k x n`) into `ceil(n / 32)` right panels of `ks` steps, zero-padded.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_rhs(bp: &mut [u32], rhs: &Rhs<'_>, k: usize, n: usize, ks: usize) {
    // SAFETY (all arms): this function runs with the features the packers are compiled for.
    match *rhs {
        Rhs::Mat(v) if v.cs == 1 => unsafe {
            pack_rows(bp, k, n, ks, &|r, row| {
                row.copy_from_slice(&v.data[r * v.rs..r * v.rs + n])
            })
        },
        Rhs::Mat(v) if v.rs == 1 => unsafe {
            pack_cols(bp, k, n, ks, &|j, col| {
                col.copy_from_slice(&v.data[j * v.cs..j * v.cs + k])
            })
        },
        Rhs::Mat(v) => unsafe {
            pack_rows(bp, k, n, ks, &|r, row| {
                for (j, o) in row.iter_mut().enumerate() {
                    *o = v.data[r * v.rs + j * v.cs];
                }
            })
        },
        Rhs::Rows(f) => unsafe { pack_rows(bp, k, n, ks, f) },
        Rhs::Cols(f) => unsafe { pack_cols(bp, k, n, ks, f) },
    }
}

/// Packs a right operand given row by row: two rows at a time into a small buffer, then
/// interleaved into 32-column runs of pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_rows(bp: &mut [u32], k: usize, n: usize, ks: usize, f: &dyn Fn(usize, &mut [f32])) {
    let nb = n.div_ceil(32);
    with_buffer(&GATHER, 2 * nb * 32, |buf| {
        // Two rows, each padded to whole panels with zeros (`f` writes only the first `n`).
        let (a, b) = buf.split_at_mut(nb * 32);
        a[n..].fill(0.0);
        b[n..].fill(0.0);
        // SAFETY: this function runs with AVX-512 BF16.
        unsafe { pack_row_pairs(bp, k, n, ks, f, a, b) };
    });
}

/// [`pack_rows`]'s loop, with the two row buffers `a` and `b` (padded to whole panels).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_row_pairs(
    bp: &mut [u32],
    k: usize,
    n: usize,
    ks: usize,
    f: &dyn Fn(usize, &mut [f32]),
    a: &mut [f32],
    b: &mut [f32],
) {
    let (nb, panel) = (n.div_ceil(32), ks * STEP);
    for q in 0..ks * 16 {
        let (k0, k1) = (2 * q, 2 * q + 1);
        let (s, pr) = (q / 16, q % 16);
        if k0 < k {
            f(k0, &mut a[..n]);
        } else {
            a[..n].fill(0.0);
        }
        if k1 < k {
            f(k1, &mut b[..n]);
        } else {
            b[..n].fill(0.0);
        }
        for c in 0..nb {
            let at = c * panel + s * STEP + pr * 32;
            let out = &mut bp[at..at + 32];
            // SAFETY: this function runs with AVX-512 BF16.
            unsafe {
                cvt_rows(&a[c * 32..], &b[c * 32..], &mut out[..16]);
                cvt_rows(&a[c * 32 + 16..], &b[c * 32 + 16..], &mut out[16..]);
            }
        }
    }
}

/// Packs a right operand given column by column (each contiguous along the reduction): per
/// panel, the 32 columns into a buffer, then per step a 32 x 16 block of pairs transposed into
/// the step's 16 x 32 words.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_cols(bp: &mut [u32], k: usize, n: usize, ks: usize, f: &dyn Fn(usize, &mut [f32])) {
    let kp = ks * 32;
    with_buffer(&GATHER, 32 * kp, |cols| {
        // 32 columns, each padded to whole steps with zeros (`f` writes only the first `k`).
        for col in cols.chunks_exact_mut(kp) {
            col[k..].fill(0.0);
        }
        // SAFETY: this function runs with AVX-512 BF16.
        unsafe { pack_col_blocks(bp, k, n, ks, f, cols) };
    });
}

/// [`pack_cols`]'s loop, with the buffer `cols` of 32 columns (each padded to whole steps).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_col_blocks(
    bp: &mut [u32],
    k: usize,
    n: usize,
    ks: usize,
    f: &dyn Fn(usize, &mut [f32]),
    cols: &mut [f32],
) {
    let (nb, panel, kp) = (n.div_ceil(32), ks * STEP, ks * 32);
    let mut blk = [[0u32; 16]; 32];
    for c in 0..nb {
        for (lane, col) in cols.chunks_exact_mut(kp).enumerate() {
            let j = c * 32 + lane;
            if j < n {
                f(j, &mut col[..k]);
            } else {
                col[..k].fill(0.0);
            }
        }
        for s in 0..ks {
            for (lane, row) in blk.iter_mut().enumerate() {
                // SAFETY: this function runs with AVX-512 BF16.
                unsafe { cvt_consecutive(&cols[lane * kp + s * 32..], row) };
            }
            let out = &mut bp[c * panel + s * STEP..c * panel + (s + 1) * STEP];
            for (q, orow) in out.chunks_exact_mut(32).enumerate() {
                for (lane, o) in orow.iter_mut().enumerate() {
                    *o = blk[lane][q];
                }
            }
        }
    }
}

/// One block of 32 result rows (`rows` of them real) against every right panel, each 32-column
/// piece of each row handed to `emit(row in block, first column, values)`.
unsafe fn row_block(
    ap: &[u32],
    bp: &[u32],
    ks: usize,
    n: usize,
    rows: usize,
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    #[repr(C, align(64))]
    struct Cfg([u8; 64]);
    #[repr(C, align(64))]
    struct Acc([f32; 32 * 32]);
    // Palette 1, all eight tiles 16 rows of 64 bytes.
    let mut cfg = Cfg([0; 64]);
    cfg.0[0] = 1;
    for t in 0..8 {
        cfg.0[16 + 2 * t] = 64;
        cfg.0[48 + t] = 16;
    }
    let mut acc = Acc([0.0; 32 * 32]);
    // SAFETY: the configuration is valid (palette 1, 8 tiles of 16 x 64 bytes).
    unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack)) };
    for c in 0..n.div_ceil(32) {
        let b = bp[c * ks * STEP..(c + 1) * ks * STEP].as_ptr();
        // SAFETY: `ap` and the panel at `b` hold `ks` steps of 2 KiB (two tiles each); `acc` is
        // 4 KiB, its 16-row tiles 128 bytes apart. The loop runs `ks >= 1` times.
        unsafe {
            std::arch::asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a} + {s64}*1]",
                "tileloadd tmm5, [{a} + {s64}*1 + 1024]",
                "tileloadd tmm6, [{b} + {s128}*1]",
                "tileloadd tmm7, [{b} + {s128}*1 + 64]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a}, 2048",
                "add {b}, 2048",
                "dec {n}",
                "jnz 2b",
                "tilestored [{c} + {s128}*1], tmm0",
                "tilestored [{c} + {s128}*1 + 64], tmm1",
                "tilestored [{c} + {s128}*1 + 2048], tmm2",
                "tilestored [{c} + {s128}*1 + 2112], tmm3",
                a = inout(reg) ap.as_ptr() => _,
                b = inout(reg) b => _,
                n = inout(reg) ks => _,
                c = in(reg) acc.0.as_mut_ptr(),
                s64 = in(reg) 64usize,
                s128 = in(reg) 128usize,
                options(nostack),
            );
        }
        let j0 = c * 32;
        let w = (n - j0).min(32);
        for r in 0..rows {
            emit(r, j0, &acc.0[r * 32..r * 32 + w]);
        }
    }
    // SAFETY: releases this thread's tile state.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A strided view's element `(i, j)`.
    fn at(v: Mat<'_>, i: usize, j: usize) -> f32 {
        v.data[i * v.rs + j * v.cs]
    }

    /// Checks the tiles against an f64 product of the bf16-rounded operands, for every operand
    /// layout the convolutions use, odd sizes (partial tiles, a reduction that is not a multiple
    /// of 32), accumulation, and both threading modes.
    #[test]
    fn matches_the_product_of_the_rounded_operands() {
        if !supported() {
            eprintln!("skipped: no AMX bf16 on this machine");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for &(m, n, k) in &[
            (1, 1, 1),
            (64, 400, 576),
            (33, 47, 31),
            (70, 5, 100),
            (16, 64, 65),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            // Row-major, transposed left, transposed right, and a strided right (every 2nd column).
            let b2: Vec<f32> = b.iter().flat_map(|&v| [v, 9.0]).collect();
            let layouts = [
                (Mat::rows(&a, k), Mat::rows(&b, n)),
                (Mat::rows_t(&a, m), Mat::rows(&b, n)),
                (Mat::rows(&a, k), Mat::rows_t(&b, k)),
                (
                    Mat::rows(&a, k),
                    Mat {
                        data: &b2,
                        rs: 2 * n,
                        cs: 2,
                    },
                ),
            ];
            for (li, (l, r)) in layouts.into_iter().enumerate() {
                for (accumulate, par) in [(false, Parallelism::None), (true, Parallelism::Rayon(2))]
                {
                    let ld = n + 3;
                    let init: Vec<f32> = (0..m * ld).map(|i| (i % 7) as f32).collect();
                    let mut dst = init.clone();
                    let out = Out {
                        dst: &mut dst,
                        rs: ld,
                        accumulate,
                    };
                    product(m, n, k, l, Rhs::Mat(r), out, par).unwrap();
                    for i in 0..m {
                        for j in 0..n {
                            let mut want: f64 = if accumulate {
                                init[i * ld + j] as f64
                            } else {
                                0.0
                            };
                            let mut mag = 0f64;
                            for kk in 0..k {
                                let p = round_bf16(at(l, i, kk)) as f64
                                    * round_bf16(at(r, kk, j)) as f64;
                                want += p;
                                mag += p.abs();
                            }
                            let got = dst[i * ld + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (mag + 1.0),
                                "layout {li} {m}x{n}x{k} acc {accumulate}: ({i},{j}) {got} vs {want}"
                            );
                        }
                        for j in n..ld {
                            if i * ld + j < dst.len() && i + 1 < m {
                                assert_eq!(
                                    dst[i * ld + j],
                                    init[i * ld + j],
                                    "padding column {j} written"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(round_bf16(1.0), 1.0);
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one.
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(round_bf16(1.0 + 1.5 / 256.0), 1.0 + 2.0 / 256.0);
        assert_eq!(
            round_bf16(-2.5e-3),
            -f32::from_bits((2.5e-3f32.to_bits() + 0x7FFF) & 0xFFFF_0000)
        );
    }
}
