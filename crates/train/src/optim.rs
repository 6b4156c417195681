//! Optimisers with state that can be saved and restored exactly: AdamW and SGD with momentum.
//!
//! The update rules are PyTorch's (`torch.optim.AdamW`, `torch.optim.SGD`), so results compare.
//! State lives in plain `Vec<f32>` buffers, one per parameter, so a checkpoint stores it
//! bit-exactly.

use candle_core::{backprop::GradStore, bail, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Which optimiser, with its hyper-parameters (the learning rate comes from the schedule).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum OptimizerConfig {
    /// Adam with decoupled weight decay.
    Adamw {
        /// Exponential decay of the first moment.
        beta1: f64,
        /// Exponential decay of the second moment.
        beta2: f64,
        /// Added to the denominator for stability.
        eps: f64,
        /// Decoupled weight decay (multiplied by the learning rate).
        weight_decay: f64,
    },
    /// Stochastic gradient descent with momentum and L2 weight decay.
    Sgd {
        /// Momentum factor.
        momentum: f64,
        /// L2 penalty added to the gradient.
        weight_decay: f64,
    },
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::Adamw {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

/// An optimiser over a fixed, ordered list of parameters.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    vars: Vec<(String, Var)>,
    /// First moment (AdamW) or momentum buffer (SGD), per parameter.
    m: Vec<Vec<f32>>,
    /// Second moment (AdamW only), per parameter.
    v: Vec<Vec<f32>>,
    /// Number of updates applied so far.
    t: u64,
}

impl Optimizer {
    /// A fresh optimiser with zeroed state.
    pub fn new(config: OptimizerConfig, vars: Vec<(String, Var)>) -> Self {
        let m = vars
            .iter()
            .map(|(_, v)| vec![0.0; v.elem_count()])
            .collect();
        let v = vars
            .iter()
            .map(|(_, v)| vec![0.0; v.elem_count()])
            .collect();
        Self {
            config,
            vars,
            m,
            v,
            t: 0,
        }
    }

    /// Number of updates applied so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The parameters, in order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Applies one update with learning rate `lr` from the gradients in `grads`. A parameter
    /// without a gradient is left unchanged (its state is not advanced).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let t = self.t as i32;
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            let mut p: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            let m = &mut self.m[i];
            match self.config {
                OptimizerConfig::Adamw {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    let v = &mut self.v[i];
                    let bc1 = 1.0 - beta1.powi(t);
                    let bc2 = 1.0 - beta2.powi(t);
                    let (b1, b2) = (beta1 as f32, beta2 as f32);
                    let step = (lr / bc1) as f32;
                    let decay = (1.0 - lr * weight_decay) as f32;
                    let bc2_sqrt = bc2.sqrt() as f32;
                    let eps = eps as f32;
                    for j in 0..p.len() {
                        let gj = g[j];
                        m[j] = b1 * m[j] + (1.0 - b1) * gj;
                        v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
                        let denom = v[j].sqrt() / bc2_sqrt + eps;
                        p[j] = p[j] * decay - step * m[j] / denom;
                    }
                }
                OptimizerConfig::Sgd {
                    momentum,
                    weight_decay,
                } => {
                    let (mu, wd, lr) = (momentum as f32, weight_decay as f32, lr as f32);
                    for j in 0..p.len() {
                        let gj = g[j] + wd * p[j];
                        m[j] = if t == 1 { gj } else { mu * m[j] + gj };
                        p[j] -= lr * m[j];
                    }
                }
            }
            var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
        }
        Ok(())
    }

    /// The state as named flat tensors (`optim.m.<param>`, `optim.v.<param>`) plus the step
    /// count, for a checkpoint.
    pub fn state(&self) -> Result<(Vec<(String, Tensor)>, u64)> {
        let mut out = Vec::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            let dev = candle_core::Device::Cpu;
            out.push((
                format!("optim.m.{name}"),
                Tensor::from_slice(&self.m[i], self.m[i].len(), &dev)?,
            ));
            out.push((
                format!("optim.v.{name}"),
                Tensor::from_slice(&self.v[i], self.v[i].len(), &dev)?,
            ));
        }
        Ok((out, self.t))
    }

    /// Restores the state written by [`Optimizer::state`].
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        t: u64,
    ) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (key, buf) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let full = format!("optim.{key}.{name}");
                let Some(tensor) = tensors.get(&full) else {
                    bail!("checkpoint: optimiser tensor `{full}` is missing")
                };
                if tensor.elem_count() != var.elem_count() {
                    bail!(
                        "checkpoint: optimiser tensor `{full}` has {} values, expected {}",
                        tensor.elem_count(),
                        var.elem_count()
                    )
                }
                *buf = tensor.flatten_all()?.to_vec1()?;
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Learning-rate schedule: linear warm-up, then cosine decay, step decay or constant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up from `lr / warmup_steps` to `lr`.
    pub warmup_steps: u64,
    /// What happens after warm-up.
    pub decay: Decay,
}

/// The shape of the schedule after warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Decay {
    /// Keep the peak rate.
    Constant,
    /// Cosine from the peak down to `final_fraction · lr` at the last step.
    Cosine {
        /// Fraction of the peak left at the end.
        final_fraction: f64,
    },
    /// Multiply by `gamma` every `every` steps.
    Step {
        /// Steps between decays.
        every: u64,
        /// Factor applied at each decay.
        gamma: f64,
    },
}

impl Schedule {
    /// The learning rate for update number `step` (0-based) of `total` (progress in [0, 1] is
    /// `step / total`; with a time budget `total` is an estimate).
    pub fn lr(&self, step: u64, progress: f64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Cosine { final_fraction } => {
                let p = progress.clamp(0.0, 1.0);
                let f = final_fraction
                    + (1.0 - final_fraction) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
                self.lr * f
            }
            Decay::Step { every, gamma } => {
                let k = (step - self.warmup_steps) / every.max(1);
                self.lr * gamma.powi(k as i32)
            }
        }
    }
}
