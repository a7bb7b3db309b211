// tests/cuda_emu/emu.h — the CUDA names kernels/forest.cu uses, defined for the host C++ compiler,
// so that tests/cuda_emu.rs can run the exact kernel source on the CPU. Each kernel is called once
// per (block, thread) of the grid, in order, by emu_run (launcher.cpp); forest.cu needs no
// cross-thread semantics (one thread owns one tree, no shared memory, no barriers), so a
// sequential loop over threads is a faithful execution of it.
#pragma once

#include <cstddef>
// sinf/logf/sqrtf: the host libm's, the same functions the CPU backend's f32::sin/ln/sqrt call.
#include <math.h>

#define __global__
#define __device__
#define __forceinline__ inline
// The test allocates every buffer 16-byte aligned, as cudaMalloc's 256-byte alignment does on
// the device, so the 16-byte aligned Node records (alignas below) are aligned here too.
#define __align__(n) alignas(n)
#define RS_OFFSETOF(type, field) offsetof(type, field)

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

// The launch coordinates of the emulated thread (set by emu_run before each call).
static thread_local uint3 threadIdx;
static thread_local uint3 blockIdx;
static thread_local dim3 blockDim;
static thread_local dim3 gridDim;
