//! A sandbox's packet filter and NAT: one nftables table per sandbox, `inet brig_<id12>`,
//! created with `flags owner` by an `nft -i` process that brig keeps alive with its stdin.
//!
//! An owner table belongs to the netlink socket that made it and is destroyed by the kernel
//! when that socket closes. The `nft` process lives exactly as long as the pipe to its stdin
//! is open, and only the sandbox's keeper holds that pipe (the VMM process itself where the
//! VMM is not jailed): when the sandbox ends in any way (`brig rm`, `--rm`, a crash, `kill
//! -9` of the VMM or of its keeper), nft reads end-of-file, exits, and the table is gone,
//! with nothing for anyone to clean up. The nft process runs in its own process group so
//! that a Ctrl-C meant for a foreground `brig run` does not reach it. The rules are applied
//! while the VM starts; the keeper waits for nft's word ([`Table::confirm`]) before the
//! workload is asked for.
//!
//! The rules (a forward chain, an input chain, a postrouting NAT chain), for TAP `T`, guest
//! `G`:
//! - anti-spoofing: from T, only G as source; no IPv6 from T at all (sandboxes are
//!   IPv4-only; the TAP also has IPv6 disabled, so it has no `fe80::` address);
//! - nothing forwarded into T but replies (published ports come in through the VMM's own
//!   proxy, from the host);
//! - from T never: link-local (169.254.0.0/16, the cloud metadata address), loopback,
//!   multicast, broadcast, and the whole sandbox pool (another sandbox);
//! - the input chain drops everything from T that is not a reply: no host service on any
//!   host address is reachable from a sandbox;
//! - with an allow-list (`--egress-allow`), only what it lists (and the `--dns` servers on
//!   port 53) is forwarded;
//! - masquerade of G's traffic leaving by any other interface.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::pool::{POOL_BASE, POOL_PREFIX};
use crate::vmm::ALWAYS_DENIED;

/// The `nft` binary (nftables).
const NFT: &str = "nft";
/// nft's HOME: not a directory, so that no history file can be read or made under it.
const NO_HOME: &str = "/dev/null";
/// How long nft may take to apply a ruleset: a guard against an nft that hangs, not a
/// latency bound. Applying takes milliseconds on a quiet host, but CI measured more than
/// 10 s with five sandboxes starting at once on one nested, emulated CPU.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Setting up the rules failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (install the nftables package): {0}")]
    Spawn(#[source] io::Error),
    #[error("nft refused the sandbox's rules: {0}")]
    Refused(String),
    #[error("nft did not apply the sandbox's rules within {0:?}")]
    Timeout(Duration),
    #[error("talking to nft: {0}")]
    Io(#[from] io::Error),
}

/// An allowed destination (`--egress-allow CIDR[:PORT[-PORT]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// `a.b.c.d/n` or `a.b.c.d`.
    pub net: String,
    /// TCP and UDP destination ports; `None`: any protocol, any port.
    pub ports: Option<(u16, u16)>,
}

/// What the table enforces for one sandbox.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The table's name, `brig_<id12>`.
    pub table: String,
    pub tap: String,
    pub guest: Ipv4Addr,
    /// `None`: everything not always denied is allowed.
    pub allow: Option<Vec<Allow>>,
}

/// The table name for sandbox `id`.
pub fn table_name(id: &str) -> String {
    format!("brig_{}", &id[..id.len().min(12)])
}

impl Rules {
    /// The nft commands that create the table, one per line.
    pub fn commands(&self) -> Vec<String> {
        let t = format!("inet {}", self.table);
        let tap = &self.tap;
        let g = self.guest;
        let mut c = vec![
            format!("add table {t} {{ flags owner; }}"),
            format!(
                "add chain {t} forward {{ type filter hook forward priority filter - 5; policy accept; }}"
            ),
            format!(
                "add chain {t} input {{ type filter hook input priority filter - 5; policy accept; }}"
            ),
            format!(
                "add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"
            ),
            format!("add rule {t} forward iifname \"{tap}\" meta nfproto ipv6 drop"),
            format!("add rule {t} forward iifname \"{tap}\" ip saddr != {g} drop"),
            format!("add rule {t} forward oifname \"{tap}\" ct state established,related accept"),
            format!("add rule {t} forward oifname \"{tap}\" drop"),
            // Destinations no sandbox reaches whatever its policy (the VMM's filter denies the
            // same ones), and the whole pool: other sandboxes.
            format!(
                "add rule {t} forward iifname \"{tap}\" ip daddr {{ {}, {POOL_BASE}/{POOL_PREFIX} }} drop",
                ALWAYS_DENIED.map(|c| c.to_string()).join(", ")
            ),
        ];
        if let Some(allow) = &self.allow {
            for a in allow {
                c.push(match a.ports {
                    None => format!("add rule {t} forward iifname \"{tap}\" ip daddr {} accept", a.net),
                    Some((lo, hi)) => {
                        let ports = if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") };
                        format!(
                            "add rule {t} forward iifname \"{tap}\" ip daddr {} meta l4proto {{ tcp, udp }} th dport {ports} accept",
                            a.net
                        )
                    }
                });
            }
            c.push(format!("add rule {t} forward iifname \"{tap}\" drop"));
        }
        c.push(format!(
            "add rule {t} input iifname \"{tap}\" ct state established,related accept"
        ));
        c.push(format!("add rule {t} input iifname \"{tap}\" drop"));
        c.push(format!(
            "add rule {t} postrouting ip saddr {g} oifname != \"{tap}\" masquerade"
        ));
        c
    }
}

