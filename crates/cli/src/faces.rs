//! The commands on photos with a face model (`import dlib`, `detect`, and `verify`, `embed`,
//! `enroll`, `identify`, `inspect` when the model holds a face pipeline): parse, call
//! `siamese_infer`, print.

use crate::args::*;
use crate::commands::UsageError;
use anyhow::{bail, Result};
use candle_core::Device;
use siamese_infer::faces::{self, FaceEnrolment, FaceVerdict, FoundFace};
use siamese_infer::outputs::{Input, Output};
use siamese_infer::{
    expand_paths, Detect, Embeddings, FaceOptions, Faces, Gallery, Model, PhotoIdentification,
    Verifier,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// The options the flags give.
pub(crate) fn options(flags: &FaceFlags, faces: Option<FacesArg>) -> FaceOptions {
    FaceOptions {
        detect: match flags.detect {
            Some(DetectArg::None) => Detect::None,
            Some(DetectArg::Cnn) | None => Detect::Cnn,
        },
        faces: match faces {
            Some(FacesArg::All) => Faces::All,
            Some(FacesArg::Largest) | None => Faces::Largest,
        },
        upsample: flags.upsample,
    }
}

/// Whether `model` is a face model (the command then takes the face path); the face flags on
/// another model are a usage error, so that they never pass silently.
pub fn check_flags(model: &Model, flags: &FaceFlags, faces: Option<FacesArg>) -> Result<bool> {
    if model.is_face_model() {
        if let Some(u) = flags.upsample.filter(|&u| u > faces::MAX_UPSAMPLE) {
            return Err(usage(format!(
                "--upsample {u}: at most {}",
                faces::MAX_UPSAMPLE
            )));
        }
        return Ok(true);
    }
    let given: Vec<&str> = [
        (flags.detect.is_some(), "--detect"),
        (flags.upsample.is_some(), "--upsample"),
        (faces.is_some(), "--faces"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if !given.is_empty() {
        return Err(usage(format!(
            "{} need a face model (`siamese import dlib`); this model reads each image whole",
            given.join(", ")
        )));
    }
    Ok(false)
}

// ---------------------------------------------------------------- import

/// `import dlib`.
pub fn import(a: ImportArgs) -> Result<()> {
    let ImportSource::Dlib(a) = a.source;
    crate::guard::check(
        &[
            Input::new("--encoder", &a.encoder),
            Input::new("--landmarks", &a.landmarks),
            Input::new("--detector", &a.detector),
        ],
        &[Output::file("--out", &a.out)],
    )?;
    let model = Model::import_dlib(&a.detector, &a.landmarks, &a.encoder)?;
    model.save(&a.out)?;
    let face = model
        .face
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the import gave no face pipeline"))?;
    eprintln!(
        "wrote {}: dlib's face pipeline (detector, {} landmarks, encoder of {} numbers), \
         Euclidean distance, threshold {} (dlib's)",
        a.out.display(),
        face.meta.landmarks.parts,
        model.encoder.config().output_dim(),
        model.threshold().unwrap_or(f32::NAN)
    );
    for s in &face.meta.sources {
        eprintln!("  {:<9} {}  sha256 {}", s.part, s.file, s.sha256);
    }
    Ok(())
}

// ---------------------------------------------------------------- detect

/// The files `detect` writes for the photo `input`: `DIR/STEM.faces.png` and
/// `DIR/STEM.faceK.png`.
fn output_name(dir: &Path, input: &Path, suffix: &str) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    dir.join(format!("{stem}.{suffix}.png"))
}

/// Refuses outputs that would write over an input (a photo named as a drawing or a chip of
/// another photo, in the folder written to), or two photos whose outputs share a name.
fn check_outputs(images: &[PathBuf], draw: Option<&Path>, chips: Option<&Path>) -> Result<()> {
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into())
    };
    let stems: Vec<String> = images.iter().map(|p| stem(p)).collect();
    // Each input as (its folder, canonical; its file name): a symbolic link is the input.
    let inputs: Vec<(Option<PathBuf>, String)> = images
        .iter()
        .map(|p| {
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            (parent.canonicalize().ok(), name.unwrap_or_default())
        })
        .collect();
    // Whether `name` is what `detect` writes for a photo of stem `stem`: a drawing
    // `STEM.faces.png` (`chips` false) or a chip `STEM.faceK.png`.
    let ours = |chips: bool, name: &str, stem: &str| {
        if chips {
            name.strip_prefix(&format!("{stem}.face"))
                .and_then(|k| k.strip_suffix(".png"))
                .is_some_and(|k| k.parse::<usize>().is_ok())
        } else {
            name == format!("{stem}.faces.png")
        }
    };
    for (dir, is_chips) in [(draw, false), (chips, true)] {
        let Some(dir) = dir else { continue };
        let mut seen: HashMap<&str, &Path> = HashMap::new();
        for (img, stem) in images.iter().zip(&stems) {
            if let Some(first) = seen.insert(stem, img) {
                return Err(usage(format!(
                    "{} and {} would write files of the same names in {}: give photos with \
                     different names",
                    first.display(),
                    img.display(),
                    dir.display()
                )));
            }
        }
        let Ok(dir_c) = dir.canonicalize() else {
            continue; // not there yet: no input is in it
        };
        for ((parent, name), img) in inputs.iter().zip(images) {
            if parent.as_deref() == Some(dir_c.as_path())
                && stems.iter().any(|s| ours(is_chips, name, s))
            {
                return Err(usage(format!(
                    "{} is an input and would be written over in {}: write elsewhere",
                    img.display(),
                    dir.display()
                )));
            }
        }
    }
    Ok(())
}

