//! One module per op: `check` (run once at load: sizes against shapes, parameter ranges, blob spans in bounds and
//! aligned) and `eval` (run every inference: slices in, kernel call, no re-checking beyond cheap slice casts).
//!
//! The loader (`crate::model`) has already checked, for every op, that each operand lies inside its region (arena
//! or blob), that arena operands are `ARENA_ALIGN`-aligned, and that the output is in the arena and overlaps no input.
//!
//! `check` reports the first problem found, with the field it concerns: [`Error::Arity`], [`Error::BadParam`]
//! (zero sizes/strides, ranks outside `1..=MAX_RANK`, bad permutations/axes, zero points outside `-128..=127`,
//! invalid requantisation pairs, `act_min > act_max`, a window or dot product too large for the int8 kernels'
//! exact `i32` sums), [`Error::SizeMismatch`] (an operand's or span's byte length differs from its shape's),
//! [`Error::OutOfBounds`] (a span leaves the blob) and [`Error::Misaligned`] (an `i32`/`f32` span or operand not
//! 4-byte aligned). After `check` succeeds, `eval` cannot index out of bounds or overflow; its only errors
//! (carrying op index [`common::EVAL_OP`]) are for slices that do not match what was checked.
//!
//! ## Resolver
//! A [`Resolver`] is the set of op kinds, and of kernels per kind, a runtime links: a static table of
//! [`Registration`]s (decode, check and eval function pointers for one op kind and a [`KernelSet`]: some of its
//! [`KernelS8`] choices, on ops writing a separate output and/or running in place), TensorFlow Lite Micro's op
//! resolver made static. The loader decodes, checks and runs an op only through its model's resolver and refuses an
//! op the resolver lacks ([`Error::OpNotLinked`], never a panic), so whatever no registration names is never
//! referenced and the linker drops it: a firmware built with [`Resolver::new`] over the registrations its model
//! needs ([`Registration::of_set`] in a `static`, as `firmware/build.rs` generates) carries only those op kinds
//! (their decoders and checks too) and, within a kind, only the kernels of its [`KernelSet`] (see `op_kind!` for
//! how far the op modules' `eval`s let that go). [`Resolver::all`] (what [`crate::Model::from_bytes`], [`check`]
//! and [`eval`] use) has every kind with every kernel and mode its `check` and the loader can allow.
//!
//! Adding an op kind: its [`OpId`] (in `OpKind`'s order), its `op_kind!` line (kernels it may choose; `in_place`
//! if [`in_place_ok`] may accept it) and its arm in `per_kind!`.

mod common;
mod conv;
mod elementwise;
mod movement;
mod pool;
#[cfg(test)]
mod tests;

pub use common::EVAL_OP;
pub use elementwise::softmax_mode;

use heapless::Vec;

use crate::error::Error;
use crate::format::{KernelS8, OpDef, OpKind, MAX_OP_INPUTS};
use crate::model::de::{self, De};
use common::Ck;
use pool::PoolKind;

/// The bytes one op reads and writes.
pub struct OpIo<'x> {
    /// One slice per `OpDef::inputs` entry, exactly `len` bytes, from the arena or the blob.
    pub inputs: Vec<&'x [u8], MAX_OP_INPUTS>,
    /// The whole weight blob (for the op's `Span`s).
    pub blob: &'x [u8],
    /// Exactly `OpDef::output.len` bytes of the arena.
    pub output: &'x mut [u8],
    /// The op runs in place: its input 0 is `output` itself (`inputs[0]` is then empty). Only ops
    /// [`in_place_ok`] accepts, checked at load.
    pub in_place: bool,
}

/// Whether `kind` may write its output over its input 0 (same offset and size in the arena): an int8 conv on
/// an optimised kernel whose geometry [`crate::kernels::fast::in_place_fits`] accepts, or an int8 Add/Sub on
/// the table kernel (no broadcasting: element `i` reads element `i`).
pub fn in_place_ok(kind: &crate::format::OpKind) -> bool {
    use crate::format::{KernelS8, OpKind};
    match kind {
        OpKind::BinaryS8(b) => {
            b.kernel == KernelS8::Table && crate::kernels::fast_elementwise::add_table_fits(b)
        }
        OpKind::Conv2dS8(c) => {
            matches!(c.kernel, KernelS8::Dot | KernelS8::Depthwise)
                && crate::kernels::fast::in_place_fits(&c.geom)
        }
        _ => false,
    }
}

/// Checks op `index` once, at load, with every op kind and kernel ([`Resolver::all`]).
pub fn check(index: u16, op: &OpDef, blob: &[u8]) -> Result<(), Error> {
    Resolver::all().check(index, op, blob)
}

/// Runs a checked op, with every op kind and kernel ([`Resolver::all`]).
pub fn eval(op: &OpDef, io: OpIo<'_>) -> Result<(), Error> {
    Resolver::all().eval(op, io)
}

