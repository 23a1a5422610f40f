//! What `kiln compile --board`, `kiln firmware`, `kiln flash` and `kiln run --board` share: a model (ONNX,
//! compiled here, or `.kiln`), a firmware built around it for a board, and the fit check between them.

use std::path::{Path, PathBuf};

use kiln_boards::Board;

use crate::compile::{self, CalibMethod};
use crate::emit::Precision;
use crate::error::{input, Error, Result};
use crate::firmware::{self, BuildRequest, Firmware, Options};
use crate::runner::ModelBuf;

/// How to get a `.kiln` model from what the user gave.
pub struct ModelSource<'a> {
    pub path: &'a Path,
    pub precision: Precision,
    pub calib: Option<PathBuf>,
    pub method: CalibMethod,
}

/// The `.kiln` bytes for `src`: read and checked, or compiled from ONNX.
pub fn model_bytes(src: &ModelSource<'_>) -> Result<Vec<u8>> {
    let is_onnx = src
        .path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    if is_onnx {
        let opts = compile::Options {
            precision: src.precision,
            calib: src.calib.clone(),
            method: src.method,
            keep_f32: Default::default(),
        };
        Ok(compile::compile(src.path, &opts)?.bytes)
    } else {
        Ok(ModelBuf::read(src.path)?.bytes().to_vec())
    }
}

/// Loads a board by name or file, as a bad-input error when it cannot.
pub fn board(name: &str) -> Result<Board> {
    Board::load(name).map_err(|e| input(e.to_string()))
}

/// A firmware image for a board, and where its pieces live until the command ends.
pub struct Built {
    pub board: Board,
    pub firmware: Firmware,
    /// Holds the model and ELF unless the caller asked for the ELF elsewhere.
    pub dir: tempfile::TempDir,
}

/// Builds the firmware for `board_arg` around `model`, prints the fit table with `say`, and fails (bad input,
/// exit 2) with the numbers when it does not fit. The ELF goes to `elf_out` when given.
pub fn build_checked(
    board_arg: &str,
    model: &[u8],
    options: Options,
    elf_out: Option<&Path>,
    mut say: impl FnMut(&str),
) -> Result<Built> {
    let board = board(board_arg)?;
    let dir = tempfile::tempdir().map_err(|e| Error::Internal(e.into()))?;
    let model_path = dir.path().join("model.kiln");
    std::fs::write(&model_path, model).map_err(|e| Error::Internal(e.into()))?;
    let elf = dir.path().join("firmware.elf");
    let fw = firmware::build(
        &BuildRequest {
            board: &board,
            board_arg,
            model: &model_path,
            options,
        },
        &elf,
    )?;
    say(&fw.footprint.table(&board));
    if !fw.footprint.fits(&board) {
        return Err(input(fw.footprint.misfit(&board)));
    }
    let firmware = match elf_out {
        Some(out) => {
            crate::npy::write_atomic(
                out,
                &std::fs::read(&fw.elf).map_err(|e| Error::Internal(e.into()))?,
            )?;
            Firmware {
                elf: out.to_owned(),
                ..fw
            }
        }
        None => fw,
    };
    Ok(Built {
        board,
        firmware,
        dir,
    })
}
