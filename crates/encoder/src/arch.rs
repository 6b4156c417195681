//! The three architectures (`koch`, `conv4`, `resnet`) and the [`Encoder`] that wraps them.

use crate::config::{Architecture, EncoderConfig};
use crate::layers::{BatchNorm, Conv, Linear};
use crate::params::Params;
use candle_core::{bail, Device, ModuleT, Result, Tensor};
use siamese_ops::nn;
use siamese_ops::resample::AreaResize;

/// Koch et al. 2015: four valid convolutions with ReLU, max-pooling after the first three.
#[derive(Debug)]
struct Koch {
    convs: Vec<Conv>,
    fc: Linear,
}

impl Koch {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            x = if i + 1 < self.convs.len() {
                conv.forward_relu_pool(&x)?
            } else {
                conv.forward_relu(&x)?
            };
        }
        self.fc.forward(&x.flatten_from(1)?)
    }
}

/// Blocks of 3×3 conv + BatchNorm + ReLU + 2×2 max-pool, then a linear layer.
#[derive(Debug)]
struct Conv4 {
    blocks: Vec<(Conv, BatchNorm)>,
    fc: Linear,
}

impl Conv4 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for (conv, bn) in &self.blocks {
            x = bn.conv_relu_pool_t(conv, &x, train)?;
        }
        self.fc.forward(&x.flatten_from(1)?)
    }
}

/// A basic residual block: two 3×3 convs with BatchNorm, a projection shortcut when the shape
/// changes, ReLU after the sum.
#[derive(Debug)]
struct Block {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    shortcut: Option<(Conv, BatchNorm)>,
}

impl Block {
    fn new(p: &mut Params, name: &str, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        let conv1 = Conv::new(p, &format!("{name}.conv1"), cin, cout, 3, stride, 1, false)?;
        let bn1 = BatchNorm::new(p, &format!("{name}.bn1"), cout)?;
        let conv2 = Conv::new(p, &format!("{name}.conv2"), cout, cout, 3, 1, 1, false)?;
        let bn2 = BatchNorm::new(p, &format!("{name}.bn2"), cout)?;
        let shortcut = if stride != 1 || cin != cout {
            let conv = Conv::new(
                p,
                &format!("{name}.down.conv"),
                cin,
                cout,
                1,
                stride,
                0,
                false,
            )?;
            let bn = BatchNorm::new(p, &format!("{name}.down.bn"), cout)?;
            Some((conv, bn))
        } else {
            None
        };
        Ok(Self {
            conv1,
            bn1,
            conv2,
            bn2,
            shortcut,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.conv_t(&self.conv1, x, train, true)?;
        let y = self.bn2.conv_t(&self.conv2, &y, train, false)?;
        let s = match &self.shortcut {
            Some((conv, bn)) => bn.conv_t(conv, x, train, false)?,
            None => x.clone(),
        };
        nn::add_relu(&y, &s)
    }
}

/// A small ResNet: stride-2 stem, one basic block per stage, global average pooling.
#[derive(Debug)]
struct Resnet {
    stem: Conv,
    stem_bn: BatchNorm,
    blocks: Vec<Block>,
    fc: Linear,
}

impl Resnet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.stem_bn.conv_t(&self.stem, x, train, true)?;
        for block in &self.blocks {
            x = block.forward_t(&x, train)?;
        }
        self.fc.forward(&x.mean((2, 3))?)
    }
}

#[derive(Debug)]
enum Net {
    Koch(Koch),
    Conv4(Conv4),
    Resnet(Resnet),
}

/// One member network of `config`, its parameter names prefixed with `prefix`, giving `dim`
/// values.
fn build_net(p: &mut Params, config: &EncoderConfig, prefix: &str, dim: usize) -> Result<Net> {
    let (fc_c, fc_h, fc_w) = config.feature_shape()?;
    let cin = config.in_channels;
    Ok(match &config.arch {
        Architecture::Koch { widths } => {
            let kernels = [10, 7, 4, 4];
            let mut convs = Vec::new();
            let mut c = cin;
            for (i, (&k, &w)) in kernels.iter().zip(widths.iter()).enumerate() {
                let name = format!("{prefix}conv{}", i + 1);
                convs.push(Conv::new(p, &name, c, w, k, 1, 0, true)?);
                c = w;
            }
            let fc = Linear::new(p, &format!("{prefix}fc"), fc_c * fc_h * fc_w, dim)?;
            Net::Koch(Koch { convs, fc })
        }
        Architecture::Conv4 { .. } => {
            let mut out = Vec::new();
            let mut c = cin;
            for (i, width) in config.arch.conv4_widths().into_iter().enumerate() {
                let name = format!("{prefix}block{}", i + 1);
                let conv = Conv::new(p, &format!("{name}.conv"), c, width, 3, 1, 1, false)?;
                let bn = BatchNorm::new(p, &format!("{name}.bn"), width)?;
                out.push((conv, bn));
                c = width;
            }
            let fc = Linear::new(p, &format!("{prefix}fc"), fc_c * fc_h * fc_w, dim)?;
            Net::Conv4(Conv4 { blocks: out, fc })
        }
        Architecture::Resnet { widths } => {
            let stem = Conv::new(
                p,
                &format!("{prefix}stem.conv"),
                cin,
                widths[0],
                3,
                2,
                1,
                false,
            )?;
            let stem_bn = BatchNorm::new(p, &format!("{prefix}stem.bn"), widths[0])?;
            let mut blocks = Vec::new();
            for i in 1..widths.len() {
                let stride = if i == 1 { 1 } else { 2 };
                let name = format!("{prefix}block{i}");
                blocks.push(Block::new(p, &name, widths[i - 1], widths[i], stride)?);
            }
            let fc = Linear::new(p, &format!("{prefix}fc"), fc_c, dim)?;
            Net::Resnet(Resnet {
                stem,
                stem_bn,
                blocks,
                fc,
            })
        }
    })
}