/// One list of the op kinds, in [`OpKind`]'s order, with their names: [`OpId`], [`OpId::ALL`], [`OpId::of`] and
/// [`OpId::name`] are made from it, so a new kind is one line here (and its variant in `OpKind`).
macro_rules! op_ids {
    ($($variant:ident $(($params:tt))? => $name:literal,)+) => {
        /// An op kind without its parameters: the variants of [`OpKind`], in its order, so `OpId as u32` is the
        /// variant index the `.kiln` encoding stores. Append only, in step with [`OpKind`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        pub enum OpId {
            $($variant,)+
        }

        impl OpId {
            /// Every op kind, by variant index.
            pub const ALL: [OpId; [$(OpId::$variant),+].len()] = [$(OpId::$variant),+];

            pub fn of(kind: &OpKind) -> OpId {
                match kind {
                    $(OpKind::$variant $(($params))? => OpId::$variant,)+
                }
            }

            /// The kind's name, `<op>[_variant]_<dtype>` (what [`OpKind::name`] returns).
            pub fn name(self) -> &'static str {
                match self {
                    $(OpId::$variant => $name,)+
                }
            }
        }
    };
}

op_ids! {
    Conv2dS8(_) => "conv2d_s8",
    Conv2dF32(_) => "conv2d_f32",
    FullyConnectedS8(_) => "fully_connected_s8",
    FullyConnectedF32(_) => "fully_connected_f32",
    BinaryS8(_) => "binary_s8",
    BinaryF32(_) => "binary_f32",
    LookupS8(_) => "lookup_s8",
    UnaryF32(_) => "unary_f32",
    SoftmaxS8(_) => "softmax_s8",
    SoftmaxF32(_) => "softmax_f32",
    MaxPoolS8(_) => "max_pool_s8",
    MaxPoolF32(_) => "max_pool_f32",
    AvgPoolS8(_) => "avg_pool_s8",
    AvgPoolF32(_) => "avg_pool_f32",
    ReduceMeanS8(_) => "reduce_mean_s8",
    ReduceMeanF32(_) => "reduce_mean_f32",
    Pad(_) => "pad",
    Concat(_) => "concat",
    Slice(_) => "slice",
    Transpose(_) => "transpose",
    Copy => "copy",
    QuantizeS8(_) => "quantize_s8",
    DequantizeS8(_) => "dequantize_s8",
}

impl OpId {
    /// The kind with variant index `index`, if this runtime knows one.
    pub const fn from_index(index: u32) -> Option<OpId> {
        if (index as usize) < Self::ALL.len() {
            Some(Self::ALL[index as usize])
        } else {
            None
        }
    }
}

/// The kernel an op runs with: its [`KernelS8`] choice for the ops that have one, else `Reference`.
pub fn kernel_of(kind: &OpKind) -> KernelS8 {
    match kind {
        OpKind::Conv2dS8(p) => p.kernel,
        OpKind::FullyConnectedS8(p) => p.kernel,
        OpKind::BinaryS8(p) => p.kernel,
        OpKind::MaxPoolS8(p)
        | OpKind::MaxPoolF32(p)
        | OpKind::AvgPoolS8(p)
        | OpKind::AvgPoolF32(p) => p.kernel,
        _ => KernelS8::Reference,
    }
}

/// Whether `op` runs in place: its input 0 is its output (same arena bytes). The loader allows that only for the
/// ops [`in_place_ok`] accepts; such an op's `eval` gets [`OpIo::in_place`].
pub fn runs_in_place(op: &OpDef<'_>) -> bool {
    op.inputs.first().is_some_and(|i| {
        i.space == crate::format::Space::Arena
            && i.offset == op.output.offset
            && i.len == op.output.len
            && op.output.len > 0
    })
}

/// What a registration runs: a set of [`KernelS8`] choices (bit `kernel as u8`), and whether its ops write a separate
/// output ([`KernelSet::SEPARATE`]), their input 0 ([`KernelSet::IN_PLACE`]), or both: the optimised kernels have an
/// in-place variant of their own.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KernelSet(u8);

impl KernelSet {
    const KERNEL_BITS: u8 = 0x1F;
    /// Ops writing an output separate from their inputs.
    pub const SEPARATE: KernelSet = KernelSet(0x40);
    /// Ops writing their output over their input 0 ([`runs_in_place`]).
    pub const IN_PLACE: KernelSet = KernelSet(0x80);

    /// `kernels`, on ops writing a separate output.
    pub const fn of(kernels: &[KernelS8]) -> KernelSet {
        let (mut bits, mut i) = (Self::SEPARATE.0, 0);
        while i < kernels.len() {
            bits |= 1 << kernels[i] as u8;
            i += 1;
        }
        KernelSet(bits)
    }

    /// `kernels`, on ops writing a separate output (`separate`) and on ops running in place (`in_place`).
    pub const fn with_modes(kernels: &[KernelS8], separate: bool, in_place: bool) -> KernelSet {
        let mut bits = Self::of(kernels).0 & Self::KERNEL_BITS;
        if separate {
            bits |= Self::SEPARATE.0;
        }
        if in_place {
            bits |= Self::IN_PLACE.0;
        }
        KernelSet(bits)
    }

    pub const fn contains(self, kernel: KernelS8) -> bool {
        self.0 & (1 << kernel as u8) != 0
    }

    /// Whether ops running in place (`true`) or writing a separate output (`false`) are in the set.
    pub const fn has_mode(self, in_place: bool) -> bool {
        mode_linked(self.0, in_place)
    }

