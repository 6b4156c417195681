//! The durable collections on their own: changes survive reopening, compaction, and a crash at
//! every step of compaction; what cannot be recovered is refused naming the folder.

use anyhow::{ensure, Context, Result};
use siamese_data::Preprocess;
use siamese_encoder::{Architecture, Encoder, EncoderConfig};
use siamese_infer::model::model_bytes;
use siamese_infer::{Device, Model, ModelMeta, Provenance, Tta};
use siamese_ops::distance::Distance;
use siamese_serve::store::Store;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A small conv4 initialised from `seed` (through the model file's bytes, as `siamese serve`
/// gets it).
fn model(seed: u64) -> Result<Arc<Model>> {
    let mut cfg = EncoderConfig::for_arch(Architecture::conv4(), 1, 28, 24);
    cfg.l2_normalize = true;
    let encoder = Encoder::new(&cfg, seed, &Device::Cpu)?;
    let meta = ModelMeta {
        preprocess: Preprocess::new(1, 24, 28),
        distance: Distance::SquaredL2,
        calibration: None,
        provenance: Provenance::default(),
        tta: Tta::None,
    };
    Ok(Arc::new(Model::from_bytes(
        &model_bytes(&encoder, &meta, &[])?,
        &Device::Cpu,
    )?))
}

/// `n` rows of the model's length, distinct by `seed`.
fn rows(model: &Model, n: usize, seed: usize) -> Vec<f32> {
    (0..n * model.row_len())
        .map(|i| ((i * 31 + seed * 7) % 17) as f32 / 17.0)
        .collect()
}

/// A collection's identities with their image counts, and its rows.
type Contents = (Vec<(String, usize)>, Vec<f32>);

/// Every collection's contents, by name.
fn contents(store: &Store) -> BTreeMap<String, Contents> {
    store
        .list()
        .iter()
        .map(|c| {
            let g = c.gallery();
            let ids = g
                .identities()
                .iter()
                .cloned()
                .zip(g.rows_per_identity())
                .collect();
            (c.name().to_string(), (ids, g.rows().to_vec()))
        })
        .collect()
}

fn files(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    v.sort();
    Ok(v)
}

fn only_collection(root: &Path) -> Result<PathBuf> {
    Ok(std::fs::read_dir(root.join("galleries"))?
        .next()
        .context("no collection")??
        .path())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

#[test]
fn changes_survive_reopening_and_compaction() -> Result<()> {
    let m = model(1)?;
    let dir = tempfile::tempdir()?;
    let (store, _) = Store::open(Some(dir.path()), m.clone(), u64::MAX)?;
    let a = store.create("a")?;
    store.create("b")?;
    a.add(
        "alice",
        &rows(&m, 2, 1),
        vec!["1.png".into(), "2.png".into()],
    )?;
    a.add("bob", &rows(&m, 1, 2), vec!["3.png".into()])?;
    a.add("alice", &rows(&m, 1, 3), vec!["4.png".into()])?;
    ensure!(a.remove_identity("bob")? == 1);
    ensure!(a.remove_identity("bob").is_err());
    let before = contents(&store);
    drop(store);

    let (store, recovery) = Store::open(Some(dir.path()), m.clone(), u64::MAX)?;
    ensure!(
        recovery.galleries == 2 && recovery.records == 4,
        "{recovery:?}"
    );
    ensure!(contents(&store) == before);
    ensure!(before["a"].0 == [("alice".to_string(), 3)]);
    // Compaction: a new snapshot, an empty log, the old generation gone.
    ensure!(store.compact_all() == (1, Vec::new()));
    let folder = store.get("a").context("a")?;
    drop(folder);
    let (store, recovery) = Store::open(Some(dir.path()), m.clone(), u64::MAX)?;
    ensure!(recovery.records == 0 && contents(&store) == before);
    store.delete("b")?;
    ensure!(store.delete("b").is_err());
    drop(store);
    let (store, _) = Store::open(Some(dir.path()), m.clone(), u64::MAX)?;
    ensure!(store.list().len() == 1);
    let folder = only_collection(dir.path())?;
    ensure!(
        files(&folder)? == ["gallery.00000001.safetensors", "log.00000001", "name"],
        "{:?}",
        files(&folder)?
    );
    // A small threshold compacts as the log grows.
    drop(store);
    let (store, _) = Store::open(Some(dir.path()), m.clone(), 1)?;
    store
        .get("a")
        .context("a")?
        .add("carol", &rows(&m, 1, 4), vec!["5.png".into()])?;
    ensure!(files(&folder)?.contains(&"gallery.00000002.safetensors".to_string()));
    Ok(())
}

#[test]
fn a_crash_at_any_step_of_compaction_recovers_the_same_gallery() -> Result<()> {
    let m = model(2)?;
    let dir = tempfile::tempdir()?;
    let (store, _) = Store::open(Some(dir.path()), m.clone(), u64::MAX)?;
    let g = store.create("g")?;
    for i in 0..5 {
        g.add(
            &format!("id{}", i % 3),
            &rows(&m, 1, i),
            vec![format!("{i}.png")],
        )?;
    }
    let expected = contents(&store);
    let before = dir.path().join("before");
    copy_dir(&dir.path().join("galleries"), &before)?;
    store.compact_all();
    drop(store);
    let folder = only_collection(dir.path())?;
    let id = folder.file_name().context("name")?.to_owned();
    let old = before.join(&id);
    let new_snapshot = folder.join("gallery.00000001.safetensors");
    let new_log = folder.join("log.00000001");
    // Each state a crash can leave: the new snapshot without its log; with it; with a
    // temporary file of an unfinished snapshot; a half-built collection folder beside.
    let states: Vec<(&str, Vec<(&Path, &str)>)> = vec![
        (
            "snapshot only",
            vec![(&new_snapshot, "gallery.00000001.safetensors")],
        ),
        (
            "snapshot and log",
            vec![
                (&new_snapshot, "gallery.00000001.safetensors"),
                (&new_log, "log.00000001"),
            ],
        ),
        (
            "temporary file",
            vec![(&new_snapshot, ".gallery.00000001.safetensors.tmp-1")],
        ),
    ];
    for (what, extra) in states {
        let root = tempfile::tempdir()?;
        let crashed = root.path().join("galleries").join(&id);
        copy_dir(&old, &crashed)?;
        for (from, name) in extra {
            std::fs::copy(from, crashed.join(name))?;
        }
        std::fs::create_dir_all(root.path().join("galleries/.new-g000099"))?;
        let (store, recovery) = Store::open(Some(root.path()), m.clone(), u64::MAX)?;
        ensure!(contents(&store) == expected, "{what}: another gallery");
        ensure!(
            !recovery.warnings.is_empty(),
            "{what}: the .new folder went unnoticed"
        );
        let left = files(&crashed)?;
        ensure!(
            left.len() == 3 && !left.iter().any(|f| f.starts_with('.')),
            "{what}: {left:?}"
        );
        ensure!(!root.path().join("galleries/.new-g000099").exists());
    }
    Ok(())
}

#[test]
fn a_store_of_another_model_is_refused_naming_the_folder() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let m = model(3)?;
    let (store, _) = Store::open(Some(dir.path()), m.clone(), u64::MAX)?;
    store
        .create("g")?
        .add("x", &rows(&m, 1, 0), vec!["x.png".into()])?;
    drop(store);
    let e = Store::open(Some(dir.path()), model(4)?, u64::MAX)
        .err()
        .context("opened with another model")?
        .to_string();
    ensure!(e.contains("g000001") && e.contains("another model"), "{e}");
    Ok(())
}
