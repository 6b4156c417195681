//! dlib's face encoder (`dlib_face_recognition_resnet_model_v1.dat`): a 150×150 RGB face chip
//! to 128 floats, whose Euclidean distances tell people apart (same person within
//! [`FaceEncoder::threshold`], 0.6).
//!
//! What it owns:
//! - [`FaceEncoder::from_dlib`]: reading dlib's file, checking every layer against the network
//!   dlib's `dnn_face_recognition_ex.cpp` defines (kind, shapes, strides, paddings, and where
//!   the tags and skips sit), folding each convolution's affine layer into its weights and
//!   bias, and building a `siamese-encoder` [`Encoder`] of architecture
//!   [`Architecture::DlibResnet`] from the result.
//! - The input dlib's `input_rgb_image_sized<150>` makes of a chip ([`FaceEncoder::input_tensor`]:
//!   `(pixel - mean[c]) / 256`, planar RGB) and the descriptors ([`FaceEncoder::embed`], dlib's
//!   `net(chips, 16)`: unnormalised, batches of 16).
//! - The project's own format: [`FaceEncoder::to_safetensors`] / [`FaceEncoder::from_safetensors`]
//!   (`siamese_encoder::io` with the mean and the threshold in the metadata).
//!
//! Descriptors match dlib's to about 1e-6 (f32 rounding: the affine layers are folded, and the
//! convolutions run on `siamese_ops::nn`'s kernels).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use siamese_encoder::{io, Architecture, Encoder, EncoderConfig};

use crate::dlib::net::{read_network, Layer, Node};
use crate::dlib::Reader;
use crate::error::{FaceError, Result};
use crate::image::RgbImage;

/// The side of the square chips the encoder reads (dlib's `input_rgb_image_sized<150>`).
pub const CHIP_SIZE: usize = 150;

/// Length of a descriptor.
pub const DESCRIPTOR_LEN: usize = 128;

/// One face descriptor.
pub type Descriptor = [f32; DESCRIPTOR_LEN];

/// Chips per forward pass in [`FaceEncoder::embed`] (dlib's `net(chips, 16)`).
pub const BATCH: usize = 16;

/// The metadata key of the per-channel mean in [`FaceEncoder::to_safetensors`]'s bytes: the
/// red, green and blue means as three decimal numbers separated by commas (each prints and
/// parses back to the same `f32`).
pub const MEAN_RGB_KEY: &str = "siamese.face.mean_rgb";

/// The metadata key of the distance threshold in [`FaceEncoder::to_safetensors`]'s bytes: one
/// decimal number.
pub const THRESHOLD_KEY: &str = "siamese.face.threshold";

/// The divisor dlib applies after subtracting the mean.
const INPUT_SCALE: f32 = 256.0;

/// dlib's face encoder on `siamese-encoder`'s [`Encoder`], with the input normalisation and the
/// distance threshold stored in the model.
#[derive(Debug)]
pub struct FaceEncoder {
    encoder: Encoder,
    mean_rgb: [f32; 3],
    threshold: f32,
}

/// One expected entry of the layer stream, in forward order.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// A tag or skip layer.
    TagOrSkip,
    /// A convolution `out x inp x k x k` with a bias, then folded with the next affine layer
    /// into the encoder's tensors `{name}.weight` and `{name}.bias`.
    Con {
        name: String,
        out: usize,
        inp: usize,
        k: usize,
        stride: usize,
        padding: usize,
    },
    /// An affine layer over `channels`.
    Affine {
        channels: usize,
    },
    Relu,
    /// `max_pool<3,3,2,2>`.
    MaxPool,
    /// `avg_pool<2,2,2,2>`.
    AvgPool,
    /// `avg_pool_everything`.
    AvgPoolAll,
    AddPrev,
    /// `fc_no_bias<128>` over 256 inputs.
    Fc,
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::TagOrSkip => write!(f, "a tag or skip layer"),
            Expect::Con {
                out,
                inp,
                k,
                stride,
                padding,
                ..
            } => write!(
                f,
                "con {out}x{inp}x{k}x{k} stride {stride} padding {padding}"
            ),
            Expect::Affine { channels } => write!(f, "affine over {channels} channels"),
            Expect::Relu => write!(f, "relu"),
            Expect::MaxPool => write!(f, "max_pool 3x3 stride 2 padding 0"),
            Expect::AvgPool => write!(f, "avg_pool 2x2 stride 2 padding 0"),
            Expect::AvgPoolAll => write!(f, "avg_pool over the whole plane"),
            Expect::AddPrev => write!(f, "add_prev"),
            Expect::Fc => write!(
                f,
                "fc {FC_INPUTS} inputs x {DESCRIPTOR_LEN} outputs without bias"
            ),
        }
    }
}

