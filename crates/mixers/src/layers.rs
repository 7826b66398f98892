//! Layers shared by the mixers and the backbones: bias-free norms, StarReLU, per-channel scales,
//! 1x1 projections and the two-layer MLP.
//!
//! Every layer that can sit in both kinds of stage is told its [`MixerLayout`] at construction:
//! `Spatial` tensors are `(B, C, H, W)`; `Tokens` `(B, N, C)` and `ChannelsLast` `(B, H, W, C)`
//! tensors have their channels last, and `Any` counts as `ChannelsLast`.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use tokenmix_kernels::NormAxes;

use crate::MixerLayout;

/// Whether channels sit on axis 1 (`(B, C, H, W)`) rather than last.
fn is_spatial(layout: MixerLayout) -> bool {
    layout.resolved() == MixerLayout::Spatial
}

/// The channel axis of `x` in `layout`: 1 for `(B, C, H, W)`, the last for tokens.
fn channel_axis(x: &Tensor, layout: MixerLayout) -> usize {
    if is_spatial(layout) {
        1
    } else {
        x.rank().saturating_sub(1)
    }
}

/// Reshapes a per-channel vector `[C]` so it broadcasts against a tensor in `layout`.
fn per_channel(v: &Tensor, layout: MixerLayout) -> Result<Tensor> {
    if is_spatial(layout) {
        v.reshape((v.elem_count(), 1, 1))
    } else {
        Ok(v.clone())
    }
}

/// Per-channel multiplication `x * scale` (timm `Scale`; checkpoint tensor `scale`, shape `[C]`).
/// Used for layer-scale (on a branch) and res-scale (on a shortcut).
#[derive(Debug, Clone)]
pub struct Scale {
    scale: Tensor,
    layout: MixerLayout,
}

impl Scale {
    /// Loads `scale` (`[dim]`) from `vb` for tensors in `layout`.
    pub fn new(dim: usize, layout: MixerLayout, vb: VarBuilder) -> Result<Self> {
        Self::new_named(dim, layout, "scale", vb)
    }

    /// The scale of a loaded `[dim]` vector (a checkpoint's `(dim, 1, 1)` reshaped).
    pub fn from_tensor(scale: Tensor, layout: MixerLayout) -> Self {
        Self { scale, layout }
    }

    /// Loads the `[dim]` vector called `name` (timm's `LayerScale` calls it `gamma`).
    pub fn new_named(dim: usize, layout: MixerLayout, name: &str, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            scale: vb.get(dim, name)?,
            layout,
        })
    }
}

impl Scale {
    /// `a * a_scale + b * b_scale`, each scale optional: a block's res-scaled shortcut plus its
    /// layer-scaled branch, in one pass for channel-last or token bf16 tensors
    /// ([`tokenmix_kernels::scaled_add`]), else as two products and a sum.
    pub fn scaled_sum(
        a: &Tensor,
        a_scale: Option<&Scale>,
        b: &Tensor,
        b_scale: Option<&Scale>,
    ) -> Result<Tensor> {
        let spatial = [a_scale, b_scale]
            .into_iter()
            .flatten()
            .any(|s| is_spatial(s.layout));
        if spatial || a.dtype() != DType::BF16 {
            let apply = |t: &Tensor, s: Option<&Scale>| match s {
                Some(s) => s.forward(t),
                None => Ok(t.clone()),
            };
            return apply(a, a_scale)? + apply(b, b_scale)?;
        }
        tokenmix_kernels::scaled_add(a, a_scale.map(|s| &s.scale), b, b_scale.map(|s| &s.scale))
    }
}

impl Module for Scale {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&per_channel(&self.scale, self.layout)?)
    }
}

/// Which normalization a layer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// GroupNorm with one group: statistics over all of `(C, H, W)` (or `(N, C)`) per sample.
    GroupNorm1,
    /// LayerNorm over the channel axis only, at every spatial position / token.
    LayerNorm,
}

/// A normalization layer's description: kind, epsilon and whether it has a bias.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NormConfig {
    /// What the statistics are taken over.
    pub kind: NormKind,
    /// Added to the variance.
    pub eps: f64,
    /// Whether a `bias` tensor follows the `weight`.
    pub bias: bool,
}

impl NormConfig {
    /// timm `GroupNorm1` (PoolFormer v1): eps 1e-5, with bias.
    pub const GROUP_NORM1: Self = Self {
        kind: NormKind::GroupNorm1,
        eps: 1e-5,
        bias: true,
    };
    /// timm `GroupNorm1NoBias` (PoolFormer v2, IdentityFormer, RandFormer): eps 1e-6.
    pub const GROUP_NORM1_NO_BIAS: Self = Self {
        kind: NormKind::GroupNorm1,
        eps: 1e-6,
        bias: false,
    };
    /// timm `LayerNorm2dNoBias` / `LayerNormNoBias` (ConvFormer, CAFormer, stems): eps 1e-6.
    pub const LAYER_NORM_NO_BIAS: Self = Self {
        kind: NormKind::LayerNorm,
        eps: 1e-6,
        bias: false,
    };
    /// timm `LayerNorm2d` / `LayerNorm` with bias, eps 1e-6 (heads).
    pub const LAYER_NORM: Self = Self {
        kind: NormKind::LayerNorm,
        eps: 1e-6,
        bias: true,
    };

    /// Loads the norm's `weight` (and `bias`) for `dim` channels in `layout`.
    pub fn build(&self, dim: usize, layout: MixerLayout, vb: VarBuilder) -> Result<Norm> {
        Norm::new(*self, dim, layout, vb)
    }
}

