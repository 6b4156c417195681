//! The detector and the landmark predictor as named tensors and settings: what a model file
//! of another format (a siamese `.safetensors`) stores of them, and the checks that read them
//! back.
//!
//! What it owns:
//! - the tensor names, under [`DETECTOR_PREFIX`] and [`LANDMARKS_PREFIX`]
//!   ([`Detector::to_tensors`](crate::detect::Detector::to_tensors),
//!   [`ShapePredictor::to_tensors`](crate::landmarks::ShapePredictor::to_tensors));
//! - the settings that say what shape each tensor has
//!   ([`DetectorSettings`](crate::detect::DetectorSettings),
//!   [`LandmarkSettings`](crate::landmarks::LandmarkSettings)), serialisable;
//! - reading them back (`from_tensors`): every setting checked against a stated limit, every
//!   tensor's type and shape checked against the settings before its values are read, every
//!   value finite and every index inside its array, so that prediction never indexes out of
//!   bounds; errors are [`FaceError::Stored`], naming the file and the tensor or setting.
//!
//! Read back, the detector and the predictor are the very values they were written from, so
//! detections and landmarks are bit for bit the same.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{FaceError, Result};

/// The prefix of the detector's tensors (`detector.conv0.weight`).
pub const DETECTOR_PREFIX: &str = "detector.";

/// The prefix of the landmark predictor's tensors (`landmarks.initial`).
pub const LANDMARKS_PREFIX: &str = "landmarks.";

/// A [`FaceError::Stored`] about `what` (a tensor or setting) of `file`.
pub(crate) fn stored(file: &str, what: &str, message: impl Into<String>) -> FaceError {
    FaceError::Stored {
        file: file.to_string(),
        what: what.to_string(),
        message: message.into(),
    }
}

/// The product of `shape`, or `None` on overflow.
pub(crate) fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Removes the tensor `name` from `tensors` and checks its type and shape.
fn take(
    file: &str,
    tensors: &mut HashMap<String, Tensor>,
    name: &str,
    dtype: DType,
    shape: &[usize],
) -> Result<Tensor> {
    let t = tensors
        .remove(name)
        .ok_or_else(|| stored(file, name, "missing"))?;
    if t.dtype() != dtype {
        return Err(stored(
            file,
            name,
            format!("is {:?}, expected {dtype:?}", t.dtype()),
        ));
    }
    if t.dims() != shape {
        return Err(stored(
            file,
            name,
            format!("has shape {:?}, expected {shape:?}", t.dims()),
        ));
    }
    Ok(t)
}

/// Removes the `f32` tensor `name` of `shape` from `tensors` and returns its values,
/// row-major; every value must be finite.
pub(crate) fn take_f32(
    file: &str,
    tensors: &mut HashMap<String, Tensor>,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>> {
    let t = take(file, tensors, name, DType::F32, shape)?;
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(stored(
            file,
            name,
            format!("value {i} is {}, expected a finite number", v[i]),
        ));
    }
    Ok(v)
}

/// Removes the `u32` tensor `name` of `shape` from `tensors` and returns its values, each
/// checked to be below `bound` (`what` names the bound in the error).
pub(crate) fn take_u32(
    file: &str,
    tensors: &mut HashMap<String, Tensor>,
    name: &str,
    shape: &[usize],
    bound: u32,
    what: &str,
) -> Result<Vec<u32>> {
    let t = take(file, tensors, name, DType::U32, shape)?;
    let v = t.flatten_all()?.to_vec1::<u32>()?;
    if let Some(i) = v.iter().position(|&x| x >= bound) {
        return Err(stored(
            file,
            name,
            format!("value {i} is {}, but there are only {bound} {what}", v[i]),
        ));
    }
    Ok(v)
}

/// A CPU `f32` tensor of `shape` (which holds `data`).
pub(crate) fn f32_tensor(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// A CPU `u32` tensor of `shape` (which holds `data`).
pub(crate) fn u32_tensor(data: Vec<u32>, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// Checks that `value` of the setting `what` is within `lo..=hi`.
pub(crate) fn check_range<T: PartialOrd + std::fmt::Display>(
    file: &str,
    what: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<()> {
    if value >= lo && value <= hi {
        Ok(())
    } else {
        Err(stored(
            file,
            what,
            format!("is {value}, expected {lo} to {hi}"),
        ))
    }
}
