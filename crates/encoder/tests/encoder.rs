//! Encoder tests: shapes per architecture, determinism, save/load round trips and corrupt files.

use anyhow::Result;
use candle_core::{DType, Device, ModuleT, Tensor};
use siamese_encoder::io::{from_safetensors, read_metadata, to_safetensors, CONFIG_KEY};
use siamese_encoder::{Encoder, EncoderConfig};
use std::collections::HashMap;

fn input(n: usize, c: usize, h: usize, w: usize, seed: u64) -> Result<Tensor> {
    // A deterministic pseudo-random batch in [0, 1) (LCG), so tests need no RNG crate.
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..n * c * h * w)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    Ok(Tensor::from_vec(data, (n, c, h, w), &Device::Cpu)?)
}

fn check_shape(arch: &str, c: usize, h: usize, w: usize) -> Result<()> {
    let cfg = EncoderConfig::new(arch, c, h, w)?;
    let enc = Encoder::new(&cfg, 1, &Device::Cpu)?;
    let x = input(2, c, h, w, 7)?;
    for train in [true, false] {
        let y = enc.forward_t(&x, train)?;
        assert_eq!(y.dims(), &[2, 128], "{arch} {c}×{h}×{w} train={train}");
        let v: Vec<f32> = y.flatten_all()?.to_vec1()?;
        assert!(v.iter().all(|x| x.is_finite()), "{arch}: non-finite output");
    }
    Ok(())
}

#[test]
fn output_shapes_across_input_range() -> Result<()> {
    check_shape("koch", 1, 105, 105)?;
    check_shape("koch", 1, 96, 80)?;
    for s in [28, 56, 84, 105] {
        check_shape("conv4", 1, s, s)?;
    }
    check_shape("conv4", 3, 64, 48)?;
    check_shape("resnet", 1, 112, 92)?;
    check_shape("resnet", 3, 112, 112)?;
    check_shape("resnet", 1, 28, 28)?;
    Ok(())
}

#[test]
fn too_small_inputs_and_bad_configs_are_errors() -> Result<()> {
    let err = EncoderConfig::new("koch", 1, 28, 28)
        .unwrap_err()
        .to_string();
    assert!(err.contains("too small"), "{err}");
    assert!(EncoderConfig::new("conv4", 1, 8, 8).is_err());
    assert!(EncoderConfig::new("vgg", 1, 105, 105).is_err());
    assert!(EncoderConfig::new("conv4", 2, 28, 28).is_err());
    let cfg = EncoderConfig::new("conv4", 1, 28, 28)?;
    let enc = Encoder::new(&cfg, 0, &Device::Cpu)?;
    let err = enc
        .forward_t(&input(1, 1, 32, 28, 0)?, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected input"), "{err}");
    Ok(())
}

#[test]
fn koch_parameter_count_matches_the_paper_layout() -> Result<()> {
    // conv1 1→64 10×10, conv2 64→128 7×7, conv3 128→128 4×4, conv4 128→256 4×4 (with biases),
    // fc 256·6·6 → 128: counted by hand from Koch et al. 2015, Figure 4, with a 128-d output.
    let expected = (64 * 100 + 64)
        + (128 * 64 * 49 + 128)
        + (128 * 128 * 16 + 128)
        + (256 * 128 * 16 + 256)
        + (9216 * 128 + 128);
    let enc = Encoder::new(&EncoderConfig::new("koch", 1, 105, 105)?, 0, &Device::Cpu)?;
    assert_eq!(enc.params().count(), expected);
    Ok(())
}

#[test]
fn same_seed_same_parameters_and_pytorch_init_bounds() -> Result<()> {
    let cfg = EncoderConfig::new("conv4", 1, 28, 28)?;
    let a = Encoder::new(&cfg, 3, &Device::Cpu)?;
    let b = Encoder::new(&cfg, 3, &Device::Cpu)?;
    let c = Encoder::new(&cfg, 4, &Device::Cpu)?;
    let (name, wa) = &a.params().trainable()[0];
    assert_eq!(name, "block1.conv.weight");
    let wa: Vec<f32> = wa.flatten_all()?.to_vec1()?;
    let wb: Vec<f32> = b.params().trainable()[0].1.flatten_all()?.to_vec1()?;
    let wc: Vec<f32> = c.params().trainable()[0].1.flatten_all()?.to_vec1()?;
    assert_eq!(wa, wb);
    assert_ne!(wa, wc);
    // Kaiming-uniform with a = √5 is U(-1/√fan_in, 1/√fan_in); fan_in = 1·3·3.
    let bound = 1.0 / 3.0;
    assert!(wa.iter().all(|w| w.abs() <= bound));
    assert!(wa.iter().any(|w| w.abs() > 0.8 * bound));
    Ok(())
}

#[test]
fn batchnorm_train_and_eval_differ_and_running_stats_move() -> Result<()> {
    let cfg = EncoderConfig::new("conv4", 1, 28, 28)?;
    let enc = Encoder::new(&cfg, 0, &Device::Cpu)?;
    let x = (input(4, 1, 28, 28, 1)? * 3.0)?;
    let before: Vec<f32> = buffer(&enc, "block1.bn.running_mean")?;
    assert!(before.iter().all(|v| *v == 0.0));
    let train = enc.forward_t(&x, true)?;
    let after: Vec<f32> = buffer(&enc, "block1.bn.running_mean")?;
    assert!(
        after.iter().any(|v| v.abs() > 1e-4),
        "running mean did not move"
    );
    let eval = enc.forward_t(&x, false)?;
    let diff = (train - eval)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff > 1e-3, "train and eval outputs are equal");
    // Buffers are never handed to an optimiser.
    assert!(enc
        .params()
        .trainable()
        .iter()
        .all(|(n, _)| !n.contains("running")));
    Ok(())
}

