// The Python module (segops._C, or segops._emulation for the test-only build): importing it runs the
// static operator registrations of every file linked into it. It has no Python functions of its own; the
// ops are reached through torch.ops. setup.py defines TORCH_EXTENSION_NAME per extension.
#include <Python.h>

#define SEGOPS_CONCAT_(a, b) a##b
#define SEGOPS_CONCAT(a, b) SEGOPS_CONCAT_(a, b)
#define SEGOPS_STRINGIFY_(a) #a
#define SEGOPS_STRINGIFY(a) SEGOPS_STRINGIFY_(a)

static PyModuleDef segops_module = {PyModuleDef_HEAD_INIT, SEGOPS_STRINGIFY(TORCH_EXTENSION_NAME), nullptr, -1,
                                    nullptr};

PyMODINIT_FUNC SEGOPS_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  return PyModule_Create(&segops_module);
}
