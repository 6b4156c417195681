//! The shared-weight pair model: one encoder, one parameter set, both inputs.

use candle_core::{bail, ModuleT, Result, Tensor};
use siamese_ops::distance::Distance;

/// A Siamese pair model: the encoder `f` and the distance `d(f(x1), f(x2))`.
///
/// There is exactly one encoder, so exactly one set of parameters: both inputs of a pair go
/// through the same weights, and a loss on the pair sends gradient from both branches into
/// those weights (the sum of the two branches' contributions).
///
/// [`SiamesePair::encode_pair`] concatenates the two inputs along the batch axis and runs one
/// forward pass, then splits the result; in training mode a BatchNorm encoder therefore sees
/// batch statistics over both halves together.
#[derive(Clone, Debug)]
pub struct SiamesePair<E> {
    encoder: E,
    distance: Distance,
}

impl<E: ModuleT> SiamesePair<E> {
    /// Wraps `encoder`; pairs are compared with `distance`.
    pub fn new(encoder: E, distance: Distance) -> Self {
        SiamesePair { encoder, distance }
    }

    /// The shared encoder.
    pub fn encoder(&self) -> &E {
        &self.encoder
    }

    /// Unwraps the encoder.
    pub fn into_encoder(self) -> E {
        self.encoder
    }

    /// The distance pairs are compared with.
    pub fn distance_kind(&self) -> Distance {
        self.distance
    }

    /// Encodes one batch: `f(x)`.
    ///
    /// # Shapes
    /// - `x`: `[N, ...]` (whatever the encoder takes)
    /// - returns the encoder's output, `[N, D]` for the encoders of this workspace
    pub fn encode(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.encoder.forward_t(x, train)
    }

    /// Encodes both inputs of a batch of pairs with one forward pass of the shared encoder.
    ///
    /// # Shapes
    /// - `x1`, `x2`: `[N, ...]`, the same shape
    /// - returns `(f(x1), f(x2))`, each `[N, ...]` as the encoder outputs
    pub fn encode_pair(&self, x1: &Tensor, x2: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        if x1.rank() == 0 || x1.dims() != x2.dims() {
            bail!(
                "SiamesePair::encode_pair: x1 and x2 must have the same shape [N, ...], got {:?} and {:?}",
                x1.dims(),
                x2.dims()
            );
        }
        let n = x1.dim(0)?;
        let both = Tensor::cat(&[x1, x2], 0)?;
        let out = self.encoder.forward_t(&both, train)?;
        if out.rank() == 0 || out.dim(0)? != 2 * n {
            bail!(
                "SiamesePair::encode_pair: the encoder turned a batch of {} into shape {:?}; \
                 it must keep the batch axis first",
                2 * n,
                out.dims()
            );
        }
        Ok((out.narrow(0, 0, n)?, out.narrow(0, n, n)?))
    }

    /// The distance between the encodings of each pair, in evaluation mode.
    ///
    /// # Shapes
    /// - `x1`, `x2`: `[N, ...]`, the same shape; the encoder must output `[N, D]`
    /// - returns `[N]`
    pub fn distance(&self, x1: &Tensor, x2: &Tensor) -> Result<Tensor> {
        self.distance_t(x1, x2, false)
    }

    /// [`SiamesePair::distance`] with an explicit training flag (differentiable).
    ///
    /// # Shapes
    /// - `x1`, `x2`: `[N, ...]`, the same shape; the encoder must output `[N, D]`
    /// - returns `[N]`
    pub fn distance_t(&self, x1: &Tensor, x2: &Tensor, train: bool) -> Result<Tensor> {
        let (e1, e2) = self.encode_pair(x1, x2, train)?;
        self.distance.paired(&e1, &e2)
    }
}
