//! dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1`) as an encoder
//! architecture, with each convolution's affine layer folded into its bias.
//!
//! From the input: a 7×7 stride-2 convolution (no padding) with ReLU, 3×3 stride-2
//! max-pooling, then five levels of residual blocks, global average pooling and a linear layer
//! without bias. A plain block is `relu(x + conv2(relu(conv1(x))))` with 3×3 stride-1 padding-1
//! convolutions. A downsampling block (the first of levels 3 to 0) has a 3×3 stride-2
//! convolution *without* padding as `conv1` and adds the 2×2 stride-2 average pool of `x`,
//! the two summed top-left aligned with missing values read as zero (dlib's `add_prev` of
//! tensors of different shapes): the shortcut's channels are zero-padded to the block's, and
//! where the branch is smaller than the pooled shortcut (levels 1 and 0: 3×3 against 4×4,
//! 1×1 against 2×2) the branch is zero-padded on the right and bottom.
//!
//! Parameter names follow module paths: `stem.{weight,bias}`,
//! `level{4,3,2,1,0}.{i}.conv{1,2}.{weight,bias}` and `fc.weight` (`[128, 256]`, PyTorch's
//! `Linear` layout).

use crate::layers::{Conv, Linear};
use crate::params::Params;
use candle_core::{Result, Tensor};
use siamese_ops::nn;

/// The side of the square input image.
pub(crate) const INPUT_SIDE: usize = 150;
/// Length of the output.
pub(crate) const EMBEDDING_DIM: usize = 128;
/// Channels of the last feature map (the linear layer's inputs).
pub(crate) const FEATURES: usize = 256;
/// Channels of the stem.
const STEM_WIDTH: usize = 32;

/// The levels in forward order: name, channels, whether the first block downsamples, blocks.
const LEVELS: [(&str, usize, bool, usize); 5] = [
    ("level4", 32, false, 3),
    ("level3", 64, true, 4),
    ("level2", 128, true, 3),
    ("level1", 256, true, 3),
    ("level0", FEATURES, true, 1),
];

/// One residual block: two 3×3 convolutions with biases, the first with stride 2 and no
/// padding in a downsampling block.
#[derive(Debug)]
struct DlibBlock {
    conv1: Conv,
    conv2: Conv,
    down: bool,
}

impl DlibBlock {
    fn new(p: &mut Params, name: &str, cin: usize, cout: usize, down: bool) -> Result<Self> {
        let (stride, padding) = if down { (2, 0) } else { (1, 1) };
        let conv1 = Conv::new(
            p,
            &format!("{name}.conv1"),
            cin,
            cout,
            3,
            stride,
            padding,
            true,
        )?;
        let conv2 = Conv::new(p, &format!("{name}.conv2"), cout, cout, 3, 1, 1, true)?;
        Ok(Self { conv1, conv2, down })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.conv1.forward_relu(x)?;
        if !self.down {
            return if train {
                nn::add_relu(&self.conv2.forward(&y)?, x)
            } else {
                self.conv2.forward_add_relu(&y, x)
            };
        }
        let s = avg_pool_2x2(x)?;
        // conv2 (stride 1, padding 1) keeps y's plane; its output has conv2's channels.
        let (_, _, h, w) = y.dims4()?;
        let cout = self.conv2.out_channels()?;
        let (_, cs, hs, ws) = s.dims4()?;
        let target = (cout.max(cs), h.max(hs), w.max(ws));
        let s = pad_to(&s, target)?;
        if !train && (cout, h, w) == target {
            // The residual has the output's shape: one fused pass.
            return self.conv2.forward_add_relu(&y, &s);
        }
        nn::add_relu(&pad_to(&self.conv2.forward(&y)?, target)?, &s)
    }
}

/// 2×2 stride-2 average pooling, floor mode: the last row and column of an odd plane are
/// dropped first, so that candle's backward pass (nearest upsampling of the gradient) is exact.
fn avg_pool_2x2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    x.narrow(2, 0, h / 2 * 2)?
        .narrow(3, 0, w / 2 * 2)?
        .avg_pool2d(2)
}

/// `x` `[N, C, H, W]` zero-padded on the right of the channels, the bottom and the right to
/// `(C', H', W')` (each at least as large as `x`'s).
fn pad_to(x: &Tensor, (c, h, w): (usize, usize, usize)) -> Result<Tensor> {
    let (_, xc, xh, xw) = x.dims4()?;
    x.pad_with_zeros(1, 0, c.saturating_sub(xc))?
        .pad_with_zeros(2, 0, h.saturating_sub(xh))?
        .pad_with_zeros(3, 0, w.saturating_sub(xw))
}

/// The whole network.
#[derive(Debug)]
pub(crate) struct DlibResnet {
    stem: Conv,
    blocks: Vec<DlibBlock>,
    fc: Linear,
}

impl DlibResnet {
    /// Freshly initialised parameters, named under `prefix`, for `cin` input channels.
    pub(crate) fn new(p: &mut Params, prefix: &str, cin: usize, dim: usize) -> Result<Self> {
        let stem = Conv::new(p, &format!("{prefix}stem"), cin, STEM_WIDTH, 7, 2, 0, true)?;
        let mut blocks = Vec::new();
        let mut c = STEM_WIDTH;
        for (level, width, down, n) in LEVELS {
            for i in 0..n {
                let name = format!("{prefix}{level}.{i}");
                blocks.push(DlibBlock::new(p, &name, c, width, down && i == 0)?);
                c = width;
            }
        }
        let fc = Linear::without_bias(p, &format!("{prefix}fc"), c, dim)?;
        Ok(Self { stem, blocks, fc })
    }

