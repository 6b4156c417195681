//! Changing a gallery in memory: an empty gallery, images added to an identity, an identity
//! removed. Each change gives a new [`Gallery`] (the rows are copied once, `O(rows · R)`), so
//! whoever still holds the old one keeps searching it undisturbed; the gallery's model
//! fingerprint and test-time augmentation carry over, and no file is touched (`siamese-serve`
//! logs each change before it publishes the new gallery).

use super::{Gallery, GalleryIndex};
use crate::error::{InferError, Result};
use crate::model::Model;

impl Gallery {
    /// A gallery with nothing enrolled, for `model` (its fingerprint and test-time
    /// augmentation).
    pub fn empty(model: &Model) -> Result<Self> {
        Self::from_rows(model, Vec::new(), Vec::new(), Vec::new(), Vec::new())
    }

    /// This gallery with `rows` (whole representations made as [`Gallery::embed_probes`]
    /// makes them, one after the other) added to `identity`, which is created after the
    /// others when it is new. `paths` names each new row's image; it is kept when the gallery
    /// keeps its rows' paths (every gallery enrolled from a folder, and an empty one).
    ///
    /// # Shapes
    /// `rows`: `n · R` values (`R` = [`Gallery::row_len`], `n ≥ 1`), `paths`: `n` names.
    pub fn with_rows(&self, identity: &str, rows: &[f32], paths: Vec<String>) -> Result<Self> {
        let dim = self.row_len();
        if rows.is_empty() || !rows.len().is_multiple_of(dim) {
            return Err(InferError::Config(format!(
                "gallery: {} values are not whole rows of {dim}",
                rows.len()
            )));
        }
        let n = rows.len() / dim;
        if paths.len() != n {
            return Err(InferError::Config(format!(
                "gallery: {} paths for {n} rows",
                paths.len()
            )));
        }
        let mut meta = self.meta.clone();
        let label = match meta.identities.iter().position(|i| i == identity) {
            Some(l) => l,
            None => {
                meta.identities.push(identity.to_string());
                meta.identities.len() - 1
            }
        };
        let keep_paths = meta.paths.len() == meta.labels.len();
        meta.labels.extend(std::iter::repeat_n(label, n));
        if keep_paths {
            meta.paths.extend(paths);
        }
        let mut data = Vec::with_capacity(self.rows().len() + rows.len());
        data.extend_from_slice(self.rows());
        data.extend_from_slice(rows);
        Ok(Gallery {
            meta,
            tta: self.tta,
            matcher: self.matcher,
            index: GalleryIndex::new(data, dim)?,
        })
    }

    /// This gallery without `identity` and its rows (the identities after it move up one
    /// label), with the number of rows removed; `None` when it has no such identity.
    pub fn without_identity(&self, identity: &str) -> Result<Option<(Self, usize)>> {
        let Some(gone) = self.meta.identities.iter().position(|i| i == identity) else {
            return Ok(None);
        };
        let dim = self.row_len();
        let mut meta = self.meta.clone();
        meta.identities.remove(gone);
        let keep_paths = self.meta.paths.len() == self.meta.labels.len();
        meta.labels.clear();
        meta.paths.clear();
        let mut data = Vec::with_capacity(self.rows().len());
        let mut removed = 0;
        for (row, &label) in self.meta.labels.iter().enumerate() {
            if label == gone {
                removed += 1;
                continue;
            }
            meta.labels
                .push(if label > gone { label - 1 } else { label });
            if keep_paths {
                meta.paths.push(self.meta.paths[row].clone());
            }
            data.extend_from_slice(&self.rows()[row * dim..(row + 1) * dim]);
        }
        let gallery = Gallery {
            meta,
            tta: self.tta,
            matcher: self.matcher,
            index: GalleryIndex::new(data, dim)?,
        };
        Ok(Some((gallery, removed)))
    }

    /// How many rows (images) each identity has, in the order of [`Gallery::identities`].
    pub fn rows_per_identity(&self) -> Vec<usize> {
        let mut counts = vec![0; self.meta.identities.len()];
        for &l in &self.meta.labels {
            counts[l] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::super::{random_unit_rows, GalleryMeta};
    use super::*;
    use siamese_ops::distance::Distance;

    fn gallery(rows: usize, ids: usize, dim: usize) -> Result<Gallery> {
        let meta = GalleryMeta {
            model: "f".into(),
            identities: (0..ids).map(|i| format!("id{i}")).collect(),
            labels: (0..rows).map(|r| r % ids).collect(),
            paths: (0..rows).map(|r| format!("p{r}")).collect(),
            tta: None,
        };
        Ok(Gallery {
            meta,
            tta: crate::Tta::None,
            matcher: Distance::SquaredL2.into(),
            index: GalleryIndex::new(random_unit_rows(rows, dim, 7), dim)?,
        })
    }

    #[test]
    fn adding_and_removing_identities_keeps_rows_labels_and_paths_together() -> Result<()> {
        let g = gallery(6, 3, 4)?;
        let extra = random_unit_rows(2, 4, 9);
        let added = g.with_rows("id1", &extra, vec!["x".into(), "y".into()])?;
        assert_eq!(added.len(), 8);
        assert_eq!(added.rows_per_identity(), vec![2, 4, 2]);
        assert_eq!(&added.rows()[6 * 4..], &extra[..]);
        let new = added.with_rows("new", &extra[..4], vec!["z".into()])?;
        assert_eq!(new.identities().last().map(String::as_str), Some("new"));
        let (without, removed) = new
            .without_identity("id1")?
            .ok_or_else(|| InferError::Config("id1 should be there".into()))?;
        assert_eq!(removed, 4);
        assert_eq!(without.identities(), ["id0", "id2", "new"]);
        assert_eq!(without.labels(), [0, 1, 0, 1, 2]);
        assert_eq!(without.meta().paths, ["p0", "p2", "p3", "p5", "z"]);
        assert_eq!(&without.rows()[4..8], &g.rows()[2 * 4..3 * 4]);
        assert!(without.without_identity("nobody")?.is_none());
        assert!(g.with_rows("id0", &extra[..3], vec!["a".into()]).is_err());
        assert!(g.with_rows("id0", &extra[..4], Vec::new()).is_err());
        Ok(())
    }
}
