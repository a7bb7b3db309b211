// tests/cuda_emu/launcher.cpp — builds kernels/forest.cu for the host (see emu.h) and exports
// one launcher: emu_run(kernel, grid, block, args) calls `kernel(*args)` for every (block, thread)
// of a 1-D grid, as the device would run the grid. Every forest kernel has the signature
// `void(ForestArgs)`, so one launcher serves them all; the kernels themselves are exported under
// their own names (they are `extern "C"`), and the test looks them up with libloading.
#include "emu.h"
#include "forest.cu"

typedef void (*forest_kernel)(ForestArgs);

extern "C" void emu_run(forest_kernel kernel, unsigned int grid, unsigned int block,
                        const ForestArgs* args) {
    gridDim = dim3{grid, 1, 1};
    blockDim = dim3{block, 1, 1};
    for (unsigned int b = 0; b < grid; ++b) {
        for (unsigned int t = 0; t < block; ++t) {
            blockIdx = uint3{b, 0, 0};
            threadIdx = uint3{t, 0, 0};
            kernel(*args);
        }
    }
}

// sizeof(ForestArgs) and the offsets of its fields in declaration order, for the layout test.
extern "C" unsigned int emu_args_layout(unsigned long long* offsets, unsigned int cap) {
    const unsigned long long o[] = {
        offsetof(ForestArgs, nodes),        offsetof(ForestArgs, scratch),
        offsetof(ForestArgs, n_nodes),      offsetof(ForestArgs, status),
        offsetof(ForestArgs, leaves),       offsetof(ForestArgs, path_len),
        offsetof(ForestArgs, paths),        offsetof(ForestArgs, exp_counts),
        offsetof(ForestArgs, exp_values),   offsetof(ForestArgs, exp_priors),
        offsetof(ForestArgs, exp_flags),    offsetof(ForestArgs, bk_values),
        offsetof(ForestArgs, bk_mask),      offsetof(ForestArgs, bk_in_values),
        offsetof(ForestArgs, bk_in_mask),   offsetof(ForestArgs, root_values),
        offsetof(ForestArgs, new_roots),    offsetof(ForestArgs, toy_state),
        offsetof(ForestArgs, toy_stats),    offsetof(ForestArgs, toy_priors),
        offsetof(ForestArgs, trees),        offsetof(ForestArgs, capacity),
        offsetof(ForestArgs, max_children), offsetof(ForestArgs, max_depth),
        offsetof(ForestArgs, k),            offsetof(ForestArgs, km),
        offsetof(ForestArgs, exp_stride),   offsetof(ForestArgs, rule),
        offsetof(ForestArgs, rule_p0),      offsetof(ForestArgs, rule_p1),
        offsetof(ForestArgs, virtual_loss), offsetof(ForestArgs, root_visits),
        offsetof(ForestArgs, branching),    offsetof(ForestArgs, record),
        offsetof(ForestArgs, k_select),     offsetof(ForestArgs, phases),
        sizeof(ForestArgs),
    };
    const unsigned int n = sizeof o / sizeof o[0];
    for (unsigned int i = 0; i < n && i < cap; ++i) offsets[i] = o[i];
    return n;
}