/// A normalization layer: `(x - mean) / sqrt(var + eps) * weight (+ bias)` with the biased
/// variance, over the axes its [`NormKind`] names; weight and bias are per channel.
#[derive(Debug, Clone)]
pub struct Norm {
    cfg: NormConfig,
    layout: MixerLayout,
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Norm {
    /// A norm from explicit per-channel `weight` and `bias` tensors.
    pub fn from_tensors(
        cfg: NormConfig,
        layout: MixerLayout,
        weight: Tensor,
        bias: Option<Tensor>,
    ) -> Self {
        Self {
            cfg,
            layout,
            weight,
            bias,
        }
    }

    /// Loads `weight` (`[dim]`) and, if the config says so, `bias` (`[dim]`).
    pub fn new(cfg: NormConfig, dim: usize, layout: MixerLayout, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(dim, "weight")?;
        let bias = if cfg.bias {
            Some(vb.get(dim, "bias")?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            layout,
            weight,
            bias,
        })
    }
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let axes = match self.cfg.kind {
            NormKind::LayerNorm => NormAxes::Channels,
            NormKind::GroupNorm1 => NormAxes::AllButBatch,
        };
        let axis = channel_axis(x, self.layout);
        tokenmix_kernels::channel_norm(
            x,
            &self.weight,
            self.bias.as_ref(),
            axes,
            self.cfg.eps,
            axis,
        )
    }
}

/// StarReLU: `scale * relu(x)^2 + bias` with learned scalars `scale` and `bias` (shape `[1]`).
#[derive(Debug, Clone)]
pub struct StarRelu {
    scale: Tensor,
    bias: Tensor,
}

impl StarRelu {
    /// Loads `scale` and `bias` (each `[1]`).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            scale: vb.get(1, "scale")?,
            bias: vb.get(1, "bias")?,
        })
    }
}

impl Module for StarRelu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        tokenmix_kernels::star_relu(x, &self.scale, &self.bias)
    }
}

/// The activation of an MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActKind {
    /// Exact (erf) GELU, as PyTorch's `nn.GELU()`.
    Gelu,
    /// StarReLU with learned scale and bias.
    StarRelu,
    /// `relu(x)^2`, no parameters.
    SquaredRelu,
    /// `x * sigmoid(x)`.
    Silu,
    /// `max(x, 0)`.
    Relu,
}

/// An activation layer built from an [`ActKind`].
#[derive(Debug, Clone)]
pub enum Act {
    /// Exact GELU.
    Gelu,
    /// StarReLU with its parameters.
    StarRelu(StarRelu),
    /// Squared ReLU.
    SquaredRelu,
    /// SiLU.
    Silu,
    /// ReLU.
    Relu,
}

impl Act {
    /// Builds the activation; StarReLU reads `scale` and `bias` from `vb`.
    pub fn new(kind: ActKind, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            ActKind::Gelu => Self::Gelu,
            ActKind::StarRelu => Self::StarRelu(StarRelu::new(vb)?),
            ActKind::SquaredRelu => Self::SquaredRelu,
            ActKind::Silu => Self::Silu,
            ActKind::Relu => Self::Relu,
        })
    }
}

impl Module for Act {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Gelu => tokenmix_kernels::gelu(x),
            Self::StarRelu(a) => a.forward(x),
            Self::SquaredRelu => tokenmix_kernels::squared_relu(x),
            Self::Silu => x.silu(),
            Self::Relu => x.relu(),
        }
    }
}

/// A value computed from a layer's weights (a re-arranged matrix, folded statistics), made on
/// first use and kept: not at load time, so that describing a model allocates nothing. When the
/// weights are trainable variables, which an optimizer may update in place, it is recomputed on
/// every call instead, so it never goes stale. Clones of a layer share what it has derived (and
/// what either derives later), so a layer kept inside another derived value keeps its own.
#[derive(Debug, Clone)]
pub struct Derived<T>(std::sync::Arc<std::sync::OnceLock<T>>);

impl<T> Default for Derived<T> {
    fn default() -> Self {
        Self(std::sync::Arc::new(std::sync::OnceLock::new()))
    }
}

impl<T: Clone> Derived<T> {
    /// The kept value, or `make()` (kept unless `trainable`).
    pub fn get(&self, trainable: bool, make: impl FnOnce() -> Result<T>) -> Result<T> {
        if let Some(v) = self.0.get() {
            return Ok(v.clone());
        }
        let v = make()?;
        if trainable {
            return Ok(v);
        }
        Ok(self.0.get_or_init(|| v).clone())
    }
}

/// A layer's stored weight, shared by the layer's clones. An inference-only layer that has
/// derived its own arrangement of the weight swaps this for a view of it, so that the copy the
/// checkpoint was loaded into is freed.
#[derive(Debug, Clone)]
struct StoredWeight(std::sync::Arc<std::sync::RwLock<Tensor>>);

impl StoredWeight {
    fn new(weight: Tensor) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(weight)))
    }

    fn get(&self) -> Tensor {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, weight: Tensor) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = weight;
    }
}

/// A per-position linear map of the channels: a 1x1 convolution on `(B, C, H, W)` (checkpoint
/// weight `[out, in, 1, 1]`) or a `Linear` on channel-last tensors `(..., C)` (weight
/// `[out, in]`), bias optional.
#[derive(Debug, Clone)]
pub struct Pointwise {
    /// The weight as the checkpoint stores it (`[out, in]` or `[out, in, 1, 1]`); an
    /// inference-only channel-last layer swaps it for a view of `matrix` once that is derived.
    weight: StoredWeight,
    /// The matrix in the orientation the layout multiplies by: `[out, in]` for `(B, C, H, W)`
    /// (`W · x` per image), `[in, out]` contiguous for channel-last tensors (`x · Wᵀ` over all
    /// rows; a transposed view makes gemm repack it on every call, up to 2.7x slower).
    matrix: Derived<Tensor>,
    bias: Option<Tensor>,
    layout: MixerLayout,
    out_dim: usize,
    in_dim: usize,
}

