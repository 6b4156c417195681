//! Tests of the training crate's parts: optimiser updates against hand-computed PyTorch
//! semantics, schedules, configs, checkpoints and the model file.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use siamese_train::{Decay, Optimizer, OptimizerConfig, Schedule, TrainConfig};

fn one_param(value: f32) -> Result<(Var, Vec<(String, Var)>)> {
    let v = Var::from_tensor(&Tensor::new(&[value], &Device::Cpu)?)?;
    Ok((v.clone(), vec![("p".to_string(), v)]))
}

/// A gradient store holding d(loss)/dp = g, made from loss = g · p.
fn grads_for(v: &Var, g: f32) -> Result<candle_core::backprop::GradStore> {
    Ok((v.as_tensor() * g as f64)?.sum_all()?.backward()?)
}

#[test]
fn adamw_first_step_matches_pytorch_closed_form() -> Result<()> {
    // torch.optim.AdamW(lr=0.1, weight_decay=0.01): p=1, g=0.5. Decay: p = 1·(1 − 0.1·0.01)
    // = 0.999; m̂ = 0.5, v̂ = 0.25, update = 0.1 · 0.5 / (0.5 + 1e-8) ≈ 0.1 → 0.899.
    let (v, vars) = one_param(1.0)?;
    let mut opt = Optimizer::new(
        OptimizerConfig::Adamw {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        },
        vars,
    );
    opt.step(&grads_for(&v, 0.5)?, 0.1)?;
    let p: Vec<f32> = v.as_tensor().to_vec1()?;
    assert!((p[0] - 0.899).abs() < 1e-6, "{}", p[0]);
    Ok(())
}

#[test]
fn sgd_momentum_matches_pytorch_closed_form() -> Result<()> {
    // torch.optim.SGD(lr=0.1, momentum=0.9): buf₁ = g = 0.5 → p = 0.95;
    // buf₂ = 0.9·0.5 + 0.5 = 0.95 → p = 0.95 − 0.095 = 0.855.
    let (v, vars) = one_param(1.0)?;
    let mut opt = Optimizer::new(
        OptimizerConfig::Sgd {
            momentum: 0.9,
            weight_decay: 0.0,
        },
        vars,
    );
    opt.step(&grads_for(&v, 0.5)?, 0.1)?;
    opt.step(&grads_for(&v, 0.5)?, 0.1)?;
    let p: Vec<f32> = v.as_tensor().to_vec1()?;
    assert!((p[0] - 0.855).abs() < 1e-6, "{}", p[0]);
    Ok(())
}

#[test]
fn optimiser_state_round_trips_exactly() -> Result<()> {
    let cfg = OptimizerConfig::default();
    let (a, vars_a) = one_param(1.0)?;
    let mut opt_a = Optimizer::new(cfg.clone(), vars_a);
    for g in [0.3, -0.2, 0.7] {
        opt_a.step(&grads_for(&a, g)?, 0.01)?;
    }
    let (state, t) = opt_a.state()?;
    let (b, vars_b) = one_param(a.as_tensor().to_vec1::<f32>()?[0])?;
    let mut opt_b = Optimizer::new(cfg, vars_b);
    opt_b.load_state(&state.into_iter().collect(), t)?;
    opt_a.step(&grads_for(&a, 0.4)?, 0.01)?;
    opt_b.step(&grads_for(&b, 0.4)?, 0.01)?;
    assert_eq!(
        a.as_tensor().to_vec1::<f32>()?,
        b.as_tensor().to_vec1::<f32>()?
    );
    Ok(())
}

