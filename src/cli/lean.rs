//! The command line parsed with only the subcommand it names built.
//!
//! clap's derive builds the whole command tree, every subcommand's every argument with its
//! help text, before it looks at the command line: about 0.5 ms of CPU natively for brig's
//! tree, and 70 ms under nested emulation, where it was the largest part of a `brig boot`'s
//! time before the VM's first instruction (a `perf record` of it in `scripts/with-kvm`).
//! Every brig command, `brig run` and a detached sandbox's `__supervise` process included,
//! paid it. Here the root and the one subcommand named by the first argument are built from
//! the same derived types, and the matches are turned into the same [`Cli`]. Anything else
//! (help, `--version`, a usage error, a subcommand not listed) is left to the full parse,
//! which prints exactly what it always did.

use std::ffi::OsString;

use clap::{Args, FromArgMatches};

use super::{commands, Cli};

type Augment = fn(clap::Command) -> clap::Command;

/// Subcommands parsed alone: their name and what adds their arguments (each the type the
/// full tree's variant of that name holds; `tests` checks both trees agree).
const LEAN: &[(&str, Augment)] = &[
    ("run", commands::run::RunArgs::augment_args),
    ("exec", commands::exec::ExecArgs::augment_args),
    ("boot", commands::boot::BootArgs::augment_args),
    ("__supervise", commands::run::SuperviseArgs::augment_args),
    ("ps", commands::ps::PsArgs::augment_args),
    ("logs", commands::logs::LogsArgs::augment_args),
    ("start", commands::start::StartArgs::augment_args),
    ("stop", commands::stop::StopArgs::augment_args),
    ("kill", commands::kill::KillArgs::augment_args),
    ("wait", commands::wait::WaitArgs::augment_args),
    ("rm", commands::rm::RmArgs::augment_args),
    ("inspect", commands::inspect::InspectArgs::augment_args),
    ("cp", commands::cp::CpArgs::augment_args),
    ("stats", commands::stats::StatsArgs::augment_args),
    ("port", commands::port::PortArgs::augment_args),
    ("pause", commands::pause::PauseArgs::augment_args),
    ("unpause", commands::pause::PauseArgs::augment_args),
    ("update", commands::update::UpdateArgs::augment_args),
    ("images", commands::images::ImagesArgs::augment_args),
    ("pull", commands::pull::PullArgs::augment_args),
    ("import", commands::import::ImportArgs::augment_args),
    ("load", commands::load::LoadArgs::augment_args),
    ("rmi", commands::rmi::RmiArgs::augment_args),
];

/// The root command as [`Cli`]'s derive makes it, without its subcommands.
fn root() -> clap::Command {
    clap::Command::new("brig")
        .version(env!("CARGO_PKG_VERSION"))
        .propagate_version(true)
        .subcommand_required(true)
        .arg_required_else_help(true)
}

/// The tree for `name`'s subcommand alone, if it is one parsed that way.
fn tree(name: &str) -> Option<clap::Command> {
    let &(name, augment) = LEAN.iter().find(|(n, _)| *n == name)?;
    Some(root().subcommand(augment(clap::Command::new(name))))
}

/// `args` (the program name first) parsed with [`tree`]; `None` when the subcommand is not
/// in [`LEAN`] or the parse ends any other way than with a command to run.
pub fn parse(args: &[OsString]) -> Option<Cli> {
    let name = args.get(1)?.to_str()?;
    let matches = tree(name)?.try_get_matches_from(args).ok()?;
    Cli::from_arg_matches(&matches).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// Everything clap knows about an argument, as text.
    fn args_of(cmd: &clap::Command) -> Vec<String> {
        cmd.get_arguments().map(|a| format!("{a:?}")).collect()
    }

    fn subcommands_of(cmd: &clap::Command) -> Vec<&str> {
        cmd.get_subcommands().map(|c| c.get_name()).collect()
    }

    /// `brig` and `line`, as the process gets its arguments.
    fn argv(line: &[&str]) -> Vec<OsString> {
        std::iter::once("brig")
            .chain(line.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn each_lean_subcommand_is_the_full_trees_own() {
        let mut full = Cli::command();
        full.build();
        for (name, _) in LEAN {
            let mut lean = tree(name).unwrap();
            lean.build();
            assert_eq!(
                args_of(&lean),
                args_of(&full),
                "the root's arguments differ"
            );
            let want = full
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("no {name}"));
            let got = lean.find_subcommand(name).unwrap();
            assert_eq!(args_of(got), args_of(want), "{name}'s arguments differ");
            assert_eq!(
                subcommands_of(got),
                subcommands_of(want),
                "{name}'s subcommands"
            );
        }
    }

    #[test]
    fn lean_and_full_parses_agree() {
        let lines: &[&[&str]] = &[
            &[
                "run", "--rm", "-e", "A=1", "-p", "8080:80", "bb", "sh", "-c", "echo hi",
            ],
            &["run", "-it", "--network", "none", "--memory", "64m", "bb"],
            &["exec", "-u", "1000", "box", "ls", "-l"],
            &["boot", "--mem", "128", "--", "/bin/true", "-x"],
            &["__supervise", "abc", "--lock-fd", "3", "--ready-fd", "4"],
            &["ps", "-a", "--format", "json"],
            &["stop", "-t", "3", "a", "b"],
            &["rm", "-f", "a"],
            &["cp", "a:/etc/hostname", "/tmp/x"],
            &["unpause", "a"],
            &["images"],
        ];
        for line in lines {
            let argv = argv(line);
            let full = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let lean = parse(&argv).unwrap_or_else(|| panic!("{line:?}: no lean parse"));
            assert_eq!(format!("{lean:?}"), format!("{full:?}"), "{line:?}");
        }
    }

    #[test]
    fn help_version_errors_and_other_commands_go_to_the_full_parse() {
        for line in [
            &["run", "--help"][..],
            &["run", "--version"],
            &["run"],
            &["run", "--no-such-flag", "bb"],
            &["ps", "-h"],
            &["template", "ls"],
            &["info"],
            &["nosuch"],
            &[],
        ] {
            assert!(parse(&argv(line)).is_none(), "{line:?}");
        }
    }
}
