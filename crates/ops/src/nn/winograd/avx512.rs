//! AVX-512 versions of the Winograd transforms and products (see the parent module for what
//! each computes). Tile rows are processed 16 tiles (one vector) at a time, the last vector
//! masked, so rows of any width vectorise fully; the even and odd input columns are split with
//! two-source permutes.
//!
//! Every function here is `unsafe`: the caller must run on a CPU with AVX-512F and hand over
//! slices at least as long as the documented accesses need (each function checks its lengths
//! and panics on a violation, an internal bug, rather than touch memory outside its slices).
//! Masked loads and stores never touch lanes outside their mask, so pointers to lanes past a
//! slice's end are formed with `wrapping_add` and never dereferenced.

use std::arch::x86_64::*;

/// Lanes `0..len` (at most 16) of a vector (also the blocked kernels').
#[inline(always)]
pub(in crate::nn) fn mask(len: usize) -> __mmask16 {
    if len >= 16 {
        0xffff
    } else {
        ((1u32 << len) - 1) as __mmask16
    }
}

const EVEN: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
const ODD: [i32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];
const LO: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
const HI: [i32; 16] = [8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31];

#[inline(always)]
unsafe fn idx(v: &[i32; 16]) -> __m512i {
    // SAFETY: 16 i32 are 64 bytes; unaligned load.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

/// Values `at..at + 16 * count` of a row of `len` floats, zeros past its end, as masked loads.
#[inline(always)]
unsafe fn load(row: *const f32, len: usize, at: usize) -> __m512 {
    // SAFETY: only lanes below `len - at` are read (the caller's row holds `len` floats).
    unsafe { _mm512_maskz_loadu_ps(mask(len.saturating_sub(at)), row.wrapping_add(at)) }
}

/// `(d0 - d2, d1 + d2, d2 - d1, d1 - d3)`: `B^T` applied to four values.
#[inline(always)]
unsafe fn bt(d: [__m512; 4]) -> [__m512; 4] {
    unsafe {
        [
            _mm512_sub_ps(d[0], d[2]),
            _mm512_add_ps(d[1], d[2]),
            _mm512_sub_ps(d[2], d[1]),
            _mm512_sub_ps(d[1], d[3]),
        ]
    }
}

/// `B^T d B` of the tiles of tile row `ty` of one `h x w` input plane: tile `tx`'s value at
/// position `ξ` goes to `dst[ξ * xs + off + tx]`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input_row(
    plane: &[f32],
    (h, w): (usize, usize),
    ty: usize,
    dst: &mut [f32],
    (off, xs): (usize, usize),
) {
    let tw = w.div_ceil(2);
    assert!(plane.len() >= h * w && dst.len() >= 15 * xs + off + tw);
    // SAFETY: AVX-512F is the caller's promise; rows are read below `w` floats from a row start
    // inside `plane`, and stores stay below `tw` values from each `ξ * xs + off` (checked above).
    unsafe {
        let (even, odd) = (idx(&EVEN), idx(&ODD));
        let zero = _mm512_setzero_ps();
        // The previous vector of each row's odd columns (E[0] of the next is its last lane).
        let mut prev = [zero; 4];
        let mut tx = 0;
        while tx < tw {
            // For rows r = 0..4 (input rows 2ty - 1 + r): e = x[2t - 1], o = x[2t],
            // e1 = x[2t + 1], o1 = x[2t + 2] for the 16 tiles t = tx.. of this vector.
            let mut e = [zero; 4];
            let mut o = [zero; 4];
            let mut e1 = [zero; 4];
            let mut o1 = [zero; 4];
            for r in 0..4 {
                let Some(iy) = (2 * ty + r).checked_sub(1).filter(|&iy| iy < h) else {
                    continue;
                };
                let row = plane.as_ptr().add(iy * w);
                let base = 2 * tx;
                let v0 = load(row, w, base);
                let v1 = load(row, w, base + 16);
                let v2 = load(row, w.min(base + 33), base + 32);
                o[r] = _mm512_permutex2var_ps(v0, even, v1);
                e1[r] = _mm512_permutex2var_ps(v0, odd, v1);
                o1[r] = _mm512_castsi512_ps(_mm512_alignr_epi32::<1>(
                    _mm512_castps_si512(v2),
                    _mm512_castps_si512(o[r]),
                ));
                e[r] = _mm512_castsi512_ps(_mm512_alignr_epi32::<15>(
                    _mm512_castps_si512(e1[r]),
                    _mm512_castps_si512(prev[r]),
                ));
                prev[r] = e1[r];
            }
            let (e, o, e1, o1) = (bt(e), bt(o), bt(e1), bt(o1));
            let msk = mask(tw - tx);
            for q in 0..4 {
                let cols = [
                    _mm512_sub_ps(e[q], e1[q]),
                    _mm512_add_ps(o[q], e1[q]),
                    _mm512_sub_ps(e1[q], o[q]),
                    _mm512_sub_ps(o[q], o1[q]),
                ];
                for (c, v) in cols.into_iter().enumerate() {
                    let p = dst.as_mut_ptr().add((q * 4 + c) * xs + off + tx);
                    _mm512_mask_storeu_ps(p, msk, v);
                }
            }
            tx += 16;
        }
    }
}

