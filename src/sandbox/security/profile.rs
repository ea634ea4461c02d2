//! docker's seccomp profile format (`--security-opt seccomp=FILE`, and the vendored default
//! profile), resolved as moby's `seccomp.setupSeccomp` resolves it for an amd64 host: a rule
//! applies when its `includes` hold (its `arches` name `amd64`, every cap of its `caps` is in
//! the bounding set, the kernel is at least its `minKernel`) and its `excludes` do not.

use serde::Deserialize;

use super::{caps, SecurityError};

/// docker's default profile: moby's `profiles/seccomp/default.json` (vendored by
/// github.com/moby/moby at b985e231 as `vendor/github.com/moby/profiles/seccomp/default.json`,
/// moby/profiles/seccomp v0.2.3; Apache-2.0, see `seccomp-default.LICENSE`).
pub const DEFAULT_PROFILE: &str = include_str!("seccomp-default.json");

/// The guest kernel's version, for `minKernel` (kernels/build.sh builds linux-source-6.12).
pub const GUEST_KERNEL: (u32, u32) = (6, 12);

/// The Go architecture name docker matches `includes.arches` against on this host.
const HOST_GOARCH: &str = "amd64";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    default_errno_ret: Option<u32>,
    architectures: Option<Vec<String>>,
    arch_map: Option<Vec<ArchMap>>,
    syscalls: Option<Vec<Syscall>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Syscall {
    name: Option<String>,
    names: Option<Vec<String>>,
    action: String,
    errno_ret: Option<u32>,
    args: Option<Vec<Arg>>,
    includes: Option<Filter>,
    excludes: Option<Filter>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    caps: Option<Vec<String>>,
    arches: Option<Vec<String>>,
    min_kernel: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

/// An argument comparison (libseccomp's `SCMP_CMP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & mask) == datum`.
    MaskedEq(u64),
}

/// One condition on a system call argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    pub index: u32,
    pub op: Op,
    pub value: u64,
}

/// A rule that applies: these calls, when every condition holds, get `action` (a
/// `SECCOMP_RET_*` value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub names: Vec<String>,
    pub action: u32,
    pub conds: Vec<Cond>,
}

/// A profile resolved for this host and a bounding set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The action for calls no rule matches.
    pub default: u32,
    /// Whether i386 calls are filtered (the profile names `SCMP_ARCH_X86`); otherwise the
    /// filter kills a process that makes one, as libseccomp does for an arch not in the filter.
    pub i386: bool,
    pub rules: Vec<Rule>,
}

pub const RET_KILL_THREAD: u32 = 0;
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_TRAP: u32 = 0x0003_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_TRACE: u32 = 0x7ff0_0000;
pub const RET_LOG: u32 = 0x7ffc_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;

fn action(name: &str, errno: Option<u32>) -> Result<u32, SecurityError> {
    let data = |e: Option<u32>| e.unwrap_or(libc::EPERM as u32) & 0xffff;
    Ok(match name {
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => RET_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS" => RET_KILL_PROCESS,
        "SCMP_ACT_TRAP" => RET_TRAP,
        "SCMP_ACT_ERRNO" => RET_ERRNO | data(errno),
        "SCMP_ACT_TRACE" => RET_TRACE | data(errno),
        "SCMP_ACT_LOG" => RET_LOG,
        "SCMP_ACT_ALLOW" => RET_ALLOW,
        other => {
            return Err(SecurityError::Profile(format!(
                "unsupported action {other}"
            )))
        }
    })
}

fn op(arg: &Arg) -> Result<Cond, SecurityError> {
    let op = match arg.op.as_str() {
        "SCMP_CMP_NE" => Op::Ne,
        "SCMP_CMP_LT" => Op::Lt,
        "SCMP_CMP_LE" => Op::Le,
        "SCMP_CMP_EQ" => Op::Eq,
        "SCMP_CMP_GE" => Op::Ge,
        "SCMP_CMP_GT" => Op::Gt,
        "SCMP_CMP_MASKED_EQ" => Op::MaskedEq(arg.value),
        other => return Err(SecurityError::Profile(format!("unknown operator {other}"))),
    };
    if arg.index > 5 {
        return Err(SecurityError::Profile(format!(
            "argument index {} out of range",
            arg.index
        )));
    }
    // MASKED_EQ compares (arg & value) with valueTwo.
    let value = match op {
        Op::MaskedEq(_) => arg.value_two,
        _ => arg.value,
    };
    Ok(Cond {
        index: arg.index,
        op,
        value,
    })
}

/// `"4.8"` ≤ the guest kernel?
fn kernel_at_least(v: &str) -> Result<bool, SecurityError> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor) <= GUEST_KERNEL),
        (Some(Ok(major)), None) => Ok((major, 0) <= GUEST_KERNEL),
        _ => Err(SecurityError::Profile(format!("invalid minKernel {v:?}"))),
    }
}

