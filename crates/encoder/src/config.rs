//! The serialisable encoder configuration and the shape arithmetic of each architecture.

use candle_core::{bail, Result};
use serde::{Deserialize, Serialize};

/// Which network maps images to embeddings, with its architecture-specific widths.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Architecture {
    /// Koch et al. 2015: conv 64@10×10, pool, 128@7×7, pool, 128@4×4, pool, 256@4×4, fully
    /// connected. Designed for 105×105 grey images.
    Koch {
        /// Output channels of the four convolutions.
        widths: [usize; 4],
    },
    /// Four blocks of 3×3 conv + BatchNorm + ReLU + 2×2 max-pool, then a linear layer.
    Conv4 {
        /// Channels of every block.
        width: usize,
        /// Number of blocks (4 in the standard network).
        blocks: usize,
        /// Channels of each block, overriding `width` when not empty (one per block).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        widths: Vec<usize>,
    },
    /// A small residual network with BatchNorm: a 3×3 stride-2 stem, one basic block per
    /// stage (stride 2 from the second stage on), global average pooling, a linear layer.
    Resnet {
        /// Channels of the stem and of each stage.
        widths: Vec<usize>,
    },
    /// dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1`), with each
    /// convolution's affine layer folded into its bias and no BatchNorm: a 7×7 stride-2 stem,
    /// 3×3 max-pooling, 14 residual blocks of 32, 64, 128 and 256 channels whose downsampling
    /// blocks add an average-pooled, zero-padded shortcut, global average pooling and a linear
    /// layer without bias. Fixed shape: 3×150×150 RGB in, 128 values out, not normalised, one
    /// member, no taps.
    DlibResnet,
}

impl Architecture {
    /// The short name used on the command line (`koch`, `conv4`, `resnet`, `dlib-resnet`).
    pub fn name(&self) -> &'static str {
        match self {
            Architecture::Koch { .. } => "koch",
            Architecture::Conv4 { .. } => "conv4",
            Architecture::Resnet { .. } => "resnet",
            Architecture::DlibResnet => "dlib-resnet",
        }
    }

    /// Koch et al.'s widths: 64, 128, 128, 256.
    pub fn koch() -> Self {
        Architecture::Koch {
            widths: [64, 128, 128, 256],
        }
    }

    /// Four blocks of 64 channels.
    pub fn conv4() -> Self {
        Architecture::Conv4 {
            width: 64,
            blocks: 4,
            widths: Vec::new(),
        }
    }

    /// The output channels of each conv4 block (`widths`, or `width` repeated); empty for the
    /// other architectures.
    pub fn conv4_widths(&self) -> Vec<usize> {
        match self {
            Architecture::Conv4 {
                width,
                blocks,
                widths,
            } if widths.is_empty() => vec![*width; *blocks],
            Architecture::Conv4 { widths, .. } => widths.clone(),
            _ => Vec::new(),
        }
    }

    /// A 32-channel stem and stages of 32, 64, 128 and 256 channels.
    pub fn resnet() -> Self {
        Architecture::Resnet {
            widths: vec![32, 32, 64, 128, 256],
        }
    }

    /// This architecture with other channel counts: koch takes its four convolutions';
    /// conv4 one per block (as many blocks as widths); resnet the stem's and each stage's.
    /// dlib-resnet's widths are fixed (they are those of dlib's trained model).
    pub fn with_widths(&self, new: &[usize]) -> Result<Self> {
        if new.is_empty() || new.contains(&0) {
            bail!("widths must be positive channel counts, got {new:?}")
        }
        Ok(match self {
            Architecture::Koch { .. } => match <[usize; 4]>::try_from(new) {
                Ok(widths) => Architecture::Koch { widths },
                Err(_) => bail!("koch takes 4 widths (one per convolution), got {new:?}"),
            },
            Architecture::Conv4 { .. } => Architecture::Conv4 {
                width: new[new.len() - 1],
                blocks: new.len(),
                widths: new.to_vec(),
            },
            Architecture::Resnet { .. } => {
                if new.len() < 2 {
                    bail!("resnet takes the stem's width and at least one stage's, got {new:?}")
                }
                Architecture::Resnet {
                    widths: new.to_vec(),
                }
            }
            Architecture::DlibResnet => {
                bail!("dlib-resnet has fixed widths (those of dlib's model), got {new:?}")
            }
        })
    }

    /// The default variant of an architecture named on the command line.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "koch" => Self::koch(),
            "conv4" => Self::conv4(),
            "resnet" => Self::resnet(),
            "dlib-resnet" => Architecture::DlibResnet,
            other => bail!(
                "unknown architecture `{other}` (expected koch, conv4, resnet or dlib-resnet)"
            ),
        })
    }
}