impl Pointwise {
    /// Like [`Pointwise::new`], but the checkpoint stores a `Linear` weight `[out, in]` even in
    /// the channel-first layout (MS-MLP's `pwconv`s).
    pub fn from_linear(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        layout: MixerLayout,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        Self::with_weight(weight, bias, layout, vb)
    }

    /// Loads a 1x1 convolution's weight `[out, in, 1, 1]` (and `bias` if `bias`) and applies
    /// it in `layout`: timm's NCHW checkpoints run channel-last, where the map is one matrix
    /// product over all positions of the batch.
    pub fn conv1x1(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        layout: MixerLayout,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim, 1, 1), "weight")?;
        Self::with_weight(weight, bias, layout, vb)
    }

    /// The layer around a loaded `weight` (`[out, in, ...]`), with `bias` from `vb` if `bias`.
    fn with_weight(
        weight: Tensor,
        bias: bool,
        layout: MixerLayout,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (out_dim, in_dim) = (weight.dim(0)?, weight.dim(1)?);
        Ok(Self {
            bias: bias.then(|| vb.get(out_dim, "bias")).transpose()?,
            weight: StoredWeight::new(weight),
            matrix: Derived::default(),
            layout,
            out_dim,
            in_dim,
        })
    }

    /// Loads `weight` (and `bias` if `bias`) mapping `in_dim` to `out_dim` channels: a 1x1
    /// convolution's `[out, in, 1, 1]` in the `(B, C, H, W)` layout, a `Linear`'s `[out, in]`
    /// otherwise.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        layout: MixerLayout,
        vb: VarBuilder,
    ) -> Result<Self> {
        if is_spatial(layout) {
            Self::conv1x1(in_dim, out_dim, bias, layout, vb)
        } else {
            Self::from_linear(in_dim, out_dim, bias, layout, vb)
        }
    }
}

impl Pointwise {
    /// The layer of a loaded `weight` `[out, in]` or `[out, in, 1, 1]` and optional `bias`
    /// `[out]`, applied in `layout`.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>, layout: MixerLayout) -> Result<Self> {
        let (out_dim, in_dim) = (weight.dim(0)?, weight.dim(1)?);
        Ok(Self {
            bias,
            weight: StoredWeight::new(weight),
            matrix: Derived::default(),
            layout,
            out_dim,
            in_dim,
        })
    }

    /// This map with a per-channel affine `x * scale + shift` of its input (`scale`, `shift`
    /// `(in)`, e.g. a batch norm in front of it) folded in: `W diag(scale)`, bias
    /// `b + W shift`. Exact up to rounding.
    pub fn with_input_affine(&self, scale: &Tensor, shift: &Tensor) -> Result<Self> {
        let w = self.weight.get().reshape((self.out_dim, self.in_dim))?;
        let extra = w.matmul(&shift.reshape((self.in_dim, 1))?)?.flatten_all()?;
        let bias = match &self.bias {
            Some(b) => (b + extra)?,
            None => extra,
        };
        let weight = w
            .broadcast_mul(&scale.reshape((1, self.in_dim))?)?
            .reshape(self.weight.get().shape())?;
        Self::from_tensors(weight, Some(bias), self.layout)
    }

    /// This map followed by a per-channel affine `y * scale + shift` of its output (`scale`,
    /// `shift` `(out)`, e.g. a batch norm after it) folded in: `diag(scale) W`, bias
    /// `b * scale + shift`. Exact up to rounding.
    pub fn with_output_affine(&self, scale: &Tensor, shift: &Tensor) -> Result<Self> {
        let w = self.weight.get().reshape((self.out_dim, self.in_dim))?;
        let bias = match &self.bias {
            Some(b) => ((b * scale)? + shift)?,
            None => shift.clone(),
        };
        let weight = w
            .broadcast_mul(&scale.reshape((self.out_dim, 1))?)?
            .reshape(self.weight.get().shape())?;
        Self::from_tensors(weight, Some(bias), self.layout)
    }

    /// The weight as the layout multiplies by it (see the `matrix` field). Once an
    /// inference-only channel-last layer has derived it, the stored weight becomes a view of
    /// it, so that the layer holds the weight once.
    fn matrix(&self) -> Result<Tensor> {
        let weight = self.weight.get();
        let trainable = weight.is_variable();
        let m = self.matrix.get(trainable, || self.make_matrix())?;
        // The kept matrix (not one a racing thread made and dropped) backs the view; the
        // stored weight is contiguous only until it has been swapped.
        if !trainable && !is_spatial(self.layout) && weight.is_contiguous() {
            let mut view = m.t()?;
            while view.rank() < weight.rank() {
                view = view.unsqueeze(view.rank())?;
            }
            self.weight.replace(view);
        }
        Ok(m)
    }

    fn make_matrix(&self) -> Result<Tensor> {
        let w = self.weight.get().reshape((self.out_dim, self.in_dim))?;
        if is_spatial(self.layout) {
            Ok(w)
        } else {
            w.t()?.contiguous()
        }
    }

    /// Whether the weight or the bias is a trainable variable.
    pub fn trainable(&self) -> bool {
        self.weight.get().is_variable() || self.bias.as_ref().is_some_and(|b| b.is_variable())
    }

    /// The linear map without its bias.
    fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let matrix = self.matrix()?;
        let y = if is_spatial(self.layout) {
            let (b, c, h, w) = x.dims4()?;
            matrix
                .broadcast_matmul(&x.reshape((b, c, h * w))?)?
                .reshape((b, self.out_dim, h, w))?
        } else {
            let mut out_shape = x.dims().to_vec();
            let rows = x.elem_count() / self.in_dim.max(1);
            if let Some(last) = out_shape.last_mut() {
                *last = self.out_dim;
            }
            tokenmix_kernels::matmul_rows(&x.reshape((rows, self.in_dim))?, &matrix)?
                .reshape(out_shape)?
        };
        Ok(y)
    }

    /// `act(self(x))`, with the bias add folded into exact GELU's pass.
    pub fn forward_act(&self, x: &Tensor, act: &Act) -> Result<Tensor> {
        match (&self.bias, act) {
            (Some(bias), Act::Gelu) if !is_spatial(self.layout) && x.dtype() == DType::BF16 => {
                tokenmix_kernels::linear_gelu(x, &self.matrix()?, bias)
            }
            (Some(bias), Act::Gelu) => {
                let y = self.matmul(x)?;
                tokenmix_kernels::bias_gelu(&y, bias, channel_axis(&y, self.layout))
            }
            _ => act.forward(&self.forward(x)?),
        }
    }
}