    pub const fn union(self, other: KernelSet) -> KernelSet {
        KernelSet(self.0 | other.0)
    }

    pub const fn is_subset(self, of: KernelSet) -> bool {
        self.0 & !of.0 == 0
    }

    pub fn kernels(self) -> impl Iterator<Item = KernelS8> {
        KERNELS.into_iter().filter(move |&k| self.contains(k))
    }
}

impl core::fmt::Debug for KernelSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut set = f.debug_set();
        set.entries(self.kernels());
        if self.has_mode(true) {
            set.entry(&"in place");
        }
        if !self.has_mode(false) {
            set.entry(&"only in place");
        }
        set.finish()
    }
}

/// Every [`KernelS8`], by discriminant.
const KERNELS: [KernelS8; 5] = [
    KernelS8::Reference,
    KernelS8::Dot,
    KernelS8::Depthwise,
    KernelS8::Table,
    KernelS8::Fast,
];

/// Whether `kernel` is in the set with bits `set`, as a `match` on the kernel: with `set` a constant and one kernel
/// in it, the test pins the kernel for the code after it.
#[inline(always)]
pub(crate) const fn linked(set: u8, kernel: KernelS8) -> bool {
    match kernel {
        KernelS8::Reference => set & 1 != 0,
        KernelS8::Dot => set & 2 != 0,
        KernelS8::Depthwise => set & 4 != 0,
        KernelS8::Table => set & 8 != 0,
        KernelS8::Fast => set & 16 != 0,
    }
}

/// Whether the mode (`in_place` or separate output) is in the set with bits `set`; with `set` a constant and one
/// mode in it, the test pins [`OpIo::in_place`] for the code after it.
#[inline(always)]
pub(crate) const fn mode_linked(set: u8, in_place: bool) -> bool {
    if in_place {
        set & KernelSet::IN_PLACE.0 != 0
    } else {
        set & KernelSet::SEPARATE.0 != 0
    }
}

/// Decodes an op's parameters (the bytes after its variant index) into its [`OpKind`].
type DecodeFn = for<'de> fn(&mut De<'de>, &mut OpKind) -> de::Result<()>;
/// Checks op `index` (see [`check`]).
pub type CheckFn = fn(u16, &OpDef<'_>, &[u8]) -> Result<(), Error>;
/// Runs a checked op (see [`eval`]).
pub type EvalFn = fn(&OpDef<'_>, OpIo<'_>) -> Result<(), Error>;

/// The code of one op kind with a set of its kernels: what a [`Resolver`] links for that kind.
#[derive(Clone, Copy)]
pub struct Registration {
    pub op: OpId,
    pub kernels: KernelSet,
    decode: DecodeFn,
    check: CheckFn,
    eval: EvalFn,
}

impl core::fmt::Debug for Registration {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?} {:?}", self.op, self.kernels)
    }
}

/// Decode, check and eval adapters of one op kind, in a module of their own. `decode` reads the kind's parameters;
/// `check` and `eval` take the [`OpDef`] (and refuse another kind); `eval::<SET>` runs the op only with a kernel and
/// mode in `SET` (bits). A firmware links one `eval::<SET>` per kind, the only caller of the op module's `eval`,
/// which is then inlined into it; with a single kernel, or a single mode, in `SET` the tests pin it, and the op
/// module's `match` on it keeps only the code it selects. (With several kernels, the optimiser does not narrow that
/// `match` to them: the op modules would need one `eval` per kernel for that.) `registration(set)` is `None` for a
/// set holding a kernel or mode `check` never allows; `sets` lists the other kernel sets' bits, and `in_place`
/// marks the kinds [`in_place_ok`] may accept.
macro_rules! op_kind {
    // A kind whose parameters choose a kernel (field `kernel`).
    ($m:ident: $variant:ident($p:ident) kernels [$($kernel:ident),+] sets [$($set:literal),+] $($in_place:ident)?,
     check |$ck:ident| $check:expr, eval |$io:ident| $eval:expr) => {
        op_kind!(@module $m: $variant($p) [$($kernel),+] [$($set),+] $($in_place)?, check |$ck| $check, {
            fn eval<const SET: u8>(op: &OpDef<'_>, $io: OpIo<'_>) -> Result<(), Error> {
                match &op.kind {
                    OpKind::$variant($p) if linked(SET, $p.kernel) && mode_linked(SET, $io.in_place) => $eval,
                    _ => Err(Error::UnknownOp { op: EVAL_OP }),
                }
            }
        });
    };
    // A kind with the reference kernel only.
    ($m:ident: $variant:ident($p:ident), check |$ck:ident| $check:expr, eval |$io:ident| $eval:expr) => {
        op_kind!(@module $m: $variant($p) [Reference] [1], check |$ck| $check, {
            fn eval<const SET: u8>(op: &OpDef<'_>, $io: OpIo<'_>) -> Result<(), Error> {
                match &op.kind {
                    OpKind::$variant($p) if !$io.in_place => $eval,
                    _ => Err(Error::UnknownOp { op: EVAL_OP }),
                }
            }
        });
    };
    (@module $m:ident: $variant:ident($p:ident) [$($kernel:ident),+] [$($set:literal),+] $($in_place:ident)?,
     check |$ck:ident| $check:expr, { $($eval_fn:tt)* }) => {
        mod $m {
            use super::*;

            /// Every kernel `check` can allow, and every mode.
            pub const KERNELS: KernelSet = KernelSet::with_modes(
                &[$(KernelS8::$kernel),+],
                true,
                op_kind!(@in_place $($in_place)?),
            );

            // Kinds that never run in place instantiate nothing for the in-place modes (`registration` refuses
            // them before).
            const ONLY_IN_PLACE: u8 = if KERNELS.has_mode(true) { 0x80 } else { 0x40 };
            const BOTH_MODES: u8 = if KERNELS.has_mode(true) { 0xC0 } else { 0x40 };

            fn decode(de: &mut De<'_>, kind: &mut OpKind) -> de::Result<()> {
                *kind = OpKind::$variant(serde::Deserialize::deserialize(de)?);
                Ok(())
            }

            fn check(index: u16, op: &OpDef<'_>, blob: &[u8]) -> Result<(), Error> {
                let $ck = &Ck { op: index, def: op, blob };
                match &op.kind {
                    OpKind::$variant($p) => $check,
                    _ => Err(Error::UnknownOp { op: index }),
                }
            }

            $($eval_fn)*

            pub const fn registration(kernels: KernelSet) -> Option<Registration> {
                if !kernels.is_subset(KERNELS) {
                    return None;
                }
                // The kernel bits, then the modes: separate output (0x40), in place (0x80), both.
                let eval: EvalFn = match (kernels.0 & 0x1F, kernels.0 >> 6) {
                    $(
                        ($set, 1) => eval::<{ $set | 0x40 }>,
                        ($set, 2) => eval::<{ $set | ONLY_IN_PLACE }>,
                        ($set, 3) => eval::<{ $set | BOTH_MODES }>,
                    )+
                    _ => return None,
                };
                Some(Registration { op: OpId::$variant, kernels, decode, check, eval })
            }
        }
    };
    (@in_place) => { false };
    (@in_place in_place) => { true };
}

