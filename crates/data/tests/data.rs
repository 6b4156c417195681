//! Integration tests of siamese-data on the real data in `../shared/data` and on small
//! hand-made files.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use siamese_data::*;

/// `../shared/data`, relative to the workspace root.
fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn small(n: u8) -> PathBuf {
    shared().join(format!("omniglot/images_background_small{n}.zip"))
}

fn att() -> PathBuf {
    shared().join("att_faces")
}

#[test]
fn omniglot_small_zips_open_in_place_and_merge() -> Result<()> {
    let s1 = Dataset::open(small(1))?;
    let s2 = Dataset::open(small(2))?;
    assert_eq!((s1.num_classes(), s1.len()), (136, 136 * 20));
    assert_eq!((s2.num_classes(), s2.len()), (156, 156 * 20));
    assert!(s1.class_counts().iter().all(|&c| c == 20));
    assert_eq!(s1.classes[0], "Balinese/character01");
    assert_eq!(
        s1.alphabets(),
        ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    );
    let merged = Dataset::merge([s1.clone(), s2]);
    assert_eq!((merged.num_classes(), merged.len()), (242, 242 * 20));
    assert!(merged.class_counts().iter().all(|&c| c == 20));
    // Greek comes from small1 (first occurrence wins).
    let g = merged.class_index("Greek/character01").context("greek")?;
    let first = merged.items.iter().find(|i| i.class == g).context("item")?;
    assert_eq!(
        first.source,
        s1.items[s1
            .items
            .iter()
            .position(|i| s1.classes[i.class] == "Greek/character01")
            .context("s1")?]
        .source
    );
    // Deterministic.
    assert_eq!(Dataset::open(small(1))?, s1);
    Ok(())
}

