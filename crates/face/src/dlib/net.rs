//! The layer stream of a serialised dlib `dnn` network (`dnn/core.h`).
//!
//! A network is written outer (loss) layer first: the loss layer's version and details, then a
//! run of header versions from the outermost layer to the innermost (2: a layer with
//! parameters, 1: a tag or skip layer, 3: the innermost layer, whose subnet is the input), the
//! input layer's details, and then every layer's details in forward order (input to loss).
//! The topology (which tag a skip or an `add_prev` refers to) is not in the file: callers hold
//! the architecture and check the layers they read against it.

use super::{DlibTensor, Reader};
use crate::error::Result;

/// The most layers (header entries) a network may declare.
pub const MAX_LAYERS: usize = 4096;

/// One computational layer's details, in forward order.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    /// `con_`: a convolution. `filters` is `[num_filters, k, nr, nc]` (OIHW, cross-correlation);
    /// `bias` has `num_filters` values when the layer has one.
    Conv {
        /// `[num_filters, in_channels, rows, cols]`.
        shape: [usize; 4],
        /// Filter values, OIHW.
        filters: Vec<f32>,
        /// One bias per filter, if any.
        bias: Option<Vec<f32>>,
        /// `(stride_y, stride_x)`.
        stride: (usize, usize),
        /// `(padding_y, padding_x)`.
        padding: (usize, usize),
    },
    /// `affine_` (or a `bn_con2` folded into one): `y = gamma[c] * x + beta[c]`.
    Affine {
        /// Per-channel scale.
        gamma: Vec<f32>,
        /// Per-channel shift.
        beta: Vec<f32>,
    },
    /// `relu_`.
    Relu,
    /// `max_pool_` (`avg == false`) or `avg_pool_`: window `(nr, nc)` (0 means the whole
    /// plane), strides and paddings.
    Pool {
        /// Average rather than maximum.
        avg: bool,
        /// `(rows, cols)` of the window; `(0, 0)` pools the whole plane.
        window: (usize, usize),
        /// `(stride_y, stride_x)`.
        stride: (usize, usize),
        /// `(padding_y, padding_x)`.
        padding: (usize, usize),
    },
    /// `add_prev_`: adds a tagged earlier output (top-left aligned, zero-padded to the larger
    /// shape).
    AddPrev,
    /// `fc_`: `out = in @ W` with `W` `[inputs, outputs]` row-major, and an optional bias.
    Fc {
        /// Input features.
        inputs: usize,
        /// Output features.
        outputs: usize,
        /// `inputs * outputs` values, row-major (the transpose of PyTorch's `Linear.weight`).
        weights: Vec<f32>,
        /// `outputs` values, if the layer has a bias.
        bias: Option<Vec<f32>>,
    },
}

impl Layer {
    /// A short name for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Conv { .. } => "con",
            Layer::Affine { .. } => "affine",
            Layer::Relu => "relu",
            Layer::Pool { avg: false, .. } => "max_pool",
            Layer::Pool { avg: true, .. } => "avg_pool",
            Layer::AddPrev => "add_prev",
            Layer::Fc { .. } => "fc",
        }
    }
}

/// A layer as error messages show it: its kind and shape, e.g. `con 64x32x3x3 stride 2x2
/// padding 0x0`.
impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layer::Conv {
                shape,
                stride,
                padding,
                ..
            } => write!(
                f,
                "con {}x{}x{}x{} stride {}x{} padding {}x{}",
                shape[0], shape[1], shape[2], shape[3], stride.0, stride.1, padding.0, padding.1
            ),
            Layer::Affine { gamma, .. } => write!(f, "affine over {} channels", gamma.len()),
            Layer::Pool {
                window,
                stride,
                padding,
                ..
            } => write!(
                f,
                "{} {}x{} stride {}x{} padding {}x{}",
                self.kind(),
                window.0,
                window.1,
                stride.0,
                stride.1,
                padding.0,
                padding.1
            ),
            Layer::Fc {
                inputs,
                outputs,
                bias,
                ..
            } => write!(
                f,
                "fc {inputs} inputs x {outputs} outputs {}",
                if bias.is_some() {
                    "with bias"
                } else {
                    "without bias"
                }
            ),
            other => f.write_str(other.kind()),
        }
    }
}

/// One entry of the network in forward order: a layer, or a tag / skip (which carry nothing).
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A computational layer, with the byte offset where its details start.
    Layer {
        /// The layer.
        layer: Layer,
        /// Offset of its details in the file.
        offset: usize,
    },
    /// A `tag` or `skip` layer.
    TagOrSkip,
}

/// The input layer's details.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// Its version tag (`input_rgb_image_sized`, `input_rgb_image_pyramid`).
    pub tag: String,
    /// Mean red, green and blue subtracted before the division by 256.
    pub avg_rgb: [f32; 3],
    /// `(rows, cols)` of the fixed input size, for `input_rgb_image_sized`.
    pub size: Option<(usize, usize)>,
}

