//! Lake et al. one-shot classification runs: reading them (folder or zip) and writing new
//! ones from a data set.
//!
//! Layout: `runNN/training/classNN.png` (one image per class), `runNN/test/itemNN.png`, and
//! `runNN/class_labels.txt` with one line per test item, `runNN/test/itemNN.png
//! runNN/training/classNN.png`, paths relative to the folder holding the runs.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::dataset::{alphabet_of, natural_cmp, Dataset};
use crate::decode::is_image_name;
use crate::error::{DataError, Result};
use crate::source::{zip_member_name, ImageSource};

/// One test item of a run: its image and the index of its true class among the run's
/// training images.
#[derive(Debug, Clone, PartialEq)]
pub struct OneShotTrial {
    /// The test image.
    pub test: ImageSource,
    /// Index into [`OneShotRun::training`] of the test image's class.
    pub answer: usize,
}

/// One run: N training images (one per class) and the test items to classify among them.
#[derive(Debug, Clone, PartialEq)]
pub struct OneShotRun {
    /// The run's folder name, e.g. `run01`.
    pub name: String,
    /// One image per class, in file-name order (`class01`, `class02`, ...).
    pub training: Vec<ImageSource>,
    /// The test items, in the order of `class_labels.txt`.
    pub trials: Vec<OneShotTrial>,
}

/// A set of one-shot runs.
#[derive(Debug, Clone, PartialEq)]
pub struct OneShotRuns {
    /// The runs, in natural name order.
    pub runs: Vec<OneShotRun>,
}

/// The files of a folder tree or an archive, by relative `/`-separated path.
enum Tree {
    Dir(PathBuf),
    Zip(Arc<PathBuf>),
}

impl Tree {
    fn source(&self, rel: &str) -> ImageSource {
        match self {
            Tree::Dir(root) => ImageSource::File(root.join(rel)),
            Tree::Zip(archive) => ImageSource::Zip {
                archive: archive.clone(),
                entry: rel.to_string(),
            },
        }
    }

    fn display(&self, rel: &str) -> PathBuf {
        match self {
            Tree::Dir(root) => root.join(rel),
            Tree::Zip(archive) => zip_member_name(archive, rel),
        }
    }
}

fn list_dir(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) -> Result<()> {
    if depth > 8 {
        return Ok(());
    }
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
        if meta.is_dir() {
            list_dir(root, &path, depth + 1, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(rel.join("/"));
        }
    }
    Ok(())
}

