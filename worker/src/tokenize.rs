//! Sentences → token ids with the `tokenizers` crate: `tokenizer.json` when the
//! model has one, else `vocab.txt` as an uncased BERT WordPiece tokenizer.
//! Every sequence is `[CLS] … [SEP]`, truncated to `max_len`.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Tokenizer, TruncationParams};

pub struct Encoder {
    tokenizer: Tokenizer,
}

impl Encoder {
    pub fn load(dir: &Path, max_len: usize) -> Result<Encoder> {
        let json = dir.join("tokenizer.json");
        let mut tokenizer = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| anyhow!("{}: {e}", json.display()))?
        } else {
            let vocab = dir.join("vocab.txt");
            let wp = WordPiece::from_file(&vocab.to_string_lossy())
                .unk_token("[UNK]".into())
                .build()
                .map_err(|e| anyhow!("{}: {e}", vocab.display()))
                .with_context(|| {
                    format!(
                        "{} has neither tokenizer.json nor a usable vocab.txt",
                        dir.display()
                    )
                })?;
            let cls = wp.token_to_id_checked("[CLS]", &vocab)?;
            let sep = wp.token_to_id_checked("[SEP]", &vocab)?;
            let mut t = Tokenizer::new(wp);
            t.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
                .with_pre_tokenizer(Some(BertPreTokenizer))
                .with_post_processor(Some(BertProcessing::new(
                    ("[SEP]".into(), sep),
                    ("[CLS]".into(), cls),
                )));
            t
        };
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("{e}"))?
            .with_padding(None);
        Ok(Encoder { tokenizer })
    }

    /// Token ids of each sentence (unpadded).
    pub fn encode(&self, sentences: &[String]) -> Result<Vec<Vec<i64>>> {
        let encodings = self
            .tokenizer
            .encode_batch(sentences.to_vec(), true)
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(encodings
            .iter()
            .map(|e| e.get_ids().iter().map(|&i| i as i64).collect())
            .collect())
    }
}

trait TokenId {
    fn token_to_id_checked(&self, token: &str, vocab: &Path) -> Result<u32>;
}

impl TokenId for WordPiece {
    fn token_to_id_checked(&self, token: &str, vocab: &Path) -> Result<u32> {
        use tokenizers::Model;
        self.token_to_id(token)
            .ok_or_else(|| anyhow!("{}: no {token} token", vocab.display()))
    }
}

/// A padded batch: ids and attention mask `[n, longest]` (`pad_to` fixes the
/// length instead).
pub fn pad(seqs: &[&[i64]], pad_to: Option<usize>) -> (tch::Tensor, tch::Tensor) {
    let len = pad_to.unwrap_or_else(|| seqs.iter().map(|s| s.len()).max().unwrap_or(1));
    let mut ids = vec![0i64; seqs.len() * len];
    let mut mask = vec![0i64; seqs.len() * len];
    for (r, s) in seqs.iter().enumerate() {
        let n = s.len().min(len);
        ids[r * len..r * len + n].copy_from_slice(&s[..n]);
        mask[r * len..r * len + n].fill(1);
    }
    let shape = [seqs.len() as i64, len as i64];
    (
        tch::Tensor::from_slice(&ids).reshape(shape),
        tch::Tensor::from_slice(&mask).reshape(shape),
    )
}