op_kind!(conv2d_s8: Conv2dS8(p) kernels [Reference, Dot, Depthwise] sets [1, 2, 3, 4, 5, 6, 7] in_place,
    check |ck| conv::check_conv_s8(ck, p), eval |io| conv::eval_conv_s8::<SET>(p, io));
op_kind!(conv2d_f32: Conv2dF32(p),
    check |ck| conv::check_conv_f32(ck, p), eval |io| conv::eval_conv_f32(p, io));
op_kind!(fully_connected_s8: FullyConnectedS8(p) kernels [Reference, Dot] sets [1, 2, 3],
    check |ck| conv::check_fc_s8(ck, p), eval |io| conv::eval_fc_s8::<SET>(p, io));
op_kind!(fully_connected_f32: FullyConnectedF32(p),
    check |ck| conv::check_fc_f32(ck, p), eval |io| conv::eval_fc_f32(p, io));
op_kind!(binary_s8: BinaryS8(p) kernels [Reference, Table] sets [1, 8, 9] in_place,
    check |ck| elementwise::check_binary_s8(ck, p), eval |io| elementwise::eval_binary_s8::<SET>(p, io));
op_kind!(binary_f32: BinaryF32(p),
    check |ck| elementwise::check_binary_f32(ck, p), eval |io| elementwise::eval_binary_f32(p, io));
op_kind!(lookup_s8: LookupS8(p),
    check |ck| elementwise::check_lookup_s8(ck, p), eval |io| elementwise::eval_lookup_s8(p, io));
op_kind!(unary_f32: UnaryF32(p),
    check |ck| { let _ = p; elementwise::check_unary_f32(ck) },
    eval |io| elementwise::eval_unary_f32(*p, io));
op_kind!(softmax_s8: SoftmaxS8(p),
    check |ck| elementwise::check_softmax_s8(ck, p), eval |io| elementwise::eval_softmax_s8(p, io));
op_kind!(softmax_f32: SoftmaxF32(p),
    check |ck| elementwise::check_softmax_f32(ck, p), eval |io| elementwise::eval_softmax_f32(p, io));
op_kind!(max_pool_s8: MaxPoolS8(p) kernels [Reference, Fast] sets [1, 16, 17],
    check |ck| pool::check_pool(ck, p, PoolKind::MaxS8), eval |io| pool::eval_pool::<SET>(p, PoolKind::MaxS8, io));
op_kind!(max_pool_f32: MaxPoolF32(p),
    check |ck| pool::check_pool(ck, p, PoolKind::MaxF32), eval |io| pool::eval_pool::<SET>(p, PoolKind::MaxF32, io));
op_kind!(avg_pool_s8: AvgPoolS8(p) kernels [Reference, Fast] sets [1, 16, 17],
    check |ck| pool::check_pool(ck, p, PoolKind::AvgS8), eval |io| pool::eval_pool::<SET>(p, PoolKind::AvgS8, io));
op_kind!(avg_pool_f32: AvgPoolF32(p),
    check |ck| pool::check_pool(ck, p, PoolKind::AvgF32), eval |io| pool::eval_pool::<SET>(p, PoolKind::AvgF32, io));
