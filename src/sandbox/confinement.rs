//! How a live sandbox's VMM process is confined on the host, read from /proc as it is (not as
//! brig meant it): for `brig inspect`.

use std::os::unix::fs::MetadataExt;

/// What /proc shows of the VMM process `pid`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Confinement {
    /// Its threads (KVM's own kernel workers left out: they never run user code).
    pub threads: usize,
    /// Those under a seccomp filter (`Seccomp: 2`).
    pub seccomp_threads: usize,
    /// Those with `NoNewPrivs: 1`.
    pub no_new_privs_threads: usize,
    /// The union of the threads' effective capabilities, as /proc writes it.
    pub cap_eff: String,
    /// Its real user id.
    pub uid: u32,
    /// Whether its root directory is the host's `/`.
    pub host_root: bool,
    /// Its jail (root, ids, namespaces, cgroup), when it is in one.
    pub jail: Option<super::jail::JailView>,
}

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The confinement of process `pid`, or `None` when it is gone (or /proc cannot tell).
pub fn of_pid(pid: u32) -> Option<Confinement> {
    let proc = format!("/proc/{pid}");
    let mut c = Confinement {
        threads: 0,
        seccomp_threads: 0,
        no_new_privs_threads: 0,
        cap_eff: String::new(),
        uid: 0,
        host_root: false,
        jail: None,
    };
    let mut caps = 0u64;
    for task in std::fs::read_dir(format!("{proc}/task")).ok()?.flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        if comm.starts_with("kvm-") {
            continue;
        }
        c.threads += 1;
        c.seccomp_threads += usize::from(field(&status, "Seccomp") == Some("2"));
        c.no_new_privs_threads += usize::from(field(&status, "NoNewPrivs") == Some("1"));
        caps |= field(&status, "CapEff")
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(u64::MAX);
    }
    let status = std::fs::read_to_string(format!("{proc}/status")).ok()?;
    c.uid = field(&status, "Uid")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    c.cap_eff = format!("{caps:016x}");
    let root = std::fs::metadata(format!("{proc}/root")).ok()?;
    let host = std::fs::metadata("/").ok()?;
    c.host_root = root.dev() == host.dev() && root.ino() == host.ino();
    Some(c)
}

/// [`of_pid`] for the VMM of the sandbox whose runtime directory is `runtime`, its jail
/// included.
pub fn of_vmm(pid: u32, runtime: &std::path::Path) -> Option<Confinement> {
    let mut c = of_pid(pid)?;
    c.jail = super::jail::describe(pid, runtime);
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_seen_as_it_is() {
        let c = of_pid(std::process::id()).unwrap();
        assert!(c.threads >= 1);
        assert!(c.host_root);
        assert_eq!(c.uid, rustix::process::getuid().as_raw());
        assert_eq!(c.cap_eff.len(), 16);
    }

    #[test]
    fn a_process_that_is_gone_has_none() {
        assert!(of_pid(u32::MAX - 1).is_none());
    }
}
