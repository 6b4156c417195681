//! Integration tests of `siamese_ops::nn`: values against naive reference loops written here in
//! `f64`, gradients (through candle's autograd) against central finite differences of those
//! references, and the special cases the layers promise (stride/padding shapes, max-pool ties,
//! skipped input gradients, unbiased batch variance).

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use siamese_ops::nn::{
    add_relu, batch_norm_eval, batch_norm_train, conv2d, conv2d_add_relu, conv2d_relu,
    conv2d_relu_max_pool2d, conv_bn_relu_pool_eval, conv_bn_relu_pool_tap_train,
    conv_bn_relu_pool_train, conv_bn_train, fold_batch_norm, kaiming_uniform, max_pool2d,
    relu_max_pool2d, Conv2dParams,
};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Uniform values in `[-1, 1)` from a fixed seed.
fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn rand_tensor(shape: &[usize], seed: u64) -> Result<Tensor> {
    let len = shape.iter().product();
    Ok(Tensor::from_vec(rand_vec(len, seed), shape, &Device::Cpu)?)
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// The one comparison helper: `|got - want| <= atol + rtol * |want|` everywhere.
fn check(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}: element {i}: got {g}, want {w} (error {err:e})"
        );
    }
}

/// Central finite differences of a scalar function of `v`, in `f64`.
fn finite_diff(v: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut v = v.to_vec();
    (0..v.len())
        .map(|i| {
            let old = v[i];
            v[i] = old + h;
            let up = f(&v);
            v[i] = old - h;
            let down = f(&v);
            v[i] = old;
            (up - down) / (2.0 * h)
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// ---------------------------------------------------------------------------------------------
// Convolution

/// Naive direct convolution in `f64`: `x [N,C,H,W]`, `w [O,C,KH,KW]`, `b [O]`.
fn conv_ref(
    x: &[f64],
    xd: [usize; 4],
    w: &[f64],
    wd: [usize; 4],
    b: &[f64],
    s: usize,
    p: usize,
    relu: bool,
) -> (Vec<f64>, [usize; 4]) {
    let [n, c, h, wi] = xd;
    let [o, _, kh, kw] = wd;
    let ho = (h + 2 * p - kh) / s + 1;
    let wo = (wi + 2 * p - kw) / s + 1;
    let mut y = vec![0f64; n * o * ho * wo];
    for ni in 0..n {
        for oi in 0..o {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = b[oi];
                    for ci in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * s + ky) as isize - p as isize;
                                let ix = (ox * s + kx) as isize - p as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wi as isize {
                                    continue;
                                }
                                let xv = x[((ni * c + ci) * h + iy as usize) * wi + ix as usize];
                                let wv = w[((oi * c + ci) * kh + ky) * kw + kx];
                                acc += xv * wv;
                            }
                        }
                    }
                    y[((ni * o + oi) * ho + oy) * wo + ox] = if relu { acc.max(0.0) } else { acc };
                }
            }
        }
    }
    (y, [n, o, ho, wo])
}

/// Checks conv2d (or conv2d_relu) values and all three gradients for one geometry.
///
/// Values: against `conv_ref` (tolerance 1e-4 absolute, float32 sums of at most ~100 terms).
/// Gradients of `L = sum(y * r)` for a fixed random `r`: against central differences of the `f64`
/// reference with `h = 1e-3` (L is piecewise linear in each argument, so the differences are
/// exact up to rounding unless a ReLU kink is crossed, which random data makes vanishingly rare);
/// tolerance 1e-3 absolute + 1e-3 relative.
fn check_conv(
    xd: [usize; 4],
    wd: [usize; 4],
    stride: usize,
    padding: usize,
    relu: bool,
) -> Result<()> {
    let what = format!("conv x{xd:?} w{wd:?} s{stride} p{padding} relu={relu}");
    let dev = Device::Cpu;
    let xv = rand_vec(xd.iter().product(), 1);
    let wv = rand_vec(wd.iter().product(), 2);
    let bv = rand_vec(wd[0], 3);
    let x = Var::from_vec(xv.clone(), &xd[..], &dev)?;
    let w = Var::from_vec(wv.clone(), &wd[..], &dev)?;
    let b = Var::from_vec(bv.clone(), wd[0], &dev)?;
    let p = Conv2dParams { stride, padding };
    let y = if relu {
        conv2d_relu(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), p)?
    } else {
        conv2d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), p)?
    };
    let (x64, w64, b64) = (to_f64(&xv), to_f64(&wv), to_f64(&bv));
    let (want, yd) = conv_ref(&x64, xd, &w64, wd, &b64, stride, padding, relu);
    assert_eq!(y.dims(), &yd[..], "{what}: output shape");
    check(&format!("{what}: values"), &flat(&y)?, &want, 1e-4, 1e-4);

    let r = rand_vec(want.len(), 4);
    let r64 = to_f64(&r);
    let rt = Tensor::from_vec(r, &yd[..], &dev)?;
    let grads = (y * rt)?.sum_all()?.backward()?;
    let loss = |x: &[f64], w: &[f64], b: &[f64]| {
        dot(&conv_ref(x, xd, w, wd, b, stride, padding, relu).0, &r64)
    };
    let h = 1e-3;
    let gx = finite_diff(&x64, h, |v| loss(v, &w64, &b64));
    let gw = finite_diff(&w64, h, |v| loss(&x64, v, &b64));
    let gb = finite_diff(&b64, h, |v| loss(&x64, &w64, v));
    let get = |v: &Var, name: &str| -> Result<Vec<f32>> {
        let g = grads
            .get(v.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("{what}: no gradient for {name}"))?;
        assert_eq!(g.dims(), v.dims(), "{what}: {name} gradient shape");
        flat(g)
    };
    check(&format!("{what}: dx"), &get(&x, "x")?, &gx, 1e-3, 1e-3);
    check(&format!("{what}: dw"), &get(&w, "w")?, &gw, 1e-3, 1e-3);
    check(&format!("{what}: db"), &get(&b, "b")?, &gb, 1e-3, 1e-3);
    Ok(())
}

#[test]
fn conv2d_stride1_no_padding_non_square() -> Result<()> {
    check_conv([2, 3, 9, 7], [4, 3, 3, 3], 1, 0, false)
}