fn buffer(enc: &Encoder, name: &str) -> Result<Vec<f32>> {
    let (_, v) = enc
        .params()
        .buffers()
        .iter()
        .find(|(n, _)| n == name)
        .ok_or_else(|| anyhow::anyhow!("no buffer {name}"))?;
    Ok(v.as_tensor().to_vec1()?)
}

#[test]
fn save_load_gives_bit_identical_outputs() -> Result<()> {
    for (arch, c, h, w) in [
        ("koch", 1, 105, 105),
        ("conv4", 1, 28, 28),
        ("resnet", 1, 112, 92),
    ] {
        let mut cfg = EncoderConfig::new(arch, c, h, w)?;
        cfg.l2_normalize = arch == "conv4";
        let enc = Encoder::new(&cfg, 11, &Device::Cpu)?;
        let x = input(3, c, h, w, 5)?;
        // A training-mode pass so the running statistics are not their initial values.
        enc.forward_t(&x, true)?;
        let mut meta = HashMap::new();
        meta.insert("note".to_string(), "hello".to_string());
        let head = Tensor::ones((1, 128), DType::F32, &Device::Cpu)?;
        let bytes = to_safetensors(&enc, &[("head.weight".to_string(), head)], &meta)?;
        let loaded = from_safetensors(&bytes, &Device::Cpu, &["head."])?;
        assert_eq!(loaded.encoder.config(), &cfg);
        assert_eq!(
            loaded.metadata.get("note").map(String::as_str),
            Some("hello")
        );
        assert!(loaded.extra.contains_key("head.weight"));
        let a: Vec<f32> = enc.embed(&x)?.flatten_all()?.to_vec1()?;
        let b: Vec<f32> = loaded.encoder.embed(&x)?.flatten_all()?.to_vec1()?;
        assert_eq!(a, b, "{arch}: outputs differ after a round trip");
    }
    Ok(())
}

