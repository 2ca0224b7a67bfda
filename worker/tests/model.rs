//! The model, its checkpoints, tracing and fine-tuning, on a tiny BERT the
//! tests create themselves, plus one check of the real all-MiniLM-L6-v2
//! against numbers from Python transformers (tests/fixtures/minilm_reference.*).

use std::path::{Path, PathBuf};

use pipe_protocol::{FinetuneWith, Schedule, TraceWith};
use pipe_worker::bert::{Bert, BertConfig};
use pipe_worker::checkpoint::{save_safetensors, Checkpoint};
use pipe_worker::fast::{FastModule, Linears};
use pipe_worker::tokenize::{pad, Encoder};
use pipe_worker::{finetune, trace, Report};
use serde_json::{json, Value};
use tch::{nn, Device, Tensor};

const WORDS: &str =
    "good great fine nice bad awful poor sad the movie was is a film very plot acting";

fn tiny_config() -> Value {
    json!({
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": 5 + WORDS.split(' ').count(), "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12
    })
}

/// A tiny random BERT in Hugging Face layout with a `vocab.txt` tokenizer.
/// `rename` maps our parameter names to the names written to the file.
fn tiny_model(dir: &Path, seed: i64, rename: impl Fn(&str) -> Option<String>) {
    std::fs::create_dir_all(dir).unwrap();
    let config = tiny_config();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .into_iter()
        .chain(WORDS.split(' '))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("vocab.txt"), vocab + "\n").unwrap();
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let c: BertConfig = serde_json::from_value(config).unwrap();
    let _ = Bert::new(&vs.root(), &c, 2);
    let tensors = vs
        .variables()
        .into_iter()
        .filter_map(|(n, t)| rename(&n).map(|n| (n, t)));
    save_safetensors(tensors, &dir.join("model.safetensors")).unwrap();
}

