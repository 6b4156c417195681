//! dlib's CNN face detector (`mmod_human_face_detector.dat`, max-margin object detection), as
//! face_recognition's `face_locations(img, model="cnn")` runs it:
//! `cnn_face_detection_model_v1(img, upsample)`.
//!
//! What it owns:
//! - [`Detector::from_dlib`]: reads the model file (the `loss_mmod_` options, the
//!   `input_rgb_image_pyramid` means, 19 layers) and checks every layer against the
//!   architecture (three 5x5 stride-2 unpadded convolutions of 16, 32 and 32 filters, three 5x5
//!   "same" ones of 45, one 9x9 of 1, each but the last followed by batch norm and ReLU); the
//!   batch norms are folded into the convolutions once, at load.
//! - [`Detector::detect`]: the Python wrapper's `pyramid_up` (upsampling), the tiled image
//!   pyramid of the input layer, the network (on `siamese_ops::nn` kernels, in bands of rows
//!   so that memory stays bounded, with the same output as dlib's whole-image pass), and the
//!   loss layer's decoding: windows above the threshold, mapped back through the pyramid,
//!   sorted by score, non-maximum suppression; then `rect_down` back to the caller's image.
//!
//! Submodules: `pyramid` (upsampling, tiled layout, levels), `network` (banded forward pass),
//! `decode` (windows, mapping, NMS), `stored` (the detector as named tensors and
//! [`DetectorSettings`], for model files: [`Detector::to_tensors`], [`Detector::from_tensors`]).

mod decode;
mod network;
mod pyramid;
mod stored;

pub use stored::{DetectorSettings, PyramidSettings};

use std::borrow::Cow;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use crate::dlib::net::{read_network, Layer};
use crate::dlib::Reader;
use crate::error::{FaceError, Result};
use crate::geometry::Rect;
use crate::image::RgbImage;

use decode::{rect_down, Decoder, Overlap};
use network::{Conv, Head, Net};
use pyramid::{tiled_layout, Levels, OUTER_PADDING, PYRAMID_PADDING};

/// The largest detector window side accepted from a file, in pixels.
pub const MAX_WINDOW: u64 = 1024;

/// The default [`DetectOptions::max_pixels`]: 40 megapixels (a 4472x4472 image after
/// upsampling, e.g. a 10-megapixel photo upsampled once is about 40 megapixels).
pub const DEFAULT_MAX_PIXELS: usize = 40_000_000;

/// How to run [`Detector::detect`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectOptions {
    /// How many times to double the image before detecting (dlib's `upsample_num_times`,
    /// face_recognition's `number_of_times_to_upsample`): finds faces down to about 40 pixels
    /// with 1 (the default), about 80 with 0. Each doubling quadruples the work.
    pub upsample: u32,
    /// Scores must exceed this (dlib's `adjust_threshold`, default 0.0); lower finds more,
    /// less certain faces. Every position above it is a candidate for the non-maximum
    /// suppression, whose cost grows with candidates times faces kept: far below 0 (say
    /// under -1) it can take longer than the network.
    pub threshold: f32,
    /// The most pixels the upsampled image may have (default [`DEFAULT_MAX_PIXELS`]); a
    /// larger one is an error before anything large is allocated.
    pub max_pixels: usize,
}

impl Default for DetectOptions {
    fn default() -> Self {
        Self {
            upsample: 1,
            threshold: 0.0,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// One face found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// Where, in the caller's image (dlib's inclusive rectangle; it may reach past the image's
    /// edges, as dlib's does for a face cut by the border).
    pub rect: Rect,
    /// The network's score (dlib's `detection_confidence`); above the threshold.
    pub confidence: f32,
}

/// Wall time of each stage of one [`Detector::detect_timed`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DetectTimings {
    /// Upsampling the image (`pyramid_up`).
    pub upsample: Duration,
    /// Building the pyramid levels, and filling the tiled image's rows from them.
    pub pyramid: Duration,
    /// The convolutions.
    pub network: Duration,
    /// Windows from scores, mapping back, sorting and non-maximum suppression.
    pub decode: Duration,
}

impl DetectTimings {
    /// All stages together.
    pub fn total(&self) -> Duration {
        self.upsample + self.pyramid + self.network + self.decode
    }
}

/// The options the file's `loss_mmod_` layer holds that detection uses.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Mmod {
    window: (u64, u64),
    nms: Overlap,
}