/// Inputs of the final fully connected layer.
const FC_INPUTS: usize = 256;

/// dlib's network in forward order (`dnn_face_recognition_ex.cpp`), with the encoder's names
/// for the convolutions.
fn architecture() -> Vec<Expect> {
    // Levels in forward order: name, channels, whether the first block downsamples, blocks.
    const LEVELS: [(&str, usize, bool, usize); 5] = [
        ("level4", 32, false, 3),
        ("level3", 64, true, 4),
        ("level2", 128, true, 3),
        ("level1", 256, true, 3),
        ("level0", FC_INPUTS, true, 1),
    ];
    let con = |name: String, out, inp, k, stride, padding| Expect::Con {
        name,
        out,
        inp,
        k,
        stride,
        padding,
    };
    let mut v = vec![
        con("stem".into(), 32, 3, 7, 2, 0),
        Expect::Affine { channels: 32 },
        Expect::Relu,
        Expect::MaxPool,
    ];
    let mut c = 32;
    for (level, width, down, n) in LEVELS {
        for i in 0..n {
            let name = format!("{level}.{i}");
            let down = down && i == 0;
            let (stride, padding) = if down { (2, 0) } else { (1, 1) };
            // tag1, then the block: con, affine, relu, con, affine.
            v.push(Expect::TagOrSkip);
            v.push(con(format!("{name}.conv1"), width, c, 3, stride, padding));
            v.push(Expect::Affine { channels: width });
            v.push(Expect::Relu);
            v.push(con(format!("{name}.conv2"), width, width, 3, 1, 1));
            v.push(Expect::Affine { channels: width });
            if down {
                // tag2 on the block, skip1 back to the input, its average pool.
                v.extend([Expect::TagOrSkip, Expect::TagOrSkip, Expect::AvgPool]);
            }
            v.extend([Expect::AddPrev, Expect::Relu]);
            c = width;
        }
    }
    v.extend([Expect::AvgPoolAll, Expect::Fc]);
    v
}

/// Whether `layer` is what `want` describes (for a convolution, its shape, strides and
/// paddings; a convolution without a bias is accepted, its bias read as zero).
fn matches(layer: &Layer, want: &Expect) -> bool {
    match (layer, want) {
        (
            Layer::Conv {
                shape,
                stride,
                padding,
                ..
            },
            Expect::Con {
                out,
                inp,
                k,
                stride: s,
                padding: p,
                ..
            },
        ) => *shape == [*out, *inp, *k, *k] && *stride == (*s, *s) && *padding == (*p, *p),
        (Layer::Affine { gamma, beta }, Expect::Affine { channels }) => {
            gamma.len() == *channels && beta.len() == *channels
        }
        (Layer::Relu, Expect::Relu) | (Layer::AddPrev, Expect::AddPrev) => true,
        (
            Layer::Pool {
                avg,
                window,
                stride,
                padding,
            },
            Expect::MaxPool | Expect::AvgPool | Expect::AvgPoolAll,
        ) => {
            let (a, w, s) = match want {
                Expect::MaxPool => (false, 3, 2),
                Expect::AvgPool => (true, 2, 2),
                _ => (true, 0, 1),
            };
            *avg == a && *window == (w, w) && *stride == (s, s) && *padding == (0, 0)
        }
        (
            Layer::Fc {
                inputs,
                outputs,
                bias,
                ..
            },
            Expect::Fc,
        ) => *inputs == FC_INPUTS && *outputs == DESCRIPTOR_LEN && bias.is_none(),
        _ => false,
    }
}

