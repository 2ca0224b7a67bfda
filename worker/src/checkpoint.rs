//! Hugging Face-layout checkpoints: `config.json` + `model.safetensors`, read
//! into a [`Bert`] and written back so that Python `transformers` loads them.
//!
//! Accepted names: `BertForSequenceClassification` (`bert.…`, `classifier.…`),
//! plain `BertModel` (no `bert.` prefix, no classifier), and old LayerNorm names
//! (`gamma`/`beta` for `weight`/`bias`, as transformers maps them).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tch::{nn, Device, Kind, Tensor};

use crate::bert::{Bert, BertConfig};

/// A loaded model: its variables, the module, and the raw `config.json`.
pub struct Checkpoint {
    pub vs: nn::VarStore,
    pub model: Bert,
    pub config: BertConfig,
    pub raw_config: Value,
    pub num_labels: i64,
}

pub fn read_config(dir: &Path) -> Result<(BertConfig, Value)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let raw: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let config: BertConfig = serde_json::from_value(raw.clone())
        .with_context(|| format!("{}: not a BERT config", path.display()))?;
    config
        .check()
        .with_context(|| format!("{}", path.display()))?;
    Ok((config, raw))
}

/// The name a checkpoint tensor has in our model, or `None` for tensors the
/// model does not use (MLM heads, position-id buffers).
fn canonical(name: &str, with_prefix: bool) -> Option<String> {
    let mut n = name.to_string();
    for (old, new) in [(".gamma", ".weight"), (".beta", ".bias")] {
        if let Some(stem) = n.strip_suffix(old) {
            n = format!("{stem}{new}");
        }
    }
    if n.ends_with("position_ids") || n.starts_with("cls.") {
        return None;
    }
    if !with_prefix && !n.starts_with("classifier.") {
        n = format!("bert.{n}");
    }
    Some(n)
}

fn kind_of(dtype: safetensors::Dtype) -> Result<Kind> {
    use safetensors::Dtype as D;
    Ok(match dtype {
        D::F32 => Kind::Float,
        D::F16 => Kind::Half,
        D::BF16 => Kind::BFloat16,
        D::F64 => Kind::Double,
        other => bail!("unsupported dtype {other:?}"),
    })
}

impl Checkpoint {
    /// Loads `dir` for `num_labels` classes. A missing classifier is initialised
    /// N(0, 0.02) (bias 0) from the current torch seed; any other missing or
    /// mis-shaped tensor is an error naming it.
    pub fn load(dir: &Path, num_labels: i64, device: Device) -> Result<Checkpoint> {
        let (config, raw_config) = read_config(dir)?;
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Bert::new(&vs.root(), &config, num_labels);
        let path = dir.join("model.safetensors");
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let file = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let mut names = file.names();
        names.sort_unstable();
        let with_prefix = names.iter().any(|n| n.starts_with("bert."));
        let mut vars = vs.variables();
        let mut loaded = BTreeMap::new();
        tch::no_grad(|| -> Result<()> {
            for name in names {
                let Some(ours) = canonical(name, with_prefix) else {
                    continue;
                };
                let Some(var) = vars.get_mut(&ours) else {
                    continue;
                };
                let view = file.tensor(name)?;
                let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                if shape != var.size() {
                    if ours.starts_with("classifier.") {
                        // A head for another number of labels: start afresh.
                        continue;
                    }
                    bail!(
                        "{}: tensor `{name}` has shape {shape:?}, the config wants {:?}",
                        path.display(),
                        var.size()
                    );
                }
                let t = Tensor::f_from_data_size(view.data(), &shape, kind_of(view.dtype())?)
                    .with_context(|| format!("{}: tensor `{name}`", path.display()))?;
                var.copy_(&t.to_kind(var.kind()));
                loaded.insert(ours, ());
            }
            Ok(())
        })?;
        for (name, var) in vars.iter_mut() {
            if loaded.contains_key(name) {
                continue;
            }
            if !name.starts_with("classifier.") {
                bail!(
                    "{}: tensor `{name}` is missing (the checkpoint has {} tensors)",
                    path.display(),
                    file.names().len()
                );
            }
            tch::no_grad(|| {
                if name.ends_with(".bias") {
                    let _ = var.zero_();
                } else {
                    let _ = var.normal_(0.0, 0.02);
                }
            });
        }
        let mut vs = vs;
        vs.set_device(device);
        Ok(Checkpoint {
            vs,
            model,
            config,
            raw_config,
            num_labels,
        })
    }

    /// Writes `config.json` (with `num_labels`, `id2label`, `label2id`, the
    /// architecture, and `extra` keys) and `model.safetensors` to `out`.
    pub fn save(&self, out: &Path, labels: &[String], extra: &[(&str, Value)]) -> Result<()> {
        let mut config = self.raw_config.clone();
        let Some(obj) = config.as_object_mut() else {
            bail!("config.json is not an object");
        };
        obj.insert(
            "architectures".into(),
            serde_json::json!(["BertForSequenceClassification"]),
        );
        obj.insert("num_labels".into(), self.num_labels.into());
        let id2label: serde_json::Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), Value::from(l.clone())))
            .collect();
        let label2id: serde_json::Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), Value::from(i)))
            .collect();
        obj.insert("id2label".into(), Value::Object(id2label));
        obj.insert("label2id".into(), Value::Object(label2id));
        obj.remove("_name_or_path");
        for (k, v) in extra {
            obj.insert((*k).to_string(), v.clone());
        }
        // serde_json's map is sorted: the file is canonical.
        std::fs::write(
            out.join("config.json"),
            serde_json::to_string_pretty(&config)? + "\n",
        )?;
        save_safetensors(self.vs.variables(), &out.join("model.safetensors"))
    }
}

/// Writes named tensors as f32, sorted by name, with the `format: pt`
/// metadata transformers expects.
pub fn save_safetensors(
    tensors: impl IntoIterator<Item = (String, Tensor)>,
    path: &Path,
) -> Result<()> {
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let mut bytes = vec![0u8; t.numel() * 4];
        t.f_copy_data_u8(&mut bytes, t.numel())?;
        data.push((name, bytes, shape));
    }
    data.sort_by(|a, b| a.0.cmp(&b.0));
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, b, s)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?,
            ))
        })
        .collect::<Result<_>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(meta))?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Copies the tokenizer files that exist in `from` to `to`.
pub fn copy_tokenizer(from: &Path, to: &Path) -> Result<()> {
    for f in pipe_protocol::TOKENIZER_FILES {
        let src = from.join(f);
        if src.is_file() {
            std::fs::copy(&src, to.join(f))
                .with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    Ok(())
}
