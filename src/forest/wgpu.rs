//! The wgpu backend: the forest on any GPU wgpu reaches (Vulkan, Metal, DX12, GL), and on
//! Mesa's lavapipe, the software Vulkan device CI tests it on.
//!
//! This module owns the device, the forest's device buffers and the compute pipelines of
//! `shaders/forest.wgsl`, one per phase. The shader mirrors the CPU reference (`cpu.rs`) node for
//! node with one thread per tree, so both backends build identical trees (see the shader's
//! header for the buffer layout it expects).
//!
//! * Tree state stays on the device. `select` records one dispatch and submits it without
//!   waiting. The toy evaluation, a staged expansion and a backup are deferred and run in the same
//!   dispatch as the next `select` (entry point `step`, tree by tree, as the CPU backend fuses
//!   them): one dispatch per search step. Host inputs are uploaded with `Queue::write_buffer`
//!   first. `selection`, `read_back`, `toy_stats` and `sync` dispatch whatever is still deferred,
//!   then copy into staging buffers, map them and wait.
//! * Per-tree status words (`super::status`) are sticky on the device; they are read and cleared
//!   by `sync`, `selection` and `read_back`, and synchronously after a host expansion and after a
//!   reroot, and turned into the error of the lowest failing tree by [`super::status_error`].
//! * Every wgpu error (validation, out of memory, device lost) is recorded by the device's
//!   error handler and returned as [`ForestError::Device`]; it is sticky, since the device's state
//!   can no longer be trusted. Nothing here panics on a device error.
//! * Per-phase parameters (K, the toy's branching, the record flag) travel in the uniform
//!   `Params`, rewritten only when they change.
//! * The device is opened with wgpu's downlevel defaults raised to what the forest needs (its
//!   largest binding, 8 storage buffers, the grid); a forest beyond the adapter's limits is refused
//!   as [`ForestError::Unavailable`] before anything is allocated. (lavapipe binds at most 128 MiB:
//!   about 4M nodes per forest.)
//! * The rule's parent terms (ln, sqrt) for parent counts below 4096 come from a table computed
//!   on the host by `rules::parent_terms`, like the CPU backend's, so both use the same bits.
//! * The toy value needs `sin` of arguments up to 2.1e6, where GPU `sin` is inaccurate (llvmpipe's
//!   range reduction fails for large arguments); the shader has its own integer-only, correctly
//!   rounded `toy_sin`, ported to Rust in `sin_port` (tests) where it is checked against the
//!   host's sine.

use super::backend::{BackendKind, ForestBackend, Input, ToyParams, ToyStats};
use super::{
    status_error, Backup, Expansion, ForestConfig, ForestError, ForestSnapshot, Node, Selection,
    NONE,
};
use std::sync::{mpsc, Arc, Mutex};

/// The shader, validated by naga at build time (build.rs).
const SHADER: &str = include_str!("../../shaders/forest.wgsl");
/// Threads per workgroup of every entry point (`@workgroup_size(64)`).
const WORKGROUP: u32 = 64;
/// Storage buffers bound by the phase pipelines (bindings 1..=8 of the shader).
const STORAGE_BUFFERS: u32 = 8;
/// Rows of the `trees` buffer (each `[B]` u32): n_nodes, status, toy depth_sum lo/hi, toy leaves
/// lo/hi, toy max_depth.
const TREE_ROWS: u64 = 7;
const ROW_STATUS: u64 = 1;
const ROW_TOY: u64 = 2;
/// Parent counts whose rule terms (ln, sqrt) are computed on the host by `rules::parent_terms`
/// and read from a table by the shader (its `PARENT_LUT`; the CPU backend has the same table).
const PARENT_LUT: u32 = 4096;

fn unavailable(reason: impl Into<String>) -> ForestError {
    ForestError::Unavailable {
        backend: "wgpu",
        reason: reason.into(),
    }
}

fn device_error(reason: impl Into<String>) -> ForestError {
    ForestError::Device {
        backend: "wgpu",
        reason: reason.into(),
    }
}

/// The APIs to try, in order: those of `WGPU_BACKEND` (e.g. `vulkan`, `gl`) if set; else the
/// native ones (Vulkan, Metal, DX12) and, only if none has an adapter, GL. Probing GL needlessly
/// is slow and makes EGL print display-server warnings on headless machines.
fn backend_tiers() -> Vec<wgpu::Backends> {
    match wgpu::Backends::from_env() {
        Some(b) => vec![b],
        None => vec![wgpu::Backends::PRIMARY, wgpu::Backends::GL],
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    desc.flags = wgpu::InstanceFlags::from_env_or_default();
    wgpu::Instance::new(desc)
}

/// The first adapter of the first tier that has one, with its instance.
fn request_adapter() -> Result<(wgpu::Instance, wgpu::Adapter), ForestError> {
    let mut last = String::from("no backend tried");
    for backends in backend_tiers() {
        let inst = instance(backends);
        match pollster::block_on(inst.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        })) {
            Ok(adapter) => return Ok((inst, adapter)),
            Err(e) => last = e.to_string(),
        }
    }
    Err(unavailable(format!(
        "no wgpu adapter ({last}); install a Vulkan driver (on Linux without a GPU: Mesa's \
         lavapipe, package mesa-vulkan-drivers) or set WGPU_BACKEND"
    )))
}

/// Ok when a wgpu adapter (hardware or software, e.g. lavapipe) can be opened here.
pub fn available() -> Result<(), ForestError> {
    request_adapter().map(|_| ())
}

/// True when a non-CPU wgpu adapter exists (used to pick the default backend: a software
/// adapter is slower than the CPU backend).
pub fn hardware_adapter_available() -> bool {
    backend_tiers().into_iter().any(|b| {
        pollster::block_on(instance(b).enumerate_adapters(b))
            .iter()
            .any(|a| a.get_info().device_type != wgpu::DeviceType::Cpu)
    })
}

