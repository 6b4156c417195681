//! Criterion benches of `siamese-ops` on the CPU: the convolution layers of the Koch et al.
//! Siamese net (105x105 grey, batch 64) and of a small ResNet for 112x92 grey faces, split into
//! forward, input-gradient and weight-gradient passes; one Koch layer against candle's built-in
//! conv2d; BatchNorm and ReLU+max-pool training passes; the fused conv4 block against its
//! unfused layers; the pairwise distance matrix; and the Chamfer distance of two affine sets.
//!
//! Throughput is reported in elements/s where one element is one floating-point operation
//! (`2 * N * Cout * Cin * KH * KW * Ho * Wo` per pass), so `Gelem/s` reads as GFLOP/s.
//! Run with `CARGO_TARGET_DIR=/work/target-ops cargo bench -p siamese-ops --bench ops [-- FILTER]`.

use std::time::Duration;

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use siamese_ops::nn::{
    batch_norm_train, bf16_supported, conv2d, conv2d_input_grad, conv2d_relu, conv2d_weight_grad,
    conv_bn_relu_pool_train, max_pool2d, relu_max_pool2d, set_blocked, set_matmul_precision,
    set_winograd, Conv2dParams, MatmulPrecision,
};

/// One convolution layer: input shape, weight shape, stride, padding.
struct Layer {
    name: &'static str,
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    padding: usize,
}

impl Layer {
    fn params(&self) -> Conv2dParams {
        Conv2dParams {
            stride: self.stride,
            padding: self.padding,
        }
    }

    fn out_hw(&self) -> (usize, usize) {
        let [_, _, h, w] = self.x;
        let [_, _, kh, kw] = self.w;
        (
            (h + 2 * self.padding - kh) / self.stride + 1,
            (w + 2 * self.padding - kw) / self.stride + 1,
        )
    }

    fn flops(&self) -> u64 {
        let (ho, wo) = self.out_hw();
        let [n, ..] = self.x;
        let [o, c, kh, kw] = self.w;
        (2 * n * o * c * kh * kw * ho * wo) as u64
    }

    fn id(&self) -> String {
        format!(
            "{}/x{:?}/w{:?}/s{}p{}",
            self.name, self.x, self.w, self.stride, self.padding
        )
    }
}

const N: usize = 64;

/// Koch et al. 2015, 105x105 grey input, batch 64 (a training step's worth of images).
const KOCH: [Layer; 4] = [
    Layer {
        name: "koch1",
        x: [N, 1, 105, 105],
        w: [64, 1, 10, 10],
        stride: 1,
        padding: 0,
    },
    Layer {
        name: "koch2",
        x: [N, 64, 48, 48],
        w: [128, 64, 7, 7],
        stride: 1,
        padding: 0,
    },
    Layer {
        name: "koch3",
        x: [N, 128, 21, 21],
        w: [128, 128, 4, 4],
        stride: 1,
        padding: 0,
    },
    Layer {
        name: "koch4",
        x: [N, 128, 9, 9],
        w: [256, 128, 4, 4],
        stride: 1,
        padding: 0,
    },
];

/// The `resnet` encoder on 112x92 grey faces (widths 32, 32, 64, 128, 256): the 3x3/2 stem, each
/// stage's first convolution (stride 2 from stage 2) and 1x1/2 shortcut, and its second 3x3.
const RESNET: [Layer; 9] = [
    Layer {
        name: "res-stem",
        x: [N, 1, 112, 92],
        w: [32, 1, 3, 3],
        stride: 2,
        padding: 1,
    },
    Layer {
        name: "res-b1",
        x: [N, 32, 56, 46],
        w: [32, 32, 3, 3],
        stride: 1,
        padding: 1,
    },
    Layer {
        name: "res-b2-down",
        x: [N, 32, 56, 46],
        w: [64, 32, 3, 3],
        stride: 2,
        padding: 1,
    },
    Layer {
        name: "res-b2-short",
        x: [N, 32, 56, 46],
        w: [64, 32, 1, 1],
        stride: 2,
        padding: 0,
    },
    Layer {
        name: "res-b2",
        x: [N, 64, 28, 23],
        w: [64, 64, 3, 3],
        stride: 1,
        padding: 1,
    },
    Layer {
        name: "res-b3-down",
        x: [N, 64, 28, 23],
        w: [128, 64, 3, 3],
        stride: 2,
        padding: 1,
    },
    Layer {
        name: "res-b3",
        x: [N, 128, 14, 12],
        w: [128, 128, 3, 3],
        stride: 1,
        padding: 1,
    },
    Layer {
        name: "res-b4-down",
        x: [N, 128, 14, 12],
        w: [256, 128, 3, 3],
        stride: 2,
        padding: 1,
    },
    Layer {
        name: "res-b4",
        x: [N, 256, 7, 6],
        w: [256, 256, 3, 3],
        stride: 1,
        padding: 1,
    },
];

