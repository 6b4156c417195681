//! Tests for `siamese_ops::distance` and `siamese_ops::mask`: values on hand-computable
//! geometry (points on the unit circle), gradients against central finite differences in
//! `f64`, shape errors, and the fast nearest-neighbour search against brute force.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use siamese_ops::distance::{
    cosine, l1, l2, l2_normalize, nearest_sq_l2, pairwise_cosine, pairwise_l1, pairwise_l2,
    pairwise_sq_l2, squared_l2, Distance, GalleryIndex, Matcher, L2_EPS,
};
use siamese_ops::mask;

/// Asserts `got` and `want` agree element-wise within `tol` (absolute).
fn check(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tol {tol})\n got  {got:?}\n want {want:?}"
        );
    }
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

fn circle(angles_deg: &[f64], dtype: DType) -> Result<Tensor> {
    let data: Vec<f64> = angles_deg
        .iter()
        .flat_map(|a| {
            let r = a.to_radians();
            [r.cos(), r.sin()]
        })
        .collect();
    Ok(Tensor::from_vec(data, (angles_deg.len(), 2), &Device::Cpu)?.to_dtype(dtype)?)
}

/// Points on the unit circle at angle θ apart: squared L2 = 2 - 2cos θ, L2 = its root,
/// cosine distance = 1 - cos θ. L1 is |Δx| + |Δy| from the coordinates.
#[test]
fn paired_values_on_the_unit_circle() -> Result<()> {
    let s3 = 3f64.sqrt() / 2.0;
    for dtype in [DType::F32, DType::F64] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        // Pairs: (0°, 90°), (0°, 180°), (0°, 60°), (30°, 30°).
        let a = circle(&[0.0, 0.0, 0.0, 30.0], dtype)?;
        let b = circle(&[90.0, 180.0, 60.0, 30.0], dtype)?;
        check(
            &to_f64(&squared_l2(&a, &b)?)?,
            &[2.0, 4.0, 1.0, 0.0],
            tol,
            "squared_l2",
        );
        check(
            &to_f64(&l2(&a, &b)?)?,
            &[2f64.sqrt(), 2.0, 1.0, L2_EPS.sqrt()],
            tol,
            "l2",
        );
        // (1,0)-(0,1): 1+1; (1,0)-(-1,0): 2; (1,0)-(1/2,√3/2): 1/2 + √3/2; equal points: 0.
        check(
            &to_f64(&l1(&a, &b)?)?,
            &[2.0, 2.0, 0.5 + s3, 0.0],
            tol,
            "l1",
        );
        check(
            &to_f64(&cosine(&a, &b)?)?,
            &[1.0, 2.0, 0.5, 0.0],
            tol,
            "cosine",
        );
        // The enum dispatches to the same functions.
        for d in Distance::ALL {
            let via_enum = to_f64(&d.paired(&a, &b)?)?;
            let direct = to_f64(&match d {
                Distance::SquaredL2 => squared_l2(&a, &b)?,
                Distance::L2 => l2(&a, &b)?,
                Distance::L1 => l1(&a, &b)?,
                Distance::Cosine => cosine(&a, &b)?,
            })?;
            check(&via_enum, &direct, 0.0, d.name());
        }
    }
    Ok(())
}

/// Cosine distance ignores scale: (2,0) vs (0,3) is orthogonal (1), (2,0) vs (-5,0) opposite (2).
#[test]
fn cosine_ignores_norm() -> Result<()> {
    let a = Tensor::new(&[[2.0f64, 0.0], [2.0, 0.0]], &Device::Cpu)?;
    let b = Tensor::new(&[[0.0f64, 3.0], [-5.0, 0.0]], &Device::Cpu)?;
    check(&to_f64(&cosine(&a, &b)?)?, &[1.0, 2.0], 1e-12, "cosine");
    Ok(())
}

