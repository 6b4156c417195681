//! Enrol a folder of identities (one sub-folder of images each) and say who each probe is:
//! `cargo run --example identify -- MODEL FOLDER PROBE...`

use siamese::infer::{Device, Gallery, Model};
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [model, folder, probes @ ..] = args.as_slice() else {
        return Err("usage: identify MODEL.safetensors FOLDER PROBE...".into());
    };
    for line in identify(model, folder, probes)? {
        println!("{line}");
    }
    Ok(())
}

/// One line per probe: its identity ("unknown" when no one is below the model's threshold)
/// and the three nearest identities. `gallery.save(path)` would keep the gallery for later
/// (`Gallery::open(path, &model)`).
pub fn identify(
    model: &Path,
    folder: &Path,
    probes: &[PathBuf],
) -> siamese::infer::Result<Vec<String>> {
    let model = Model::load(model, &Device::Cpu)?;
    let gallery = Gallery::enrol(&model, folder)?;
    let found = gallery.identify(&model, probes, 3, None)?;
    Ok(probes
        .iter()
        .zip(found)
        .map(|(probe, id)| {
            let near: Vec<String> = id
                .candidates
                .iter()
                .map(|c| format!("{} {:.4}", c.identity, c.distance))
                .collect();
            format!("{}: {} [{}]", probe.display(), id.name(), near.join(", "))
        })
        .collect())
}