#[test]
fn schedules_follow_their_formulas() {
    let warm = Schedule {
        lr: 1.0,
        warmup_steps: 10,
        decay: Decay::Constant,
    };
    assert!((warm.lr(0, 0.0) - 0.1).abs() < 1e-12);
    assert!((warm.lr(9, 0.0) - 1.0).abs() < 1e-12);
    assert!((warm.lr(50, 0.5) - 1.0).abs() < 1e-12);
    let cos = Schedule {
        lr: 1.0,
        warmup_steps: 0,
        decay: Decay::Cosine {
            final_fraction: 0.0,
        },
    };
    assert!((cos.lr(5, 0.5) - 0.5).abs() < 1e-12, "cos(π/2) halfway");
    assert!(cos.lr(10, 1.0).abs() < 1e-12);
    let step = Schedule {
        lr: 1.0,
        warmup_steps: 0,
        decay: Decay::Step {
            every: 10,
            gamma: 0.1,
        },
    };
    assert!((step.lr(25, 0.0) - 0.01).abs() < 1e-12);
}

#[test]
fn recipes_validate_and_round_trip_through_toml() -> Result<()> {
    for name in TrainConfig::RECIPES {
        let c = TrainConfig::recipe(name)?;
        c.validate()?;
        let text = toml::to_string(&c)?;
        let back = TrainConfig::from_toml(&text)?;
        assert_eq!(back, c, "{name}");
    }
    assert!(TrainConfig::recipe("imagenet").is_err());
    let mut c = TrainConfig::recipe("demo")?;
    c.classes_per_batch = 1;
    assert!(c.validate().is_err());
    Ok(())
}

/// With `Tta::Hflip` an image and its mirror get the same encoding (the mean of the two
/// passes), unit length when the encoder normalises; without it they differ.
#[test]
fn hflip_tta_makes_encodings_mirror_invariant() -> Result<()> {
    use siamese_encoder::{Architecture, Encoder, EncoderConfig};
    use siamese_train::{embed_flat, Tta};
    let mut cfg = EncoderConfig::for_arch(Architecture::conv4(), 1, 20, 18);
    cfg.l2_normalize = true;
    let enc = Encoder::new(&cfg, 3, &Device::Cpu)?;
    let (h, w) = (20, 18);
    let img: Vec<f32> = (0..h * w)
        .map(|i| ((i * 37 % 101) as f32) / 101.0)
        .collect();
    let mirror: Vec<f32> = img
        .chunks(w)
        .flat_map(|r| r.iter().rev().copied())
        .collect();
    let both: Vec<f32> = img.iter().chain(&mirror).copied().collect();
    let plain = embed_flat(&enc, &both, 2, 8, Tta::None)?;
    let tta = embed_flat(&enc, &both, 2, 8, Tta::Hflip)?;
    let d = cfg.embedding_dim;
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        diff(&plain[..d], &plain[d..]) > 1e-3,
        "a mirror is another input"
    );
    assert!(
        diff(&tta[..d], &tta[d..]) < 1e-5,
        "hflip TTA is mirror-invariant"
    );
    let norm: f32 = tta[..d].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "re-normalised, got {norm}");
    // Odd batch splits give the same answer.
    let one_by_one = embed_flat(&enc, &both, 2, 1, Tta::Hflip)?;
    assert!(diff(&tta, &one_by_one) < 1e-5);
    assert_eq!(Tta::from_name("hflip")?, Tta::Hflip);
    assert!(Tta::from_name("vflip").is_err());
    Ok(())
}

