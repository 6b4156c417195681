//! Galleries as named collections, each durable on its own.
//!
//! On disk (`--store DIR`), every collection is a folder with a server-made name,
//! `DIR/galleries/g000001/`, holding:
//! - `name`: the collection's name (the only place a name given by a request is written, as
//!   file contents, never as a path);
//! - `gallery.N.safetensors`: a snapshot, an ordinary gallery file (`siamese identify` reads
//!   it), written atomically (temporary file, fsync, rename);
//! - `log.N`: every change since that snapshot, one record each ([`crate::wal`]), synced
//!   before the change is acknowledged.
//!
//! Recovery takes the highest `N` whose snapshot exists, opens it with the model (a gallery
//! enrolled with other weights is refused: the fingerprint check of
//! [`siamese_infer::Gallery::open`]), replays its log up to the last whole record, and removes
//! everything else (older generations, unfinished `.new-*` folders and temporary files,
//! `.del-*` folders). Compaction writes snapshot `N + 1`, then an empty `log.N+1`, then removes
//! generation `N`: a crash at any point leaves either generation whole.
//!
//! Without a store the collections live in memory only.

use crate::error::ServeError;
use crate::names;
use crate::wal::Log;
use serde::{Deserialize, Serialize};
use siamese_infer::{Gallery, InferError, Model};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Why a change to the collections failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No collection has that name.
    #[error("no gallery named `{0}`")]
    NoGallery(String),
    /// A collection of that name exists.
    #[error("a gallery named `{0}` exists")]
    Exists(String),
    /// The collection has no identity of that name.
    #[error("gallery `{gallery}` has no identity `{identity}`")]
    NoIdentity {
        /// The collection.
        gallery: String,
        /// The identity asked for.
        identity: String,
    },
    /// The disk refused a write; the change was not made.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The gallery refused the change (sizes that disagree).
    #[error(transparent)]
    Infer(#[from] InferError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One change, as a log record: a JSON header, then for `add` the rows as little-endian
/// `f32`s.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Change {
    Add {
        identity: String,
        rows: usize,
        paths: Vec<String>,
    },
    Remove {
        identity: String,
    },
}