impl Module for Pointwise {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(bias) if !is_spatial(self.layout) => {
                tokenmix_kernels::linear(x, &self.matrix()?, bias)
            }
            Some(bias) => self
                .matmul(x)?
                .broadcast_add(&per_channel(bias, self.layout)?),
            None => self.matmul(x),
        }
    }
}

/// The channel MLP of a block: `fc2(act(fc1(x)))` with `fc1: dim -> hidden`, `fc2: hidden -> dim`,
/// times a per-channel layer scale if it has one ([`Mlp::with_output_scale`]).
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Pointwise,
    act: Act,
    fc2: Pointwise,
    output_scale: Option<Scale>,
    /// The weights [`tokenmix_kernels::residual_mlp`] takes (layer scale folded into `fc2`), or
    /// `None` where it cannot run this MLP: kept unless trainable, like [`Pointwise`]'s matrix.
    fused: Derived<Option<tokenmix_kernels::MlpWeights>>,
}

impl Mlp {
    /// Loads `fc1`, `act` and `fc2` from `vb` (timm `Mlp` names).
    pub fn new(
        dim: usize,
        hidden: usize,
        act: ActKind,
        bias: bool,
        layout: MixerLayout,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::with_layers(dim, hidden, act, bias, layout, vb, Pointwise::new)
    }

    /// `fc1`, `act` and `fc2` from `vb`, the two linear layers loaded by `pointwise`.
    fn with_layers(
        dim: usize,
        hidden: usize,
        act: ActKind,
        bias: bool,
        layout: MixerLayout,
        vb: VarBuilder,
        pointwise: fn(usize, usize, bool, MixerLayout, VarBuilder) -> Result<Pointwise>,
    ) -> Result<Self> {
        Ok(Self::of_layers(
            pointwise(dim, hidden, bias, layout, vb.pp("fc1"))?,
            Act::new(act, vb.pp("act"))?,
            pointwise(hidden, dim, bias, layout, vb.pp("fc2"))?,
        ))
    }

    fn of_layers(fc1: Pointwise, act: Act, fc2: Pointwise) -> Self {
        Self {
            fc1,
            act,
            fc2,
            output_scale: None,
            fused: Derived::default(),
        }
    }

    /// This MLP with its output multiplied by `scale` (a block's `layer_scale2` / `ls2`).
    pub fn with_output_scale(self, scale: Option<Scale>) -> Self {
        Self {
            output_scale: scale,
            fused: Derived::default(),
            ..self
        }
    }

    /// `shortcut + self(x)` (with `drop_path` on the branch when `train`): a block's MLP
    /// branch and residual add. Channel-last and token inputs on the CPU, with GELU, StarReLU
    /// or SquaredReLU and no trainable weight, run as one
    /// [`tokenmix_kernels::residual_mlp`] that never materializes the hidden activations.
    pub fn forward_residual(
        &self,
        x: &Tensor,
        shortcut: &Tensor,
        drop_path: DropPath,
        train: bool,
    ) -> Result<Tensor> {
        let dropping = train && drop_path.rate() > 0.0;
        if !dropping && x.device().is_cpu() {
            if let Some(weights) = self.fused_weights()? {
                return tokenmix_kernels::residual_mlp(x, shortcut, &weights);
            }
        }
        shortcut + drop_path.forward_t(&self.forward(x)?, train)?
    }

    /// This MLP with a per-channel affine of its input (a batch norm in front of it) folded
    /// into `fc1` (see [`Pointwise::with_input_affine`]).
    pub fn with_input_affine(&self, scale: &Tensor, shift: &Tensor) -> Result<Self> {
        Ok(Self {
            fc1: self.fc1.with_input_affine(scale, shift)?,
            act: self.act.clone(),
            fc2: self.fc2.clone(),
            output_scale: self.output_scale.clone(),
            fused: Derived::default(),
        })
    }

    /// Whether any weight (the activation's and the output scale's included) trains.
    pub fn trainable(&self) -> bool {
        let act = match &self.act {
            Act::StarRelu(a) => a.scale.is_variable() || a.bias.is_variable(),
            _ => false,
        };
        act || self.fc1.trainable()
            || self.fc2.trainable()
            || self
                .output_scale
                .as_ref()
                .is_some_and(|s| s.scale.is_variable())
    }

    fn fused_weights(&self) -> Result<Option<tokenmix_kernels::MlpWeights>> {
        if self.trainable() || is_spatial(self.fc1.layout) {
            return Ok(None);
        }
        self.fused.get(false, || self.make_fused_weights())
    }

