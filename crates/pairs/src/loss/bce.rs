//! The binary cross-entropy head of DeepFace (Taigman et al. 2014) and Koch et al. (2015): a
//! learned weighting of the component-wise L1 difference `|f1 - f2|`, then a sigmoid.

use candle_core::{bail, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::{check_embeddings, host_f64, zero_loss, LossOutput, PairStats};

/// `p(same) = sigmoid(|f1 - f2| · w + b)`, with `w` `[1, D]` and `b` `[1]`.
///
/// Built from a [`VarBuilder`] the parameters are named `head.weight` and `head.bias` (the
/// builder adds the `head` prefix itself).
#[derive(Clone, Debug)]
pub struct BceHead {
    weight: Tensor,
    bias: Tensor,
}

impl BceHead {
    /// A head from ready tensors.
    ///
    /// # Shapes
    /// - `weight`: `[1, D]`, float
    /// - `bias`: `[1]`, the same dtype
    pub fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        let op = "BceHead::new";
        match weight.dims() {
            &[1, d] if d > 0 => {}
            dims => bail!("{op}: weight must have shape [1, D], D > 0, got {dims:?}"),
        }
        if bias.dims() != [1] {
            bail!("{op}: bias must have shape [1], got {:?}", bias.dims());
        }
        if !weight.dtype().is_float() || weight.dtype() != bias.dtype() {
            bail!(
                "{op}: weight and bias must share a float dtype, got {:?} and {:?}",
                weight.dtype(),
                bias.dtype()
            );
        }
        Ok(BceHead { weight, bias })
    }

    /// Fetches (or creates) `head.weight` `[1, dim]` and `head.bias` `[1]` from `vb`.
    ///
    /// New parameters follow Koch et al. 2015: weights from `N(0, 0.2^2)`, bias 0.5. (Their
    /// weight init is symmetric, so learning decides that a large `|f1 - f2|` means
    /// "different", i.e. that `w` turns negative.)
    pub fn load(dim: usize, vb: VarBuilder) -> Result<Self> {
        if dim == 0 {
            bail!("BceHead::load: dim must be > 0");
        }
        let vb = vb.pp("head");
        let weight = vb.get_with_hints(
            (1, dim),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.2,
            },
        )?;
        let bias = vb.get_with_hints(1, "bias", Init::Const(0.5))?;
        BceHead::new(weight, bias)
    }

    /// The weight, `[1, D]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `[1]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    fn check(&self, op: &str, e1: &Tensor, e2: &Tensor) -> Result<usize> {
        let (n, d) = check_embeddings(op, e1)?;
        if e1.dims() != e2.dims() || e1.dtype() != e2.dtype() {
            bail!(
                "{op}: e1 and e2 must have the same shape [N, D] and dtype, got {:?} {:?} and {:?} {:?}",
                e1.dims(),
                e1.dtype(),
                e2.dims(),
                e2.dtype()
            );
        }
        let wd = self.weight.dim(1)?;
        if d != wd || e1.dtype() != self.weight.dtype() {
            bail!(
                "{op}: encodings {:?} {:?} do not match the head's weight {:?} {:?}",
                e1.dims(),
                e1.dtype(),
                self.weight.dims(),
                self.weight.dtype()
            );
        }
        Ok(n)
    }

    /// The logit of "same": `|e1 - e2| · w + b` per pair.
    ///
    /// # Shapes
    /// - `e1`, `e2`: `[N, D]`, the head's dtype
    /// - returns `[N]`
    pub fn logits(&self, e1: &Tensor, e2: &Tensor) -> Result<Tensor> {
        self.check("BceHead::logits", e1, e2)?;
        (e1 - e2)?
            .abs()?
            .broadcast_mul(&self.weight)?
            .sum(1)?
            .broadcast_add(&self.bias)
    }

    /// `p(same) = sigmoid(logits)`.
    ///
    /// # Shapes
    /// - `e1`, `e2`: `[N, D]`, the head's dtype
    /// - returns `[N]`, in `[0, 1]`
    pub fn probability(&self, e1: &Tensor, e2: &Tensor) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&self.logits(e1, e2)?)
    }

    /// Binary cross-entropy with logits, averaged over pairs, in the numerically stable form
    ///
    /// ```text
    /// l(x, y) = max(x, 0) - x y + log(1 + exp(-|x|))
    /// ```
    ///
    /// which equals `-(y log σ(x) + (1 - y) log(1 - σ(x)))` without overflow for large `|x|`.
    ///
    /// Statistics: distances are the L1 distances `||e1 - e2||_1` (what the head weighs);
    /// `mean_pos_dist` over same pairs, `mean_neg_dist` over different pairs, `collapsed` when
    /// all are at most [`COLLAPSE_EPS`](super::COLLAPSE_EPS). `active` counts pairs
    /// misclassified at probability 0.5 (logit `> 0` means same); `total` is `N`.
    ///
    /// # Shapes
    /// - `e1`, `e2`: `[N, D]`, the head's dtype
    /// - `same`: `[N]`, any numeric dtype, 1 = same, 0 = different
    /// - `loss`: scalar
    pub fn loss(&self, e1: &Tensor, e2: &Tensor, same: &Tensor) -> Result<LossOutput> {
        let op = "BceHead::loss";
        let n = self.check(op, e1, e2)?;
        if same.dims() != [n] {
            bail!(
                "{op}: same must have shape [N] = [{n}] to match e1 {:?}, got {:?}",
                e1.dims(),
                same.dims()
            );
        }
        if n == 0 {
            return Ok(LossOutput {
                loss: zero_loss(e1)?,
                active: 0,
                total: 0,
                collapsed: false,
                mean_pos_dist: f32::NAN,
                mean_neg_dist: f32::NAN,
            });
        }
        let y = same.to_dtype(e1.dtype())?;
        let x = self.logits(e1, e2)?;
        let softplus_neg_abs = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
        let per_pair = ((x.relu()? - (&x * &y)?)? + softplus_neg_abs)?;
        let loss = per_pair.mean_all()?;

        let logits = host_f64(&x)?;
        let labels = host_f64(&y)?;
        let l1 = host_f64(&(e1 - e2)?.abs()?.sum(1)?)?;
        let mut stats = PairStats::default();
        let mut wrong = 0;
        for ((d, s), z) in l1.iter().zip(&labels).zip(&logits) {
            let same = *s > 0.5;
            stats.add(*d, same);
            if (*z > 0.0) != same {
                wrong += 1;
            }
        }
        Ok(stats.output(loss, wrong, n))
    }
}