/// The shader's `Config` uniform, field for field (96 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    /// B.
    trees: u32,
    /// N.
    capacity: u32,
    /// A.
    max_children: u32,
    /// D.
    max_depth: u32,
    /// K of the current phase (stride of the staged expansion and backup).
    k: u32,
    /// D+1, the path record stride.
    stride: u32,
    /// `Rule::encode`: 0 uct, 1 uct unvisited-first, 2 puct, with its two parameters.
    rule: u32,
    p0: f32,
    p1: f32,
    virtual_loss: f32,
    /// Toy children per expansion.
    branching: u32,
    /// Toy: add the leaves' depths to the statistics.
    record: u32,
    /// Reset: visits of the new roots (0 or 1).
    root_visits: u32,
    /// Word offsets of the packed regions (see [`Layout`]).
    sel_plen: u32,
    sel_paths: u32,
    exp_values: u32,
    exp_priors: u32,
    exp_flags: u32,
    bk_mask: u32,
    aux_priors: u32,
    /// Km = max_leaves: per-tree stride of the selection arrays.
    km: u32,
    /// Word offset of the parent-term table in `aux`.
    aux_lut: u32,
    /// `step`: K of the selection run after the deferred phases.
    k_select: u32,
    /// `step`: the phases to run ([`phase`] bits).
    phases: u32,
}

/// Sizes (in u32 words unless said) of the packed buffers. Per-slot regions are sized for
/// `Km = max_leaves`; the selection arrays are strided by Km per tree (as in cpu.rs, whose raw
/// path records `selection()` exposes), the staged expansion and backup by the current K (the
/// stride of the host inputs they double as).
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// B·Km: one `[B, Km]` region.
    slots: u64,
    /// D+1.
    stride: u64,
    /// A.
    a: u64,
    /// `sel`: leaves `[B, Km]` | path_len `[B, Km]` | paths `[B, Km, D+1]`.
    sel_words: u64,
    /// `stage_exp`: counts `[B, K]` | values, priors, flags, each `[B, K, A]` (regions sized
    /// for Km).
    exp_words: u64,
    /// `stage_bk`: values `[B, K]` | mask `[B, K]` (regions sized for Km).
    bk_words: u64,
    /// `aux`: per-tree input `[B]` | toy priors `[A]` | parent terms `[PARENT_LUT, 2]`.
    aux_words: u64,
    /// `trees`: [`TREE_ROWS`] rows of `[B]`.
    tree_words: u64,
    /// `nodes` and `scratch`: `[B, N]` nodes, bytes.
    node_bytes: u64,
    /// `toy_state`: `[B, N]` words.
    state_words: u64,
}