    fn make_fused_weights(&self) -> Result<Option<tokenmix_kernels::MlpWeights>> {
        use tokenmix_kernels::MlpActivation;
        let scalar = |t: &Tensor| -> Result<f32> {
            t.flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .get(0)?
                .to_scalar()
        };
        let act = match &self.act {
            Act::Gelu => MlpActivation::Gelu,
            Act::StarRelu(a) => MlpActivation::StarRelu {
                scale: scalar(&a.scale)?,
                bias: scalar(&a.bias)?,
            },
            Act::SquaredRelu => MlpActivation::StarRelu {
                scale: 1.0,
                bias: 0.0,
            },
            Act::Silu | Act::Relu => return Ok(None),
        };
        let (fc2, fc2_bias) = match &self.output_scale {
            Some(s) => (
                self.fc2.make_matrix()?.broadcast_mul(&s.scale)?,
                self.fc2.bias.as_ref().map(|b| b * &s.scale).transpose()?,
            ),
            None => (self.fc2.matrix()?, self.fc2.bias.clone()),
        };
        Ok(Some(tokenmix_kernels::MlpWeights {
            fc1: self.fc1.matrix()?,
            fc1_bias: self.fc1.bias.clone(),
            act,
            fc2,
            fc2_bias,
        }))
    }
}

impl Mlp {
    /// Like [`Mlp::new`], but `fc1` and `fc2` are stored as 1x1 convolutions (`[out, in, 1,
    /// 1]`) whatever the layout they run in (see [`Pointwise::conv1x1`]).
    pub fn conv1x1(
        dim: usize,
        hidden: usize,
        act: ActKind,
        bias: bool,
        layout: MixerLayout,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::with_layers(dim, hidden, act, bias, layout, vb, Pointwise::conv1x1)
    }

    /// A channel-last MLP with biases whose two linear layers live at `fc1` and `fc2` (for
    /// checkpoints that index them inside a `Sequential`, e.g. `fn.0` and `fn.3`).
    pub fn from_parts(
        dim: usize,
        hidden: usize,
        act: ActKind,
        fc1: VarBuilder,
        fc2: VarBuilder,
    ) -> Result<Self> {
        let layout = MixerLayout::Tokens;
        let act = Act::new(act, fc1.pp("act"))?;
        Ok(Self::of_layers(
            Pointwise::new(dim, hidden, true, layout, fc1)?,
            act,
            Pointwise::new(hidden, dim, true, layout, fc2)?,
        ))
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.fc2.forward(&self.fc1.forward_act(x, &self.act)?)?;
        match &self.output_scale {
            Some(s) => s.forward(&y),
            None => Ok(y),
        }
    }
}

/// A dense `k x k` convolution (stride, zero padding, optional bias) of channel-last maps
/// `(B, H, W, Cin) -> (B, Ho, Wo, Cout)`, loaded from a checkpoint's `weight`
/// `[Cout, Cin, k, k]` and `bias` `[Cout]` (timm's NCHW `Conv2d`): the stems and downsamplers
/// of the channel-last backbones, run by [`tokenmix_kernels::conv2d_nhwc`].
#[derive(Debug, Clone)]
pub struct ConvNhwc {
    weight: Tensor,
    /// `[k * k * Cin, Cout]` ([`tokenmix_kernels::conv_weight_matrix`]).
    matrix: Derived<Tensor>,
    bias: Option<Tensor>,
    window: tokenmix_kernels::Window,
}

impl ConvNhwc {
    /// Loads `weight` (and `bias` if `bias`) of a `kernel x kernel` convolution from `in_dim`
    /// to `out_dim` channels with `stride` and `padding`.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        window: tokenmix_kernels::Window,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let k = window.kernel;
        Ok(Self {
            weight: vb.get((out_dim, in_dim, k, k), "weight")?,
            matrix: Derived::default(),
            bias: bias.then(|| vb.get(out_dim, "bias")).transpose()?,
            window,
        })
    }

    fn matrix(&self) -> Result<Tensor> {
        self.matrix.get(self.weight.is_variable(), || {
            tokenmix_kernels::conv_weight_matrix(&self.weight)
        })
    }
}

impl Module for ConvNhwc {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        tokenmix_kernels::conv2d_nhwc(x, &self.matrix()?, self.bias.as_ref(), self.window)
    }
}

/// Whether a [`ConvBnNhwc`] convolves each channel alone or all channels together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// A dense convolution, weight `[Cout, Cin, k, k]`.
    Dense,
    /// A depthwise convolution, weight `[C, 1, k, k]` (`Cin == Cout`).
    Depthwise,
}

/// A convolution (dense or depthwise, stride, zero padding, optional bias) followed by a batch
/// norm, on channel-last maps `(B, H, W, Cin) -> (B, Ho, Wo, Cout)`, with the norm folded into
/// the convolution's weights and bias (exact: the norm is evaluated with its running
/// statistics). Checkpoint names: the convolution's `weight` (and `bias`) and the norm's four
/// tensors, each under its own prefix (e.g. timm-style `conv` / `norm`, or `0` / `1` inside a
/// `Sequential`). The folded weights are kept unless any tensor trains.
#[derive(Debug, Clone)]
pub struct ConvBnNhwc {
    weight: Tensor,
    bias: Option<Tensor>,
    bn: BatchNorm,
    window: tokenmix_kernels::Window,
    kind: ConvKind,
    /// `(weight, bias)` as the kernel takes them: the `[k * k * Cin, Cout]` matrix for dense
    /// convolutions, `[C, 1, k, k]` for depthwise ones.
    folded: Derived<(Tensor, Tensor)>,
}

