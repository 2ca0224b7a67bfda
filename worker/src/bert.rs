//! BERT for sequence classification, with Hugging Face parameter names
//! (`bert.embeddings.word_embeddings.weight`, …, `classifier.weight`).
//!
//! Written shape-polymorphically so that a TorchScript trace works at every
//! batch size and length: no `size()` is read, position ids come from a cumsum
//! over the input, and heads are split with `unflatten`/`flatten`.

use crate::dropout::Masks;
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// The fields of a Hugging Face `config.json` the model needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.hidden_size % self.num_attention_heads != 0 {
            anyhow::bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "relu" | "gelu_new") {
            anyhow::bail!("hidden_act `{}` is not supported", self.hidden_act);
        }
        Ok(())
    }
}

fn layer_norm(p: nn::Path, c: &BertConfig) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![c.hidden_size],
        nn::LayerNormConfig {
            eps: c.layer_norm_eps,
            ..Default::default()
        },
    )
}

/// Dropout while training (`masks`), nothing otherwise.
fn drop(x: &Tensor, p: f64, masks: Option<&Masks>) -> Tensor {
    match masks {
        Some(masks) => masks.apply(x, p),
        None => x.shallow_clone(),
    }
}

fn linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    nn::linear(p, i, o, Default::default())
}

struct Embeddings {
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: nn::Embedding,
    norm: nn::LayerNorm,
    dropout: f64,
}

impl Embeddings {
    fn new(p: nn::Path, c: &BertConfig) -> Self {
        let e = |name, n| nn::embedding(&p / name, n, c.hidden_size, Default::default());
        Embeddings {
            word: e("word_embeddings", c.vocab_size),
            position: e("position_embeddings", c.max_position_embeddings),
            token_type: e("token_type_embeddings", c.type_vocab_size),
            norm: layer_norm(&p / "LayerNorm", c),
            dropout: c.hidden_dropout_prob,
        }
    }

    fn forward(&self, ids: &Tensor, dropout: Option<&Masks>) -> Tensor {
        let ones = ids.ones_like();
        let positions = ones.cumsum(1, Kind::Int64) - 1;
        let types = ids.zeros_like();
        let x = self.word.forward(ids)
            + self.position.forward(&positions)
            + self.token_type.forward(&types);
        drop(&self.norm.forward(&x), self.dropout, dropout)
    }
}

struct Layer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attn_out: nn::Linear,
    attn_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    out_norm: nn::LayerNorm,
    heads: i64,
    head_dim: i64,
    act: String,
    dropout: f64,
    attn_dropout: f64,
}

impl Layer {
    fn new(p: nn::Path, c: &BertConfig) -> Self {
        let h = c.hidden_size;
        let att = &p / "attention";
        Layer {
            query: linear(&att / "self" / "query", h, h),
            key: linear(&att / "self" / "key", h, h),
            value: linear(&att / "self" / "value", h, h),
            attn_out: linear(&att / "output" / "dense", h, h),
            attn_norm: layer_norm(&att / "output" / "LayerNorm", c),
            intermediate: linear(&p / "intermediate" / "dense", h, c.intermediate_size),
            output: linear(&p / "output" / "dense", c.intermediate_size, h),
            out_norm: layer_norm(&p / "output" / "LayerNorm", c),
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
            act: c.hidden_act.clone(),
            dropout: c.hidden_dropout_prob,
            attn_dropout: c.attention_probs_dropout_prob,
        }
    }

    /// `[B, L, H]` → `[B, heads, L, head_dim]`.
    fn split(&self, x: &Tensor) -> Tensor {
        x.unflatten(-1, [self.heads, self.head_dim]).transpose(1, 2)
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, dropout: Option<&Masks>) -> Tensor {
        self.attend(x, x, mask, dropout)
    }

