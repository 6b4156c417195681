//! Labelled image collections: layouts on disk, merging, class selection and splits.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::decode::is_image_name;
use crate::error::{DataError, Result};
use crate::skipped::Skipped;
use crate::source::ImageSource;

/// Deepest folder nesting [`Dataset::open_folder`] descends into.
pub const MAX_FOLDER_DEPTH: usize = 32;

/// One labelled image.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Where the image is.
    pub source: ImageSource,
    /// Index into [`Dataset::classes`].
    pub class: usize,
}

/// A labelled set of images: items in a deterministic order, class names sorted naturally
/// (`s2` before `s10`).
///
/// Class names are relative folder paths with `/` separators: `s1` for AT&T,
/// `Greek/character01` for Omniglot (alphabet, then character).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    /// The images, grouped by class in class order.
    pub items: Vec<Item>,
    /// Class names; `items[i].class` indexes this.
    pub classes: Vec<String>,
}

/// How many classes a split holds out: a fraction of all classes or an exact count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SplitSize {
    /// A fraction in `(0, 1)`, rounded to the nearest class count (at least 1).
    Fraction(f64),
    /// An exact number of classes.
    Count(usize),
}

/// Compares strings so that embedded numbers sort by value (`s2 < s10`).
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (&a[..da], &b[..db]);
                let ta = trim_zeros(na);
                let tb = trim_zeros(nb);
                let ord = ta
                    .len()
                    .cmp(&tb.len())
                    .then_with(|| ta.cmp(tb))
                    .then_with(|| na.len().cmp(&nb.len()));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&c| c == b'0').count();
    &d[n..]
}

/// The alphabet of an Omniglot-style class name: everything before the last `/`
/// (`Greek/character01` -> `Greek`); empty for a flat name.
pub fn alphabet_of(class: &str) -> &str {
    class.rsplit_once('/').map(|(a, _)| a).unwrap_or("")
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.') || name == "__MACOSX"
}

impl Dataset {
    /// Builds a data set from `(class name, source, sort key)` triples: classes sorted
    /// naturally, items sorted by class then key.
    pub fn from_labelled(mut entries: Vec<(String, ImageSource, String)>) -> Dataset {
        entries.sort_by(|a, b| natural_cmp(&a.0, &b.0).then_with(|| natural_cmp(&a.2, &b.2)));
        let mut classes: Vec<String> = Vec::new();
        let mut items = Vec::with_capacity(entries.len());
        for (class, source, _) in entries {
            if classes.last() != Some(&class) {
                classes.push(class);
            }
            items.push(Item {
                source,
                class: classes.len() - 1,
            });
        }
        Dataset { items, classes }
    }

    /// Opens a data set, recognising its layout:
    /// - a zip archive (Omniglot as published): members `TOP/<Alphabet>/<character>/<file>.png`
    ///   or `<class>/<file>`, read without unpacking;
    /// - an IDX images file (`*-images-idx3-ubyte[.gz]`, labels found beside it), or a folder
    ///   holding `train-images-idx3-ubyte[.gz]` and its labels;
    /// - an image folder `ROOT/<class>/<image>` at any depth (the class is the relative path
    ///   of the image's folder, e.g. `Greek/character01`, or `s1` for AT&T).
    ///
    /// What the listing leaves out is dropped here without a word; [`Dataset::open_reporting`]
    /// returns it.
    pub fn open(path: impl AsRef<Path>) -> Result<Dataset> {
        Dataset::open_reporting(path, false).map(|(d, _)| d)
    }

