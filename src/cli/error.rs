//! Errors at the CLI's edge. Commands return `anyhow::Result`: any typed error of the library,
//! with context added here, keeps its causes. The user sees one line (each cause once) and
//! the exit code a [`Failure`] in the chain carries (docker's 124/126/127), else 125.

use crate::sandbox::outcome::Failure;

pub use crate::sandbox::outcome::EXIT_BRIG_ERROR;

/// The exit code for `err`: the first [`Failure`]'s in its chain, else 125.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|c| c.downcast_ref::<Failure>())
        .map_or(EXIT_BRIG_ERROR, |f| f.code)
}

/// `err` and its causes as one line, `context: cause: cause`. Many of the library's errors
/// already say their cause in their own message; such a cause is not repeated.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[derive(Debug, thiserror::Error)]
    #[error("sandbox state /x: {source}")]
    struct SaysItsCause {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn context_prefixes_and_causes_appear_once() {
        let io = std::io::Error::other("line one\nline two");
        let r: Result<(), _> = Err(SaysItsCause { source: io });
        let e = r.context("loading kernel").unwrap_err();
        assert_eq!(
            one_line(&e),
            "loading kernel: sandbox state /x: line one line two"
        );
        assert_eq!(exit_code(&e), EXIT_BRIG_ERROR);
    }

    #[test]
    fn a_failure_anywhere_in_the_chain_sets_the_code() {
        let f = Failure {
            code: 127,
            message: "not found".into(),
        };
        let e = anyhow::Error::from(f).context("exec");
        assert_eq!(exit_code(&e), 127);
        assert_eq!(one_line(&e), "exec: not found");
    }
}