#[test]
fn corrupt_or_mismatched_bytes_are_errors_naming_the_problem() -> Result<()> {
    let cfg = EncoderConfig::new("conv4", 1, 28, 28)?;
    let enc = Encoder::new(&cfg, 0, &Device::Cpu)?;
    let bytes = to_safetensors(&enc, &[], &HashMap::new())?;
    let dev = Device::Cpu;

    // Truncated, garbage, empty.
    for bad in [
        &bytes[..bytes.len() / 2],
        &b"not a model at all"[..],
        &[][..],
    ] {
        assert!(from_safetensors(bad, &dev, &[]).is_err());
    }
    // Every single-byte corruption of the header is an error or a valid model, never a panic.
    let header_len = 8 + u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    for i in (0..header_len).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        let _ = from_safetensors(&b, &dev, &[]);
    }

    // Missing tensor: drop one from a re-serialised map.
    let mut map = candle_core::safetensors::load_buffer(&bytes, &dev)?;
    let meta = read_metadata(&bytes)?;
    map.remove("block2.bn.running_var");
    let b = safetensors::serialize(map.iter().map(|(n, t)| (n.as_str(), t)), Some(meta.clone()))?;
    let err = from_safetensors(&b, &dev, &[]).unwrap_err().to_string();
    assert!(
        err.contains("block2.bn.running_var") && err.contains("missing"),
        "{err}"
    );

    // Wrongly shaped tensor.
    let mut map = candle_core::safetensors::load_buffer(&bytes, &dev)?;
    map.insert("fc.bias".into(), Tensor::zeros(7, DType::F32, &dev)?);
    let b = safetensors::serialize(map.iter().map(|(n, t)| (n.as_str(), t)), Some(meta.clone()))?;
    let err = from_safetensors(&b, &dev, &[]).unwrap_err().to_string();
    assert!(err.contains("fc.bias") && err.contains("shape"), "{err}");

    // Extra tensor.
    let mut map = candle_core::safetensors::load_buffer(&bytes, &dev)?;
    map.insert("mystery".into(), Tensor::zeros(1, DType::F32, &dev)?);
    let b = safetensors::serialize(map.iter().map(|(n, t)| (n.as_str(), t)), Some(meta.clone()))?;
    let err = from_safetensors(&b, &dev, &[]).unwrap_err().to_string();
    assert!(err.contains("mystery"), "{err}");

    // No config: a safetensors file that is not ours.
    let map = candle_core::safetensors::load_buffer(&bytes, &dev)?;
    let b = safetensors::serialize(map.iter().map(|(n, t)| (n.as_str(), t)), None)?;
    let err = from_safetensors(&b, &dev, &[]).unwrap_err().to_string();
    assert!(err.contains(CONFIG_KEY), "{err}");
    Ok(())
}

#[test]
fn ensemble_members_are_independent_networks_whose_distances_average() -> Result<()> {
    let mut one = EncoderConfig::new("conv4", 1, 28, 28)?;
    one.l2_normalize = true;
    let three = EncoderConfig {
        members: 3,
        ..one.clone()
    };
    assert_eq!(three.member_dims(), vec![43, 43, 42]);
    let single = Encoder::new(&one, 4, &Device::Cpu)?;
    let ens = Encoder::new(&three, 4, &Device::Cpu)?;
    // Member 0 is the plain network: same names, same initial values.
    let names = |e: &Encoder| -> Vec<String> { e.params().all().map(|(n, _)| n.clone()).collect() };
    assert_eq!(
        ens.params().count(),
        3 * single.params().count() - 2 * 65 * 128
    );
    assert!(names(&ens).iter().any(|n| n == "m2.block4.conv.weight"));
    let w0 = |e: &Encoder| -> Result<Vec<f32>> {
        let (_, v) = e
            .params()
            .all()
            .find(|(n, _)| n == "block1.conv.weight")
            .ok_or_else(|| anyhow::anyhow!("no block1.conv.weight"))?;
        Ok(v.flatten_all()?.to_vec1()?)
    };
    assert_eq!(w0(&single)?, w0(&ens)?);
    let x = input(4, 1, 28, 28, 9)?;
    for train in [true, false] {
        let y = ens.forward_t(&x, train)?;
        assert_eq!(y.dims(), &[4, 128]);
        let y: Vec<Vec<f32>> = y.to_vec2()?;
        // Unit length overall, each member's share of length 1/√3.
        for row in &y {
            let norm = |r: &[f32]| r.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm(row) - 1.0).abs() < 1e-5);
            for (a, b) in [(0, 43), (43, 86), (86, 128)] {
                assert!((norm(&row[a..b]) - (1.0f32 / 3.0).sqrt()).abs() < 1e-5);
            }
        }
        // The squared distance is the mean of the members' (each on unit-length encodings).
        let sq =
            |a: &[f32], b: &[f32]| -> f32 { a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum() };
        let whole = sq(&y[0], &y[1]);
        let parts: f32 = [(0, 43), (43, 86), (86, 128)]
            .iter()
            .map(|&(a, b)| 3.0 * sq(&y[0][a..b], &y[1][a..b]))
            .sum::<f32>()
            / 3.0;
        assert!((whole - parts).abs() < 1e-5, "{whole} vs {parts}");
    }
    // A round trip keeps every member.
    let bytes = to_safetensors(&ens, &[], &HashMap::new())?;
    let loaded = from_safetensors(&bytes, &Device::Cpu, &[])?;
    assert_eq!(loaded.encoder.config(), &three);
    let a: Vec<f32> = ens.embed(&x)?.flatten_all()?.to_vec1()?;
    let b: Vec<f32> = loaded.encoder.embed(&x)?.flatten_all()?.to_vec1()?;
    assert_eq!(a, b);
    // Older configs without the field read as one member; zero or too many members are errors.
    let mut json: serde_json::Value = serde_json::to_value(&one)?;
    json.as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("not an object"))?
        .remove("members");
    let old: EncoderConfig = serde_json::from_value(json)?;
    assert_eq!(old.members, 1);
    for bad in [0, 129] {
        let cfg = EncoderConfig {
            members: bad,
            ..one.clone()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("members"), "{err}");
    }
    Ok(())
}