    /// # Shapes
    /// `x`: `[N, 3, 150, 150]` → `[N, 128]`.
    pub(crate) fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = nn::max_pool2d(&self.stem.forward_relu(x)?, 3, 2)?;
        for block in &self.blocks {
            x = block.forward_t(&x, train)?;
        }
        self.fc.forward(&x.mean((2, 3))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Architecture, Encoder, EncoderConfig};
    use candle_core::{Device, ModuleT};

    fn config() -> EncoderConfig {
        EncoderConfig::for_arch(Architecture::DlibResnet, 3, INPUT_SIDE, INPUT_SIDE)
    }

    /// A fresh network gives `[N, 128]` in both modes (the same values: there is no
    /// BatchNorm, only the fused and unfused residual paths differ), and one backward pass
    /// reaches every parameter with finite, non-zero gradients.
    #[test]
    fn trains_and_gives_128_values() -> Result<()> {
        let cfg = config();
        cfg.validate()?;
        let enc = Encoder::new(&cfg, 7, &Device::Cpu)?;
        assert_eq!(enc.params().trainable().len(), 2 * 29 + 1);
        assert!(enc.params().buffers().is_empty());
        let x = Tensor::rand(
            -0.5f32,
            0.5f32,
            (2, 3, INPUT_SIDE, INPUT_SIDE),
            &Device::Cpu,
        )?;
        let y = enc.forward_t(&x, true)?;
        assert_eq!(y.dims(), &[2, EMBEDDING_DIM]);
        let eval: Vec<Vec<f32>> = enc.embed(&x)?.to_vec2()?;
        let train: Vec<Vec<f32>> = y.to_vec2()?;
        for (a, b) in eval.iter().flatten().zip(train.iter().flatten()) {
            assert!(
                a.is_finite() && (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                "{a} vs {b}"
            );
        }
        let proj = Tensor::rand(-1f32, 1f32, (2, EMBEDDING_DIM), &Device::Cpu)?;
        let grads = (y * proj)?.sum_all()?.backward()?;
        for (name, var) in enc.params().trainable() {
            let Some(g) = grads.get(var) else {
                panic!("no gradient for {name}")
            };
            assert_eq!(g.dims(), var.dims(), "{name}");
            let v: Vec<f32> = g.flatten_all()?.to_vec1()?;
            assert!(
                v.iter().all(|x| x.is_finite()),
                "{name}: non-finite gradient"
            );
            assert!(v.iter().any(|x| *x != 0.0), "{name}: zero gradient");
        }
        Ok(())
    }

    /// The 2×2 average pool of an odd plane drops the last row and column, in value and
    /// gradient (candle's own backward pass of an odd plane spreads the gradient wrongly).
    #[test]
    fn average_pool_of_an_odd_plane_has_the_exact_gradient() -> Result<()> {
        let x = candle_core::Var::from_tensor(
            &Tensor::arange(0f32, 25f32, &Device::Cpu)?.reshape((1, 1, 5, 5))?,
        )?;
        let y = avg_pool_2x2(x.as_tensor())?;
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            vec![3.0, 5.0, 13.0, 15.0]
        );
        let g = y.sum_all()?.backward()?;
        let g: Vec<f32> = g
            .get(&x)
            .map(|g| g.flatten_all())
            .transpose()?
            .map_or(Ok(Vec::new()), |g| g.to_vec1())?;
        let want: Vec<f32> = (0..25)
            .map(|i| if i / 5 < 4 && i % 5 < 4 { 0.25 } else { 0.0 })
            .collect();
        assert_eq!(g, want);
        Ok(())
    }

    /// Zero padding sums top-left aligned, as dlib's `add_prev` of different shapes.
    #[test]
    fn padding_is_right_and_bottom() -> Result<()> {
        let x = Tensor::ones((1, 1, 1, 1), candle_core::DType::F32, &Device::Cpu)?;
        let p = pad_to(&x, (2, 2, 2))?;
        assert_eq!(p.dims(), &[1, 2, 2, 2]);
        assert_eq!(
            p.flatten_all()?.to_vec1::<f32>()?,
            vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
        Ok(())
    }

    /// dlib-resnet's settings are fixed; anything else is a clear error. The serde name and
    /// the command-line name are `dlib-resnet`.
    #[test]
    fn config_is_fixed_and_named() -> Result<()> {
        let cfg = EncoderConfig::new("dlib-resnet", 3, 150, 150)?;
        assert_eq!(cfg.arch, Architecture::DlibResnet);
        assert_eq!(cfg.feature_shape()?, (256, 1, 1));
        let json = serde_json::to_string(&cfg.arch).map_err(candle_core::Error::wrap)?;
        assert_eq!(json, r#"{"name":"dlib-resnet"}"#);
        type Change = fn(&mut EncoderConfig);
        let bad: [(&str, Change); 7] = [
            ("in_channels", |c| c.in_channels = 1),
            ("150×150", |c| c.height = 112),
            ("embedding_dim", |c| c.embedding_dim = 64),
            ("L2-normalised", |c| c.l2_normalize = true),
            ("members", |c| c.members = 2),
            ("taps", |c| {
                c.taps = vec![crate::Tap {
                    block: 1,
                    weight: 1.0,
                }]
            }),
            ("taps", |c| c.train_taps = true),
        ];
        for (what, change) in bad {
            let mut c = cfg.clone();
            change(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.contains("dlib-resnet") && err.contains(what),
                "{what}: {err}"
            );
        }
        assert!(Architecture::DlibResnet.with_widths(&[8, 8]).is_err());
        Ok(())
    }
}
