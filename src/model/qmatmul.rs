//! A Q8_0-style quantized matrix multiplication for CPU decoding: `out = x · Wᵀ` with the
//! weights `W` `[n_out, k]` quantized per block of 32 along `k` (i8 values, one f32 scale per
//! block, like ggml's Q8_0) and the activations `x` `[m, k]` quantized the same way on the fly.
//!
//! ```no_run
//! # use rstar_gpu::model::qmatmul::Q8Matrix;
//! # fn f(w: &candle_core::Tensor, x: &[f32]) -> Result<(), rstar_gpu::model::ModelError> {
//! let q = Q8Matrix::from_tensor(w)?; // or from_f32 / from_qtensor (GGUF Q8_0 blocks exactly)
//! let m = x.len() / q.k();
//! let mut out = vec![0f32; m * q.n_out()];
//! q.matmul(x, m, &mut out)?; // out = x · Wᵀ
//! # Ok(()) }
//! ```
//!
//! # Numerics
//!
//! For output element `(row, col)` and k-block `b`:
//!
//! - `isum_b = Σ_{j<32} wq[col][32b+j] · xq[row][32b+j]` exactly, in i32;
//! - `acc ← fma(f32(isum_b) · dw[col][b], dx[row][b], acc)`, for `b = 0, 1, …` in order, from
//!   `acc = 0` (one f32 multiply, then one fused multiply-add).
//!
//! Every kernel (scalar, AVX2, AVX-VNNI, AVX-512 VNNI) evaluates exactly these operations in this
//! order, so all of them give **bit-identical** results; and a row's result never depends on `m`,
//! on the other rows of the batch, on the tiling or on the threads.
//!
//! # Kernels
//!
//! The weights are stored in tiles of 16 output columns × 32 k-values (`TileBlock`), laid out so
//! that one 64-byte vector holds 4 consecutive k-values of 16 columns: the operand of one
//! `vpdpbusd` (u8 × i8 → i32, 4 products per lane). The weights are stored offset by +128 (as u8)
//! and the activations are signed, so the activation 4-byte groups can be broadcast straight from
//! memory; the offset is removed by starting each block's integer sum at
//! `-128 · Σ_{j<32} xq[row][32b+j]` (computed when the activations are quantized).
//!
//! - AVX-512 VNNI: register tiles of `R` rows × `T` tiles (16·T columns): each weight vector is
//!   loaded once for `R` rows and each activation group once for `T` tiles.
//! - AVX-VNNI / AVX2: the same with 256-bit vectors (AVX2 without VNNI uses the `vpsignb` +
//!   `vpmaddubsw` trick on the signed weights, which cannot overflow: |x| ≤ 127 and |w| ≤ 128,
//!   so a pair sums to at most 32 512).
//! - Scalar: the reference, also the path on non-x86 targets.
//!
//! When several register tiles of rows share the same weights, `k` is split into chunks whose
//! weights stay in L1 (the partial sums go through `out` exactly, so results do not change).
//!
//! Work is split over output-column groups (and row blocks for large `m`) on candle's barrier pool
//! (`candle_core::utils::barrier_pool()`, the threads candle's own matmuls use, sized by
//! `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS`); small problems run on the calling thread.
//!
//! Memory: the weights take 1.125 bytes per value (i8 + an f32 scale per 32, columns padded to a
//! multiple of 16). Each calling thread keeps its quantized activations (about `m·k` bytes)
//! in a thread-local buffer reused across calls.

use super::ModelError;

/// Values per quantization block along `k`.
pub const QK: usize = 32;
/// Output columns per weight tile (the 16 i32 lanes of a 512-bit vector).
const TILE: usize = 16;
/// Rows per work item when `m` is large.
const ROW_BLOCK: usize = 64;
/// Weight bytes of one k-chunk kept in L1 across register tiles of rows.
const L1_WEIGHT_BYTES: usize = 24 * 1024;
/// Below this many multiply-adds the matmul runs on the calling thread.
const PAR_MIN_MACS: usize = 1 << 19;
/// Fewest work items worth splitting across the threads (a few each, for balance).
const PAR_MIN_ITEMS: usize = 8;

/// One 32-value block of 16 output columns of the weight matrix: 576 bytes, 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct TileBlock {
    /// `[g: 8][col: 16][j: 4]`: `(w_q + 128) as u8` where `w_q ∈ [-127, 127]` is the quantized
    /// weight of column `tile·16 + col` at k-index `block·32 + 4g + j`. Padding columns (past
    /// `n_out`) hold 128 (a zero weight).
    qs: [u8; QK * TILE],
    /// `[col: 16]`: the f32 scale of the block for each column (real weight ≈ `w_q · d`); 0 for
    /// padding columns.
    d: [f32; TILE],
}

const ZERO_TILE: TileBlock = TileBlock {
    qs: [128; QK * TILE],
    d: [0.0; TILE],
};

/// Which implementation [`Q8Matrix::matmul_with`] runs. All give bit-identical results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable scalar code (the reference).
    Scalar,
    /// x86 AVX2 + FMA (`vpmaddubsw`).
    Avx2,
    /// x86 AVX-VNNI (256-bit `vpdpbusd`) + AVX2 + FMA.
    AvxVnni,
    /// x86 AVX-512 F/BW/VNNI (512-bit `vpdpbusd`).
    Avx512Vnni,
}

impl Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Kernel; 4] = [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::AvxVnni,
        Kernel::Avx512Vnni,
    ];

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => Kernel::Avx2.available() && is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                Kernel::Avx2.available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest kernel this CPU can run (detected once).
    pub fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            Kernel::ALL
                .into_iter()
                .rev()
                .find(|k| k.available())
                .unwrap_or(Kernel::Scalar)
        })
    }
}

/// A weight matrix `[n_out, k]` (row-major like a PyTorch `Linear` weight; `out = x · Wᵀ`)
/// quantized per block of 32 along `k` to i8 with one f32 scale per block (symmetric:
/// `scale = max|w| / 127`, values rounded to nearest), stored in the tiled layout of the kernels.
#[derive(Clone)]
pub struct Q8Matrix {
    n_out: usize,
    k: usize,
    /// Blocks per column: `k / 32`.
    kb: usize,
    /// Column tiles: `ceil(n_out / 16)`.
    n_tiles: usize,
    /// `[n_tiles][kb]` tile blocks (tile-major: one tile's blocks are contiguous along `k`).
    tiles: Vec<TileBlock>,
}

impl std::fmt::Debug for Q8Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Q8Matrix")
            .field("n_out", &self.n_out)
            .field("k", &self.k)
            .finish()
    }
}