impl OneShotRuns {
    /// Reads runs from a folder (holding `runNN/` folders, or itself a run) or a zip archive
    /// such as `all_runs.zip`.
    pub fn open(path: impl AsRef<Path>) -> Result<OneShotRuns> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        let mut files = Vec::new();
        let mut texts: HashMap<String, String> = HashMap::new();
        let tree = if meta.is_dir() {
            list_dir(path, path, 0, &mut files)?;
            for f in &files {
                if f.rsplit('/').next() == Some("class_labels.txt") {
                    let p = path.join(f);
                    let t = std::fs::read_to_string(&p).map_err(|e| DataError::io(&p, e))?;
                    texts.insert(f.clone(), t);
                }
            }
            Tree::Dir(path.to_path_buf())
        } else {
            let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
            let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
                .map_err(|e| DataError::archive(path, e))?;
            files = zip
                .file_names()
                .filter(|n| {
                    !n.ends_with('/')
                        && !n.split('/').any(|c| c.starts_with('.') || c == "__MACOSX")
                })
                .map(str::to_string)
                .collect();
            for f in &files {
                if f.rsplit('/').next() == Some("class_labels.txt") {
                    let mut t = String::new();
                    zip.by_name(f)
                        .map_err(|e| DataError::archive(path, e))?
                        .read_to_string(&mut t)
                        .map_err(|e| DataError::io(zip_member_name(path, f), e))?;
                    texts.insert(f.clone(), t);
                }
            }
            Tree::Zip(Arc::new(path.to_path_buf()))
        };
        let mut label_files: Vec<&String> = texts.keys().collect();
        label_files.sort_by(|a, b| natural_cmp(a, b));
        if label_files.is_empty() {
            return Err(DataError::layout(
                path,
                "no `class_labels.txt` found (expected runNN/class_labels.txt)",
            ));
        }
        let file_set: std::collections::HashSet<&str> = files.iter().map(String::as_str).collect();
        let mut runs = Vec::new();
        for lf in label_files {
            let run_dir = lf.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let parent = run_dir.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let join = |base: &str, rel: &str| {
                if base.is_empty() {
                    rel.to_string()
                } else {
                    format!("{base}/{rel}")
                }
            };
            let training_prefix = join(run_dir, "training/");
            let mut training: Vec<&str> = files
                .iter()
                .map(String::as_str)
                .filter(|f| {
                    f.strip_prefix(training_prefix.as_str())
                        .is_some_and(|rest| !rest.contains('/') && is_image_name(rest))
                })
                .collect();
            training.sort_by(|a, b| natural_cmp(a, b));
            if training.is_empty() {
                return Err(DataError::layout(
                    tree.display(run_dir),
                    "run has no images in `training/`",
                ));
            }
            let resolve = |token: &str| -> Option<String> {
                [join(parent, token), join(run_dir, token), token.to_string()]
                    .into_iter()
                    .find(|c| file_set.contains(c.as_str()))
            };
            let label_path = tree.display(lf);
            let mut trials = Vec::new();
            for (i, line) in texts[lf].lines().enumerate() {
                let t: Vec<&str> = line.split_whitespace().collect();
                if t.is_empty() {
                    continue;
                }
                let [test, train] = t.as_slice() else {
                    return Err(DataError::parse(
                        &label_path,
                        i + 1,
                        format!("expected `test/itemNN.png training/classNN.png`, found `{line}`"),
                    ));
                };
                let test_rel = resolve(test).ok_or_else(|| {
                    DataError::parse(&label_path, i + 1, format!("test image `{test}` not found"))
                })?;
                let train_rel = resolve(train).ok_or_else(|| {
                    DataError::parse(
                        &label_path,
                        i + 1,
                        format!("training image `{train}` not found"),
                    )
                })?;
                let answer = training
                    .iter()
                    .position(|t| *t == train_rel)
                    .ok_or_else(|| {
                        DataError::parse(
                            &label_path,
                            i + 1,
                            format!("`{train}` is not one of the run's training images"),
                        )
                    })?;
                trials.push(OneShotTrial {
                    test: tree.source(&test_rel),
                    answer,
                });
            }
            if trials.is_empty() {
                return Err(DataError::layout(label_path, "no test items listed"));
            }
            let name = run_dir.rsplit('/').next().unwrap_or(run_dir);
            runs.push(OneShotRun {
                name: if name.is_empty() {
                    "run".to_string()
                } else {
                    name.to_string()
                },
                training: training.iter().map(|t| tree.source(t)).collect(),
                trials,
            });
        }
        Ok(OneShotRuns { runs })
    }

    /// Total number of test items over all runs.
    pub fn num_trials(&self) -> usize {
        self.runs.iter().map(|r| r.trials.len()).sum()
    }
}

/// What [`write_oneshot_runs`] builds.
#[derive(Debug, Clone, PartialEq)]
pub struct OneShotRunsConfig {
    /// Number of runs.
    pub runs: usize,
    /// Classes per run (20 in Lake et al.).
    pub ways: usize,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for OneShotRunsConfig {
    fn default() -> Self {
        OneShotRunsConfig {
            runs: 20,
            ways: 20,
            seed: 0,
        }
    }
}

/// The drawer of an Omniglot file `<drawing-id>_<NN>.png` (`NN`); other names are their own
/// drawer.
pub fn drawer_of(file_name: &str) -> &str {
    let stem = file_name
        .rsplit_once('.')
        .map(|(s, _)| s)
        .unwrap_or(file_name);
    match stem.rsplit_once('_') {
        Some((_, d)) if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => d,
        _ => file_name,
    }
}

/// PNG bytes of an image source: the file's own bytes when it is already a PNG, else
/// re-encoded.
fn png_bytes(source: &ImageSource) -> Result<Vec<u8>> {
    let is_png = source
        .file_name()
        .is_some_and(|n| n.to_ascii_lowercase().ends_with(".png"));
    if is_png {
        if let Some(b) = source.read_bytes()? {
            return Ok(b);
        }
    }
    let img = source.load()?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| DataError::decode(source.display_name(), format!("cannot encode PNG: {e}")))?;
    Ok(out.into_inner())
}

/// The folder name of run `index` (0-based) of `runs`: `run01`, …, zero-padded to the width
/// of the largest number (at least two digits).
pub fn oneshot_run_name(index: usize, runs: usize) -> String {
    let width = runs.to_string().len().max(2);
    format!("run{:0width$}", index + 1)
}

