//! `brig cp`: files between a sandbox (running, or stopped with its state kept) and the
//! host, as `docker cp` copies them.

use clap::Args;

use crate::sandbox::copy::{self, SandboxPath};

#[derive(Debug, Args)]
#[command(after_help = "\
One of SRC and DEST is NAME:PATH, a path in the sandbox NAME (name or id); the other is a host
path, or - for a tar stream on stdin or stdout. A host path with a colon in it is written
./a:b or absolutely.

As docker cp: a directory is copied recursively, with modes and times; copying into an existing
directory puts the item inside it, otherwise DEST is created (a file replaces a file); SRC
ending in /. copies a directory's contents. Files copied out belong to the user running brig;
setuid/setgid bits, device nodes and extended attributes are not recreated on the host.")]
pub struct CpArgs {
    /// Source: NAME:PATH or a host path (- for a tar stream on stdin).
    #[arg(value_name = "SRC")]
    src: String,
    /// Destination: NAME:PATH or a host path (- for a tar stream on stdout).
    #[arg(value_name = "DEST")]
    dest: String,
}

/// Splits `NAME:PATH` as docker does: an absolute path, or one whose part before the first
/// colon starts with `.`, is a host path.
fn split(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') {
        return None;
    }
    match arg.split_once(':') {
        Some((name, path)) if !name.is_empty() && !name.starts_with('.') => Some((name, path)),
        _ => None,
    }
}

pub fn run(args: CpArgs) -> anyhow::Result<i32> {
    let home = super::home()?;
    let fail = |e: copy::CopyError| anyhow::anyhow!("cp: {e}");
    match (split(&args.src), split(&args.dest)) {
        (Some(_), Some(_)) => Err(anyhow::anyhow!(
            "cp: copying between sandboxes is not supported; copy to the host first",
        )),
        (None, None) => Err(anyhow::anyhow!(
            "cp: one of SRC and DEST must be NAME:PATH, a path in a sandbox",
        )),
        (Some((name, path)), None) => {
            let path = SandboxPath::parse(path).map_err(fail)?;
            let sb = super::resolve(&home, name)?;
            copy::copy_from(&sb, name, &path, &args.dest).map_err(fail)?;
            Ok(0)
        }
        (None, Some((name, path))) => {
            let path = SandboxPath::parse(path).map_err(fail)?;
            let sb = super::resolve(&home, name)?;
            copy::copy_to(&sb, &args.src, &path).map_err(fail)?;
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_split_as_docker_splits_them() {
        assert_eq!(split("box:/etc/passwd"), Some(("box", "/etc/passwd")));
        assert_eq!(split("box:rel"), Some(("box", "rel")));
        assert_eq!(split("/abs/a:b"), None);
        assert_eq!(split("./a:b"), None);
        assert_eq!(split("plain"), None);
        assert_eq!(split("-"), None);
        assert_eq!(split(":x"), None);
    }
}