/// `detect`.
pub fn detect(a: DetectArgs, device: &Device) -> Result<()> {
    {
        let mut inputs = vec![Input::new("--model", &a.model)];
        inputs.extend(a.images.iter().map(|p| Input::new("IMAGES", p)));
        let outputs: Vec<Output<'_>> = [("--draw", &a.draw), ("--chips", &a.chips)]
            .into_iter()
            .filter_map(|(flag, dir)| dir.as_deref().map(|d| Output::folder(flag, d)))
            .collect();
        // Two flags naming one folder write different names into it.
        if outputs.len() < 2 || a.draw != a.chips {
            crate::guard::check(&inputs, &outputs)?;
        } else {
            crate::guard::check(&inputs, &outputs[..1])?;
        }
    }
    let model = Model::load(&a.model, device)?;
    if !model.is_face_model() {
        bail!(
            "{}: not a face model (it has no face detector); import one with `siamese import dlib`",
            a.model.display()
        );
    }
    check_flags(&model, &a.face, None)?;
    let images = expand_paths(&a.images)?;
    if images.is_empty() {
        bail!("no images found in the given paths");
    }
    check_outputs(&images, a.draw.as_deref(), a.chips.as_deref())?;
    let opts = options(&a.face, Some(FacesArg::All));
    let mut json = Vec::new();
    for path in &images {
        let photo = model.detect_photo(path, &opts)?;
        let found = photo.found();
        let drawn = match &a.draw {
            Some(dir) => {
                let out = output_name(dir, path, "faces");
                faces::save_png(&out, &faces::draw_faces(&photo.image, &photo.faces))?;
                Some(out)
            }
            None => None,
        };
        let mut chips = Vec::new();
        if let Some(dir) = &a.chips {
            for (k, chip) in model
                .face_chips(&photo.image, &photo.faces)?
                .iter()
                .enumerate()
            {
                let out = output_name(dir, path, &format!("face{}", k + 1));
                faces::save_png(&out, chip)?;
                chips.push(out);
            }
        }
        if a.json {
            json.push(serde_json::json!({
                "path": path.to_string_lossy(),
                "width": photo.image.width(),
                "height": photo.image.height(),
                "faces": found,
                "drawn": drawn.as_ref().map(|p| p.to_string_lossy()),
                "chips": chips.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>(),
            }));
            continue;
        }
        println!(
            "{}: {} face{}",
            path.display(),
            found.len(),
            if found.len() == 1 { "" } else { "s" }
        );
        for (k, f) in found.iter().enumerate() {
            println!("  {}: {}", k + 1, describe(f));
        }
        if let Some(out) = &drawn {
            eprintln!("drawn: {}", out.display());
        }
        for out in &chips {
            eprintln!("chip: {}", out.display());
        }
    }
    if a.json {
        println!("{}", serde_json::json!({ "images": json }));
    }
    Ok(())
}

