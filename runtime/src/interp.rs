//! Running a checked model in a caller-provided arena.

use heapless::Vec;

use crate::error::Error;
use crate::format::{OpDef, Operand, Space, TensorDef, ARENA_ALIGN};
use crate::model::Model;
use crate::ops::{OpIo, Resolver};

/// One op's output as an observer sees it right after the op ran.
#[derive(Debug)]
pub struct TensorView<'x> {
    /// Position of the op in execution order.
    pub op_index: u16,
    /// Index of the tensor the op wrote (`Model::tensor`).
    pub tensor: u16,
    pub bytes: &'x [u8],
}

/// Inference state: a model plus the arena it runs in. No other state, nothing static, nothing allocated.
pub struct Interpreter<'m, 'a> {
    model: &'m Model<'m>,
    arena: &'a mut [u8],
}

impl<'m, 'a> Interpreter<'m, 'a> {
    /// # Errors
    /// [`Error::ArenaTooSmall`] or [`Error::ArenaMisaligned`] (the arena must be 4-byte aligned).
    pub fn new(model: &'m Model<'m>, arena: &'a mut [u8]) -> Result<Self, Error> {
        let need = model.arena_bytes();
        if arena.len() < need {
            return Err(Error::ArenaTooSmall {
                need: need as u32,
                have: arena.len() as u32,
            });
        }
        if !(arena.as_ptr() as usize).is_multiple_of(ARENA_ALIGN) {
            return Err(Error::ArenaMisaligned {
                address: arena.as_ptr() as usize as u32,
            });
        }
        Ok(Interpreter { model, arena })
    }

    pub fn model(&self) -> &'m Model<'m> {
        self.model
    }

    fn io(&self, index: usize, input: bool) -> Result<TensorDef<'m>, Error> {
        if input {
            self.model.input(index)
        } else {
            self.model.output(index)
        }
    }

    /// The bytes of graph input `index`, to fill before [`Self::invoke`] (int8 or little-endian f32, as
    /// `Model::input(index).dtype` says, in the model's own layout). Inference may overwrite them (the arena is
    /// reused, and ops run in place): fill them before every invoke.
    pub fn input_mut(&mut self, index: usize) -> Result<&mut [u8], Error> {
        let t = self.io(index, true)?;
        Ok(&mut self.arena[range(&t.data)])
    }

    /// Copies `data` into graph input `index`.
    pub fn set_input(&mut self, index: usize, data: &[u8]) -> Result<(), Error> {
        let dst = self.input_mut(index)?;
        if dst.len() != data.len() {
            return Err(Error::IoSize {
                index: index as u8,
                expected: dst.len() as u32,
                found: data.len() as u32,
            });
        }
        dst.copy_from_slice(data);
        Ok(())
    }

    /// The bytes of graph output `index`, valid after [`Self::invoke`].
    pub fn output(&self, index: usize) -> Result<&[u8], Error> {
        let t = self.io(index, false)?;
        Ok(&self.arena[range(&t.data)])
    }

    /// Runs every op once.
    pub fn invoke(&mut self) -> Result<(), Error> {
        self.invoke_observed(|_| {})
    }

    /// Runs every op once, showing each op's output to `observer` right after the op ran (calibration, per-layer
    /// debugging, per-op timing).
    pub fn invoke_observed(
        &mut self,
        mut observer: impl FnMut(TensorView<'_>),
    ) -> Result<(), Error> {
        let (blob, resolver) = (self.model.blob(), self.model.resolver());
        // Each op is decoded into the same `op` (ops are large; moving them costs as much as decoding).
        let (mut ops, mut op, mut index) = (self.model.ops(), crate::model::empty_op(), 0u16);
        while ops.next_into(&mut op) {
            run_op(&op, blob, self.arena, &resolver)?;
            let bytes = &self.arena[range(&op.output)];
            observer(TensorView {
                op_index: index,
                tensor: op.output_tensor,
                bytes,
            });
            index = index.wrapping_add(1);
        }
        Ok(())
    }
}

fn range(o: &Operand) -> core::ops::Range<usize> {
    o.offset as usize..o.end() as usize
}

/// Splits the arena around the op's output so its inputs can be borrowed at the same time (the loader checked that
/// the output overlaps no arena input and that everything is in bounds), then runs the op's kernel from `resolver`.
fn run_op(op: &OpDef<'_>, blob: &[u8], arena: &mut [u8], resolver: &Resolver) -> Result<(), Error> {
    let out = range(&op.output);
    // In place (the loader allowed it for this op): input 0 is the output buffer itself.
    let in_place = crate::ops::runs_in_place(op);
    let (before, rest) = arena.split_at_mut(out.start);
    let (output, after) = rest.split_at_mut(out.end - out.start);
    let (before, after): (&[u8], &[u8]) = (before, after);
    let mut inputs: Vec<&[u8], { crate::format::MAX_OP_INPUTS }> = Vec::new();
    for (i, input) in op.inputs.iter().enumerate() {
        let r = range(input);
        let slice = match input.space {
            _ if r.is_empty() || (in_place && i == 0) => &[],
            Space::Blob => &blob[r],
            Space::Arena if r.end <= out.start => &before[r],
            Space::Arena => &after[r.start - out.end..r.end - out.end],
        };
        // Capacity equals OpDef::inputs' capacity, so this cannot fail.
        let _ = inputs.push(slice);
    }
    resolver.eval(
        op,
        OpIo {
            inputs,
            blob,
            output,
            in_place,
        },
    )
}