/// An intermediate feature map read out at inference and appended to the encoding: one conv4
/// block's output (after its ReLU, before its pooling), average- and max-pooled over the plane,
/// the two vectors concatenated and scaled to length `√weight`.
///
/// Taps add no parameters. By default they add no training signal either (the loss sees the
/// linear layer's output alone); with [`EncoderConfig::train_taps`] the loss sees the tapped
/// encoding. Either way they add the generic stroke and part detectors of the middle layers,
/// which transfer to classes never seen in training, to what a comparison looks at. With unit-length encodings
/// the squared distance between two tapped encodings is the linear layer's squared distance
/// plus `weight` times each tap's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tap {
    /// The conv4 block read, counting from 1.
    pub block: usize,
    /// The tap's weight in the squared distance (> 0).
    pub weight: f32,
}

impl Tap {
    /// Parses `BLOCK:WEIGHT`, e.g. `3:2`.
    pub fn parse(s: &str) -> Result<Self> {
        let parsed = s.split_once(':').and_then(|(b, w)| {
            Some(Tap {
                block: b.trim().parse().ok()?,
                weight: w.trim().parse().ok()?,
            })
        });
        match parsed {
            Some(t) if t.block > 0 && t.weight.is_finite() && t.weight > 0.0 => Ok(t),
            _ => bail!("a tap is BLOCK:WEIGHT with a block counted from 1 and a weight > 0, e.g. `3:2`; got `{s}`"),
        }
    }
}

/// Everything needed to build an encoder: architecture, input shape, embedding size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// The network.
    pub arch: Architecture,
    /// Image channels: 1 (grey) or 3 (RGB).
    pub in_channels: usize,
    /// Input height in pixels.
    pub height: usize,
    /// Input width in pixels.
    pub width: usize,
    /// Length of the embedding `f(x)` (128 by default).
    pub embedding_dim: usize,
    /// Whether `f(x)` is divided by its L2 norm.
    pub l2_normalize: bool,
    /// Independently initialised copies of the network (an ensemble in one encoder): each
    /// gives its share of the embedding ([`EncoderConfig::member_dims`]), L2-normalised on its
    /// own when `l2_normalize`, and `f(x)` is their concatenation, scaled by `1/√members` so
    /// that it has unit length. The squared distance is then the mean of the members'. 1 (the
    /// default, and what older model files read as) is one network.
    #[serde(default = "one_member")]
    pub members: usize,
    /// The `[height, width]` each member sees, one per member: the input, area-resampled to
    /// that size before the member's network (members at different scales disagree more, so
    /// their mean is better than either). Empty (the default): every member sees the input.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_sizes: Vec<[usize; 2]>,
    /// Intermediate features appended to the encoding at inference ([`Tap`]; conv4 with one
    /// member only). Empty (the default, and what older model files read as): the encoding is
    /// the linear layer's output alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taps: Vec<Tap>,
    /// Whether training mode reads the taps too, so that the loss sees the whole encoding
    /// (`output_dim` values, compared as at inference) and the tapped blocks learn to serve
    /// the comparison. False (the default, and what older model files read as): training sees
    /// the linear layer's output alone. Without taps it changes nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub train_taps: bool,
}