/// `w * gamma[o]` and `b * gamma[o] + beta[o]` for each output channel `o`: a convolution
/// followed by an affine layer as one convolution.
fn fold(
    filters: &[f32],
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let per = filters.len() / gamma.len().max(1);
    let mut w = filters.to_vec();
    for (o, chunk) in w.chunks_mut(per.max(1)).enumerate() {
        let g = gamma[o];
        for v in chunk {
            *v *= g;
        }
    }
    let b = (0..gamma.len())
        .map(|o| bias.map_or(0.0, |b| b[o]) * gamma[o] + beta[o])
        .collect();
    (w, b)
}

/// The config of the encoder dlib's network becomes.
fn dlib_config() -> Result<EncoderConfig> {
    Ok(EncoderConfig::new(
        Architecture::DlibResnet.name(),
        3,
        CHIP_SIZE,
        CHIP_SIZE,
    )?)
}

impl FaceEncoder {
    /// Reads dlib's `dlib_face_recognition_resnet_model_v1.dat` (its bytes; `name`, usually the
    /// file name, goes into every error).
    ///
    /// Fails with [`FaceError::Format`], naming the file and the byte offset, on a truncated
    /// or altered file, another network (the MMOD detector, say) or another file altogether;
    /// a layer that differs from dlib's network is named with its position in forward order
    /// (counted from 0, tags and skips included), e.g. `layer 12 is max_pool 3x3 stride 2x2
    /// padding 0x0, expected con 64x32x3x3 stride 2 padding 0`.
    pub fn from_dlib(name: &str, bytes: &[u8]) -> Result<FaceEncoder> {
        let mut r = Reader::new(name, bytes);
        let net = read_network(&mut r, |r| {
            r.tag(&["loss_metric_2"], "the metric loss of a face encoder")
                .map_err(|e| {
                    e.reword(|m| format!("not dlib's face encoder (no metric loss): {m}"))
                })?;
            let _margin = r.finite_f32("the loss margin")?;
            let at = r.pos();
            let threshold = r.finite_f32("the distance threshold")?;
            if threshold <= 0.0 {
                return Err(r.error_at(at, format!("distance threshold {threshold}, expected > 0")));
            }
            Ok(threshold)
        })?;
        let threshold = net.loss;
        // Offsets: each layer's own; a tag's or skip's (which have no details), that of the
        // next layer; the input's (read before any layer), that of the first layer.
        let mut offsets = vec![bytes.len(); net.nodes.len()];
        let mut next = bytes.len();
        for (i, node) in net.nodes.iter().enumerate().rev() {
            if let Node::Layer { offset, .. } = node {
                next = *offset;
            }
            offsets[i] = next;
        }
        let first = offsets.first().copied().unwrap_or(bytes.len());
        if net.input.tag != "input_rgb_image_sized"
            || net.input.size != Some((CHIP_SIZE, CHIP_SIZE))
        {
            return Err(r.error_at(
                first,
                format!(
                    "the input layer (before this byte) is {} {:?}, expected input_rgb_image_sized {CHIP_SIZE}x{CHIP_SIZE}",
                    net.input.tag, net.input.size
                ),
            ));
        }
        let mean_rgb = net.input.avg_rgb;

        let arch = architecture();
        let mut tensors = HashMap::new();
        let dev = Device::Cpu;
        let mut pending: Option<(&str, &Layer, usize)> = None;
        for (i, (node, want)) in net.nodes.iter().zip(&arch).enumerate() {
            let (layer, offset) = match node {
                Node::TagOrSkip if *want == Expect::TagOrSkip => continue,
                Node::TagOrSkip => {
                    return Err(r.error_at(
                        offsets[i],
                        format!("layer {i} is a tag or skip layer, expected {want}"),
                    ))
                }
                Node::Layer { layer, offset } => (layer, *offset),
            };
            if !matches(layer, want) {
                return Err(r.error_at(offset, format!("layer {i} is {}, expected {want}", layer)));
            }
            match (layer, want) {
                (Layer::Conv { .. }, Expect::Con { name, .. }) => {
                    pending = Some((name, layer, offset));
                }
                (Layer::Affine { gamma, beta }, _) => {
                    let Some((
                        name,
                        Layer::Conv {
                            shape,
                            filters,
                            bias,
                            ..
                        },
                        _,
                    )) = pending.take()
                    else {
                        return Err(r.error_at(
                            offset,
                            format!("layer {i} is an affine layer after no convolution"),
                        ));
                    };
                    let (w, b) = fold(filters, bias.as_deref(), gamma, beta);
                    tensors.insert(
                        format!("{name}.weight"),
                        Tensor::from_vec(w, shape.to_vec(), &dev)?,
                    );
                    tensors.insert(format!("{name}.bias"), Tensor::from_vec(b, shape[0], &dev)?);
                }
                (
                    Layer::Fc {
                        inputs,
                        outputs,
                        weights,
                        ..
                    },
                    _,
                ) => {
                    // dlib stores W [inputs, outputs]; the encoder keeps PyTorch's [outputs, inputs].
                    let w = Tensor::from_slice(weights, (*inputs, *outputs), &dev)?
                        .t()?
                        .contiguous()?;
                    tensors.insert("fc.weight".to_string(), w);
                }
                _ => {}
            }
        }
        if net.nodes.len() != arch.len() {
            let at = offsets.get(arch.len()).copied().unwrap_or(bytes.len());
            return Err(r.error_at(
                at,
                format!(
                    "the network has {} layers (tags and skips included), expected {} (dlib's face encoder)",
                    net.nodes.len(),
                    arch.len()
                ),
            ));
        }
        let encoder = Encoder::from_tensors(&dlib_config()?, tensors, &dev)
            .map_err(|e| r.error_at(first, format!("cannot build the encoder: {e}")))?;
        Ok(FaceEncoder {
            encoder,
            mean_rgb,
            threshold,
        })
    }