impl Layout {
    fn new(cfg: &ForestConfig) -> Layout {
        let (b, n, a) = (
            cfg.trees as u64,
            cfg.capacity as u64,
            cfg.max_children as u64,
        );
        let slots = b * cfg.max_leaves as u64;
        let stride = cfg.path_stride() as u64;
        Layout {
            slots,
            stride,
            a,
            sel_words: slots * (2 + stride),
            exp_words: slots * (1 + 3 * a),
            bk_words: 2 * slots,
            aux_words: b + a + 2 * PARENT_LUT as u64,
            tree_words: TREE_ROWS * b,
            node_bytes: b * n * Node::BYTES as u64,
            state_words: b * n,
        }
    }
    fn sel_plen(&self) -> u64 {
        self.slots
    }
    fn sel_paths(&self) -> u64 {
        2 * self.slots
    }
    fn exp_values(&self) -> u64 {
        self.slots
    }
    fn exp_priors(&self) -> u64 {
        self.slots * (1 + self.a)
    }
    fn exp_flags(&self) -> u64 {
        self.slots * (1 + 2 * self.a)
    }
    fn bk_mask(&self) -> u64 {
        self.slots
    }
    fn aux_lut(&self) -> u64 {
        self.aux_words - 2 * PARENT_LUT as u64
    }
    /// Largest binding, bytes.
    fn max_binding(&self) -> u64 {
        [
            self.node_bytes,
            4 * self.sel_words,
            4 * self.exp_words,
            4 * self.bk_words,
            4 * self.aux_words,
            4 * self.tree_words,
            4 * self.state_words,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }
    /// Largest number of u32 words of one word-indexed buffer (the shader indexes them with u32).
    fn max_words(&self) -> u64 {
        [
            self.sel_words,
            self.exp_words,
            self.state_words,
            self.tree_words,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }
}

/// One compute pipeline per phase (entry points of the shader).
struct Pipelines {
    reset: wgpu::ComputePipeline,
    select: wgpu::ComputePipeline,
    expand: wgpu::ComputePipeline,
    reroot: wgpu::ComputePipeline,
    toy_reset: wgpu::ComputePipeline,
    step: wgpu::ComputePipeline,
}

/// Phase bits of the `step` entry point (`PH_*` in forest.wgsl), run per tree in this order.
mod phase {
    pub const TOY_EVAL: u32 = 1;
    pub const EXPAND: u32 = 2;
    pub const BACKUP: u32 = 4;
    pub const SELECT: u32 = 8;
}

/// Phases accepted but not dispatched yet: they run in the same dispatch as the next `select`
/// (entry point `step`), or on their own at the next read, sync or host-input phase.
#[derive(Clone, Copy, Debug, Default)]
struct Deferred {
    /// K of the deferred phases.
    k: u32,
    /// Toy: record depth statistics.
    record: u32,
    phases: u32,
}

/// The forest's device buffers (shapes in the shader's header).
struct Buffers {
    /// Uniform [`Params`].
    params: wgpu::Buffer,
    /// `[B, N]` [`Node`].
    nodes: wgpu::Buffer,
    /// [`TREE_ROWS`] × `[B]` u32.
    trees: wgpu::Buffer,
    /// Last selection (see [`Layout::sel_words`]).
    sel: wgpu::Buffer,
    /// Host or staged expansion (see [`Layout::exp_words`]).
    exp: wgpu::Buffer,
    /// Host or staged backup (see [`Layout::bk_words`]).
    bk: wgpu::Buffer,
    /// Per-tree host input `[B]`, toy priors `[A]`, parent terms `[PARENT_LUT, 2]`.
    aux: wgpu::Buffer,
    /// `[B, N]` u32 toy states; allocated by the first `toy_reset`.
    toy_state: Option<wgpu::Buffer>,
    /// `[B, N]` [`Node`] reroot arena; allocated by the first `reroot`.
    scratch: Option<wgpu::Buffer>,
    /// 32 bytes bound in place of a buffer not allocated yet.
    placeholder: wgpu::Buffer,
}

/// First recorded device error (validation, out of memory, internal, device lost).
type ErrorSlot = Arc<Mutex<Option<String>>>;

pub struct WgpuForest {
    cfg: ForestConfig,
    layout: Layout,
    device: wgpu::Device,
    queue: wgpu::Queue,
    description: String,
    bind_layout: wgpu::BindGroupLayout,
    bind_group: wgpu::BindGroup,
    pipelines: Pipelines,
    bufs: Buffers,
    /// The uniform's current contents (host copy, to skip redundant writes).
    params: Params,
    /// Workgroups in x and y of a one-thread-per-tree dispatch.
    grid: (u32, u32),
    toy_ready: bool,
    deferred: Option<Deferred>,
    error: ErrorSlot,
}

impl WgpuForest {
    pub fn new(cfg: &ForestConfig) -> Result<WgpuForest, ForestError> {
        cfg.validate()?;
        let (_instance, adapter) = request_adapter()?;
        let info = adapter.get_info();
        let description = format!("{} ({:?})", info.name, info.backend);
        let layout = Layout::new(cfg);
        let allowed = adapter.limits();

        // Grid: ceil(B / 64) workgroups, folded into y beyond the per-dimension limit.
        let groups = (cfg.trees as u64).div_ceil(WORKGROUP as u64);
        let per_dim = allowed.max_compute_workgroups_per_dimension.max(1) as u64;
        let gx = groups.min(per_dim);
        let gy = groups.div_ceil(gx);
        if gy > per_dim {
            return Err(unavailable(format!(
                "{} trees need {groups} workgroups, more than {per_dim}² on {description}",
                cfg.trees
            )));
        }
        if layout.max_words() >= 1 << 32 {
            return Err(unavailable(format!(
                "the forest's arrays exceed 2^32 words (u32 indices in the shader); use fewer \
                 trees, leaves per step or a smaller max_depth (on {description})"
            )));
        }

        // Limits: wgpu's downlevel defaults, raised to what this forest needs.
        let mut limits = wgpu::Limits::downlevel_defaults();
        limits.max_storage_buffers_per_shader_stage = limits
            .max_storage_buffers_per_shader_stage
            .max(STORAGE_BUFFERS);
        limits.max_storage_buffer_binding_size = limits
            .max_storage_buffer_binding_size
            .max(layout.max_binding());
        limits.max_buffer_size = limits.max_buffer_size.max(layout.max_binding());
        limits.max_compute_workgroups_per_dimension = limits
            .max_compute_workgroups_per_dimension
            .max(gx.max(gy) as u32);
        let mut over = Vec::new();
        limits.check_limits_with_fail_fn(&allowed, false, |name, want, have| {
            over.push(format!("{name}: need {want}, adapter allows {have}"))
        });
        if !over.is_empty() {
            return Err(unavailable(format!(
                "the forest ({} trees × {} nodes, {} MiB of nodes) does not fit {description}: {}",
                cfg.trees,
                cfg.capacity,
                layout.node_bytes >> 20,
                over.join("; ")
            )));
        }
        if !adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            return Err(unavailable(format!("{description} has no compute shaders")));
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("rstar-gpu forest"),
            required_features: wgpu::Features::empty(),
            required_limits: limits,
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| unavailable(format!("cannot open {description}: {e}")))?;

        let error: ErrorSlot = Arc::new(Mutex::new(None));
        {
            let slot = error.clone();
            device
                .on_uncaptured_error(Arc::new(move |e: wgpu::Error| record(&slot, e.to_string())));
            let slot = error.clone();
            device.set_device_lost_callback(move |reason, msg| {
                record(&slot, format!("device lost ({reason:?}): {msg}"))
            });
        }

        // Resources are created inside error scopes so that an allocation failure is reported
        // as "unavailable" (the forest does not fit) rather than a later device error.
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let scope_v = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let storage = |label: &str, bytes: u64| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(4),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        let bufs = Buffers {
            params: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("forest params"),
                size: std::mem::size_of::<Params>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            nodes: storage("forest nodes", layout.node_bytes),
            trees: storage("forest trees", 4 * layout.tree_words),
            sel: storage("forest selection", 4 * layout.sel_words),
            exp: storage("forest expansion", 4 * layout.exp_words),
            bk: storage("forest backup", 4 * layout.bk_words),
            aux: storage("forest aux", 4 * layout.aux_words),
            toy_state: None,
            scratch: None,
            placeholder: storage("forest placeholder", Node::BYTES as u64),
        };
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("forest.wgsl"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![entry(0, wgpu::BufferBindingType::Uniform)];
        for binding in 1..=STORAGE_BUFFERS {
            entries.push(entry(
                binding,
                wgpu::BufferBindingType::Storage { read_only: false },
            ));
        }
        let bind_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("forest bindings"),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("forest pipelines"),
            bind_group_layouts: &[Some(&bind_layout)],
            immediate_size: 0,
        });
        let pipeline = |name: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(name),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let pipelines = Pipelines {
            reset: pipeline("reset"),
            select: pipeline("select"),
            expand: pipeline("expand"),
            reroot: pipeline("reroot"),
            toy_reset: pipeline("toy_reset"),
            step: pipeline("step"),
        };
        let bind_group = make_bind_group(&device, &bind_layout, &bufs);
        let validation = pollster::block_on(scope_v.pop());
        let oom = pollster::block_on(scope.pop());
        if let Some(e) = oom {
            return Err(unavailable(format!(
                "out of device memory for the forest ({} MiB of nodes) on {description}: {e}",
                layout.node_bytes >> 20
            )));
        }
        if let Some(e) = validation {
            return Err(device_error(format!("setting up on {description}: {e}")));
        }

        let (rule, p0, p1) = cfg.rule.encode();
        let params = Params {
            trees: cfg.trees as u32,
            capacity: cfg.capacity as u32,
            max_children: cfg.max_children as u32,
            max_depth: cfg.max_depth as u32,
            k: 1,
            stride: layout.stride as u32,
            rule,
            p0,
            p1,
            virtual_loss: cfg.virtual_loss,
            branching: 0,
            record: 0,
            root_visits: 0,
            sel_plen: layout.sel_plen() as u32,
            sel_paths: layout.sel_paths() as u32,
            exp_values: layout.exp_values() as u32,
            exp_priors: layout.exp_priors() as u32,
            exp_flags: layout.exp_flags() as u32,
            bk_mask: layout.bk_mask() as u32,
            aux_priors: cfg.trees as u32,
            km: cfg.max_leaves as u32,
            aux_lut: layout.aux_lut() as u32,
            k_select: 0,
            phases: 0,
        };
        queue.write_buffer(&bufs.params, 0, bytemuck::bytes_of(&params));
        let lut: Vec<f32> = (0..PARENT_LUT)
            .flat_map(|np| {
                let t = super::rules::parent_terms(cfg.rule, np);
                [t.a, t.b]
            })
            .collect();
        queue.write_buffer(&bufs.aux, 4 * layout.aux_lut(), bytemuck::cast_slice(&lut));
        // The CPU reference starts with empty selections: leaves NONE, path_len 0, paths NONE.
        let mut sel_init = vec![NONE; layout.sel_words as usize];
        sel_init[layout.sel_plen() as usize..layout.sel_paths() as usize].fill(0);
        queue.write_buffer(&bufs.sel, 0, bytemuck::cast_slice(&sel_init));
        drop(sel_init);

        let forest = WgpuForest {
            cfg: cfg.clone(),
            layout,
            device,
            queue,
            description,
            bind_layout,
            bind_group,
            pipelines,
            bufs,
            params,
            grid: (gx as u32, gy as u32),
            toy_ready: false,
            deferred: None,
            error,
        };
        forest.check()?;
        Ok(forest)
    }