#[test]
fn omniglot_one_bit_png_decodes_to_black_and_white() -> Result<()> {
    let s1 = Dataset::open(small(1))?;
    let img = s1.items[0].source.load()?;
    assert_eq!((img.width(), img.height()), (105, 105));
    let g = img.to_luma8();
    assert!(g.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    // Strokes are black on a white background.
    let white = g.pixels().filter(|p| p.0[0] == 255).count();
    assert!(white > 105 * 105 / 2, "{white}");
    let t = Preprocess::omniglot().apply(&img);
    assert_eq!(t.len(), 105 * 105);
    assert_eq!(t[0], 0.0, "inverted background is 0");
    assert!(t.contains(&1.0));
    Ok(())
}

#[test]
fn omniglot_small_set_loads_quickly_into_one_tensor() -> Result<()> {
    let merged = Dataset::merge([Dataset::open(small(1))?, Dataset::open(small(2))?]);
    let pre = Preprocess::omniglot();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let t0 = std::time::Instant::now();
    let (cache, skipped) =
        ImageCache::load_all_with_progress(&merged, &pre, false, &|_, total| {
            assert_eq!(total, 4840);
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })?;
    let dt = t0.elapsed();
    eprintln!(
        "loaded {} Omniglot images at 105x105 in {dt:?}",
        cache.len()
    );
    assert!(skipped.is_empty());
    assert_eq!(calls.into_inner(), 4840);
    assert_eq!(cache.len(), 4840);
    assert_eq!(cache.data.len(), 4840 * 105 * 105);
    assert_eq!(
        cache.labels,
        merged.items.iter().map(|i| i.class).collect::<Vec<_>>()
    );
    // Same as decoding one item alone.
    let one = pre.apply(&merged.items[777].source.load()?);
    assert_eq!(cache.image(777).context("image")?, &one[..]);
    // Shrinking to 28x28 uses area averaging: values stay in [0, 1] and mean ink is kept.
    let small_pre = Preprocess::new(1, 28, 28).with_invert(true);
    let t0 = std::time::Instant::now();
    let (c28, _) = ImageCache::load_all(&merged, &small_pre, false)?;
    eprintln!(
        "loaded {} Omniglot images at 28x28 in {:?}",
        c28.len(),
        t0.elapsed()
    );
    let m105: f32 = cache.data.iter().sum::<f32>() / cache.data.len() as f32;
    let m28: f32 = c28.data.iter().sum::<f32>() / c28.data.len() as f32;
    assert!((m105 - m28).abs() < 2e-3, "{m105} vs {m28}");
    assert!(c28.data.iter().all(|v| (0.0..=1.0 + 1e-5).contains(v)));
    Ok(())
}

#[test]
fn att_faces_folder() -> Result<()> {
    let ds = Dataset::open(att())?;
    assert_eq!((ds.num_classes(), ds.len()), (30, 300));
    assert_eq!(&ds.classes[..3], ["s1", "s2", "s3"]);
    assert_eq!(ds.classes[29], "s30");
    let first = ds.items[0].source.file_name().context("name")?.to_string();
    let tenth = ds.items[9].source.file_name().context("name")?.to_string();
    assert_eq!((first.as_str(), tenth.as_str()), ("1.pgm", "10.pgm"));
    let img = ds.items[0].source.load()?;
    assert_eq!((img.width(), img.height()), (92, 112));
    let pre = Preprocess::new(1, 92, 112).with_normalisation(vec![0.5], vec![0.25]);
    assert_eq!(pre.shape(), [1, 112, 92]);
    let (cache, _) = ImageCache::load_all(&ds, &pre, false)?;
    assert_eq!(cache.data.len(), 300 * 112 * 92);
    // Raw value v/255 normalised by (x - 0.5) / 0.25.
    let raw = img.to_luma8();
    let want = (raw.get_pixel(5, 7).0[0] as f32 / 255.0 - 0.5) / 0.25;
    assert!((cache.data[7 * 92 + 5] - want).abs() < 1e-5);
    // RGB output from grey repeats the grey plane.
    let rgb = Preprocess::new(3, 46, 56).apply(&img);
    assert_eq!(rgb.len(), 3 * 46 * 56);
    assert_eq!(rgb[..46 * 56], rgb[46 * 56..2 * 46 * 56]);
    // Selecting subjects.
    let sel = ds.classes_matching(&parse_class_selection("s1-s20,s25")?)?;
    assert_eq!(sel.num_classes(), 21);
    assert_eq!(sel.classes[20], "s25");
    assert!(ds.select("s99").is_err());
    assert_eq!(ds.select("s3-s5")?.classes, ["s3", "s4", "s5"]);
    Ok(())
}

#[test]
fn pgm_binary_and_ascii_decode() -> Result<()> {
    let p2 = b"P2\n# a comment\n3 2\n255\n0 128 255\n10 20 30\n";
    let img = decode(p2, "tiny.pgm")?;
    assert_eq!((img.width(), img.height()), (3, 2));
    assert_eq!(img.to_luma8().into_raw(), [0, 128, 255, 10, 20, 30]);
    let mut p5 = b"P5 2 2 255\n".to_vec();
    p5.extend_from_slice(&[1, 2, 3, 4]);
    let img = decode(&p5, "tiny5.pgm")?;
    assert_eq!(img.to_luma8().into_raw(), [1, 2, 3, 4]);
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("x.pgm");
    std::fs::write(&p, p2)?;
    assert_eq!(
        load_image(&p)?.to_luma8().into_raw(),
        [0, 128, 255, 10, 20, 30]
    );
    let e = decode(b"not an image", "junk.png").unwrap_err();
    assert!(e.to_string().contains("junk.png"), "{e}");
    Ok(())
}

#[test]
fn truncated_image_names_the_file_and_can_be_skipped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let src = Dataset::open(small(1))?;
    for (i, name) in ["a/x", "a/y", "b/z"].iter().enumerate() {
        let bytes = src.items[i].source.read_bytes()?.context("bytes")?;
        let p = dir.path().join(format!("{name}.png"));
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        let keep = if *name == "a/y" {
            bytes.len() / 2
        } else {
            bytes.len()
        };
        std::fs::write(&p, &bytes[..keep])?;
    }
    // Hidden and non-image files are not part of the data set.
    std::fs::write(dir.path().join("a/.hidden.png"), b"x")?;
    std::fs::write(dir.path().join("a/notes.txt"), b"x")?;
    let ds = Dataset::open(dir.path())?;
    assert_eq!((ds.num_classes(), ds.len()), (2, 3));
    let pre = Preprocess::new(1, 32, 32);
    let err = ImageCache::load_all(&ds, &pre, false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Decode { .. }), "{msg}");
    assert!(msg.contains("y.png"), "{msg}");
    let (cache, skipped) = ImageCache::load_all(&ds, &pre, true)?;
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.origin, [0, 2]);
    assert_eq!(cache.labels, [0, 1]);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].index, 1);
    assert!(skipped[0].error.to_string().contains("y.png"));
    Ok(())
}