    /// The layer's output at the positions `queries` (`x` itself, or some
    /// of its positions) of the sequence `x`: every position is a key and a
    /// value, only `queries` go on through the rest of the layer.
    fn attend(
        &self,
        x: &Tensor,
        queries: &Tensor,
        mask: &Tensor,
        dropout: Option<&Masks>,
    ) -> Tensor {
        let q = self.split(&self.query.forward(queries));
        let k = self.split(&self.key.forward(x));
        let v = self.split(&self.value.forward(x));
        let ctx = match dropout {
            // On the CPU, SDPA with dropout is this arithmetic with
            // libtorch's slow masks: written out, it takes ours.
            Some(masks) if self.attn_dropout > 0.0 && x.device() == tch::Device::Cpu => {
                let scores =
                    q.matmul(&k.transpose(-2, -1)) * (1.0 / (self.head_dim as f64).sqrt()) + mask;
                let probs = scores.softmax(-1, scores.kind());
                masks.apply(&probs, self.attn_dropout).matmul(&v)
            }
            _ => {
                let p = if dropout.is_some() {
                    self.attn_dropout
                } else {
                    0.0
                };
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), p, false, None, false)
            }
        }
        .transpose(1, 2)
        .flatten(2, -1);
        let a = self
            .attn_norm
            .forward(&(drop(&self.attn_out.forward(&ctx), self.dropout, dropout) + queries));
        let i = self.intermediate.forward(&a);
        let i = match self.act.as_str() {
            "relu" => i.relu(),
            "gelu_new" => i.gelu("tanh"),
            _ => i.gelu("none"),
        };
        self.out_norm
            .forward(&(drop(&self.output.forward(&i), self.dropout, dropout) + a))
    }
}

/// `BertForSequenceClassification`.
pub struct Bert {
    /// The dropout masks of training (see [`Bert::seed_dropout`]).
    masks: Masks,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pooler: nn::Linear,
    classifier: nn::Linear,
    classifier_dropout: f64,
}

impl Bert {
    /// Creates the parameters under `root` (`bert.*` and `classifier.*`).
    pub fn new(root: &nn::Path, c: &BertConfig, num_labels: i64) -> Self {
        let b = root / "bert";
        Bert {
            masks: Masks::new(0),
            embeddings: Embeddings::new(&b / "embeddings", c),
            layers: (0..c.num_hidden_layers)
                .map(|i| Layer::new(&b / "encoder" / "layer" / i, c))
                .collect(),
            pooler: linear(&b / "pooler" / "dense", c.hidden_size, c.hidden_size),
            classifier: linear(root / "classifier", c.hidden_size, num_labels),
            classifier_dropout: c.classifier_dropout.unwrap_or(c.hidden_dropout_prob),
        }
    }

    /// Seed the dropout masks of training (on the CPU: see [`Masks`]).
    pub fn seed_dropout(&mut self, seed: u64) {
        self.masks = Masks::new(seed);
    }

    /// The embeddings and the additive attention mask `[B, 1, 1, L]` (0
    /// where attended, the dtype's minimum where padded).
    fn embed(&self, ids: &Tensor, mask: &Tensor, dropout: Option<&Masks>) -> (Tensor, Tensor) {
        let x = self.embeddings.forward(ids, dropout);
        let mask = (mask.to_kind(x.kind()).ones_like() - mask.to_kind(x.kind()))
            .multiply_scalar(f32::MIN as f64)
            .unsqueeze(1)
            .unsqueeze(1);
        (x, mask)
    }

    /// The encoder's last hidden state `[B, L, hidden]`.
    pub fn encode(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let dropout = train.then_some(&self.masks);
        let (x, mask) = self.embed(ids, mask, dropout);
        self.layers
            .iter()
            .fold(x, |x, l| l.forward(&x, &mask, dropout))
    }

    /// The encoder's last hidden state at the first (`[CLS]`) position,
    /// `[B, hidden]`: what the classifier reads. The last layer attends
    /// from that position only (its keys and values are still every
    /// position's), so its projections and feed-forward run on one token
    /// of each sequence instead of all of them.
    fn encode_first(&self, ids: &Tensor, mask: &Tensor, dropout: Option<&Masks>) -> Tensor {
        let (x, mask) = self.embed(ids, mask, dropout);
        let Some((last, layers)) = self.layers.split_last() else {
            return x.select(1, 0);
        };
        let x = layers.iter().fold(x, |x, l| l.forward(&x, &mask, dropout));
        last.attend(&x, &x.narrow(1, 0, 1), &mask, dropout)
            .squeeze_dim(1)
    }

    /// Logits `[B, num_labels]`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let dropout = train.then_some(&self.masks);
        let first = self.encode_first(ids, mask, dropout);
        let pooled = self.pooler.forward(&first).tanh();
        self.classifier
            .forward(&drop(&pooled, self.classifier_dropout, dropout))
    }
}