    /// Diagnostic: the shader's `toy_sin(f32(state) · 1e-3)` and toy value `0.1 · toy_sin(…)` of
    /// each state, computed on the device (used by the tests to check the shader's sine on the
    /// actual driver).
    pub fn toy_value_probe(&mut self, states: &[u32]) -> Result<Vec<(f32, f32)>, ForestError> {
        self.check()?;
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("forest.wgsl (probe)"),
                source: wgpu::ShaderSource::Wgsl(SHADER.into()),
            });
        // Auto layout: only the probe's two bindings.
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("toy_value_probe"),
                layout: None,
                module: &module,
                entry_point: Some("toy_value_probe"),
                compilation_options: Default::default(),
                cache: None,
            });
        let input = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("probe in"),
            size: 4 * states.len() as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let output = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("probe out"),
            size: 8 * states.len() as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        self.queue
            .write_buffer(&input, 0, bytemuck::cast_slice(states));
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("probe"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 10,
                    resource: input.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 11,
                    resource: output.as_entire_binding(),
                },
            ],
        });
        let groups = (states.len() as u64).div_ceil(WORKGROUP as u64);
        let gx = groups.min(65535);
        let gy = groups.div_ceil(gx);
        let mut enc = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(gx as u32, gy as u32, 1);
        }
        self.queue.submit([enc.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(device_error(format!("toy value probe: {e}")));
        }
        let bytes = self.read(&[(&output, 0, 8 * states.len() as u64)], false)?;
        let words = &bytes[0];
        Ok(words
            .chunks_exact(2)
            .map(|w| (f32::from_bits(w[0]), f32::from_bits(w[1])))
            .collect())
    }

    /// Testing aid: fold the one-thread-per-tree grid into a second dimension beyond `max_x`
    /// workgroups in x (by default the adapter's per-dimension limit, 65535 or more), so that the
    /// 2-D indexing can be checked on forests small enough for any device.
    pub fn set_max_workgroups_x(&mut self, max_x: u32) {
        let groups = (self.cfg.trees as u64).div_ceil(WORKGROUP as u64);
        let gx = groups.min(max_x.max(1) as u64);
        self.grid = (gx as u32, groups.div_ceil(gx) as u32);
    }

    /// The first recorded device error, if any (sticky).
    fn check(&self) -> Result<(), ForestError> {
        match self.error.lock() {
            Ok(slot) => match slot.as_ref() {
                Some(e) => Err(device_error(format!("{} (on {})", e, self.description))),
                None => Ok(()),
            },
            Err(_) => Err(device_error("error handler poisoned")),
        }
    }

    /// Rewrite the uniform if a per-call parameter changed (the write lands before the next
    /// submitted dispatch, after the ones already submitted).
    fn set_params(&mut self, p: Params) {
        if p != self.params {
            self.queue
                .write_buffer(&self.bufs.params, 0, bytemuck::bytes_of(&p));
            self.params = p;
        }
    }

    fn with_k(&mut self, k: usize) {
        let p = Params {
            k: k as u32,
            ..self.params
        };
        self.set_params(p);
    }

    /// Add a phase to the deferred dispatch.
    fn defer(&mut self, k: usize, bit: u32, record: Option<bool>) {
        let d = self.deferred.get_or_insert(Deferred {
            k: k as u32,
            ..Deferred::default()
        });
        d.phases |= bit;
        if let Some(r) = record {
            d.record = r as u32;
        }
    }

    /// Dispatch the deferred phases, followed by a selection of `select` leaves if given.
    fn dispatch_step(&mut self, d: Deferred, select: Option<usize>) -> Result<(), ForestError> {
        let p = Params {
            k: d.k,
            record: d.record,
            k_select: select.unwrap_or(0) as u32,
            phases: d.phases | if select.is_some() { phase::SELECT } else { 0 },
            ..self.params
        };
        self.set_params(p);
        self.dispatch(&self.pipelines.step, "step")
    }

    /// Dispatch the deferred phases now (alone).
    fn flush(&mut self) -> Result<(), ForestError> {
        match self.deferred.take() {
            Some(d) => self.dispatch_step(d, None),
            None => Ok(()),
        }
    }

    /// Record one one-thread-per-tree dispatch of `pipeline` and submit it without waiting.
    fn dispatch(&self, pipeline: &wgpu::ComputePipeline, label: &str) -> Result<(), ForestError> {
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &self.bind_group, &[]);
            pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
        }
        self.queue.submit([enc.finish()]);
        self.check()
    }

    fn write<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, word_offset: u64, data: &[T]) {
        if !data.is_empty() {
            self.queue
                .write_buffer(buffer, 4 * word_offset, bytemuck::cast_slice(data));
        }
    }

    /// Copy byte ranges `(buffer, offset, size)` (multiples of 4) to the host as u32 words, in one
    /// submission that also clears the status row if asked, and wait for them. Each range gets its
    /// own staging buffer, no larger than the buffer it comes from (so within the device limits).
    fn read(
        &self,
        regions: &[(&wgpu::Buffer, u64, u64)],
        clear_status: bool,
    ) -> Result<Vec<Vec<u32>>, ForestError> {
        self.check()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let staging: Vec<wgpu::Buffer> = regions
            .iter()
            .map(|&(_, _, size)| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("forest read-back"),
                    size: size.max(4),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        if let Some(e) = pollster::block_on(oom.pop()) {
            let total: u64 = regions.iter().map(|r| r.2).sum();
            return Err(device_error(format!(
                "no memory for {total} bytes of read-back buffers: {e}"
            )));
        }
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("forest read-back"),
            });
        for (&(buf, off, size), dst) in regions.iter().zip(&staging) {
            if size > 0 {
                enc.copy_buffer_to_buffer(buf, off, dst, 0, size);
            }
        }
        if clear_status {
            let b = self.cfg.trees as u64;
            enc.clear_buffer(&self.bufs.trees, 4 * ROW_STATUS * b, Some(4 * b));
        }
        self.queue.submit([enc.finish()]);
        let (tx, rx) = mpsc::channel();
        for dst in &staging {
            let tx = tx.clone();
            dst.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
        }
        drop(tx);
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| device_error(format!("waiting for the device: {e}")))?;
        self.check()?;
        for _ in &staging {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(device_error(format!("mapping a read-back buffer: {e}"))),
                Err(_) => return Err(device_error("a read-back buffer was never mapped")),
            }
        }
        let mut out = Vec::with_capacity(regions.len());
        for (&(_, _, size), dst) in regions.iter().zip(&staging) {
            let words = {
                let view = dst
                    .get_mapped_range(..)
                    .map_err(|e| device_error(format!("reading a read-back buffer: {e}")))?;
                // Copied out as u32 words: a byte slice has no alignment guarantee.
                bytemuck::pod_collect_to_vec::<u8, u32>(&view[..size as usize])
            };
            dst.unmap();
            out.push(words);
        }
        Ok(out)
    }

    /// The status row's byte range in `trees`.
    fn status_region(&self) -> (&wgpu::Buffer, u64, u64) {
        let b = self.cfg.trees as u64;
        (&self.bufs.trees, 4 * ROW_STATUS * b, 4 * b)
    }

    /// Read regions plus the status row (clearing it), and turn a failed tree into its error.
    fn read_with_status(
        &self,
        regions: &[(&wgpu::Buffer, u64, u64)],
    ) -> Result<Vec<Vec<u32>>, ForestError> {
        let mut all = regions.to_vec();
        all.push(self.status_region());
        let mut out = self.read(&all, true)?;
        let status = out.pop().unwrap_or_default();
        status_error(&status, self.cfg.capacity)?;
        Ok(out)
    }

    /// Allocate a lazily created `[B, N]` buffer and rebind.
    fn allocate(&mut self, which: Lazy) -> Result<(), ForestError> {
        let bytes = match which {
            Lazy::ToyState => 4 * self.layout.state_words,
            Lazy::Scratch => self.layout.node_bytes,
        };
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(match which {
                Lazy::ToyState => "forest toy state",
                Lazy::Scratch => "forest reroot scratch",
            }),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(device_error(format!(
                "no device memory for a {bytes}-byte buffer: {e}"
            )));
        }
        match which {
            Lazy::ToyState => self.bufs.toy_state = Some(buffer),
            Lazy::Scratch => self.bufs.scratch = Some(buffer),
        }
        self.bind_group = make_bind_group(&self.device, &self.bind_layout, &self.bufs);
        self.check()
    }
}