/// `1.5 · 2^23`: adding and subtracting it rounds an f32 of magnitude < 2^22 to an integer,
/// ties to even (the rounding of `cvtps2dq`), without a libm call.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Quantizes 32 values symmetrically: writes `round(v / d)` (ties to even, in `[-127, 127]`) into
/// `q` and returns the scale `d = max|v| / 127` (0 for an all-zero block). A block holding a
/// non-finite value gets `d = NaN` and zero values, so the NaN reaches the results.
#[inline(always)]
fn quantize_block(v: &[f32], q: &mut [i8]) -> f32 {
    // max |v| through the bits (monotonic for non-NaN values; vectorises without fast-math)
    let amax_bits = v.iter().fold(0u32, |a, x| a.max(x.to_bits() & 0x7fff_ffff));
    if amax_bits >= 0x7f80_0000 {
        q.fill(0);
        return f32::NAN;
    }
    let d = f32::from_bits(amax_bits) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (qi, &x) in q.iter_mut().zip(v) {
        *qi = (((x * id).clamp(-127.0, 127.0) + ROUND_MAGIC) - ROUND_MAGIC) as i8;
    }
    d
}

/// Quantizes rows of activations (`x` a whole number of 32-blocks): `q` the values, `d` the
/// block scales, `corr` the block sums times -128 (see [`Acts`]).
#[inline(always)]
fn quantize_rows_generic(q: &mut [i8], d: &mut [f32], corr: &mut [i32], x: &[f32]) {
    for (((qb, db), cb), xb) in q
        .chunks_exact_mut(QK)
        .zip(d.iter_mut())
        .zip(corr.iter_mut())
        .zip(x.chunks_exact(QK))
    {
        *db = quantize_block(xb, qb);
        *cb = -128 * qb.iter().map(|&v| v as i32).sum::<i32>();
    }
}

/// Which activation quantizer this CPU runs (all give identical results).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantizer {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Quantizer {
    fn best() -> Quantizer {
        #[cfg(target_arch = "x86_64")]
        {
            if Kernel::Avx512Vnni.available() {
                return Quantizer::Avx512;
            }
            if Kernel::Avx2.available() {
                return Quantizer::Avx2;
            }
        }
        Quantizer::Portable
    }

    fn run(self, q: &mut [i8], d: &mut [f32], corr: &mut [i32], x: &[f32]) {
        debug_assert!(q.len() == x.len() && d.len() * QK == x.len() && corr.len() == d.len());
        match self {
            Quantizer::Portable => quantize_rows_generic(q, d, corr, x),
            // SAFETY: selected only when the CPU has the features.
            #[cfg(target_arch = "x86_64")]
            Quantizer::Avx2 => unsafe { x86::quantize_rows_avx2(q, d, corr, x) },
            #[cfg(target_arch = "x86_64")]
            Quantizer::Avx512 => unsafe { x86::quantize_rows_avx512(q, d, corr, x) },
        }
    }
}

impl Q8Matrix {
    /// Quantizes a row-major `[n_out, k]` f32 weight matrix. Errors when `k` is not a positive
    /// multiple of 32, `n_out` is 0, or `w.len() != n_out · k`.
    pub fn from_f32(w: &[f32], n_out: usize, k: usize) -> Result<Self, ModelError> {
        check_shape(n_out, k)?;
        if n_out.checked_mul(k) != Some(w.len()) {
            return Err(ModelError::Request(format!(
                "Q8Matrix: {} weights for a [{n_out}, {k}] matrix",
                w.len()
            )));
        }
        Ok(Self::build(n_out, k, |col, b, q| {
            quantize_block(&w[col * k + b * QK..col * k + (b + 1) * QK], q)
        }))
    }

    /// From a candle quantized tensor `[n_out, k]`: Q8_0 blocks are taken exactly (the f16
    /// scale widened to f32); other formats are dequantized and quantized with
    /// [`Self::from_f32`].
    pub fn from_qtensor(t: &candle_core::quantized::QTensor) -> Result<Self, ModelError> {
        let (n_out, k) = t.shape().dims2().map_err(|e| {
            ModelError::Request(format!("Q8Matrix: expected a 2-D weight tensor: {e}"))
        })?;
        if t.dtype() != candle_core::quantized::GgmlDType::Q8_0 {
            return Self::from_tensor(&t.dequantize(&candle_core::Device::Cpu)?);
        }
        check_shape(n_out, k)?;
        const BLOCK_BYTES: usize = 2 + QK; // f16 scale, 32 × i8
        let data = t.data()?;
        let kb = k / QK;
        if data.len() != n_out * kb * BLOCK_BYTES {
            return Err(ModelError::Request(format!(
                "Q8Matrix: {} bytes of Q8_0 data for a [{n_out}, {k}] matrix",
                data.len()
            )));
        }
        Ok(Self::build(n_out, k, |col, b, q| {
            let blk = &data[(col * kb + b) * BLOCK_BYTES..(col * kb + b + 1) * BLOCK_BYTES];
            for (qi, &v) in q.iter_mut().zip(&blk[2..]) {
                *qi = v as i8;
            }
            half::f16::from_le_bytes([blk[0], blk[1]]).to_f32()
        }))
    }

