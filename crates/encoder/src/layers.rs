//! The layers the architectures are made of, on top of `siamese_ops::nn`'s fast kernels.

use crate::params::Params;
use candle_core::{bail, Result, Tensor, Var};
use siamese_ops::nn::{self, Conv2dParams};

/// A 2-D convolution with an optional bias.
#[derive(Debug)]
pub(crate) struct Conv {
    w: Tensor,
    b: Option<Tensor>,
    p: Conv2dParams,
}

impl Conv {
    pub(crate) fn new(
        params: &mut Params,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let (w, b) = params.weight(name, &[cout, cin, k, k], bias)?;
        Ok(Self {
            w,
            b,
            p: Conv2dParams { stride, padding },
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        nn::conv2d(x, &self.w, self.b.as_ref(), self.p)
    }

    pub(crate) fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        nn::conv2d_relu(x, &self.w, self.b.as_ref(), self.p)
    }
}

/// A fully connected layer `x Wᵀ + b`.
#[derive(Debug)]
pub(crate) struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    pub(crate) fn new(params: &mut Params, name: &str, din: usize, dout: usize) -> Result<Self> {
        let (w, b) = params.weight(name, &[dout, din], true)?;
        match b {
            Some(b) => Ok(Self { w, b }),
            None => bail!("linear `{name}`: bias was not created"),
        }
    }

    /// # Shapes
    /// `x`: `[N, din]` → `[N, dout]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.w.t()?)?.broadcast_add(&self.b)
    }
}

/// BatchNorm over channels with learned scale and shift and running statistics (PyTorch's
/// momentum 0.1 and epsilon 1e-5).
#[derive(Debug)]
pub(crate) struct BatchNorm {
    gamma: Tensor,
    beta: Tensor,
    running_mean: Var,
    running_var: Var,
}

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

impl BatchNorm {
    pub(crate) fn new(params: &mut Params, name: &str, channels: usize) -> Result<Self> {
        let gamma = params.constant(format!("{name}.weight"), channels, 1.0)?;
        let beta = params.constant(format!("{name}.bias"), channels, 0.0)?;
        let running_mean = params.buffer(format!("{name}.running_mean"), channels, 0.0)?;
        let running_var = params.buffer(format!("{name}.running_var"), channels, 1.0)?;
        Ok(Self {
            gamma,
            beta,
            running_mean,
            running_var,
        })
    }

    /// Normalises `x` (`[N, C, H, W]` or `[N, C]`), followed by ReLU when `relu`. In training
    /// mode it uses the batch statistics and updates the running ones.
    pub(crate) fn forward_t(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if train {
            let out = nn::batch_norm_train(x, &self.gamma, &self.beta, BN_EPS, relu)?;
            let m = BN_MOMENTUM;
            let mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (out.mean.detach() * m)?)?;
            let var = ((self.running_var.as_tensor() * (1.0 - m))? + (out.var.detach() * m)?)?;
            self.running_mean.set(&mean)?;
            self.running_var.set(&var)?;
            Ok(out.y)
        } else {
            nn::batch_norm_eval(
                x,
                &self.gamma,
                &self.beta,
                self.running_mean.as_tensor(),
                self.running_var.as_tensor(),
                BN_EPS,
                relu,
            )
        }
    }
}
