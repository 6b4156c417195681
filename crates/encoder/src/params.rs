//! Named parameters (trained) and buffers (BatchNorm running statistics, not trained).

use candle_core::{DType, Device, Result, Tensor, Var};

/// The named tensors of an encoder, in construction order.
///
/// Names follow module paths (`conv1.weight`, `block2.bn1.running_mean`), which become the
/// tensor names in the safetensors file.
#[derive(Debug)]
pub struct Params {
    trainable: Vec<(String, Var)>,
    buffers: Vec<(String, Var)>,
    device: Device,
    seed: u64,
}

impl Params {
    /// An empty store; initial values are drawn deterministically from `seed`.
    pub(crate) fn new(device: &Device, seed: u64) -> Self {
        Self {
            trainable: Vec::new(),
            buffers: Vec::new(),
            device: device.clone(),
            seed,
        }
    }

    /// The device the tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Parameters the optimiser updates, in construction order.
    pub fn trainable(&self) -> &[(String, Var)] {
        &self.trainable
    }

    /// Buffers saved with the model but never given to an optimiser.
    pub fn buffers(&self) -> &[(String, Var)] {
        &self.buffers
    }

    /// Every named tensor: parameters first, then buffers.
    pub fn all(&self) -> impl Iterator<Item = &(String, Var)> {
        self.trainable.iter().chain(self.buffers.iter())
    }

    /// Number of trainable scalars.
    pub fn count(&self) -> usize {
        self.trainable.iter().map(|(_, v)| v.elem_count()).sum()
    }

    fn next_seed(&self) -> u64 {
        // SplitMix64 of (seed, index) so every tensor gets its own independent stream.
        let mut z = self
            .seed
            .wrapping_add((self.trainable.len() as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A weight of `shape` (PyTorch's default Kaiming-uniform) and, if `bias`, its bias.
    pub(crate) fn weight(
        &mut self,
        prefix: &str,
        shape: &[usize],
        bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (w, b) = siamese_ops::nn::kaiming_uniform(shape, self.next_seed(), &self.device)?;
        let w = self.push(format!("{prefix}.weight"), &w)?;
        let b = if bias {
            Some(self.push(format!("{prefix}.bias"), &b)?)
        } else {
            None
        };
        Ok((w, b))
    }

    /// A trainable tensor filled with `value`.
    pub(crate) fn constant(&mut self, name: String, len: usize, value: f64) -> Result<Tensor> {
        let t = (Tensor::ones(len, DType::F32, &self.device)? * value)?;
        self.push(name, &t)
    }

    /// A buffer filled with `value`, returned as the `Var` so it can be updated in place.
    pub(crate) fn buffer(&mut self, name: String, len: usize, value: f64) -> Result<Var> {
        let t = (Tensor::ones(len, DType::F32, &self.device)? * value)?;
        let var = Var::from_tensor(&t)?;
        self.buffers.push((name, var.clone()));
        Ok(var)
    }

    fn push(&mut self, name: String, t: &Tensor) -> Result<Tensor> {
        let var = Var::from_tensor(t)?;
        let tensor = var.as_tensor().clone();
        self.trainable.push((name, var));
        Ok(tensor)
    }
}