impl ConvBnNhwc {
    /// Loads the convolution from `conv` (with a `bias` if `bias`) and the norm from `bn`.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        window: tokenmix_kernels::Window,
        kind: ConvKind,
        bias: bool,
        conv: VarBuilder,
        bn: VarBuilder,
    ) -> Result<Self> {
        let k = window.kernel;
        let weight = match kind {
            ConvKind::Dense => conv.get((out_dim, in_dim, k, k), "weight")?,
            ConvKind::Depthwise => conv.get((out_dim, 1, k, k), "weight")?,
        };
        Ok(Self {
            weight,
            bias: bias.then(|| conv.get(out_dim, "bias")).transpose()?,
            bn: BatchNorm::new(out_dim, bn)?,
            window,
            kind,
            folded: Derived::default(),
        })
    }

    /// Whether the convolution's or the norm's tensors are trainable variables.
    pub fn trainable(&self) -> bool {
        self.weight.is_variable()
            || self.bias.as_ref().is_some_and(|b| b.is_variable())
            || self.bn.trainable()
    }

    fn fold(&self) -> Result<(Tensor, Tensor)> {
        let (scale, shift) = self.bn.scale_shift()?;
        let bias = match &self.bias {
            Some(b) => ((b * &scale)? + &shift)?,
            None => shift,
        };
        let weight = match self.kind {
            ConvKind::Dense => {
                tokenmix_kernels::conv_weight_matrix(&self.weight)?.broadcast_mul(&scale)?
            }
            ConvKind::Depthwise => {
                let c = scale.dim(0)?;
                self.weight.broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?
            }
        };
        Ok((weight, bias))
    }
}

impl Module for ConvBnNhwc {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (weight, bias) = self.folded.get(self.trainable(), || self.fold())?;
        let w = self.window;
        match self.kind {
            ConvKind::Dense => tokenmix_kernels::conv2d_nhwc(x, &weight, Some(&bias), w),
            ConvKind::Depthwise => tokenmix_kernels::depthwise_conv2d_nhwc(
                x,
                &weight,
                Some(&bias),
                w.stride,
                w.padding,
            ),
        }
    }
}

/// The mean over the positions of channel-last `(B, ..., C)` tokens or maps (viewed as
/// `(B, L, C)`), giving `(B, C)`: one matrix product per sample (candle's reductions over a
/// middle axis walk it element by element).
pub fn position_mean(x: &Tensor) -> Result<Tensor> {
    let (b, c) = (x.dim(0)?, x.dim(D::Minus1)?);
    let l = x.elem_count() / (b * c).max(1);
    let weights = Tensor::full(1.0 / l as f32, (1, l), x.device())?.to_dtype(x.dtype())?;
    weights
        .broadcast_matmul(&x.reshape((b, l, c))?)?
        .reshape((b, c))
}

/// Mean over the spatial axes of `(B, C, H, W)`, giving `(B, C)`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| x.mean(D::Minus1)?.mean(D::Minus1))
}

/// Stochastic depth on a residual branch `(B, ...)`: in training, each sample's branch is zeroed
/// with probability `rate` and kept ones are scaled by `1 / (1 - rate)`; identity in evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropPath {
    rate: f64,
}

impl DropPath {
    /// Drops a branch with probability `rate` (clamped to `[0, 1)`).
    pub fn new(rate: f64) -> Self {
        Self {
            rate: rate.clamp(0.0, 0.999),
        }
    }

    /// The drop probability.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Applies the drop to `x` when `train` is set.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.rate <= 0.0 {
            return Ok(x.clone());
        }
        let b = x.dim(0)?;
        let mut mask_shape = vec![1; x.rank()];
        mask_shape[0] = b;
        let keep = 1.0 - self.rate;
        let mask = Tensor::rand(0f32, 1f32, b, x.device())?
            .ge(self.rate)?
            .to_dtype(x.dtype())?
            .affine(1.0 / keep, 0.0)?
            .reshape(mask_shape)?;
        x.broadcast_mul(&mask)
    }
}

/// Per-block drop-path rates rising linearly from 0 to `max_rate` over `blocks` blocks (timm's
/// `torch.linspace(0, drop_path_rate, sum(depths))`).
pub fn drop_path_rates(max_rate: f64, blocks: usize) -> Vec<DropPath> {
    (0..blocks)
        .map(|i| {
            let t = if blocks > 1 {
                i as f64 / (blocks - 1) as f64
            } else {
                0.0
            };
            DropPath::new(max_rate * t)
        })
        .collect()
}

/// `W @ x + b[:, None]` along the token axis of `x` `(B, N, C)`: `W` `[out, N]`, `b` `[out]`
/// (checkpoint `weight`, `bias`), giving `(B, out, C)`. The token-mixing linear layer of
/// MLP-Mixer, ResMLP and gMLP, written as `W @ x` so no transposes are needed.
#[derive(Debug, Clone)]
pub struct TokenLinear {
    weight: Tensor,
    bias: Tensor,
}

impl TokenLinear {
    /// Loads `weight` `[n_out, n_in]` and `bias` `[n_out]` from `vb`.
    pub fn new(n_in: usize, n_out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get((n_out, n_in), "weight")?,
            bias: vb.get(n_out, "bias")?,
        })
    }
}

impl Module for TokenLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n_out = self.bias.dim(0)?;
        self.weight
            .broadcast_matmul(x)?
            .broadcast_add(&self.bias.reshape((n_out, 1))?)
    }
}

/// `nn.BatchNorm2d` with its running statistics on `(B, C, H, W)`:
/// `(x - running_mean) / sqrt(running_var + eps) * weight + bias` per channel (checkpoint
/// `weight`, `bias`, `running_mean`, `running_var`; eps 1e-5). Training keeps the statistics
/// frozen, as in cvnets-style fine-tuning; batch statistics are not computed.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: f64,
}

impl BatchNorm {
    /// PyTorch's default `eps`.
    pub const EPS: f64 = 1e-5;