    /// [`Dataset::open`], also returning everything the listing left out, with the reason:
    /// names that are not UTF-8, class folders without images, files that are not images,
    /// images outside any class folder. An entry that cannot be read at all (a dangling
    /// symbolic link, a folder without permission) is an error naming it, or with `skip_bad`
    /// one more skipped entry.
    pub fn open_reporting(
        path: impl AsRef<Path>,
        skip_bad: bool,
    ) -> Result<(Dataset, Vec<Skipped>)> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        if meta.is_dir() {
            for ext in ["", ".gz"] {
                let images = path.join(format!("train-images-idx3-ubyte{ext}"));
                if images.is_file() {
                    let labels = crate::idx::labels_beside(&images)?;
                    return Ok((Dataset::open_idx(&images, &labels)?, Vec::new()));
                }
            }
            return Dataset::open_folder_reporting(path, skip_bad);
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.contains("-images-idx3-ubyte") {
            let labels = crate::idx::labels_beside(path)?;
            return Ok((Dataset::open_idx(path, &labels)?, Vec::new()));
        }
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
            let _ = f.read(&mut magic).map_err(|e| DataError::io(path, e))?;
        }
        if &magic == b"PK\x03\x04" || name.to_ascii_lowercase().ends_with(".zip") {
            return Dataset::open_zip_reporting(path);
        }
        Err(DataError::layout(
            path,
            "not a folder, a zip archive or an IDX images file",
        ))
    }

    /// Opens an image folder: every image below `root` in a sub-folder, labelled by the
    /// relative path of its folder. Hidden files and folders and non-image files are skipped.
    pub fn open_folder(root: impl AsRef<Path>) -> Result<Dataset> {
        Dataset::open_folder_reporting(root, false).map(|(d, _)| d)
    }

    /// [`Dataset::open_folder`], also returning what it left out (see
    /// [`Dataset::open_reporting`]).
    pub fn open_folder_reporting(
        root: impl AsRef<Path>,
        skip_bad: bool,
    ) -> Result<(Dataset, Vec<Skipped>)> {
        let root = root.as_ref();
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        let mut walker = Walker {
            root,
            skip_bad,
            out: &mut entries,
            skipped: &mut skipped,
        };
        walker.walk(root, 0)?;
        if entries.is_empty() {
            return Err(DataError::layout(
                root,
                "no images in class sub-folders (expected ROOT/<class>/<image>)",
            ));
        }
        Ok((Dataset::from_labelled(entries), skipped))
    }

    /// Opens a zip archive of class folders without unpacking it. When every image lies
    /// at least two folders deep under one common top folder (Omniglot's
    /// `images_background_small1/`), that folder is not part of the class name.
    pub fn open_zip(archive: impl AsRef<Path>) -> Result<Dataset> {
        Dataset::open_zip_reporting(archive).map(|(d, _)| d)
    }

    /// [`Dataset::open_zip`], also returning the members it left out: files that are not
    /// images, and images outside any class folder.
    pub fn open_zip_reporting(archive: impl AsRef<Path>) -> Result<(Dataset, Vec<Skipped>)> {
        let archive = archive.as_ref();
        let file = std::fs::File::open(archive).map_err(|e| DataError::io(archive, e))?;
        let zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| DataError::archive(archive, e))?;
        let shared = Arc::new(archive.to_path_buf());
        let mut skipped = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for n in zip.file_names() {
            if n.ends_with('/') || n.split('/').any(is_hidden) {
                continue;
            }
            let member = || crate::source::zip_member_name(archive, n);
            if !is_image_name(n) {
                skipped.push(Skipped::new(member(), "not an image file"));
            } else if !n.contains('/') {
                skipped.push(Skipped::new(member(), "an image outside any class folder"));
            } else {
                names.push(n);
            }
        }
        skipped.sort_by(|a, b| a.path.cmp(&b.path));
        let first = names
            .first()
            .and_then(|n| n.split('/').next())
            .unwrap_or("");
        let strip = !names.is_empty()
            && names
                .iter()
                .all(|n| n.split('/').count() >= 3 && n.split('/').next() == Some(first));
        let mut entries = Vec::with_capacity(names.len());
        for n in names {
            let rel = if strip {
                n.split_once('/').map(|(_, r)| r).unwrap_or(n)
            } else {
                n
            };
            let Some((class, file)) = rel.rsplit_once('/') else {
                continue;
            };
            entries.push((
                class.to_string(),
                ImageSource::Zip {
                    archive: shared.clone(),
                    entry: n.to_string(),
                },
                file.to_string(),
            ));
        }
        if entries.is_empty() {
            return Err(DataError::layout(
                archive,
                "no images in class folders inside the archive",
            ));
        }
        Ok((Dataset::from_labelled(entries), skipped))
    }

    /// Merges several data sets. A class name that appears in more than one keeps only the
    /// images of its first occurrence (Greek and Latin are in both Omniglot small sets).
    pub fn merge(list: impl IntoIterator<Item = Dataset>) -> Dataset {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut entries = Vec::new();
        for (set_index, ds) in list.into_iter().enumerate() {
            let mut keep = vec![false; ds.classes.len()];
            for (c, name) in ds.classes.iter().enumerate() {
                if !seen.contains_key(name) {
                    seen.insert(name.clone(), set_index);
                    keep[c] = true;
                }
            }
            for (i, item) in ds.items.into_iter().enumerate() {
                if keep[item.class] {
                    entries.push((ds.classes[item.class].clone(), item.source, i));
                }
            }
        }
        entries.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        let mut classes: Vec<String> = Vec::new();
        let mut items = Vec::with_capacity(entries.len());
        for (class, source, _) in entries {
            if classes.last() != Some(&class) {
                classes.push(class);
            }
            items.push(Item {
                source,
                class: classes.len() - 1,
            });
        }
        Dataset { items, classes }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Images per class, indexed like [`Dataset::classes`].
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for item in &self.items {
            if let Some(c) = counts.get_mut(item.class) {
                *c += 1;
            }
        }
        counts
    }

    /// Item indices of each class, indexed like [`Dataset::classes`].
    pub fn items_by_class(&self) -> Vec<Vec<usize>> {
        let mut by = vec![Vec::new(); self.classes.len()];
        for (i, item) in self.items.iter().enumerate() {
            if let Some(v) = by.get_mut(item.class) {
                v.push(i);
            }
        }
        by
    }

    /// The index of a class by name.
    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c == name)
    }

    /// Distinct alphabets (see [`alphabet_of`]) in class order.
    pub fn alphabets(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in &self.classes {
            let a = alphabet_of(c);
            if !out.iter().any(|x| x == a) {
                out.push(a.to_string());
            }
        }
        out
    }

    /// The classes for which `keep(name)` holds, with their images, renumbered in order.
    pub fn filter_classes(&self, mut keep: impl FnMut(&str) -> bool) -> Dataset {
        let mask: Vec<bool> = self.classes.iter().map(|c| keep(c)).collect();
        self.subset(&mask)
    }

    fn subset(&self, keep: &[bool]) -> Dataset {
        let mut remap = vec![usize::MAX; self.classes.len()];
        let mut classes = Vec::new();
        for (c, name) in self.classes.iter().enumerate() {
            if keep.get(c).copied().unwrap_or(false) {
                remap[c] = classes.len();
                classes.push(name.clone());
            }
        }
        let items = self
            .items
            .iter()
            .filter_map(|it| {
                let c = *remap.get(it.class)?;
                (c != usize::MAX).then(|| Item {
                    source: it.source.clone(),
                    class: c,
                })
            })
            .collect();
        Dataset { items, classes }
    }

    /// The classes picked by a selection such as `s1-s20,s25` (see
    /// [`parse_class_selection`]); an error if some part of it matches no class.
    pub fn classes_matching(&self, selection: &ClassSelection) -> Result<Dataset> {
        for part in &selection.parts {
            if !self.classes.iter().any(|c| part.matches(c)) {
                return Err(DataError::Invalid(format!(
                    "class selection `{}` matches no class (classes are e.g. {})",
                    part.text,
                    self.classes
                        .iter()
                        .take(3)
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(self.filter_classes(|c| selection.matches(c)))
    }

    /// [`Dataset::classes_matching`] for a selection given as text (`"s1-s20,s25"`).
    pub fn select(&self, selection: &str) -> Result<Dataset> {
        self.classes_matching(&parse_class_selection(selection)?)
    }

    /// Splits the classes into two disjoint sets, seeded: `(kept, held_out)`, where
    /// `held_out` has the requested number of classes chosen at random. Both keep the
    /// original class order.
    pub fn class_disjoint_split(
        &self,
        seed: u64,
        held_out: SplitSize,
    ) -> Result<(Dataset, Dataset)> {
        let n = self.classes.len();
        let k = match held_out {
            SplitSize::Count(k) => k,
            SplitSize::Fraction(f) => {
                if !(f > 0.0 && f < 1.0) {
                    return Err(DataError::Invalid(format!(
                        "split fraction must be in (0, 1), got {f}"
                    )));
                }
                ((n as f64 * f).round() as usize).max(1)
            }
        };
        if k == 0 || k >= n {
            return Err(DataError::Invalid(format!(
                "cannot hold out {k} of {n} classes: both sides need at least one class"
            )));
        }
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        order.shuffle(&mut rng);
        let mut held = vec![false; n];
        for &c in &order[..k] {
            held[c] = true;
        }
        let kept: Vec<bool> = held.iter().map(|h| !h).collect();
        Ok((self.subset(&kept), self.subset(&held)))
    }

    /// Splits by class-name prefix: `(matching, rest)`, where `matching` holds the classes
    /// whose name starts with one of `prefixes`. For Omniglot pass alphabets with a trailing
    /// `/` (`"Greek/"`) to split by alphabet.
    pub fn split_by_prefix<S: AsRef<str>>(&self, prefixes: &[S]) -> (Dataset, Dataset) {
        let hit: Vec<bool> = self
            .classes
            .iter()
            .map(|c| prefixes.iter().any(|p| c.starts_with(p.as_ref())))
            .collect();
        let miss: Vec<bool> = hit.iter().map(|h| !h).collect();
        (self.subset(&hit), self.subset(&miss))
    }

    /// Splits by alphabet: `(in alphabets, rest)`.
    pub fn split_by_alphabet<S: AsRef<str>>(&self, alphabets: &[S]) -> (Dataset, Dataset) {
        let hit: Vec<bool> = self
            .classes
            .iter()
            .map(|c| alphabets.iter().any(|a| alphabet_of(c) == a.as_ref()))
            .collect();
        let miss: Vec<bool> = hit.iter().map(|h| !h).collect();
        (self.subset(&hit), self.subset(&miss))
    }
}

/// The recursive listing of an image folder, collecting images and what it leaves out.
struct Walker<'a> {
    root: &'a Path,
    skip_bad: bool,
    out: &'a mut Vec<(String, ImageSource, String)>,
    skipped: &'a mut Vec<Skipped>,
}

impl Walker<'_> {
    /// An entry that cannot be read: an error, or with `skip_bad` a skipped entry.
    fn unreadable(&mut self, path: &Path, e: std::io::Error) -> Result<()> {
        if self.skip_bad {
            self.skipped
                .push(Skipped::new(path, format!("cannot be read: {e}")));
            Ok(())
        } else {
            Err(DataError::io(path, e))
        }
    }

    /// Lists `dir`; returns whether it or a folder below it held an image.
    fn walk(&mut self, dir: &Path, depth: usize) -> Result<bool> {
        if depth > MAX_FOLDER_DEPTH {
            return Err(DataError::layout(
                dir,
                format!("folders nested deeper than {MAX_FOLDER_DEPTH} levels"),
            ));
        }
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if depth > 0 => {
                self.unreadable(dir, e)?;
                return Ok(false);
            }
            Err(e) => return Err(DataError::io(dir, e)),
        };
        let mut children: Vec<(String, PathBuf)> = Vec::new();
        for entry in rd {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.unreadable(dir, e)?;
                    continue;
                }
            };
            let name = match entry.file_name().into_string() {
                Ok(name) => name,
                Err(_) => {
                    self.skipped
                        .push(Skipped::new(entry.path(), "the name is not valid UTF-8"));
                    continue;
                }
            };
            if is_hidden(&name) {
                continue;
            }
            children.push((name, entry.path()));
        }
        children.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        let mut found = false;
        let mut folders = false;
        for (name, path) in children {
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) => {
                    self.unreadable(&path, e)?;
                    continue;
                }
            };
            if meta.is_dir() {
                folders = true;
                found |= self.walk(&path, depth + 1)?;
            } else if !is_image_name(&name) {
                self.skipped.push(Skipped::new(path, "not an image file"));
            } else if depth == 0 {
                self.skipped
                    .push(Skipped::new(path, "an image outside any class folder"));
            } else {
                let class = dir
                    .strip_prefix(self.root)
                    .unwrap_or(dir)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                self.out.push((class, ImageSource::File(path), name));
                found = true;
            }
        }
        if depth > 0 && !found && !folders {
            self.skipped
                .push(Skipped::new(dir, "a class folder without images"));
        }
        Ok(found)
    }
}