/// `Tta::Affine` averages an image's encoding with those of distortions seeded by its pixels:
/// the same image gets the same unit-length encoding wherever it sits in a batch and however
/// the batch is split, the encoding differs from the plain one, and a slightly shifted image
/// lands closer to the original than without the averaging.
#[test]
fn affine_tta_is_a_deterministic_function_of_the_image() -> Result<()> {
    use siamese_encoder::{Architecture, Encoder, EncoderConfig};
    use siamese_train::{embed_flat, Tta};
    let (h, w) = (20, 20);
    let mut cfg = EncoderConfig::for_arch(Architecture::conv4(), 1, h, w);
    cfg.l2_normalize = true;
    let enc = Encoder::new(&cfg, 5, &Device::Cpu)?;
    // A bright bar on a dark ground, and the same bar one pixel to the right.
    let bar = |x0: usize| -> Vec<f32> {
        (0..h * w)
            .map(|i| {
                let (y, x) = (i / w, i % w);
                if (4..16).contains(&y) && (x0..x0 + 3).contains(&x) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect()
    };
    let (a, b) = (bar(8), bar(9));
    let other: Vec<f32> = (0..h * w).map(|i| ((i * 29 % 97) as f32) / 97.0).collect();
    let d = cfg.embedding_dim;
    let ab: Vec<f32> = a.iter().chain(&b).copied().collect();
    let oa: Vec<f32> = other.iter().chain(&a).copied().collect();
    let k = siamese_train::AFFINE_TTA_COPIES;
    let plain = embed_flat(&enc, &ab, 2, 64, Tta::None)?;
    let tta = embed_flat(&enc, &ab, 2, 64, Tta::Affine(k))?;
    let moved = embed_flat(&enc, &oa, 2, 1, Tta::Affine(k))?;
    let diff = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max)
    };
    let dist = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum::<f32>();
    assert!(
        diff(&tta[..d], &moved[d..]) < 1e-5,
        "same image, same encoding"
    );
    assert!(
        diff(&tta[..d], &plain[..d]) > 1e-3,
        "averaging changes the encoding"
    );
    let norm: f32 = tta[..d].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "re-normalised, got {norm}");
    assert!(
        dist(&tta[..d], &tta[d..]) < dist(&plain[..d], &plain[d..]),
        "a one-pixel shift moves the averaged encoding less: {} vs {}",
        dist(&tta[..d], &tta[d..]),
        dist(&plain[..d], &plain[d..])
    );
    assert_eq!(Tta::from_name("affine")?, Tta::Affine(k));
    assert_eq!(Tta::Affine(k).copies(), k);

    // `Tta::AffineSet` keeps the copies: the image itself first, then its distortions (unit
    // length each), the same wherever the image sits; the set matcher compares them.
    assert_eq!(Tta::from_name("affine-set")?, Tta::AffineSet(k));
    assert_eq!(
        (Tta::AffineSet(k).set_size(), Tta::Affine(k).set_size()),
        (k, 1)
    );
    let sets = embed_flat(&enc, &ab, 2, 64, Tta::AffineSet(k))?;
    let moved_sets = embed_flat(&enc, &oa, 2, 1, Tta::AffineSet(k))?;
    assert_eq!(sets.len(), 2 * k * d);
    assert!(diff(&sets[..d], &plain[..d]) < 1e-5, "copy 0 is the image");
    assert!(
        diff(&sets[..k * d], &moved_sets[k * d..]) < 1e-5,
        "same image, same set"
    );
    for e in sets.chunks(d) {
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "unit length, got {norm}");
    }
    assert!(
        diff(&sets[d..2 * d], &sets[..d]) > 1e-3,
        "the distortions differ from the image"
    );
    let m = Tta::AffineSet(k).matcher(siamese_ops::distance::Distance::SquaredL2);
    assert!(m.between(&sets[..k * d], &moved_sets[k * d..]) < 1e-9);
    assert!(m.between(&sets[..k * d], &sets[k * d..]) > 0.0);

    // Another copy count: the set grows, and its first copies are the 32-copy set's (copy j
    // draws stream j of the image's generator, whatever the count).
    let sets64 = embed_flat(&enc, &ab, 2, 64, Tta::AffineSet(64))?;
    assert_eq!(sets64.len(), 2 * 64 * d);
    assert!(diff(&sets64[..k * d], &sets[..k * d]) < 1e-5);
    assert!(diff(&sets64[64 * d..(64 + k) * d], &sets[k * d..2 * k * d]) < 1e-5);
    Ok(())
}

