//! LFW verification protocol files: `pairs.txt`, `pairsDevTrain.txt`, `pairsDevTest.txt`.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// One pair of the LFW protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LfwPair {
    /// 0-based fold (always 0 in single-set files such as `pairsDevTrain.txt`).
    pub fold: usize,
    /// Whether both images show the same person.
    pub is_same: bool,
    /// First person's name, e.g. `Abel_Pacheco`.
    pub name_a: String,
    /// First image number (1-based, as in the file names).
    pub index_a: u32,
    /// Second person's name (equal to `name_a` for matched pairs).
    pub name_b: String,
    /// Second image number.
    pub index_b: u32,
}

impl LfwPair {
    /// The two image paths under an LFW image root (`root/name/name_0001.jpg`).
    pub fn paths(&self, images_root: &Path) -> (PathBuf, PathBuf) {
        (
            lfw_image_path(images_root, &self.name_a, self.index_a),
            lfw_image_path(images_root, &self.name_b, self.index_b),
        )
    }
}

/// `root/name/name_%04d.jpg`.
pub fn lfw_image_path(root: &Path, name: &str, index: u32) -> PathBuf {
    root.join(name).join(format!("{name}_{index:04}.jpg"))
}

/// A parsed pairs file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LfwPairs {
    /// Number of folds (10 for `pairs.txt`, 1 for the development files).
    pub folds: usize,
    /// Matched pairs per fold (equal to mismatched pairs per fold).
    pub per_fold: usize,
    /// All pairs, fold by fold: matched then mismatched within each fold.
    pub pairs: Vec<LfwPair>,
}

impl LfwPairs {
    /// Reads and parses a pairs file.
    pub fn open(path: impl AsRef<Path>) -> Result<LfwPairs> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        LfwPairs::parse(&text, path)
    }

    /// Parses pairs text. The first line is `folds n` or just `n` (one fold); each fold has
    /// `n` lines `name i j` then `n` lines `name1 i name2 j`. `path` names the file in errors.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<LfwPairs> {
        let path = path.as_ref();
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty());
        let (hline, header) = lines
            .next()
            .ok_or_else(|| DataError::parse(path, 1, "empty pairs file"))?;
        let nums: Vec<&str> = header.split_whitespace().collect();
        let parse_n = |s: &str| {
            s.parse::<usize>().map_err(|_| {
                DataError::parse(
                    path,
                    hline,
                    format!("expected a count in the header, found `{s}`"),
                )
            })
        };
        let (folds, per_fold) = match nums.as_slice() {
            [n] => (1, parse_n(n)?),
            [f, n] => (parse_n(f)?, parse_n(n)?),
            _ => {
                return Err(DataError::parse(
                    path,
                    hline,
                    format!("header must be `folds n` or `n`, found `{header}`"),
                ))
            }
        };
        let index = |s: &str, line: usize| {
            s.parse::<u32>().map_err(|_| {
                DataError::parse(path, line, format!("expected an image number, found `{s}`"))
            })
        };
        let declared = (folds as u64)
            .checked_mul(per_fold as u64)
            .and_then(|n| n.checked_mul(2))
            .filter(|&n| n <= crate::limits::MAX_PROTOCOL_PAIRS)
            .ok_or_else(|| {
                DataError::parse(
                    path,
                    hline,
                    format!(
                        "header declares {folds} folds of {per_fold} pairs each way, over the limit of {} pairs",
                        crate::limits::MAX_PROTOCOL_PAIRS
                    ),
                )
            })?;
        // Never reserve more than the lines present can fill.
        let mut pairs = Vec::with_capacity((declared as usize).min(text.lines().count()));
        for fold in 0..folds {
            for is_same in [true, false] {
                for _ in 0..per_fold {
                    let (ln, line) = lines.next().ok_or_else(|| {
                        DataError::parse(
                            path,
                            text.lines().count(),
                            format!(
                                "file ends early: header promises {folds} folds of {per_fold} matched and {per_fold} mismatched pairs"
                            ),
                        )
                    })?;
                    let t: Vec<&str> = line.split_whitespace().collect();
                    let pair = match (is_same, t.as_slice()) {
                        (true, [name, i, j]) => LfwPair {
                            fold,
                            is_same,
                            name_a: name.to_string(),
                            index_a: index(i, ln)?,
                            name_b: name.to_string(),
                            index_b: index(j, ln)?,
                        },
                        (false, [a, i, b, j]) => LfwPair {
                            fold,
                            is_same,
                            name_a: a.to_string(),
                            index_a: index(i, ln)?,
                            name_b: b.to_string(),
                            index_b: index(j, ln)?,
                        },
                        _ => {
                            let want = if is_same {
                                "a matched pair `name i j`"
                            } else {
                                "a mismatched pair `name1 i name2 j`"
                            };
                            return Err(DataError::parse(
                                path,
                                ln,
                                format!("expected {want} (fold {}), found `{line}`", fold + 1),
                            ));
                        }
                    };
                    pairs.push(pair);
                }
            }
        }
        if let Some((ln, line)) = lines.next() {
            return Err(DataError::parse(
                path,
                ln,
                format!("unexpected line after the last fold: `{line}`"),
            ));
        }
        Ok(LfwPairs {
            folds,
            per_fold,
            pairs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_folds_and_single_set() {
        let text = "2\t1\nAl 1 2\nAl 1 Bo 3\nCy 2 4\nDi 1 Ed 12\n";
        let p = LfwPairs::parse(text, "pairs.txt").unwrap();
        assert_eq!((p.folds, p.per_fold, p.pairs.len()), (2, 1, 4));
        assert!(p.pairs[0].is_same && !p.pairs[1].is_same);
        assert_eq!(p.pairs[2].fold, 1);
        assert_eq!(p.pairs[3].name_b, "Ed");
        let (a, b) = p.pairs[3].paths(Path::new("/lfw"));
        assert_eq!(a, Path::new("/lfw/Di/Di_0001.jpg"));
        assert_eq!(b, Path::new("/lfw/Ed/Ed_0012.jpg"));

        let dev = LfwPairs::parse("2\nA 1 2\nB 3 4\nA 1 B 2\nC 1 D 1\n", "dev.txt").unwrap();
        assert_eq!((dev.folds, dev.per_fold), (1, 2));
        assert_eq!(dev.pairs.iter().filter(|p| p.is_same).count(), 2);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = LfwPairs::parse("1 1\nAl 1 2\nAl 1 2\n", "p.txt").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("p.txt:3:") && msg.contains("mismatched"),
            "{msg}"
        );
        let e = LfwPairs::parse("1 2\nAl 1 2\n", "p.txt").unwrap_err();
        assert!(e.to_string().contains("ends early"), "{e}");
        let e = LfwPairs::parse("1 1\nAl x 2\nA 1 B 2\n", "p.txt").unwrap_err();
        assert!(e.to_string().contains("`x`"), "{e}");
        let e = LfwPairs::parse("1 1\nAl 1 2\nA 1 B 2\nextra\n", "p.txt").unwrap_err();
        assert!(e.to_string().contains("after the last fold"), "{e}");
    }
}