/// Every pairwise matrix entry equals the paired distance of the two rows.
#[test]
fn pairwise_matches_paired_distances() -> Result<()> {
    let a = circle(&[0.0, 45.0, 120.0], DType::F64)?;
    let b = circle(&[10.0, 90.0, 200.0, 300.0], DType::F64)?;
    for d in Distance::ALL {
        let m = d.pairwise(&a, &b)?;
        assert_eq!(m.dims(), &[3, 4], "{}", d.name());
        let got = to_f64(&m)?;
        let mut want = Vec::new();
        for i in 0..3 {
            for j in 0..4 {
                let ai = a.narrow(0, i, 1)?;
                let bj = b.narrow(0, j, 1)?;
                want.push(to_f64(&d.paired(&ai, &bj)?)?[0]);
            }
        }
        check(&got, &want, 1e-9, d.name());
    }
    Ok(())
}

/// Pairwise squared L2 of a set with itself: the diagonal is 0 (clamped, never negative) and
/// the angle-θ entries are 2 - 2cos θ.
#[test]
fn pairwise_sq_l2_on_circle_points() -> Result<()> {
    let a = circle(&[0.0, 90.0, 180.0], DType::F32)?;
    let got = to_f64(&pairwise_sq_l2(&a, &a)?)?;
    check(
        &got,
        &[0.0, 2.0, 4.0, 2.0, 0.0, 2.0, 4.0, 2.0, 0.0],
        1e-5,
        "pairwise_sq_l2",
    );
    assert!(got.iter().all(|v| *v >= 0.0));
    let got = to_f64(&pairwise_cosine(&a, &a)?)?;
    check(
        &got,
        &[0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0],
        1e-6,
        "pairwise_cosine",
    );
    Ok(())
}

/// `l2_normalize` gives unit rows; a zero row stays zero (divided by eps, not by 0).
#[test]
fn l2_normalize_rows() -> Result<()> {
    let x = Tensor::new(&[[3.0f64, 4.0], [0.0, 0.0], [0.0, -2.0]], &Device::Cpu)?;
    let got = to_f64(&l2_normalize(&x, 1e-12)?)?;
    check(
        &got,
        &[0.6, 0.8, 0.0, 0.0, 0.0, -1.0],
        1e-12,
        "l2_normalize",
    );
    Ok(())
}

/// Wrong ranks, mismatched shapes and mismatched dtypes are errors that name the op.
#[test]
fn shape_errors_name_the_op() -> Result<()> {
    let dev = Device::Cpu;
    let a = Tensor::zeros((3, 4), DType::F32, &dev)?;
    let b = Tensor::zeros((2, 4), DType::F32, &dev)?;
    let c = Tensor::zeros((3, 5), DType::F32, &dev)?;
    let v = Tensor::zeros(4, DType::F32, &dev)?;
    let a64 = Tensor::zeros((3, 4), DType::F64, &dev)?;
    let ints = Tensor::zeros((3, 4), DType::U32, &dev)?;
    let msg = |r: candle_core::Result<Tensor>| match r {
        Ok(t) => panic!("expected an error, got shape {:?}", t.dims()),
        Err(e) => e.to_string(),
    };
    assert!(msg(squared_l2(&a, &b)).contains("squared_l2"));
    assert!(msg(l2(&a, &v)).contains("l2"));
    assert!(msg(l1(&a, &a64)).contains("dtype"));
    assert!(msg(cosine(&ints, &ints)).contains("float"));
    assert!(msg(pairwise_sq_l2(&a, &c)).contains("pairwise_sq_l2"));
    assert!(msg(pairwise_l1(&v, &a)).contains("[N, D]"));
    assert!(msg(l2_normalize(&v, 1e-12)).contains("l2_normalize"));
    assert!(msg(l2_normalize(&a, 0.0)).contains("eps"));
    // Pairwise accepts different row counts.
    assert_eq!(pairwise_l2(&a, &b)?.dims(), &[3, 2]);
    Ok(())
}

/// Names round-trip through `name`, `FromStr` and serde.
#[test]
fn distance_names_round_trip() -> Result<()> {
    for d in Distance::ALL {
        assert_eq!(d.name().parse::<Distance>()?, d);
        assert_eq!(d.to_string(), d.name());
    }
    assert_eq!("Squared_L2".parse::<Distance>()?, Distance::SquaredL2);
    assert!("manhattan".parse::<Distance>().is_err());
    assert_eq!(Distance::default(), Distance::SquaredL2);
    Ok(())
}

