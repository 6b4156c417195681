//! The architectures (`koch`, `conv4`, `resnet`, and `dlib-resnet` in `dlib_resnet.rs`) and the
//! [`Encoder`] that wraps them.

use crate::config::{Architecture, EncoderConfig, Tap};
use crate::dlib_resnet::DlibResnet;
use crate::layers::{BatchNorm, Conv, Linear};
use crate::params::Params;
use candle_core::{bail, Device, ModuleT, Result, Tensor};
use siamese_ops::nn;
use siamese_ops::resample::AreaResize;
use std::collections::HashMap;

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

/// Blocks of 3×3 conv + BatchNorm + ReLU + 2×2 max-pool, then a linear layer; in eval mode
/// also the features of the tapped blocks.
#[derive(Debug)]
struct Conv4 {
    blocks: Vec<(Conv, BatchNorm)>,
    fc: Linear,
}

impl Conv4 {
    /// The linear layer's output and each of `taps`' features in order.
    fn forward_t(&self, x: &Tensor, train: bool, taps: &[Tap]) -> Result<(Tensor, Vec<Tensor>)> {
        // Each tapped block's output averaged and max-pooled over the plane, `[N, 2C]`.
        let mut pooled: Vec<Option<Tensor>> = vec![None; self.blocks.len()];
        let mut x = x.clone();
        for (i, (conv, bn)) in self.blocks.iter().enumerate() {
            x = if taps.iter().any(|t| t.block == i + 1) {
                let (y, features) = bn.conv_relu_pool_tap_t(conv, &x, train)?;
                pooled[i] = Some(features);
                y
            } else {
                bn.conv_relu_pool_t(conv, &x, train)?
            };
        }
        let read = taps
            .iter()
            .map(|t| match pooled.get(t.block.wrapping_sub(1)) {
                Some(Some(p)) => tap_part(p, t),
                _ => bail!("conv4: tap of block {} past the last block", t.block),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((self.fc.forward(&x.flatten_from(1)?)?, read))
    }
}

/// A tap's part of the encoding: `features` `[N, 2C]` scaled to length `√weight`.
fn tap_part(features: &Tensor, tap: &Tap) -> Result<Tensor> {
    siamese_ops::distance::l2_normalize(features, 1e-12)? * f64::from(tap.weight).sqrt()
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
        let s = match &self.shortcut {
            Some((conv, bn)) => bn.conv_t(conv, x, train, false)?,
            None => x.clone(),
        };
        if !train {
            // One pass: the second convolution adds the shortcut and clamps as it writes.
            return self.bn2.conv_add_relu_eval(&self.conv2, &y, &s);
        }
        let y = self.bn2.conv_t(&self.conv2, &y, train, false)?;
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
    DlibResnet(DlibResnet),
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
        Architecture::DlibResnet => Net::DlibResnet(DlibResnet::new(p, prefix, cin, dim)?),
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

    /// Builds the network of `config` with the given parameters and buffers, by name (module
    /// paths, as [`Params`] names them): weights converted from another framework, say.
    ///
    /// Fails, naming the tensor, when one is missing, has the wrong shape or dtype, or is not
    /// a tensor of this encoder.
    pub fn from_tensors(
        config: &EncoderConfig,
        mut tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let encoder = Self::new(config, 0, device)?;
        encoder.set_tensors(&mut tensors, "encoder tensors")?;
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        if let Some(name) = names.first() {
            bail!(
                "encoder tensors: unexpected tensor `{name}` for a {} encoder",
                config.arch.name()
            )
        }
        Ok(encoder)
    }

    /// Sets every parameter and buffer from the tensor of its name, removing it from
    /// `tensors`; errors start with `what`.
    pub(crate) fn set_tensors(
        &self,
        tensors: &mut HashMap<String, Tensor>,
        what: &str,
    ) -> Result<()> {
        for (name, var) in self.params.all() {
            let Some(t) = tensors.remove(name) else {
                bail!("{what}: tensor `{name}` is missing")
            };
            if t.dims() != var.dims() {
                bail!(
                    "{what}: tensor `{name}` has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                )
            }
            if t.dtype() != var.dtype() {
                bail!(
                    "{what}: tensor `{name}` has dtype {:?}, expected {:?}",
                    t.dtype(),
                    var.dtype()
                )
            }
            var.set(&t.to_device(self.params.device())?)?;
        }
        Ok(())
    }

    /// The config this encoder was built from.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Its named parameters and buffers.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Replaces the taps read at inference ([`EncoderConfig::taps`]). They have no
    /// parameters, so any trained conv4 network can be read at other blocks.
    pub fn set_taps(&mut self, taps: Vec<Tap>) -> Result<()> {
        let config = EncoderConfig {
            taps,
            ..self.config.clone()
        };
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Encodings in evaluation mode (running BatchNorm statistics, no graph needed), taps
    /// included.
    ///
    /// # Shapes
    /// `xs`: `[N, C, H, W]` f32 → `[N, output_dim]` ([`EncoderConfig::output_dim`]).
    pub fn embed(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_t(&xs.detach(), false).map(|t| t.detach())
    }

    /// Member `i`'s own encoding, as if it were the whole encoder: unit length when the
    /// encoder normalises, not scaled by [`EncoderConfig::member_scale`]. Members are
    /// independent networks, so each can run (and train) on its own thread.
    ///
    /// # Shapes
    /// `xs`: `[N, C, H, W]` f32 → `[N, member_dims[i]]` (plus the taps in eval mode).
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
        let (y, taps) = match net {
            Net::Koch(n) => (n.forward(xs)?, Vec::new()),
            Net::Conv4(n) => {
                // Taps are read at inference, and in training with `train_taps`.
                let c = &self.config;
                let taps = if train && !c.train_taps {
                    &[]
                } else {
                    &c.taps[..]
                };
                n.forward_t(xs, train, taps)?
            }
            Net::Resnet(n) => (n.forward_t(xs, train)?, Vec::new()),
            Net::DlibResnet(n) => (n.forward_t(xs, train)?, Vec::new()),
        };
        let y = if self.config.l2_normalize {
            siamese_ops::distance::l2_normalize(&y, 1e-12)?
        } else {
            y
        };
        if taps.is_empty() {
            return Ok(y);
        }
        Tensor::cat(&[&[y][..], &taps].concat(), 1)
    }

    /// Scales each part of encodings `[N, output_dim]` (a mean of several, say) back to the
    /// lengths the encoder gives them: the whole (or, with taps, the linear layer's part) to
    /// unit length when the encoder normalises, each tap to `√weight`.
    pub fn renormalize(&self, y: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        if c.taps.is_empty() {
            return if c.l2_normalize {
                siamese_ops::distance::l2_normalize(y, 1e-12)
            } else {
                Ok(y.clone())
            };
        }
        let mut parts = Vec::with_capacity(1 + c.taps.len());
        let head = y.narrow(1, 0, c.embedding_dim)?;
        parts.push(if c.l2_normalize {
            siamese_ops::distance::l2_normalize(&head, 1e-12)?
        } else {
            head
        });
        let mut at = c.embedding_dim;
        for (t, len) in c.taps.iter().zip(c.tap_dims()) {
            parts.push(tap_part(&y.narrow(1, at, len)?, t)?);
            at += len;
        }
        Tensor::cat(&parts, 1)
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
    /// `xs`: `[N, C, H, W]` f32 → `[N, embedding_dim]` when training (`[N, output_dim]` with
    /// [`EncoderConfig::train_taps`]), `[N, output_dim]` (taps included) in eval mode.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of `n` random grey `side`×`side` images (the tests compare two computations on
    /// the same batch, so any values do).
    fn batch(n: usize, side: usize) -> Result<Tensor> {
        Tensor::rand(0f32, 1f32, (n, 1, side, side), &Device::Cpu)
    }

    /// Each tap is its block's output (computed here through the unfused BatchNorm and pooled
    /// by hand) averaged and maxed over the plane, unit length, times √weight; the head is the
    /// untapped encoder's output; training sees the head alone.
    #[test]
    fn taps_read_the_blocks_pooled_by_hand() -> Result<()> {
        let mut cfg = EncoderConfig::for_arch(Architecture::conv4(), 1, 28, 28);
        cfg.l2_normalize = true;
        cfg.taps = vec![
            Tap {
                block: 3,
                weight: 2.0,
            },
            Tap {
                block: 1,
                weight: 0.5,
            },
        ];
        let mut enc = Encoder::new(&cfg, 4, &Device::Cpu)?;
        assert_eq!(cfg.output_dim(), 128 + 128 + 128);
        // Training steps move the running statistics away from (0, 1).
        for _ in 0..3 {
            assert_eq!(enc.forward_t(&batch(8, 28)?, true)?.dims(), &[8, 128]);
        }
        let x = batch(3, 28)?;
        let got: Vec<Vec<f32>> = enc.embed(&x)?.to_vec2()?;
        assert_eq!(got[0].len(), 384);

        let Net::Conv4(net) = &enc.nets[0].0 else {
            panic!("conv4 expected")
        };
        let mut outputs = Vec::new();
        let mut h = x.clone();
        for (conv, bn) in &net.blocks {
            let z = bn.forward_t(&conv.forward(&h)?, false, true)?;
            h = nn::max_pool2d(&z, 2, 2)?;
            outputs.push(z);
        }
        for (t, start) in cfg.taps.iter().zip([128, 256]) {
            let z: Vec<Vec<Vec<f32>>> = outputs[t.block - 1].flatten_from(2)?.to_vec3()?;
            for (image, row) in z.iter().zip(&got) {
                let mut want: Vec<f32> = image
                    .iter()
                    .map(|plane| plane.iter().sum::<f32>() / plane.len() as f32)
                    .collect();
                want.extend(
                    image
                        .iter()
                        .map(|plane| plane.iter().copied().fold(f32::MIN, f32::max)),
                );
                let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
                for (i, w) in want.iter().enumerate() {
                    let w = w / norm * t.weight.sqrt();
                    let g = row[start + i];
                    assert!((g - w).abs() < 1e-4, "tap {t:?} value {i}: {g} vs {w}");
                }
            }
        }

        enc.set_taps(Vec::new())?;
        let head: Vec<Vec<f32>> = enc.embed(&x)?.to_vec2()?;
        for (h, g) in head.iter().zip(&got) {
            assert_eq!(h.len(), 128);
            for (a, b) in h.iter().zip(g) {
                assert!((a - b).abs() < 1e-5, "head {a} vs {b}");
            }
        }
        Ok(())
    }

    /// With `train_taps`, training mode gives the whole tapped encoding: the head as without,
    /// each tap of length √weight; a loss on a tap alone reaches exactly the blocks up to the
    /// tapped one (not the later blocks, not the linear layer).
    #[test]
    fn trained_taps_send_the_loss_to_their_blocks() -> Result<()> {
        let mut cfg = EncoderConfig::for_arch(Architecture::conv4(), 1, 28, 28);
        cfg.l2_normalize = true;
        cfg.taps = vec![Tap {
            block: 2,
            weight: 2.0,
        }];
        cfg.train_taps = true;
        let trained = Encoder::new(&cfg, 5, &Device::Cpu)?;
        cfg.train_taps = false;
        let plain = Encoder::new(&cfg, 5, &Device::Cpu)?;
        let x = batch(6, 28)?;
        let y = trained.forward_t(&x, true)?;
        assert_eq!(y.dims(), &[6, 256]);
        let head: Vec<Vec<f32>> = plain.forward_t(&x, true)?.to_vec2()?;
        let rows: Vec<Vec<f32>> = y.to_vec2()?;
        for (h, r) in head.iter().zip(&rows) {
            for (a, b) in h.iter().zip(r) {
                assert!((a - b).abs() < 1e-5, "head {a} vs {b}");
            }
            let len = r[128..].iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((len - 2f32.sqrt()).abs() < 1e-5, "tap length {len}");
        }
        let proj = Tensor::rand(-1f32, 1f32, (6, 128), &Device::Cpu)?;
        let grads = (y.narrow(1, 128, 128)? * proj)?.sum_all()?.backward()?;
        for (name, var) in trained.params().trainable() {
            let reached = match grads.get(var) {
                Some(g) => g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
                None => false,
            };
            let upstream = name.starts_with("block1.") || name.starts_with("block2.");
            assert_eq!(reached, upstream, "gradient of {name}");
        }
        Ok(())
    }

    /// `renormalize` gives a mean of encodings the lengths the encoder gives each part.
    #[test]
    fn renormalize_restores_each_parts_length() -> Result<()> {
        let mut cfg = EncoderConfig::for_arch(Architecture::conv4(), 1, 28, 28);
        cfg.l2_normalize = true;
        cfg.taps = vec![Tap {
            block: 4,
            weight: 3.0,
        }];
        let enc = Encoder::new(&cfg, 1, &Device::Cpu)?;
        let y = enc.embed(&batch(4, 28)?)?;
        let mean = y.reshape((2, 2, 256))?.mean(1)?;
        let r: Vec<Vec<f32>> = enc.renormalize(&mean)?.to_vec2()?;
        for row in &r {
            let len = |s: &[f32]| s.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((len(&row[..128]) - 1.0).abs() < 1e-5);
            assert!((len(&row[128..]) - 3f32.sqrt()).abs() < 1e-5);
        }
        Ok(())
    }
}
