//! A sandbox's packet filter and NAT: one nftables table per sandbox, `inet brig_<id12>`,
//! created with `flags owner` over a netlink socket that the sandbox's keeper holds.
//!
//! An owner table belongs to the netlink socket that made it and is destroyed by the kernel
//! when that socket closes. brig makes it itself, in one nf_tables batch ([`super::nfnetlink`]),
//! and keeps the socket open in the process that holds the sandbox's network (the VMM process
//! itself where the VMM is not jailed, else its keeper): when the sandbox ends in any way
//! (`brig rm`, `--rm`, a crash, `kill -9` of the VMM or of its keeper) the socket closes and
//! the table is gone, with nothing for anyone to clean up and no helper process. The batch is
//! sent while the VM starts; the keeper waits for the kernel's word ([`Table::confirm`])
//! before the workload is asked for.
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

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::nfnetlink::{self, Base, Batch, Chain, CmpOp, Expr, Hook, MetaKey, Verdict};
use super::pool::{POOL_BASE, POOL_PREFIX};
use crate::vmm::{Cidr, EgressRule, ALWAYS_DENIED};

/// How long the kernel may take to apply a ruleset: a guard against a hang, not a latency
/// bound. Applying takes milliseconds on a quiet host, but CI measured more than 10 s with
/// five sandboxes starting at once on one nested, emulated CPU (then through nft).
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Setting up the rules failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot open a netfilter netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("the kernel refused the sandbox's nftables rules ({what}): {source}{hint}")]
    Refused {
        what: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("the kernel did not apply the sandbox's nftables rules within {0:?}")]
    Timeout(Duration),
    #[error("talking to nf_tables: {0}")]
    Io(#[from] io::Error),
}

/// What the table enforces for one sandbox.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The table's name, `brig_<id12>`.
    pub table: String,
    pub tap: String,
    pub guest: Ipv4Addr,
    /// `--egress-allow` (and the name servers on port 53); `None`: everything not always
    /// denied is allowed.
    pub allow: Option<Vec<EgressRule>>,
}

/// The table name for sandbox `id`.
pub fn table_name(id: &str) -> String {
    format!("brig_{}", &id[..id.len().min(12)])
}

/// The table's base chains.
pub const CHAINS: [Chain; 3] = [
    Chain {
        name: "forward",
        kind: "filter",
        hook: Hook::Forward,
        priority: -5,
    },
    Chain {
        name: "input",
        kind: "filter",
        hook: Hook::Input,
        priority: -5,
    },
    Chain {
        name: "postrouting",
        kind: "nat",
        hook: Hook::Postrouting,
        priority: 100,
    },
];

/// One rule: its chain, its expressions, and the same rule in nft's language.
#[derive(Debug, Clone)]
pub struct Rule {
    pub chain: &'static str,
    pub exprs: Vec<Expr>,
    pub text: String,
}

/// Builds a rule's expressions and its nft text side by side.
struct RuleBuilder {
    chain: &'static str,
    exprs: Vec<Expr>,
    text: Vec<String>,
    /// `meta nfproto ipv4` is in already (nft adds it once before `ip` matches).
    ipv4: bool,
}

impl RuleBuilder {
    fn new(chain: &'static str) -> Self {
        Self {
            chain,
            exprs: Vec::new(),
            text: Vec::new(),
            ipv4: false,
        }
    }

    fn interface(mut self, key: MetaKey, op: CmpOp, name: &str) -> Self {
        // Interface names compare as IFNAMSIZ bytes, NUL-padded.
        let mut data = name.as_bytes().to_vec();
        data.resize(libc::IFNAMSIZ, 0);
        self.exprs.push(Expr::Meta(key));
        self.exprs.push(Expr::Cmp(op, data));
        let field = if key == MetaKey::IifName {
            "iifname"
        } else {
            "oifname"
        };
        let op = if op == CmpOp::Neq { "!= " } else { "" };
        self.text.push(format!("{field} {op}\"{name}\""));
        self
    }