/// `Distance::between` on slices matches the tensor version.
#[test]
fn host_distance_matches_tensor_distance() -> Result<()> {
    let a = [0.3, -1.2, 2.0];
    let b = [1.1, 0.4, -0.5];
    let ta = Tensor::new(&[a], &Device::Cpu)?;
    let tb = Tensor::new(&[b], &Device::Cpu)?;
    for d in Distance::ALL {
        let want = to_f64(&d.paired(&ta, &tb)?)?[0];
        check(&[d.between(&a, &b)], &[want], 1e-12, d.name());
    }
    assert!(Distance::L1.between(&a, &b[..2]).is_nan());
    Ok(())
}

/// The set matcher on hand-computed sets: sets of three 1-d encodings `{0, 1, 5}` and
/// `{0.5, 4, 10}` under squared L2. From a: nearest squares 0.25, 0.25, 1 (mean 0.5); from
/// b: 0.25, 1, 25 (mean 8.75); the distance is 9.25.
#[test]
fn set_matcher_is_the_symmetric_chamfer_distance() {
    let m = Matcher {
        distance: Distance::SquaredL2,
        set: 3,
    };
    let a = [0.0f64, 1.0, 5.0];
    let b = [0.5f64, 4.0, 10.0];
    check(&[m.between(&a, &b)], &[9.25], 1e-12, "chamfer a b");
    check(&[m.between(&b, &a)], &[9.25], 1e-12, "chamfer b a");
    check(&[m.between(&a, &a)], &[0.0], 0.0, "chamfer a a");
    // The order of a set's encodings does not matter.
    check(
        &[m.between(&[5.0, 0.0, 1.0], &b)],
        &[9.25],
        1e-12,
        "chamfer permuted",
    );
    // A set of one is the plain distance; lengths that disagree are NaN.
    let single = Matcher::from(Distance::L1);
    assert_eq!(single.between(&[1.0f32, 2.0], &[4.0, 6.0]), 7.0);
    assert!(m.between(&a, &b[..2]).is_nan());
    assert!(m.between(&a[..2], &b[..2]).is_nan());
    assert_eq!(m.row_len(128), 384);
}

/// Against a brute-force Chamfer distance on random 13-d sets (the 8-lane sum and its tail),
/// for every distance, and the mean encodings against a direct mean.
#[test]
fn set_matcher_matches_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (set, dim) = (5, 13);
    let a: Vec<f64> = (0..set * dim)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let b: Vec<f64> = (0..set * dim)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    for d in Distance::ALL {
        let m = Matcher { distance: d, set };
        let dist =
            |i: usize, j: usize| d.between(&a[i * dim..(i + 1) * dim], &b[j * dim..(j + 1) * dim]);
        let from_a: f64 = (0..set)
            .map(|i| (0..set).map(|j| dist(i, j)).fold(f64::INFINITY, f64::min))
            .sum();
        let from_b: f64 = (0..set)
            .map(|j| (0..set).map(|i| dist(i, j)).fold(f64::INFINITY, f64::min))
            .sum();
        check(
            &[m.between(&a, &b)],
            &[(from_a + from_b) / set as f64],
            1e-12,
            d.name(),
        );
    }
    let rows: Vec<f32> = (0..2 * set * dim).map(|v| v as f32).collect();
    let means = Matcher {
        distance: Distance::SquaredL2,
        set,
    }
    .means(&rows, dim);
    assert_eq!(means.len(), 2 * dim);
    // Row r's encodings hold r·set·dim + i·dim + k for i < set: their mean is at i = 2.
    for (r, row) in means.chunks(dim).enumerate() {
        for (k, v) in row.iter().enumerate() {
            assert_eq!(*v, (r * set * dim + 2 * dim + k) as f32);
        }
    }
}