/// `A^T m A` (+ `bias`, + the residual plane `res` at the same place when given, through ReLU
/// when `relu`) of the tiles of tile row `ty` (`m[ξ * xs + off + tx]`) into output rows `2ty,
/// 2ty + 1` of the `h x w` plane (what lies inside it).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn output_row(
    m: &[f32],
    (off, xs): (usize, usize),
    (plane, res): (&mut [f32], Option<&[f32]>),
    (h, w): (usize, usize),
    ty: usize,
    bias: f32,
    relu: bool,
) {
    let tw = w.div_ceil(2);
    assert!(plane.len() >= h * w && m.len() >= 15 * xs + off + tw && 2 * ty < h);
    assert!(res.is_none_or(|r| r.len() >= h * w));
    // SAFETY: as in `input_row`: loads below `tw` values from each `ξ * xs + off`, stores below
    // `w` floats from the start of rows `2ty` and (when inside) `2ty + 1` of `plane`, and loads
    // the same places of `res` (as long as `plane`, checked above).
    unsafe {
        let (lo, hi) = (idx(&LO), idx(&HI));
        let b = _mm512_set1_ps(bias);
        let zero = _mm512_setzero_ps();
        let mut tx = 0;
        while tx < tw {
            let msk = mask(tw - tx);
            let mm = |xi: usize| _mm512_maskz_loadu_ps(msk, m.as_ptr().add(xi * xs + off + tx));
            let mut s0 = [zero; 4];
            let mut s1 = [zero; 4];
            for c in 0..4 {
                let (m0, m1, m2, m3) = (mm(c), mm(4 + c), mm(8 + c), mm(12 + c));
                s0[c] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                s1[c] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
            }
            for (i, s) in [s0, s1].into_iter().enumerate() {
                let oy = 2 * ty + i;
                if oy >= h {
                    break;
                }
                let a = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), s[2]), b);
                let c = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s[1], s[2]), s[3]), b);
                let row = plane.as_mut_ptr().add(oy * w);
                let base = 2 * tx;
                let (head, rest) = (mask(w - base), mask(w.saturating_sub(base + 16)));
                let mut first = _mm512_permutex2var_ps(a, lo, c);
                let mut second = _mm512_permutex2var_ps(a, hi, c);
                if let Some(r) = res {
                    let r = r.as_ptr().add(oy * w);
                    first = _mm512_add_ps(first, _mm512_maskz_loadu_ps(head, r.wrapping_add(base)));
                    let r2 = _mm512_maskz_loadu_ps(rest, r.wrapping_add(base + 16));
                    second = _mm512_add_ps(second, r2);
                }
                if relu {
                    first = _mm512_max_ps(first, zero);
                    second = _mm512_max_ps(second, zero);
                }
                _mm512_mask_storeu_ps(row.wrapping_add(base), head, first);
                _mm512_mask_storeu_ps(row.wrapping_add(base + 16), rest, second);
            }
            tx += 16;
        }
    }
}