/// A whole network read from the file: the loss (parsed by the caller), the input, and the
/// nodes in forward order.
#[derive(Debug, Clone)]
pub struct Network<L> {
    /// What the caller's loss parser returned.
    pub loss: L,
    /// The input layer.
    pub input: Input,
    /// Layers and tags/skips from the input towards the loss.
    pub nodes: Vec<Node>,
}

impl<L> Network<L> {
    /// The computational layers in forward order, with their offsets.
    pub fn layers(&self) -> impl Iterator<Item = (&Layer, usize)> {
        self.nodes.iter().filter_map(|n| match n {
            Node::Layer { layer, offset } => Some((layer, *offset)),
            Node::TagOrSkip => None,
        })
    }
}

/// Reads a whole network and checks that the file ends with it. `loss` reads the loss layer's
/// details (from its version tag on).
pub fn read_network<'a, L>(
    r: &mut Reader<'a>,
    loss: impl FnOnce(&mut Reader<'a>) -> Result<L>,
) -> Result<Network<L>> {
    let at = r.pos();
    let v = r.int()?;
    if v != 1 {
        return Err(r.error_at(at, format!("loss layer version {v}, expected 1")));
    }
    let loss = loss(r)?;

    // Header versions, outermost first, until the input layer's tag (a string, whose length
    // varint is never 1, 2 or 3 for the input tags).
    let mut headers = Vec::new();
    loop {
        let at = r.pos();
        let v = r.int()?;
        if matches!(v, 1..=3) {
            if headers.len() == MAX_LAYERS {
                return Err(r.error_at(at, format!("more than {MAX_LAYERS} layers")));
            }
            headers.push(v as u8);
            if v == 3 {
                break;
            }
        } else {
            return Err(r.error_at(
                at,
                format!("layer header version {v}, expected 1, 2 or 3 before the innermost layer"),
            ));
        }
    }
    let input = read_input(r)?;

    let mut nodes = Vec::with_capacity(headers.len());
    for &h in headers.iter().rev() {
        if h == 1 {
            nodes.push(Node::TagOrSkip);
            continue;
        }
        let offset = r.pos();
        let layer = read_layer(r)?;
        // this_layer_setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled
        for _ in 0..3 {
            r.bool()?;
        }
        // x_grad, cached_output, and grad_final (innermost) or params_grad (the others).
        for _ in 0..3 {
            r.tensor()?;
        }
        if h == 3 {
            let at = r.pos();
            let f = r.int()?;
            if f != 1 {
                return Err(r.error_at(at, format!("sample expansion factor {f}, expected 1")));
            }
        }
        nodes.push(Node::Layer { layer, offset });
    }
    r.finish()?;
    Ok(Network { loss, input, nodes })
}

fn read_input(r: &mut Reader<'_>) -> Result<Input> {
    let tag = r.tag(
        &["input_rgb_image_sized", "input_rgb_image_pyramid"],
        "an input layer",
    )?;
    let mut avg_rgb = [0f32; 3];
    for a in &mut avg_rgb {
        *a = r.finite_f32("an input mean")?;
    }
    let size = if tag == "input_rgb_image_sized" {
        let nr = r.uint_in(1, 4096, "the input's rows")? as usize;
        let nc = r.uint_in(1, 4096, "the input's columns")? as usize;
        Some((nr, nc))
    } else {
        None
    };
    Ok(Input { tag, avg_rgb, size })
}

fn positive(r: &mut Reader<'_>, hi: i64, what: &str) -> Result<usize> {
    Ok(r.int_in(1, hi, what)? as usize)
}

fn non_negative(r: &mut Reader<'_>, hi: i64, what: &str) -> Result<usize> {
    Ok(r.int_in(0, hi, what)? as usize)
}

/// Splits a parameter tensor into `[first, second]` of the given sizes, or fails.
fn split(
    r: &Reader<'_>,
    at: usize,
    params: DlibTensor,
    first: usize,
    second: usize,
    what: &str,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if params.data.len() != first + second {
        return Err(r.error_at(
            at,
            format!(
                "{what} holds {} parameters, its shape says {}",
                params.data.len(),
                first + second
            ),
        ));
    }
    let mut a = params.data;
    let b = a.split_off(first);
    Ok((a, b))
}