#[test]
fn synthetic_is_deterministic_and_separable() -> Result<()> {
    let a = synthetic(10, 8, 32, 7);
    let b = synthetic(10, 8, 32, 7);
    let c = synthetic(10, 8, 32, 8);
    let pre = Preprocess::new(1, 32, 32).with_invert(true);
    let (ca, _) = ImageCache::load_all(&a, &pre, false)?;
    let (cb, _) = ImageCache::load_all(&b, &pre, false)?;
    let (cc, _) = ImageCache::load_all(&c, &pre, false)?;
    assert_eq!(ca.data, cb.data);
    assert_ne!(ca.data, cc.data);
    assert_eq!((a.num_classes(), a.len()), (10, 80));
    assert_eq!(a.classes[0], "glyph000");
    // Samples of a class differ from each other.
    assert_ne!(ca.image(0), ca.image(1));
    // Leave-one-out nearest neighbour on raw pixels: provenance is only the claim that the
    // classes are visibly separable; 10 classes give 10 % by chance.
    let n = ca.len();
    let mut correct = 0;
    for i in 0..n {
        let xi = ca.image(i).context("i")?;
        let best = (0..n)
            .filter(|&j| j != i)
            .map(|j| {
                let xj = ca.image(j).unwrap_or_default();
                let d: f32 = xi.iter().zip(xj).map(|(p, q)| (p - q) * (p - q)).sum();
                (d, j)
            })
            .min_by(|x, y| x.0.total_cmp(&y.0))
            .context("nn")?;
        correct += usize::from(ca.labels[best.1] == ca.labels[i]);
    }
    let acc = correct as f64 / n as f64;
    assert!(acc > 0.8, "nearest-neighbour accuracy {acc}");
    Ok(())
}

#[test]
fn augmentation_is_deterministic_and_identity_when_disabled() -> Result<()> {
    let ds = synthetic(4, 4, 28, 1);
    let pre = Preprocess::new(1, 28, 28).with_invert(true);
    let (cache, _) = ImageCache::load_all(&ds, &pre, false)?;
    let (c, h, w) = (1, 28, 28);
    let x = cache.image(3).context("image")?;
    let mut out = vec![0.0; x.len()];
    Augment::default().apply(x, c, h, w, &mut ChaCha8Rng::seed_from_u64(5), &mut out)?;
    assert_eq!(out, x);
    let aug = Augment {
        affine: true,
        hflip: true,
        brightness: 0.1,
        contrast: 0.2,
        strength: 1.0,
        ..Augment::default()
    };
    let mut o1 = vec![0.0; x.len()];
    let mut o2 = vec![0.0; x.len()];
    aug.apply(x, c, h, w, &mut ChaCha8Rng::seed_from_u64(9), &mut o1)?;
    aug.apply(x, c, h, w, &mut ChaCha8Rng::seed_from_u64(9), &mut o2)?;
    assert_eq!(o1, o2);
    assert_ne!(o1, x);
    assert!(aug
        .apply(x, c, h, w + 1, &mut ChaCha8Rng::seed_from_u64(9), &mut o2)
        .is_err());
    // Batch results do not depend on the thread count.
    let n = cache.len();
    let mut b1 = vec![0.0; cache.data.len()];
    let mut b2 = vec![0.0; cache.data.len()];
    Augment::koch().apply_batch(&cache.data, n, c, h, w, 42, &mut b1)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    pool.install(|| Augment::koch().apply_batch(&cache.data, n, c, h, w, 42, &mut b2))?;
    assert_eq!(b1, b2);
    assert_ne!(b1, cache.data);
    // Serde default: an empty object is "no augmentation".
    let parsed: Augment = serde_json::from_str("{}")?;
    assert!(parsed.is_identity());
    assert_eq!(parsed.strength, 1.0);
    // Strength 0 shrinks every affine range to nothing: the image comes back unchanged.
    let still = Augment {
        strength: 0.0,
        ..Augment::koch()
    };
    still.apply(x, c, h, w, &mut ChaCha8Rng::seed_from_u64(9), &mut o1)?;
    for (a, b) in o1.iter().zip(x) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    // Strength 2 moves pixels further than strength 1 on average, same random draws.
    let diff = |k: f32| -> Result<f32> {
        let aug = Augment {
            strength: k,
            ..Augment::koch()
        };
        let mut total = 0.0;
        for seed in 0..20 {
            let mut o = vec![0.0; x.len()];
            aug.apply(x, c, h, w, &mut ChaCha8Rng::seed_from_u64(seed), &mut o)?;
            total += o.iter().zip(x).map(|(a, b)| (a - b).abs()).sum::<f32>();
        }
        Ok(total)
    };
    assert!(diff(2.0)? > diff(1.0)?);
    Ok(())
}

