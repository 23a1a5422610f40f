//! Shared test support for Kiln: an ONNX model builder ([`onnx`]).

pub mod onnx;