/// Writes one-shot runs in Lake et al.'s layout into `out_dir` and reads them back.
///
/// Each run picks one alphabet (see [`alphabet_of`]; alphabets in turn, skipping those with
/// fewer than `ways` characters), `ways` of its characters, and for each character one
/// training and one test drawing by different drawers: where possible one drawer pair for
/// the whole run, as in the original runs. Test items are shuffled. Everything is
/// determined by `config.seed`. `out_dir` may exist but must not hold `runNN` folders.
pub fn write_oneshot_runs(
    dataset: &Dataset,
    out_dir: impl AsRef<Path>,
    config: &OneShotRunsConfig,
) -> Result<OneShotRuns> {
    let out_dir = out_dir.as_ref();
    if config.ways < 2 || config.runs == 0 {
        return Err(DataError::Invalid(format!(
            "one-shot runs need at least 2 ways and 1 run, got {} ways and {} runs",
            config.ways, config.runs
        )));
    }
    let by_class = dataset.items_by_class();
    // Alphabet -> classes with at least two drawings.
    let mut alphabets: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (c, name) in dataset.classes.iter().enumerate() {
        if by_class[c].len() >= 2 {
            alphabets.entry(alphabet_of(name)).or_default().push(c);
        }
    }
    let eligible: Vec<(&str, Vec<usize>)> = alphabets
        .into_iter()
        .filter(|(_, cs)| cs.len() >= config.ways)
        .collect();
    if eligible.is_empty() {
        return Err(DataError::Invalid(format!(
            "no alphabet has {} characters with two drawings each",
            config.ways
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
    let width = config.ways.to_string().len().max(2);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    for r in 0..config.runs {
        let run_name = oneshot_run_name(r, config.runs);
        let run_dir = out_dir.join(&run_name);
        if run_dir.exists() {
            return Err(DataError::layout(
                &run_dir,
                "already exists; refusing to overwrite",
            ));
        }
        let (_, classes) = &eligible[r % eligible.len()];
        let mut chosen = classes.clone();
        chosen.shuffle(&mut rng);
        chosen.truncate(config.ways);
        // Drawer -> item, per chosen class.
        let drawers: Vec<BTreeMap<String, usize>> = chosen
            .iter()
            .map(|&c| {
                let mut m = BTreeMap::new();
                for &i in &by_class[c] {
                    let d = dataset.items[i]
                        .source
                        .file_name()
                        .map(drawer_of)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("#{i}"));
                    m.entry(d).or_insert(i);
                }
                m
            })
            .collect();
        let mut common: Vec<&String> = drawers[0]
            .keys()
            .filter(|d| drawers.iter().all(|m| m.contains_key(*d)))
            .collect();
        common.shuffle(&mut rng);
        let mut pairs = Vec::with_capacity(chosen.len());
        for (k, &c) in chosen.iter().enumerate() {
            let pair = if common.len() >= 2 {
                (drawers[k][common[0]], drawers[k][common[1]])
            } else {
                let mut ds: Vec<usize> = drawers[k].values().copied().collect();
                if ds.len() < 2 {
                    ds = by_class[c].clone();
                }
                ds.shuffle(&mut rng);
                (ds[0], ds[1])
            };
            pairs.push(pair);
        }
        let mut order: Vec<usize> = (0..chosen.len()).collect();
        order.shuffle(&mut rng);
        for sub in ["training", "test"] {
            let d = run_dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| DataError::io(&d, e))?;
        }
        let mut labels = String::new();
        for (k, &(train, _)) in pairs.iter().enumerate() {
            let p = run_dir
                .join("training")
                .join(format!("class{:0width$}.png", k + 1));
            let bytes = png_bytes(&dataset.items[train].source)?;
            std::fs::write(&p, bytes).map_err(|e| DataError::io(&p, e))?;
        }
        for (t, &k) in order.iter().enumerate() {
            let item = format!("item{:0width$}.png", t + 1);
            let p = run_dir.join("test").join(&item);
            let bytes = png_bytes(&dataset.items[pairs[k].1].source)?;
            std::fs::write(&p, bytes).map_err(|e| DataError::io(&p, e))?;
            labels.push_str(&format!(
                "{run_name}/test/{item} {run_name}/training/class{:0width$}.png\n",
                k + 1
            ));
        }
        let p = run_dir.join("class_labels.txt");
        std::fs::write(&p, labels).map_err(|e| DataError::io(&p, e))?;
    }
    OneShotRuns::open(out_dir)
}
