//! Weights and config as safetensors bytes.
//!
//! The encoder config is stored as JSON under the metadata key [`CONFIG_KEY`]; tensor names
//! follow module paths. Callers may store extra tensors (a verification head, say) under their
//! own prefixes and extra metadata under their own keys. Nothing read from the bytes is ever
//! executed.

use crate::{Encoder, EncoderConfig};
use candle_core::{bail, Device, Result, Tensor};
use std::collections::HashMap;

/// The metadata key that holds the encoder config as JSON.
pub const CONFIG_KEY: &str = "siamese.encoder";

/// Serialises the encoder's parameters and buffers, `extra` tensors, and `metadata` (plus the
/// encoder config under [`CONFIG_KEY`]).
pub fn to_safetensors(
    encoder: &Encoder,
    extra: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut meta = metadata.clone();
    let cfg = serde_json::to_string(encoder.config())
        .map_err(|e| candle_core::Error::Msg(format!("encoder config to JSON: {e}")))?;
    meta.insert(CONFIG_KEY.to_string(), cfg);
    let mut tensors: Vec<(String, Tensor)> = encoder
        .params()
        .all()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    for (name, t) in extra {
        if tensors.iter().any(|(n, _)| n == name) {
            bail!("safetensors: extra tensor `{name}` clashes with an encoder tensor")
        }
        tensors.push((name.clone(), t.to_device(&Device::Cpu)?));
    }
    safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| candle_core::Error::Msg(format!("safetensors: cannot serialise: {e}")))
}

/// What [`from_safetensors`] read: the encoder, the file's metadata, and the tensors whose
/// names start with one of the allowed extra prefixes.
#[derive(Debug)]
pub struct Loaded {
    /// The encoder, with every parameter and buffer set from the bytes.
    pub encoder: Encoder,
    /// All metadata entries, the encoder config included.
    pub metadata: HashMap<String, String>,
    /// Tensors under the allowed extra prefixes, by name.
    pub extra: HashMap<String, Tensor>,
}

/// Reads the metadata of a safetensors buffer without touching the tensors.
pub fn read_metadata(bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| candle_core::Error::Msg(format!("not a safetensors file: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Rebuilds an encoder from bytes written by [`to_safetensors`].
///
/// Fails, naming the tensor, when one is missing, has the wrong shape or dtype, or is neither
/// an encoder tensor nor under one of `extra_prefixes`.
pub fn from_safetensors(bytes: &[u8], device: &Device, extra_prefixes: &[&str]) -> Result<Loaded> {
    let metadata = read_metadata(bytes)?;
    let Some(cfg) = metadata.get(CONFIG_KEY) else {
        bail!("safetensors: no `{CONFIG_KEY}` entry in the metadata: not a siamese model")
    };
    let config: EncoderConfig = serde_json::from_str(cfg)
        .map_err(|e| candle_core::Error::Msg(format!("safetensors: bad encoder config: {e}")))?;
    let encoder = Encoder::new(&config, 0, device)?;
    let mut tensors = candle_core::safetensors::load_buffer(bytes, device)?;
    encoder.set_tensors(&mut tensors, "safetensors")?;
    let mut extra = HashMap::new();
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    names.sort();
    for name in names {
        if !extra_prefixes.iter().any(|p| name.starts_with(p)) {
            bail!(
                "safetensors: unexpected tensor `{name}` for a {} encoder",
                config.arch.name()
            )
        }
        if let Some(t) = tensors.remove(&name) {
            extra.insert(name, t);
        }
    }
    Ok(Loaded {
        encoder,
        metadata,
        extra,
    })
}
