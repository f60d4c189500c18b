//! [`WireField`]: how each field type is laid out in a payload, so message
//! definitions list fields and the macro derives their codec.

use bytes::Bytes;

use super::project::{ProjectInfo, ScheduleInfo};
use super::types::*;
use super::wire::{Reader, Writer};
use crate::error::DecodeError;
use crate::frame::ErrorCode;

/// A type that can be a payload field.
pub trait WireField: Sized {
    /// The fewest bytes an encoded value takes; bounds list counts.
    const MIN_BYTES: usize;
    /// Reads the field.
    fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError>;
    /// Writes the field.
    fn write(&self, w: &mut Writer);
}

macro_rules! prim {
    ($t:ty, $n:expr, $read:ident, $write:ident) => {
        impl WireField for $t {
            const MIN_BYTES: usize = $n;
            fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
                r.$read(field)
            }
            fn write(&self, w: &mut Writer) {
                w.$write(*self)
            }
        }
    };
}
prim!(u8, 1, u8, u8);
prim!(u16, 2, u16, u16);
prim!(u32, 4, u32, u32);
prim!(u64, 8, u64, u64);
prim!(i32, 4, i32, i32);
prim!(bool, 1, bool, bool);

impl WireField for String {
    const MIN_BYTES: usize = 4;
    fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        r.string(field)
    }
    fn write(&self, w: &mut Writer) {
        w.string(self)
    }
}

impl WireField for Bytes {
    const MIN_BYTES: usize = 4;
    fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        r.bytes(field)
    }
    fn write(&self, w: &mut Writer) {
        w.bytes(self)
    }
}

impl<T: WireField> WireField for Option<T> {
    const MIN_BYTES: usize = 1;
    fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        r.option(field, |r| T::read(r, field))
    }
    fn write(&self, w: &mut Writer) {
        w.option(self, |w, v| v.write(w))
    }
}

impl<T: WireField> WireField for Vec<T> {
    const MIN_BYTES: usize = 4;
    fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        r.list(field, T::MIN_BYTES, |r| T::read(r, field))
    }
    fn write(&self, w: &mut Writer) {
        w.list(self, |w, v| v.write(w))
    }
}

impl WireField for (String, String) {
    const MIN_BYTES: usize = 8;
    fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        Ok((r.string(field)?, r.string(field)?))
    }
    fn write(&self, w: &mut Writer) {
        w.string(&self.0);
        w.string(&self.1);
    }
}

impl WireField for ErrorCode {
    const MIN_BYTES: usize = 2;
    fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        Ok(ErrorCode(r.u16(field)?))
    }
    fn write(&self, w: &mut Writer) {
        w.u16(self.0)
    }
}

macro_rules! enum_field {
    ($($t:ty),*) => {$(
        impl WireField for $t {
            const MIN_BYTES: usize = 1;
            fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
                <$t>::read(r, field)
            }
            fn write(&self, w: &mut Writer) {
                <$t>::write(*self, w)
            }
        }
    )*};
}
enum_field!(
    Role,
    ServerRole,
    JobState,
    JobOutcome,
    StepOutcome,
    OutputStream,
    RunnerState,
    RunState,
    RunJobState
);

macro_rules! struct_field {
    ($($t:ty = $min:expr),*) => {$(
        impl WireField for $t {
            const MIN_BYTES: usize = $min;
            fn read(r: &mut Reader, _field: &'static str) -> Result<Self, DecodeError> {
                <$t>::read(r)
            }
            fn write(&self, w: &mut Writer) {
                <$t>::write(self, w)
            }
        }
    )*};
}
struct_field!(
    RunInfo = 30,
    RunJobInfo = 19,
    JobSpec = 45,
    StepSpec = 12,
    StepInfo = 7,
    JobInfo = 42,
    RunnerInfo = 45,
    AuditEntry = 36,
    ServerInfo = 37,
    ProjectInfo = 26,
    ScheduleInfo = 40,
    EventBody = 1
);
