#pragma once
// Host allocations that the CPU kernels fill in full.
#include <ATen/core/Tensor.h>

namespace segops {

// at::zeros(sizes, options), where a large host tensor first asks the kernel for transparent huge pages (Linux,
// THP in "madvise" mode, where huge_pages_advised()). A fresh multi-megabyte allocation is a fresh mapping, and
// touching it page by page costs several times the zeroing itself (here 44 of the 50 ms of a [2, 256, 200, 304] float
// gradient); 2 MB pages cut that fault count 512-fold. PyTorch does the same for every allocation under
// THP_MEM_ALLOC_ENABLE=1; this applies it to the gradients the backward kernels scatter into. Other devices: plain
// at::zeros.
at::Tensor zeros_with_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options);

// Whether zeros_with_huge_pages and empty_with_huge_pages advise huge pages: on Linux, unless this is a virtual machine
// whose guest hands its free 2 MB blocks back to the host (virtio-balloon free page reporting), where a fresh huge
// page's first touch costs more than the small pages' faults it saves. Measured on this project's CI machine kind, a
// max_unpool2d output of 33 MB: 5.7 ms back to back but 43 ms after a 1 s pause, 19-20 ms with small pages.
bool huge_pages_advised();

// The same without the zeroing, for outputs a kernel writes in full (a CPU backward that zeroes each plane on the
// thread that accumulates into it, so the plane is in cache when the sums arrive).
at::Tensor empty_with_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace segops