    /// Loads the four `[dim]` tensors from `vb`.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_eps(dim, Self::EPS, vb)
    }

    /// Loads the four `[dim]` tensors from `vb`, for a norm with `eps` added to the variance.
    pub fn with_eps(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            running_mean: vb.get(dim, "running_mean")?,
            running_var: vb.get(dim, "running_var")?,
            eps,
        })
    }
}

impl BatchNorm {
    /// The per-channel `(scale, shift)` `(C)` this norm multiplies by and adds:
    /// `weight / sqrt(running_var + eps)` and `bias - running_mean * scale`.
    pub fn scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let dtype = self.weight.dtype();
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let scale = (f32(&self.weight)? / (f32(&self.running_var)? + self.eps)?.sqrt()?)?;
        let shift = (f32(&self.bias)? - (f32(&self.running_mean)? * &scale)?)?;
        Ok((scale.to_dtype(dtype)?, shift.to_dtype(dtype)?))
    }

    /// The norm of a channel-last tensor `(..., C)`.
    pub fn forward_channels_last(&self, x: &Tensor) -> Result<Tensor> {
        let (scale, shift) = self.scale_shift()?;
        x.broadcast_mul(&scale)?.broadcast_add(&shift)
    }

    /// Whether any of its four tensors is a trainable variable.
    pub fn trainable(&self) -> bool {
        [
            &self.weight,
            &self.bias,
            &self.running_mean,
            &self.running_var,
        ]
        .iter()
        .any(|t| t.is_variable())
    }
}

/// The norm of a channel-first `(B, C, H, W)` tensor.
impl Module for BatchNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        let (scale, shift) = self.scale_shift()?;
        x.broadcast_mul(&scale.reshape((c, 1, 1))?)?
            .broadcast_add(&shift.reshape((c, 1, 1))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn pointwise_sees_in_place_updates_of_its_variables() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let layer = Pointwise::new(3, 2, false, MixerLayout::Tokens, vb).unwrap();
        let x = Tensor::ones((4, 3), DType::F32, &Device::Cpu).unwrap();
        let before = layer.forward(&x).unwrap();
        let weight = &varmap.all_vars()[0];
        weight
            .set(&Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let after: Vec<Vec<f32>> = layer.forward(&x).unwrap().to_vec2().unwrap();
        assert_eq!(after, vec![vec![3f32; 2]; 4]);
        assert_ne!(before.to_vec2::<f32>().unwrap(), after);
    }

    /// An inference-only channel-last layer keeps its weight once: after the first product the
    /// stored weight is a (transposed, non-contiguous) view of the derived matrix, with the
    /// same values, and what is built from it later (an input affine folded in) is unchanged.
    #[test]
    fn a_constant_pointwise_keeps_its_weight_once() {
        let dev = Device::Cpu;
        for layout in [MixerLayout::Tokens, MixerLayout::ChannelsLast] {
            let w = Tensor::randn(0f32, 1.0, (5, 3, 1, 1), &dev).unwrap();
            let w = if layout == MixerLayout::Tokens {
                w.reshape((5, 3)).unwrap()
            } else {
                w
            };
            let b = Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
            let layer = Pointwise::from_tensors(w.clone(), Some(b), layout).unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, 4, 3), &dev).unwrap();
            let x = if layout == MixerLayout::Tokens {
                x
            } else {
                x.reshape((2, 2, 2, 3)).unwrap()
            };
            let (scale, shift) = (
                Tensor::randn(0f32, 1.0, 3, &dev).unwrap(),
                Tensor::randn(0f32, 1.0, 3, &dev).unwrap(),
            );
            let folded_before = layer.with_input_affine(&scale, &shift).unwrap();
            assert!(layer.weight.get().is_contiguous());
            let y1 = layer.forward(&x).unwrap();
            let stored = layer.weight.get();
            assert!(
                !stored.is_contiguous(),
                "{layout:?}: the stored copy was kept"
            );
            assert_eq!(stored.dims(), w.dims());
            let diff = (&stored - &w).unwrap().abs().unwrap().sum_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
            let y2 = layer.forward(&x).unwrap();
            assert_eq!(
                y1.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y2.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            let folded_after = layer.with_input_affine(&scale, &shift).unwrap();
            let a = folded_before.forward(&x).unwrap();
            let b = folded_after.forward(&x).unwrap();
            assert_eq!(
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        // A trainable layer derives per call and keeps its variable.
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let layer = Pointwise::new(3, 2, true, MixerLayout::Tokens, vb).unwrap();
        layer
            .forward(&Tensor::ones((4, 3), DType::F32, &dev).unwrap())
            .unwrap();
        assert!(layer.weight.get().is_variable());
    }

    /// The fused residual MLP (constant weights, layer scale folded into `fc2`) against the
    /// same MLP on variables (the composed path), for each activation it takes.
    #[test]
    fn residual_mlp_matches_the_composed_mlp() {
        let dev = Device::Cpu;
        for act in [
            ActKind::Gelu,
            ActKind::StarRelu,
            ActKind::SquaredRelu,
            ActKind::Relu,
        ] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
            let build = |vb: VarBuilder| {
                let scale = Scale::new_named(6, MixerLayout::ChannelsLast, "ls", vb.clone())?;
                Ok::<_, candle_core::Error>(
                    Mlp::conv1x1(6, 20, act, true, MixerLayout::ChannelsLast, vb.pp("mlp"))?
                        .with_output_scale(Some(scale)),
                )
            };
            let trained = build(vb).unwrap();
            let mut weights = std::collections::HashMap::new();
            for (name, var) in varmap.data().lock().unwrap().iter() {
                let random = Tensor::randn(0f32, 1.0, var.shape(), &dev).unwrap();
                var.set(&random).unwrap();
                weights.insert(name.clone(), random);
            }
            let constant = build(VarBuilder::from_tensors(weights, DType::F32, &dev)).unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 6), &dev).unwrap();
            let shortcut = Tensor::randn(0f32, 1.0, (2, 3, 5, 6), &dev).unwrap();
            let dp = DropPath::new(0.0);
            let fused = constant.forward_residual(&x, &shortcut, dp, false).unwrap();
            let composed = trained.forward_residual(&x, &shortcut, dp, false).unwrap();
            let max_abs =
                |t: &Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
            // Relative to the output's size: squared ReLU of N(0, 1) weights reaches hundreds.
            let diff = max_abs(&(fused - &composed).unwrap());
            let size = max_abs(&composed).max(1.0);
            assert!(diff < 1e-5 * size, "{act:?}: max diff {diff} of {size}");
        }
    }
}