/// `A g A^T` of the 2x2 output-gradient tiles of tile row `ty` of one `h x w` plane of `dy`
/// (zeros past its edges): tile `tx`'s value at `ξ` goes to `dst[ξ * xs + off + tx]`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn grad_row(
    plane: &[f32],
    (h, w): (usize, usize),
    ty: usize,
    dst: &mut [f32],
    (off, xs): (usize, usize),
) {
    let tw = w.div_ceil(2);
    assert!(plane.len() >= h * w && dst.len() >= 15 * xs + off + tw);
    // SAFETY: as in `input_row`.
    unsafe {
        let (even, odd) = (idx(&EVEN), idx(&ODD));
        let zero = _mm512_setzero_ps();
        let mut tx = 0;
        while tx < tw {
            // Columns of each of the two rows: (e, e + o, e - o, -o).
            let mut g = [[zero; 4]; 2];
            for (r, cols) in g.iter_mut().enumerate() {
                let oy = 2 * ty + r;
                if oy >= h {
                    continue;
                }
                let row = plane.as_ptr().add(oy * w);
                let (v0, v1) = (load(row, w, 2 * tx), load(row, w, 2 * tx + 16));
                let e = _mm512_permutex2var_ps(v0, even, v1);
                let o = _mm512_permutex2var_ps(v0, odd, v1);
                *cols = [
                    e,
                    _mm512_add_ps(e, o),
                    _mm512_sub_ps(e, o),
                    _mm512_sub_ps(zero, o),
                ];
            }
            let msk = mask(tw - tx);
            for c in 0..4 {
                let (r0, r1) = (g[0][c], g[1][c]);
                let rows = [
                    r0,
                    _mm512_add_ps(r0, r1),
                    _mm512_sub_ps(r0, r1),
                    _mm512_sub_ps(zero, r1),
                ];
                for (q, v) in rows.into_iter().enumerate() {
                    let p = dst.as_mut_ptr().add((q * 4 + c) * xs + off + tx);
                    _mm512_mask_storeu_ps(p, msk, v);
                }
            }
            tx += 16;
        }
    }
}

/// Reduction steps per pass over a column block: the `KC x 48` panel of `b` stays in L1 while
/// every row block of `a` runs against it.
const KC: usize = 96;

/// `c[i * n + j] = Σ_k a[k * m + i] · b[k * n + j]` (see `Isa::product`): rows in blocks of 8
/// broadcast from `a`, columns in blocks of 48 (three vectors of `b`, masked at the end), 24
/// accumulators; the reduction in passes of [`KC`], the first storing, the others adding.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn product(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    let mut j = 0;
    while j < n {
        let left = n - j;
        let masks = [
            mask(left),
            mask(left.saturating_sub(16)),
            mask(left.saturating_sub(32)),
        ];
        let mut k0 = 0;
        while k0 < k || (k == 0 && k0 == 0) {
            let ks = (k0, (k0 + KC).min(k));
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(8);
                let at = (i, j);
                let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
                // SAFETY: rows `i..i + rows` < m, masked columns below `n`, `kk < k`: inside
                // the slices checked above.
                unsafe {
                    match rows {
                        8 => block::<8>(at, ks, (m, n), a, b, c, masks),
                        7 => block::<7>(at, ks, (m, n), a, b, c, masks),
                        6 => block::<6>(at, ks, (m, n), a, b, c, masks),
                        5 => block::<5>(at, ks, (m, n), a, b, c, masks),
                        4 => block::<4>(at, ks, (m, n), a, b, c, masks),
                        3 => block::<3>(at, ks, (m, n), a, b, c, masks),
                        2 => block::<2>(at, ks, (m, n), a, b, c, masks),
                        _ => block::<1>(at, ks, (m, n), a, b, c, masks),
                    }
                }
                i += rows;
            }
            k0 += KC;
        }
        j += 48;
    }
}