/// The live table: dropping it ends the nft process, and with it the table.
#[derive(Debug)]
pub struct Table {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Until [`Table::confirm`]: nft's output, which says whether it applied the rules.
    pending: Mutex<Option<(ChildStdout, ChildStderr)>>,
}

impl Table {
    /// Creates the table with `rules`: hands them to a new nft process and returns without
    /// waiting for it to apply them (a VM can be restored meanwhile); [`Table::confirm`]
    /// waits, or explains in one line why nft did not apply them. Nothing may depend on the
    /// rules before then: the sandbox's workload must not start.
    pub fn start(rules: &Rules) -> Result<Self, NftError> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(NFT)
            .arg("-i")
            // Interactive nft keeps a line-editing history in `$HOME/.nft.history`: read
            // whole when it starts, rewritten when it exits, never trimmed. brig's rules
            // are not the user's history: with HOME a non-directory both fail, silently,
            // and nothing is read, written or left behind.
            .env("HOME", NO_HOME)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(NftError::Spawn)?;
        let output = child
            .stdout
            .take()
            .zip(child.stderr.take())
            .ok_or_else(|| io::Error::other("nft's output is not piped"))?;
        let mut table = Self {
            stdin: child.stdin.take(),
            child,
            pending: Mutex::new(Some(output)),
        };
        let mut script = rules.commands().join("\n");
        script.push_str(&format!("\nlist table inet {}\n", rules.table));
        let stdin = table
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("no stdin"))?;
        stdin.write_all(script.as_bytes())?;
        stdin.flush()?;
        Ok(table)
    }

    /// Waits until nft has applied the rules [`Table::start`] gave it (at once when it
    /// has already said so), or says in one line why it did not.
    pub fn confirm(&self) -> Result<(), NftError> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match pending {
            Some((stdout, stderr)) => Self::await_listing(stdout, stderr),
            None => Ok(()),
        }
    }

    /// Reads nft's listing of the table (its last line is `}`), which comes after every
    /// command before it was processed; then any error nft printed is on its stderr.
    fn await_listing(stdout: ChildStdout, stderr: ChildStderr) -> Result<(), NftError> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut listed = false;
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) if l == "}" => {
                        listed = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(listed);
        });
        let deadline = Instant::now() + APPLY_TIMEOUT;
        let listed = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or(false);
        // Whatever nft printed on stderr by now: nothing when all went well.
        rustix::fs::fcntl_setfl(&stderr, rustix::fs::OFlags::NONBLOCK).map_err(io::Error::from)?;
        let mut errors = String::new();
        let mut stderr = stderr;
        let _ = stderr.read_to_string(&mut errors);
        if let Some(first) = errors.lines().find(|l| !l.trim().is_empty()) {
            return Err(NftError::Refused(
                first.trim_start_matches("Error: ").to_string(),
            ));
        }
        if !listed {
            return Err(NftError::Timeout(APPLY_TIMEOUT));
        }
        Ok(())
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // End of input: nft exits, the kernel destroys the owner table.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: Option<Vec<Allow>>) -> Rules {
        Rules {
            table: table_name("0123456789abcdef"),
            tap: "brig-01234567".into(),
            guest: Ipv4Addr::new(10, 89, 0, 2),
            allow,
        }
    }

    #[test]
    fn default_rules_deny_the_host_metadata_and_other_sandboxes() {
        let c = rules(None).commands().join("\n");
        assert!(c.starts_with("add table inet brig_0123456789ab { flags owner; }"));
        assert!(c.contains("ip saddr != 10.89.0.2 drop"));
        assert!(c.contains("meta nfproto ipv6 drop"));
        assert!(c.contains("169.254.0.0/16"));
        assert!(c.contains("10.89.0.0/16 } drop"));
        assert!(c.contains("add rule inet brig_0123456789ab input iifname \"brig-01234567\" drop"));
        assert!(c.contains("masquerade"));
        // Without an allow-list nothing else is dropped from the TAP in forward.
        assert!(!c.contains("forward iifname \"brig-01234567\" drop"));
    }

    #[test]
    fn an_allow_list_accepts_only_what_it_lists() {
        let c = rules(Some(vec![
            Allow {
                net: "198.51.100.1/32".into(),
                ports: Some((8000, 8000)),
            },
            Allow {
                net: "192.0.2.0/24".into(),
                ports: Some((1000, 2000)),
            },
            Allow {
                net: "203.0.113.7".into(),
                ports: None,
            },
        ]))
        .commands();
        let pos = |needle: &str| c.iter().position(|l| l.contains(needle)).unwrap();
        assert!(c[pos("198.51.100.1/32")].ends_with("th dport 8000 accept"));
        assert!(c[pos("192.0.2.0/24")].ends_with("th dport 1000-2000 accept"));
        assert!(c[pos("203.0.113.7")].ends_with("ip daddr 203.0.113.7 accept"));
        let last_drop = pos("forward iifname \"brig-01234567\" drop");
        assert!(
            last_drop > pos("203.0.113.7"),
            "the final drop comes after the accepts"
        );
        assert!(
            pos("10.89.0.0/16 } drop") < pos("198.51.100.1/32"),
            "deny beats allow"
        );
    }
}
