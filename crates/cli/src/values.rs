//! Value parsers for flags: a bad value is a usage error at parse time (exit 2), naming the
//! flag and the allowed range, before any file is read.

use siamese_encoder::{MAX_EMBEDDING_DIM, MAX_INPUT_SIDE, MAX_MEMBERS, MAX_WIDTH};

/// The most CPU threads `--threads` accepts.
pub const MAX_THREADS: usize = 1024;
/// The most ways of an N-way episode.
pub const MAX_WAYS: usize = 10_000;
/// The most episodes, shots or identities listed per probe.
pub const MAX_COUNT: usize = 10_000_000;

fn integer(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| format!("`{s}` is not a whole number ≥ 0"))
}

fn in_range(s: &str, lo: u64, hi: u64) -> Result<u64, String> {
    let v = integer(s)?;
    if v < lo || v > hi {
        return Err(format!("{v} is out of range: it must be from {lo} to {hi}"));
    }
    Ok(v)
}

fn usize_in(s: &str, lo: usize, hi: usize) -> Result<usize, String> {
    in_range(s, lo as u64, hi as u64).map(|v| v as usize)
}

fn real(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() {
        return Err(format!("{v} is not a finite number"));
    }
    Ok(v)
}

/// `--threads`: 1 to [`MAX_THREADS`].
pub fn threads(s: &str) -> Result<usize, String> {
    usize_in(s, 1, MAX_THREADS)
}

/// A distance threshold: finite and ≥ 0.
pub fn threshold(s: &str) -> Result<f32, String> {
    let v = real(s)?;
    if v < 0.0 || v > f32::MAX as f64 {
        return Err(format!(
            "{v} is out of range: it must be a finite distance ≥ 0"
        ));
    }
    Ok(v as f32)
}

/// A finite number > 0 (a time budget, a learning rate, a scale, epochs).
pub fn positive(s: &str) -> Result<f64, String> {
    let v = real(s)?;
    if v <= 0.0 {
        return Err(format!("{v} is out of range: it must be > 0"));
    }
    Ok(v)
}

/// A finite number ≥ 0 (a margin, a weight where 0 turns something off).
pub fn non_negative(s: &str) -> Result<f64, String> {
    let v = real(s)?;
    if v < 0.0 {
        return Err(format!("{v} is out of range: it must be ≥ 0"));
    }
    Ok(v)
}

/// A count of at least 1 (episodes, shots, steps, `--top`).
pub fn count(s: &str) -> Result<usize, String> {
    usize_in(s, 1, MAX_COUNT)
}

/// Steps or another `u64` count of at least 1.
pub fn count_u64(s: &str) -> Result<u64, String> {
    in_range(s, 1, u64::MAX >> 1)
}

/// Ways of an episode: 2 to [`MAX_WAYS`].
pub fn ways(s: &str) -> Result<usize, String> {
    usize_in(s, 2, MAX_WAYS)
}

/// Channels of one layer: 1 to [`MAX_WIDTH`].
pub fn width(s: &str) -> Result<usize, String> {
    usize_in(s, 1, MAX_WIDTH)
}

/// Embedding size: 1 to [`MAX_EMBEDDING_DIM`].
pub fn embedding_dim(s: &str) -> Result<usize, String> {
    usize_in(s, 1, MAX_EMBEDDING_DIM)
}

/// Ensemble members: 1 to [`MAX_MEMBERS`].
pub fn members(s: &str) -> Result<usize, String> {
    usize_in(s, 1, MAX_MEMBERS)
}

/// Classes per batch: 2 to the training crate's limit.
pub fn batch_classes(s: &str) -> Result<usize, String> {
    usize_in(s, 2, siamese_train::MAX_BATCH_CLASSES)
}

/// Images per class in a batch: 2 to the training crate's limit.
pub fn batch_images(s: &str) -> Result<usize, String> {
    usize_in(s, 2, siamese_train::MAX_BATCH_IMAGES)
}

/// Groups per batch: 1 to the classes-per-batch limit.
pub fn batch_groups(s: &str) -> Result<usize, String> {
    usize_in(s, 1, siamese_train::MAX_BATCH_CLASSES)
}

/// An image size `HxW`, each side 1 to [`MAX_INPUT_SIDE`].
pub fn size(s: &str) -> Result<(usize, usize), String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}`: expected HxW, e.g. 105x105"))?;
    let side = |v: &str, what: &str| {
        usize_in(v, 1, MAX_INPUT_SIDE).map_err(|e| format!("`{s}`: bad {what}: {e}"))
    };
    Ok((side(h, "height")?, side(w, "width")?))
}

/// [`size`], keeping the text (the command parses it again where it is used).
pub fn size_text(s: &str) -> Result<String, String> {
    size(s).map(|_| s.to_string())
}

/// `--device`: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with the `cuda` feature; that is
/// checked when the device is opened).
pub fn device(s: &str) -> Result<String, String> {
    let ok = s == "cpu"
        || s == "cuda"
        || s.strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok());
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected cpu, cuda or cuda:N".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_out_of_range_are_refused() {
        for bad in ["nan", "inf", "-1", "-0.5", "x", ""] {
            assert!(threshold(bad).is_err(), "{bad}");
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert_eq!(threshold("0"), Ok(0.0));
        assert!(positive("0").is_err());
        assert!(ways("1").is_err() && ways("0").is_err() && ways("2").is_ok());
        assert!(count("0").is_err() && count("1").is_ok());
        assert!(threads("0").is_err() && threads("100000").is_err() && threads("2").is_ok());
        assert!(width("1000000").is_err() && width("64").is_ok());
        assert!(embedding_dim("1000000000000").is_err());
        assert!(size("100000x100000").is_err() && size("28x28") == Ok((28, 28)));
        assert!(size("0x5").is_err() && size("28").is_err());
    }
}
