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

    /// Output channels.
    pub(crate) fn out_channels(&self) -> Result<usize> {
        self.w.dim(0)
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        nn::conv2d(x, &self.w, self.b.as_ref(), self.p)
    }

    pub(crate) fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        nn::conv2d_relu(x, &self.w, self.b.as_ref(), self.p)
    }

    /// `relu(conv(x) + res)` in one pass, for evaluation (`nn::conv2d_add_relu`; not
    /// differentiable). `res` has the output's shape.
    pub(crate) fn forward_add_relu(&self, x: &Tensor, res: &Tensor) -> Result<Tensor> {
        nn::conv2d_add_relu(x, &self.w, self.b.as_ref(), res, self.p)
    }

    /// `max_pool2d(relu(conv(x)), 2, 2)`, fused when the convolution has a bias.
    pub(crate) fn forward_relu_pool(&self, x: &Tensor) -> Result<Tensor> {
        match &self.b {
            Some(b) => nn::conv2d_relu_max_pool2d(x, &self.w, b, self.p, 2, 2),
            None => nn::max_pool2d(&self.forward_relu(x)?, 2, 2),
        }
    }
}

/// A fully connected layer `x Wᵀ + b`, or `x Wᵀ` without a bias.
#[derive(Debug)]
pub(crate) struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    pub(crate) fn new(params: &mut Params, name: &str, din: usize, dout: usize) -> Result<Self> {
        let (w, b) = params.weight(name, &[dout, din], true)?;
        match b {
            Some(b) => Ok(Self { w, b: Some(b) }),
            None => bail!("linear `{name}`: bias was not created"),
        }
    }

    /// A linear layer without a bias (`name.weight` only).
    pub(crate) fn without_bias(
        params: &mut Params,
        name: &str,
        din: usize,
        dout: usize,
    ) -> Result<Self> {
        let (w, _) = params.weight(name, &[dout, din], false)?;
        Ok(Self { w, b: None })
    }

    /// # Shapes
    /// `x`: `[N, din]` → `[N, dout]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.w.t()?)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
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

    /// `max_pool2d(relu(self(conv(x))), 2, 2)`, through the fused kernels: the whole block is one
    /// autograd node in training mode, and the statistics fold into the convolution in eval
    /// mode. A convolution with a bias (which BatchNorm would cancel) takes the unfused path.
    pub(crate) fn conv_relu_pool_t(&self, conv: &Conv, x: &Tensor, train: bool) -> Result<Tensor> {
        if conv.b.is_some() {
            return nn::max_pool2d(&self.forward_t(&conv.forward(x)?, train, true)?, 2, 2);
        }
        if train {
            let out = nn::conv_bn_relu_pool_train(
                x,
                &conv.w,
                &self.gamma,
                &self.beta,
                conv.p,
                BN_EPS,
                2,
                2,
            )?;
            self.update_running(&out.mean, &out.var)?;
            Ok(out.y)
        } else {
            nn::conv_bn_relu_pool_eval(
                x,
                &conv.w,
                &self.gamma,
                &self.beta,
                self.running_mean.as_tensor(),
                self.running_var.as_tensor(),
                conv.p,
                BN_EPS,
                2,
                2,
            )
        }
    }

    /// [`BatchNorm::conv_relu_pool_t`] and the block's taps: each channel's mean and maximum
    /// over the plane of `relu(self(conv(x)))`, before the pooling, `[N, 2C]` (means, then
    /// maxima). One fused autograd node in training mode; in eval mode the folded convolution,
    /// then the pooling and the taps.
    pub(crate) fn conv_relu_pool_tap_t(
        &self,
        conv: &Conv,
        x: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        if train && conv.b.is_none() {
            let (out, taps) = nn::conv_bn_relu_pool_tap_train(
                x,
                &conv.w,
                &self.gamma,
                &self.beta,
                conv.p,
                BN_EPS,
                2,
                2,
            )?;
            self.update_running(&out.mean, &out.var)?;
            return Ok((out.y, taps));
        }
        let z = self.conv_t(conv, x, train, true)?;
        let taps = nn::plane_mean_max(&z)?;
        Ok((nn::max_pool2d(&z, 2, 2)?, taps))
    }

    /// `relu?(self(conv(x)))`: one fused autograd node in training mode; in eval mode the
    /// running statistics fold into the convolution (one pass instead of two). A convolution
    /// with a bias takes the unfused path.
    pub(crate) fn conv_t(
        &self,
        conv: &Conv,
        x: &Tensor,
        train: bool,
        relu: bool,
    ) -> Result<Tensor> {
        if conv.b.is_some() {
            return self.forward_t(&conv.forward(x)?, train, relu);
        }
        if train {
            let out = nn::conv_bn_train(x, &conv.w, &self.gamma, &self.beta, conv.p, BN_EPS, relu)?;
            self.update_running(&out.mean, &out.var)?;
            return Ok(out.y);
        }
        let (w, b) = self.folded(conv)?;
        if relu {
            nn::conv2d_relu(x, &w, Some(&b), conv.p)
        } else {
            nn::conv2d(x, &w, Some(&b), conv.p)
        }
    }

    /// `relu(self(conv(x)) + res)` in evaluation mode: the running statistics fold into the
    /// convolution, which adds `res` and clamps as it writes its output (`nn::conv2d_add_relu`).
    /// A convolution with a bias takes the unfused path.
    pub(crate) fn conv_add_relu_eval(
        &self,
        conv: &Conv,
        x: &Tensor,
        res: &Tensor,
    ) -> Result<Tensor> {
        if conv.b.is_some() {
            return nn::add_relu(&self.conv_t(conv, x, false, false)?, res);
        }
        let (w, b) = self.folded(conv)?;
        nn::conv2d_add_relu(x, &w, Some(&b), res, conv.p)
    }

    /// The weights and bias of `conv` followed by this BatchNorm in evaluation mode (its running
    /// statistics folded in).
    fn folded(&self, conv: &Conv) -> Result<(Tensor, Tensor)> {
        nn::fold_batch_norm(
            &conv.w,
            &self.gamma,
            &self.beta,
            self.running_mean.as_tensor(),
            self.running_var.as_tensor(),
            BN_EPS,
        )
    }

    /// PyTorch's update of the running statistics from one batch's mean and unbiased variance.
    fn update_running(&self, mean: &Tensor, var: &Tensor) -> Result<()> {
        let m = BN_MOMENTUM;
        let mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.detach() * m)?)?;
        let var = ((self.running_var.as_tensor() * (1.0 - m))? + (var.detach() * m)?)?;
        self.running_mean.set(&mean)?;
        self.running_var.set(&var)
    }

    /// Normalises `x` (`[N, C, H, W]` or `[N, C]`), followed by ReLU when `relu`. In training
    /// mode it uses the batch statistics and updates the running ones.
    pub(crate) fn forward_t(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if train {
            let out = nn::batch_norm_train(x, &self.gamma, &self.beta, BN_EPS, relu)?;
            self.update_running(&out.mean, &out.var)?;
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