/// The largest input side an encoder config may ask for, in pixels.
pub const MAX_INPUT_SIDE: usize = 4096;
/// The longest embedding an encoder config may ask for.
pub const MAX_EMBEDDING_DIM: usize = 65_536;
/// The most channels of one layer.
pub const MAX_WIDTH: usize = 8192;
/// The most ensemble members.
pub const MAX_MEMBERS: usize = 64;
/// The most conv4 blocks or resnet stages.
pub const MAX_DEPTH: usize = 64;

fn one_member() -> usize {
    1
}

impl EncoderConfig {
    /// A config for a named architecture with the default widths and a 128-d embedding.
    pub fn new(arch: &str, in_channels: usize, height: usize, width: usize) -> Result<Self> {
        let cfg = Self {
            arch: Architecture::from_name(arch)?,
            in_channels,
            height,
            width,
            embedding_dim: 128,
            l2_normalize: false,
            members: 1,
            member_sizes: Vec::new(),
            taps: Vec::new(),
            train_taps: false,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A config for `arch` with a 128-d embedding, not yet validated (see
    /// [`EncoderConfig::validate`]).
    pub fn for_arch(arch: Architecture, in_channels: usize, height: usize, width: usize) -> Self {
        Self {
            arch,
            in_channels,
            height,
            width,
            embedding_dim: 128,
            l2_normalize: false,
            members: 1,
            member_sizes: Vec::new(),
            taps: Vec::new(),
            train_taps: false,
        }
    }

    /// The input size `(height, width)` member `i` sees: its entry of `member_sizes`, or the
    /// encoder's input.
    pub fn member_size(&self, i: usize) -> (usize, usize) {
        match self.member_sizes.get(i) {
            Some(&[h, w]) => (h, w),
            None => (self.height, self.width),
        }
    }

    /// The config of member `i` as a network of its own: its input size, one member, its
    /// share of the embedding.
    pub fn member_config(&self, i: usize) -> Self {
        let (height, width) = self.member_size(i);
        Self {
            height,
            width,
            embedding_dim: self
                .member_dims()
                .get(i)
                .copied()
                .unwrap_or(self.embedding_dim),
            members: 1,
            member_sizes: Vec::new(),
            ..self.clone()
        }
    }

    /// Length of an encoding at inference: `embedding_dim` plus each tap's values (twice its
    /// block's channels). Training sees the first `embedding_dim` alone, unless `train_taps`.
    pub fn output_dim(&self) -> usize {
        self.embedding_dim + self.tap_dims().iter().sum::<usize>()
    }

    /// Values each tap adds to the encoding, in order: twice its block's channels (the average
    /// and the maximum of each).
    pub fn tap_dims(&self) -> Vec<usize> {
        let widths = self.arch.conv4_widths();
        self.taps
            .iter()
            .map(|t| 2 * widths.get(t.block.wrapping_sub(1)).copied().unwrap_or(0))
            .collect()
    }

    /// How many of the embedding's values each member gives: `embedding_dim / members`, the
    /// first `embedding_dim % members` members one more, in order.
    pub fn member_dims(&self) -> Vec<usize> {
        let k = self.members.max(1);
        let (q, r) = (self.embedding_dim / k, self.embedding_dim % k);
        (0..k).map(|i| q + usize::from(i < r)).collect()
    }

    /// What each member's share of the concatenated encoding is multiplied by: `1/√members`
    /// when the encoder normalises (so the whole has unit length), else 1.
    pub fn member_scale(&self) -> f64 {
        if self.l2_normalize {
            1.0 / (self.members.max(1) as f64).sqrt()
        } else {
            1.0
        }
    }

    /// Checks that the input is large enough for every layer, that sizes are non-zero, and
    /// that every size is within its limit ([`MAX_INPUT_SIDE`], [`MAX_EMBEDDING_DIM`],
    /// [`MAX_WIDTH`], [`MAX_MEMBERS`], [`MAX_DEPTH`]), so a config read from a file can never
    /// ask for an absurd allocation.
    pub fn validate(&self) -> Result<()> {
        if self.height > MAX_INPUT_SIDE || self.width > MAX_INPUT_SIDE {
            bail!(
                "encoder config: input {}×{} is over the limit of {MAX_INPUT_SIDE} pixels a side",
                self.height,
                self.width
            )
        }
        if self.embedding_dim > MAX_EMBEDDING_DIM {
            bail!(
                "encoder config: embedding_dim {} is over the limit of {MAX_EMBEDDING_DIM}",
                self.embedding_dim
            )
        }
        if self.members > MAX_MEMBERS {
            bail!(
                "encoder config: {} members is over the limit of {MAX_MEMBERS}",
                self.members
            )
        }
        let widths: Vec<usize> = match &self.arch {
            Architecture::Koch { widths } => widths.to_vec(),
            Architecture::Conv4 { width, widths, .. } => {
                widths.iter().copied().chain([*width]).collect()
            }
            Architecture::Resnet { widths } => widths.clone(),
            Architecture::DlibResnet => Vec::new(),
        };
        if let Some(w) = widths.iter().find(|&&w| w > MAX_WIDTH) {
            bail!("encoder config: width {w} is over the limit of {MAX_WIDTH} channels")
        }
        let depth = match &self.arch {
            Architecture::Conv4 { blocks, widths, .. } => (*blocks).max(widths.len()),
            Architecture::Resnet { widths } => widths.len(),
            _ => 0,
        };
        if depth > MAX_DEPTH {
            bail!("encoder config: {depth} blocks is over the limit of {MAX_DEPTH}")
        }
        if self.in_channels != 1 && self.in_channels != 3 {
            bail!(
                "encoder config: in_channels must be 1 or 3, got {}",
                self.in_channels
            )
        }
        if self.embedding_dim == 0 {
            bail!("encoder config: embedding_dim must be positive")
        }
        if self.members == 0 || self.members > self.embedding_dim {
            bail!(
                "encoder config: members must be between 1 and embedding_dim ({}), got {}",
                self.embedding_dim,
                self.members
            )
        }
        if !self.member_sizes.is_empty() {
            if self.member_sizes.len() != self.members {
                bail!(
                    "encoder config: {} member sizes for {} members",
                    self.member_sizes.len(),
                    self.members
                )
            }
            for i in 0..self.members {
                let m = self.member_config(i);
                if m.height == 0 || m.width == 0 {
                    bail!("encoder config: member {i} has an empty input size")
                }
                m.validate()?;
            }
        }
        match &self.arch {
            Architecture::Koch { widths } => {
                if widths.contains(&0) {
                    bail!("encoder config: koch widths must be positive, got {widths:?}")
                }
            }
            Architecture::Conv4 {
                width,
                blocks,
                widths,
            } => {
                if *width == 0 || *blocks == 0 || widths.contains(&0) {
                    bail!("encoder config: conv4 needs positive width and blocks")
                }
                if !widths.is_empty() && widths.len() != *blocks {
                    bail!(
                        "encoder config: conv4 has {blocks} blocks but {} widths ({widths:?})",
                        widths.len()
                    )
                }
            }
            Architecture::Resnet { widths } => {
                if widths.len() < 2 || widths.contains(&0) {
                    bail!("encoder config: resnet needs a stem and at least one stage of positive width, got {widths:?}")
                }
            }
            Architecture::DlibResnet => self.validate_dlib_resnet()?,
        }
        if !self.taps.is_empty() {
            let blocks = self.arch.conv4_widths().len();
            if blocks == 0 || self.members != 1 {
                bail!(
                    "encoder config: taps read conv4 blocks of a single network, not {} with {} members",
                    self.arch.name(),
                    self.members
                )
            }
            for t in &self.taps {
                if !((1..=blocks).contains(&t.block) && t.weight.is_finite() && t.weight > 0.0) {
                    bail!(
                        "encoder config: a tap needs a block between 1 and {blocks} and a weight > 0, got block {} weight {}",
                        t.block,
                        t.weight
                    )
                }
            }
        }
        let (c, h, w) = self.feature_shape()?;
        if c * h * w == 0 {
            bail!(
                "encoder config: input {}×{} is too small for {}",
                self.height,
                self.width,
                self.arch.name()
            )
        }
        Ok(())
    }

    /// dlib-resnet's fixed settings: dlib's model takes exactly 3×150×150 and gives 128 values,
    /// unnormalised, from one network.
    fn validate_dlib_resnet(&self) -> Result<()> {
        let d = crate::dlib_resnet::INPUT_SIDE;
        if self.in_channels != 3 {
            bail!(
                "encoder config: dlib-resnet takes RGB input (in_channels 3), got in_channels {}",
                self.in_channels
            )
        }
        if (self.height, self.width) != (d, d) {
            bail!(
                "encoder config: dlib-resnet takes {d}×{d} input, got {}×{}",
                self.height,
                self.width
            )
        }
        let dim = crate::dlib_resnet::EMBEDDING_DIM;
        if self.embedding_dim != dim {
            bail!(
                "encoder config: dlib-resnet gives {dim} values (embedding_dim {dim}), got embedding_dim {}",
                self.embedding_dim
            )
        }
        if self.l2_normalize {
            bail!("encoder config: dlib-resnet's output is not L2-normalised (l2_normalize must be false)")
        }
        if self.members != 1 || !self.member_sizes.is_empty() {
            bail!(
                "encoder config: dlib-resnet is one network (members 1, no member_sizes), got {} members",
                self.members
            )
        }
        if !self.taps.is_empty() || self.train_taps {
            bail!("encoder config: dlib-resnet has no taps (taps are for conv4)")
        }
        Ok(())
    }

    /// Shape `(channels, height, width)` of the last feature map, before the linear layer.
    pub fn feature_shape(&self) -> Result<(usize, usize, usize)> {
        let conv = |n: usize, k: usize, s: usize, p: usize, what: &str| -> Result<usize> {
            if n + 2 * p < k {
                bail!(
                    "encoder config: input {}×{} is too small for {} ({what})",
                    self.height,
                    self.width,
                    self.arch.name()
                )
            }
            Ok((n + 2 * p - k) / s + 1)
        };
        let (mut h, mut w) = (self.height, self.width);
        match &self.arch {
            Architecture::Koch { widths } => {
                let kernels = [10, 7, 4, 4];
                for (i, k) in kernels.iter().enumerate() {
                    h = conv(h, *k, 1, 0, "convolution")?;
                    w = conv(w, *k, 1, 0, "convolution")?;
                    if i < 3 {
                        h = conv(h, 2, 2, 0, "pooling")?;
                        w = conv(w, 2, 2, 0, "pooling")?;
                    }
                }
                Ok((widths[3], h, w))
            }
            Architecture::Conv4 { blocks, .. } => {
                for _ in 0..*blocks {
                    h = conv(h, 2, 2, 0, "pooling")?;
                    w = conv(w, 2, 2, 0, "pooling")?;
                }
                let widths = self.arch.conv4_widths();
                Ok((widths.last().copied().unwrap_or(0), h, w))
            }
            Architecture::Resnet { widths } => {
                h = conv(h, 3, 2, 1, "stem")?;
                w = conv(w, 3, 2, 1, "stem")?;
                for i in 1..widths.len() {
                    if i > 1 {
                        h = conv(h, 3, 2, 1, "stage")?;
                        w = conv(w, 3, 2, 1, "stage")?;
                    }
                }
                // Global average pooling.
                Ok((widths[widths.len() - 1], 1, 1))
            }
            // Global average pooling of the last stage (fixed input size, checked by
            // `validate`).
            Architecture::DlibResnet => Ok((crate::dlib_resnet::FEATURES, 1, 1)),
        }
    }
}