/// The encoder `f`: an image batch `[N, C, H, W]` to embeddings `[N, D]`.
///
/// One `Encoder` is one set of parameters; a Siamese pair model calls the same `Encoder` for
/// both images.
#[derive(Debug)]
pub struct Encoder {
    config: EncoderConfig,
    params: Params,
    /// The members, in order (one for a plain network), each with the resampling of the
    /// input to its own size when that differs.
    nets: Vec<(Net, Option<AreaResize>)>,
}

impl Encoder {
    /// Builds the network of `config` with freshly initialised parameters (deterministic from
    /// `seed`).
    pub fn new(config: &EncoderConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut p = Params::new(device, seed);
        // Member 0 keeps the plain parameter names, so a one-member encoder is the network
        // itself; member i > 0 prefixes its names with `m{i}.`.
        let nets = config
            .member_dims()
            .into_iter()
            .enumerate()
            .map(|(i, dim)| {
                let prefix = if i == 0 {
                    String::new()
                } else {
                    format!("m{i}.")
                };
                let own = config.member_config(i);
                let resize = if (own.height, own.width) == (config.height, config.width) {
                    None
                } else {
                    Some(AreaResize::new(
                        (config.height, config.width),
                        (own.height, own.width),
                        device,
                    )?)
                };
                Ok((build_net(&mut p, &own, &prefix, dim)?, resize))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            params: p,
            nets,
        })
    }

    /// The config this encoder was built from.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Its named parameters and buffers.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Embeddings in evaluation mode (running BatchNorm statistics, no graph needed).
    ///
    /// # Shapes
    /// `xs`: `[N, C, H, W]` f32 → `[N, embedding_dim]`.
    pub fn embed(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_t(&xs.detach(), false).map(|t| t.detach())
    }

    /// Member `i`'s own encoding, as if it were the whole encoder: unit length when the
    /// encoder normalises, not scaled by [`EncoderConfig::member_scale`]. Members are
    /// independent networks, so each can run (and train) on its own thread.
    ///
    /// # Shapes
    /// `xs`: `[N, C, H, W]` f32 → `[N, member_dims[i]]`.
    pub fn member_forward_t(&self, i: usize, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(xs)?;
        if i >= self.nets.len() {
            bail!("encoder: no member {i} (it has {})", self.nets.len())
        }
        self.member_forward_unchecked(i, xs, train)
    }

    fn member_forward_unchecked(&self, i: usize, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (net, resize) = &self.nets[i];
        let resized;
        let xs = match resize {
            Some(r) => {
                resized = r.apply(xs)?;
                &resized
            }
            None => xs,
        };
        let y = match net {
            Net::Koch(n) => n.forward(xs)?,
            Net::Conv4(n) => n.forward_t(xs, train)?,
            Net::Resnet(n) => n.forward_t(xs, train)?,
        };
        if self.config.l2_normalize {
            siamese_ops::distance::l2_normalize(&y, 1e-12)
        } else {
            Ok(y)
        }
    }

    fn check_input(&self, xs: &Tensor) -> Result<()> {
        let c = &self.config;
        match xs.dims() {
            [_, ch, h, w] if *ch == c.in_channels && *h == c.height && *w == c.width => Ok(()),
            dims => bail!(
                "encoder: expected input [N, {}, {}, {}], got {dims:?}",
                c.in_channels,
                c.height,
                c.width
            ),
        }
    }
}

impl ModuleT for Encoder {
    /// # Shapes
    /// `xs`: `[N, C, H, W]` f32 → `[N, embedding_dim]`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(xs)?;
        let mut ys = (0..self.nets.len())
            .map(|i| self.member_forward_unchecked(i, xs, train))
            .collect::<Result<Vec<_>>>()?;
        if ys.len() == 1 {
            return Ok(ys.remove(0));
        }
        Tensor::cat(&ys, 1)? * self.config.member_scale()
    }
}
