//! An exponential moving average of the encoder's weights (Polyak averaging).
//!
//! After every optimiser step each shadow tensor moves towards its live tensor:
//! `shadow = d · shadow + (1 − d) · live`, with `d = min(decay, (1 + t) / (10 + t))` at step
//! `t` so that the early, random weights are forgotten quickly. BatchNorm running statistics
//! are averaged the same way, so the averaged weights come with matching statistics.
//! Validation and the kept model see the averaged weights ([`Ema::swapped`]); training
//! continues on the live ones. The shadows travel in checkpoints under `ema.<name>`, so a
//! resumed run averages exactly as the uninterrupted one.

use crate::error::Result;
use candle_core::{Tensor, Var};
use siamese_encoder::Encoder;

/// Name prefix of the shadow tensors in checkpoints.
pub(crate) const EMA_PREFIX: &str = "ema.";

/// Shadow copies of every encoder tensor (weights and buffers) and the decay.
pub(crate) struct Ema {
    decay: f64,
    /// `(live, shadow)`, in the encoder's parameter order.
    pairs: Vec<(Var, Var)>,
    /// The shadows under their checkpoint names.
    named: Vec<(String, Var)>,
}

impl Ema {
    /// Shadows starting equal to the encoder's current tensors; `decay` in [0, 1) (checked by
    /// [`crate::TrainConfig::validate`]).
    pub(crate) fn new(encoder: &Encoder, decay: f64) -> Result<Self> {
        let mut pairs = Vec::new();
        let mut named = Vec::new();
        for (name, live) in encoder.params().all() {
            let shadow = Var::from_tensor(&live.as_tensor().copy()?)?;
            named.push((format!("{EMA_PREFIX}{name}"), shadow.clone()));
            pairs.push((live.clone(), shadow));
        }
        Ok(Self {
            decay,
            pairs,
            named,
        })
    }

    /// The shadows named for a checkpoint (`ema.<tensor name>`).
    pub(crate) fn named(&self) -> &[(String, Var)] {
        &self.named
    }

    /// The decay used after `step` updates (1-based): short memory at first.
    pub(crate) fn decay_at(&self, step: u64) -> f64 {
        let t = step as f64;
        self.decay.min((1.0 + t) / (10.0 + t))
    }

    /// Moves every shadow towards its live tensor after update number `step` (1-based).
    pub(crate) fn update(&self, step: u64) -> Result<()> {
        let d = self.decay_at(step);
        for (live, shadow) in &self.pairs {
            let next = ((shadow.as_tensor() * d)? + (live.as_tensor() * (1.0 - d))?)?;
            shadow.set(&next)?;
        }
        Ok(())
    }

    /// Runs `f` with the averaged tensors in the encoder, then puts the live ones back (also
    /// when `f` fails).
    pub(crate) fn swapped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let saved: Vec<Tensor> = self
            .pairs
            .iter()
            .map(|(live, _)| live.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        for (live, shadow) in &self.pairs {
            live.set(shadow.as_tensor())?;
        }
        let out = f();
        for ((live, _), t) in self.pairs.iter().zip(&saved) {
            live.set(t)?;
        }
        out
    }
}

/// Runs `f` on the averaged weights when there is an average, else on the live ones.
pub(crate) fn with_average<T>(ema: Option<&Ema>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match ema {
        Some(e) => e.swapped(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TrainError;
    use candle_core::{DType, Device};
    use siamese_encoder::{Architecture, EncoderConfig};

    fn first_value(v: &Var) -> Result<f32> {
        Ok(v.as_tensor().flatten_all()?.get(0)?.to_scalar::<f32>()?)
    }

    #[test]
    fn shadows_follow_the_hand_computed_average_and_swapping_restores_the_live_weights(
    ) -> Result<()> {
        let dev = Device::Cpu;
        let cfg = EncoderConfig::for_arch(Architecture::conv4(), 1, 16, 16);
        let enc = Encoder::new(&cfg, 3, &dev)?;
        let ema = Ema::new(&enc, 0.9)?;
        assert_eq!(ema.named().len(), enc.params().all().count());
        assert!(ema.named().iter().all(|(n, _)| n.starts_with(EMA_PREFIX)));
        let (live, shadow) = &ema.pairs[0];
        let w0 = first_value(live)?;
        // Step 1: decay min(0.9, 2/11); the live weight moved by +1 before the update.
        live.set(&(live.as_tensor() + 1.0)?)?;
        ema.update(1)?;
        let d1 = 2.0 / 11.0;
        let want1 = d1 * w0 as f64 + (1.0 - d1) * (w0 as f64 + 1.0);
        assert!((first_value(shadow)? as f64 - want1).abs() < 1e-6);
        // Late steps use the configured decay.
        assert_eq!(ema.decay_at(1000), 0.9);
        live.set(&(live.as_tensor() + 1.0)?)?;
        ema.update(1000)?;
        let want2 = 0.9 * want1 + 0.1 * (w0 as f64 + 2.0);
        assert!((first_value(shadow)? as f64 - want2).abs() < 1e-6);

        let x = Tensor::zeros((2, 1, 16, 16), DType::F32, &dev)?.affine(1.0, 0.5)?;
        use candle_core::ModuleT;
        let before = enc.forward_t(&x, false)?;
        let inside = ema.swapped(|| {
            assert!((first_value(live)? as f64 - want2).abs() < 1e-6);
            Ok(enc.forward_t(&x, false)?)
        })?;
        let after = enc.forward_t(&x, false)?;
        assert!((first_value(live)? - (w0 + 2.0)).abs() < 1e-6);
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        assert_eq!(diff(&before, &after)?, 0.0);
        assert!(diff(&before, &inside)? > 0.0);
        // A failing closure still gets the live weights back.
        let failed: Result<()> = ema.swapped(|| Err(TrainError::Config("boom".into())));
        assert!(failed.is_err());
        assert!((first_value(live)? - (w0 + 2.0)).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn a_decay_outside_zero_to_one_is_a_config_error() -> Result<()> {
        let mut c = crate::TrainConfig::recipe("demo")?;
        c.ema = Some(0.5);
        c.validate()?;
        for d in [1.0, -0.1, f64::NAN] {
            c.ema = Some(d);
            let e = c
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("decay"), "{d}: {e}");
        }
        Ok(())
    }
}