    /// Builds the tiles from `block(col, b, q) -> scale`, which writes the 32 quantized
    /// values of column `col`, block `b` into `q` (tiles in parallel for large matrices).
    fn build<F>(n_out: usize, k: usize, block: F) -> Self
    where
        F: Fn(usize, usize, &mut [i8; QK]) -> f32 + Sync,
    {
        let kb = k / QK;
        let n_tiles = n_out.div_ceil(TILE);
        let mut tiles = vec![ZERO_TILE; n_tiles * kb];
        let ptr = SendTiles(tiles.as_mut_ptr());
        let work = |range: std::ops::Range<usize>| {
            let ptr = &ptr;
            let mut q = [0i8; QK];
            for t in range {
                // SAFETY: each tile's blocks are written by one work item only.
                let tile = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(t * kb), kb) };
                for c in 0..TILE.min(n_out - t * TILE) {
                    for (b, tb) in tile.iter_mut().enumerate() {
                        tb.d[c] = block(t * TILE + c, b, &mut q);
                        for (i, &qi) in q.iter().enumerate() {
                            let (g, j) = (i / 4, i % 4);
                            tb.qs[(g * TILE + c) * 4 + j] = (qi as i16 + 128) as u8;
                        }
                    }
                }
            }
        };
        let pool = candle_core::utils::barrier_pool();
        if n_out * k < 1 << 20 || pool.n_workers() == 0 {
            work(0..n_tiles);
        } else {
            pool.execute_chunked(n_tiles, work);
        }
        Q8Matrix {
            n_out,
            k,
            kb,
            n_tiles,
            tiles,
        }
    }

    /// Quantizes a 2-D `[n_out, k]` tensor (any float dtype, converted to f32; any device).
    pub fn from_tensor(t: &candle_core::Tensor) -> Result<Self, ModelError> {
        let (n_out, k) = t.dims2().map_err(|e| {
            ModelError::Request(format!("Q8Matrix: expected a 2-D weight tensor: {e}"))
        })?;
        let w = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Self::from_f32(&w, n_out, k)
    }

    /// Output features (rows of the weight matrix).
    pub fn n_out(&self) -> usize {
        self.n_out
    }

    /// Input features (columns of the weight matrix).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes of weight storage (quantized values, scales and tile padding).
    pub fn bytes(&self) -> usize {
        self.tiles.len() * std::mem::size_of::<TileBlock>()
    }

    /// The dequantized weights, row-major `[n_out, k]` (`w_q · scale`).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n_out * self.k];
        for (col, row) in w.chunks_exact_mut(self.k).enumerate() {
            let (t, c) = (col / TILE, col % TILE);
            for b in 0..self.kb {
                let tb = &self.tiles[t * self.kb + b];
                for i in 0..QK {
                    let q = tb.qs[(i / 4 * TILE + c) * 4 + i % 4] as i32 - 128;
                    row[b * QK + i] = q as f32 * tb.d[c];
                }
            }
        }
        w
    }

    /// `out = x · Wᵀ`: `x` is `[m, k]` row-major f32, `out` is `[m, n_out]` row-major (every
    /// element overwritten). Runs [`Kernel::best`]. Errors on inconsistent lengths.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), ModelError> {
        self.matmul_with(Kernel::best(), x, m, out)
    }

    /// [`Self::matmul`] with a given kernel; errors if this CPU cannot run it.
    pub fn matmul_with(
        &self,
        kernel: Kernel,
        x: &[f32],
        m: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        if m.checked_mul(self.k) != Some(x.len()) {
            return Err(ModelError::Request(format!(
                "Q8Matrix::matmul: input has {} values, expected m = {m} rows of k = {}",
                x.len(),
                self.k
            )));
        }
        if m.checked_mul(self.n_out) != Some(out.len()) {
            return Err(ModelError::Request(format!(
                "Q8Matrix::matmul: output has {} values, expected m = {m} rows of n_out = {}",
                out.len(),
                self.n_out
            )));
        }
        if !kernel.available() {
            return Err(ModelError::Unsupported(format!(
                "{kernel:?} kernel on this CPU"
            )));
        }
        if m == 0 {
            return Ok(());
        }
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut acts) => {
                acts.quantize(x, m, self.k);
                self.run(kernel, &acts, m, out);
            }
            // re-entered on this thread (cannot happen today): a fresh buffer
            Err(_) => {
                let mut acts = Acts::default();
                acts.quantize(x, m, self.k);
                self.run(kernel, &acts, m, out);
            }
        });
        Ok(())
    }

    /// `x` `[.., k]` f32 → `[.., n_out]` f32 on the CPU (any leading dimensions).
    pub fn forward(&self, x: &candle_core::Tensor) -> Result<candle_core::Tensor, ModelError> {
        let dims = x.dims();
        let Some((&k, lead)) = dims.split_last() else {
            return Err(ModelError::Request(
                "Q8Matrix::forward: a scalar input".into(),
            ));
        };
        if k != self.k {
            return Err(ModelError::Request(format!(
                "Q8Matrix::forward: input {:?}, expected last dimension {}",
                dims, self.k
            )));
        }
        let m: usize = lead.iter().product();
        let xs = x
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut out = vec![0f32; m * self.n_out];
        self.matmul(&xs, m, &mut out)?;
        let mut shape = lead.to_vec();
        shape.push(self.n_out);
        Ok(candle_core::Tensor::from_vec(
            out,
            shape,
            &candle_core::Device::Cpu,
        )?)
    }

    /// The register tile `(rows, column tiles)` of `kernel` for `m` rows.
    fn tile_shape(&self, kernel: Kernel, m: usize) -> (usize, usize) {
        match kernel {
            Kernel::Scalar => (1, 1),
            Kernel::Avx2 | Kernel::AvxVnni => (2, 1),
            Kernel::Avx512Vnni => {
                match m {
                    // one row: 8 tiles in flight when there are enough for the threads
                    1 if self.n_tiles >= 64 => (1, 8),
                    1 => (1, 4),
                    // 12 integer + 12 float accumulators, 2 weight vectors
                    _ => (6, 2),
                }
            }
        }
    }

    /// Runs the kernel on quantized activations, in parallel when the problem is large enough.
    fn run(&self, kernel: Kernel, acts: &Acts, m: usize, out: &mut [f32]) {
        let (_, tw) = self.tile_shape(kernel, m);
        let rows_per_item = if m <= ROW_BLOCK { m } else { ROW_BLOCK };
        let n_rb = m.div_ceil(rows_per_item);
        let n_groups = self.n_tiles.div_ceil(tw);
        let n_items = n_groups * n_rb;
        let out_ptr = SendPtr(out.as_mut_ptr());
        let body = |range: std::ops::Range<usize>| {
            let out_ptr = &out_ptr;
            for item in range {
                let (g, rb) = (item / n_rb, item % n_rb);
                let tiles = g * tw..self.n_tiles.min((g + 1) * tw);
                let rows = rb * rows_per_item..m.min((rb + 1) * rows_per_item);
                // SAFETY: items write disjoint (row, column) ranges of `out`, which holds
                // `m · n_out` values (checked by the caller); `acts` holds `m` quantized rows.
                unsafe { self.block(kernel, acts, m, rows, tiles, out_ptr.0) };
            }
        };
        let macs = m * self.n_out * self.k;
        let pool = candle_core::utils::barrier_pool();
        if macs < PAR_MIN_MACS || n_items < PAR_MIN_ITEMS || pool.n_workers() == 0 {
            body(0..n_items);
        } else {
            pool.execute_chunked(n_items, body);
        }
    }

    /// Blocks of k per chunk when `nt` column tiles are reused over several register tiles.
    fn k_chunk(&self, nt: usize) -> usize {
        let tile_bytes = nt * std::mem::size_of::<TileBlock>();
        let kc = (L1_WEIGHT_BYTES / tile_bytes).max(4);
        if self.kb <= kc + kc / 2 {
            self.kb
        } else {
            kc
        }
    }

    /// Computes `out[rows, tiles·16]` (columns clipped to `n_out`) with the register tiles of
    /// `kernel` for an `m`-row problem.
    ///
    /// # Safety
    /// `out` points at `m · n_out` f32 that no one else touches in this range; `rows` ⊂ `0..m`
    /// with `acts` quantized for `m` rows of `self.k`; `tiles` ⊂ `0..n_tiles`; the CPU supports
    /// `kernel`.
    unsafe fn block(
        &self,
        kernel: Kernel,
        acts: &Acts,
        m: usize,
        rows: std::ops::Range<usize>,
        tiles: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        let (tr, tt) = self.tile_shape(kernel, m);
        let mut t0 = tiles.start;
        while t0 < tiles.end {
            let nt = tt.min(tiles.end - t0);
            // Several register tiles of rows reuse the weights of `nt` tiles: split k so that
            // the weights of one k-chunk stay in L1 between them.
            let kc = if rows.len() > tr {
                self.k_chunk(nt)
            } else {
                self.kb
            };
            let mut b0 = 0;
            while b0 < self.kb {
                let b1 = self.kb.min(b0 + kc);
                // register tiles of near-equal height (8 rows: 4 + 4, not 6 + 2)
                let n_rt = rows.len().div_ceil(tr);
                let (base, extra) = (rows.len() / n_rt, rows.len() % n_rt);
                let mut r0 = rows.start;
                for rt in 0..n_rt {
                    let nr = base + usize::from(rt < extra);
                    // SAFETY (offsets): inside the buffers by the contract above.
                    let a = unsafe {
                        Args {
                            w: self.tiles.as_ptr().add(t0 * self.kb),
                            kb: self.kb,
                            b0,
                            b1,
                            nt,
                            qa: acts.q.as_ptr().add(r0 * self.k),
                            k: self.k,
                            da: acts.d.as_ptr().add(r0 * self.kb),
                            corr: acts.corr.as_ptr().add(r0 * self.kb),
                            nr,
                            out: out.add(r0 * self.n_out + t0 * TILE),
                            ldo: self.n_out,
                            n_valid: self.n_out - t0 * TILE,
                        }
                    };
                    match kernel {
                        Kernel::Scalar => scalar_kernel(&a),
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx2 => unsafe { x86::avx2_dispatch::<false>(&a) },
                        #[cfg(target_arch = "x86_64")]
                        Kernel::AvxVnni => unsafe { x86::avx2_dispatch::<true>(&a) },
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx512Vnni => unsafe { x86::avx512_dispatch(&a) },
                        #[cfg(not(target_arch = "x86_64"))]
                        _ => scalar_kernel(&a),
                    }
                    r0 += nr;
                }
                b0 = b1;
            }
            t0 += nt;
        }
    }
}