#[test]
fn conv2d_stride1_padding1_batch1() -> Result<()> {
    check_conv([1, 2, 7, 8], [3, 2, 3, 3], 1, 1, false)
}

#[test]
fn conv2d_stride2_padding1_odd_width() -> Result<()> {
    // 12x9 with stride 2: H uses every row, W leaves a column unused.
    check_conv([2, 2, 12, 9], [3, 2, 3, 3], 2, 1, false)
}

#[test]
fn conv2d_stride2_no_padding_non_square_kernel() -> Result<()> {
    check_conv([2, 2, 12, 9], [3, 2, 3, 2], 2, 0, false)
}

#[test]
fn conv2d_stride3_padding2_large_kernel() -> Result<()> {
    check_conv([1, 1, 11, 10], [2, 1, 5, 4], 3, 2, false)
}

#[test]
fn conv2d_1x1_direct_and_strided() -> Result<()> {
    check_conv([2, 5, 4, 3], [3, 5, 1, 1], 1, 0, false)?;
    check_conv([2, 4, 7, 6], [3, 4, 1, 1], 2, 0, false)
}

#[test]
fn conv2d_relu_values_and_gradients() -> Result<()> {
    check_conv([2, 3, 9, 7], [4, 3, 3, 3], 1, 0, true)?;
    check_conv([1, 2, 12, 9], [3, 2, 3, 3], 2, 1, true)
}

#[test]
fn conv2d_many_images_uses_the_threaded_path() -> Result<()> {
    // Batches larger than the thread count: small outputs are grouped several images per gemm
    // (including a 1x1 kernel, which then goes through im2col instead of the direct path).
    check_conv([5, 2, 8, 6], [3, 2, 3, 3], 1, 1, false)?;
    check_conv([7, 3, 5, 4], [2, 3, 1, 1], 1, 0, false)?;
    check_conv([6, 2, 6, 5], [3, 2, 3, 3], 2, 1, true)
}

#[test]
fn conv2d_one_channel_first_layers_accumulate_directly() -> Result<()> {
    // K = Cin * Kh * Kw <= 16 skips the matrix product (the resnet stem, conv4's first layer):
    // one image and groups of several, stride 1 and 2, with and without ReLU.
    check_conv([1, 1, 9, 8], [5, 1, 3, 3], 1, 1, false)?;
    check_conv([5, 1, 12, 11], [4, 1, 3, 3], 2, 1, true)?;
    check_conv([3, 2, 7, 6], [3, 2, 2, 2], 1, 0, true)
}

#[test]
fn conv2d_blocked_channels_match_the_f64_reference() -> Result<()> {
    // Input channels in 16s and output channels in 32s run the blocked kernels on
    // AVX-512 CPUs (the im2col path elsewhere): 32 and 64 output channels per tile, tiles
    // cut short at an image's end, one image (pixels spread over threads) and many (groups),
    // strides 1 to 3, padding 0 to 2, 1x1 and non-square kernels, with and without ReLU.
    // Values only: the gradients do not go through these kernels.
    let dev = Device::Cpu;
    type Case = ([usize; 4], [usize; 4], usize, usize, bool);
    let cases: [Case; 9] = [
        ([3, 16, 9, 7], [32, 16, 3, 3], 1, 1, false),
        // 3x3 stride 1 padding 1 on planes of 64 pixels or more: Winograd on the blocked
        // layout; odd and even sizes (tiles past the edge), bands of tile rows, one image.
        ([3, 16, 9, 8], [32, 16, 3, 3], 1, 1, false),
        ([2, 32, 11, 13], [64, 32, 3, 3], 1, 1, true),
        ([1, 16, 40, 37], [32, 16, 3, 3], 1, 1, false),
        ([9, 32, 11, 10], [64, 32, 3, 3], 2, 1, true),
        ([1, 16, 8, 7], [32, 16, 1, 1], 2, 0, false),
        ([2, 16, 9, 9], [32, 16, 4, 3], 1, 0, true),
        ([1, 48, 13, 12], [96, 48, 5, 4], 3, 2, false),
        ([4, 16, 7, 6], [64, 16, 3, 3], 1, 1, true),
    ];
    for (i, (xd, wd, stride, padding, relu)) in cases.into_iter().enumerate() {
        let what = format!("x{xd:?} w{wd:?} s{stride} p{padding} relu={relu}");
        let seed = 100 + 10 * i as u64;
        let (xv, wv) = (
            rand_vec(xd.iter().product(), seed),
            rand_vec(wd.iter().product(), seed + 1),
        );
        let bv = rand_vec(wd[0], seed + 2);
        let x = Tensor::from_vec(xv.clone(), &xd[..], &dev)?;
        let w = Tensor::from_vec(wv.clone(), &wd[..], &dev)?;
        let b = Tensor::from_vec(bv.clone(), wd[0], &dev)?;
        let p = Conv2dParams { stride, padding };
        let y = if relu {
            conv2d_relu(&x, &w, Some(&b), p)?
        } else {
            conv2d(&x, &w, Some(&b), p)?
        };
        let (x64, w64, b64) = (to_f64(&xv), to_f64(&wv), to_f64(&bv));
        let (want, yd) = conv_ref(&x64, xd, &w64, wd, &b64, stride, padding, relu);
        assert_eq!(y.dims(), &yd[..], "{what}: output shape");
        check(&format!("{what}: values"), &flat(&y)?, &want, 1e-4, 1e-4);
    }
    Ok(())
}