    fn iif(self, tap: &str) -> Self {
        self.interface(MetaKey::IifName, CmpOp::Eq, tap)
    }

    fn oif(self, op: CmpOp, tap: &str) -> Self {
        self.interface(MetaKey::OifName, op, tap)
    }

    /// `meta nfproto ipv4|ipv6`, said in words.
    fn nfproto(mut self, proto: u8) -> Self {
        self.nfproto_match(proto);
        let name = if proto == libc::NFPROTO_IPV4 as u8 {
            "ipv4"
        } else {
            "ipv6"
        };
        self.text.push(format!("meta nfproto {name}"));
        self
    }

    /// The expressions of an nfproto match.
    fn nfproto_match(&mut self, proto: u8) {
        self.exprs.push(Expr::Meta(MetaKey::NfProto));
        self.exprs.push(Expr::Cmp(CmpOp::Eq, vec![proto]));
        self.ipv4 |= proto == libc::NFPROTO_IPV4 as u8;
    }

    /// The IPv4 dependency without words: nft adds it itself before an `ip` match.
    fn ipv4_dependency(&mut self) {
        if !self.ipv4 {
            self.nfproto_match(libc::NFPROTO_IPV4 as u8);
        }
    }

    /// `ip saddr` (offset 12) or `ip daddr` (16) against a network, as nft encodes it: a
    /// load of the prefix's whole bytes, or of all four and a mask; `/0` matches any IPv4.
    fn address(mut self, offset: u32, op: CmpOp, net: Cidr) -> Self {
        let field = if offset == 12 { "saddr" } else { "daddr" };
        if net.prefix() == 0 {
            return self.nfproto(libc::NFPROTO_IPV4 as u8);
        }
        self.ipv4_dependency();
        let octets = net.addr().octets();
        let whole = usize::from(net.prefix() / 8);
        if net.prefix() % 8 == 0 {
            self.exprs.push(Expr::Payload {
                base: Base::Network,
                offset,
                len: whole as u32,
            });
            self.exprs.push(Expr::Cmp(op, octets[..whole].to_vec()));
        } else {
            let mask = u32::MAX << (32 - u32::from(net.prefix()));
            self.exprs.push(Expr::Payload {
                base: Base::Network,
                offset,
                len: 4,
            });
            self.exprs.push(Expr::Bitwise(mask.to_be_bytes().to_vec()));
            self.exprs.push(Expr::Cmp(op, octets.to_vec()));
        }
        let op = if op == CmpOp::Neq { "!= " } else { "" };
        let net = if net.prefix() == 32 {
            net.addr().to_string()
        } else {
            net.to_string()
        };
        self.text.push(format!("ip {field} {op}{net}"));
        self
    }

    /// `ct state established,related`.
    fn reply(mut self) -> Self {
        self.exprs.push(Expr::CtState);
        // NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED), host order.
        self.exprs.push(Expr::Bitwise(6u32.to_ne_bytes().to_vec()));
        self.exprs.push(Expr::Cmp(CmpOp::Neq, vec![0; 4]));
        self.text.push("ct state established,related".into());
        self
    }

    /// `meta l4proto tcp|udp th dport LO[-HI]`.
    fn ports(mut self, proto: u8, (lo, hi): (u16, u16)) -> Self {
        self.exprs.push(Expr::Meta(MetaKey::L4Proto));
        self.exprs.push(Expr::Cmp(CmpOp::Eq, vec![proto]));
        self.exprs.push(Expr::Payload {
            base: Base::Transport,
            offset: 2,
            len: 2,
        });
        let name = if i32::from(proto) == libc::IPPROTO_TCP {
            "tcp"
        } else {
            "udp"
        };
        if lo == hi {
            self.exprs
                .push(Expr::Cmp(CmpOp::Eq, lo.to_be_bytes().to_vec()));
            self.text.push(format!("meta l4proto {name} th dport {lo}"));
        } else {
            self.exprs
                .push(Expr::Cmp(CmpOp::Gte, lo.to_be_bytes().to_vec()));
            self.exprs
                .push(Expr::Cmp(CmpOp::Lte, hi.to_be_bytes().to_vec()));
            self.text
                .push(format!("meta l4proto {name} th dport {lo}-{hi}"));
        }
        self
    }

