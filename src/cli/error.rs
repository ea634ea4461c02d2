//! The error every command returns: one line for the user and the exit code to leave with.

use std::fmt;

use crate::sandbox::outcome::Failure;
pub use crate::sandbox::outcome::EXIT_BRIG_ERROR;

/// An error as the user sees it: a message (context first, cause last) and an exit code.
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: i32,
}

impl CliError {
    /// A brig error (exit 125).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: EXIT_BRIG_ERROR,
        }
    }

    /// An error with a specific exit code.
    pub fn with_code(message: impl Into<String>, code: i32) -> Self {
        Self {
            message: message.into(),
            code,
        }
    }

    pub fn exit_code(&self) -> i32 {
        self.code
    }
}

impl From<Failure> for CliError {
    fn from(f: Failure) -> Self {
        Self::with_code(f.message, f.code)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever the causes contained.
        f.write_str(&self.message.replace('\n', " "))
    }
}

/// Adds context to any displayable error: `"<context>: <error>"`.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T, CliError>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T, CliError> {
        self.map_err(|e| CliError::new(format!("{what}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_prefixes_and_keeps_one_line() {
        let r: Result<(), String> = Err("line one\nline two".into());
        let e = r.context("loading kernel").unwrap_err();
        assert_eq!(e.to_string(), "loading kernel: line one line two");
        assert_eq!(e.exit_code(), EXIT_BRIG_ERROR);
    }
}