/// A parsed class selection (see [`parse_class_selection`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassSelection {
    parts: Vec<SelectionPart>,
}

#[derive(Debug, Clone, PartialEq)]
struct SelectionPart {
    text: String,
    kind: PartKind,
}

#[derive(Debug, Clone, PartialEq)]
enum PartKind {
    Exact(String),
    Prefix(String),
    Range { prefix: String, lo: u64, hi: u64 },
}

impl SelectionPart {
    fn matches(&self, class: &str) -> bool {
        match &self.kind {
            PartKind::Exact(s) => class == s,
            PartKind::Prefix(p) => class.starts_with(p.as_str()),
            PartKind::Range { prefix, lo, hi } => {
                let Some(rest) = class.strip_prefix(prefix.as_str()) else {
                    return false;
                };
                !rest.is_empty()
                    && rest.bytes().all(|b| b.is_ascii_digit())
                    && rest.parse::<u64>().is_ok_and(|n| (*lo..=*hi).contains(&n))
            }
        }
    }
}

impl ClassSelection {
    /// Whether `class` is selected by any part.
    pub fn matches(&self, class: &str) -> bool {
        self.parts.iter().any(|p| p.matches(class))
    }
}

fn split_number(s: &str) -> Option<(&str, u64)> {
    let digits = s.bytes().rev().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let (prefix, num) = s.split_at(s.len() - digits);
    num.parse().ok().map(|n| (prefix, n))
}

