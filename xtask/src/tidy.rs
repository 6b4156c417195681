//! Tidy checks that run as tests (`cargo test -p xtask`): every Rust file of the workspace
//! opens with a `//!` comment saying what it is.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" || name == "data" {
                continue;
            }
            if p.is_dir() {
                rust_files(&p, out);
            } else if name.ends_with(".rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn every_rust_file_starts_with_a_module_doc_comment() {
        let root = crate::eval::root();
        let mut files = Vec::new();
        for dir in ["crates", "xtask", "src", "tests"] {
            rust_files(&root.join(dir), &mut files);
        }
        assert!(
            files.len() > 20,
            "found only {} Rust files under {}",
            files.len(),
            root.display()
        );
        let missing: Vec<String> = files
            .iter()
            .filter(|f| {
                std::fs::read_to_string(f)
                    .map(|t| !t.trim_start().starts_with("//!"))
                    .unwrap_or(true)
            })
            .map(|f| f.display().to_string())
            .collect();
        assert!(
            missing.is_empty(),
            "files without a leading //! comment: {missing:?}"
        );
    }
}
