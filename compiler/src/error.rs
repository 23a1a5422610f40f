//! The compiler's error type: the split scripts depend on is "your input is bad" (exit 2) versus "Kiln failed"
//! (exit 1).

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// The user's input is at fault (unreadable or corrupted file, unsupported operator, wrong shape, missing
    /// calibration data). The message names the file and, for models, the node and op. Exit code 2.
    Input(String),
    /// A fault inside Kiln. Exit code 1.
    Internal(anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) => 2,
            Error::Internal(_) => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Input(m) => f.write_str(m),
            Error::Internal(e) => write!(f, "internal error: {e:#}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error::Internal(e)
    }
}

/// `bad_input!("{}: ...", path)` returns early with an [`Error::Input`].
#[macro_export]
macro_rules! bad_input {
    ($($arg:tt)*) => { return Err($crate::error::Error::Input(format!($($arg)*))) };
}

/// Builds an [`Error::Input`] without returning.
pub fn input(msg: impl Into<String>) -> Error {
    Error::Input(msg.into())
}
