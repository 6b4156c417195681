//! `siamese-pairs`: Siamese pairing and distance.
//!
//! What it owns:
//! - [`pair`]: [`SiamesePair`], the shared-weight pair model. One encoder, one parameter set,
//!   encodes both inputs of a pair in a single forward pass; it is generic over any
//!   `candle_core::ModuleT`, so it knows nothing of encoder architectures.
//! - [`loss`]: the pair and triplet losses of the Siamese literature, each taking encodings and
//!   labels (never the model) and returning a [`LossOutput`] with the scalar loss and the
//!   statistics a training loop logs: contrastive (Hadsell, Chopra & LeCun 2006), triplet with
//!   batch-all / batch-hard / semi-hard online mining (Schroff et al. 2015; Hermans et al.
//!   2017), the leave-one-out prototypical loss (Snell et al. 2017), the normalised-softmax
//!   loss against one learned proxy per training class (Wang et al. 2017), and binary
//!   cross-entropy on a learned weighting of `|f1 - f2|` (Taigman et al. 2014; Koch et al. 2015).
//! - [`sampler`]: which items make up a batch: balanced same/different pairs, and P classes ×
//!   K images for in-batch mining. Deterministic given the RNG.
//! - [`metrics`]: verification and identification scores on plain slices: ROC, AUC, EER,
//!   TAR@FAR, the accuracy-maximising threshold, LFW-style k-fold accuracy, N-way one-shot
//!   accuracy, N-way K-shot episodes (a way's distance: the mean of its shots) and rank-1
//!   identification against an episode's support set (an identity's distance: its nearest
//!   shot). Evaluation protocols elsewhere use these definitions rather than their own.
//!
//! What it promises: lower distance always means "more alike"; every tensor function documents
//! its shapes and fails with a `candle_core::Error` naming the op and the offending shape;
//! losses are differentiable with respect to the encodings; mining happens without gradients.
//!
//! What it deliberately does not know: encoder architectures, data sets, files, training
//! loops. It does no file I/O and prints nothing.

pub mod loss;
pub mod metrics;
pub mod pair;
pub mod sampler;

pub use loss::{
    bce::BceHead,
    contrastive::{contrastive, contrastive_batch},
    labels_to_vec,
    proto::{prototypical, DEFAULT_PROTO_SCALE},
    proxy::{proxy_softmax, DEFAULT_PROXY_SCALE},
    triplet::{
        mine, mine_from_matrix, triplet, triplet_on, DistanceMatrix, Mining, Triplet,
        DEFAULT_TRIPLET_MARGIN,
    },
    LossOutput, Reduction, COLLAPSE_EPS,
};
pub use metrics::{Episode, EpisodeSummary, Roc};
pub use pair::SiamesePair;
pub use sampler::{Pair, PairSampler, PkSampler};
pub use siamese_ops::distance::Distance;