#[derive(Clone, Copy)]
enum Lazy {
    ToyState,
    Scratch,
}

fn record(slot: &ErrorSlot, msg: String) {
    if let Ok(mut s) = slot.lock() {
        if s.is_none() {
            *s = Some(msg);
        }
    }
}

fn make_bind_group(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    bufs: &Buffers,
) -> wgpu::BindGroup {
    let toy_state = bufs.toy_state.as_ref().unwrap_or(&bufs.placeholder);
    let scratch = bufs.scratch.as_ref().unwrap_or(&bufs.placeholder);
    let buffers = [
        &bufs.params,
        &bufs.nodes,
        &bufs.trees,
        &bufs.sel,
        &bufs.exp,
        &bufs.bk,
        &bufs.aux,
        toy_state,
        scratch,
    ];
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("forest"),
        layout,
        entries: &entries,
    })
}

impl ForestBackend for WgpuForest {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn reset(&mut self, root_values: &[f32], root_visits: u32) -> Result<(), ForestError> {
        self.check()?;
        // Deferred work is moot: every tree restarts (as on the CPU backend).
        self.deferred = None;
        self.write(&self.bufs.aux, 0, root_values);
        let p = Params {
            root_visits,
            ..self.params
        };
        self.set_params(p);
        self.dispatch(&self.pipelines.reset, "reset")
    }