op_kind!(reduce_mean_s8: ReduceMeanS8(p),
    check |ck| pool::check_reduce_s8(ck, p), eval |io| pool::eval_reduce_s8(p, io));
op_kind!(reduce_mean_f32: ReduceMeanF32(p),
    check |ck| pool::check_reduce_f32(ck, p), eval |io| pool::eval_reduce_f32(p, io));
op_kind!(pad: Pad(p),
    check |ck| movement::check_pad(ck, p), eval |io| movement::eval_pad(p, io));
op_kind!(concat: Concat(p),
    check |ck| movement::check_concat(ck, p), eval |io| movement::eval_concat(p, io));
op_kind!(slice: Slice(p),
    check |ck| movement::check_slice(ck, p), eval |io| movement::eval_slice(p, io));
op_kind!(transpose: Transpose(p),
    check |ck| movement::check_transpose(ck, p), eval |io| movement::eval_transpose(p, io));
op_kind!(quantize_s8: QuantizeS8(p),
    check |ck| elementwise::check_quantize_s8(ck, p), eval |io| elementwise::eval_quantize_s8(p, io));
op_kind!(dequantize_s8: DequantizeS8(p),
    check |ck| elementwise::check_dequantize_s8(ck, p), eval |io| elementwise::eval_dequantize_s8(p, io));

/// `Copy` has no parameters.
mod copy {
    use super::*;

    pub const KERNELS: KernelSet = KernelSet::of(&[KernelS8::Reference]);

    fn decode(_: &mut De<'_>, kind: &mut OpKind) -> de::Result<()> {
        *kind = OpKind::Copy;
        Ok(())
    }

    fn check(index: u16, op: &OpDef<'_>, blob: &[u8]) -> Result<(), Error> {
        match op.kind {
            OpKind::Copy => movement::check_copy(&Ck {
                op: index,
                def: op,
                blob,
            }),
            _ => Err(Error::UnknownOp { op: index }),
        }
    }

    fn eval(op: &OpDef<'_>, io: OpIo<'_>) -> Result<(), Error> {
        match op.kind {
            OpKind::Copy if !io.in_place => movement::eval_copy(io),
            _ => Err(Error::UnknownOp { op: EVAL_OP }),
        }
    }

    pub const fn registration(kernels: KernelSet) -> Option<Registration> {
        if kernels.0 != KERNELS.0 {
            return None;
        }
        Some(Registration {
            op: OpId::Copy,
            kernels,
            decode,
            check,
            eval,
        })
    }
}

/// Dispatches on the op kind to its adapter module (`$m::$item`).
macro_rules! per_kind {
    ($op:expr, $($item:tt)+) => {
        match $op {
            OpId::Conv2dS8 => conv2d_s8::$($item)+,
            OpId::Conv2dF32 => conv2d_f32::$($item)+,
            OpId::FullyConnectedS8 => fully_connected_s8::$($item)+,
            OpId::FullyConnectedF32 => fully_connected_f32::$($item)+,
            OpId::BinaryS8 => binary_s8::$($item)+,
            OpId::BinaryF32 => binary_f32::$($item)+,
            OpId::LookupS8 => lookup_s8::$($item)+,
            OpId::UnaryF32 => unary_f32::$($item)+,
            OpId::SoftmaxS8 => softmax_s8::$($item)+,
            OpId::SoftmaxF32 => softmax_f32::$($item)+,
            OpId::MaxPoolS8 => max_pool_s8::$($item)+,
            OpId::MaxPoolF32 => max_pool_f32::$($item)+,
            OpId::AvgPoolS8 => avg_pool_s8::$($item)+,
            OpId::AvgPoolF32 => avg_pool_f32::$($item)+,
            OpId::ReduceMeanS8 => reduce_mean_s8::$($item)+,
            OpId::ReduceMeanF32 => reduce_mean_f32::$($item)+,
            OpId::Pad => pad::$($item)+,
            OpId::Concat => concat::$($item)+,
            OpId::Slice => slice::$($item)+,
            OpId::Transpose => transpose::$($item)+,
            OpId::Copy => copy::$($item)+,
            OpId::QuantizeS8 => quantize_s8::$($item)+,
            OpId::DequantizeS8 => dequantize_s8::$($item)+,
        }
    };
}

impl OpId {
    /// Every kernel and mode this kind's `check` (and the loader) can allow.
    pub const fn kernels(self) -> KernelSet {
        per_kind!(self, KERNELS)
    }
}

impl Registration {
    /// The code of op kind `op` with `kernels` (non-empty), on ops writing a separate output, or `None` when `op`'s
    /// `check` never allows one of them. A `const fn`: called in a `static`'s initialiser, it links nothing but the
    /// registration it returns.
    pub const fn get(op: OpId, kernels: &[KernelS8]) -> Option<Registration> {
        Self::of_set(op, KernelSet::of(kernels))
    }

    /// [`Registration::get`] with a [`KernelSet`], which also says whether the ops run in place.
    pub const fn of_set(op: OpId, kernels: KernelSet) -> Option<Registration> {
        per_kind!(op, registration(kernels))
    }
}

