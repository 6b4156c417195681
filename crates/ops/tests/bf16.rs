//! Tests for `MatmulPrecision::Bf16`: every convolution kernel (forward, input gradient, weight
//! gradient) on AMX tiles against the f32 kernels run on the same operands rounded to bf16, so
//! the only difference left is the order of the f32 accumulation. One test function, because
//! the precision is a process-wide setting and tests in one binary run in parallel.

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use siamese_ops::nn::{
    bf16_supported, conv2d, conv2d_input_grad, conv2d_relu, conv2d_weight_grad, matmul_precision,
    set_matmul_precision, Conv2dParams, MatmulPrecision,
};

fn rand_tensor(shape: &[usize], rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let len: usize = shape.iter().product();
    let v: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// `t` with every value rounded to the nearest bf16 (ties to even), still as f32.
fn round_bf16(t: &Tensor) -> Result<Tensor> {
    let v: Vec<f32> = t
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|x| {
            let b = x.to_bits();
            f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000)
        })
        .collect();
    Ok(Tensor::from_vec(v, t.dims(), &Device::Cpu)?)
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Asserts `got` matches `want` to f32 accumulation error for sums of `terms` products of
/// values below 1 in magnitude.
fn close(got: &Tensor, want: &Tensor, terms: usize, what: &str) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let tol = 2e-6 * terms as f32;
    for (i, (g, w)) in values(got)?.iter().zip(values(want)?).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: {g} against {w} (tol {tol})"
        );
    }
    Ok(())
}

#[test]
fn every_convolution_kernel_in_bf16_matches_f32_on_rounded_operands() -> Result<()> {
    if !bf16_supported() {
        eprintln!("skipped: this machine has no AMX bf16 tiles");
        assert!(set_matmul_precision(MatmulPrecision::Bf16).is_err());
        assert_eq!(matmul_precision(), MatmulPrecision::F32);
        return Ok(());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // (input, weight, stride, padding): banded 3x3 (conv4 on 40x40, second block), small
    // outputs grouped over images (5x5), one image alone (gemm threads instead of images),
    // strided with padding (a resnet down-sampling block), and a 1x1 convolution read
    // directly as its own column matrix. Every product has K, M and N of at least 64, so all
    // run on the tiles.
    let cases: [([usize; 4], [usize; 4], usize, usize); 5] = [
        ([3, 64, 20, 20], [64, 64, 3, 3], 1, 1),
        ([8, 64, 5, 5], [64, 64, 3, 3], 1, 1),
        ([1, 64, 10, 10], [64, 64, 3, 3], 1, 1),
        ([2, 32, 28, 23], [64, 32, 3, 3], 2, 1),
        ([2, 96, 9, 8], [64, 96, 1, 1], 1, 0),
    ];
    for (xs, ws, stride, padding) in cases {
        let p = Conv2dParams { stride, padding };
        let what = format!("x {xs:?} w {ws:?} {p:?}");
        let x = rand_tensor(&xs, &mut rng)?;
        let w = rand_tensor(&ws, &mut rng)?;
        let b = rand_tensor(&[ws[0]], &mut rng)?;
        let y_dims = conv2d(&x, &w, None, p)?.dims().to_vec();
        let dy = rand_tensor(&y_dims, &mut rng)?;
        let (xr, wr, dyr) = (round_bf16(&x)?, round_bf16(&w)?, round_bf16(&dy)?);

        set_matmul_precision(MatmulPrecision::F32)?;
        let y_f32 = conv2d(&x, &w, Some(&b), p)?;
        let want_y = conv2d_relu(&xr, &wr, Some(&b), p)?;
        let want_dx = conv2d_input_grad(&dyr, &wr, &xs, p)?;
        let want_dw = conv2d_weight_grad(&xr, &dyr, &ws, p)?;

        set_matmul_precision(MatmulPrecision::Bf16)?;
        assert_eq!(matmul_precision(), MatmulPrecision::Bf16);
        let k = ws[1] * ws[2] * ws[3];
        let n_pix = y_dims[0] * y_dims[2] * y_dims[3];
        close(
            &conv2d_relu(&x, &w, Some(&b), p)?,
            &want_y,
            k,
            &format!("forward {what}"),
        )?;
        close(
            &conv2d_input_grad(&dy, &w, &xs, p)?,
            &want_dx,
            k,
            &format!("input grad {what}"),
        )?;
        close(
            &conv2d_weight_grad(&x, &dy, &ws, p)?,
            &want_dw,
            n_pix,
            &format!("weight grad {what}"),
        )?;
        // The rounding is real: bf16 results differ from f32 on unrounded operands.
        let y_bf16 = conv2d(&x, &w, Some(&b), p)?;
        assert!(
            values(&y_bf16)? != values(&y_f32)?,
            "{what}: bf16 gave the f32 result"
        );

        // Back to f32: exactly the f32 kernels again.
        set_matmul_precision(MatmulPrecision::F32)?;
        assert_eq!(
            values(&conv2d(&x, &w, Some(&b), p)?)?,
            values(&y_f32)?,
            "{what}"
        );
    }
    Ok(())
}