#[test]
fn tta_names_round_trip_and_bad_ones_are_refused() -> anyhow::Result<()> {
    use siamese_train::Tta;
    // The bare names mean the 32 copies that files written before the count was
    // configurable were made with, and are written back bare.
    for (name, tta) in [
        ("none", Tta::None),
        ("hflip", Tta::Hflip),
        ("affine", Tta::Affine(32)),
        ("affine-set", Tta::AffineSet(32)),
        ("affine:8", Tta::Affine(8)),
        ("affine-set:64", Tta::AffineSet(64)),
    ] {
        assert_eq!(Tta::from_name(name)?, tta, "{name}");
        assert_eq!(tta.name(), name);
        let json = serde_json::to_string(&tta)?;
        assert_eq!(json, format!("\"{name}\""));
        assert_eq!(serde_json::from_str::<Tta>(&json)?, tta);
    }
    assert_eq!(Tta::from_name("affine-set:32")?.name(), "affine-set");
    assert_eq!(Tta::AffineSet(64).set_size(), 64);
    assert_eq!(Tta::Affine(64).copies(), 64);
    for (bad, says) in [
        ("affine-set:1", "from 2 to 1024"),
        ("affine-set:2000", "from 2 to 1024"),
        ("affine:many", "from 2 to 1024"),
        ("hflip:4", "only affine and affine-set"),
        ("rotate", "unknown test-time augmentation `rotate`"),
    ] {
        let e = Tta::from_name(bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(says), "{bad}: {e}");
    }
    assert!(serde_json::from_str::<Tta>("\"affine-set:0\"").is_err());
    Ok(())
}

/// Values in a model file that a flag would refuse are refused when the file is opened:
/// negative, infinite or NaN thresholds, rates outside [0, 1], a zero standard deviation, and
/// an unknown format tag. A valid file still opens.
#[test]
fn model_files_with_out_of_range_metadata_are_refused_when_opened() -> Result<()> {
    use siamese_data::Preprocess;
    use siamese_encoder::{Architecture, Encoder, EncoderConfig};
    use siamese_ops::distance::Distance;
    use siamese_train::{Calibration, Model, ModelMeta, Provenance, Tta};
    let cfg = EncoderConfig::for_arch(Architecture::conv4(), 1, 20, 18);
    let bytes_of = |meta: &ModelMeta| -> Result<Vec<u8>> {
        let model = Model {
            encoder: Encoder::new(&cfg, 3, &Device::Cpu)?,
            meta: meta.clone(),
            extra: Vec::new(),
            face: None,
        };
        Ok(model.to_bytes()?)
    };
    let meta = ModelMeta {
        preprocess: Preprocess::new(1, 18, 20),
        distance: Distance::SquaredL2,
        calibration: Some(Calibration {
            threshold: 1.0,
            accuracy: 0.9,
            far: 0.1,
            frr: 0.1,
            pairs: 10,
            source: "test".into(),
        }),
        provenance: Provenance::default(),
        tta: Tta::None,
    };
    Model::from_bytes(&bytes_of(&meta)?, &Device::Cpu)?;
    let with_threshold = |t: f32| {
        let mut m = meta.clone();
        if let Some(c) = m.calibration.as_mut() {
            c.threshold = t;
        }
        m
    };
    for bad in [
        with_threshold(-1.0),
        with_threshold(f32::INFINITY),
        with_threshold(f32::NAN),
        ModelMeta {
            preprocess: Preprocess::new(1, 18, 20).with_normalisation(vec![0.5], vec![0.0]),
            ..meta.clone()
        },
    ] {
        let bytes = bytes_of(&bad)?;
        let err = Model::from_bytes(&bytes, &Device::Cpu)
            .unwrap_err()
            .to_string();
        // NaN and infinity are written as JSON null, which the reader refuses as such.
        assert!(
            err.contains("threshold") || err.contains("std") || err.contains("null"),
            "{err}"
        );
    }
    let mut far = meta.clone();
    if let Some(c) = far.calibration.as_mut() {
        c.far = 2.0;
    }
    let err = Model::from_bytes(&bytes_of(&far)?, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("far"), "{err}");
    // An unknown format tag.
    let good = bytes_of(&meta)?;
    let needle = b"siamese-model/1";
    let at = good
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("format tag in the header");
    let mut future = good.clone();
    future[at + needle.len() - 1] = b'9';
    let err = Model::from_bytes(&future, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("siamese-model/9"), "{err}");
    Ok(())
}