#[test]
fn class_disjoint_split_is_disjoint_and_seeded() -> Result<()> {
    let ds = Dataset::open(small(1))?;
    let (train, held) = ds.class_disjoint_split(3, SplitSize::Count(20))?;
    assert_eq!((train.num_classes(), held.num_classes()), (116, 20));
    assert_eq!(train.len() + held.len(), ds.len());
    assert!(held.classes.iter().all(|c| !train.classes.contains(c)));
    assert_eq!(ds.class_disjoint_split(3, SplitSize::Count(20))?.1, held);
    assert_ne!(ds.class_disjoint_split(4, SplitSize::Count(20))?.1, held);
    let (_, frac) = ds.class_disjoint_split(3, SplitSize::Fraction(0.25))?;
    assert_eq!(frac.num_classes(), 34);
    assert!(ds.class_disjoint_split(3, SplitSize::Count(136)).is_err());
    assert!(ds
        .class_disjoint_split(3, SplitSize::Fraction(1.5))
        .is_err());
    let (greek, rest) = ds.split_by_alphabet(&["Greek"]);
    assert_eq!((greek.num_classes(), rest.num_classes()), (24, 112));
    let (by_prefix, _) = ds.split_by_prefix(&["Greek/", "Latin/"]);
    assert_eq!(by_prefix.num_classes(), 50);
    Ok(())
}

#[test]
fn oneshot_runs_round_trip_with_different_drawers() -> Result<()> {
    let s2 = Dataset::open(small(2))?;
    let (new, _) = s2.split_by_alphabet(&["Japanese_(katakana)", "Sanskrit", "Tagalog"]);
    assert_eq!(new.num_classes(), 47 + 42 + 17);
    let dir = tempfile::tempdir()?;
    let config = OneShotRunsConfig {
        runs: 4,
        ways: 20,
        seed: 11,
    };
    let runs = write_oneshot_runs(&new, dir.path(), &config)?;
    assert_eq!(runs.runs.len(), 4);
    assert_eq!(runs.num_trials(), 80);
    // Every written file is byte-identical to one drawing; map bytes back to (class, drawer).
    let mut origin = std::collections::HashMap::new();
    for item in &new.items {
        let bytes = item.source.read_bytes()?.context("bytes")?;
        let drawer = drawer_of(item.source.file_name().context("name")?).to_string();
        origin.insert(bytes, (new.classes[item.class].clone(), drawer));
    }
    let who = |s: &ImageSource| -> Result<(String, String)> {
        let b = s.read_bytes()?.context("bytes")?;
        origin
            .get(&b)
            .cloned()
            .context("written image is not a drawing of the set")
    };
    for run in &runs.runs {
        assert_eq!(run.training.len(), 20);
        let train: Vec<(String, String)> = run.training.iter().map(who).collect::<Result<_>>()?;
        let alphabet = alphabet_of(&train[0].0).to_string();
        assert!(
            alphabet == "Japanese_(katakana)" || alphabet == "Sanskrit",
            "{alphabet}"
        );
        let mut answers = Vec::new();
        for t in &run.trials {
            let (class, drawer) = who(&t.test)?;
            assert_eq!(class, train[t.answer].0);
            assert_ne!(drawer, train[t.answer].1);
            answers.push(t.answer);
        }
        answers.sort();
        assert_eq!(answers, (0..20).collect::<Vec<_>>());
    }
    let labels = std::fs::read_to_string(dir.path().join("run01/class_labels.txt"))?;
    let first = labels.lines().next().context("line")?;
    assert!(
        first.starts_with("run01/test/item01.png run01/training/class"),
        "{first}"
    );
    // Reading back again, and from a zip of the same runs, gives the same answers.
    assert_eq!(OneShotRuns::open(dir.path())?, runs);
    let zip_path = dir.path().join("all_runs.zip");
    let mut zw = zip::ZipWriter::new(std::fs::File::create(&zip_path)?);
    for run in &runs.runs {
        for sub in ["training", "test"] {
            let mut names: Vec<_> = std::fs::read_dir(dir.path().join(&run.name).join(sub))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            names.sort();
            for n in names {
                zw.start_file(
                    format!("all_runs/{}/{sub}/{n}", run.name),
                    zip::write::SimpleFileOptions::default(),
                )?;
                zw.write_all(&std::fs::read(
                    dir.path().join(&run.name).join(sub).join(&n),
                )?)?;
            }
        }
        zw.start_file(
            format!("all_runs/{}/class_labels.txt", run.name),
            zip::write::SimpleFileOptions::default(),
        )?;
        zw.write_all(&std::fs::read(
            dir.path().join(&run.name).join("class_labels.txt"),
        )?)?;
    }
    zw.finish()?;
    let zruns = OneShotRuns::open(&zip_path)?;
    assert_eq!(zruns.runs.len(), 4);
    for (a, b) in zruns.runs.iter().zip(&runs.runs) {
        assert_eq!(a.name, b.name);
        let aa: Vec<usize> = a.trials.iter().map(|t| t.answer).collect();
        let bb: Vec<usize> = b.trials.iter().map(|t| t.answer).collect();
        assert_eq!(aa, bb);
        assert_eq!(who(&a.trials[0].test)?, who(&b.trials[0].test)?);
    }
    // Refuses to overwrite, and needs an alphabet with enough characters.
    assert!(write_oneshot_runs(&new, dir.path(), &config).is_err());
    let other = tempfile::tempdir()?;
    let too_many = OneShotRunsConfig { ways: 50, ..config };
    assert!(write_oneshot_runs(&new, other.path(), &too_many).is_err());
    Ok(())
}