#[test]
fn conv2d_add_relu_equals_add_relu_of_conv2d() -> Result<()> {
    // Every forward kernel: Winograd (16 channels, a 9x8 plane), blocked (16 channels in, 32
    // out, on AVX-512), im2col on grouped images, stride 2, and the 1-channel direct
    // accumulation. The fused op adds in the same order as
    // the separate ops, so the values are the same bit for bit.
    let dev = Device::Cpu;
    let cases: [([usize; 4], [usize; 4], usize); 5] = [
        ([3, 16, 9, 8], [16, 16, 3, 3], 1),
        ([5, 16, 9, 8], [32, 16, 3, 3], 2),
        ([5, 3, 6, 5], [4, 3, 3, 3], 1),
        ([4, 4, 10, 9], [8, 4, 3, 3], 2),
        ([4, 1, 12, 11], [3, 1, 3, 3], 2),
    ];
    for (i, (xd, wd, stride)) in cases.into_iter().enumerate() {
        let seed = 10 * i as u64;
        let x = Tensor::from_vec(rand_vec(xd.iter().product(), seed), &xd[..], &dev)?;
        let w = Tensor::from_vec(rand_vec(wd.iter().product(), seed + 1), &wd[..], &dev)?;
        let b = Tensor::from_vec(rand_vec(wd[0], seed + 2), wd[0], &dev)?;
        let p = Conv2dParams { stride, padding: 1 };
        let y = conv2d(&x, &w, Some(&b), p)?;
        let res = Tensor::from_vec(rand_vec(y.elem_count(), seed + 3), y.dims(), &dev)?;
        let want = flat(&add_relu(&y, &res)?)?;
        let got = flat(&conv2d_add_relu(&x, &w, Some(&b), &res, p)?)?;
        assert_eq!(got, want, "x{xd:?} w{wd:?} stride {stride}");
        assert!(want.contains(&0.0) && want.iter().any(|v| *v > 0.0));
    }
    // A residual of another shape is refused.
    let x = Tensor::zeros((1, 2, 5, 5), DType::F32, &dev)?;
    let w = Tensor::zeros((3, 2, 3, 3), DType::F32, &dev)?;
    let res = Tensor::zeros((1, 3, 4, 5), DType::F32, &dev)?;
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let err = conv2d_add_relu(&x, &w, None, &res, p)
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("residual"), "{err}");
    Ok(())
}

#[test]
fn conv2d_112x92_stride2_shapes_and_values() -> Result<()> {
    // candle 0.11's own stride-2 backward fails on this shape ("shape mismatch in add").
    let dev = Device::Cpu;
    let (xd, wd) = ([2, 1, 112, 92], [4, 1, 7, 7]);
    let xv = rand_vec(xd.iter().product(), 5);
    let wv = rand_vec(wd.iter().product(), 6);
    let x = Var::from_vec(xv.clone(), &xd[..], &dev)?;
    let w = Var::from_vec(wv.clone(), &wd[..], &dev)?;
    let p = Conv2dParams {
        stride: 2,
        padding: 3,
    };
    let y = conv2d(x.as_tensor(), w.as_tensor(), None, p)?;
    assert_eq!(y.dims(), &[2, 4, 56, 46]);
    let (want, _) = conv_ref(&to_f64(&xv), xd, &to_f64(&wv), wd, &[0.0; 4], 2, 3, false);
    check("112x92 values", &flat(&y)?, &want, 1e-4, 1e-4);
    // A second stride-2 layer on the odd 56x46 -> 28x23 map.
    let w2 = Var::from_vec(rand_vec(8 * 4 * 9, 7), (8, 4, 3, 3), &dev)?;
    let p2 = Conv2dParams {
        stride: 2,
        padding: 1,
    };
    let y2 = conv2d_relu(&y, w2.as_tensor(), None, p2)?;
    assert_eq!(y2.dims(), &[2, 8, 28, 23]);
    let grads = y2.sum_all()?.backward()?;
    assert_eq!(
        grads.get(x.as_tensor()).map(|g| g.dims().to_vec()),
        Some(xd.to_vec())
    );
    assert_eq!(
        grads.get(w.as_tensor()).map(|g| g.dims().to_vec()),
        Some(wd.to_vec())
    );
    assert_eq!(
        grads.get(w2.as_tensor()).map(|g| g.dims().to_vec()),
        Some(vec![8, 4, 3, 3])
    );
    Ok(())
}

#[test]
fn conv2d_matches_candle_builtin_forward() -> Result<()> {
    // One Koch-like layer at reduced size; candle's forward is correct, only slow.
    let x = rand_tensor(&[3, 4, 20, 17], 8)?;
    let w = rand_tensor(&[6, 4, 7, 7], 9)?;
    let ours = conv2d(&x, &w, None, Conv2dParams::default())?;
    let theirs = x.conv2d(&w, 0, 1, 1, 1)?;
    check(
        "vs candle",
        &flat(&ours)?,
        &to_f64(&flat(&theirs)?),
        1e-4,
        1e-4,
    );
    Ok(())
}

#[test]
fn conv2d_untracked_input_gets_no_gradient() -> Result<()> {
    let dev = Device::Cpu;
    let x = rand_tensor(&[2, 1, 9, 9], 10)?; // a plain tensor, like raw images
    let w = Var::from_vec(rand_vec(3 * 9, 11), (3, 1, 3, 3), &dev)?;
    let b = Var::from_vec(rand_vec(3, 12), 3, &dev)?;
    let y = conv2d_relu(
        &x,
        w.as_tensor(),
        Some(b.as_tensor()),
        Conv2dParams::default(),
    )?;
    let grads = y.sum_all()?.backward()?;
    assert!(
        grads.get(&x).is_none(),
        "the raw input must get no gradient"
    );
    assert!(grads.get(w.as_tensor()).is_some());
    assert!(grads.get(b.as_tensor()).is_some());
    Ok(())
}

#[test]
fn conv2d_non_contiguous_input() -> Result<()> {
    let x = rand_tensor(&[2, 3, 7, 9], 13)?;
    let xt = x.transpose(2, 3)?; // [2, 3, 9, 7], strided
    assert!(!xt.is_contiguous());
    let w = rand_tensor(&[4, 3, 3, 3], 14)?;
    let p = Conv2dParams {
        stride: 2,
        padding: 1,
    };
    let a = conv2d(&xt, &w, None, p)?;
    let b = conv2d(&xt.contiguous()?, &w, None, p)?;
    check("non-contiguous", &flat(&a)?, &to_f64(&flat(&b)?), 0.0, 0.0);
    Ok(())
}

#[test]
fn conv2d_rejects_bad_arguments() -> Result<()> {
    let x = rand_tensor(&[1, 3, 8, 8], 15)?;
    let w = rand_tensor(&[4, 2, 3, 3], 16)?;
    let err = conv2d(&x, &w, None, Conv2dParams::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("conv2d") && err.contains("channels"), "{err}");
    let w = rand_tensor(&[4, 3, 3, 3], 16)?;
    let err = conv2d(
        &x.to_dtype(DType::F64)?,
        &w.to_dtype(DType::F64)?,
        None,
        Conv2dParams::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("f32"), "{err}");
    let bad_bias = rand_tensor(&[3], 17)?;
    assert!(conv2d(&x, &w, Some(&bad_bias), Conv2dParams::default()).is_err());
    let err = conv2d(&x.flatten_all()?, &w, None, Conv2dParams::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("rank-4"), "{err}");
    let p = Conv2dParams {
        stride: 0,
        padding: 0,
    };
    assert!(conv2d(&x, &w, None, p).is_err());
    let big = rand_tensor(&[4, 3, 9, 9], 18)?;
    assert!(conv2d(&x, &big, None, Conv2dParams::default()).is_err());
    Ok(())
}

