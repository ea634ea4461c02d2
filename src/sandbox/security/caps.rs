//! Linux capabilities by name, docker's default set, and docker's `--cap-add`/`--cap-drop`
//! rules (moby's `oci/caps.TweakCapabilities`).

use super::SecurityError;

/// Capability names in bit order (`include/uapi/linux/capability.h` of the guest's 6.12
/// kernel: `CAP_LAST_CAP` is `CAP_CHECKPOINT_RESTORE`, 40).
pub const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Every capability the guest kernel knows.
pub const ALL: u64 = (1 << NAMES.len()) - 1;

/// docker's default capabilities (moby's `oci/caps.DefaultCapabilities`).
pub const DOCKER_DEFAULT: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The bit of a capability named as in capability.h (`CAP_SYS_ADMIN`).
pub fn bit(name: &str) -> Option<u64> {
    NAMES.iter().position(|n| *n == name).map(|i| 1 << i)
}

/// A set of names as a mask (names must be canonical and known).
pub fn mask(names: &[&str]) -> u64 {
    names.iter().filter_map(|n| bit(n)).fold(0, |m, b| m | b)
}

/// One `--cap-add`/`--cap-drop` value, normalized as docker does: `ALL`, or `CAP_` + the
/// upper-cased name, which must be a known capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    All,
    One(u64),
}

fn normalize(flag: &'static str, value: &str) -> Result<Cap, SecurityError> {
    let upper = value.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(Cap::All);
    }
    let name = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    match bit(&name) {
        Some(b) => Ok(Cap::One(b)),
        None => Err(SecurityError::UnknownCapability { flag, name }),
    }
}

/// The capability set docker gives with these flags: everything when privileged; else the
/// defaults less `--cap-drop` plus `--cap-add`, where `--cap-add ALL` is every capability
/// but the dropped ones and `--cap-drop ALL` leaves only the added ones.
pub fn tweak(adds: &[String], drops: &[String], privileged: bool) -> Result<u64, SecurityError> {
    let add = adds
        .iter()
        .map(|a| normalize("CapAdd", a))
        .collect::<Result<Vec<_>, _>>()?;
    let drop = drops
        .iter()
        .map(|d| normalize("CapDrop", d))
        .collect::<Result<Vec<_>, _>>()?;
    if privileged {
        return Ok(ALL);
    }
    let ones = |list: &[Cap]| {
        list.iter().fold(0u64, |m, c| match c {
            Cap::One(b) => m | b,
            Cap::All => m,
        })
    };
    let (add_all, drop_all) = (add.contains(&Cap::All), drop.contains(&Cap::All));
    Ok(if add_all {
        ALL & !ones(&drop)
    } else if drop_all {
        ones(&add)
    } else {
        (mask(DOCKER_DEFAULT) & !ones(&drop)) | ones(&add)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn default_set_is_dockers() {
        assert_eq!(mask(DOCKER_DEFAULT), 0xa80425fb);
        assert_eq!(ALL, 0x1ff_ffff_ffff);
        assert_eq!(tweak(&[], &[], false).unwrap(), 0xa80425fb);
        assert_eq!(tweak(&[], &[], true).unwrap(), ALL);
    }

    #[test]
    fn add_and_drop_follow_docker() {
        let admin = bit("CAP_SYS_ADMIN").unwrap();
        assert_eq!(
            tweak(&s(&["sys_admin"]), &[], false).unwrap(),
            0xa80425fb | admin
        );
        assert_eq!(
            tweak(&s(&["CAP_SYS_ADMIN"]), &s(&["all"]), false).unwrap(),
            admin
        );
        assert_eq!(tweak(&[], &s(&["ALL"]), false).unwrap(), 0);
        assert_eq!(
            tweak(&[], &s(&["net_raw"]), false).unwrap(),
            0xa80425fb & !bit("CAP_NET_RAW").unwrap()
        );
        assert_eq!(
            tweak(&s(&["ALL"]), &s(&["Cap_Sys_Admin"]), false).unwrap(),
            ALL & !admin
        );
        // Adding and dropping one: the add wins, as in docker.
        assert_eq!(
            tweak(&s(&["chown"]), &s(&["chown"]), false).unwrap(),
            0xa80425fb
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        let e = tweak(&s(&["nope"]), &[], false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid CapAdd: unknown capability: \"CAP_NOPE\""
        );
        assert!(tweak(&[], &s(&["CAP_FOO"]), true).is_err());
    }
}