/// The `f32` sets go through a matrix product to find each encoding's nearest: against the
/// brute-force Chamfer distance (in f64, of the same f32 values) at the Omniglot recipe's 64
/// encodings of 384 numbers and at odd sizes; equal sets, and a set against a reordering of
/// itself, are at exactly 0.
#[test]
fn f32_set_matcher_matches_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (set, dim) in [(64, 384), (5, 13), (33, 130), (2, 1)] {
        let mut draw = || -> Vec<f32> {
            (0..set * dim)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect()
        };
        let (a, b) = (draw(), draw());
        for d in [Distance::SquaredL2, Distance::L2] {
            let m = Matcher { distance: d, set };
            let wide = |x: &[f32]| -> Vec<f64> { x.iter().map(|&v| f64::from(v)).collect() };
            let want = Matcher { distance: d, set }.between(&wide(&a), &wide(&b));
            let got = f64::from(m.between(&a, &b));
            assert!(
                (got - want).abs() <= 1e-5 * want.abs(),
                "{} {set}x{dim}: {got} against {want}",
                d.name()
            );
        }
        let m = Matcher {
            distance: Distance::SquaredL2,
            set,
        };
        assert_eq!(m.between(&a, &a), 0.0, "{set}x{dim}");
        let reversed: Vec<f32> = a.chunks(dim).rev().flatten().copied().collect();
        assert_eq!(m.between(&a, &reversed), 0.0, "{set}x{dim}");
    }
}

type BinOp = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;

/// Compares the autograd gradient of `sum(w * f(a, b))` with central finite differences.
fn grad_check(f: BinOp, name: &str, n: usize, m: usize, d: usize, seed: u64) -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draw =
        |len: usize| -> Vec<f64> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let a0 = draw(n * d);
    let b0 = draw(m * d);
    let out_len = to_f64(&f(
        &Tensor::from_vec(a0.clone(), (n, d), &dev)?,
        &Tensor::from_vec(b0.clone(), (m, d), &dev)?,
    )?)?
    .len();
    let w = draw(out_len);
    let objective = |a: &[f64], b: &[f64]| -> Result<f64> {
        let out = f(
            &Tensor::from_vec(a.to_vec(), (n, d), &dev)?,
            &Tensor::from_vec(b.to_vec(), (m, d), &dev)?,
        )?;
        Ok(to_f64(&out)?.iter().zip(&w).map(|(x, y)| x * y).sum())
    };
    let va = Var::from_tensor(&Tensor::from_vec(a0.clone(), (n, d), &dev)?)?;
    let vb = Var::from_tensor(&Tensor::from_vec(b0.clone(), (m, d), &dev)?)?;
    let out = f(va.as_tensor(), vb.as_tensor())?;
    let wt = Tensor::from_vec(w.clone(), out.shape(), &dev)?;
    let grads = (out * wt)?.sum_all()?.backward()?;
    let h = 1e-6;
    for (var, x0, which) in [(&va, &a0, 0), (&vb, &b0, 1)] {
        // An input the function ignores gets no gradient: compare with zeros.
        let g = match grads.get(var.as_tensor()) {
            Some(g) => to_f64(g)?,
            None => vec![0.0; x0.len()],
        };
        let mut fd = Vec::with_capacity(x0.len());
        for i in 0..x0.len() {
            let (mut plus, mut minus) = (x0.clone(), x0.clone());
            plus[i] += h;
            minus[i] -= h;
            let (fp, fm) = if which == 0 {
                (objective(&plus, &b0)?, objective(&minus, &b0)?)
            } else {
                (objective(&a0, &plus)?, objective(&a0, &minus)?)
            };
            fd.push((fp - fm) / (2.0 * h));
        }
        check(&g, &fd, 1e-6, &format!("d {name} / d input {which}"));
    }
    Ok(())
}

#[test]
fn paired_gradients_match_finite_differences() -> Result<()> {
    grad_check(squared_l2, "squared_l2", 3, 3, 4, 1)?;
    grad_check(l2, "l2", 3, 3, 4, 2)?;
    grad_check(l1, "l1", 3, 3, 4, 3)?;
    grad_check(cosine, "cosine", 3, 3, 4, 4)?;
    Ok(())
}