/// The Omniglot recipe's conv4 on 40x40 grey characters: 3x3 convolutions, padding 1.
const CONV4: [Layer; 4] = [
    Layer {
        name: "conv4-b1",
        x: [N, 1, 40, 40],
        w: [64, 1, 3, 3],
        stride: 1,
        padding: 1,
    },
    Layer {
        name: "conv4-b2",
        x: [N, 64, 20, 20],
        w: [64, 64, 3, 3],
        stride: 1,
        padding: 1,
    },
    Layer {
        name: "conv4-b3",
        x: [N, 64, 10, 10],
        w: [64, 64, 3, 3],
        stride: 1,
        padding: 1,
    },
    Layer {
        name: "conv4-b4",
        x: [N, 64, 5, 5],
        w: [64, 64, 3, 3],
        stride: 1,
        padding: 1,
    },
];

fn rand_tensor(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let len: usize = shape.iter().product();
    let v: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn short<'a>(
    c: &'a mut Criterion,
    group: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g
}

fn conv_layers(c: &mut Criterion) {
    if let Err(e) = conv_layers_impl(c) {
        panic!("bench setup failed: {e:#}");
    }
}

fn conv_layers_impl(c: &mut Criterion) -> Result<()> {
    // `f32`: the default kernels (Winograd for 3x3 stride-1 padding-1 layers; forward passes on
    // the channel-blocked kernels where the channels come in 16s and 32s on AVX-512, Winograd
    // included); `f32-im2col`: those layers as im2col and one matrix product; `f32-blocked`:
    // the Winograd layers' forward pass as a blocked direct convolution; `f32-planar`: their
    // Winograd forward pass on channel planes (`nn::winograd`); bf16 rows only where the CPU
    // has AMX tiles.
    let mut variants = vec![
        (MatmulPrecision::F32, true, true, "f32"),
        (MatmulPrecision::F32, false, false, "f32-im2col"),
        (MatmulPrecision::F32, false, true, "f32-blocked"),
        (MatmulPrecision::F32, true, false, "f32-planar"),
    ];
    if bf16_supported() {
        variants.push((MatmulPrecision::Bf16, true, true, "bf16"));
    }
    let groups = [
        ("conv-koch", &KOCH[..]),
        ("conv-resnet", &RESNET[..]),
        ("conv-conv4", &CONV4[..]),
    ];
    for (gname, layers) in groups {
        let mut g = short(c, gname);
        for (i, l) in layers.iter().enumerate() {
            let x = rand_tensor(&l.x, 2 * i as u64)?;
            let w = rand_tensor(&l.w, 2 * i as u64 + 1)?;
            let p = l.params();
            let y = conv2d(&x, &w, None, p)?;
            let dy = rand_tensor(y.dims(), 99)?;
            g.throughput(Throughput::Elements(l.flops()));
            let winograd_layer = l.w[2..] == [3, 3] && l.stride == 1 && l.padding == 1;
            // Where the blocked forward kernels can run (AVX-512, channels in 16s and 32s).
            let blocked_layer = l.x[1] % 16 == 0 && l.w[0] % 32 == 0;
            for &(prec, winograd, blocked, pname) in &variants {
                let compare = match (winograd, blocked) {
                    (false, false) => winograd_layer || blocked_layer,
                    (true, true) => true,
                    _ => winograd_layer && blocked_layer,
                };
                if !compare {
                    continue;
                }
                set_matmul_precision(prec)?;
                set_winograd(winograd);
                set_blocked(blocked);
                g.bench_function(BenchmarkId::new(format!("forward/{pname}"), l.id()), |b| {
                    b.iter(|| conv2d(&x, &w, None, p).map(|y| y.dims().len()))
                });
                if winograd != blocked {
                    // Forward-only variants: their gradients are those of `f32` or `f32-im2col`.
                    continue;
                }
                g.bench_function(
                    BenchmarkId::new(format!("input-grad/{pname}"), l.id()),
                    |b| b.iter(|| conv2d_input_grad(&dy, &w, &l.x, p).map(|t| t.dims().len())),
                );
                g.bench_function(
                    BenchmarkId::new(format!("weight-grad/{pname}"), l.id()),
                    |b| b.iter(|| conv2d_weight_grad(&x, &dy, &l.w, p).map(|t| t.dims().len())),
                );
            }
            set_matmul_precision(MatmulPrecision::F32)?;
            set_winograd(true);
            set_blocked(true);
        }
        g.finish();
    }
    Ok(())
}

