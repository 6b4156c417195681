//! Are two images of one identity? `cargo run --example verify -- MODEL A B`
//! (the model's calibrated threshold decides).

use siamese::infer::{Device, Model, Verifier};
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [model, a, b] = args.as_slice() else {
        return Err("usage: verify MODEL.safetensors A B".into());
    };
    println!("{}", verify(model, a, b)?);
    Ok(())
}

/// The verdict on `a` and `b` under the model in `model`, as a line of text.
pub fn verify(model: &Path, a: &Path, b: &Path) -> siamese::infer::Result<String> {
    let verifier = Verifier::new(Model::load(model, &Device::Cpu)?, None)?;
    let v = verifier.verify(a, b)?;
    let verdict = if v.same { "same" } else { "different" };
    Ok(format!(
        "{verdict}: distance {:.4}, threshold {:.4}",
        v.distance, v.threshold
    ))
}