    /// The project's own format: the encoder's `.safetensors` bytes
    /// ([`siamese_encoder::io::to_safetensors`]), with the input means under [`MEAN_RGB_KEY`]
    /// and the threshold under [`THRESHOLD_KEY`] in the metadata.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let [r, g, b] = self.mean_rgb;
        let metadata = HashMap::from([
            (MEAN_RGB_KEY.to_string(), format!("{r},{g},{b}")),
            (THRESHOLD_KEY.to_string(), format!("{}", self.threshold)),
        ]);
        Ok(io::to_safetensors(&self.encoder, &[], &metadata)?)
    }

    /// Reads bytes written by [`FaceEncoder::to_safetensors`] (`name` goes into every error):
    /// the descriptors are bit-identical to those of the encoder that wrote them.
    ///
    /// Fails with [`FaceError::Input`] when the bytes are not a siamese model, hold another
    /// architecture than dlib's, or lack the mean or the threshold.
    pub fn from_safetensors(name: &str, bytes: &[u8]) -> Result<FaceEncoder> {
        let bad = |m: String| FaceError::Input(format!("{name}: {m}"));
        let loaded =
            io::from_safetensors(bytes, &Device::Cpu, &[]).map_err(|e| bad(e.to_string()))?;
        let config = loaded.encoder.config();
        if *config != dlib_config()? {
            return Err(bad(format!(
                "a {} encoder for {}x{}x{} input, expected dlib's face encoder (dlib-resnet, 3x{CHIP_SIZE}x{CHIP_SIZE})",
                config.arch.name(),
                config.in_channels,
                config.height,
                config.width
            )));
        }
        let get = |key: &str| {
            loaded
                .metadata
                .get(key)
                .ok_or_else(|| bad(format!("no `{key}` entry in the metadata")))
        };
        let parse = |key: &str, s: &str| {
            s.trim()
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(format!("`{key}` holds `{s}`, not a finite number")))
        };
        let means: Vec<&str> = get(MEAN_RGB_KEY)?.split(',').collect();
        let [r, g, b] = means[..] else {
            return Err(bad(format!("`{MEAN_RGB_KEY}` must hold three numbers")));
        };
        let mean_rgb = [
            parse(MEAN_RGB_KEY, r)?,
            parse(MEAN_RGB_KEY, g)?,
            parse(MEAN_RGB_KEY, b)?,
        ];
        let threshold = parse(THRESHOLD_KEY, get(THRESHOLD_KEY)?)?;
        if threshold <= 0.0 {
            return Err(bad(format!("threshold {threshold}, expected > 0")));
        }
        Ok(FaceEncoder {
            encoder: loaded.encoder,
            mean_rgb,
            threshold,
        })
    }

    /// The network (a `siamese-encoder` [`Encoder`] of architecture
    /// [`Architecture::DlibResnet`]), to run on tensors or to fine-tune.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// The red, green and blue means subtracted from each pixel (from the model file).
    pub fn mean_rgb(&self) -> [f32; 3] {
        self.mean_rgb
    }

    /// The distance under which two descriptors are the same person (dlib's `dist_thresh`,
    /// 0.6; face_recognition's `compare_faces` tests `<=`).
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// The encoder's input for `chips`: `[N, 3, 150, 150]` f32, planar R, G, B, each value
    /// `(pixel - mean[c]) / 256` as dlib's `input_rgb_image_sized` computes it.
    ///
    /// Fails with [`FaceError::Input`] on an empty slice or a chip that is not 150×150.
    pub fn input_tensor(&self, chips: &[RgbImage]) -> Result<Tensor> {
        check_chips(chips)?;
        chip_tensor(chips, self.mean_rgb, self.encoder.params().device())
    }

    /// The network, its input means and its threshold, taken apart (to store the network
    /// in a model file of another kind, say).
    pub fn into_parts(self) -> (Encoder, [f32; 3], f32) {
        (self.encoder, self.mean_rgb, self.threshold)
    }

    /// One descriptor per chip (each 150×150, as dlib's `get_face_chip` makes them), in
    /// batches of [`BATCH`] as dlib's `net(chips, 16)`: the raw output, not normalised. An
    /// empty slice gives no descriptors.
    ///
    /// Fails with [`FaceError::Input`] when a chip is not 150×150 (before any work is done).
    pub fn embed(&self, chips: &[RgbImage]) -> Result<Vec<Descriptor>> {
        if chips.is_empty() {
            return Ok(Vec::new());
        }
        check_chips(chips)?;
        let mut out = Vec::with_capacity(chips.len());
        for batch in chips.chunks(BATCH) {
            let y = self.encoder.embed(&self.input_tensor(batch)?)?;
            let rows: Vec<Vec<f32>> = y.to_dtype(DType::F32)?.to_vec2()?;
            for row in rows {
                let d: Descriptor = row.try_into().map_err(|row: Vec<f32>| {
                    FaceError::Input(format!(
                        "the encoder gave {} values per chip, expected {DESCRIPTOR_LEN}",
                        row.len()
                    ))
                })?;
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// `[N, 3, H, W]` f32 on `device` from `N` chips of one size `W x H`: planar R, G, B, each
/// value `(pixel - mean_rgb[c]) / 256`, as dlib's `input_rgb_image_sized` computes it. The
/// caller checks the chips' sizes.
fn chip_tensor(chips: &[RgbImage], mean_rgb: [f32; 3], device: &Device) -> Result<Tensor> {
    let (w, h) = chips.first().map_or((0, 0), |c| (c.width(), c.height()));
    let plane = w * h;
    let mut data = vec![0f32; chips.len() * 3 * plane];
    for (chip, out) in chips.iter().zip(data.chunks_exact_mut(3 * plane)) {
        for (i, px) in chip.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (f32::from(px[c]) - mean_rgb[c]) / INPUT_SCALE;
            }
        }
    }
    let t = Tensor::from_vec(data, (chips.len(), 3, h, w), &Device::Cpu)?;
    Ok(t.to_device(device)?)
}

/// The encodings of `chips` by any `encoder` taking dlib's input (3 channels of the chips'
/// size, `(pixel - mean_rgb[c]) / 256`), in batches of [`BATCH`] as [`FaceEncoder::embed`]
/// runs them (the same values, bit for bit, for dlib's network): `chips.len()` rows of the
/// encoder's `output_dim()` values, one after the other. An empty slice gives none.
///
/// Fails with [`FaceError::Input`] when a chip is not the encoder's input size.
pub fn embed_chips(encoder: &Encoder, mean_rgb: [f32; 3], chips: &[RgbImage]) -> Result<Vec<f32>> {
    let cfg = encoder.config();
    if cfg.in_channels != 3 {
        return Err(FaceError::Input(format!(
            "the encoder takes {} channels; face chips have 3",
            cfg.in_channels
        )));
    }
    for (i, c) in chips.iter().enumerate() {
        if (c.width(), c.height()) != (cfg.width, cfg.height) {
            return Err(FaceError::Input(format!(
                "chip {i} is {}x{}, the encoder takes {}x{} chips",
                c.width(),
                c.height(),
                cfg.width,
                cfg.height
            )));
        }
    }
    let mut out = Vec::with_capacity(chips.len() * cfg.output_dim());
    for batch in chips.chunks(BATCH) {
        let x = chip_tensor(batch, mean_rgb, encoder.params().device())?;
        let y = encoder.embed(&x)?.to_dtype(DType::F32)?;
        out.extend(y.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// The Euclidean distance between two descriptors (face_recognition's `face_distance`).
pub fn distance(a: &Descriptor, b: &Descriptor) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

fn check_chips(chips: &[RgbImage]) -> Result<()> {
    if chips.is_empty() {
        return Err(FaceError::Input("no chips to encode".into()));
    }
    for (i, c) in chips.iter().enumerate() {
        if (c.width(), c.height()) != (CHIP_SIZE, CHIP_SIZE) {
            return Err(FaceError::Input(format!(
                "chip {i} is {}x{}, the face encoder takes {CHIP_SIZE}x{CHIP_SIZE} chips",
                c.width(),
                c.height()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected stream has dlib's 130 entries (108 layers, 22 tags and skips) and the
    /// header pattern of the file, read from the input outwards.
    #[test]
    fn architecture_has_dlibs_layout() {
        let a = architecture();
        assert_eq!(a.len(), 130);
        assert_eq!(a.iter().filter(|e| **e == Expect::TagOrSkip).count(), 22);
        let headers = "2222211222221222222212222222122211222221222222212222222122211222221222222212222222122222221222112222212222222122222221222222212223";
        let forward: String = a
            .iter()
            .map(|e| if *e == Expect::TagOrSkip { '1' } else { '2' })
            .collect();
        let mut want: Vec<char> = headers.chars().rev().collect();
        want[0] = '2'; // the innermost layer's header is 3
        assert_eq!(forward, want.into_iter().collect::<String>());
    }

    #[test]
    fn folding_scales_weights_and_bias_per_output_channel() {
        let (w, b) = fold(
            &[1.0, 2.0, 3.0, 4.0],
            Some(&[1.0, -1.0]),
            &[2.0, 0.5],
            &[0.25, 1.0],
        );
        assert_eq!(w, vec![2.0, 4.0, 1.5, 2.0]);
        assert_eq!(b, vec![2.25, 0.5]);
    }
}