#[test]
fn conv2d_params_default_is_stride1_no_padding() {
    let p = Conv2dParams::default();
    assert_eq!((p.stride, p.padding), (1, 0));
}

// ---------------------------------------------------------------------------------------------
// Max pooling

/// Naive max pool in `f64`; also returns the first-max index of each window (row-major).
fn pool_ref(x: &[f64], xd: [usize; 4], k: usize, s: usize) -> (Vec<f64>, Vec<usize>) {
    let [n, c, h, w] = xd;
    let (ho, wo) = ((h - k) / s + 1, (w - k) / s + 1);
    let mut y = Vec::new();
    let mut arg = Vec::new();
    for plane in 0..n * c {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut best = plane * h * w + oy * s * w + ox * s;
                for ky in 0..k {
                    for kx in 0..k {
                        let i = plane * h * w + (oy * s + ky) * w + ox * s + kx;
                        if x[i] > x[best] {
                            best = i;
                        }
                    }
                }
                y.push(x[best]);
                arg.push(best);
            }
        }
    }
    (y, arg)
}

#[test]
fn max_pool2d_gradient_is_one_at_the_max() -> Result<()> {
    // candle 0.11's built-in backward gives 0.25 here.
    let x = Var::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 2, 2), &Device::Cpu)?;
    let y = max_pool2d(x.as_tensor(), 2, 2)?;
    assert_eq!(flat(&y)?, vec![4.0]);
    let grads = y.sum_all()?.backward()?;
    let g = grads
        .get(x.as_tensor())
        .ok_or_else(|| anyhow::anyhow!("no grad"))?;
    assert_eq!(flat(g)?, vec![0.0, 0.0, 0.0, 1.0]);
    Ok(())
}