#[test]
fn members_at_their_own_sizes_see_the_area_resampled_input() -> Result<()> {
    let dev = Device::Cpu;
    let mut cfg = EncoderConfig::new("conv4", 1, 40, 40)?;
    cfg.l2_normalize = true;
    cfg.members = 2;
    cfg.member_sizes = vec![[28, 28], [40, 40]];
    cfg.validate()?;
    let ens = Encoder::new(&cfg, 5, &dev)?;
    // Each member's linear layer reads its own feature map: 1×1 at 28×28, 2×2 at 40×40.
    let shape = |name: &str| -> Result<Vec<usize>> {
        let (_, t) = ens
            .params()
            .all()
            .find(|(n, _)| n.as_str() == name)
            .ok_or_else(|| anyhow::anyhow!("no {name}"))?;
        Ok(t.dims().to_vec())
    };
    assert_eq!(shape("fc.weight")?, vec![64, 64]);
    assert_eq!(shape("m1.fc.weight")?, vec![64, 256]);
    // Member 0 is a plain 28×28 network (same names, same initial values) applied to the
    // input area-resampled from 40×40: every 10×10 block of input becomes 7×7.
    let mut plain_cfg = EncoderConfig::new("conv4", 1, 28, 28)?;
    plain_cfg.l2_normalize = true;
    plain_cfg.embedding_dim = 64;
    let plain = Encoder::new(&plain_cfg, 5, &dev)?;
    let x = input(3, 1, 40, 40, 11)?;
    let small = siamese_ops::resample::AreaResize::new((40, 40), (28, 28), &dev)?.apply(&x)?;
    let want: Vec<Vec<f32>> = plain.embed(&small)?.to_vec2()?;
    let got: Vec<Vec<f32>> = ens.embed(&x)?.to_vec2()?;
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in g[..64].iter().zip(w) {
            assert!((a * 2f32.sqrt() - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
    // A round trip keeps the sizes; older configs read as members seeing the input.
    let bytes = to_safetensors(&ens, &[], &HashMap::new())?;
    let loaded = from_safetensors(&bytes, &dev, &[])?;
    assert_eq!(loaded.encoder.config(), &cfg);
    let json = serde_json::to_value(EncoderConfig::new("conv4", 1, 28, 28)?)?;
    assert!(json.get("member_sizes").is_none());
    let old: EncoderConfig = serde_json::from_value(json)?;
    assert!(old.member_sizes.is_empty());
    assert_eq!(old.member_size(0), (28, 28));
    // A size per member, each large enough for the network.
    for (sizes, what) in [
        (vec![[28, 28]], "member sizes"),
        (vec![[28, 28], [8, 8]], "too small"),
    ] {
        let bad = EncoderConfig {
            member_sizes: sizes,
            ..cfg.clone()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains(what), "{err}");
    }
    Ok(())
}

#[test]
fn widths_set_each_layer_of_every_architecture() -> Result<()> {
    use siamese_encoder::Architecture;
    let conv4 = Architecture::conv4().with_widths(&[32, 64, 128])?;
    assert_eq!(conv4.conv4_widths(), vec![32, 64, 128]);
    assert_eq!(Architecture::conv4().conv4_widths(), vec![64; 4]);
    let cfg = EncoderConfig::for_arch(conv4, 1, 28, 28);
    // 28 → 14 → 7 → 3 after three blocks; the last block's channels feed the linear layer.
    assert_eq!(cfg.feature_shape()?, (128, 3, 3));
    let enc = Encoder::new(&cfg, 1, &Device::Cpu)?;
    let dims = |name: &str| -> Option<Vec<usize>> {
        enc.params()
            .all()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, t)| t.dims().to_vec())
    };
    assert_eq!(dims("block2.conv.weight"), Some(vec![64, 32, 3, 3]));
    assert_eq!(dims("block4.conv.weight"), None);
    assert_eq!(enc.embed(&input(2, 1, 28, 28, 3)?)?.dims(), &[2, 128]);
    assert!(matches!(
        Architecture::koch().with_widths(&[8, 8, 8, 8])?,
        Architecture::Koch {
            widths: [8, 8, 8, 8]
        }
    ));
    for (arch, bad) in [
        (Architecture::koch(), &[8, 8, 8][..]),
        (Architecture::resnet(), &[8][..]),
        (Architecture::conv4(), &[8, 0][..]),
        (Architecture::conv4(), &[][..]),
    ] {
        assert!(arch.with_widths(bad).is_err(), "{arch:?} {bad:?}");
    }
    Ok(())
}

#[test]
fn taps_parse_validate_and_default_to_none() -> Result<()> {
    use siamese_encoder::Tap;
    assert_eq!(
        Tap::parse("3:2")?,
        Tap {
            block: 3,
            weight: 2.0
        }
    );
    for bad in ["3", "0:1", "3:0", "3:-1", "x:1", "3:nan", ""] {
        let err = Tap::parse(bad).unwrap_err().to_string();
        assert!(err.contains("BLOCK:WEIGHT"), "{bad}: {err}");
    }
    let mut cfg = EncoderConfig::new("conv4", 1, 28, 28)?;
    // A config written before taps existed reads as having none.
    let json = serde_json::to_string(&cfg)?;
    assert!(!json.contains("taps"), "{json}");
    let old: EncoderConfig = serde_json::from_str(&json)?;
    assert!(old.taps.is_empty());
    assert_eq!(old.output_dim(), 128);

    cfg.taps = vec![Tap::parse("4:1.5")?, Tap::parse("2:2")?];
    cfg.validate()?;
    assert_eq!(cfg.tap_dims(), vec![128, 128]);
    assert_eq!(cfg.output_dim(), 384);
    let back: EncoderConfig = serde_json::from_str(&serde_json::to_string(&cfg)?)?;
    assert_eq!(back, cfg);

    let mut past = cfg.clone();
    past.taps = vec![Tap::parse("5:1")?];
    let err = past.validate().unwrap_err().to_string();
    assert!(err.contains("between 1 and 4"), "{err}");
    let mut koch = EncoderConfig::new("koch", 1, 105, 105)?;
    koch.taps = vec![Tap::parse("1:1")?];
    let err = koch.validate().unwrap_err().to_string();
    assert!(err.contains("taps read conv4 blocks"), "{err}");
    let mut ens = cfg.clone();
    ens.members = 2;
    assert!(ens.validate().is_err());

    // A model saved with taps loads with them: same encodings, taps included.
    let enc = Encoder::new(&cfg, 3, &Device::Cpu)?;
    let bytes = to_safetensors(&enc, &[], &HashMap::new())?;
    let loaded = from_safetensors(&bytes, &Device::Cpu, &[])?;
    assert_eq!(loaded.encoder.config(), &cfg);
    let x = input(2, 1, 28, 28, 5)?;
    let a: Vec<f32> = enc.embed(&x)?.flatten_all()?.to_vec1()?;
    let b: Vec<f32> = loaded.encoder.embed(&x)?.flatten_all()?.to_vec1()?;
    assert_eq!(a.len(), 2 * 384);
    assert_eq!(a, b);
    Ok(())
}

/// `Encoder::from_tensors` rebuilds an encoder from named tensors (dlib-resnet here, whose
/// names follow module paths) and names a missing, misshapen or unexpected tensor.
#[test]
fn from_tensors_sets_every_parameter_and_names_bad_ones() -> Result<()> {
    let cfg = EncoderConfig::new("dlib-resnet", 3, 150, 150)?;
    let a = Encoder::new(&cfg, 3, &Device::Cpu)?;
    let names: Vec<&str> = a.params().all().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "stem.weight",
            "stem.bias",
            "level4.0.conv1.weight",
            "level4.0.conv1.bias"
        ]
    );
    assert_eq!(names[names.len() - 1], "fc.weight");
    assert!(names.contains(&"level0.0.conv2.bias"));
    let tensors: HashMap<String, Tensor> = a
        .params()
        .all()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let b = Encoder::from_tensors(&cfg, tensors.clone(), &Device::Cpu)?;
    let x = input(2, 3, 150, 150, 1)?;
    let (ya, yb): (Vec<f32>, Vec<f32>) = (
        a.embed(&x)?.flatten_all()?.to_vec1()?,
        b.embed(&x)?.flatten_all()?.to_vec1()?,
    );
    assert_eq!(ya, yb);

    let mut missing = tensors.clone();
    missing.remove("level2.1.conv2.weight");
    let err = Encoder::from_tensors(&cfg, missing, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string()
            .contains("`level2.1.conv2.weight` is missing"),
        "{err}"
    );
    let mut wrong = tensors.clone();
    wrong.insert(
        "fc.weight".into(),
        Tensor::zeros((256, 128), DType::F32, &Device::Cpu)?,
    );
    let err = Encoder::from_tensors(&cfg, wrong, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string().contains("`fc.weight` has shape [256, 128]"),
        "{err}"
    );
    let mut extra = tensors;
    extra.insert(
        "fc.bias".into(),
        Tensor::zeros(128, DType::F32, &Device::Cpu)?,
    );
    let err = Encoder::from_tensors(&cfg, extra, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string().contains("unexpected tensor `fc.bias`"),
        "{err}"
    );
    Ok(())
}