/// Parses a comma-separated class selection. Each part is one of:
/// - an exact class name: `s25`, `Greek/character01`;
/// - a numbered range with a common prefix: `s1-s20` (matches `s1` .. `s20`),
///   `Greek/character01-Greek/character05` (zero padding ignored);
/// - a prefix ending in `*`: `Greek/*`.
pub fn parse_class_selection(text: &str) -> Result<ClassSelection> {
    let mut parts = Vec::new();
    for raw in text.split(',') {
        let part = raw.trim();
        if part.is_empty() {
            continue;
        }
        let kind = if let Some(p) = part.strip_suffix('*') {
            PartKind::Prefix(p.to_string())
        } else if let Some((a, b)) = part
            .split_once('-')
            .and_then(|(a, b)| Some((split_number(a)?, split_number(b)?)))
        {
            let ((pa, lo), (pb, hi)) = (a, b);
            // `s1-20` is also accepted: the second end may omit the prefix.
            if pa != pb && !pb.is_empty() {
                return Err(DataError::Invalid(format!(
                    "class range `{part}`: both ends need the same prefix"
                )));
            }
            if lo > hi {
                return Err(DataError::Invalid(format!(
                    "class range `{part}`: start is after end"
                )));
            }
            PartKind::Range {
                prefix: pa.to_string(),
                lo,
                hi,
            }
        } else {
            PartKind::Exact(part.to_string())
        };
        parts.push(SelectionPart {
            text: part.to_string(),
            kind,
        });
    }
    if parts.is_empty() {
        return Err(DataError::Invalid(format!(
            "empty class selection `{text}`"
        )));
    }
    Ok(ClassSelection { parts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec!["s10", "s2", "s1", "a", "s01"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["a", "s1", "s01", "s2", "s10"]);
    }

    #[test]
    fn selection_parts() {
        let s = parse_class_selection("s1-s3, s25,Greek/*").unwrap();
        for yes in ["s1", "s2", "s3", "s25", "Greek/character07"] {
            assert!(s.matches(yes), "{yes}");
        }
        for no in ["s4", "s10", "s", "s2x", "Latin/character01", "s250"] {
            assert!(!s.matches(no), "{no}");
        }
        let padded = parse_class_selection("Greek/character01-Greek/character03").unwrap();
        assert!(padded.matches("Greek/character02"));
        assert!(!padded.matches("Greek/character04"));
        assert!(parse_class_selection("s3-s1").is_err());
        assert!(parse_class_selection("s1-t3").is_err());
        assert!(parse_class_selection(" , ").is_err());
        // A name that merely contains a dash is exact.
        let d = parse_class_selection("Japanese_(katakana)/character01").unwrap();
        assert!(d.matches("Japanese_(katakana)/character01"));
    }
}
