// libtorch's ProcessGroupNCCL for worker/src/dist/group.rs, built as a
// shared object of its own (build.rs) that pipe-worker loads only when a
// group asks for NCCL: it links libtorch_cuda, which needs the CUDA
// libraries that a machine without a GPU does not have.
//
// Compiled against the NCCL and CUDA headers scripts/setup-libtorch unpacks
// from the wheels torch 2.11.0 pins (NCCL 2.28.9): ProcessGroupNCCL's layout
// depends on the NCCL version's feature macros.

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <c10/cuda/CUDAFunctions.h>

#include <chrono>
#include <cstdint>

#include "shim.hpp"

extern "C" {

// A process group of `world` ranks over `store` (a c10::intrusive_ptr<Store>*
// from pipe_c10d_store_new) on CUDA device `device`, connected before this
// returns (or the timeout passes). *backend_out: a heap-allocated
// c10::intrusive_ptr<c10d::Backend>, which pipe_c10d_group_wrap takes over.
char* pipe_nccl_backend_new(
    void* store,
    int rank,
    int world,
    int64_t timeout_ms,
    int device,
    void** backend_out) {
  return pipe_shim::guarded([&] {
    auto& s = *static_cast<c10::intrusive_ptr<c10d::Store>*>(store);
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(s, rank, world, opts);
    at::Device dev(at::kCUDA, static_cast<c10::DeviceIndex>(device));
    pg->setBoundDeviceId(dev);
    pg->eagerConnectSingleDevice(dev);
    *backend_out = new c10::intrusive_ptr<c10d::Backend>(std::move(pg));
  });
}

} // extern "C"
