// The operators of max DynOPool (thesis eq. 4.2): their schema, once for every device.
//
//   max_forward(input, rows, cols) -> (values, codes)
//     The query grid has 2*H_out rows at input pixel coordinates `rows` and 2*W_out columns at
//     `cols`; output cell (p, q) takes the largest of queries (2p + a, 2q + b), a, b in {0, 1},
//     each the bilinear blend of four pixels (as grid_sample weights it), and `codes` records
//     the winner as the uint8 code 2a + b.
//   max_backward(grad, input, codes, rows, cols, input_grad) -> (grad_input, grad_rows, grad_cols)
//     Each cell's gradient goes to the winning query's four pixels (grad_input, an empty tensor
//     unless input_grad) and, through the bilinear derivative, to its row and its column
//     coordinate.
//
// The kernels register per device beside this file, as torchvision lays out its ops:
//   cpu/dynopool_kernel.cpp   TORCH_LIBRARY_IMPL(dynopool_nas, CPU, ...)
//   cuda/                     none: the GPU kernels are Triton, in dynopool_nas/_triton.py, and
//                             dynopool_nas/ops.py calls them directly on CUDA tensors; a CUDA C++
//                             kernel would register here as TORCH_LIBRARY_IMPL(dynopool_nas, CUDA, ...)
// The derivative (autograd) and the fake (shape-only) implementations are registered from Python
// as the library loads (dynopool_nas/_extension.py).

#include <torch/library.h>

TORCH_LIBRARY(dynopool_nas, m) {
  m.def("max_forward(Tensor input, Tensor rows, Tensor cols) -> (Tensor, Tensor)");
  m.def("max_backward(Tensor grad, Tensor input, Tensor codes, Tensor rows, Tensor cols, bool input_grad)"
        " -> (Tensor, Tensor, Tensor)");
}