#[test]
fn lfw_pairs_file_on_disk() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("pairs.txt");
    std::fs::write(
        &p,
        "2\t2\nAbel_Pacheco\t1\t4\nAkhmed_Zakayev\t1\t3\nAbdel_Madi_Shabneh\t1\tDean_Barker\t1\nAbdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1\n\
         Zico\t1\t2\nZoe_Ball\t1\t2\nA_B\t3\tC_D\t10\nE_F\t1\tG_H\t2\n",
    )?;
    let pairs = LfwPairs::open(&p)?;
    assert_eq!((pairs.folds, pairs.per_fold, pairs.pairs.len()), (2, 2, 8));
    let folds: Vec<usize> = pairs.pairs.iter().map(|p| p.fold).collect();
    assert_eq!(folds, [0, 0, 0, 0, 1, 1, 1, 1]);
    let same: Vec<bool> = pairs.pairs.iter().map(|p| p.is_same).collect();
    assert_eq!(same, [true, true, false, false, true, true, false, false]);
    let (a, b) = pairs.pairs[6].paths(Path::new("lfw"));
    assert_eq!(a, Path::new("lfw/A_B/A_B_0003.jpg"));
    assert_eq!(b, Path::new("lfw/C_D/C_D_0010.jpg"));
    let e = LfwPairs::open(dir.path().join("missing.txt")).unwrap_err();
    assert!(e.to_string().contains("missing.txt"));
    Ok(())
}

fn idx_bytes(magic: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, magic];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes)?;
    Ok(e.finish()?)
}