    fn verdict(mut self, v: Verdict) -> Rule {
        self.exprs.push(Expr::Verdict(v));
        self.text.push(
            if v == Verdict::Accept {
                "accept"
            } else {
                "drop"
            }
            .into(),
        );
        self.finish()
    }

    fn masquerade(mut self) -> Rule {
        self.exprs.push(Expr::Masquerade);
        self.text.push("masquerade".into());
        self.finish()
    }

    fn finish(self) -> Rule {
        Rule {
            chain: self.chain,
            exprs: self.exprs,
            text: self.text.join(" "),
        }
    }
}

impl Rules {
    /// The table's rules, in order.
    pub fn rules(&self) -> Vec<Rule> {
        use Verdict::{Accept, Drop};
        let tap = &self.tap;
        let fwd = || RuleBuilder::new("forward");
        let mut r = vec![
            fwd()
                .iif(tap)
                .nfproto(libc::NFPROTO_IPV6 as u8)
                .verdict(Drop),
            fwd()
                .iif(tap)
                .address(12, CmpOp::Neq, host(self.guest))
                .verdict(Drop),
            fwd().oif(CmpOp::Eq, tap).reply().verdict(Accept),
            fwd().oif(CmpOp::Eq, tap).verdict(Drop),
        ];
        // Destinations no sandbox reaches whatever its policy (the VMM's filter denies the
        // same ones), and the whole pool: other sandboxes.
        let pool = Cidr::new(POOL_BASE, POOL_PREFIX).expect("the pool is a network");
        for net in ALWAYS_DENIED.into_iter().chain([pool]) {
            r.push(fwd().iif(tap).address(16, CmpOp::Eq, net).verdict(Drop));
        }
        if let Some(allow) = &self.allow {
            for a in allow {
                match a.ports {
                    None => r.push(fwd().iif(tap).address(16, CmpOp::Eq, a.net).verdict(Accept)),
                    Some(range) => {
                        for proto in [libc::IPPROTO_TCP, libc::IPPROTO_UDP] {
                            r.push(
                                fwd()
                                    .iif(tap)
                                    .address(16, CmpOp::Eq, a.net)
                                    .ports(proto as u8, range)
                                    .verdict(Accept),
                            );
                        }
                    }
                }
            }
            r.push(fwd().iif(tap).verdict(Drop));
        }
        let input = || RuleBuilder::new("input");
        r.push(input().iif(tap).reply().verdict(Accept));
        r.push(input().iif(tap).verdict(Drop));
        r.push(
            RuleBuilder::new("postrouting")
                .address(12, CmpOp::Eq, host(self.guest))
                .oif(CmpOp::Neq, tap)
                .masquerade(),
        );
        r
    }

    /// The same table in nft's language (what `nft -f` would take).
    #[cfg(test)]
    pub fn script(&self) -> String {
        let t = format!("inet {}", self.table);
        let mut s = format!("add table {t} {{ flags owner; }}\n");
        for c in &CHAINS {
            s.push_str(&format!(
                "add chain {t} {} {{ type {} hook {} priority {}; policy accept; }}\n",
                c.name, c.kind, c.name, c.priority
            ));
        }
        for r in self.rules() {
            s.push_str(&format!("add rule {t} {} {}\n", r.chain, r.text));
        }
        s
    }

