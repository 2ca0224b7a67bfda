//! Dropout on the CPU from a counter-based generator.
//!
//! libtorch's CPU dropout draws every element from one serial Mersenne
//! Twister: 14 to 16 ns an element on the project's Xeon (a 64 × 40 × 768
//! tensor: 27 to 32 ms, against 0.5 ms for multiplying it by a scalar); at
//! CoLA's lengths that was about a sixth of a MiniLM training step. Here a
//! mask costs 2 to 4 ns an element: four 16-bit draws per splitmix64
//! output, in chunks each seeded from (seed, call, chunk), so a mask depends
//! on the seed and the order of the calls, never on threads. On CUDA
//! libtorch's own (fused) dropout runs.

use std::sync::atomic::{AtomicU64, Ordering};

use tch::{Device, Tensor};

/// Elements per chunk of a mask (each chunk has its own stream).
const CHUNK: usize = 1 << 16;

/// The dropout masks of one training run.
pub struct Masks {
    seed: u64,
    calls: AtomicU64,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Masks {
    pub fn new(seed: u64) -> Masks {
        Masks {
            seed,
            calls: AtomicU64::new(0),
        }
    }

    /// `x` with each element zeroed with probability `p` and the rest
    /// scaled by `1 / (1 - p)` (`p` in steps of 1/65536).
    pub fn apply(&self, x: &Tensor, p: f64) -> Tensor {
        if p <= 0.0 {
            return x.shallow_clone();
        }
        if x.device() != Device::Cpu || p >= 1.0 || !p.is_finite() {
            return x.dropout(p, true);
        }
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let n = x.numel();
        let mut mask = vec![0u8; n];
        // Keep an element when its 16-bit draw is at least `drop`.
        let drop = (p * 65536.0).round().clamp(0.0, 65535.0) as u32;
        for (i, chunk) in mask.chunks_mut(CHUNK).enumerate() {
            let mut state = self.seed
                ^ call.wrapping_mul(0xd1b5_4a32_d192_ed03)
                ^ (i as u64).wrapping_mul(0x8cb9_2ba7_2f3d_8dd7);
            for four in chunk.chunks_mut(4) {
                let r = splitmix64(&mut state);
                for (k, m) in four.iter_mut().enumerate() {
                    *m = u8::from(((r >> (16 * k)) & 0xffff) as u32 >= drop);
                }
            }
        }
        let mask = Tensor::from_slice(&mask).view(x.size().as_slice());
        // uint8 × float keeps the float's dtype (bf16 under autocast).
        (x * mask) * (1.0 / (1.0 - p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn masks_drop_about_p_scale_the_rest_and_repeat_with_the_seed() {
        let x = Tensor::ones([300, 1000], (Kind::Float, Device::Cpu));
        let a = Masks::new(7);
        let y = a.apply(&x, 0.1);
        let kept = y.ne(0.0).sum(Kind::Int64).int64_value(&[]) as f64 / 300_000.0;
        assert!((kept - 0.9).abs() < 0.005, "{kept}");
        let max = y.max().double_value(&[]);
        assert!((max - 1.0 / 0.9).abs() < 1e-6, "{max}");
        // The same seed and call order: the same masks; the next call, another.
        let b = Masks::new(7);
        assert!(b.apply(&x, 0.1).equal(&y));
        assert!(!b.apply(&x, 0.1).equal(&y));
        assert!(!Masks::new(8).apply(&x, 0.1).equal(&y));
        // Gradients flow through the kept elements only.
        let w = Tensor::ones([4, 1000], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let z = Masks::new(1).apply(&w, 0.5);
        z.sum(Kind::Float).backward();
        assert!(w.grad().equal(&(z.ne(0.0).to_kind(Kind::Float) * 2.0)));
        assert!(a.apply(&x, 0.0).equal(&x));
    }
}