/// `box L,T,R,B (WxH), confidence C, points x,y ...`.
fn describe(f: &FoundFace) -> String {
    let r = f.rect;
    let points: Vec<String> = f
        .points
        .iter()
        .map(|p| format!("{},{}", p[0], p[1]))
        .collect();
    format!(
        "box {} ({}x{}), confidence {}, points {}",
        r,
        r.right - r.left + 1,
        r.bottom - r.top + 1,
        f.confidence
            .map_or("none (no detection)".to_string(), |c| format!("{c:.3}")),
        points.join(" ")
    )
}

// ---------------------------------------------------------------- verify / embed

/// `verify` with a face model: the largest face of each photo.
pub fn verify(a: &VerifyArgs, verifier: &Verifier) -> Result<()> {
    let opts = options(&a.face, None);
    let FaceVerdict {
        verdict: v,
        a: fa,
        b: fb,
    } = verifier.verify_faces(&a.a, &a.b, &opts)?;
    for f in [&fa, &fb] {
        if f.found > 1 {
            eprintln!(
                "note: {} has {} faces; the largest (box {}) was used",
                f.path.display(),
                f.found,
                f.face.rect
            );
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "distance": v.distance, "same": v.same, "threshold": v.threshold,
                "a": a.a.to_string_lossy(), "b": a.b.to_string_lossy(), "a_face": fa, "b_face": fb,
            })
        );
    } else {
        println!("{v}");
    }
    Ok(())
}

/// `embed` with a face model.
pub fn embed(a: &EmbedArgs, model: &Model, paths: &[PathBuf]) -> Result<()> {
    let opts = options(&a.face, a.faces);
    let started = std::time::Instant::now();
    let (e, photos) = Embeddings::of_faces(model, paths, &opts)?;
    e.save(&a.out)?;
    for p in &photos {
        match (p.found, opts.faces) {
            (0, _) => eprintln!("note: {}: no face", p.path.display()),
            (n, Faces::Largest) if n > 1 => eprintln!(
                "note: {} has {n} faces; the largest (box {}) was embedded",
                p.path.display(),
                p.faces
                    .first()
                    .map(|f| f.rect.to_string())
                    .unwrap_or_default()
            ),
            _ => {}
        }
    }
    let rows = e.shape.first().copied().unwrap_or(0);
    eprintln!(
        "{rows} face embeddings of dimension {} from {} photo{} written to {} ({:.1} s{})",
        model.encoder.config().output_dim(),
        paths.len(),
        if paths.len() == 1 { "" } else { "s" },
        a.out.display(),
        started.elapsed().as_secs_f64(),
        if a.out.extension().is_some_and(|x| x == "npy") {
            "; the faces' boxes are kept in .safetensors files only"
        } else {
            ""
        }
    );
    Ok(())
}

// ---------------------------------------------------------------- gallery

/// `enroll` of a folder of photos with a face model.
pub fn enroll(a: &EnrollArgs, model: &Model, folder: &Path) -> Result<()> {
    let opts = options(&a.face, a.faces);
    let enrolment: FaceEnrolment = Gallery::enrol_faces(model, folder, &opts)?;
    enrolment.save(&a.out)?;
    let g = &enrolment.gallery;
    eprintln!(
        "enrolled {} faces of {} identities into {}",
        g.len(),
        g.identities().len(),
        a.out.display()
    );
    for c in &enrolment.identities {
        let mut line = format!(
            "  {}: {} image{}, {} face{}",
            c.identity,
            c.images,
            if c.images == 1 { "" } else { "s" },
            c.faces,
            if c.faces == 1 { "" } else { "s" }
        );
        if c.no_face > 0 {
            line += &format!(
                "; {} without a face ({})",
                c.no_face,
                c.no_face_paths.join(", ")
            );
        }
        if c.several > 0 {
            line += &format!(
                "; {} with several faces, {} ({})",
                c.several,
                match opts.faces {
                    Faces::Largest => "the largest enrolled",
                    Faces::All => "all enrolled",
                },
                c.several_paths.join(", ")
            );
        }
        eprintln!("{line}");
    }
    Ok(())
}

