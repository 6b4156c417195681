//! Label masks for in-batch mining: which pairs of a batch share a label, which do not, and the
//! diagonal. Tensor versions return `u8` tensors (1 = in the mask), usable with
//! `Tensor::where_cond`; plain-slice versions return row-major `Vec<bool>`.

use candle_core::{bail, DType, Device, Result, Tensor};

fn check_labels(op: &str, labels: &Tensor) -> Result<usize> {
    match labels.dims() {
        &[n] => Ok(n),
        dims => bail!("{op}: labels must have shape [N], got {dims:?}"),
    }
}

/// 1 where `labels[i] == labels[j]`, diagonal included.
///
/// # Shapes
/// - `labels`: `[N]`, any dtype (usually `u32`)
/// - returns `[N, N]`, `u8`
pub fn same_label_mask(labels: &Tensor) -> Result<Tensor> {
    check_labels("same_label_mask", labels)?;
    labels
        .unsqueeze(1)?
        .broadcast_eq(&labels.unsqueeze(0)?)?
        .to_dtype(DType::U8)
}

/// 1 where `labels[i] != labels[j]` (the diagonal is therefore 0).
///
/// # Shapes
/// - `labels`: `[N]`, any dtype (usually `u32`)
/// - returns `[N, N]`, `u8`
pub fn different_label_mask(labels: &Tensor) -> Result<Tensor> {
    check_labels("different_label_mask", labels)?;
    labels
        .unsqueeze(1)?
        .broadcast_ne(&labels.unsqueeze(0)?)?
        .to_dtype(DType::U8)
}

/// 1 where `labels[i] == labels[j]` and `i != j`: the anchor-positive pairs of a batch.
///
/// # Shapes
/// - `labels`: `[N]`, any dtype (usually `u32`)
/// - returns `[N, N]`, `u8`
pub fn positive_pair_mask(labels: &Tensor) -> Result<Tensor> {
    let n = check_labels("positive_pair_mask", labels)?;
    let same = same_label_mask(labels)?;
    let off_diagonal = diagonal_mask(n, labels.device())?.eq(0.0)?;
    same.mul(&off_diagonal)
}

/// 1 on the diagonal, 0 elsewhere.
///
/// # Shapes
/// - returns `[n, n]`, `u8`
pub fn diagonal_mask(n: usize, device: &Device) -> Result<Tensor> {
    let mut data = vec![0u8; n * n];
    for i in 0..n {
        data[i * n + i] = 1;
    }
    Tensor::from_vec(data, (n, n), device)
}

/// Row-major `[N, N]`: `true` where `labels[i] == labels[j]`, diagonal included.
pub fn same_label_matrix(labels: &[u32]) -> Vec<bool> {
    labels
        .iter()
        .flat_map(|a| labels.iter().map(move |b| a == b))
        .collect()
}

/// Row-major `[N, N]`: `true` where `labels[i] != labels[j]`.
pub fn different_label_matrix(labels: &[u32]) -> Vec<bool> {
    labels
        .iter()
        .flat_map(|a| labels.iter().map(move |b| a != b))
        .collect()
}