    fn select(&mut self, k: usize) -> Result<(), ForestError> {
        self.check()?;
        match self.deferred.take() {
            // One dispatch for the whole step: the deferred phases, then this selection.
            Some(d) => self.dispatch_step(d, Some(k)),
            None => {
                self.with_k(k);
                self.dispatch(&self.pipelines.select, "select")
            }
        }
    }

    fn selection(&mut self, k: usize) -> Result<Selection, ForestError> {
        self.flush()?;
        let (b, st) = (self.cfg.trees, self.layout.stride as usize);
        let km = self.cfg.max_leaves;
        let n = self.layout.slots;
        let sel = &self.bufs.sel;
        let out = self.read_with_status(&[
            (sel, 0, 4 * n),
            (sel, 4 * self.layout.sel_plen(), 4 * n),
            (sel, 4 * self.layout.sel_paths(), 4 * n * st as u64),
        ])?;
        let (leaves, path_len, paths): (&[u32], &[u32], &[u32]) = (&out[0], &out[1], &out[2]);
        Ok(Selection::from_rows(b, k, km, st, leaves, path_len, paths))
    }

    fn expand(&mut self, input: Input<'_, Expansion>, k: usize) -> Result<(), ForestError> {
        self.check()?;
        match input {
            Input::Staged => {
                self.defer(k, phase::EXPAND, None);
                Ok(())
            }
            Input::Host(e) => {
                self.flush()?;
                self.with_k(k);
                let l = self.layout;
                let exp = &self.bufs.exp;
                self.write(exp, 0, &e.counts);
                self.write(exp, l.exp_values(), &e.values);
                self.write(exp, l.exp_priors(), &e.priors);
                self.write(exp, l.exp_flags(), &e.flags);
                self.dispatch(&self.pipelines.expand, "expand")?;
                // Host callers get the per-tree outcome at once, as from the CPU backend.
                self.read_with_status(&[]).map(|_| ())
            }
        }
    }

    fn backup(&mut self, input: Input<'_, Backup>, k: usize) -> Result<(), ForestError> {
        self.check()?;
        if let Input::Host(bk) = input {
            let mask: Vec<u32> = bk.mask.iter().map(|&m| m as u32).collect();
            self.write(&self.bufs.bk, 0, &bk.values);
            self.write(&self.bufs.bk, self.layout.bk_mask(), &mask);
        }
        // Deferred to the next dispatch (a backup cannot fail once the front end checked it).
        self.defer(k, phase::BACKUP, None);
        Ok(())
    }

    fn reroot(&mut self, new_roots: &[u32]) -> Result<(), ForestError> {
        self.check()?;
        self.flush()?;
        if self.bufs.scratch.is_none() {
            self.allocate(Lazy::Scratch)?;
        }
        self.write(&self.bufs.aux, 0, new_roots);
        self.dispatch(&self.pipelines.reroot, "reroot")?;
        self.read_with_status(&[]).map(|_| ())
    }

    fn read_back(&mut self) -> Result<ForestSnapshot, ForestError> {
        self.flush()?;
        let b = self.cfg.trees as u64;
        let out = self.read_with_status(&[
            (&self.bufs.trees, 0, 4 * b),
            (&self.bufs.nodes, 0, self.layout.node_bytes),
        ])?;
        Ok(ForestSnapshot {
            trees: self.cfg.trees,
            capacity: self.cfg.capacity,
            n_nodes: out[0].clone(),
            nodes: bytemuck::pod_collect_to_vec(&out[1]),
        })
    }

    fn sync(&mut self) -> Result<(), ForestError> {
        self.flush()?;
        self.read_with_status(&[]).map(|_| ())
    }

    fn toy_reset(&mut self, toy: &ToyParams) -> Result<(), ForestError> {
        self.check()?;
        if toy.branching == 0
            || toy.branching > self.cfg.max_children
            || toy.priors.len() != toy.branching
        {
            return Err(ForestError::InvalidInput(format!(
                "toy branching {} (with {} priors) must be in 1..={}",
                toy.branching,
                toy.priors.len(),
                self.cfg.max_children
            )));
        }
        self.flush()?;
        if self.bufs.toy_state.is_none() {
            self.allocate(Lazy::ToyState)?;
        }
        self.write(&self.bufs.aux, self.cfg.trees as u64, &toy.priors);
        let p = Params {
            branching: toy.branching as u32,
            ..self.params
        };
        self.set_params(p);
        self.toy_ready = true;
        self.dispatch(&self.pipelines.toy_reset, "toy_reset")
    }

    fn toy_evaluate(&mut self, k: usize, record: bool) -> Result<(), ForestError> {
        self.check()?;
        if !self.toy_ready {
            return Err(ForestError::PhaseOrder(
                "toy_evaluate before toy_reset".into(),
            ));
        }
        self.defer(k, phase::TOY_EVAL, Some(record));
        Ok(())
    }

    fn toy_stats(&mut self) -> Result<ToyStats, ForestError> {
        self.flush()?;
        let b = self.cfg.trees as u64;
        let out = self.read(&[(&self.bufs.trees, 4 * ROW_TOY * b, 4 * 5 * b)], false)?;
        let w = &out[0];
        let b = b as usize;
        let mut s = ToyStats::default();
        for t in 0..b {
            s.depth_sum += w[t] as u64 | (w[b + t] as u64) << 32;
            s.leaves += w[2 * b + t] as u64 | (w[3 * b + t] as u64) << 32;
            s.max_depth = s.max_depth.max(w[4 * b + t]);
        }
        Ok(s)
    }
}