/// Rows `i..i + R`, columns `j..j + 48` (masked) of [`product`], reduction steps `k0..k1`
/// (stored when `k0 == 0`, else added).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize>(
    (i, j): (usize, usize),
    (k0, k1): (usize, usize),
    (m, n): (usize, usize),
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    masks: [__mmask16; 3],
) {
    // SAFETY: the caller's bounds.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 3]; R];
        if k0 > 0 {
            for (r, row) in acc.iter_mut().enumerate() {
                let cp = c.add((i + r) * n + j);
                row[0] = _mm512_maskz_loadu_ps(masks[0], cp);
                row[1] = _mm512_maskz_loadu_ps(masks[1], cp.wrapping_add(16));
                row[2] = _mm512_maskz_loadu_ps(masks[2], cp.wrapping_add(32));
            }
        }
        for kk in k0..k1 {
            let bp = b.add(kk * n + j);
            let b0 = _mm512_maskz_loadu_ps(masks[0], bp);
            let b1 = _mm512_maskz_loadu_ps(masks[1], bp.wrapping_add(16));
            let b2 = _mm512_maskz_loadu_ps(masks[2], bp.wrapping_add(32));
            let ap = a.add(kk * m + i);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(r));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
                row[2] = _mm512_fmadd_ps(av, b2, row[2]);
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let cp = c.add((i + r) * n + j);
            _mm512_mask_storeu_ps(cp, masks[0], row[0]);
            _mm512_mask_storeu_ps(cp.wrapping_add(16), masks[1], row[1]);
            _mm512_mask_storeu_ps(cp.wrapping_add(32), masks[2], row[2]);
        }
    }
}

/// The totals of four vectors' lanes: a transpose-and-add tree (13 operations, against 32 for
/// four separate horizontal sums).
#[inline(always)]
unsafe fn sum4(v: [__m512; 4]) -> [f32; 4] {
    // SAFETY: register operations and one store to a local array.
    unsafe {
        // Per 128-bit lane: a = [v0, v1, v0, v1] and b = [v2, v3, v2, v3] partial sums.
        let a = _mm512_add_ps(
            _mm512_unpacklo_ps(v[0], v[1]),
            _mm512_unpackhi_ps(v[0], v[1]),
        );
        let b = _mm512_add_ps(
            _mm512_unpacklo_ps(v[2], v[3]),
            _mm512_unpackhi_ps(v[2], v[3]),
        );
        // Per 128-bit lane: [v0, v1, v2, v3], each the sum of that lane's four values.
        let c = _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        );
        // Add the four 128-bit lanes.
        let d = _mm512_add_ps(c, _mm512_shuffle_f32x4::<0b01_00_11_10>(c, c));
        let e = _mm512_add_ps(d, _mm512_shuffle_f32x4::<0b10_11_00_01>(d, d));
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), _mm512_castps512_ps128(e));
        out
    }
}

/// `c[i * n + j] += Σ_t a[i * k + t] · b[j * k + t]`: `m` rows of `a` against `n` rows of `b`,
/// both `k` long (the weight gradient's reduction over tiles). Blocks of 8 rows of `a` (read
/// again for every block of `b`, so they stay in L1) by 3 rows of `b`, 16 tiles a step (the
/// last masked), 24 accumulators; a block past an edge repeats the last row and drops it.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn product_nt(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= n * k && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: row indices are clamped below `m` and `n`, lanes masked below `k`, and `c` is
    // written at rows below `m`, columns below `n`.
    unsafe {
        for i0 in (0..m).step_by(8) {
            let ar: [*const f32; 8] =
                std::array::from_fn(|r| a.as_ptr().add((i0 + r).min(m - 1) * k));
            for j0 in (0..n).step_by(3) {
                let br: [*const f32; 3] =
                    std::array::from_fn(|s| b.as_ptr().add((j0 + s).min(n - 1) * k));
                let mut acc = [[_mm512_setzero_ps(); 3]; 8];
                let mut t = 0;
                while t < k {
                    let msk = mask(k - t);
                    let b0 = _mm512_maskz_loadu_ps(msk, br[0].add(t));
                    let b1 = _mm512_maskz_loadu_ps(msk, br[1].add(t));
                    let b2 = _mm512_maskz_loadu_ps(msk, br[2].add(t));
                    for (row, ap) in acc.iter_mut().zip(ar) {
                        let av = _mm512_maskz_loadu_ps(msk, ap.add(t));
                        row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                        row[1] = _mm512_fmadd_ps(av, b1, row[1]);
                        row[2] = _mm512_fmadd_ps(av, b2, row[2]);
                    }
                    t += 16;
                }
                for s in 0..3usize.min(n - j0) {
                    for g in 0..2 {
                        let sums = sum4(std::array::from_fn(|r| acc[4 * g + r][s]));
                        for (r, v) in sums.iter().enumerate() {
                            let i = i0 + 4 * g + r;
                            if i < m {
                                *c.as_mut_ptr().add(i * n + j0 + s) += v;
                            }
                        }
                    }
                }
            }
        }
    }
}
