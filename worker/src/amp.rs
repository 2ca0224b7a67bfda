//! bf16 autocast, on the CPU or on CUDA (`src/train.cpp`). Weights and the
//! optimizer's state stay fp32; inside the closure, matrix products run in
//! bf16. tch's own `tch::autocast` is not used: it switches CUDA alone, to
//! CUDA's default autocast dtype, fp16.

use std::ffi::c_int;

use tch::Device;

extern "C" {
    fn pipe_autocast_enter(cuda: c_int) -> c_int;
    fn pipe_autocast_exit(cuda: c_int, before: c_int);
    fn pipe_sdp_use_cudnn(on: c_int);
}

/// Whether attention may use cuDNN's kernels (libtorch's default: yes).
pub fn sdp_use_cudnn(on: bool) {
    // SAFETY: plain C call, no pointers.
    unsafe { pipe_sdp_use_cudnn(c_int::from(on)) }
}

/// Restores the autocast state on drop, so a panic inside leaves it as found.
struct Guard {
    cuda: c_int,
    before: c_int,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: plain C calls; `before` is what `pipe_autocast_enter` returned.
        unsafe { pipe_autocast_exit(self.cuda, self.before) }
    }
}

/// Whether this CPU has bf16 matrix instructions (AMX-BF16 or
/// AVX512-BF16), as Linux lists them in `/proc/cpuinfo`.
pub fn cpu_has_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| cpuinfo_has_bf16(&info))
        .unwrap_or(false)
}

fn cpuinfo_has_bf16(info: &str) -> bool {
    info.lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| {
            l.split_whitespace()
                .any(|f| f == "amx_bf16" || f == "avx512_bf16")
        })
}

/// Runs `f` with bf16 autocast on `device` when `enabled`, else plainly.
pub fn bf16<T>(device: Device, enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled {
        return f();
    }
    let cuda = c_int::from(device.is_cuda());
    // SAFETY: plain C call, no pointers.
    let before = unsafe { pipe_autocast_enter(cuda) };
    if before < 0 {
        return f();
    }
    let _guard = Guard { cuda, before };
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn matmul_runs_in_bf16_inside_and_fp32_outside() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        let inside = bf16(Device::Cpu, true, || a.matmul(&a));
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
        assert_eq!(
            bf16(Device::Cpu, false, || a.matmul(&a)).kind(),
            Kind::Float
        );
    }

    #[test]
    fn bf16_hardware_is_read_from_the_flags_line() {
        assert!(cpuinfo_has_bf16(
            "processor: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n"
        ));
        assert!(cpuinfo_has_bf16("flags : sse avx512_bf16\n"));
        assert!(!cpuinfo_has_bf16(
            "flags : sse avx2 avx512f\nbugs : avx512_bf16\n"
        ));
    }

    #[test]
    fn a_panic_inside_leaves_autocast_off() {
        let a = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        let r = std::panic::catch_unwind(|| bf16(Device::Cpu, true, || panic!("inside")));
        assert!(r.is_err());
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }
}
