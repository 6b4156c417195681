//! Property tests: model and gallery files never panic when read, whatever their bytes:
//! arbitrary bytes, and real files with bytes changed, cut short or inserted (a file that
//! cannot be used is an `InferError` naming it).

use candle_core::Device;
use proptest::prelude::*;
use siamese_data::Preprocess;
use siamese_encoder::{Architecture, Encoder, EncoderConfig};
use siamese_infer::{Gallery, Model, ModelMeta, Provenance, Tta};
use siamese_ops::distance::Distance;
use std::sync::OnceLock;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A small conv4 on 28×24 grey images, and a random gallery of it, as file bytes.
fn files() -> &'static (Model, Vec<u8>, Vec<u8>) {
    static FILES: OnceLock<(Model, Vec<u8>, Vec<u8>)> = OnceLock::new();
    FILES.get_or_init(|| {
        let arch = Architecture::conv4()
            .with_widths(&[8, 8, 8, 8])
            .expect("conv4 takes four widths");
        let mut cfg = EncoderConfig::for_arch(arch, 1, 28, 24);
        cfg.embedding_dim = 16;
        let model = Model {
            encoder: Encoder::new(&cfg, 7, &Device::Cpu).expect("a small encoder"),
            meta: ModelMeta {
                preprocess: Preprocess::new(1, 24, 28),
                distance: Distance::SquaredL2,
                calibration: None,
                provenance: Provenance::default(),
                tta: Tta::None,
            },
            extra: Vec::new(),
            face: None,
        };
        let model_bytes = model.to_bytes().expect("model bytes");
        let gallery = Gallery::random(&model, 12, 3, 1)
            .and_then(|g| g.to_bytes())
            .expect("gallery bytes");
        (model, model_bytes, gallery)
    })
}

/// `bytes` with `edits` applied: (where, as a fraction of the length; what: a new byte, a
/// cut there, or a run of bytes inserted there).
#[derive(Debug, Clone)]
enum Edit {
    Set(f64, u8),
    Cut(f64),
    Insert(f64, Vec<u8>),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(
        prop_oneof![
            4 => (0.0..1.0f64, any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
            1 => (0.0..1.0f64).prop_map(Edit::Cut),
            1 => (0.0..1.0f64, proptest::collection::vec(any::<u8>(), 1..16))
                .prop_map(|(at, v)| Edit::Insert(at, v)),
        ],
        1..5,
    )
}

/// Edits near the start (the header, where lengths and metadata live) more often.
fn apply(bytes: &[u8], edits: &[Edit], header_bias: bool) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let at = |f: f64, len: usize| {
        let f = if header_bias { f * f * f } else { f };
        ((f * len as f64) as usize).min(len)
    };
    for e in edits {
        match e {
            Edit::Set(f, b) => {
                let i = at(*f, out.len());
                if let Some(x) = out.get_mut(i) {
                    *x = *b;
                }
            }
            Edit::Cut(f) => {
                let i = at(*f, out.len());
                out.truncate(i);
            }
            Edit::Insert(f, v) => {
                let i = at(*f, out.len());
                out.splice(i..i, v.iter().copied());
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config(120))]

    #[test]
    fn model_from_bytes_never_panics(
        raw in proptest::collection::vec(any::<u8>(), 0..300),
        e in edits(),
        header_bias in any::<bool>(),
    ) {
        let (_, model, _) = files();
        let _ = Model::from_bytes(&raw, &Device::Cpu);
        let _ = Model::from_bytes(&apply(model, &e, header_bias), &Device::Cpu);
    }

    #[test]
    fn gallery_open_never_panics(
        raw in proptest::collection::vec(any::<u8>(), 0..300),
        e in edits(),
        header_bias in any::<bool>(),
    ) {
        let (model, _, gallery) = files();
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("g.safetensors");
        for bytes in [raw, apply(gallery, &e, header_bias)] {
            std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let _ = Gallery::open(&path, model);
        }
    }
}

/// Any change to a gallery's embeddings is caught by the checksum it records.
#[test]
fn altered_gallery_rows_are_refused() -> anyhow::Result<()> {
    let (model, _, gallery) = files();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("g.safetensors");
    std::fs::write(&path, gallery)?;
    Gallery::open(&path, model)?;
    let mut altered = gallery.clone();
    let last = altered.len() - 3;
    altered[last] ^= 1;
    std::fs::write(&path, &altered)?;
    let e = Gallery::open(&path, model).err().map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("checksum") && e.contains("g.safetensors")),
        "{e:?}"
    );
    Ok(())
}