#[test]
fn pairwise_gradients_match_finite_differences() -> Result<()> {
    grad_check(pairwise_sq_l2, "pairwise_sq_l2", 3, 4, 5, 5)?;
    grad_check(pairwise_l2, "pairwise_l2", 3, 4, 5, 6)?;
    grad_check(pairwise_l1, "pairwise_l1", 3, 4, 5, 7)?;
    grad_check(pairwise_cosine, "pairwise_cosine", 3, 4, 5, 8)?;
    grad_check(|x, _| l2_normalize(x, 1e-12), "l2_normalize", 3, 1, 4, 9)?;
    Ok(())
}

/// At zero distance the L2 gradient is finite (zero), thanks to the eps inside the root.
#[test]
fn l2_gradient_is_finite_at_zero_distance() -> Result<()> {
    let a = Var::from_tensor(&Tensor::new(&[[1.0f64, 2.0]], &Device::Cpu)?)?;
    let b = Tensor::new(&[[1.0f64, 2.0]], &Device::Cpu)?;
    let grads = l2(a.as_tensor(), &b)?.sum_all()?.backward()?;
    let g = to_f64(grads.get(a.as_tensor()).expect("gradient reaches a"))?;
    check(&g, &[0.0, 0.0], 0.0, "grad l2 at 0");
    Ok(())
}

fn brute_force(queries: &[f32], gallery: &[f32], dim: usize, k: usize) -> Vec<Vec<(usize, f32)>> {
    queries
        .chunks(dim)
        .map(|q| {
            let mut all: Vec<(usize, f32)> = gallery
                .chunks(dim)
                .enumerate()
                .map(|(i, g)| (i, q.iter().zip(g).map(|(x, y)| (x - y) * (x - y)).sum()))
                .collect();
            all.sort_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)));
            all.truncate(k);
            all
        })
        .collect()
}

