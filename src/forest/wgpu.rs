//! wgpu backend (stub, being written).
use super::backend::{BackendKind, ForestBackend, Input, ToyParams, ToyStats};
use super::{Backup, Expansion, ForestConfig, ForestError, ForestSnapshot, Selection};

pub fn hardware_adapter_available() -> bool {
    false
}
pub fn available() -> Result<(), ForestError> {
    Err(ForestError::Unavailable {
        backend: "wgpu",
        reason: "not built yet".into(),
    })
}

pub struct WgpuForest;

impl WgpuForest {
    pub fn new(_cfg: &ForestConfig) -> Result<WgpuForest, ForestError> {
        available()?;
        Ok(WgpuForest)
    }
}

impl ForestBackend for WgpuForest {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }
    fn description(&self) -> String {
        "wgpu".into()
    }
    fn reset(&mut self, _: &[f32], _: u32) -> Result<(), ForestError> {
        available()
    }
    fn select(&mut self, _: usize) -> Result<(), ForestError> {
        available()
    }
    fn selection(&mut self, _: usize) -> Result<Selection, ForestError> {
        available().map(|_| unreachable!())
    }
    fn expand(&mut self, _: Input<'_, Expansion>, _: usize) -> Result<(), ForestError> {
        available()
    }
    fn backup(&mut self, _: Input<'_, Backup>, _: usize) -> Result<(), ForestError> {
        available()
    }
    fn reroot(&mut self, _: &[u32]) -> Result<(), ForestError> {
        available()
    }
    fn read_back(&mut self) -> Result<ForestSnapshot, ForestError> {
        available().map(|_| unreachable!())
    }
    fn sync(&mut self) -> Result<(), ForestError> {
        available()
    }
    fn toy_reset(&mut self, _: &ToyParams) -> Result<(), ForestError> {
        available()
    }
    fn toy_evaluate(&mut self, _: usize, _: bool) -> Result<(), ForestError> {
        available()
    }
    fn toy_stats(&mut self) -> Result<ToyStats, ForestError> {
        available().map(|_| unreachable!())
    }
}