/// dlib's MMOD CNN face detector, loaded from `mmod_human_face_detector.dat`.
#[derive(Clone, Debug)]
pub struct Detector {
    name: String,
    avg_rgb: [f32; 3],
    mmod: Mmod,
    net: Net,
}

/// What each layer of the file must be, in forward order.
#[derive(Clone, Copy, Debug)]
enum Want {
    Conv {
        filters: usize,
        channels: usize,
        k: usize,
        stride: usize,
        pad: usize,
    },
    Affine(usize),
    Relu,
}

/// The architecture of `cnn_face_detector.cpp`'s `net_type`, from the input.
fn architecture() -> Vec<Want> {
    let mut v = Vec::new();
    let mut block = |filters, channels, stride, pad| {
        v.push(Want::Conv {
            filters,
            channels,
            k: 5,
            stride,
            pad,
        });
        v.push(Want::Affine(filters));
        v.push(Want::Relu);
    };
    block(16, 3, 2, 0);
    block(32, 16, 2, 0);
    block(32, 32, 2, 0);
    block(45, 32, 1, 2);
    block(45, 45, 1, 2);
    block(45, 45, 1, 2);
    v.push(Want::Conv {
        filters: 1,
        channels: 45,
        k: 9,
        stride: 1,
        pad: 4,
    });
    v
}

impl std::fmt::Display for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Want::Conv {
                filters,
                channels,
                k,
                stride,
                pad,
            } => write!(
                f,
                "con {filters}x{channels}x{k}x{k} stride {stride} padding {pad}"
            ),
            Want::Affine(c) => write!(f, "affine/bn_con of {c} channels"),
            Want::Relu => write!(f, "relu"),
        }
    }
}

/// Reads `loss_mmod_` and its `mmod_options` (versions 1 to 4), keeping what detection uses
/// and rejecting what this detector does not do (several windows, box regression, no pyramid).
fn read_mmod(r: &mut Reader<'_>) -> Result<Mmod> {
    r.tag(&["loss_mmod_"], "the MMOD loss layer (a face detector)")?;
    let version = r.int_in(1, 4, "the mmod_options version")?;
    let at = r.pos();
    let window = if version == 1 {
        let w = r.uint_in(1, MAX_WINDOW, "the detector window's width")?;
        let h = r.uint_in(1, MAX_WINDOW, "the detector window's height")?;
        (w, h)
    } else {
        let n = r.len(5, "the detector windows")?;
        if n != 1 {
            return Err(r.error_at(at, format!("{n} detector windows, this detector runs one")));
        }
        let v = r.int_in(1, 2, "a detector window's version")?;
        let w = r.uint_in(1, MAX_WINDOW, "the detector window's width")?;
        let h = r.uint_in(1, MAX_WINDOW, "the detector window's height")?;
        if v == 2 {
            r.string()?; // label
        }
        (w, h)
    };
    for what in [
        "loss per false alarm",
        "loss per missed target",
        "truth match IoU",
    ] {
        r.f64()
            .map_err(|e| e.reword(|m| format!("{m} (reading the {what})")))?;
    }
    let at = r.pos();
    let iou = r.f64()?;
    let covered = r.f64()?;
    if !((0.0..=1.0).contains(&iou) && (0.0..=1.0).contains(&covered)) {
        return Err(r.error_at(
            at,
            format!("NMS thresholds ({iou}, {covered}), expected two numbers in 0..=1"),
        ));
    }
    r.f64()?; // overlaps_ignore: IoU
    r.f64()?; // overlaps_ignore: covered
    if version >= 3 {
        let at = r.pos();
        let pyramid = r.byte()?;
        if pyramid != 1 {
            return Err(r.error_at(
                at,
                format!("assume_image_pyramid is {pyramid}, expected 1 (yes)"),
            ));
        }
    }
    if version >= 4 {
        let at = r.pos();
        if r.bool()? {
            return Err(r.error_at(
                at,
                "bounding-box regression is on; this detector does not run it",
            ));
        }
        r.f64()?; // bbr_lambda
    }
    Ok(Mmod {
        window,
        nms: Overlap { iou, covered },
    })
}