#[test]
fn idx_plain_and_gzip() -> Result<()> {
    // Three 2x2 images with labels 7, 3, 7: classes "3" then "7".
    let images = idx_bytes(3, &[3, 2, 2], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    let labels = idx_bytes(1, &[3], &[7, 3, 7]);
    for compressed in [false, true] {
        let dir = tempfile::tempdir()?;
        let ext = if compressed { ".gz" } else { "" };
        let ip = dir.path().join(format!("train-images-idx3-ubyte{ext}"));
        let lp = dir.path().join(format!("train-labels-idx1-ubyte{ext}"));
        let (ib, lb) = if compressed {
            (gz(&images)?, gz(&labels)?)
        } else {
            (images.clone(), labels.clone())
        };
        std::fs::write(&ip, ib)?;
        std::fs::write(&lp, lb)?;
        for ds in [
            Dataset::open_idx(&ip, &lp)?,
            Dataset::open(&ip)?,
            Dataset::open(dir.path())?,
        ] {
            assert_eq!(ds.classes, ["3", "7"]);
            assert_eq!(
                ds.items.iter().map(|i| i.class).collect::<Vec<_>>(),
                [0, 1, 1]
            );
            // Class "3" is the second image.
            assert_eq!(
                ds.items[0].source.load()?.to_luma8().into_raw(),
                [5, 6, 7, 8]
            );
            assert_eq!(
                ds.items[2].source.load()?.to_luma8().into_raw(),
                [9, 10, 11, 12]
            );
        }
        // Truncated data names the file.
        std::fs::write(&ip, &images[..images.len() - 1])?;
        let e = Dataset::open_idx(&ip, &lp).unwrap_err();
        assert!(e.to_string().contains("train-images-idx3-ubyte"), "{e}");
    }
    Ok(())
}

#[test]
fn bad_layouts_are_errors_naming_the_path() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("loose.png"), b"x")?;
    let e = Dataset::open(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::Layout { .. }), "{e}");
    let e = Dataset::open(dir.path().join("nope")).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let bogus = dir.path().join("bogus.zip");
    std::fs::write(&bogus, b"PK\x03\x04 not really")?;
    let e = Dataset::open(&bogus).unwrap_err();
    assert!(e.to_string().contains("bogus.zip"), "{e}");
    let e = OneShotRuns::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("class_labels.txt"), "{e}");
    assert!(Preprocess::new(2, 10, 10).validate().is_err());
    assert!(Preprocess::new(1, 10, 10)
        .with_normalisation(vec![0.0], vec![0.0])
        .validate()
        .is_err());
    Ok(())
}

#[test]
fn preprocess_round_trips_through_json() -> Result<()> {
    let p = Preprocess::omniglot().with_normalisation(vec![0.1], vec![0.3]);
    let s = serde_json::to_string(&p)?;
    let q: Preprocess = serde_json::from_str(&s)?;
    assert_eq!(p, q);
    Ok(())
}

#[test]
fn oneshot_run_names_pad_to_the_largest_number() {
    assert_eq!(oneshot_run_name(0, 20), "run01");
    assert_eq!(oneshot_run_name(19, 20), "run20");
    assert_eq!(oneshot_run_name(0, 100), "run001");
    assert_eq!(oneshot_run_name(99, 100), "run100");
    assert_eq!(oneshot_run_name(0, 5), "run01");
}

/// A PNG whose header declares `w` x `h` grey pixels, with one tiny IDAT of zero rows.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend(kind);
        out.extend(data);
        out.extend(crc.sum().to_be_bytes());
    }
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]); // 8-bit grey, deflate, adaptive filter, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&[0u8; 1024]).unwrap();
    chunk(&mut png, b"IDAT", &z.finish().unwrap());
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn images_over_the_pixel_limit_are_refused_from_their_header() {
    let err = decode(&png_header_only(20_000, 20_000), "huge.png").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("huge.png") && msg.contains("20000x20000"),
        "{msg}"
    );
    assert!(msg.contains("limit"), "{msg}");
    let err = decode(&png_header_only(70_000, 1), "wide.png").unwrap_err();
    assert!(err.to_string().contains("65536"), "{err}");
}

#[test]
fn lfw_header_declaring_a_trillion_pairs_is_an_error_not_an_abort() {
    let err = LfwPairs::parse("1000000000000 1\nA 1 2\n", "pairs.txt").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("pairs.txt:1:") && msg.contains("limit"),
        "{msg}"
    );
    let err = LfwPairs::parse("10 600\nA 1 2\n", "pairs.txt").unwrap_err();
    assert!(err.to_string().contains("ends early"), "{err}");
}

#[test]
fn a_zip_member_inflating_past_the_limit_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let zip_path = dir.path().join("bomb.zip");
    {
        let mut w = zip::ZipWriter::new(std::fs::File::create(&zip_path)?);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        w.start_file("a/bomb.png", opts)?;
        let block = vec![0u8; 1 << 20];
        for _ in 0..(MAX_MEMBER_BYTES >> 20) + 1 {
            w.write_all(&block)?;
        }
        w.finish()?;
    }
    let source = ImageSource::Zip {
        archive: std::sync::Arc::new(zip_path.clone()),
        entry: "a/bomb.png".into(),
    };
    let err = source.read_bytes().unwrap_err().to_string();
    assert!(
        err.contains("bomb.zip!/a/bomb.png") && err.contains("limit"),
        "{err}"
    );
    Ok(())
}