static ALL: [Registration; OpId::ALL.len()] = {
    let Some(first) = Registration::of_set(OpId::Copy, copy::KERNELS) else {
        unreachable!()
    };
    let mut all = [first; OpId::ALL.len()];
    let mut i = 0;
    while i < all.len() {
        let op = OpId::ALL[i];
        let Some(r) = Registration::of_set(op, op.kernels()) else {
            unreachable!()
        };
        all[i] = r;
        i += 1;
    }
    all
};

/// The op kinds and kernels a runtime links (see the module documentation): one [`Registration`] per kind.
#[derive(Clone, Copy)]
pub struct Resolver {
    regs: &'static [Registration],
}

impl core::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.regs).finish()
    }
}

impl Resolver {
    /// A resolver linking `regs` (typically a `static` of [`Registration::get`] results); for a kind registered
    /// twice, the first registration counts.
    pub const fn new(regs: &'static [Registration]) -> Self {
        Resolver { regs }
    }

    /// Every op kind with every kernel: links all of them.
    pub fn all() -> Self {
        Resolver { regs: &ALL }
    }

    pub fn registrations(&self) -> &'static [Registration] {
        self.regs
    }

    fn find(&self, op: OpId) -> Option<&'static Registration> {
        self.regs.iter().find(|r| r.op == op)
    }

    /// Whether op kind `op` is linked with `kernel`, on ops running in place or not as `in_place` says.
    pub fn has(&self, op: OpId, kernel: KernelS8, in_place: bool) -> bool {
        self.find(op)
            .is_some_and(|r| r.kernels.contains(kernel) && r.kernels.has_mode(in_place))
    }

    /// Decodes the parameters of an op of kind `op` (the bytes after its variant index) into `kind`; `None` if `op`
    /// is not linked.
    pub(crate) fn decode(
        &self,
        op: OpId,
        de: &mut De<'_>,
        kind: &mut OpKind,
    ) -> Option<de::Result<()>> {
        self.find(op).map(|r| (r.decode)(de, kind))
    }

    /// Checks op `index` as [`check`] does, then that its kernel (in its mode, [`runs_in_place`]) is linked.
    ///
    /// # Errors
    /// As [`check`], and [`Error::OpNotLinked`] for an op kind or kernel this resolver lacks.
    pub fn check(&self, index: u16, op: &OpDef<'_>, blob: &[u8]) -> Result<(), Error> {
        let id = OpId::of(&op.kind);
        let not_linked = |kernel| Error::OpNotLinked {
            op: index,
            kind: id,
            kernel,
        };
        let r = self.find(id).ok_or(not_linked(None))?;
        (r.check)(index, op, blob)?;
        let kernel = kernel_of(&op.kind);
        if r.kernels.contains(kernel) && r.kernels.has_mode(runs_in_place(op)) {
            Ok(())
        } else {
            Err(not_linked(Some(kernel)))
        }
    }

    /// Runs a checked op with its kernel.
    ///
    /// # Errors
    /// As [`eval`], and [`Error::OpNotLinked`] (op [`EVAL_OP`]) for an op this resolver lacks.
    pub fn eval(&self, op: &OpDef<'_>, io: OpIo<'_>) -> Result<(), Error> {
        let id = OpId::of(&op.kind);
        let kernel = kernel_of(&op.kind);
        match self.find(id) {
            Some(r) if r.kernels.contains(kernel) && r.kernels.has_mode(io.in_place) => {
                (r.eval)(op, io)
            }
            _ => Err(Error::OpNotLinked {
                op: EVAL_OP,
                kind: id,
                kernel: Some(kernel),
            }),
        }
    }
}