/// Errors unless `k` is a positive multiple of 32 and `n_out` is positive.
fn check_shape(n_out: usize, k: usize) -> Result<(), ModelError> {
    if k == 0 || !k.is_multiple_of(QK) {
        return Err(ModelError::Request(format!(
            "Q8Matrix: k = {k} must be a positive multiple of {QK}"
        )));
    }
    if n_out == 0 {
        return Err(ModelError::Request(
            "Q8Matrix: n_out must be positive".into(),
        ));
    }
    Ok(())
}

/// The tiles being built, shared by the workers (each writes its own tiles).
struct SendTiles(*mut TileBlock);
// SAFETY: see `Q8Matrix::build`.
unsafe impl Sync for SendTiles {}

/// A raw output pointer shared by the workers (each writes its own elements).
struct SendPtr(*mut f32);
// SAFETY: the workers write disjoint elements (see `Q8Matrix::run`).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// Quantized activations: reused per thread across calls.
#[derive(Default)]
struct Acts {
    /// `[m][k]` i8 quantized activations (`x ≈ q · d`).
    q: Vec<i8>,
    /// `[m][k/32]` f32 scale per row and block.
    d: Vec<f32>,
    /// `[m][k/32]` i32 `-128 · Σ q` over the block: the start of the block's integer sum,
    /// cancelling the +128 offset of the stored weights.
    corr: Vec<i32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Acts> = std::cell::RefCell::new(Acts::default());
}

impl Acts {
    /// Quantizes `x` `[m, k]` per row and 32-block (rows in parallel when large).
    fn quantize(&mut self, x: &[f32], m: usize, k: usize) {
        let kb = k / QK;
        self.q.resize(m * k, 0);
        self.d.resize(m * kb, 0.0);
        self.corr.resize(m * kb, 0);
        let qz = Quantizer::best();
        let quant_rows =
            |q: &mut [i8], d: &mut [f32], corr: &mut [i32], x: &[f32]| qz.run(q, d, corr, x);
        const PAR_MIN: usize = 1 << 16;
        let pool = candle_core::utils::barrier_pool();
        if m * k < PAR_MIN || m < 2 || pool.n_workers() == 0 {
            quant_rows(&mut self.q, &mut self.d, &mut self.corr, x);
            return;
        }
        let (qp, dp, cp) = (
            SendI8(self.q.as_mut_ptr()),
            SendF32(self.d.as_mut_ptr()),
            SendI32(self.corr.as_mut_ptr()),
        );
        pool.execute_chunked(m, |rows| {
            let (qp, dp, cp) = (&qp, &dp, &cp);
            let n = rows.len();
            // SAFETY: each chunk of rows is written by one worker only, inside the buffers
            // resized above.
            unsafe {
                let q = std::slice::from_raw_parts_mut(qp.0.add(rows.start * k), n * k);
                let d = std::slice::from_raw_parts_mut(dp.0.add(rows.start * kb), n * kb);
                let c = std::slice::from_raw_parts_mut(cp.0.add(rows.start * kb), n * kb);
                quant_rows(q, d, c, &x[rows.start * k..rows.end * k]);
            }
        });
    }
}

struct SendI8(*mut i8);
struct SendF32(*mut f32);
struct SendI32(*mut i32);
// SAFETY: the workers write disjoint rows (see `Acts::quantize`).
unsafe impl Sync for SendI8 {}
unsafe impl Sync for SendF32 {}
unsafe impl Sync for SendI32 {}

/// One register-tile invocation: `nr` rows × `nt` column tiles, over the k-blocks `b0..b1`.
/// With `b0 > 0` the sums continue from the values in `out` (the partial sums of blocks
/// `0..b0`, stored exactly as f32), so splitting `k` does not change any result.
#[derive(Clone, Copy)]
struct Args {
    /// Tile block 0 of the first column tile (`[nt][kb]` follow).
    w: *const TileBlock,
    kb: usize,
    b0: usize,
    b1: usize,
    nt: usize,
    /// First row's quantized activations (row stride `k`).
    qa: *const i8,
    k: usize,
    /// First row's block scales (row stride `kb`).
    da: *const f32,
    /// First row's block corrections (row stride `kb`).
    corr: *const i32,
    nr: usize,
    /// Output of the first row and first column (row stride `ldo`).
    out: *mut f32,
    ldo: usize,
    /// Valid output columns from the first column on (columns past it are padding).
    n_valid: usize,
}

