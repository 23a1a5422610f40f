//! kiln-compiler: ONNX in, a checked `.kiln` model file out.
//!
//! Pipeline: [`import`] (ONNX through tract's decluttered typed model -> [`ir::Graph`]) -> [`passes`] (fold
//! BatchNorm, fuse activations) -> [`lower`] (physical layout, channels-last where kernels want it) -> [`emit`]
//! (f32, or int8 calibrated by [`compile::calibrate`], optionally with [`mixed`] f32 layers) -> [`plan`] (static
//! arena) -> the postcard-encoded, checksummed file `kiln_runtime::format` describes.

pub mod bench;
pub mod compile;
pub mod device;
pub mod emit;
pub mod error;
pub mod eval;
pub mod firmware;
pub mod flash;
pub mod import;
pub mod inspect;
pub mod ir;
pub mod lower;
pub mod mixed;
pub mod monitor;
pub mod npy;
pub mod passes;
pub mod plan;
pub mod prune;
pub mod qdq;
pub mod reference;
pub mod report;
pub mod runner;