/// One [`OpKind`] of every variant, with arbitrary parameters (for tests of the decoding and the resolver).
#[cfg(test)]
pub(crate) fn sample_kinds() -> std::vec::Vec<OpKind> {
    use crate::format::*;
    let dims = |d: &[u32]| Dims::from_slice(d).unwrap_or_default();
    let span = |offset, len| Span { offset, len };
    let geom = ConvGeom {
        batch: 1,
        in_h: 5,
        in_w: 6,
        in_c: 3,
        out_h: 5,
        out_w: 6,
        out_c: 8,
        kernel_h: 3,
        kernel_w: 3,
        stride_h: 1,
        stride_w: 1,
        dilation_h: 1,
        dilation_w: 1,
        pad_top: 1,
        pad_left: 1,
        groups: 1,
    };
    let requant = PerChannel {
        multipliers: span(64, 16),
        shifts: span(80, 8),
    };
    let fc = FcGeom {
        rows: 2,
        in_features: 300,
        out_features: 10,
    };
    let bcast = Broadcast {
        out: dims(&[2, 3]),
        a_strides: dims(&[3, 1]),
        b_strides: dims(&[0, 1]),
    };
    let pool = Pool2d {
        batch: 1,
        in_h: 4,
        in_w: 4,
        channels: 8,
        out_h: 2,
        out_w: 2,
        kernel_h: 2,
        kernel_w: 2,
        stride_h: 2,
        stride_w: 2,
        pad_top: 0,
        pad_left: 0,
        count_include_pad: true,
        zero_point: -3,
        kernel: KernelS8::Fast,
    };
    std::vec![
        OpKind::Conv2dS8(ConvS8 {
            geom: geom.clone(),
            weights: span(0, 216),
            bias: Some(span(216, 32)),
            requant: requant.clone(),
            input_zero_point: -128,
            output_zero_point: 127,
            act_min: -128,
            act_max: 100,
            kernel: KernelS8::Dot,
        }),
        OpKind::Conv2dF32(ConvF32 {
            geom,
            weights: span(16, 864),
            bias: None,
            act_min: f32::NEG_INFINITY,
            act_max: 6.0,
        }),
        OpKind::FullyConnectedS8(FullyConnectedS8 {
            geom: fc.clone(),
            weights: span(1 << 20, 3000),
            bias: None,
            requant,
            input_zero_point: 5,
            output_zero_point: -5,
            act_min: -7,
            act_max: 7,
            kernel: KernelS8::Reference,
        }),
        OpKind::FullyConnectedF32(FullyConnectedF32 {
            geom: fc,
            weights: span(0, 12000),
            bias: Some(span(12000, 40)),
            act_min: -1.5,
            act_max: f32::INFINITY,
        }),
        OpKind::BinaryS8(BinaryS8 {
            kind: BinaryKind::PRelu,
            bcast: bcast.clone(),
            a_zero_point: -1,
            b_zero_point: 2,
            out_zero_point: -3,
            left_shift: 20,
            a_multiplier: 1 << 30,
            a_shift: -4,
            b_multiplier: i32::MAX,
            b_shift: 5,
            out_multiplier: 12345,
            out_shift: -31,
            act_min: -128,
            act_max: 127,
            kernel: KernelS8::Table,
        }),
        OpKind::BinaryF32(BinaryF32 {
            kind: BinaryKind::Sub,
            bcast,
            act_min: -3.0,
            act_max: 3.0,
        }),
        OpKind::LookupS8(LookupS8 {
            table: span(256, 256),
        }),
        OpKind::UnaryF32(UnaryF32::Clip {
            min: -0.5,
            max: 0.5,
        }),
        OpKind::SoftmaxS8(SoftmaxS8 {
            outer: 1,
            len: 12,
            inner: 1,
            log: true,
            exp_table: span(0, 1024),
            params: heapless::Vec::from_slice(&[70000, 45426]).unwrap_or_default(),
            output_zero_point: -128,
        }),
        OpKind::SoftmaxF32(SoftmaxF32 {
            outer: 3,
            len: 4,
            inner: 5,
            log: false,
        }),
        OpKind::MaxPoolS8(pool.clone()),
        OpKind::MaxPoolF32(Pool2d {
            kernel: KernelS8::Reference,
            ..pool.clone()
        }),
        OpKind::AvgPoolS8(pool.clone()),
        OpKind::AvgPoolF32(Pool2d {
            count_include_pad: false,
            kernel: KernelS8::Reference,
            ..pool
        }),
        OpKind::ReduceMeanS8(ReduceMeanS8 {
            dims: dims(&[1, 5, 5, 64]),
            axes: 0b0110,
            input_zero_point: 3,
            output_zero_point: -4,
            multiplier: 1 << 29,
            shift: -6,
        }),
        OpKind::ReduceMeanF32(ReduceMeanF32 {
            dims: dims(&[2, 3]),
            axes: 1,
        }),
        OpKind::Pad(PadParams {
            dims: dims(&[1, 4, 4, 3]),
            before: dims(&[0, 1, 1, 0]),
            after: dims(&[0, 2, 2, 0]),
            elem_bytes: 4,
            value: 0xDEAD_BEEF,
        }),
        OpKind::Concat(ConcatParams {
            outer: 2,
            inner_bytes: 12,
            parts: heapless::Vec::from_slice(&[1, 2, 3]).unwrap_or_default(),
        }),
        OpKind::Slice(SliceParams {
            outer: 1,
            axis_len: 10,
            start: 3,
            len: 4,
            inner_bytes: 8,
        }),
        OpKind::Transpose(TransposeParams {
            dims: dims(&[2, 3, 4]),
            perm: dims(&[2, 0, 1]),
            elem_bytes: 1,
        }),
        OpKind::Copy,
        OpKind::QuantizeS8(crate::format::Quant {
            scale: 0.25,
            zero_point: -7,
        }),
        OpKind::DequantizeS8(crate::format::Quant {
            scale: 0.5,
            zero_point: 3,
        }),
    ]
}