/// libtorch's seed and thread count are global: tests that use them run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn keep(n: &str) -> Option<String> {
    Some(n.to_string())
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn encoded(ck: &Checkpoint, dir: &Path, sentences: &[&str]) -> (Tensor, Tensor) {
    let enc = Encoder::load(dir, 64).unwrap();
    let ids = enc
        .encode(&sentences.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap();
    let _ = ck;
    let seqs: Vec<&[i64]> = ids.iter().map(Vec::as_slice).collect();
    pad(&seqs, None)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn bert_model_names_and_gamma_beta_load_like_hf_names() {
    let _serial = serial();
    let t = tmp();
    let hf = t.path().join("hf");
    tiny_model(&hf, 7, keep);
    // A plain BertModel: no `bert.` prefix, no classifier, old LayerNorm names.
    let plain = t.path().join("plain");
    tiny_model(&plain, 7, |n| {
        let n = n.strip_prefix("bert.")?;
        Some(
            n.replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta"),
        )
    });
    let a = Checkpoint::load(&hf, 2, Device::Cpu).unwrap();
    let b = Checkpoint::load(&plain, 2, Device::Cpu).unwrap();
    let (x, m) = encoded(&a, &hf, &["the movie was good", "bad plot"]);
    let ha = a.model.encode(&x, &m, false);
    let hb = b.model.encode(&x, &m, false);
    assert_eq!(max_diff(&ha, &hb), 0.0);
    // The missing head was initialised N(0, 0.02), bias 0.
    let vars = b.vs.variables();
    let w = &vars["classifier.weight"];
    let std = w.std(true).double_value(&[]);
    assert!((0.005..0.05).contains(&std), "classifier std {std}");
    assert_eq!(
        vars["classifier.bias"].abs().sum(None).double_value(&[]),
        0.0
    );
}

#[test]
fn missing_or_misshaped_tensors_are_named() {
    let _serial = serial();
    let t = tmp();
    let dir = t.path().join("m");
    tiny_model(&dir, 1, |n| {
        (!n.contains("layer.1.attention.self.key.weight")).then(|| n.to_string())
    });
    let err = format!(
        "{:#}",
        Checkpoint::load(&dir, 2, Device::Cpu).err().unwrap()
    );
    assert!(
        err.contains("`bert.encoder.layer.1.attention.self.key.weight` is missing"),
        "{err}"
    );

    // A config that does not fit the weights.
    let mut config = tiny_config();
    config["intermediate_size"] = json!(48);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    tiny_model(&t.path().join("n"), 1, keep);
    std::fs::copy(
        t.path().join("n/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let err = format!(
        "{:#}",
        Checkpoint::load(&dir, 2, Device::Cpu).err().unwrap()
    );
    assert!(
        err.contains(
            "`bert.encoder.layer.0.intermediate.dense.bias` has shape [64], the config wants [48]"
        ),
        "{err}"
    );
}

#[test]
fn save_and_load_round_trip() {
    let _serial = serial();
    let t = tmp();
    let dir = t.path().join("m");
    tiny_model(&dir, 3, keep);
    let a = Checkpoint::load(&dir, 3, Device::Cpu).unwrap();
    let out = t.path().join("saved");
    std::fs::create_dir(&out).unwrap();
    a.save(
        &out,
        &["x".into(), "y".into(), "z".into()],
        &[("max_len", json!(16))],
    )
    .unwrap();
    let config: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["id2label"], json!({"0": "x", "1": "y", "2": "z"}));
    assert_eq!(
        config["architectures"],
        json!(["BertForSequenceClassification"])
    );
    assert_eq!(config["max_len"], json!(16));
    std::fs::copy(dir.join("vocab.txt"), out.join("vocab.txt")).unwrap();
    let b = Checkpoint::load(&out, 3, Device::Cpu).unwrap();
    let (x, m) = encoded(&a, &dir, &["a very good film", "sad"]);
    let la = a.model.forward(&x, &m, false);
    assert_eq!(la.size(), vec![2, 3]);
    assert_eq!(max_diff(&la, &b.model.forward(&x, &m, false)), 0.0);
}

fn write_csv(path: &Path, rows: &[(&str, i64)]) {
    let mut s = String::from("sentence,label\n");
    for (t, l) in rows {
        s += &format!("{t},{l}\n");
    }
    std::fs::write(path, s).unwrap();
}

/// A separable sentiment set: good words → 1, bad words → 0.
fn tiny_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (pos, neg) = (
        ["good", "great", "fine", "nice"],
        ["bad", "awful", "poor", "sad"],
    );
    let mut train = Vec::new();
    for (i, (p, n)) in pos
        .iter()
        .cycle()
        .zip(neg.iter().cycle())
        .take(48)
        .enumerate()
    {
        let filler = ["the movie was", "a film is", "the plot was very", "acting"][i % 4];
        train.push((format!("{filler} {p}"), 1));
        train.push((format!("{filler} {n}"), 0));
    }
    let rows: Vec<(&str, i64)> = train.iter().map(|(s, l)| (s.as_str(), *l)).collect();
    write_csv(&dir.join("train.csv"), &rows);
    write_csv(
        &dir.join("test.csv"),
        &[
            ("the film was great", 1),
            ("the acting was awful", 0),
            ("very nice plot", 1),
            ("sad movie", 0),
        ],
    );
}

fn finetune_once(root: &Path, name: &str) -> (PathBuf, Value) {
    let model = root.join("model");
    if !model.exists() {
        tiny_model(&model, 11, |n| n.strip_prefix("bert.").map(str::to_string));
        tiny_data(&root.join("data"));
    }
    let out = root.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let w = FinetuneWith {
        epochs: 30,
        batch_size: 16,
        lr: 3e-3,
        warmup_ratio: 0.1,
        schedule: Schedule::Linear,
        ..Default::default()
    };
    tch::set_num_threads(1);
    let stats = finetune::run(&w, &model, &root.join("data"), &out, Device::Cpu, &Report).unwrap();
    for k in [
        "train_seconds",
        "samples_per_second",
        "epoch_30_train_seconds",
    ] {
        assert!(stats.get(k).is_some_and(|v| *v > 0.0), "{k} in {stats:?}");
    }
    let metrics =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    (out, metrics)
}

#[test]
fn finetune_learns_and_is_deterministic() {
    let _serial = serial();
    let t = tmp();
    let (a, metrics) = finetune_once(t.path(), "a");
    let epochs = metrics["epochs"].as_array().unwrap();
    let first = epochs[0]["train_loss"].as_f64().unwrap();
    let last = metrics["train_loss"].as_f64().unwrap();
    assert!(last < first * 0.5, "loss {first} → {last}");
    assert_eq!(metrics["accuracy"], json!(1.0), "{metrics}");
    for k in ["mcc", "f1"] {
        assert!(metrics[k].is_number(), "{k} in {metrics}");
    }
    assert!(std::fs::read_to_string(a.join("loss.svg"))
        .unwrap()
        .starts_with("<svg"));
    // Same inputs, seed and threads: byte-identical output (no timings in it).
    let (b, _) = finetune_once(t.path(), "b");
    for f in [
        "model.safetensors",
        "config.json",
        "metrics.json",
        "loss.svg",
    ] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs between two runs"
        );
    }
}