impl Args {
    /// The invocation of row `r` × column tile `t` alone.
    ///
    /// # Safety
    /// `r < nr`, `t < nt`.
    unsafe fn sub(&self, r: usize, t: usize) -> Args {
        unsafe {
            Args {
                w: self.w.add(t * self.kb),
                nt: 1,
                qa: self.qa.add(r * self.k),
                da: self.da.add(r * self.kb),
                corr: self.corr.add(r * self.kb),
                nr: 1,
                out: self.out.add(r * self.ldo + t * TILE),
                n_valid: self.n_valid.saturating_sub(t * TILE),
                ..*self
            }
        }
    }
}

/// The reference kernel: the numerics of the module docs, one element at a time.
fn scalar_kernel(a: &Args) {
    for r in 0..a.nr {
        for t in 0..a.nt {
            for c in 0..TILE.min(a.n_valid.saturating_sub(t * TILE)) {
                // SAFETY: (r, t·16 + c) is inside this invocation's output.
                let o = unsafe { a.out.add(r * a.ldo + t * TILE + c) };
                let mut acc = if a.b0 > 0 { unsafe { *o } } else { 0.0 };
                for b in a.b0..a.b1 {
                    // SAFETY: in range by the caller's contract (see `Q8Matrix::block`).
                    let (tb, q, d) = unsafe {
                        (
                            &*a.w.add(t * a.kb + b),
                            std::slice::from_raw_parts(a.qa.add(r * a.k + b * QK), QK),
                            *a.da.add(r * a.kb + b),
                        )
                    };
                    let mut isum = 0i32;
                    for (i, &qi) in q.iter().enumerate() {
                        let w = tb.qs[(i / 4 * TILE + c) * 4 + i % 4] as i32 - 128;
                        isum += w * qi as i32;
                    }
                    acc = (isum as f32 * tb.d[c]).mul_add(d, acc);
                }
                unsafe { *o = acc };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{quantize_rows_generic, Args, TileBlock, QK, TILE};
    use std::arch::x86_64::*;

    /// [`quantize_rows_generic`] compiled for AVX2.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_rows_avx2(
        q: &mut [i8],
        d: &mut [f32],
        corr: &mut [i32],
        x: &[f32],
    ) {
        quantize_rows_generic(q, d, corr, x)
    }

    /// [`quantize_rows_generic`] with AVX-512 intrinsics (the same operations: `x · (1/d)`,
    /// clamp to ±127, round to nearest even).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW; the slices have the lengths of [`super::Quantizer::run`].
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_rows_avx512(
        q: &mut [i8],
        d: &mut [f32],
        corr: &mut [i32],
        x: &[f32],
    ) {
        unsafe {
            let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
            let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
            for (i, (db, cb)) in d.iter_mut().zip(corr.iter_mut()).enumerate() {
                let p = x.as_ptr().add(i * QK);
                let v0 = _mm512_loadu_ps(p);
                let v1 = _mm512_loadu_ps(p.add(16));
                let a = _mm512_max_epu32(
                    _mm512_and_si512(_mm512_castps_si512(v0), abs_mask),
                    _mm512_and_si512(_mm512_castps_si512(v1), abs_mask),
                );
                let amax_bits = _mm512_reduce_max_epu32(a);
                let qp = q.as_mut_ptr().add(i * QK);
                if amax_bits >= 0x7f80_0000 {
                    std::ptr::write_bytes(qp, 0, QK);
                    *db = f32::NAN;
                    *cb = 0;
                    continue;
                }
                let dd = f32::from_bits(amax_bits) / 127.0;
                let id = _mm512_set1_ps(if dd != 0.0 { 1.0 / dd } else { 0.0 });
                // clamp as `f32::clamp` (no NaN here): min(max(v, lo), hi)
                let s0 = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v0, id), lo), hi);
                let s1 = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v1, id), lo), hi);
                let i0 = _mm512_cvtps_epi32(s0); // round to nearest even (default MXCSR)
                let i1 = _mm512_cvtps_epi32(s1);
                _mm_storeu_si128(qp as *mut __m128i, _mm512_cvtepi32_epi8(i0));
                _mm_storeu_si128(qp.add(16) as *mut __m128i, _mm512_cvtepi32_epi8(i1));
                *db = dd;
                *cb = -128 * _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
            }
        }
    }

    /// Lanes of the last tiles that hold real columns.
    #[inline(always)]
    fn valid(n_valid: usize, t: usize) -> usize {
        n_valid.saturating_sub(t * TILE).min(TILE)
    }

    /// The lane mask of the first `n ≤ 16` lanes.
    #[inline(always)]
    fn mask16(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as u16
    }

    /// AVX-512 register tile of `R` rows × `T` column tiles over all of `k`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    unsafe fn tile512<const R: usize, const T: usize>(a: &Args) {
        unsafe {
            let mut facc = [[_mm512_setzero_ps(); T]; R];
            if a.b0 > 0 {
                for (r, row) in facc.iter_mut().enumerate() {
                    for (t, v) in row.iter_mut().enumerate() {
                        let p = a.out.add(r * a.ldo + t * TILE);
                        *v = _mm512_maskz_loadu_ps(mask16(valid(a.n_valid, t)), p);
                    }
                }
            }
            let w: [*const TileBlock; T] = std::array::from_fn(|t| a.w.add(t * a.kb));
            for b in a.b0..a.b1 {
                let mut iacc = [[_mm512_setzero_si512(); T]; R];
                for (r, acc) in iacc.iter_mut().enumerate() {
                    let c = _mm512_set1_epi32(*a.corr.add(r * a.kb + b));
                    *acc = [c; T];
                }
                for g in 0..QK / 4 {
                    let wv: [__m512i; T] = std::array::from_fn(|t| {
                        _mm512_load_si512((*w[t].add(b)).qs.as_ptr().add(g * 64) as *const _)
                    });
                    for (r, acc) in iacc.iter_mut().enumerate() {
                        let x = _mm512_set1_epi32(std::ptr::read_unaligned(
                            a.qa.add(r * a.k + b * QK + g * 4) as *const i32,
                        ));
                        for t in 0..T {
                            acc[t] = _mm512_dpbusd_epi32(acc[t], wv[t], x);
                        }
                    }
                }
                for t in 0..T {
                    let dw = _mm512_load_ps((*w[t].add(b)).d.as_ptr());
                    for r in 0..R {
                        let f = _mm512_mul_ps(_mm512_cvtepi32_ps(iacc[r][t]), dw);
                        let dx = _mm512_set1_ps(*a.da.add(r * a.kb + b));
                        facc[r][t] = _mm512_fmadd_ps(f, dx, facc[r][t]);
                    }
                }
            }
            for (r, row) in facc.iter().enumerate() {
                for (t, v) in row.iter().enumerate() {
                    let p = a.out.add(r * a.ldo + t * TILE);
                    let nv = valid(a.n_valid, t);
                    if nv == TILE {
                        _mm512_storeu_ps(p, *v);
                    } else {
                        _mm512_mask_storeu_ps(p, mask16(nv), *v);
                    }
                }
            }
        }
    }

    /// Runs `tile512::<R, T>` on `a.nr ≤ 4` rows × `a.nt ≤ 4` column tiles.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VNNI; `a` is in range (see `Q8Matrix::block`).
    pub(super) unsafe fn avx512_dispatch(a: &Args) {
        macro_rules! pick {
            ($(($r:literal, $t:literal)),*) => {
                match (a.nr, a.nt) {
                    $(($r, $t) => tile512::<$r, $t>(a),)*
                    // not instantiated: one row × one tile at a time (same results)
                    _ => {
                        for r in 0..a.nr {
                            for t in 0..a.nt {
                                tile512::<1, 1>(&a.sub(r, t));
                            }
                        }
                    }
                }
            };
        }
        unsafe {
            pick!(
                (1, 1),
                (1, 2),
                (1, 3),
                (1, 4),
                (1, 5),
                (1, 6),
                (1, 7),
                (1, 8),
                (2, 1),
                (2, 2),
                (2, 3),
                (2, 4),
                (3, 1),
                (3, 2),
                (3, 3),
                (3, 4),
                (4, 1),
                (4, 2),
                (4, 3),
                (4, 4),
                (5, 1),
                (5, 2),
                (6, 1),
                (6, 2),
                (7, 1),
                (8, 1)
            )
        }
    }

    /// AVX2 register tile of `R` rows × 1 column tile (two 8-lane halves); `VNNI` selects
    /// `vpdpbusd` (AVX-VNNI) over `vpmaddubsw` + `vpmaddwd`.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    unsafe fn tile256_vnni<const R: usize>(a: &Args) {
        unsafe { tile256_body::<R, true>(a) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile256_plain<const R: usize>(a: &Args) {
        unsafe { tile256_body::<R, false>(a) }
    }

    #[inline(always)]
    unsafe fn tile256_body<const R: usize, const VNNI: bool>(a: &Args) {
        unsafe {
            let mut facc = [[_mm256_setzero_ps(); 2]; R];
            let nv = valid(a.n_valid, 0);
            if a.b0 > 0 {
                for (r, row) in facc.iter_mut().enumerate() {
                    let mut tmp = [0f32; TILE];
                    std::ptr::copy_nonoverlapping(a.out.add(r * a.ldo), tmp.as_mut_ptr(), nv);
                    *row = [
                        _mm256_loadu_ps(tmp.as_ptr()),
                        _mm256_loadu_ps(tmp.as_ptr().add(8)),
                    ];
                }
            }
            let ones = _mm256_set1_epi16(1);
            let flip = _mm256_set1_epi8(-128);
            for b in a.b0..a.b1 {
                let tb = &*a.w.add(b);
                let mut iacc = [[_mm256_setzero_si256(); 2]; R];
                if VNNI {
                    for (r, acc) in iacc.iter_mut().enumerate() {
                        let c = _mm256_set1_epi32(*a.corr.add(r * a.kb + b));
                        *acc = [c; 2];
                    }
                }
                for g in 0..QK / 4 {
                    let p = tb.qs.as_ptr().add(g * 64);
                    let wv = [
                        _mm256_load_si256(p as *const __m256i),
                        _mm256_load_si256(p.add(32) as *const __m256i),
                    ];
                    // signed weights and their magnitudes (for the maddubs path)
                    let ws = [_mm256_xor_si256(wv[0], flip), _mm256_xor_si256(wv[1], flip)];
                    let wa = [_mm256_abs_epi8(ws[0]), _mm256_abs_epi8(ws[1])];
                    for (r, acc) in iacc.iter_mut().enumerate() {
                        let x = _mm256_set1_epi32(std::ptr::read_unaligned(
                            a.qa.add(r * a.k + b * QK + g * 4) as *const i32,
                        ));
                        for h in 0..2 {
                            if VNNI {
                                acc[h] = _mm256_dpbusd_avx_epi32(acc[h], wv[h], x);
                            } else {
                                let s = _mm256_sign_epi8(x, ws[h]);
                                let p16 = _mm256_maddubs_epi16(wa[h], s);
                                acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(p16, ones));
                            }
                        }
                    }
                }
                for h in 0..2 {
                    let dw = _mm256_load_ps(tb.d.as_ptr().add(h * 8));
                    for r in 0..R {
                        let f = _mm256_mul_ps(_mm256_cvtepi32_ps(iacc[r][h]), dw);
                        let dx = _mm256_set1_ps(*a.da.add(r * a.kb + b));
                        facc[r][h] = _mm256_fmadd_ps(f, dx, facc[r][h]);
                    }
                }
            }
            for (r, row) in facc.iter().enumerate() {
                let p = a.out.add(r * a.ldo);
                if nv == TILE {
                    _mm256_storeu_ps(p, row[0]);
                    _mm256_storeu_ps(p.add(8), row[1]);
                } else {
                    let mut tmp = [0f32; TILE];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), row[0]);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), row[1]);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), p, nv);
                }
            }
        }
    }

    /// # Safety
    /// The CPU has AVX2 + FMA (+ AVX-VNNI when `VNNI`); `a` is in range; `a.nr ≤ 2`.
    pub(super) unsafe fn avx2_dispatch<const VNNI: bool>(a: &Args) {
        for t in 0..a.nt {
            let mut r = 0;
            while r < a.nr {
                // SAFETY: r < nr, t < nt.
                let mut s = unsafe { a.sub(r, t) };
                s.nr = (a.nr - r).min(2);
                unsafe {
                    match (VNNI, s.nr) {
                        (true, 1) => tile256_vnni::<1>(&s),
                        (true, _) => tile256_vnni::<2>(&s),
                        (false, 1) => tile256_plain::<1>(&s),
                        (false, _) => tile256_plain::<2>(&s),
                    }
                }
                r += s.nr;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (splitmix64) of values in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
        /// Values with a spread of magnitudes (some blocks small, some large, some outliers).
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n)
                .map(|i| {
                    let scale = match (i / QK) % 5 {
                        0 => 0.01,
                        1 => 1.0,
                        2 => 30.0,
                        _ => 0.3,
                    };
                    let v = self.next() * scale;
                    if i % 97 == 5 {
                        v * 8.0
                    } else {
                        v
                    }
                })
                .collect()
        }
    }

    fn kernels() -> Vec<Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.available()).collect()
    }

    fn f32_matmul(w: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[c * k + i] as f64)
                    .sum::<f64>();
            }
        }
        out
    }

    #[test]
    fn every_kernel_matches_the_scalar_reference_bit_for_bit() {
        let mut rng = Rng(1);
        eprintln!("kernels: {:?} (best {:?})", kernels(), Kernel::best());
        for &k in &[32, 896, 4864] {
            for &n in &[1, 5, 64, 1000] {
                let w = rng.vec(n * k);
                let q = Q8Matrix::from_f32(&w, n, k).unwrap();
                for &m in &[1, 3, 8, 20, 33] {
                    let x = rng.vec(m * k);
                    let mut want = vec![f32::NAN; m * n];
                    q.matmul_with(Kernel::Scalar, &x, m, &mut want).unwrap();
                    for kern in kernels() {
                        let mut got = vec![f32::NAN; m * n];
                        q.matmul_with(kern, &x, m, &mut got).unwrap();
                        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                g.to_bits() == e.to_bits(),
                                "{kern:?} m={m} k={k} n={n} at ({}, {}): {g} vs {e}",
                                i / n,
                                i % n
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn activation_quantizers_agree_bit_for_bit() {
        let mut rng = Rng(6);
        let mut x = rng.vec(QK * 200);
        // exact ties after scaling (scale 1): 0.5, 1.5, 2.5, ... and their negatives
        x[..QK].copy_from_slice(&std::array::from_fn::<f32, QK, _>(|i| match i {
            0 => 127.0,
            _ => (i as f32 - 16.0) + 0.5,
        }));
        x[QK..2 * QK].fill(0.0);
        x[2 * QK + 7] = f32::NAN;
        x[3 * QK + 1] = f32::NEG_INFINITY;
        x[4 * QK + 3] = 1e-40; // subnormal
        let kb = x.len() / QK;
        let run = |qz: Quantizer| {
            let (mut q, mut d, mut c) = (vec![0i8; x.len()], vec![0f32; kb], vec![0i32; kb]);
            qz.run(&mut q, &mut d, &mut c, &x);
            (q, d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), c)
        };
        let want = run(Quantizer::Portable);
        assert_eq!(
            &want.0[..QK],
            &std::array::from_fn::<i8, QK, _>(|i| match i {
                0 => 127,
                _ => {
                    let v = i as i32 - 16; // v + 0.5 rounds to the even neighbour
                    (if v % 2 == 0 { v } else { v + 1 }) as i8
                }
            })
        );
        assert!(f32::from_bits(want.1[2]).is_nan() && f32::from_bits(want.1[3]).is_nan());
        assert_eq!(want.1[1], 0);
        assert_eq!(run(Quantizer::best()), want, "{:?}", Quantizer::best());
        #[cfg(target_arch = "x86_64")]
        if Kernel::Avx2.available() {
            assert_eq!(run(Quantizer::Avx2), want);
        }
    }

    #[test]
    fn close_to_the_f32_matmul_within_the_quantization_bound() {
        let mut rng = Rng(2);
        for &(m, n, k) in &[(1, 5, 32), (3, 64, 896), (8, 1000, 896), (33, 17, 4864)] {
            let w = rng.vec(n * k);
            let x = rng.vec(m * k);
            let q = Q8Matrix::from_f32(&w, n, k).unwrap();
            let mut got = vec![0f32; m * n];
            q.matmul(&x, m, &mut got).unwrap();
            let exact = f32_matmul(&w, &x, m, n, k);
            let amax = |v: &[f32]| v.iter().fold(0f32, |a, x| a.max(x.abs())) as f64;
            for r in 0..m {
                for c in 0..n {
                    // |xw - xq·wq| ≤ |x|·dw/2 + |w|·dx/2 + dx·dw/4 per product, rounding to
                    // nearest; plus f32 rounding of the sums.
                    let mut bound = 0f64;
                    let mut mag = 0f64;
                    for b in 0..k / QK {
                        let xs = &x[r * k + b * QK..r * k + (b + 1) * QK];
                        let ws = &w[c * k + b * QK..c * k + (b + 1) * QK];
                        let (dx, dw) = (amax(xs) / 127.0, amax(ws) / 127.0);
                        for (&xi, &wi) in xs.iter().zip(ws) {
                            bound += xi.abs() as f64 * dw / 2.0
                                + wi.abs() as f64 * dx / 2.0
                                + dx * dw / 4.0;
                            mag += (xi as f64 * wi as f64).abs();
                        }
                    }
                    let err = (got[r * n + c] as f64 - exact[r * n + c]).abs();
                    assert!(
                        err <= bound * 1.01 + mag * 1e-5,
                        "m={m} n={n} k={k} ({r}, {c}): err {err} > bound {bound}"
                    );
                }
            }
        }
    }

    #[test]
    fn rows_are_independent_of_the_batch() {
        let mut rng = Rng(3);
        for &(n, k) in &[(1000, 896), (37, 4864), (5, 32)] {
            let w = rng.vec(n * k);
            let q = Q8Matrix::from_f32(&w, n, k).unwrap();
            let m = 70; // more than one row block, a ragged last register tile
            let x = rng.vec(m * k);
            for kern in kernels() {
                let mut all = vec![0f32; m * n];
                q.matmul_with(kern, &x, m, &mut all).unwrap();
                for r in [0, 1, 5, 32, 63, 64, 69] {
                    let mut one = vec![0f32; n];
                    q.matmul_with(kern, &x[r * k..(r + 1) * k], 1, &mut one)
                        .unwrap();
                    assert!(
                        one.iter()
                            .zip(&all[r * n..(r + 1) * n])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{kern:?} n={n} k={k}: row {r} alone differs from row {r} of {m}"
                    );
                    // the same row at another position of another batch
                    let mut x3 = rng.vec(3 * k);
                    x3[2 * k..].copy_from_slice(&x[r * k..(r + 1) * k]);
                    let mut three = vec![0f32; 3 * n];
                    q.matmul_with(kern, &x3, 3, &mut three).unwrap();
                    assert!(
                        three[2 * n..]
                            .iter()
                            .zip(&one)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{kern:?} n={n} k={k}: row {r} in a batch of 3 differs"
                    );
                }
            }
        }
    }

    #[test]
    fn agrees_with_candle_q8_0() {
        use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
        use candle_core::{Device, Module, Tensor};
        let mut rng = Rng(4);
        for &(m, n, k) in &[(1, 64, 896), (8, 1000, 896), (3, 5, 4864), (33, 64, 256)] {
            let w = rng.vec(n * k);
            let x = rng.vec(m * k);
            let q = Q8Matrix::from_f32(&w, n, k).unwrap();
            let mut ours = vec![0f32; m * n];
            q.matmul(&x, m, &mut ours).unwrap();
            let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
            let qm =
                QMatMul::from_qtensor(QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap()).unwrap();
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let theirs = qm
                .forward(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let exact = f32_matmul(&w, &x, m, n, k);
            let rms = |v: &mut dyn Iterator<Item = f64>| {
                let (s, c) = v.fold((0f64, 0usize), |(s, c), d| (s + d * d, c + 1));
                (s / c as f64).sqrt()
            };
            let scale = rms(&mut exact.iter().copied());
            let d_ours = rms(&mut ours.iter().zip(&exact).map(|(a, b)| *a as f64 - b));
            let d_candle = rms(&mut theirs.iter().zip(&exact).map(|(a, b)| *a as f64 - b));
            let d_both = rms(&mut ours.iter().zip(&theirs).map(|(a, b)| (*a - *b) as f64));
            eprintln!(
                "m={m} n={n} k={k}: rms err ours {:.2e} candle {:.2e} between {:.2e} (of {scale:.2e})",
                d_ours, d_candle, d_both
            );
            // candle quantizes the activations per 256 values (Q8_K) when k % 256 == 0 and
            // n % 16 == 0, so the two differ by about candle's own quantization error.
            assert!(
                d_both <= 0.02 * scale,
                "ours vs candle: {d_both} of {scale}"
            );
            assert!(
                d_ours <= 1.5 * d_candle + 1e-6 * scale,
                "ours {d_ours} vs candle {d_candle}"
            );
        }
    }

    #[test]
    fn dequantized_weights_are_within_half_a_step() {
        let mut rng = Rng(5);
        let (n, k) = (21, 96);
        let w = rng.vec(n * k);
        let q = Q8Matrix::from_f32(&w, n, k).unwrap();
        assert_eq!((q.n_out(), q.k()), (n, k));
        assert_eq!(q.bytes(), 2 * 3 * std::mem::size_of::<TileBlock>());
        let dq = q.to_f32();
        for (blk_w, blk_d) in w.chunks_exact(QK).zip(dq.chunks_exact(QK)) {
            let step = blk_w.iter().fold(0f32, |a, x| a.max(x.abs())) / 127.0;
            for (a, b) in blk_w.iter().zip(blk_d) {
                assert!(
                    (a - b).abs() <= step * 0.5001 + 1e-12,
                    "{a} vs {b} (step {step})"
                );
            }
        }
        let t =
            candle_core::Tensor::from_vec(w.clone(), (n, k), &candle_core::Device::Cpu).unwrap();
        let qt = Q8Matrix::from_tensor(&t).unwrap();
        assert_eq!(qt.to_f32(), dq);
        let x = rng.vec(2 * 3 * k);
        let xt =
            candle_core::Tensor::from_vec(x.clone(), (2, 3, k), &candle_core::Device::Cpu).unwrap();
        let y = qt.forward(&xt).unwrap();
        assert_eq!(y.dims(), &[2, 3, n]);
        let mut want = vec![0f32; 6 * n];
        q.matmul(&x, 6, &mut want).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    }

    #[test]
    fn from_qtensor_takes_q8_0_blocks_exactly() {
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        let mut rng = Rng(7);
        let (n, k) = (37, 896);
        let w = rng.vec(n * k);
        let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
        let q8 = QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap();
        let ours = Q8Matrix::from_qtensor(&q8).unwrap();
        let theirs = q8.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
        assert_eq!(ours.to_f32(), theirs.to_vec1::<f32>().unwrap());
        // another format goes through f32
        let q4 = QTensor::quantize(&wt, GgmlDType::Q4_0).unwrap();
        let from_q4 = Q8Matrix::from_qtensor(&q4).unwrap();
        let deq = q4.dequantize(&Device::Cpu).unwrap();
        assert_eq!(
            from_q4.to_f32(),
            Q8Matrix::from_tensor(&deq).unwrap().to_f32()
        );
        // a large matrix is built in parallel, the same as serially
        let (n, k) = (300, 4096);
        let w = rng.vec(n * k);
        let big = Q8Matrix::from_f32(&w, n, k).unwrap();
        for col in [0, 17, 299] {
            let one = Q8Matrix::from_f32(&w[col * k..(col + 1) * k], 1, k).unwrap();
            assert_eq!(one.to_f32(), big.to_f32()[col * k..(col + 1) * k]);
        }
    }

    #[test]
    fn zeros_and_non_finite_values_do_not_panic() {
        let (n, k) = (3, 64);
        let mut w = vec![0f32; n * k];
        w[k] = f32::NAN;
        w[2 * k + 1] = f32::INFINITY;
        let q = Q8Matrix::from_f32(&w, n, k).unwrap();
        let mut x = vec![0f32; 2 * k];
        x[3] = f32::NEG_INFINITY;
        for kern in kernels() {
            let mut out = vec![1f32; 2 * n];
            q.matmul_with(kern, &x, 2, &mut out).unwrap();
            assert_eq!(out[n], 0.0, "{kern:?}: zero row times zero weights");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let w = vec![0.5f32; 4 * 64];
        assert!(Q8Matrix::from_f32(&w, 4, 64).is_ok());
        assert!(matches!(
            Q8Matrix::from_f32(&w, 8, 64),
            Err(ModelError::Request(_))
        ));
        assert!(matches!(
            Q8Matrix::from_f32(&w, 4, 63),
            Err(ModelError::Request(_))
        ));
        assert!(matches!(
            Q8Matrix::from_f32(&w[..8 * 30], 8, 30),
            Err(ModelError::Request(_))
        ));
        assert!(matches!(
            Q8Matrix::from_f32(&[], 0, 64),
            Err(ModelError::Request(_))
        ));
        assert!(matches!(
            Q8Matrix::from_f32(&[], 4, 0),
            Err(ModelError::Request(_))
        ));
        let t = candle_core::Tensor::zeros(
            (2, 4, 64),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert!(Q8Matrix::from_tensor(&t).is_err());
        let q = Q8Matrix::from_f32(&w, 4, 64).unwrap();
        let x = vec![1f32; 2 * 64];
        let mut out = vec![0f32; 2 * 4];
        assert!(q.matmul(&x, 2, &mut out).is_ok());
        assert!(matches!(
            q.matmul(&x, 3, &mut out),
            Err(ModelError::Request(_))
        ));
        assert!(matches!(
            q.matmul(&x[..64], 2, &mut out),
            Err(ModelError::Request(_))
        ));
        assert!(matches!(
            q.matmul(&x, 2, &mut out[..7]),
            Err(ModelError::Request(_))
        ));
        assert!(q.matmul(&[], 0, &mut []).is_ok());
        let xt =
            candle_core::Tensor::zeros((2, 32), candle_core::DType::F32, &candle_core::Device::Cpu)
                .unwrap();
        assert!(q.forward(&xt).is_err());
    }
}
