//! The detector as named tensors and [`DetectorSettings`] (see [`crate::file`]).
//!
//! Tensors: `detector.conv{i}.weight` `[filters, channels, k, k]` and `detector.conv{i}.bias`
//! `[filters]`, `f32`, for the 7 convolutions in forward order (0 to 5 with their batch norm
//! folded in, 6 the one-filter head), in the shapes of the architecture the reader checks.

use std::collections::HashMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::decode::Overlap;
use super::network::Net;
use super::pyramid::{OUTER_PADDING, PYRAMID_PADDING};
use super::{architecture, Detector, Folded, Mmod, Want, MAX_WINDOW};
use crate::error::Result;
use crate::file::{check_range, f32_tensor, stored, take_f32, DETECTOR_PREFIX};

/// The image pyramid the detector's input layer builds: dlib's `pyramid_down<6>` (each level
/// 5/6 of the previous one), tiled with `padding` pixels between tiles and `outer_padding`
/// around them. This detector runs only that pyramid; the settings record it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PyramidSettings {
    /// `pyramid_down<6>`.
    pub kind: String,
    /// Pixels between tiles (dlib's `pyramid_padding`, 10).
    pub padding: i64,
    /// Pixels around the tiles (dlib's `pyramid_outer_padding`, 11).
    pub outer_padding: i64,
}

impl Default for PyramidSettings {
    fn default() -> Self {
        Self {
            kind: "pyramid_down<6>".into(),
            padding: PYRAMID_PADDING,
            outer_padding: OUTER_PADDING,
        }
    }
}

/// What a stored detector is besides its tensors: the options of its `loss_mmod_` layer and
/// its input layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorSettings {
    /// The detector window, `[width, height]` in pixels (80x80 for dlib's face model).
    pub window: [u64; 2],
    /// Non-maximum suppression: two boxes overlap when their intersection is more than this
    /// fraction of the box bounding both...
    pub nms_iou: f64,
    /// ... or more than this fraction of either box.
    pub nms_covered: f64,
    /// The input layer's means, subtracted from R, G and B.
    pub mean_rgb: [f32; 3],
    /// The image pyramid.
    pub pyramid: PyramidSettings,
}

/// `detector.conv{i}.weight` / `.bias`.
fn names(i: usize) -> (String, String) {
    (
        format!("{DETECTOR_PREFIX}conv{i}.weight"),
        format!("{DETECTOR_PREFIX}conv{i}.bias"),
    )
}

impl Detector {
    /// The settings [`Detector::from_tensors`] needs besides the tensors.
    pub fn settings(&self) -> DetectorSettings {
        DetectorSettings {
            window: [self.mmod.window.0, self.mmod.window.1],
            nms_iou: self.mmod.nms.iou,
            nms_covered: self.mmod.nms.covered,
            mean_rgb: self.avg_rgb,
            pyramid: PyramidSettings::default(),
        }
    }

    /// The detector's tensors, named as the module documentation says, on the CPU.
    pub fn to_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, c) in self.net.down.iter().chain(&self.net.same).enumerate() {
            let (w, b) = names(i);
            out.push((w, c.w.to_device(&candle_core::Device::Cpu)?));
            out.push((b, c.b.to_device(&candle_core::Device::Cpu)?));
        }
        // The head back in a convolution's layout: `taps[t * cin + c]` is `w[c * k * k + t]`.
        let (kk, cin) = self.net.head.taps.dims4().map(|(t, c, _, _)| (t, c))?;
        let taps = self.net.head.taps.flatten_all()?.to_vec1::<f32>()?;
        let mut w = vec![0f32; kk * cin];
        for c in 0..cin {
            for t in 0..kk {
                w[c * kk + t] = taps[t * cin + c];
            }
        }
        let k = self.net.head.k;
        let (wn, bn) = names(self.net.down.len() + self.net.same.len());
        out.push((wn, f32_tensor(w, &[1, cin, k, k])?));
        out.push((bn, f32_tensor(vec![self.net.head.bias], &[1])?));
        Ok(out)
    }

    /// The detector from `settings` and the tensors [`Detector::to_tensors`] wrote, removed
    /// from `tensors` (others are left there). `file` names the source in errors.
    ///
    /// Fails with [`crate::FaceError::Stored`], naming the file and the tensor or setting,
    /// when a setting is out of range (a window side over [`MAX_WINDOW`], an overlap outside
    /// `0..=1`, a mean that is not finite, another pyramid) or a tensor is missing, not `f32`,
    /// not the architecture's shape, or holds a value that is not finite.
    pub fn from_tensors(
        file: &str,
        settings: &DetectorSettings,
        tensors: &mut HashMap<String, Tensor>,
    ) -> Result<Detector> {
        let [ww, wh] = settings.window;
        check_range(file, "detector window width", ww, 1, MAX_WINDOW)?;
        check_range(file, "detector window height", wh, 1, MAX_WINDOW)?;
        for (what, v) in [
            ("detector nms_iou", settings.nms_iou),
            ("detector nms_covered", settings.nms_covered),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(stored(file, what, format!("is {v}, expected 0 to 1")));
            }
        }
        if settings.mean_rgb.iter().any(|m| !m.is_finite()) {
            return Err(stored(
                file,
                "detector mean_rgb",
                format!("is {:?}, expected finite numbers", settings.mean_rgb),
            ));
        }
        if settings.pyramid != PyramidSettings::default() {
            return Err(stored(
                file,
                "detector pyramid",
                format!(
                    "is {:?}, this detector runs {:?}",
                    settings.pyramid,
                    PyramidSettings::default()
                ),
            ));
        }
        let mut convs = Vec::new();
        let mut relu = Vec::new();
        for w in architecture() {
            match w {
                Want::Conv {
                    filters,
                    channels,
                    k,
                    stride,
                    pad,
                } => {
                    let (wn, bn) = names(convs.len());
                    let wv = take_f32(file, tensors, &wn, &[filters, channels, k, k])?;
                    let bv = take_f32(file, tensors, &bn, &[filters])?;
                    convs.push((wv, bv, [filters, channels, k, k], stride, pad));
                    relu.push(false);
                }
                Want::Relu => {
                    if let Some(r) = relu.last_mut() {
                        *r = true;
                    }
                }
                Want::Affine(_) => {}
            }
        }
        let Some((hw, hb, hshape, _, _)) = convs.pop() else {
            return Err(stored(file, "detector", "no convolution"));
        };
        let convs = convs
            .into_iter()
            .zip(relu)
            .map(|((w, b, shape, stride, pad), relu)| {
                let folded = Folded {
                    w,
                    b,
                    shape,
                    stride,
                    pad,
                };
                (folded, relu)
            });
        let net = Net::from_folded(convs, hw, &hb, hshape)?;
        Ok(Detector {
            name: file.to_string(),
            avg_rgb: settings.mean_rgb,
            mmod: Mmod {
                window: (ww, wh),
                nms: Overlap {
                    iou: settings.nms_iou,
                    covered: settings.nms_covered,
                },
            },
            net,
        })
    }
}