/// Ours against candle's built-in conv2d on Koch's third layer: forward, and a full training
/// pass (forward + backward for input, weight and bias).
fn conv_vs_candle(c: &mut Criterion) {
    if let Err(e) = conv_vs_candle_impl(c) {
        panic!("bench setup failed: {e:#}");
    }
}

/// A backward pass from the sum of `y`; returns the rank of `v`'s gradient, so the compiler
/// cannot drop the work.
fn backward_to(y: &Tensor, v: &Tensor) -> candle_core::Result<usize> {
    Ok(y.sum_all()?
        .backward()?
        .get(v)
        .map_or(0, |t| t.dims().len()))
}

fn conv_vs_candle_impl(c: &mut Criterion) -> Result<()> {
    let l = &KOCH[2];
    let x = Var::from_tensor(&rand_tensor(&l.x, 1)?)?;
    let w = Var::from_tensor(&rand_tensor(&l.w, 2)?)?;
    let bias = Var::from_tensor(&rand_tensor(&[l.w[0]], 3)?)?;
    let p = l.params();
    let mut g = short(c, "conv-vs-candle");
    g.throughput(Throughput::Elements(l.flops()));
    g.bench_function(BenchmarkId::new("forward/ours", l.id()), |b| {
        b.iter(|| conv2d(&x, &w, Some(&bias), p).map(|y| y.dims().len()))
    });
    g.bench_function(BenchmarkId::new("forward/candle", l.id()), |b| {
        b.iter(|| {
            x.conv2d(&w, 0, 1, 1, 1)
                .and_then(|y| y.broadcast_add(&bias.reshape((1, l.w[0], 1, 1))?))
                .map(|y| y.dims().len())
        })
    });
    // A training pass is forward + input grad + weight grad: three times the forward flops.
    g.throughput(Throughput::Elements(3 * l.flops()));
    g.bench_function(BenchmarkId::new("train/ours", l.id()), |b| {
        b.iter(|| -> candle_core::Result<usize> {
            backward_to(&conv2d_relu(&x, &w, Some(&bias), p)?, &w)
        })
    });
    g.bench_function(BenchmarkId::new("train/candle", l.id()), |b| {
        b.iter(|| -> candle_core::Result<usize> {
            let y = x
                .conv2d(&w, 0, 1, 1, 1)?
                .broadcast_add(&bias.reshape((1, l.w[0], 1, 1))?)?
                .relu()?;
            backward_to(&y, &w)
        })
    });
    g.finish();
    Ok(())
}

/// BatchNorm+ReLU and ReLU+max-pool training passes (forward + backward) on a conv4 layer's
/// output (64 channels of 105x105, batch 64).
fn bn_pool(c: &mut Criterion) {
    if let Err(e) = bn_pool_impl(c) {
        panic!("bench setup failed: {e:#}");
    }
}

fn bn_pool_impl(c: &mut Criterion) -> Result<()> {
    let dims = [N, 64, 105, 105];
    let x = Var::from_tensor(&rand_tensor(&dims, 5)?)?;
    let gamma = Var::from_tensor(&Tensor::ones(64, candle_core::DType::F32, &Device::Cpu)?)?;
    let beta = Var::from_tensor(&Tensor::zeros(64, candle_core::DType::F32, &Device::Cpu)?)?;
    let mut g = short(c, "layers");
    let id = format!("{dims:?}");
    g.throughput(Throughput::Elements(dims.iter().product::<usize>() as u64));
    g.bench_function(
        BenchmarkId::new("batch_norm_train_relu/fwd+bwd/f32", &id),
        |b| {
            b.iter(|| -> candle_core::Result<usize> {
                backward_to(&batch_norm_train(&x, &gamma, &beta, 1e-5, true)?.y, &x)
            })
        },
    );
    g.bench_function(
        BenchmarkId::new("relu_max_pool2d_k2s2/fwd+bwd/f32", &id),
        |b| {
            b.iter(|| -> candle_core::Result<usize> {
                backward_to(&relu_max_pool2d(&x, 2, 2)?, &x)
            })
        },
    );
    g.finish();
    Ok(())
}