/// Sizes in a model file's config beyond their limits are errors before anything is built:
/// an embedding of 10^12 values, a 10^9 x 10^9 input, a width of 10^9 channels.
#[test]
fn absurd_sizes_in_a_files_config_are_refused_before_allocation() -> Result<()> {
    let cfg = EncoderConfig::new("conv4", 1, 28, 28)?;
    let enc = Encoder::new(&cfg, 0, &Device::Cpu)?;
    let bytes = to_safetensors(&enc, &[], &HashMap::new())?;
    let dev = Device::Cpu;
    let map = candle_core::safetensors::load_buffer(&bytes, &dev)?;
    let good = serde_json::to_value(&cfg)?;
    let edits: [(&str, serde_json::Value, &str); 4] = [
        (
            "embedding_dim",
            serde_json::json!(1_000_000_000_000u64),
            "embedding_dim",
        ),
        ("height", serde_json::json!(1_000_000_000u64), "limit"),
        ("width", serde_json::json!(1_000_000_000u64), "limit"),
        ("members", serde_json::json!(1_000_000u64), "members"),
    ];
    for (field, value, named) in edits {
        let mut c = good.clone();
        c[field] = value;
        let mut meta = read_metadata(&bytes)?;
        meta.insert(CONFIG_KEY.to_string(), c.to_string());
        let b = safetensors::serialize(map.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))?;
        let err = from_safetensors(&b, &dev, &[]).unwrap_err().to_string();
        assert!(
            err.contains(named) && err.contains("limit"),
            "{field}: {err}"
        );
    }
    let mut c = good.clone();
    c["arch"]["width"] = serde_json::json!(1_000_000_000u64);
    let mut meta = read_metadata(&bytes)?;
    meta.insert(CONFIG_KEY.to_string(), c.to_string());
    let b = safetensors::serialize(map.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))?;
    let err = from_safetensors(&b, &dev, &[]).unwrap_err().to_string();
    assert!(err.contains("width") && err.contains("limit"), "{err}");
    Ok(())
}
