//! Stand-in for the AMX bf16 products on targets other than x86-64: never supported, so
//! `set_matmul_precision` refuses bf16 and no convolution reaches [`product`].

use candle_core::{bail, Result};

use super::gemm::{Mat, Out, Parallelism, Rhs};

pub(crate) fn supported() -> bool {
    false
}

pub(crate) fn product(
    _m: usize,
    _n: usize,
    _k: usize,
    _lhs: Mat<'_>,
    _rhs: Rhs<'_>,
    _out: Out<'_>,
    _par: Parallelism,
) -> Result<()> {
    bail!("siamese-ops bf16 matmul: needs an x86-64 CPU with AMX bf16 tiles")
}