fn read_layer(r: &mut Reader<'_>) -> Result<Layer> {
    let at = r.pos();
    let tag = r.tag(
        &[
            "con_4",
            "con_5",
            "con_6",
            "affine_",
            "affine_2",
            "bn_con2",
            "relu_",
            "relu_2",
            "max_pool_2",
            "avg_pool_2",
            "add_prev_",
            "fc_2",
            "fc_3",
        ],
        "a layer",
    )?;
    Ok(match tag.as_str() {
        "con_4" | "con_5" | "con_6" => {
            let params = r.tensor()?;
            let n = positive(r, 1 << 16, "a convolution's filter count")?;
            let kr = positive(r, 1024, "a convolution's rows")?;
            let kc = positive(r, 1024, "a convolution's columns")?;
            let sy = positive(r, 1024, "a convolution's stride")?;
            let sx = positive(r, 1024, "a convolution's stride")?;
            let py = non_negative(r, 1024, "a convolution's padding")?;
            let px = non_negative(r, 1024, "a convolution's padding")?;
            let fshape = r.alias()?;
            let bshape = r.alias()?;
            for _ in 0..4 {
                r.f64()?;
            }
            let use_bias = if tag != "con_4" { r.bool()? } else { true };
            if tag == "con_6" {
                r.bool()?; // use_relu: fused ReLU is a training-time option; not in these files
            }
            if fshape[0] != n || fshape[2] != kr || fshape[3] != kc {
                return Err(r.error_at(
                    at,
                    format!(
                        "convolution filters {fshape:?} disagree with {n} filters of {kr}x{kc}"
                    ),
                ));
            }
            let fsize: usize = fshape.iter().product();
            let bsize = if use_bias { bshape.iter().product() } else { 0 };
            if use_bias && bsize != n {
                return Err(r.error_at(at, format!("convolution bias {bshape:?} for {n} filters")));
            }
            let (filters, bias) = split(r, at, params, fsize, bsize, "a convolution")?;
            Layer::Conv {
                shape: fshape,
                filters,
                bias: use_bias.then_some(bias),
                stride: (sy, sx),
                padding: (py, px),
            }
        }
        "affine_" | "affine_2" => {
            let params = r.tensor()?;
            let g = r.alias()?;
            let b = r.alias()?;
            let mode = r.int()?;
            if tag == "affine_2" {
                r.bool()?; // disabled
            }
            if mode != 0 {
                return Err(r.error_at(
                    at,
                    format!("affine mode {mode}, expected 0 (convolutional)"),
                ));
            }
            let c: usize = g.iter().product();
            if b.iter().product::<usize>() != c {
                return Err(r.error_at(at, format!("affine gamma {g:?} and beta {b:?} differ")));
            }
            let (gamma, beta) = split(r, at, params, c, c, "an affine layer")?;
            Layer::Affine { gamma, beta }
        }
        "bn_con2" => {
            let params = r.tensor()?;
            let g = r.alias()?;
            let _b = r.alias()?;
            let _means = r.tensor()?;
            let _invstds = r.tensor()?;
            let running_means = r.tensor()?;
            let running_vars = r.tensor()?;
            r.uint()?; // num_updates
            r.uint()?; // running_stats_window_size
            for _ in 0..4 {
                r.f64()?;
            }
            let eps = r.f64()?;
            let c: usize = g.iter().product();
            let (gamma, beta) = split(r, at, params, c, c, "a batch-norm layer")?;
            if running_means.data.len() != c || running_vars.data.len() != c {
                return Err(r.error_at(at, "batch-norm running statistics of the wrong size"));
            }
            if !(eps.is_finite() && eps > 0.0) {
                return Err(r.error_at(at, format!("batch-norm epsilon {eps}")));
            }
            // Folded as dlib converts bn_con to affine: g = gamma / sqrt(var + eps),
            // b = beta - g * mean.
            let mut fg = Vec::with_capacity(c);
            let mut fb = Vec::with_capacity(c);
            for i in 0..c {
                let s = gamma[i] / (running_vars.data[i] + eps as f32).sqrt();
                fg.push(s);
                fb.push(beta[i] - s * running_means.data[i]);
            }
            Layer::Affine {
                gamma: fg,
                beta: fb,
            }
        }
        "relu_" => Layer::Relu,
        "relu_2" => {
            r.bool()?; // disabled
            Layer::Relu
        }
        "max_pool_2" | "avg_pool_2" => {
            let nr = non_negative(r, 4096, "a pool's rows")?;
            let nc = non_negative(r, 4096, "a pool's columns")?;
            let sy = positive(r, 4096, "a pool's stride")?;
            let sx = positive(r, 4096, "a pool's stride")?;
            let py = non_negative(r, 4096, "a pool's padding")?;
            let px = non_negative(r, 4096, "a pool's padding")?;
            Layer::Pool {
                avg: tag == "avg_pool_2",
                window: (nr, nc),
                stride: (sy, sx),
                padding: (py, px),
            }
        }
        "add_prev_" => Layer::AddPrev,
        _ => {
            // fc_2 / fc_3
            let outputs = r.uint_in(1, 1 << 20, "a fully connected layer's outputs")? as usize;
            let inputs = r.uint_in(1, 1 << 24, "a fully connected layer's inputs")? as usize;
            let params = r.tensor()?;
            let w = r.alias()?;
            let b = r.alias()?;
            let bias_mode = r.int()?;
            for _ in 0..4 {
                r.f64()?;
            }
            let use_bias = if tag == "fc_3" { r.bool()? } else { true };
            let has_bias = bias_mode == 0 && use_bias;
            let wsize = inputs.saturating_mul(outputs);
            if w.iter().product::<usize>() != wsize {
                return Err(r.error_at(at, format!("fc weights {w:?} for {inputs}x{outputs}")));
            }
            let bsize = if has_bias { b.iter().product() } else { 0 };
            let (weights, bias) = split(r, at, params, wsize, bsize, "a fully connected layer")?;
            Layer::Fc {
                inputs,
                outputs,
                weights,
                bias: has_bias.then_some(bias),
            }
        }
    })
}