fn has_cap(bounding: u64, name: &str) -> bool {
    caps::bit(name).is_some_and(|b| bounding & b != 0)
}

/// Parses a profile (docker's JSON) and resolves it for a process whose bounding set is
/// `bounding`.
pub fn resolve(json: &str, bounding: u64) -> Result<Resolved, SecurityError> {
    let p: Profile =
        serde_json::from_str(json).map_err(|e| SecurityError::Profile(e.to_string()))?;
    let (arches, map) = (
        p.architectures.unwrap_or_default(),
        p.arch_map.unwrap_or_default(),
    );
    if !arches.is_empty() && !map.is_empty() {
        return Err(SecurityError::Profile(
            "both 'architectures' and 'archMap' are specified".into(),
        ));
    }
    let mut listed = arches;
    for m in map
        .into_iter()
        .filter(|m| m.architecture == "SCMP_ARCH_X86_64")
    {
        listed.push(m.architecture);
        listed.extend(m.sub_architectures.unwrap_or_default());
    }
    let i386 = listed.iter().any(|a| a == "SCMP_ARCH_X86");
    let mut rules = Vec::new();
    'rules: for call in p.syscalls.unwrap_or_default() {
        let names = match (call.name, call.names) {
            (Some(_), Some(n)) if !n.is_empty() => {
                return Err(SecurityError::Profile(
                    "use either 'name' or 'names'".into(),
                ))
            }
            (Some(n), _) => vec![n],
            (None, n) => n.unwrap_or_default(),
        };
        if let Some(ex) = &call.excludes {
            if ex.arches.iter().flatten().any(|a| a == HOST_GOARCH)
                || ex.caps.iter().flatten().any(|c| has_cap(bounding, c))
            {
                continue 'rules;
            }
            if let Some(k) = &ex.min_kernel {
                if kernel_at_least(k)? {
                    continue 'rules;
                }
            }
        }
        if let Some(inc) = &call.includes {
            if inc
                .arches
                .as_ref()
                .is_some_and(|a| !a.is_empty() && !a.iter().any(|a| a == HOST_GOARCH))
                || !inc.caps.iter().flatten().all(|c| has_cap(bounding, c))
            {
                continue 'rules;
            }
            if let Some(k) = &inc.min_kernel {
                if !kernel_at_least(k)? {
                    continue 'rules;
                }
            }
        }
        let conds = call
            .args
            .iter()
            .flatten()
            .map(op)
            .collect::<Result<Vec<_>, _>>()?;
        rules.push(Rule {
            names,
            action: action(&call.action, call.errno_ret)?,
            conds,
        });
    }
    Ok(Resolved {
        default: action(&p.default_action, p.default_errno_ret)?,
        i386,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_for<'a>(r: &'a Resolved, name: &str) -> Vec<&'a Rule> {
        r.rules
            .iter()
            .filter(|x| x.names.iter().any(|n| n == name))
            .collect()
    }

    #[test]
    fn default_profile_follows_the_bounding_set() {
        let plain = resolve(DEFAULT_PROFILE, caps::mask(caps::DOCKER_DEFAULT)).unwrap();
        assert_eq!(plain.default, RET_ERRNO | libc::EPERM as u32);
        assert!(plain.i386);
        // Without CAP_SYS_ADMIN: no mount, clone only without namespace flags, clone3 ENOSYS.
        assert!(rules_for(&plain, "mount").is_empty());
        let clone = rules_for(&plain, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(
            clone[0].conds,
            [Cond {
                index: 0,
                op: Op::MaskedEq(0x7E02_0000),
                value: 0
            }]
        );
        let clone3 = rules_for(&plain, "clone3");
        assert_eq!(clone3[0].action, RET_ERRNO | libc::ENOSYS as u32);
        // arch-specific rules: amd64's arch_prctl, not arm's or s390's.
        assert_eq!(rules_for(&plain, "arch_prctl").len(), 1);
        assert!(rules_for(&plain, "s390_runtime_instr").is_empty());
        assert_eq!(rules_for(&plain, "ptrace").len(), 1, "minKernel 4.8");

        let admin = resolve(DEFAULT_PROFILE, caps::ALL).unwrap();
        assert_eq!(rules_for(&admin, "mount")[0].action, RET_ALLOW);
        let clone = rules_for(&admin, "clone");
        assert!(clone.iter().all(|r| r.conds.is_empty()), "{clone:?}");
    }

    #[test]
    fn malformed_profiles_are_errors() {
        assert!(resolve("{", 0).is_err());
        assert!(resolve(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#, 0).is_err());
        let r = resolve(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"name":"mkdir","action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
            0,
        )
        .unwrap();
        assert_eq!(r.default, RET_ALLOW);
        assert!(!r.i386);
        assert_eq!(r.rules[0].action, RET_ERRNO | 1);
    }
}