#[test]
fn max_pool2d_ties_go_to_the_first_max() -> Result<()> {
    // Row-major window order, as PyTorch: [[5,5],[5,5]] -> (0,0); [[1,5],[5,2]] -> (0,1).
    let x = Var::from_vec(
        vec![5f32, 5., 5., 5., 1., 5., 5., 2.],
        (1, 2, 2, 2),
        &Device::Cpu,
    )?;
    let y = max_pool2d(x.as_tensor(), 2, 2)?;
    let grads = y.sum_all()?.backward()?;
    let g = grads
        .get(x.as_tensor())
        .ok_or_else(|| anyhow::anyhow!("no grad"))?;
    assert_eq!(flat(g)?, vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    Ok(())
}

#[test]
fn max_pool2d_kernel3_stride2_values_and_gradient() -> Result<()> {
    // Overlapping windows on a non-square 9x8 map (floor: 4x3 outputs). The gradient of
    // sum(y * r) puts each r at its window's first max (accumulating where windows share it),
    // checked against central differences of the f64 reference (values are distinct, h small).
    let xd = [2, 3, 9, 8];
    let xv = rand_vec(xd.iter().product(), 20);
    let x = Var::from_vec(xv.clone(), &xd[..], &Device::Cpu)?;
    let y = max_pool2d(x.as_tensor(), 3, 2)?;
    assert_eq!(y.dims(), &[2, 3, 4, 3]);
    let x64 = to_f64(&xv);
    let (want, _) = pool_ref(&x64, xd, 3, 2);
    check("pool k3 s2 values", &flat(&y)?, &want, 0.0, 0.0);
    let r = rand_vec(want.len(), 21);
    let r64 = to_f64(&r);
    let grads = (y * Tensor::from_vec(r, (2, 3, 4, 3), &Device::Cpu)?)?
        .sum_all()?
        .backward()?;
    let g = grads
        .get(x.as_tensor())
        .ok_or_else(|| anyhow::anyhow!("no grad"))?;
    let fd = finite_diff(&x64, 1e-6, |v| dot(&pool_ref(v, xd, 3, 2).0, &r64));
    check("pool k3 s2 gradient", &flat(g)?, &fd, 1e-6, 1e-6);
    Ok(())
}

#[test]
fn max_pool2d_kernel2_stride2_odd_size_floors() -> Result<()> {
    let x = rand_tensor(&[1, 2, 5, 7], 22)?;
    let y = max_pool2d(&x, 2, 2)?;
    assert_eq!(y.dims(), &[1, 2, 2, 3]);
    let (want, _) = pool_ref(&to_f64(&flat(&x)?), [1, 2, 5, 7], 2, 2);
    check("pool odd", &flat(&y)?, &want, 0.0, 0.0);
    assert!(
        max_pool2d(&x, 6, 1).is_err(),
        "kernel larger than the input"
    );
    assert!(max_pool2d(&x, 2, 0).is_err(), "zero stride");
    Ok(())
}

#[test]
fn relu_max_pool2d_equals_composition() -> Result<()> {
    // Includes a window that is entirely negative (output 0, no gradient).
    let mut xv = rand_vec(2 * 3 * 7 * 6, 23);
    for v in &mut xv[..4] {
        *v = -v.abs() - 0.1;
    }
    xv[6] = -0.5;
    xv[7] = -0.7;
    for (k, s) in [(2, 2), (3, 2), (2, 1)] {
        let x = Var::from_vec(xv.clone(), (2, 3, 7, 6), &Device::Cpu)?;
        let r = rand_tensor(&[2, 3, (7 - k) / s + 1, (6 - k) / s + 1], 24)?;
        let fused = relu_max_pool2d(x.as_tensor(), k, s)?;
        let gf = (&fused * &r)?.sum_all()?.backward()?;
        let composed = max_pool2d(&x.as_tensor().relu()?, k, s)?;
        let gc = (&composed * &r)?.sum_all()?.backward()?;
        check(
            "relu-pool values",
            &flat(&fused)?,
            &to_f64(&flat(&composed)?),
            0.0,
            0.0,
        );
        let (a, b) = (gf.get(x.as_tensor()), gc.get(x.as_tensor()));
        let (a, b) = (
            a.ok_or_else(|| anyhow::anyhow!("no grad"))?,
            b.ok_or_else(|| anyhow::anyhow!("no grad"))?,
        );
        check(
            "relu-pool gradient",
            &flat(a)?,
            &to_f64(&flat(b)?),
            0.0,
            0.0,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// BatchNorm

/// Reference training-mode BatchNorm in `f64` on `x` viewed as `[N, C, L]`:
/// `y = (x - mean) / sqrt(var_biased + eps) * gamma + beta`, optional ReLU.
fn bn_ref(
    x: &[f64],
    (n, c, l): (usize, usize, usize),
    g: &[f64],
    b: &[f64],
    eps: f64,
    relu: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let m = (n * l) as f64;
    let mut mean = vec![0f64; c];
    let mut var = vec![0f64; c];
    for ch in 0..c {
        let vals: Vec<f64> = (0..n)
            .flat_map(|i| x[(i * c + ch) * l..(i * c + ch + 1) * l].to_vec())
            .collect();
        mean[ch] = vals.iter().sum::<f64>() / m;
        var[ch] = vals.iter().map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / m;
    }
    let mut y = vec![0f64; x.len()];
    for i in 0..n {
        for ch in 0..c {
            for j in 0..l {
                let k = (i * c + ch) * l + j;
                let v = (x[k] - mean[ch]) / (var[ch] + eps).sqrt() * g[ch] + b[ch];
                y[k] = if relu { v.max(0.0) } else { v };
            }
        }
    }
    (y, mean, var)
}

/// Values, statistics and gradients of batch_norm_train for one shape.
///
/// Statistics: mean and *unbiased* variance `sum (x - mean)^2 / (M - 1)`, `M = N * L`.
/// Gradients of `sum(y * r)`: central differences of `bn_ref` with `h = 1e-4` (smooth except at
/// ReLU kinks); tolerance 2e-3 absolute + 2e-3 relative for float32 reductions.
fn check_bn(xd: &[usize], relu: bool) -> Result<()> {
    let what = format!("batch_norm_train {xd:?} relu={relu}");
    let dev = Device::Cpu;
    let (n, c) = (xd[0], xd[1]);
    let l: usize = xd[2..].iter().product();
    let xv: Vec<f32> = rand_vec(n * c * l, 30)
        .iter()
        .map(|v| 2.0 * v + 0.5)
        .collect();
    let gv: Vec<f32> = rand_vec(c, 31).iter().map(|v| 1.0 + 0.5 * v).collect();
    let bv = rand_vec(c, 32);
    let x = Var::from_vec(xv.clone(), xd, &dev)?;
    let g = Var::from_vec(gv.clone(), c, &dev)?;
    let b = Var::from_vec(bv.clone(), c, &dev)?;
    let eps = 1e-5;
    let out = batch_norm_train(x.as_tensor(), g.as_tensor(), b.as_tensor(), eps, relu)?;
    let (x64, g64, b64) = (to_f64(&xv), to_f64(&gv), to_f64(&bv));
    let (want, mean, var) = bn_ref(&x64, (n, c, l), &g64, &b64, eps, relu);
    assert_eq!(out.y.dims(), xd);
    check(&format!("{what}: y"), &flat(&out.y)?, &want, 1e-4, 1e-4);
    check(
        &format!("{what}: mean"),
        &flat(&out.mean)?,
        &mean,
        1e-5,
        1e-5,
    );
    let m = (n * l) as f64;
    let unbiased: Vec<f64> = var.iter().map(|v| v * m / (m - 1.0)).collect();
    check(
        &format!("{what}: unbiased var"),
        &flat(&out.var)?,
        &unbiased,
        1e-5,
        1e-5,
    );
    assert!(
        !out.mean.track_op() && !out.var.track_op(),
        "statistics are detached"
    );

    let r = rand_vec(want.len(), 33);
    let r64 = to_f64(&r);
    let grads = (out.y * Tensor::from_vec(r, xd, &dev)?)?
        .sum_all()?
        .backward()?;
    let loss =
        |x: &[f64], g: &[f64], b: &[f64]| dot(&bn_ref(x, (n, c, l), g, b, eps, relu).0, &r64);
    let h = 1e-4;
    let gx = finite_diff(&x64, h, |v| loss(v, &g64, &b64));
    let gg = finite_diff(&g64, h, |v| loss(&x64, v, &b64));
    let gb = finite_diff(&b64, h, |v| loss(&x64, &g64, v));
    let get = |v: &Var| -> Result<Vec<f32>> {
        flat(
            grads
                .get(v.as_tensor())
                .ok_or_else(|| anyhow::anyhow!("{what}: missing gradient"))?,
        )
    };
    check(&format!("{what}: dx"), &get(&x)?, &gx, 2e-3, 2e-3);
    check(&format!("{what}: dgamma"), &get(&g)?, &gg, 2e-3, 2e-3);
    check(&format!("{what}: dbeta"), &get(&b)?, &gb, 2e-3, 2e-3);
    Ok(())
}

#[test]
fn batch_norm_train_nchw() -> Result<()> {
    check_bn(&[3, 4, 5, 3], false)
}

#[test]
fn batch_norm_train_nchw_relu() -> Result<()> {
    check_bn(&[2, 3, 4, 5], true)
}

#[test]
fn batch_norm_train_nc() -> Result<()> {
    check_bn(&[6, 5], false)?;
    check_bn(&[7, 3], true)
}

#[test]
fn batch_norm_train_rejects_bad_shapes() -> Result<()> {
    let x = rand_tensor(&[1, 3], 34)?; // one value per channel
    let g = Tensor::ones(3, DType::F32, &Device::Cpu)?;
    let b = Tensor::zeros(3, DType::F32, &Device::Cpu)?;
    let err = batch_norm_train(&x, &g, &b, 1e-5, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch_norm_train"), "{err}");
    let x = rand_tensor(&[4, 2, 3, 3], 35)?;
    assert!(
        batch_norm_train(&x, &g, &b, 1e-5, false).is_err(),
        "3 params for 2 channels"
    );
    let x = rand_tensor(&[4, 3, 3], 36)?;
    assert!(batch_norm_train(&x, &g, &b, 1e-5, false).is_err(), "rank 3");
    Ok(())
}

#[test]
fn batch_norm_eval_matches_formula_and_gradients() -> Result<()> {
    // y = (x - rm) / sqrt(rv + eps) * gamma + beta (then ReLU); its gradient w.r.t. x is
    // gamma / sqrt(rv + eps) times the ReLU mask, w.r.t. beta the mask summed.
    let dev = Device::Cpu;
    let (n, c, l) = (2, 3, 4);
    let xv = rand_vec(n * c * l, 40);
    let gv = [1.5f32, -0.5, 0.8];
    let bv = [0.1f32, -0.2, 0.0];
    let rm = [0.2f32, -0.1, 0.05];
    let rv = [0.5f32, 2.0, 1.0];
    let eps = 1e-3;
    for relu in [false, true] {
        let x = Var::from_vec(xv.clone(), (n, c, 2, 2), &dev)?;
        let g = Var::from_vec(gv.to_vec(), c, &dev)?;
        let b = Var::from_vec(bv.to_vec(), c, &dev)?;
        let y = batch_norm_eval(
            x.as_tensor(),
            g.as_tensor(),
            b.as_tensor(),
            &Tensor::new(&rm, &dev)?,
            &Tensor::new(&rv, &dev)?,
            eps,
            relu,
        )?;
        let mut want = vec![0f64; xv.len()];
        let mut want_dx = vec![0f64; xv.len()];
        let mut want_db = [0f64; 3];
        for i in 0..n {
            for ch in 0..c {
                let s = gv[ch] as f64 / (rv[ch] as f64 + eps).sqrt();
                for j in 0..l {
                    let k = (i * c + ch) * l + j;
                    let v = (xv[k] as f64 - rm[ch] as f64) * s + bv[ch] as f64;
                    let on = !relu || v > 0.0;
                    want[k] = if on { v } else { 0.0 };
                    want_dx[k] = if on { s } else { 0.0 };
                    want_db[ch] += if on { 1.0 } else { 0.0 };
                }
            }
        }
        check("bn eval values", &flat(&y)?, &want, 1e-5, 1e-5);
        let grads = y.sum_all()?.backward()?;
        let dx = grads
            .get(x.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no dx"))?;
        check("bn eval dx", &flat(dx)?, &want_dx, 1e-5, 1e-5);
        let db = grads
            .get(b.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no dbeta"))?;
        check("bn eval dbeta", &flat(db)?, &want_db, 1e-5, 1e-5);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// add_relu and init

#[test]
fn add_relu_values_and_gradients() -> Result<()> {
    let dev = Device::Cpu;
    let av = rand_vec(2 * 3 * 4 * 5, 50);
    let bv = rand_vec(2 * 3 * 4 * 5, 51);
    let a = Var::from_vec(av.clone(), (2, 3, 4, 5), &dev)?;
    let b = Var::from_vec(bv.clone(), (2, 3, 4, 5), &dev)?;
    let y = add_relu(a.as_tensor(), b.as_tensor())?;
    let want: Vec<f64> = av
        .iter()
        .zip(&bv)
        .map(|(&a, &b)| (a as f64 + b as f64).max(0.0))
        .collect();
    check("add_relu values", &flat(&y)?, &want, 1e-6, 0.0);
    let r = rand_tensor(&[2, 3, 4, 5], 52)?;
    let grads = (y * &r)?.sum_all()?.backward()?;
    // d/da relu(a + b) * r = r where a + b > 0, else 0; the same for b.
    let rv = flat(&r)?;
    let want_g: Vec<f64> = want
        .iter()
        .zip(&rv)
        .map(|(&y, &r)| if y > 0.0 { r as f64 } else { 0.0 })
        .collect();
    for (v, name) in [(&a, "a"), (&b, "b")] {
        let g = grads
            .get(v.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no grad for {name}"))?;
        check(&format!("add_relu d{name}"), &flat(g)?, &want_g, 0.0, 0.0);
    }
    assert!(
        add_relu(a.as_tensor(), &r.flatten_all()?).is_err(),
        "shape mismatch"
    );
    Ok(())
}

#[test]
fn kaiming_uniform_bounds_and_determinism() -> Result<()> {
    let dev = Device::Cpu;
    let (w, b) = kaiming_uniform(&[64, 3, 5, 5], 7, &dev)?;
    assert_eq!(w.dims(), &[64, 3, 5, 5]);
    assert_eq!(b.dims(), &[64]);
    // fan_in = 75: bound 1/sqrt(75) for both weight and bias (PyTorch's default init).
    let bound = 1.0 / 75f32.sqrt();
    let wv = flat(&w)?;
    assert!(wv.iter().all(|v| v.abs() <= bound));
    let max = wv.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        max > 0.95 * bound,
        "values spread over the interval: max {max}"
    );
    let mean = wv.iter().sum::<f32>() / wv.len() as f32;
    assert!(mean.abs() < 0.05 * bound, "mean {mean}");
    assert!(flat(&b)?.iter().all(|v| v.abs() <= bound));
    let (w2, _) = kaiming_uniform(&[64, 3, 5, 5], 7, &dev)?;
    assert_eq!(wv, flat(&w2)?, "same seed, same weights");
    let (w3, _) = kaiming_uniform(&[64, 3, 5, 5], 8, &dev)?;
    assert_ne!(wv, flat(&w3)?, "another seed, other weights");
    assert!(kaiming_uniform(&[5], 1, &dev).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Fused conv + BatchNorm + ReLU + max-pool block

/// Values, batch statistics and all four gradients of the fused training block (with ReLU and
/// `pool`'s max-pooling, or without pooling and with or without `relu`) against the unfused
/// composition of the (separately tested) layers, under a random linear loss.
fn check_block(
    xd: [usize; 4],
    cout: usize,
    p: Conv2dParams,
    pool: Option<(usize, usize)>,
    relu: bool,
) -> Result<()> {
    let wd = [cout, xd[1], 3, 3];
    let x = Var::from_tensor(&rand_tensor(&xd, 1)?)?;
    let w = Var::from_tensor(&rand_tensor(&wd, 2)?)?;
    let gamma = Var::from_tensor(&(rand_tensor(&[cout], 3)?.affine(0.5, 1.0))?)?;
    let beta = Var::from_tensor(&rand_tensor(&[cout], 4)?.affine(0.5, 0.0)?)?;
    let conv = conv2d(&x, &w, None, p)?;
    let (fused, bn, plain) = match pool {
        Some((k, s)) => {
            let bn = batch_norm_train(&conv, &gamma, &beta, 1e-5, true)?;
            let plain = max_pool2d(&bn.y, k, s)?;
            let fused = conv_bn_relu_pool_train(&x, &w, &gamma, &beta, p, 1e-5, k, s)?;
            (fused, bn, plain)
        }
        None => {
            let bn = batch_norm_train(&conv, &gamma, &beta, 1e-5, relu)?;
            let fused = conv_bn_train(&x, &w, &gamma, &beta, p, 1e-5, relu)?;
            (fused, bn.clone(), bn.y)
        }
    };
    assert_eq!(fused.y.dims(), plain.dims());
    let want = |t: &Tensor| -> Result<Vec<f64>> { Ok(to_f64(&flat(t)?)) };
    check("block value", &flat(&fused.y)?, &want(&plain)?, 1e-5, 1e-5);
    check(
        "block mean",
        &flat(&fused.mean)?,
        &want(&bn.mean)?,
        1e-6,
        1e-5,
    );
    check("block var", &flat(&fused.var)?, &want(&bn.var)?, 1e-6, 1e-5);
    let vars = [("x", &x), ("w", &w), ("gamma", &gamma), ("beta", &beta)];
    same_gradients("block", &fused.y, &plain, &vars, 1e-3)
}

/// The gradients of every var in `vars` under the same random linear loss of `fused` and of
/// `plain` (the unfused reference) agree within `1e-4 + rtol * |want|`.
fn same_gradients(
    what: &str,
    fused: &Tensor,
    plain: &Tensor,
    vars: &[(&str, &Var)],
    rtol: f64,
) -> Result<()> {
    let proj = rand_tensor(plain.dims(), 5)?;
    let gf = (fused * &proj)?.sum_all()?.backward()?;
    let gp = (plain * &proj)?.sum_all()?.backward()?;
    for (name, v) in vars {
        let (Some(a), Some(b)) = (gf.get(v), gp.get(v)) else {
            anyhow::bail!("{what}: no gradient for {name}");
        };
        check(
            &format!("{what} d{name}"),
            &flat(a)?,
            &to_f64(&flat(b)?),
            1e-4,
            rtol,
        );
    }
    Ok(())
}

#[test]
fn conv_bn_relu_pool_train_equals_composition() -> Result<()> {
    let pad1 = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    // conv4's block on an odd size (the last row and column fall outside every window).
    check_block([3, 2, 7, 9], 4, pad1, Some((2, 2)), true)?;
    // Overlapping windows (several winners can share a position), a strided unpadded conv.
    check_block(
        [2, 3, 11, 10],
        5,
        Conv2dParams {
            stride: 2,
            padding: 0,
        },
        Some((3, 1)),
        true,
    )?;
    // Enough images for the threaded paths.
    check_block([9, 4, 12, 12], 8, pad1, Some((2, 2)), true)
}

/// The tapped block: pooled values, taps (each plane's mean and maximum after the ReLU), batch
/// statistics and all four gradients against the unfused composition, under a random linear
/// loss of the pooled values and the taps together.
fn check_tap_block(xd: [usize; 4], cout: usize, p: Conv2dParams) -> Result<()> {
    let wd = [cout, xd[1], 3, 3];
    let x = Var::from_tensor(&rand_tensor(&xd, 11)?)?;
    let w = Var::from_tensor(&rand_tensor(&wd, 12)?)?;
    let gamma = Var::from_tensor(&(rand_tensor(&[cout], 13)?.affine(0.5, 1.0))?)?;
    let beta = Var::from_tensor(&rand_tensor(&[cout], 14)?.affine(0.5, 0.0)?)?;
    let bn = batch_norm_train(&conv2d(&x, &w, None, p)?, &gamma, &beta, 1e-5, true)?;
    let plain_taps = Tensor::cat(&[bn.y.mean((2, 3))?, bn.y.max(3)?.max(2)?], 1)?;
    let plain = max_pool2d(&bn.y, 2, 2)?;
    let (fused, taps) = conv_bn_relu_pool_tap_train(&x, &w, &gamma, &beta, p, 1e-5, 2, 2)?;
    assert_eq!(fused.y.dims(), plain.dims());
    assert_eq!(taps.dims(), [xd[0], 2 * cout]);
    let want = |t: &Tensor| -> Result<Vec<f64>> { Ok(to_f64(&flat(t)?)) };
    let pairs = [
        ("value", &fused.y, &plain, 1e-5),
        ("taps", &taps, &plain_taps, 1e-5),
        ("mean", &fused.mean, &bn.mean, 1e-6),
        ("var", &fused.var, &bn.var, 1e-6),
    ];
    for (what, got, reference, atol) in pairs {
        let name = format!("tap block {what}");
        check(&name, &flat(got)?, &want(reference)?, atol, 1e-5);
    }
    let both = |y: &Tensor, t: &Tensor| Tensor::cat(&[y.flatten_all()?, t.flatten_all()?], 0);
    let vars = [("x", &x), ("w", &w), ("gamma", &gamma), ("beta", &beta)];
    same_gradients(
        "tap block",
        &both(&fused.y, &taps)?,
        &both(&plain, &plain_taps)?,
        &vars,
        1e-3,
    )
}

#[test]
fn conv_bn_relu_pool_tap_train_equals_composition() -> Result<()> {
    let pad1 = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    // An odd plane: the last row and column are in no pooling window but in both taps.
    check_tap_block([3, 2, 5, 7], 4, pad1)?;
    // conv4's tapped blocks at 40×40 (10×10 and 5×5 planes), enough images for the threads.
    check_tap_block([9, 4, 10, 10], 8, pad1)?;
    check_tap_block([17, 3, 5, 5], 6, pad1)
}

#[test]
fn conv_bn_train_equals_composition() -> Result<()> {
    let pad1 = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    // The residual blocks' convolutions: with ReLU (conv1), without (conv2, the shortcut).
    check_block([3, 2, 7, 9], 4, pad1, None, true)?;
    check_block([3, 2, 7, 9], 4, pad1, None, false)?;
    // A strided, unpadded convolution (as the stage-opening ones).
    check_block(
        [2, 3, 11, 10],
        5,
        Conv2dParams {
            stride: 2,
            padding: 0,
        },
        None,
        false,
    )?;
    // Enough images for the threaded paths.
    check_block([9, 4, 12, 12], 8, pad1, None, true)
}

#[test]
fn conv_bn_relu_pool_train_gamma_gradient_matches_finite_differences() -> Result<()> {
    // An independent check of the fused op alone: d(sum(y * proj)) / d gamma.
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let x = rand_tensor(&[2, 1, 4, 4], 11)?;
    let w = rand_tensor(&[2, 1, 3, 3], 12)?;
    let beta = Tensor::new(&[0.1f32, -0.2], &Device::Cpu)?;
    let g0 = [1.3f64, 0.7];
    let proj = rand_tensor(&[2, 2, 2, 2], 13)?;
    let loss = |g: &[f64]| -> f64 {
        let gamma = Tensor::new(&[g[0] as f32, g[1] as f32], &Device::Cpu).unwrap();
        let y = conv_bn_relu_pool_train(&x, &w, &gamma, &beta, p, 1e-5, 2, 2).unwrap();
        (y.y * &proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let gamma = Var::new(&[g0[0] as f32, g0[1] as f32], &Device::Cpu)?;
    let y = conv_bn_relu_pool_train(&x, &w, &gamma, &beta, p, 1e-5, 2, 2)?;
    let grads = (y.y * &proj)?.sum_all()?.backward()?;
    let Some(dg) = grads.get(&gamma) else {
        anyhow::bail!("no gradient for gamma");
    };
    check(
        "dgamma",
        &flat(dg)?,
        &finite_diff(&g0, 1e-3, loss),
        2e-3,
        1e-2,
    );
    Ok(())
}

/// Eval-mode BatchNorm parameters for `c` channels: gamma near 1, a positive variance.
fn eval_bn_params(c: usize, seed: u64) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    Ok((
        rand_tensor(&[c], seed)?.affine(0.5, 1.0)?,
        rand_tensor(&[c], seed + 1)?,
        rand_tensor(&[c], seed + 2)?,
        rand_tensor(&[c], seed + 3)?.affine(0.4, 1.0)?,
    ))
}

#[test]
fn conv_bn_relu_pool_eval_equals_composition() -> Result<()> {
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let x = rand_tensor(&[3, 2, 8, 6], 21)?;
    let w = rand_tensor(&[4, 2, 3, 3], 22)?;
    let (gamma, beta, mean, var) = eval_bn_params(4, 23)?;
    let fused = conv_bn_relu_pool_eval(&x, &w, &gamma, &beta, &mean, &var, p, 1e-5, 2, 2)?;
    let y = batch_norm_eval(
        &conv2d(&x, &w, None, p)?,
        &gamma,
        &beta,
        &mean,
        &var,
        1e-5,
        true,
    )?;
    let plain = max_pool2d(&y, 2, 2)?;
    check(
        "eval block",
        &flat(&fused)?,
        &to_f64(&flat(&plain)?),
        1e-5,
        1e-4,
    );
    Ok(())
}

#[test]
fn conv_bn_relu_pool_rejects_bad_arguments() -> Result<()> {
    let p = Conv2dParams::default();
    let x = rand_tensor(&[2, 1, 5, 5], 1)?;
    let w = rand_tensor(&[3, 1, 3, 3], 2)?;
    let ok = rand_tensor(&[3], 3)?;
    let bad = rand_tensor(&[2], 3)?;
    let err = conv_bn_relu_pool_train(&x, &w, &bad, &ok, p, 1e-5, 2, 2)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("gamma") && err.contains("[2]"), "{err}");
    // A 3×3 convolution output cannot hold a 4×4 window.
    let err = conv_bn_relu_pool_train(&x, &w, &ok, &ok, p, 1e-5, 4, 1)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("smaller than"), "{err}");
    Ok(())
}

#[test]
fn conv2d_relu_max_pool2d_equals_composition() -> Result<()> {
    for (xd, cout, kk, p, k, s) in [
        (
            [3usize, 2, 9, 8],
            4usize,
            3usize,
            Conv2dParams::default(),
            2usize,
            2usize,
        ),
        (
            [5, 3, 12, 11],
            6,
            4,
            Conv2dParams {
                stride: 1,
                padding: 1,
            },
            3,
            2,
        ),
    ] {
        let x = Var::from_tensor(&rand_tensor(&xd, 31)?)?;
        let w = Var::from_tensor(&rand_tensor(&[cout, xd[1], kk, kk], 32)?)?;
        let b = Var::from_tensor(&rand_tensor(&[cout], 33)?.affine(0.3, 0.0)?)?;
        let fused = conv2d_relu_max_pool2d(&x, &w, &b, p, k, s)?;
        let plain = max_pool2d(&conv2d_relu(&x, &w, Some(&b), p)?, k, s)?;
        check(
            "conv-relu-pool value",
            &flat(&fused)?,
            &to_f64(&flat(&plain)?),
            1e-5,
            1e-5,
        );
        let vars = [("x", &x), ("w", &w), ("bias", &b)];
        same_gradients("conv-relu-pool", &fused, &plain, &vars, 1e-4)?;
    }
    Ok(())
}

#[test]
fn fold_batch_norm_equals_conv_then_batch_norm_eval() -> Result<()> {
    let p = Conv2dParams {
        stride: 2,
        padding: 1,
    };
    let x = rand_tensor(&[2, 3, 9, 7], 41)?;
    let w = rand_tensor(&[5, 3, 3, 3], 42)?;
    let (gamma, beta, mean, var) = eval_bn_params(5, 43)?;
    let (wf, bf) = fold_batch_norm(&w, &gamma, &beta, &mean, &var, 1e-5)?;
    let folded = conv2d(&x, &wf, Some(&bf), p)?;
    let plain = batch_norm_eval(
        &conv2d(&x, &w, None, p)?,
        &gamma,
        &beta,
        &mean,
        &var,
        1e-5,
        false,
    )?;
    check(
        "folded BatchNorm",
        &flat(&folded)?,
        &to_f64(&flat(&plain)?),
        1e-5,
        1e-4,
    );
    let err = fold_batch_norm(&w, &gamma.narrow(0, 0, 4)?, &beta, &mean, &var, 1e-5)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("gamma"), "{err}");
    Ok(())
}