/// Host port of the shader's `toy_sin` (shaders/forest.wgsl), u32 operations only, kept line for
/// line with the WGSL so that the algorithm can be checked against `f32::sin` on the host.
#[cfg(test)]
pub(crate) mod sin_port {
    /// Bits of 1/(2π): `W[i] = floor(2^(32(i+1)) / (2π)) mod 2^32`, behind two zero words so that
    /// windows starting up to 64 bits above the binary point read zeros.
    const INV2PI: [u32; 12] = [
        0, 0, 0x28be60db, 0x9391054a, 0x7f09d5f4, 0x7d4d3770, 0x36d8a566, 0x4f10e410, 0x7f9458ea,
        0xf7aef158, 0x6dc91b8e, 0x909374b8,
    ];
    /// sin(π/4·u) = u · Σ SIN[k] (u²)^k, coefficients in signed Q2.62 as (hi, lo) words.
    const SIN: [u32; 18] = [
        0x3243f6a8, 0x885a308d, 0xfad510c6, 0x76906b50, 0x0028cd78, 0xceeb55c4, 0xffff6696,
        0x998cea14, 0x00000150, 0x783487ee, 0xfffffffe, 0x1cf8b021, 0x00000000, 0x01e8f435,
        0xffffffff, 0xfffe9052, 0x00000000, 0x000000d5,
    ];
    /// cos(π/4·u) = Σ COS[k] (u²)^k, signed Q2.62.
    const COS: [u32; 20] = [
        0x40000000, 0x00000000, 0xec42c336, 0x41ba21a6, 0x0103c1f0, 0x81b5ac3b, 0xfffaa8b0,
        0xe070d002, 0x00000f0f, 0xa83448dd, 0xffffffe5, 0x92e0d5e0, 0x00000000, 0x1f9d38a3,
        0xffffffff, 0xffe491db, 0x00000000, 0x0000120c, 0xffffffff, 0xfffffff7,
    ];

    /// 32×32 → 64-bit product as (hi, lo), from 16-bit halves (no 64-bit type in WGSL).
    fn mul32(a: u32, b: u32) -> (u32, u32) {
        let (a0, a1, b0, b1) = (a & 0xffff, a >> 16, b & 0xffff, b >> 16);
        let p00 = a0 * b0;
        let p01 = a0 * b1;
        let p10 = a1 * b0;
        let p11 = a1 * b1;
        let mid = (p00 >> 16) + (p01 & 0xffff) + (p10 & 0xffff);
        let lo = (mid << 16) | (p00 & 0xffff);
        let hi = p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16);
        (hi, lo)
    }

    /// Full 64×64 → 128-bit product; words most significant first.
    fn mul64(a: (u32, u32), b: (u32, u32)) -> [u32; 4] {
        let (hh_h, hh_l) = mul32(a.0, b.0);
        let (hl_h, hl_l) = mul32(a.0, b.1);
        let (lh_h, lh_l) = mul32(a.1, b.0);
        let (ll_h, ll_l) = mul32(a.1, b.1);
        let w3 = ll_l;
        // word 2 = ll_h + hl_l + lh_l
        let t = ll_h.wrapping_add(hl_l);
        let mut c = (t < ll_h) as u32;
        let w2 = t.wrapping_add(lh_l);
        c += (w2 < t) as u32;
        // word 1 = hh_l + hl_h + lh_h + c
        let t = hh_l.wrapping_add(hl_h);
        let mut c1 = (t < hh_l) as u32;
        let t2 = t.wrapping_add(lh_h);
        c1 += (t2 < t) as u32;
        let w1 = t2.wrapping_add(c);
        c1 += (w1 < t2) as u32;
        let w0 = hh_h.wrapping_add(c1);
        [w0, w1, w2, w3]
    }

    fn add64(a: (u32, u32), b: (u32, u32)) -> (u32, u32) {
        let lo = a.1.wrapping_add(b.1);
        (a.0.wrapping_add(b.0).wrapping_add((lo < a.1) as u32), lo)
    }

    fn neg64(a: (u32, u32)) -> (u32, u32) {
        add64((!a.0, !a.1), (0, 1))
    }

    /// Horner step of a signed Q2.62 polynomial in w (unsigned Q0.64): `c + s·w`, the product
    /// truncated toward zero.
    fn horner(c: (u32, u32), s: (u32, u32), w: (u32, u32)) -> (u32, u32) {
        let neg = s.0 >> 31 != 0;
        let m = if neg { neg64(s) } else { s };
        let p = mul64(m, w);
        let hi = (p[0], p[1]);
        add64(c, if neg { neg64(hi) } else { hi })
    }

    fn clz128(m: [u32; 4]) -> u32 {
        if m[0] != 0 {
            m[0].leading_zeros()
        } else if m[1] != 0 {
            32 + m[1].leading_zeros()
        } else if m[2] != 0 {
            64 + m[2].leading_zeros()
        } else {
            96 + m[3].leading_zeros()
        }
    }

    /// 128-bit left shift by 0..=127.
    fn shl128(m: [u32; 4], n: u32) -> [u32; 4] {
        let (ws, bs) = ((n >> 5) as usize, n & 31);
        let mut o = [0u32; 4];
        for (i, oi) in o.iter_mut().enumerate() {
            let j = i + ws;
            if j < 4 {
                let mut v = m[j] << bs;
                if bs != 0 && j + 1 < 4 {
                    v |= m[j + 1] >> (32 - bs);
                }
                *oi = v;
            }
        }
        o
    }

    /// f32 bits nearest (ties to even) to `M · 2^scale` for M ≠ 0 with a normal result.
    fn round_f32(m: [u32; 4], scale: i32) -> u32 {
        let lz = clz128(m);
        let n = shl128(m, lz);
        let mut mant = n[0] >> 8;
        let round = (n[0] >> 7) & 1;
        let sticky = (n[0] & 0x7f) | n[1] | n[2] | n[3];
        if round != 0 && (sticky != 0 || mant & 1 != 0) {
            mant += 1;
        }
        let mut biased = 254 + scale - lz as i32;
        if mant == 0x0100_0000 {
            mant >>= 1;
            biased += 1;
        }
        ((biased as u32) << 23) | (mant & 0x007f_ffff)
    }

    /// 32 bits of 1/(2π) starting just below bit position 2^-p (p ≥ -64).
    fn inv2pi_bits(p: i32) -> u32 {
        let q = (p + 64) as u32;
        let (i, s) = ((q >> 5) as usize, q & 31);
        if s == 0 {
            INV2PI[i]
        } else {
            (INV2PI[i] << s) | (INV2PI[i + 1] >> (32 - s))
        }
    }

    pub fn toy_sin(x: f32) -> f32 {
        let bits = x.to_bits();
        let sign = bits & 0x8000_0000;
        let ax = bits & 0x7fff_ffff;
        if ax >= 0x7f80_0000 {
            return f32::from_bits(0x7fc0_0000);
        }
        // |x| < 2^-12: sin x rounds to x (x³/6 is below half an ulp).
        if ax < 0x3980_0000 {
            return x;
        }
        let m = (ax & 0x007f_ffff) | 0x0080_0000;
        let e = (ax >> 23) as i32 - 150;
        // G = frac(m · frac(2^e/(2π))), 128-bit fixed point, most significant word first.
        let (h0, l0) = mul32(m, inv2pi_bits(e));
        let (h1, l1) = mul32(m, inv2pi_bits(e + 32));
        let (h2, l2) = mul32(m, inv2pi_bits(e + 64));
        let (h3, l3) = mul32(m, inv2pi_bits(e + 96));
        let _ = h0;
        let g3 = l3;
        let g2 = l2.wrapping_add(h3);
        let c2 = (g2 < l2) as u32;
        let t = l1.wrapping_add(h2);
        let mut c1 = (t < l1) as u32;
        let g1 = t.wrapping_add(c2);
        c1 += (g1 < t) as u32;
        let g0 = l0.wrapping_add(h1).wrapping_add(c1);
        // Quadrant q and the remainder R = frac(4G) (in quarter turns).
        let q = g0 >> 30;
        let r = [
            (g0 << 2) | (g1 >> 30),
            (g1 << 2) | (g2 >> 30),
            (g2 << 2) | (g3 >> 30),
            g3 << 2,
        ];
        let half = r[0] >> 31;
        // U = u in Q1.127 where the angle in the octant is π/4·u: 2R, or 2 - 2R past the middle.
        let mut u = r;
        if half != 0 {
            let mut carry = 1u32;
            for i in (0..4).rev() {
                let v = (!r[i]).wrapping_add(carry);
                carry = (v == 0 && carry != 0) as u32;
                u[i] = v;
            }
        }
        if (u[0] | u[1] | u[2] | u[3]) == 0 {
            return f32::from_bits(sign);
        }
        let use_cos = (q & 1) ^ half;
        let neg = (q >> 1) << 31;
        // w = u² in Q0.64 (saturated at u = 1).
        let s = mul64((u[0], u[1]), (u[0], u[1]));
        let w = if u[0] == 0x8000_0000 && u[1] == 0 {
            (u32::MAX, u32::MAX)
        } else {
            ((s[0] << 2) | (s[1] >> 30), (s[1] << 2) | (s[2] >> 30))
        };
        let out = if use_cos != 0 {
            let mut p = (COS[18], COS[19]);
            for k in (0..9).rev() {
                p = horner((COS[2 * k], COS[2 * k + 1]), p, w);
            }
            round_f32([0, 0, p.0, p.1], -62)
        } else {
            let mut p = (SIN[16], SIN[17]);
            for k in (0..8).rev() {
                p = horner((SIN[2 * k], SIN[2 * k + 1]), p, w);
            }
            let lz = clz128(u);
            let un = shl128(u, lz);
            round_f32(mul64((un[0], un[1]), p), -125 - lz as i32)
        };
        f32::from_bits(out | (sign ^ neg))
    }
}

