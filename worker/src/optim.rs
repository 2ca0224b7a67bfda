//! AdamW over all of a model's parameters at once (`src/train.cpp`):
//! libtorch's fused AdamW kernel, and gradient clipping and zeroing with its
//! multi-tensor kernels, a few kernel launches per step where a loop over
//! the parameters makes some ten per parameter (what bounds a step on a GPU).
//! The arithmetic is `torch.optim.AdamW(fused=True)`'s.

use std::ffi::{c_char, c_int, c_void};

use anyhow::{bail, Result};
use tch::Tensor;

use crate::fast::check;

extern "C" {
    fn pipe_adamw_new(
        params: *const *const c_void,
        n: c_int,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn pipe_adamw_free(state: *mut c_void);
    fn pipe_adamw_zero_grad(state: *mut c_void) -> *mut c_char;
    fn pipe_adamw_drop_grad(state: *mut c_void) -> *mut c_char;
    fn pipe_adamw_clip_grad_norm(state: *mut c_void, max_norm: f64) -> *mut c_char;
    fn pipe_adamw_step(state: *mut c_void, lr: f64) -> *mut c_char;
}

/// AdamW's hyper-parameters other than the learning rate.
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// AdamW state for a fixed list of parameters (they stay alive with it).
pub struct AdamW {
    state: *mut c_void,
}

// SAFETY: the state is owned by this value and used by one thread at a time
// (`AdamW` is not `Sync`).
unsafe impl Send for AdamW {}

impl AdamW {
    /// Zeroed moments for each of `params` (fp32, all on one device).
    pub fn new(params: &[Tensor], c: AdamWConfig) -> Result<AdamW> {
        let ptrs: Vec<*const c_void> = params.iter().map(|t| t.as_ptr() as *const c_void).collect();
        let n = c_int::try_from(ptrs.len())?;
        let mut err = std::ptr::null_mut();
        // SAFETY: `ptrs` are valid tensors for the call; the shim copies the
        // handles (sharing storage) and reports failure through `err`.
        let state = unsafe {
            pipe_adamw_new(
                ptrs.as_ptr(),
                n,
                c.beta1,
                c.beta2,
                c.eps,
                c.weight_decay,
                &mut err,
            )
        };
        check(err)?;
        if state.is_null() {
            bail!("the optimizer could not be created");
        }
        Ok(AdamW { state })
    }

    /// Zeroes every gradient that is defined (it stays defined).
    pub fn zero_grad(&mut self) -> Result<()> {
        // SAFETY: `state` is live until drop.
        check(unsafe { pipe_adamw_zero_grad(self.state) })
    }

    /// Drops every gradient, so that the next backward pass stores each
    /// one instead of adding it to zeros: no pass over the parameters to
    /// zero them and none to add. Every parameter the loss reaches has a
    /// gradient again after it.
    pub fn drop_grad(&mut self) -> Result<()> {
        // SAFETY: as above.
        check(unsafe { pipe_adamw_drop_grad(self.state) })
    }

    /// Scales the gradients down so that their global L2 norm is at most
    /// `max_norm`. On the CPU a step within bounds leaves them untouched; on
    /// a GPU nothing is read back (no synchronisation).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<()> {
        // SAFETY: as above.
        check(unsafe { pipe_adamw_clip_grad_norm(self.state, max_norm) })
    }

    /// One step at learning rate `lr`; every parameter needs a gradient.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        // SAFETY: as above.
        check(unsafe { pipe_adamw_step(self.state, lr) })
    }
}

impl Drop for AdamW {
    fn drop(&mut self) {
        // SAFETY: created by pipe_adamw_new, freed once.
        unsafe { pipe_adamw_free(self.state) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    const C: AdamWConfig = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };

    /// Reference AdamW, written out: decoupled decay, bias-corrected moments.
    fn reference(p: &[f32], grads: &[Vec<f32>], lr: f64) -> Vec<f32> {
        let (mut p, mut m, mut v) = (
            p.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            vec![0.0; p.len()],
            vec![0.0; p.len()],
        );
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as i32;
            for i in 0..p.len() {
                let g = g[i] as f64;
                p[i] *= 1.0 - lr * C.weight_decay;
                m[i] = C.beta1 * m[i] + (1.0 - C.beta1) * g;
                v[i] = C.beta2 * v[i] + (1.0 - C.beta2) * g * g;
                let mh = m[i] / (1.0 - C.beta1.powi(t));
                let vh = v[i] / (1.0 - C.beta2.powi(t));
                p[i] -= lr * mh / (vh.sqrt() + C.eps);
            }
        }
        p.into_iter().map(|x| x as f32).collect()
    }

    /// The parameters after AdamW steps on `grads`, the gradients zeroed or
    /// dropped before each backward pass.
    fn steps(start: &[f32], grads: &[Vec<f32>], drop: bool) -> Vec<f32> {
        let p = Tensor::from_slice(start).set_requires_grad(true);
        let mut opt = AdamW::new(std::slice::from_ref(&p), C).unwrap();
        for g in grads {
            let loss = (&p * Tensor::from_slice(g)).sum(Kind::Float);
            if drop {
                opt.drop_grad().unwrap();
            } else {
                opt.zero_grad().unwrap();
            }
            loss.backward();
            opt.step(0.1).unwrap();
        }
        Vec::<f32>::try_from(&p.detach()).unwrap()
    }

    #[test]
    fn steps_match_the_written_out_adamw() {
        let start = [0.5f32, -1.0, 2.0];
        let grads = [vec![0.1f32, -0.2, 0.3], vec![-0.4, 0.5, 0.0]];
        let got = steps(&start, &grads, false);
        for (a, b) in got.iter().zip(reference(&start, &grads, 0.1)) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {b}");
        }
        let dropped = steps(&start, &grads, true);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&dropped),
            bits(&got),
            "dropping gradients changed a step"
        );
    }

    #[test]
    fn a_step_after_dropping_the_gradients_needs_a_backward_pass() {
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = AdamW::new(std::slice::from_ref(&p), C).unwrap();
        (&p * 2.0).sum(Kind::Float).backward();
        opt.drop_grad().unwrap();
        assert!(!p.grad().defined());
        let e = opt.step(0.1).unwrap_err();
        assert!(e.to_string().contains("no gradient"), "{e}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let a = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = AdamW::new(&[a.shallow_clone(), b.shallow_clone()], C).unwrap();
        let loss = (&a * Tensor::from_slice(&[3.0f32, 0.0])).sum(Kind::Float)
            + (&b * Tensor::from_slice(&[4.0f32])).sum(Kind::Float);
        loss.backward();
        opt.clip_grad_norm(1.0).unwrap();
        let norm = Tensor::cat(&[a.grad(), b.grad()], 0)
            .norm()
            .double_value(&[]);
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        opt.zero_grad().unwrap();
        assert_eq!(a.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);

        // Within bounds: the gradients are left exactly as they were.
        let loss = (&a * Tensor::from_slice(&[0.3f32, 0.1])).sum(Kind::Float)
            + (&b * Tensor::from_slice(&[0.4f32])).sum(Kind::Float);
        loss.backward();
        let before = Tensor::cat(&[a.grad(), b.grad()], 0);
        opt.clip_grad_norm(1.0).unwrap();
        assert!(Tensor::cat(&[a.grad(), b.grad()], 0).equal(&before));
    }

    #[test]
    fn a_step_without_gradients_is_an_error() {
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = AdamW::new(&[p], C).unwrap();
        let e = opt.step(0.1).unwrap_err();
        assert!(e.to_string().contains("no gradient"), "{e}");
    }
}
