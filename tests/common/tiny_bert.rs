//! A tiny random BERT in Hugging Face layout (2 layers, hidden 32), written
//! without libtorch: `config.json`, `vocab.txt` and `model.safetensors` with
//! the parameter names of a plain `BertModel` (no `bert.` prefix, no head).

use std::path::Path;

pub const WORDS: [&str; 16] = [
    "good", "great", "fine", "nice", "bad", "awful", "poor", "sad", "the", "movie", "was", "is",
    "a", "film", "very", "plot",
];

/// Deterministic N(0, 0.02)-ish values (sum of uniforms) from a seed.
fn values(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let mut s = 0.0;
            for _ in 0..4 {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s += (*seed >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
            }
            (s * 0.035) as f32
        })
        .collect()
}

pub fn write(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let vocab: Vec<&str> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .into_iter()
        .chain(WORDS)
        .collect();
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    let (h, inter, v, pos) = (32usize, 64usize, vocab.len(), 64usize);
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": v, "hidden_size": h,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": inter,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": pos, "type_vocab_size": 2, "layer_norm_eps": 1e-12
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![v, h]),
        ("embeddings.position_embeddings.weight".into(), vec![pos, h]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
        ("pooler.dense.weight".into(), vec![h, h]),
        ("pooler.dense.bias".into(), vec![h]),
    ];
    for l in 0..2 {
        let p = format!("encoder.layer.{l}");
        for (name, shape) in [
            ("attention.self.query.weight", vec![h, h]),
            ("attention.self.query.bias", vec![h]),
            ("attention.self.key.weight", vec![h, h]),
            ("attention.self.key.bias", vec![h]),
            ("attention.self.value.weight", vec![h, h]),
            ("attention.self.value.bias", vec![h]),
            ("attention.output.dense.weight", vec![h, h]),
            ("attention.output.dense.bias", vec![h]),
            ("attention.output.LayerNorm.weight", vec![h]),
            ("attention.output.LayerNorm.bias", vec![h]),
            ("intermediate.dense.weight", vec![inter, h]),
            ("intermediate.dense.bias", vec![inter]),
            ("output.dense.weight", vec![h, inter]),
            ("output.dense.bias", vec![h]),
            ("output.LayerNorm.weight", vec![h]),
            ("output.LayerNorm.bias", vec![h]),
        ] {
            shapes.push((format!("{p}.{name}"), shape));
        }
    }
    let mut seed = 7u64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let vals = if name.contains("LayerNorm.weight") {
                vec![1.0f32; n]
            } else if name.ends_with(".bias") {
                vec![0.0f32; n]
            } else {
                values(n, &mut seed)
            };
            let bytes = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}

/// A separable sentiment set: good words → 1, bad words → 0.
pub fn data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (pos, neg) = (
        ["good", "great", "fine", "nice"],
        ["bad", "awful", "poor", "sad"],
    );
    let mut train = String::from("sentence,label\n");
    for i in 0..48 {
        let filler = ["the movie was", "a film is", "the plot was very", "a very"][i % 4];
        train += &format!(
            "{filler} {},1\n{filler} {},0\n",
            pos[i % 4],
            neg[(i / 4) % 4]
        );
    }
    std::fs::write(dir.join("train.csv"), train).unwrap();
    std::fs::write(
        dir.join("test.csv"),
        "sentence,label\nthe film was great,1\nthe plot was awful,0\nvery nice film,1\na sad movie,0\n",
    )
    .unwrap();
}

/// A workspace with the tiny model in `model/`, its data in `data/` and
/// `manifest` as `pipe.yaml` (the worker binary checked first).
pub fn workspace(manifest: &str) -> super::TestWorkspace {
    super::worker();
    let ws = super::TestWorkspace::new();
    write(&ws.path("model"));
    data(&ws.path("data"));
    ws.manifest(manifest);
    ws
}