/// One convolution read from the file, with its affine layer folded in.
pub(super) struct Folded {
    /// Filters, OIHW.
    pub(super) w: Vec<f32>,
    /// One bias per filter.
    pub(super) b: Vec<f32>,
    /// `[filters, channels, k, k]`.
    pub(super) shape: [usize; 4],
    pub(super) stride: usize,
    pub(super) pad: usize,
}

/// A `[n]`-value tensor or `[o, i, k, k]` one on the CPU.
fn tensor(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

impl Net {
    /// The network from its folded convolutions in forward order, each with whether a ReLU
    /// follows it (the strided ones go to the downsampler, the others to the same-padded
    /// stack), and the one-filter head `[1, Cin, K, K]`, kept as `K * K` filters `[Cin, 1, 1]`.
    fn from_folded(
        convs: impl IntoIterator<Item = (Folded, bool)>,
        head_w: Vec<f32>,
        head_b: &[f32],
        head_shape: [usize; 4],
    ) -> Result<Net> {
        let mut down = Vec::new();
        let mut same = Vec::new();
        for (f, relu) in convs {
            let conv = Conv {
                b: tensor(f.b, &[f.shape[0]])?,
                w: tensor(f.w, &f.shape)?,
                k: f.shape[2],
                stride: f.stride,
                pad: f.pad,
                relu,
            };
            if f.stride == 1 {
                same.push(conv);
            } else {
                down.push(conv);
            }
        }
        let (cin, k) = (head_shape[1], head_shape[2]);
        let mut taps = vec![0f32; k * k * cin];
        for c in 0..cin {
            for t in 0..k * k {
                taps[t * cin + c] = head_w[c * k * k + t];
            }
        }
        let head = Head {
            taps: tensor(taps, &[k * k, cin, 1, 1])?,
            bias: head_b.first().copied().unwrap_or(0.0),
            k,
        };
        Ok(Net { down, same, head })
    }
}

impl Detector {
    /// Reads `mmod_human_face_detector.dat` (its bytes; `name` goes into every error):
    /// the MMOD options, the input means, and the 19 layers, each checked against the
    /// detector's architecture (kind, shape, stride, padding) and every parameter checked to
    /// be finite. Errors name the file and the byte offset.
    pub fn from_dlib(name: &str, bytes: &[u8]) -> Result<Detector> {
        let mut r = Reader::new(name, bytes);
        let mut loss_end = 0usize;
        let net = read_network(&mut r, |r| {
            let m = read_mmod(r)?;
            loss_end = r.pos();
            Ok(m)
        })?;
        // The input's details follow the loss and one 2-byte header per layer.
        let input_at = loss_end + 2 * net.nodes.len();
        if net.input.tag != "input_rgb_image_pyramid" {
            return Err(r.error_at(
                input_at,
                format!(
                    "input layer `{}`, expected `input_rgb_image_pyramid` (a detector)",
                    net.input.tag
                ),
            ));
        }
        let want = architecture();
        if net.nodes.len() != want.len() {
            return Err(r.error_at(
                input_at,
                format!(
                    "{} layers, the face detector has {} (is this another network?)",
                    net.nodes.len(),
                    want.len()
                ),
            ));
        }

        // Each convolution's filters, bias, shape, stride and padding, affine folded in.
        let mut convs: Vec<Folded> = Vec::new();
        let mut layers = net.layers();
        for (i, w) in want.iter().enumerate() {
            let Some((layer, at)) = layers.next() else {
                return Err(r.error_at(
                    input_at,
                    format!("layer {i} is a tag or skip layer, expected {w}"),
                ));
            };
            let mismatch = || r.error_at(at, format!("layer {i}: expected {w}, found {}", layer));
            let finite = |v: &[f32]| {
                if v.iter().all(|x| x.is_finite()) {
                    Ok(())
                } else {
                    Err(r.error_at(at, format!("layer {i} ({w}) holds a non-finite parameter")))
                }
            };
            match (w, layer) {
                (
                    &Want::Conv {
                        filters,
                        channels,
                        k,
                        stride,
                        pad,
                    },
                    Layer::Conv {
                        shape,
                        filters: values,
                        bias,
                        stride: s,
                        padding: p,
                    },
                ) => {
                    if *shape != [filters, channels, k, k]
                        || *s != (stride, stride)
                        || *p != (pad, pad)
                    {
                        return Err(mismatch());
                    }
                    finite(values)?;
                    let bias = bias.clone().unwrap_or_else(|| vec![0.0; filters]);
                    finite(&bias)?;
                    convs.push(Folded {
                        w: values.clone(),
                        b: bias,
                        shape: *shape,
                        stride,
                        pad,
                    });
                }
                (&Want::Affine(c), Layer::Affine { gamma, beta }) => {
                    if gamma.len() != c || beta.len() != c {
                        return Err(mismatch());
                    }
                    finite(gamma)?;
                    finite(beta)?;
                    let Some(Folded { w, b, .. }) = convs.last_mut() else {
                        return Err(mismatch());
                    };
                    // y = gamma (conv(x) + b) + beta = conv_{w gamma}(x) + (b gamma + beta).
                    let per = w.len() / c;
                    for (o, (g, be)) in gamma.iter().zip(beta).enumerate() {
                        w[o * per..(o + 1) * per].iter_mut().for_each(|v| *v *= g);
                        b[o] = b[o] * g + be;
                    }
                }
                (Want::Relu, Layer::Relu) => {}
                _ => return Err(mismatch()),
            }
        }
        // The architecture check leaves three strided convolutions, three same-padded ones
        // (each followed by ReLU) and the one-filter head.
        let Some(Folded {
            w: hw,
            b: hb,
            shape: hshape,
            ..
        }) = convs.pop()
        else {
            return Err(r.error_at(input_at, "no convolution"));
        };
        let convs = convs.into_iter().map(|f| (f, true));
        Ok(Detector {
            name: name.to_string(),
            avg_rgb: net.input.avg_rgb,
            mmod: net.loss,
            net: Net::from_folded(convs, hw, &hb, hshape)?,
        })
    }

    /// The name the detector was loaded with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The detector window `(width, height)` from the file (80x80 for dlib's face model).
    pub fn window(&self) -> (u64, u64) {
        self.mmod.window
    }

    /// Faces in `img`, highest confidence first: dlib's `cnn_face_detection_model_v1(img,
    /// opts.upsample)` with `adjust_threshold = opts.threshold`. An image too small to hold
    /// the network's first layers (under about 7 pixels a side after upsampling) has none.
    ///
    /// Fails (before any large allocation) when the upsampled image would have more than
    /// `opts.max_pixels` pixels.
    pub fn detect(&self, img: &RgbImage, opts: &DetectOptions) -> Result<Vec<Detection>> {
        Ok(self.detect_timed(img, opts)?.0)
    }

    /// [`Detector::detect`], also returning the time each stage took.
    pub fn detect_timed(
        &self,
        img: &RgbImage,
        opts: &DetectOptions,
    ) -> Result<(Vec<Detection>, DetectTimings)> {
        let mut times = DetectTimings::default();
        let (w, h) = checked_size(img.width(), img.height(), opts)?;

        let t = Instant::now();
        let mut image = Cow::Borrowed(img.as_raw());
        let (mut iw, mut ih) = (img.width(), img.height());
        for _ in 0..opts.upsample {
            let (up, uw, uh) = pyramid::pyramid_up(&image, iw, ih);
            image = Cow::Owned(up);
            (iw, ih) = (uw, uh);
        }
        debug_assert_eq!((iw, ih), (w, h));
        times.upsample = t.elapsed();

        let t = Instant::now();
        let layout = tiled_layout(h, w, PYRAMID_PADDING, OUTER_PADDING);
        if self.net.out_size(layout.rows).is_none() || self.net.out_size(layout.cols).is_none() {
            return Ok((Vec::new(), times));
        }
        let levels = Levels::new(&image, self.avg_rgb, &layout);
        times.pyramid = t.elapsed();

        let (scores, net_times) = self.net.scores(&levels, &layout)?;
        times.pyramid += net_times.fill;
        times.network = net_times.convs;
        drop(levels);

        let t = Instant::now();
        let decoder = Decoder {
            map: self.net.output_to_input(),
            window: (self.mmod.window.0 as f64, self.mmod.window.1 as f64),
            rects: &layout.rects,
            nms: self.mmod.nms,
        };
        let found = decoder
            .detections(&scores, opts.threshold)
            .into_iter()
            .map(|(rect, confidence)| Detection {
                rect: rect_down(&rect, opts.upsample),
                confidence,
            })
            .collect();
        times.decode = t.elapsed();
        Ok((found, times))
    }
}

/// The size of `width` x `height` upsampled `opts.upsample` times, or the error saying it is
/// over `opts.max_pixels`.
fn checked_size(width: usize, height: usize, opts: &DetectOptions) -> Result<(usize, usize)> {
    let over = |what: String| {
        FaceError::Input(format!(
            "the image is {width}x{height}; upsampled {} times for detection it would be {what}, \
             over the limit of {} pixels (raise DetectOptions::max_pixels, or upsample less)",
            opts.upsample, opts.max_pixels
        ))
    };
    let (mut w, mut h) = (width, height);
    for step in 1..=opts.upsample {
        let more = if step < opts.upsample {
            "at least "
        } else {
            ""
        };
        match pyramid::upsampled_size(w, h) {
            Some((uw, uh)) if uw.checked_mul(uh).is_some_and(|p| p <= opts.max_pixels) => {
                (w, h) = (uw, uh)
            }
            Some((uw, uh)) => {
                let p = (uw as u128) * (uh as u128);
                return Err(over(format!("{more}{uw}x{uh} = {p} pixels")));
            }
            None => return Err(over("larger than this machine can address".to_string())),
        }
    }
    let p = w.saturating_mul(h);
    if p > opts.max_pixels {
        return Err(over(format!("{w}x{h} = {p} pixels")));
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Option<Detector> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/faces/models/mmod_human_face_detector.dat");
        let bytes = std::fs::read(p).ok()?;
        Some(Detector::from_dlib("mmod_human_face_detector.dat", &bytes).unwrap())
    }

    /// A deterministic textured image.
    fn texture(w: usize, h: usize) -> Vec<u8> {
        let mut s = 0x2545_f491_u32;
        (0..w * h * 3)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let (x, y) = ((i / 3) % w, (i / 3) / w);
                ((x * 3 + y * 5) as u32 % 200 + s % 56) as u8
            })
            .collect()
    }

    #[test]
    /// Bit-identical here (the kernels reduce in an order that does not depend on the rows).
    fn bands_give_the_whole_image_pass() {
        let Some(d) = model() else { return };
        let (w, h) = (211, 157);
        let img = texture(w, h);
        let layout = tiled_layout(h, w, PYRAMID_PADDING, OUTER_PADDING);
        let levels = Levels::new(&img, d.avg_rgb, &layout);
        let (whole, _) = d
            .net
            .scores_in_bands(&levels, &layout, 1 << 20, 1 << 20)
            .unwrap();
        assert!(whole.rows > 40, "{}", whole.rows);
        for (chunk, band) in [(1, 1), (3, 8), (7, 13), (64, 50)] {
            let (banded, _) = d
                .net
                .scores_in_bands(&levels, &layout, chunk, band)
                .unwrap();
            assert_eq!((banded.rows, banded.cols), (whole.rows, whole.cols));
            let diff = whole
                .data
                .iter()
                .zip(&banded.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-5, "chunk {chunk} band {band}: {diff}");
        }
    }
}