fn encode(change: &Change, rows: &[f32]) -> Vec<u8> {
    // A derived Serialize of strings and numbers cannot fail.
    let json = serde_json::to_vec(change).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + json.len() + 4 * rows.len());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    for v in rows {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn decode(payload: &[u8]) -> Result<(Change, Vec<f32>), String> {
    let n = payload
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("a record shorter than its header")?;
    let json = payload
        .get(4..4 + n)
        .ok_or("a record shorter than its JSON header")?;
    let change: Change = serde_json::from_slice(json).map_err(|e| format!("a record: {e}"))?;
    let rest = &payload[4 + n..];
    if !rest.len().is_multiple_of(4) {
        return Err("a record whose rows are not whole f32 values".into());
    }
    let rows = rest
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((change, rows))
}

/// Applies a change to `g`, checking its sizes.
fn apply(g: &Gallery, change: Change, rows: &[f32]) -> Result<Gallery, String> {
    match change {
        Change::Add {
            identity,
            rows: n,
            paths,
        } => {
            if rows.len() != n * g.row_len() || paths.len() != n {
                return Err(format!(
                    "an addition of {n} rows holds {} values and {} paths (rows of {})",
                    rows.len(),
                    paths.len(),
                    g.row_len()
                ));
            }
            g.with_rows(&identity, rows, paths)
                .map_err(|e| e.to_string())
        }
        Change::Remove { identity } => Ok(g
            .without_identity(&identity)
            .map_err(|e| e.to_string())?
            .map_or_else(|| g.clone(), |(g, _)| g)),
    }
}

fn gallery_file(gen: u64) -> String {
    format!("gallery.{gen:08}.safetensors")
}

fn log_file(gen: u64) -> String {
    format!("log.{gen:08}")
}

/// Syncs a folder, so the files created or renamed in it survive a crash.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[derive(Debug)]
struct State {
    /// The snapshot generation on disk.
    gen: u64,
    log: Option<Log>,
    deleted: bool,
    /// A compaction failed half-way and could not be undone: refuse changes until restart.
    broken: bool,
}

/// One named gallery: the current [`Gallery`] for searching, and (with a store) its folder
/// and log.
#[derive(Debug)]
pub struct Collection {
    name: String,
    dir: Option<PathBuf>,
    gallery: RwLock<Arc<Gallery>>,
    state: Mutex<State>,
    compact_at: u64,
}

/// What an addition left.
#[derive(Clone, Copy, Debug)]
pub struct Added {
    /// Images the identity has now.
    pub identity_images: usize,
    /// Images in the collection.
    pub images: usize,
}

impl Collection {
    fn new(
        name: String,
        dir: Option<PathBuf>,
        gallery: Gallery,
        gen: u64,
        log: Option<Log>,
    ) -> Self {
        Collection {
            name,
            dir,
            gallery: RwLock::new(Arc::new(gallery)),
            state: Mutex::new(State {
                gen,
                log,
                deleted: false,
                broken: false,
            }),
            compact_at: u64::MAX,
        }
    }

    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The gallery as it is now (later changes make a new one).
    pub fn gallery(&self) -> Arc<Gallery> {
        self.gallery
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self, g: Gallery) {
        *self.gallery.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(g);
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.deleted {
            return Err(StoreError::NoGallery(self.name.clone()));
        }
        if st.broken {
            return Err(StoreError::Io {
                path: self.dir.clone().unwrap_or_default(),
                source: std::io::Error::other(
                    "an earlier compaction failed half-way; restart the service to recover",
                ),
            });
        }
        Ok(st)
    }

    /// Adds `rows` (representations made under the gallery's augmentation) to `identity`,
    /// durably: the change is in the log on disk before this returns `Ok`.
    pub fn add(
        &self,
        identity: &str,
        rows: &[f32],
        paths: Vec<String>,
    ) -> Result<Added, StoreError> {
        let mut st = self.lock()?;
        let next = self.gallery().with_rows(identity, rows, paths.clone())?;
        if let Some(log) = st.log.as_mut() {
            let change = Change::Add {
                identity: identity.to_string(),
                rows: paths.len(),
                paths,
            };
            let path = log.path().to_path_buf();
            log.append(&encode(&change, rows)).map_err(io(&path))?;
        }
        let label = next.identities().iter().position(|i| i == identity);
        let added = Added {
            identity_images: label.map_or(0, |l| next.labels().iter().filter(|&&x| x == l).count()),
            images: next.len(),
        };
        self.publish(next);
        self.maybe_compact(&mut st);
        Ok(added)
    }

    /// Removes `identity` and its images durably; the number of images removed.
    pub fn remove_identity(&self, identity: &str) -> Result<usize, StoreError> {
        let mut st = self.lock()?;
        let Some((next, removed)) = self.gallery().without_identity(identity)? else {
            return Err(StoreError::NoIdentity {
                gallery: self.name.clone(),
                identity: identity.to_string(),
            });
        };
        if let Some(log) = st.log.as_mut() {
            let change = Change::Remove {
                identity: identity.to_string(),
            };
            let path = log.path().to_path_buf();
            log.append(&encode(&change, &[])).map_err(io(&path))?;
        }
        self.publish(next);
        self.maybe_compact(&mut st);
        Ok(removed)
    }

    /// Compacts when the log has grown past the threshold. A failure leaves the log as it
    /// was (the change is already durable), so it is only tried again later.
    fn maybe_compact(&self, st: &mut State) {
        if st.log.as_ref().is_some_and(|l| l.len() >= self.compact_at) {
            let _ = self.compact_locked(st);
        }
    }

    /// Writes the gallery as a new snapshot and starts an empty log (nothing to do in memory
    /// or when the log is empty). `true` when a snapshot was written.
    pub fn compact(&self) -> Result<bool, StoreError> {
        let mut st = match self.lock() {
            Ok(st) => st,
            Err(StoreError::NoGallery(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        self.compact_locked(&mut st)
    }

    fn compact_locked(&self, st: &mut State) -> Result<bool, StoreError> {
        let (Some(dir), Some(log)) = (&self.dir, &st.log) else {
            return Ok(false);
        };
        if log.is_empty() {
            return Ok(false);
        }
        let next = st.gen + 1;
        let snapshot = dir.join(gallery_file(next));
        self.gallery().save(&snapshot)?;
        let new_log = match Log::create(&dir.join(log_file(next))).and_then(|l| {
            sync_dir(dir)?;
            Ok(l)
        }) {
            Ok(l) => l,
            Err(e) => {
                // The old generation must stay the one recovered: take the new snapshot back.
                if std::fs::remove_file(&snapshot)
                    .and_then(|()| sync_dir(dir))
                    .is_err()
                {
                    st.broken = true;
                }
                return Err(io(&snapshot)(e));
            }
        };
        let old = st.gen;
        st.gen = next;
        st.log = Some(new_log);
        let _ = std::fs::remove_file(dir.join(gallery_file(old)));
        let _ = std::fs::remove_file(dir.join(log_file(old)));
        let _ = sync_dir(dir);
        Ok(true)
    }
}

/// Summary of what [`Store::open`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Collections recovered.
    pub galleries: usize,
    /// Log records replayed.
    pub records: usize,
    /// Things repaired or ignored (torn log tails, unfinished folders), one line each.
    pub warnings: Vec<String>,
}

/// All collections, by name.
#[derive(Debug)]
pub struct Store {
    /// `DIR/galleries`, or none (in memory).
    root: Option<PathBuf>,
    model: Arc<Model>,
    collections: RwLock<BTreeMap<String, Arc<Collection>>>,
    next_id: Mutex<u64>,
    compact_at: u64,
}

impl Store {
    /// Opens (creating it when new) the store under `dir`, recovering every collection, or an
    /// in-memory store when `dir` is `None`. Logs are compacted once they pass `compact_at`
    /// bytes. Fails, naming the folder, when a collection cannot be recovered (among them one
    /// enrolled with another model).
    pub fn open(
        dir: Option<&Path>,
        model: Arc<Model>,
        compact_at: u64,
    ) -> Result<(Self, Recovery), ServeError> {
        let mut store = Store {
            root: None,
            model,
            collections: RwLock::new(BTreeMap::new()),
            next_id: Mutex::new(1),
            compact_at,
        };
        let mut report = Recovery::default();
        let Some(dir) = dir else {
            return Ok((store, report));
        };
        let root = dir.join("galleries");
        std::fs::create_dir_all(&root).map_err(|e| ServeError::io(&root, e))?;
        let mut entries: Vec<_> = std::fs::read_dir(&root)
            .map_err(|e| ServeError::io(&root, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| ServeError::io(&root, e))?;
        entries.sort_by_key(|e| e.file_name());
        let mut map = BTreeMap::new();
        let mut max_id = 0;
        for entry in entries {
            let path = entry.path();
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with(".new-") || file_name.starts_with(".del-") {
                let _ = std::fs::remove_dir_all(&path);
                report
                    .warnings
                    .push(format!("{}: removed an unfinished folder", path.display()));
                continue;
            }
            let id = file_name
                .strip_prefix('g')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u64>().ok());
            let Some(id) = id.filter(|_| path.is_dir()) else {
                report
                    .warnings
                    .push(format!("{}: not a collection, ignored", path.display()));
                continue;
            };
            max_id = max_id.max(id);
            let (collection, records) = recover(&path, &store.model, &mut report.warnings)?;
            let mut collection = collection;
            collection.compact_at = compact_at;
            report.records += records;
            if let Some(other) = map.insert(collection.name.clone(), Arc::new(collection)) {
                return Err(ServeError::Store {
                    path,
                    message: format!(
                        "a second collection named `{}` (the other is {}); remove one folder",
                        other.name,
                        other.dir.as_deref().unwrap_or(Path::new("?")).display()
                    ),
                });
            }
        }
        report.galleries = map.len();
        store.root = Some(root);
        store.collections = RwLock::new(map);
        store.next_id = Mutex::new(max_id + 1);
        Ok((store, report))
    }

    /// Whether changes are kept on disk.
    pub fn is_durable(&self) -> bool {
        self.root.is_some()
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Collection>>> {
        self.collections.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The collection named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Collection>> {
        self.map().get(name).cloned()
    }

    /// Every collection, by name.
    pub fn list(&self) -> Vec<Arc<Collection>> {
        self.map().values().cloned().collect()
    }

    /// Creates an empty collection named `name` (checked by the caller).
    pub fn create(&self, name: &str) -> Result<Arc<Collection>, StoreError> {
        let gallery = Gallery::empty(&self.model)?;
        self.insert(name, gallery)?
            .ok_or_else(|| StoreError::Exists(name.to_string()))
    }

    /// Adds `gallery` as the collection `name` unless one of that name exists (then
    /// `Ok(None)`: the stored one, with its changes, wins).
    pub fn import(
        &self,
        name: &str,
        gallery: Gallery,
    ) -> Result<Option<Arc<Collection>>, StoreError> {
        self.insert(name, gallery)
    }

    fn insert(&self, name: &str, gallery: Gallery) -> Result<Option<Arc<Collection>>, StoreError> {
        let mut map = self.collections.write().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(name) {
            return Ok(None);
        }
        let mut collection = match &self.root {
            None => Collection::new(name.to_string(), None, gallery, 0, None),
            Some(root) => {
                let id = {
                    let mut next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
                    let id = *next;
                    *next += 1;
                    id
                };
                let (dir, log) = create_on_disk(root, id, name, &gallery)?;
                Collection::new(name.to_string(), Some(dir), gallery, 0, Some(log))
            }
        };
        collection.compact_at = self.compact_at;
        let collection = Arc::new(collection);
        map.insert(name.to_string(), collection.clone());
        Ok(Some(collection))
    }

    /// Deletes the collection `name` and its folder.
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut map = self.collections.write().unwrap_or_else(|p| p.into_inner());
        let collection = map
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NoGallery(name.to_string()))?;
        let mut st = collection.lock()?;
        if let (Some(root), Some(dir)) = (&self.root, &collection.dir) {
            let gone = root.join(format!(
                ".del-{}",
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            std::fs::rename(dir, &gone)
                .and_then(|()| sync_dir(root))
                .map_err(io(dir))?;
            st.log = None;
            let _ = std::fs::remove_dir_all(&gone);
        }
        st.deleted = true;
        map.remove(name);
        Ok(())
    }

    /// Compacts every collection with a non-empty log; the errors, one line each.
    pub fn compact_all(&self) -> (usize, Vec<String>) {
        let mut done = 0;
        let mut errors = Vec::new();
        for c in self.list() {
            match c.compact() {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(e) => errors.push(format!("gallery `{}`: {e}", c.name)),
            }
        }
        (done, errors)
    }
}

/// Creates collection `id` named `name` holding `gallery` under `root`, whole or not at all:
/// built in `.new-gNNNNNN`, then renamed into place.
fn create_on_disk(
    root: &Path,
    id: u64,
    name: &str,
    gallery: &Gallery,
) -> Result<(PathBuf, Log), StoreError> {
    let final_dir = root.join(format!("g{id:06}"));
    let tmp = root.join(format!(".new-g{id:06}"));
    let build = || -> Result<(), StoreError> {
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        siamese_infer::write_atomic(&tmp.join("name"), name.as_bytes())?;
        gallery.save(&tmp.join(gallery_file(0)))?;
        Log::create(&tmp.join(log_file(0))).map_err(io(&tmp))?;
        sync_dir(&tmp).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        sync_dir(root).map_err(io(root))
    };
    if let Err(e) = build() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let (log, _) = Log::open(&final_dir.join(log_file(0))).map_err(io(&final_dir))?;
    Ok((final_dir, log))
}

/// Recovers the collection in `dir`: its newest snapshot, opened with `model`, and its log
/// replayed; older generations and temporary files are removed.
fn recover(
    dir: &Path,
    model: &Model,
    warnings: &mut Vec<String>,
) -> Result<(Collection, usize), ServeError> {
    let bad = |message: String| ServeError::Store {
        path: dir.to_path_buf(),
        message,
    };
    let name_path = dir.join("name");
    let name = std::fs::read_to_string(&name_path).map_err(|e| ServeError::io(&name_path, e))?;
    names::check_gallery(&name).map_err(bad)?;
    let mut gens = Vec::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ServeError::io(dir, e))? {
        let entry = entry.map_err(|e| ServeError::io(dir, e))?;
        let f = entry.file_name().to_string_lossy().into_owned();
        let gen = f
            .strip_prefix("gallery.")
            .and_then(|r| r.strip_suffix(".safetensors"))
            .and_then(|n| n.parse::<u64>().ok());
        match gen {
            Some(g) => gens.push(g),
            None if f == "name" => {}
            None => others.push(f),
        }
    }
    let Some(&gen) = gens.iter().max() else {
        return Err(bad(format!(
            "collection `{name}` has no gallery file (gallery.N.safetensors)"
        )));
    };
    let snapshot = dir.join(gallery_file(gen));
    let mut gallery = Gallery::open(&snapshot, model).map_err(|e| match e {
        InferError::OtherModel { .. } => bad(format!(
            "collection `{name}`: {e}; serve this store with the model that enrolled it, or \
             move the folder away"
        )),
        other => ServeError::Infer(other),
    })?;
    // Everything but this generation goes: older snapshots and logs, temporary files.
    for g in gens.iter().filter(|&&g| g != gen) {
        let _ = std::fs::remove_file(dir.join(gallery_file(*g)));
    }
    for f in &others {
        if *f != log_file(gen) {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
    let log_path = dir.join(log_file(gen));
    let (log, contents) = Log::open(&log_path).map_err(|e| ServeError::io(&log_path, e))?;
    if contents.dropped > 0 {
        warnings.push(format!(
            "{}: ignored a torn last record ({} bytes, never acknowledged)",
            log_path.display(),
            contents.dropped
        ));
    }
    let records = contents.records.len();
    for (i, payload) in contents.records.into_iter().enumerate() {
        let (change, rows) = decode(&payload).map_err(|m| bad(format!("log record {i}: {m}")))?;
        gallery =
            apply(&gallery, change, &rows).map_err(|m| bad(format!("log record {i}: {m}")))?;
    }
    let _ = sync_dir(dir);
    Ok((
        Collection::new(name, Some(dir.to_path_buf()), gallery, gen, Some(log)),
        records,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_through_records() -> Result<(), String> {
        let rows = [1.5f32, -0.0, f32::MIN_POSITIVE, 3.0];
        let add = Change::Add {
            identity: "José".into(),
            rows: 2,
            paths: vec!["a.png".into(), "b.png".into()],
        };
        let (back, r) = decode(&encode(&add, &rows))?;
        assert!(matches!(back, Change::Add { ref identity, rows: 2, .. } if identity == "José"));
        assert_eq!(
            r.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            rows.map(f32::to_bits)
        );
        let (back, r) = decode(&encode(
            &Change::Remove {
                identity: "x".into(),
            },
            &[],
        ))?;
        assert!(matches!(back, Change::Remove { ref identity } if identity == "x"));
        assert!(r.is_empty());
        assert!(decode(&[1, 0]).is_err());
        assert!(decode(&[200, 0, 0, 0, b'{']).is_err());
        Ok(())
    }
}