/// The conv4 block (3x3 conv, BatchNorm in training mode, ReLU, 2x2 max-pool) of the Omniglot
/// recipe's second layer (batch 256 of 64 x 14 x 14), forward + backward: the fused op against
/// the composition of the separate layers.
fn conv4_block(c: &mut Criterion) {
    if let Err(e) = conv4_block_impl(c) {
        panic!("bench setup failed: {e:#}");
    }
}

fn conv4_block_impl(c: &mut Criterion) -> Result<()> {
    let l = Layer {
        name: "conv4-block2",
        x: [256, 64, 14, 14],
        w: [64, 64, 3, 3],
        stride: 1,
        padding: 1,
    };
    let x = Var::from_tensor(&rand_tensor(&l.x, 11)?)?;
    let w = Var::from_tensor(&rand_tensor(&l.w, 12)?.affine(0.05, 0.0)?)?;
    let gamma = Var::from_tensor(&Tensor::ones(64, candle_core::DType::F32, &Device::Cpu)?)?;
    let beta = Var::from_tensor(&Tensor::zeros(64, candle_core::DType::F32, &Device::Cpu)?)?;
    let p = l.params();
    let mut g = short(c, "block");
    g.throughput(Throughput::Elements(3 * l.flops()));
    g.bench_function(BenchmarkId::new("train/fused", l.id()), |b| {
        b.iter(|| -> candle_core::Result<usize> {
            backward_to(
                &conv_bn_relu_pool_train(&x, &w, &gamma, &beta, p, 1e-5, 2, 2)?.y,
                &w,
            )
        })
    });
    g.bench_function(BenchmarkId::new("train/unfused", l.id()), |b| {
        b.iter(|| -> candle_core::Result<usize> {
            let y = batch_norm_train(&conv2d(&x, &w, None, p)?, &gamma, &beta, 1e-5, true)?.y;
            backward_to(&max_pool2d(&y, 2, 2)?, &w)
        })
    });
    g.finish();
    Ok(())
}

/// The pairwise squared-L2 distance matrix of 4096 x 4096 encodings of 128 numbers, and one
/// Chamfer comparison of two sets of 32 of them.
fn distance(c: &mut Criterion) {
    if let Err(e) = distance_impl(c) {
        panic!("bench setup failed: {e:#}");
    }
}

fn distance_impl(c: &mut Criterion) -> Result<()> {
    let a = rand_tensor(&[4096, 128], 7)?;
    let b = rand_tensor(&[4096, 128], 8)?;
    let mut g = short(c, "distance");
    g.throughput(Throughput::Elements(2 * 4096 * 4096 * 128));
    g.bench_function("pairwise_sq_l2/4096x4096x128", |bch| {
        bch.iter(|| siamese_ops::distance::pairwise_sq_l2(&a, &b).map(|d| d.dims().len()))
    });
    // One comparison of two affine sets, as `verify`, `identify` and the evaluations do per
    // pair with a `--tta affine-set` model: 32 encodings of 128 numbers each, and the Omniglot
    // recipe's 64 encodings of 384 (the linear layer's 128 and two taps).
    for (set, dim) in [(32, 128), (64, 384)] {
        let x: Vec<f32> = rand_tensor(&[set, dim], 9)?.flatten_all()?.to_vec1()?;
        let y: Vec<f32> = rand_tensor(&[set, dim], 10)?.flatten_all()?.to_vec1()?;
        let m = siamese_ops::distance::Matcher {
            distance: siamese_ops::distance::Distance::SquaredL2,
            set,
        };
        g.throughput(Throughput::Elements((3 * set * set * dim) as u64));
        g.bench_function(format!("chamfer_set/{set}x{set}x{dim}"), |bch| {
            bch.iter(|| m.between(std::hint::black_box(&x), std::hint::black_box(&y)))
        });
    }
    g.finish();
    Ok(())
}

/// `criterion_group!` defines an undocumented `pub fn`; keep it in its own module.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(
        benches,
        conv_vs_candle,
        conv_layers,
        bn_pool,
        conv4_block,
        distance
    );
}
criterion_main!(group::benches);