#[cfg(test)]
mod tests {
    use super::sin_port::toy_sin;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i32).abs_diff(b.to_bits() as i32)
    }

    /// splitmix64, so that the test needs no RNG crate.
    fn next(s: &mut u64) -> u64 {
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The shader's sine over 1e6 random toy states: at most 1 ulp from the host's `f32::sin`
    /// (glibc's sinf is itself not correctly rounded), and equal to the correctly rounded sine
    /// (the f64 sine rounded to f32, itself off only where f64 rounding lands on an f32 midpoint).
    #[test]
    fn toy_sin_matches_host_sine_on_toy_states() {
        let mut s = 7u64;
        let (mut max_ulp, mut off_host, mut off_f64) = (0, 0, 0);
        for _ in 0..1_000_000 {
            let state = (next(&mut s) as u32) & 0x7fff_ffff;
            let x = state as f32 * 1e-3;
            let got = toy_sin(x);
            let host = x.sin();
            let u = ulps(got, host);
            max_ulp = max_ulp.max(u);
            off_host += (u != 0) as u32;
            off_f64 += (got != (x as f64).sin() as f32) as u32;
        }
        eprintln!(
            "toy_sin vs f32::sin over 1e6 toy states: max {max_ulp} ulp, {off_host} differ; \
             vs the rounded f64 sine: {off_f64} differ"
        );
        assert!(max_ulp <= 1, "max ulp {max_ulp}");
        assert!(
            off_f64 <= 2,
            "{off_f64} differ from the correctly rounded sine"
        );
    }

    /// Arguments over the whole f32 range, both signs, and the special values.
    #[test]
    fn toy_sin_full_range_and_specials() {
        let mut s = 11u64;
        let mut max_ulp = 0;
        for _ in 0..1_000_000 {
            let bits = next(&mut s) as u32;
            let x = f32::from_bits(bits);
            if !x.is_finite() {
                continue;
            }
            let want = (x as f64).sin() as f32;
            max_ulp = max_ulp.max(ulps(toy_sin(x), want));
        }
        eprintln!(
            "toy_sin over random f32 bit patterns: max {max_ulp} ulp from the rounded f64 sine"
        );
        assert!(max_ulp <= 1);
        assert_eq!(toy_sin(0.0).to_bits(), 0);
        assert_eq!(toy_sin(-0.0).to_bits(), (-0.0f32).to_bits());
        assert!(toy_sin(f32::INFINITY).is_nan());
        assert!(toy_sin(f32::NAN).is_nan());
        assert_eq!(toy_sin(1e-30), 1e-30);
        assert_eq!(toy_sin(-std::f32::consts::FRAC_PI_2), -1.0);
    }
}