/// The blocked search returns the brute-force neighbours (several gallery blocks, more
/// queries than one chunk, a dimension that is not a multiple of 16).
#[test]
fn nearest_search_matches_brute_force() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let dim = 21;
    let (nq, ng, k) = (70, 9000, 5);
    let queries: Vec<f32> = (0..nq * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let gallery: Vec<f32> = (0..ng * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let want = brute_force(&queries, &gallery, dim, k);
    let got = nearest_sq_l2(&queries, &gallery, dim, k)?;
    let index = GalleryIndex::new(gallery.clone(), dim)?;
    let got_index = index.search_batch(&queries, k)?;
    assert_eq!(got.len(), nq);
    for q in 0..nq {
        let idx: Vec<usize> = want[q].iter().map(|p| p.0).collect();
        assert_eq!(
            got[q].iter().map(|p| p.0).collect::<Vec<_>>(),
            idx,
            "query {q}"
        );
        assert_eq!(
            got_index[q].iter().map(|p| p.0).collect::<Vec<_>>(),
            idx,
            "index query {q}"
        );
        for ((_, d), (_, w)) in got[q].iter().zip(&want[q]) {
            assert!((d - w).abs() <= 1e-5 * (1.0 + w), "query {q}: {d} vs {w}");
        }
        for ((_, d), (_, w)) in got_index[q].iter().zip(&want[q]) {
            assert!(
                (d - w).abs() <= 1e-4 * (1.0 + w),
                "index query {q}: {d} vs {w}"
            );
        }
    }
    let single = index.search(&queries[..dim], k)?;
    assert_eq!(single, got_index[0]);
    Ok(())
}

/// Edge cases: k = 0, k beyond the gallery, exact ties resolve to the lower index, and
/// malformed lengths are errors.
#[test]
fn nearest_search_edge_cases() -> Result<()> {
    // Gallery on a line: 0, 2, 1, 1 (rows 2 and 3 tie), query at 1.
    let gallery = [0.0f32, 2.0, 1.0, 1.0];
    let got = nearest_sq_l2(&[1.0], &gallery, 1, 10)?;
    assert_eq!(got, vec![vec![(2, 0.0), (3, 0.0), (0, 1.0), (1, 1.0)]]);
    assert_eq!(nearest_sq_l2(&[1.0], &gallery, 1, 0)?, vec![Vec::new()]);
    assert!(nearest_sq_l2(&[1.0, 2.0, 3.0], &gallery, 2, 1).is_err());
    assert!(nearest_sq_l2(&[1.0], &gallery, 0, 1).is_err());
    assert!(GalleryIndex::new(vec![1.0; 5], 2).is_err());
    let index = GalleryIndex::new(gallery.to_vec(), 1)?;
    assert_eq!(index.len(), 4);
    assert_eq!(index.norms(), &[0.0, 4.0, 1.0, 1.0]);
    assert!(index.search(&[1.0, 2.0], 1).is_err());
    assert_eq!(index.search(&[1.0], 2)?, vec![(2, 0.0), (3, 0.0)]);
    Ok(())
}

/// Timing against a 1,000,000 × 128 gallery; runs only with `SIAMESE_SLOW_TESTS=1` (it needs
/// 512 MB). Target: about 20 ms per query or less on 2 cores, amortised over a batch.
#[test]
fn nearest_search_large_gallery_timing() -> Result<()> {
    if std::env::var_os("SIAMESE_SLOW_TESTS").is_none() {
        return Ok(());
    }
    let (dim, ng, nq, k) = (128, 1_000_000, 64, 10);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let gallery: Vec<f32> = (0..ng * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let queries: Vec<f32> = (0..nq * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let t = std::time::Instant::now();
    let direct = nearest_sq_l2(&queries, &gallery, dim, k)?;
    let direct_ms = t.elapsed().as_secs_f64() * 1e3 / nq as f64;
    let index = GalleryIndex::new(gallery, dim)?;
    let t = std::time::Instant::now();
    let indexed = index.search_batch(&queries, k)?;
    let indexed_ms = t.elapsed().as_secs_f64() * 1e3 / nq as f64;
    let t = std::time::Instant::now();
    index.search(&queries[..dim], k)?;
    let single_ms = t.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "nearest_sq_l2: {direct_ms:.2} ms/query; GalleryIndex batch: {indexed_ms:.2} ms/query; \
         single query: {single_ms:.2} ms"
    );
    for q in 0..nq {
        assert_eq!(direct[q][0].0, indexed[q][0].0);
    }
    Ok(())
}

/// Masks on labels [7, 3, 7, 5]: rows 0 and 2 share a label.
#[test]
fn label_masks() -> Result<()> {
    let dev = Device::Cpu;
    let labels = Tensor::new(&[7u32, 3, 7, 5], &dev)?;
    let same = mask::same_label_mask(&labels)?;
    assert_eq!(same.dtype(), DType::U8);
    assert_eq!(
        same.to_vec2::<u8>()?,
        vec![
            vec![1, 0, 1, 0],
            vec![0, 1, 0, 0],
            vec![1, 0, 1, 0],
            vec![0, 0, 0, 1]
        ]
    );
    let diff = mask::different_label_mask(&labels)?.to_vec2::<u8>()?;
    let same_v = same.to_vec2::<u8>()?;
    for i in 0..4 {
        for j in 0..4 {
            assert_eq!(diff[i][j], 1 - same_v[i][j]);
        }
    }
    assert_eq!(
        mask::positive_pair_mask(&labels)?.to_vec2::<u8>()?,
        vec![
            vec![0, 0, 1, 0],
            vec![0, 0, 0, 0],
            vec![1, 0, 0, 0],
            vec![0, 0, 0, 0]
        ]
    );
    assert_eq!(
        mask::diagonal_mask(2, &dev)?.to_vec2::<u8>()?,
        vec![vec![1, 0], vec![0, 1]]
    );
    let plain = mask::same_label_matrix(&[7, 3, 7, 5]);
    let flat: Vec<bool> = same_v.iter().flatten().map(|v| *v == 1).collect();
    assert_eq!(plain, flat);
    let plain_diff = mask::different_label_matrix(&[7, 3, 7, 5]);
    assert!(plain.iter().zip(&plain_diff).all(|(a, b)| a != b));
    assert!(mask::same_label_mask(&Tensor::zeros((2, 2), DType::U32, &dev)?).is_err());
    Ok(())
}