#[test]
fn traced_model_works_at_every_shape() {
    let _serial = serial();
    let t = tmp();
    let (model, _) = finetune_once(t.path(), "ft");
    let out = t.path().join("traced");
    std::fs::create_dir(&out).unwrap();
    trace::run(&TraceWith::default(), &model, &out, &Report).unwrap();
    let traced = tch::CModule::load(out.join("model.pt")).unwrap();
    // The server's module: frozen, linear layers on packed oneDNN weights.
    let fast = FastModule::load(&out.join("model.pt"), Linears::Fp32).unwrap();
    // 2 layers × (query, key, value, output, intermediate, output) + pooler
    // + classifier.
    assert_eq!(fast.packed, 14);
    // The same with bf16 linear layers (emulated where the CPU lacks bf16).
    let half = FastModule::load(&out.join("model.pt"), Linears::Bf16).unwrap();
    assert_eq!(half.packed, 14);
    // And with int8 linear layers (dynamic quantization).
    let int8 = FastModule::load(&out.join("model.pt"), Linears::Int8).unwrap();
    assert_eq!(int8.packed, 14);
    let ck = Checkpoint::load(&model, 2, Device::Cpu).unwrap();
    for (b, l) in [(1, 3), (5, 11), (2, 64), (7, 2)] {
        let ids = Tensor::randint_low(5, 20, [b, l], (tch::Kind::Int64, Device::Cpu));
        let mask = Tensor::ones([b, l], (tch::Kind::Int64, Device::Cpu));
        let _ = mask.narrow(1, l - 1, 1).fill_(0);
        let eager = tch::no_grad(|| ck.model.forward(&ids, &mask, false));
        let got = traced.forward_ts(&[&ids, &mask]).unwrap();
        assert_eq!(got.size(), vec![b, 2]);
        assert!(max_diff(&got, &eager) <= 1e-5, "shape [{b}, {l}]");
        let served =
            tch::no_grad(|| fast.forward(&[ids.shallow_clone(), mask.shallow_clone()])).unwrap();
        assert_eq!(served.size(), vec![b, 2]);
        assert!(
            max_diff(&served, &eager) <= 1e-5,
            "packed, shape [{b}, {l}]"
        );
        let low =
            tch::no_grad(|| half.forward(&[ids.shallow_clone(), mask.shallow_clone()])).unwrap();
        assert_eq!(low.kind(), tch::Kind::Float);
        assert_eq!(low.size(), vec![b, 2]);
        // bf16 keeps 8 bits of mantissa: near, not equal (within 5% of
        // the logits' scale).
        let scale = eager.abs().max().double_value(&[]).max(1.0);
        let d = max_diff(&low, &eager);
        assert!(
            d > 0.0 && d <= 5e-2 * scale,
            "bf16, shape [{b}, {l}]: {d} (scale {scale})"
        );
        let q =
            tch::no_grad(|| int8.forward(&[ids.shallow_clone(), mask.shallow_clone()])).unwrap();
        assert_eq!(q.size(), vec![b, 2]);
        // The tiny model's activations (hidden size 32) quantize coarsely,
        // and how near depends on the weights training gave it (0.13 on
        // logits of scale 1 with finetune v8's): within a quarter of the
        // scale, as in tests/serve.rs.
        let d = max_diff(&q, &eager);
        assert!(
            d > 0.0 && d <= 0.25 * scale,
            "int8, shape [{b}, {l}]: {d} (scale {scale})"
        );
    }
    // Tracing twice gives the same bytes.
    let again = t.path().join("again");
    std::fs::create_dir(&again).unwrap();
    trace::run(&TraceWith::default(), &model, &again, &Report).unwrap();
    assert!(
        std::fs::read(out.join("model.pt")).unwrap()
            == std::fs::read(again.join("model.pt")).unwrap()
    );
}

fn mirror_model() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../../shared/mirror/huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/main",
    );
    p.is_dir().then_some(p)
}

#[test]
fn minilm_matches_python_transformers() {
    let _serial = serial();
    let Some(dir) = mirror_model() else {
        panic!("../shared/mirror is missing: the real-weights test needs it");
    };
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/minilm_reference.json")).unwrap();
    let ck = Checkpoint::load(&dir, 2, Device::Cpu).unwrap();
    let enc = Encoder::load(&dir, 64).unwrap();
    for case in fixture["sentences"].as_array().unwrap() {
        let sentence = case["sentence"].as_str().unwrap().to_string();
        let ids = &enc.encode(std::slice::from_ref(&sentence)).unwrap()[0];
        let want: Vec<i64> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(ids, &want, "token ids of {sentence:?}");
        let (x, m) = pad(&[ids.as_slice()], None);
        let h = ck.model.encode(&x, &m, false).squeeze_dim(0);
        let first8: Vec<Vec<f64>> = serde_json::from_value(case["first8"].clone()).unwrap();
        let sums: Vec<f64> = serde_json::from_value(case["sums"].clone()).unwrap();
        for (t, row) in first8.iter().enumerate() {
            for (d, want) in row.iter().enumerate() {
                let got = h.double_value(&[t as i64, d as i64]);
                assert!(
                    (got - want).abs() <= 1e-4,
                    "{sentence:?} token {t} dim {d}: {got} vs {want}"
                );
            }
            let got = h.get(t as i64).sum(tch::Kind::Double).double_value(&[]);
            assert!(
                (got - sums[t]).abs() <= 1e-3,
                "{sentence:?} token {t} sum: {got} vs {}",
                sums[t]
            );
        }
    }
}