#[cfg(test)]
mod resolver_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::format::{Operand, Space};

    #[test]
    fn op_ids_are_the_variant_indices_and_names() {
        let kinds = sample_kinds();
        assert_eq!(kinds.len(), OpId::ALL.len());
        for (i, kind) in kinds.iter().enumerate() {
            let id = OpId::of(kind);
            assert_eq!(id, OpId::ALL[i]);
            assert_eq!(OpId::from_index(i as u32), Some(id));
            assert_eq!(id.name(), kind.name());
            let mut buf = [0u8; 256];
            let bytes = postcard::to_slice(kind, &mut buf).unwrap();
            assert_eq!(bytes[0] as usize, i, "{kind:?}");
        }
        assert_eq!(OpId::from_index(OpId::ALL.len() as u32), None);
    }

    #[test]
    fn kernel_sets_cover_every_kernel_check_may_allow() {
        for (i, k) in KERNELS.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        for op in OpId::ALL {
            let all = op.kernels();
            assert!(all.has_mode(false));
            // Every non-empty subset of the kind's kernels, in every mode it has, registers.
            for bits in 1u8..32 {
                let kernels: std::vec::Vec<KernelS8> = KERNELS
                    .into_iter()
                    .filter(|k| bits & (1 << *k as u8) != 0)
                    .collect();
                for (separate, in_place) in [(true, false), (false, true), (true, true)] {
                    let set = KernelSet::with_modes(&kernels, separate, in_place);
                    let r = Registration::of_set(op, set);
                    assert_eq!(r.is_some(), set.is_subset(all), "{op:?} {set:?}");
                    if let Some(r) = r {
                        assert_eq!((r.op, r.kernels), (op, set));
                    }
                }
            }
            // The kinds the loader may run in place are those `in_place_ok` can accept.
            let in_place_kind = sample_kinds().iter().any(|k| {
                OpId::of(k) == op && matches!(k, OpKind::Conv2dS8(_) | OpKind::BinaryS8(_))
            });
            assert_eq!(all.has_mode(true), in_place_kind, "{op:?}");
        }
        assert_eq!(Resolver::all().registrations().len(), OpId::ALL.len());
    }

    fn arena(offset: u32, len: u32) -> Operand {
        Operand {
            space: Space::Arena,
            offset,
            len,
        }
    }

    fn copy_op(inputs: &[Operand], output: Operand) -> OpDef<'static> {
        OpDef {
            name: "copy",
            kind: OpKind::Copy,
            inputs: heapless::Vec::from_slice(inputs).unwrap(),
            output,
            output_tensor: 1,
            macs: 0,
        }
    }

    #[test]
    fn a_resolver_runs_only_what_it_links() {
        static COPY: [Registration; 1] = [
            match Registration::get(OpId::Copy, &[KernelS8::Reference]) {
                Some(r) => r,
                None => panic!(),
            },
        ];
        static POOL: [Registration; 1] = [
            match Registration::get(OpId::MaxPoolS8, &[KernelS8::Fast]) {
                Some(r) => r,
                None => panic!(),
            },
        ];
        let copy = Resolver::new(&COPY);
        let pool = Resolver::new(&POOL);
        let op = copy_op(&[arena(0, 3)], arena(4, 3));
        assert_eq!(copy.check(2, &op, &[]), Ok(()));
        assert_eq!(
            pool.check(2, &op, &[]),
            Err(Error::OpNotLinked {
                op: 2,
                kind: OpId::Copy,
                kernel: None
            })
        );
        let run = |r: &Resolver| {
            let input = [1u8, 2, 3];
            let mut out = [0u8; 3];
            let io = OpIo {
                inputs: heapless::Vec::from_slice(&[&input[..]]).unwrap(),
                blob: &[],
                output: &mut out,
                in_place: false,
            };
            r.eval(&op, io).map(|()| out)
        };
        assert_eq!(run(&copy), Ok([1, 2, 3]));
        assert_eq!(
            run(&pool),
            Err(Error::OpNotLinked {
                op: EVAL_OP,
                kind: OpId::Copy,
                kernel: Some(KernelS8::Reference)
            })
        );
        assert!(copy.has(OpId::Copy, KernelS8::Reference, false));
        assert!(!copy.has(OpId::Copy, KernelS8::Reference, true));
        assert!(!copy.has(OpId::MaxPoolS8, KernelS8::Fast, false));
        // A Copy writing over its input is a mode no registration of Copy has.
        let over = copy_op(&[arena(0, 3)], arena(0, 3));
        assert!(runs_in_place(&over) && !runs_in_place(&op));
        assert_eq!(
            Resolver::all().check(5, &over, &[]),
            Err(Error::OpNotLinked {
                op: 5,
                kind: OpId::Copy,
                kernel: Some(KernelS8::Reference)
            })
        );
    }

    #[test]
    fn a_kind_with_another_kernel_is_refused_after_its_check() {
        static REF: [Registration; 1] = [
            match Registration::get(OpId::MaxPoolS8, &[KernelS8::Reference]) {
                Some(r) => r,
                None => panic!(),
            },
        ];
        let mut kinds = sample_kinds();
        let OpKind::MaxPoolS8(mut pool) = kinds.swap_remove(10) else {
            panic!()
        };
        pool.kernel = KernelS8::Fast;
        let op = OpDef {
            name: "pool",
            kind: OpKind::MaxPoolS8(pool.clone()),
            inputs: heapless::Vec::from_slice(&[arena(0, 128)]).unwrap(),
            output: arena(128, 32),
            output_tensor: 1,
            macs: 0,
        };
        assert_eq!(check(3, &op, &[]), Ok(()));
        assert_eq!(
            Resolver::new(&REF).check(3, &op, &[]),
            Err(Error::OpNotLinked {
                op: 3,
                kind: OpId::MaxPoolS8,
                kernel: Some(KernelS8::Fast)
            })
        );
        // The kind's own check still comes first.
        let mut bad = op.clone();
        bad.output = arena(128, 31);
        assert!(matches!(
            Resolver::new(&REF).check(3, &bad, &[]),
            Err(Error::SizeMismatch { op: 3, .. })
        ));
    }
}