/// `identify` with a face model: every face (or the largest) of each probe photo.
pub fn identify(a: &IdentifyArgs, model: &Model, gallery: &Gallery) -> Result<()> {
    let opts = options(&a.face, a.faces);
    let probes = expand_paths(&a.probes)?;
    let results = gallery.identify_faces(model, &probes, &opts, a.top, a.threshold)?;
    if a.json {
        match &results[..] {
            [one] => println!("{}", serde_json::to_value(one)?),
            all => println!("{}", serde_json::json!({ "results": all })),
        }
        return Ok(());
    }
    for PhotoIdentification { path, found, faces } in &results {
        if faces.is_empty() {
            println!("{},no_persons_found", path.display());
        }
        if *found > faces.len() {
            eprintln!(
                "note: {} has {found} faces; the largest was identified (--faces all for every one)",
                path.display()
            );
        }
        for f in faces {
            let distance = f
                .identification
                .candidates
                .first()
                .map(|c| format!("{:.4}", c.distance))
                .unwrap_or_default();
            println!("{},{},{distance},{}", path.display(), f.name, f.face.rect);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- inspect

/// `inspect` of a face model.
pub fn inspect(a: &InspectArgs, model: &Model) -> Result<()> {
    let Some(face) = &model.face else {
        bail!("{}: not a face model", a.model.display());
    };
    let c = model.encoder.config();
    let m = &model.meta;
    let f = &face.meta;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "encoder": c, "parameters": model.encoder.params().count(),
                "meta": m, "face": f,
            })
        );
        return Ok(());
    }
    let [r, g, b] = f.mean_rgb;
    println!("model:        {}", a.model.display());
    println!("kind:         face model: detect, align, encode (dlib's face pipeline)");
    println!(
        "architecture: {} ({} parameters)",
        c.arch.name(),
        model.encoder.params().count()
    );
    println!(
        "input:        {s}×{s} RGB chips, (pixel - mean) / 256, mean R {r} G {g} B {b}",
        s = f.chip.size
    );
    println!("embedding:    {} numbers", c.output_dim());
    println!(
        "distance:     {} (Euclidean{})",
        m.distance.name(),
        if m.distance == siamese_infer::Distance::L2 {
            ", not squared"
        } else {
            ""
        }
    );
    println!(
        "{}",
        crate::commands::threshold_line(m.calibration.as_ref())
    );
    let d = &f.detector;
    println!(
        "detector:     MMOD CNN, window {}x{}, input mean R {} G {} B {}, {} (padding {}, outer \
         padding {})",
        d.window[0],
        d.window[1],
        d.mean_rgb[0],
        d.mean_rgb[1],
        d.mean_rgb[2],
        d.pyramid.kind,
        d.pyramid.padding,
        d.pyramid.outer_padding
    );
    println!(
        "              non-maximum suppression: overlap above {:.4} of the bounding box or {:.4} \
         of either box; upsample {} by default, score threshold {}",
        d.nms_iou, d.nms_covered, f.upsample, f.detect_threshold
    );
    let l = &f.landmarks;
    println!(
        "landmarks:    {} points, {} cascades, {} trees of depth {}",
        l.parts,
        l.cascades.len(),
        l.cascades.iter().map(|c| c.trees).sum::<usize>(),
        l.depth
    );
    println!(
        "chips:        {s}×{s}, padding {} (dlib's get_face_chip)",
        f.chip.padding,
        s = f.chip.size
    );
    for (i, s) in f.sources.iter().enumerate() {
        println!(
            "{}{:<9} {} ({} bytes), sha256 {}",
            if i == 0 {
                "sources:      "
            } else {
                "              "
            },
            s.part,
            s.file,
            s.bytes,
            s.sha256
        );
    }
    match &m.provenance.init {
        // Fine-tuned (`train --init`): the run's own provenance.
        Some(init) => {
            let p = &m.provenance;
            println!("init from:    {init}");
            println!(
                "fine-tuned:   {} steps in {:.0} s on {} ({} classes, {} images; recipe {}; seed {}) by siamese {}",
                p.steps,
                p.wall_seconds,
                p.data.join(", "),
                p.train_classes,
                p.train_images,
                p.recipe.as_deref().unwrap_or("none"),
                p.seed,
                p.version
            );
        }
        None => println!("imported by:  siamese {}", m.provenance.version),
    }
    Ok(())
}