/// TransNeXt's Convolutional GLU channel mixer (`transnext.py` `ConvolutionalGLU`) on
/// channel-last maps `(B, H, W, C)`: `fc1` (`C -> 2h`) split into `(x, v)`, then
/// `fc2(GELU(dw3x3(x)) * v)` with `dw3x3` a depthwise 3x3 convolution with bias (padding 1) and
/// `h = int(2 * hidden / 3)`. Checkpoint names `fc1`, `dwconv.dwconv`, `fc2`. Usable as the
/// channel MLP of any channel-last block.
#[derive(Debug, Clone)]
pub struct ConvGlu {
    fc1: Pointwise,
    dwconv: Depthwise3x3,
    fc2: Pointwise,
    hidden: usize,
}

impl ConvGlu {
    /// The width of the gated branch for a `hidden` argument: `int(2 * hidden / 3)`.
    pub fn gated_width(hidden: usize) -> usize {
        2 * hidden / 3
    }

    /// Loads `fc1`, `dwconv.dwconv` and `fc2` for `dim` channels and the reference's
    /// `hidden_features` argument `hidden` (before its 2/3 reduction).
    pub fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let h = Self::gated_width(hidden);
        if h == 0 || dim == 0 {
            candle_core::bail!(
                "ConvGlu needs channels and a gated width int(2 * {hidden} / 3) of at least one"
            );
        }
        let layout = MixerLayout::ChannelsLast;
        Ok(Self {
            fc1: Pointwise::from_linear(dim, 2 * h, true, layout, vb.pp("fc1"))?,
            dwconv: Depthwise3x3::new(h, vb.pp("dwconv").pp("dwconv"))?,
            fc2: Pointwise::from_linear(h, dim, true, layout, vb.pp("fc2"))?,
            hidden: h,
        })
    }

    /// Multiply-accumulates at one position.
    pub fn macs_per_position(&self) -> u64 {
        let (h, c) = (self.hidden as u64, self.fc2.out_dim as u64);
        c * 2 * h + 9 * h + h * c
    }
}

impl Module for ConvGlu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.fc1.forward(x)?;
        let h = self.hidden;
        let gate = self.dwconv.forward(&y.narrow(3, 0, h)?)?;
        let gated = (tokenmix_kernels::gelu(&gate)? * y.narrow(3, h, h)?)?;
        self.fc2.forward(&gated)
    }
}

/// `log(1 + exp(x))`, computed as `max(x, 0) + log(1 + exp(-|x|))` (no overflow).
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// Softmax over the last axis: candle-nn's fused one where no gradient flows into `x` (it
/// passes none), the differentiable composition otherwise.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| {
        if x.track_op() {
            tokenmix_kernels::composed::softmax_last_dim(x)
        } else {
            candle_nn::ops::softmax_last_dim(x)
        }
    })
}

/// `f(x)`, computed on `x` in f32 when `x` is bf16 or f16 and returned in `x`'s dtype: how a
/// half-precision model's norms, softmaxes and reductions accumulate in f32 (candle's reductions
/// accumulate in the tensor's own dtype). Differentiable (the casts are).
pub fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    match x.dtype() {
        DType::BF16 | DType::F16 => f(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
        _ => f(x),
    }
}

/// Tokens `(B, N, heads * d)` as `(B, heads, N, d)`, contiguous.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    x.reshape((b, n, heads, c / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// A depthwise 3x3 convolution with bias, padding 1, of channel-last maps (checkpoint `weight`
/// `[C, 1, 3, 3]`, `bias`): CAS-ViT's, TransNeXt's ConvGLU's and S2AFormer's.
#[derive(Debug, Clone)]
pub struct Depthwise3x3 {
    weight: Tensor,
    bias: Tensor,
}

impl Depthwise3x3 {
    /// Loads `weight` `[dim, 1, 3, 3]` and `bias` `[dim]`.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get((dim, 1, 3, 3), "weight")?,
            bias: vb.get(dim, "bias")?,
        })
    }

    /// Whether either tensor trains.
    pub fn trainable(&self) -> bool {
        self.weight.is_variable() || self.bias.is_variable()
    }
}

impl Module for Depthwise3x3 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        tokenmix_kernels::depthwise_conv2d_nhwc(x, &self.weight, Some(&self.bias), 1, 1)
    }
}

/// `rows · x · colsᵀ` for every channel of a channel-last map `(B, H, W, C)`: `rows` `[H', H]`
/// acts along the height, then `cols` `[W', W]` along the width, giving `(B, H', W', C)`
/// (separable resampling, pooling and transforms as two products).
pub fn separable_product(x: &Tensor, rows: &Tensor, cols: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (h2, w2) = (rows.dim(0)?, cols.dim(0)?);
    let y = rows.broadcast_matmul(&x.reshape((b, h, w * c))?)?;
    cols.broadcast_matmul(&y.reshape((b * h2, w, c))?)?
        .reshape((b, h2, w2, c))
}