    /// The table as one nf_tables batch, and what each of its messages does.
    fn batch(&self, first_seq: u32) -> (Vec<u8>, Vec<String>) {
        let mut b = Batch::new(first_seq);
        b.owner_table(&self.table);
        for c in &CHAINS {
            b.chain(&self.table, c);
        }
        for r in self.rules() {
            b.rule(&self.table, r.chain, &r.text, &r.exprs);
        }
        b.finish()
    }
}

/// A single address as a /32.
fn host(addr: Ipv4Addr) -> Cidr {
    Cidr::new(addr, 32).expect("a /32 has no host bits")
}

/// The live table: it lives as long as this socket is open.
#[derive(Debug)]
pub struct Table {
    socket: OwnedFd,
    /// Until [`Table::confirm`]: the messages whose acknowledgement is awaited.
    pending: Mutex<Option<Pending>>,
}

#[derive(Debug)]
struct Pending {
    first_seq: u32,
    what: Vec<String>,
}

impl Table {
    /// Creates the table with `rules`: sends them to the kernel and returns without waiting
    /// for its answer (a VM can be restored meanwhile); [`Table::confirm`] waits, or explains
    /// in one line why the kernel did not apply them. Nothing may depend on the rules before
    /// then: the sandbox's workload must not start.
    pub fn start(rules: &Rules) -> Result<Self, NftError> {
        use rustix::net::{netlink, socket_with, AddressFamily, SocketFlags, SocketType};
        let socket = socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(netlink::NETFILTER),
        )
        .map_err(|e| NftError::Socket(e.into()))?;
        rustix::net::sockopt::set_socket_timeout(
            &socket,
            rustix::net::sockopt::Timeout::Recv,
            Some(APPLY_TIMEOUT),
        )
        .map_err(|e| NftError::Socket(e.into()))?;
        // The batch opener takes the first number; its messages the ones after.
        let first_seq = 1;
        let (bytes, what) = rules.batch(first_seq);
        let sent = rustix::net::send(&socket, &bytes, rustix::net::SendFlags::empty())
            .map_err(io::Error::from)?;
        if sent != bytes.len() {
            return Err(io::Error::other("nf_tables batch sent in part").into());
        }
        Ok(Self {
            socket,
            pending: Mutex::new(Some(Pending {
                first_seq: first_seq + 1,
                what,
            })),
        })
    }

    /// Waits until the kernel has applied the rules [`Table::start`] sent (at once when it
    /// has already said so), or says in one line why it did not.
    pub fn confirm(&self) -> Result<(), NftError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = pending.as_ref() else {
            return Ok(());
        };
        let deadline = Instant::now() + APPLY_TIMEOUT;
        // The kernel answers each message that fails, and the last one (the only one that
        // asks) when the whole batch is in; answers come in order.
        let last = p.what.len().saturating_sub(1);
        let mut buf = vec![0u8; 64 * 1024];
        'answers: loop {
            if Instant::now() >= deadline {
                return Err(NftError::Timeout(APPLY_TIMEOUT));
            }
            let flags = rustix::net::RecvFlags::empty();
            let n = match rustix::net::recv(&self.socket, &mut buf[..], flags) {
                Ok((n, _)) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return Err(NftError::Timeout(APPLY_TIMEOUT)),
                Err(e) => return Err(io::Error::from(e).into()),
            };
            for ack in nfnetlink::acks(&buf[..n.min(buf.len())]) {
                let Some(i) = ack.seq.checked_sub(p.first_seq).map(|i| i as usize) else {
                    continue;
                };
                if i > last {
                    continue;
                }
                if ack.errno != 0 {
                    let hint = if matches!(ack.errno, libc::ENOENT | libc::EOPNOTSUPP) {
                        " (is a netfilter module missing from this kernel? nf_tables with nft_chain_nat, nft_masq and nft_ct is needed)"
                    } else {
                        ""
                    };
                    return Err(NftError::Refused {
                        what: p.what[i].clone(),
                        source: io::Error::from_raw_os_error(ack.errno),
                        hint,
                    });
                }
                if i == last {
                    break 'answers;
                }
            }
        }
        *pending = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
