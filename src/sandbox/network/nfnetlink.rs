//! nf_tables' netlink wire format, the part a sandbox's table needs: one batch of
//! `NEWTABLE`, `NEWCHAIN` and `NEWRULE` messages whose rules are lists of the kernel's
//! expressions (`meta`, `cmp`, `payload`, `bitwise`, `ct`, `immediate`, `masq`), and the
//! kernel's acknowledgements.
//!
//! This is what the `nft` tool sends: brig speaks it itself, so that a sandbox's packet
//! filter costs a few system calls instead of a process (nft's start-up, its cache of the
//! host's whole ruleset and its parser). The layout is `linux/netfilter/nf_tables.h` and
//! `linux/netfilter/nfnetlink.h`; [`Expr::render`] prints an expression the way
//! `nft --debug=netlink` does, which the tests hold against nft's own output.

// Netlink (linux/netlink.h).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

// nfnetlink (linux/netfilter/nfnetlink.h).
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

// nf_tables (linux/netfilter/nf_tables.h).
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
/// The family of a table that sees IPv4 and IPv6 (`inet`).
const NFPROTO_INET: u8 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
/// The table is destroyed when the netlink socket that made it closes.
const NFT_TABLE_F_OWNER: u32 = 0x2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
/// The verdict register, and the first data register (nft's `reg 1`).
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
/// The verdicts (linux/netfilter.h).
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

/// A netfilter hook (`enum nf_inet_hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Input = 1,
    Forward = 2,
    Postrouting = 4,
}

/// A base chain: hooked into the stack with a type and a priority, policy accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: &'static str,
    /// `filter` or `nat`.
    pub kind: &'static str,
    pub hook: Hook,
    pub priority: i32,
}

/// What `meta` loads (`enum nft_meta_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    IifName = 6,
    OifName = 7,
    NfProto = 15,
    L4Proto = 16,
}

/// A comparison (`enum nft_cmp_ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
    Lte = 3,
    Gte = 5,
}

/// Where a payload load starts (`enum nft_payload_bases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Network = 1,
    Transport = 2,
}

/// A final verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

/// One expression of a rule; every load goes to register 1, every comparison reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta(MetaKey),
    Cmp(CmpOp, Vec<u8>),
    Payload {
        base: Base,
        offset: u32,
        len: u32,
    },
    /// `reg 1 = (reg 1 & mask) ^ 0`.
    Bitwise(Vec<u8>),
    /// The connection-tracking state bits.
    CtState,
    Verdict(Verdict),
    Masquerade,
}

impl Expr {
    /// The expression as `nft --debug=netlink` prints it.
    #[cfg(test)]
    pub fn render(&self) -> String {
        match self {
            Self::Meta(key) => {
                let name = match key {
                    MetaKey::IifName => "iifname",
                    MetaKey::OifName => "oifname",
                    MetaKey::NfProto => "nfproto",
                    MetaKey::L4Proto => "l4proto",
                };
                format!("[ meta load {name} => reg 1 ]")
            }
            Self::Cmp(op, data) => {
                let op = match op {
                    CmpOp::Eq => "eq",
                    CmpOp::Neq => "neq",
                    CmpOp::Lte => "lte",
                    CmpOp::Gte => "gte",
                };
                format!("[ cmp {op} reg 1 {} ]", words(data))
            }
            Self::Payload { base, offset, len } => {
                let base = match base {
                    Base::Network => "network",
                    Base::Transport => "transport",
                };
                format!("[ payload load {len}b @ {base} header + {offset} => reg 1 ]")
            }
            Self::Bitwise(mask) => format!(
                "[ bitwise reg 1 = ( reg 1 & {} ) ^ {} ]",
                words(mask),
                words(&vec![0; mask.len()])
            ),
            Self::CtState => "[ ct load state => reg 1 ]".into(),
            Self::Verdict(Verdict::Accept) => "[ immediate reg 0 accept ]".into(),
            Self::Verdict(Verdict::Drop) => "[ immediate reg 0 drop ]".into(),
            Self::Masquerade => "[ masq ]".into(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Meta(_) => "meta",
            Self::Cmp(..) => "cmp",
            Self::Payload { .. } => "payload",
            Self::Bitwise(_) => "bitwise",
            Self::CtState => "ct",
            Self::Verdict(_) => "immediate",
            Self::Masquerade => "masq",
        }
    }

    /// The expression's attributes (`NFTA_EXPR_DATA`).
    fn encode(&self, a: &mut Attrs<'_>) {
        match self {
            Self::Meta(key) => {
                a.be32(1, NFT_REG_1); // NFTA_META_DREG
                a.be32(2, *key as u32); // NFTA_META_KEY
            }
            Self::Cmp(op, data) => {
                a.be32(1, NFT_REG_1); // NFTA_CMP_SREG
                a.be32(2, *op as u32); // NFTA_CMP_OP
                a.nested(3, |d| d.put(NFTA_DATA_VALUE, data)); // NFTA_CMP_DATA
            }
            Self::Payload { base, offset, len } => {
                a.be32(1, NFT_REG_1); // NFTA_PAYLOAD_DREG
                a.be32(2, *base as u32); // NFTA_PAYLOAD_BASE
                a.be32(3, *offset); // NFTA_PAYLOAD_OFFSET
                a.be32(4, *len); // NFTA_PAYLOAD_LEN
            }
            Self::Bitwise(mask) => {
                a.be32(1, NFT_REG_1); // NFTA_BITWISE_SREG
                a.be32(2, NFT_REG_1); // NFTA_BITWISE_DREG
                a.be32(3, mask.len() as u32); // NFTA_BITWISE_LEN
                a.nested(4, |d| d.put(NFTA_DATA_VALUE, mask)); // NFTA_BITWISE_MASK
                a.nested(5, |d| d.put(NFTA_DATA_VALUE, &vec![0; mask.len()]));
                // _XOR
            }
            Self::CtState => {
                a.be32(1, NFT_REG_1); // NFTA_CT_DREG
                a.be32(2, 0); // NFTA_CT_KEY: NFT_CT_STATE
            }
            Self::Verdict(v) => {
                let code = match v {
                    Verdict::Accept => NF_ACCEPT,
                    Verdict::Drop => NF_DROP,
                };
                a.be32(1, NFT_REG_VERDICT); // NFTA_IMMEDIATE_DREG
                a.nested(2, |d| {
                    d.nested(NFTA_DATA_VERDICT, |v| v.be32(NFTA_VERDICT_CODE, code))
                });
            }
            Self::Masquerade => {}
        }
    }
}

/// Data as nft's debug output prints it: 32-bit words, each in host byte order.
#[cfg(test)]
fn words(data: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for (i, chunk) in data.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "0x{:08x}", u32::from_ne_bytes(w));
    }
    s
}

/// Attributes being appended to a message.
pub struct Attrs<'a> {
    buf: &'a mut Vec<u8>,
}

impl Attrs<'_> {
    fn put(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        pad(self.buf);
    }

    fn be32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_be_bytes());
    }

    /// A NUL-terminated string.
    fn str(&mut self, kind: u16, s: &str) {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.put(kind, &data);
    }

    fn nested(&mut self, kind: u16, f: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        f(&mut Attrs { buf: self.buf });
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }
}

fn pad(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// One transaction: the kernel applies all of its messages or none.
pub struct Batch {
    buf: Vec<u8>,
    /// Where the last nf_tables message starts: the one that asks for an acknowledgement.
    last: Option<usize>,
    next_seq: u32,
    /// What each nf_tables message does, in sequence order (for an error's one line).
    what: Vec<String>,
}

impl Batch {
    /// A batch whose messages are numbered from `first_seq`.
    pub fn new(first_seq: u32) -> Self {
        let mut b = Self {
            buf: Vec::with_capacity(8192),
            last: None,
            next_seq: first_seq,
            what: Vec::new(),
        };
        b.message(NFNL_MSG_BATCH_BEGIN, 0, NLM_F_REQUEST, |_| {});
        b
    }

    /// Appends one message: nfnetlink's header then the attributes `f` writes.
    fn message(&mut self, kind: u16, family: u8, flags: u16, f: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; NLMSG_HDRLEN]);
        // struct nfgenmsg: family, version 0, the subsystem in network byte order.
        self.buf.push(family);
        self.buf.push(0);
        self.buf
            .extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        f(&mut Attrs { buf: &mut self.buf });
        let len = (self.buf.len() - start) as u32;
        let seq = self.next_seq;
        self.next_seq += 1;
        let h = &mut self.buf[start..start + NLMSG_HDRLEN];
        h[0..4].copy_from_slice(&len.to_ne_bytes());
        h[4..6].copy_from_slice(&kind.to_ne_bytes());
        h[6..8].copy_from_slice(&flags.to_ne_bytes());
        h[8..12].copy_from_slice(&seq.to_ne_bytes());
        // nlmsg_pid 0: the kernel.
    }

    fn nft_message(&mut self, what: String, msg: u16, flags: u16, f: impl FnOnce(&mut Attrs<'_>)) {
        self.what.push(what);
        self.last = Some(self.buf.len());
        self.message(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NFPROTO_INET,
            NLM_F_REQUEST | flags,
            f,
        );
    }

    /// A new `inet` table that the sending socket owns.
    pub fn owner_table(&mut self, table: &str) {
        self.nft_message(
            format!("adding table inet {table}"),
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE | NLM_F_EXCL,
            |a| {
                a.str(NFTA_TABLE_NAME, table);
                a.be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER);
            },
        );
    }

    /// A base chain of `table` with policy accept.
    pub fn chain(&mut self, table: &str, chain: &Chain) {
        self.nft_message(
            format!("adding chain {}", chain.name),
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE | NLM_F_EXCL,
            |a| {
                a.str(NFTA_CHAIN_TABLE, table);
                a.str(NFTA_CHAIN_NAME, chain.name);
                a.nested(NFTA_CHAIN_HOOK, |h| {
                    h.be32(NFTA_HOOK_HOOKNUM, chain.hook as u32);
                    h.be32(NFTA_HOOK_PRIORITY, chain.priority as u32);
                });
                a.be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
                a.str(NFTA_CHAIN_TYPE, chain.kind);
            },
        );
    }

    /// A rule appended to `chain`.
    pub fn rule(&mut self, table: &str, chain: &str, text: &str, exprs: &[Expr]) {
        self.nft_message(
            format!("adding rule \"{text}\" to chain {chain}"),
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            |a| {
                a.str(NFTA_RULE_TABLE, table);
                a.str(NFTA_RULE_CHAIN, chain);
                a.nested(NFTA_RULE_EXPRESSIONS, |list| {
                    for e in exprs {
                        list.nested(NFTA_LIST_ELEM, |el| {
                            el.str(NFTA_EXPR_NAME, e.name());
                            el.nested(NFTA_EXPR_DATA, |d| e.encode(d));
                        });
                    }
                });
            },
        );
    }

    /// The batch's bytes, and what each nf_tables message does (in sequence order, from the
    /// one after the batch's opening message).
    ///
    /// Only the last message asks for an acknowledgement: the kernel answers a message that
    /// fails whether asked or not, and applies a batch whole or not at all, so one answer
    /// for the last says the batch is in (one datagram to read instead of one per message).
    pub fn finish(mut self) -> (Vec<u8>, Vec<String>) {
        if let Some(at) = self.last {
            let flags = &mut self.buf[at + 6..at + 8];
            let acked = u16::from_ne_bytes([flags[0], flags[1]]) | NLM_F_ACK;
            flags.copy_from_slice(&acked.to_ne_bytes());
        }
        self.message(NFNL_MSG_BATCH_END, 0, NLM_F_REQUEST, |_| {});
        (self.buf, self.what)
    }
}

/// An acknowledgement: the sequence number it answers and the error (0: done).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u32,
    pub errno: i32,
}

/// The acknowledgements in a datagram from the kernel; other messages are skipped, and a
/// malformed length ends the parse.
pub fn acks(datagram: &[u8]) -> Vec<Ack> {
    let mut found = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if kind == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
            let e = &rest[NLMSG_HDRLEN..NLMSG_HDRLEN + 4];
            let error = i32::from_ne_bytes([e[0], e[1], e[2], e[3]]);
            found.push(Ack {
                seq,
                errno: error.saturating_neg(),
            });
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_sized() {
        let mut buf = Vec::new();
        let mut a = Attrs { buf: &mut buf };
        a.str(1, "ab");
        a.nested(2, |n| n.be32(3, 7));
        assert_eq!(
            buf,
            [
                7, 0, 1, 0, b'a', b'b', 0, 0, // "ab\0", padded to 8
                12, 0, 2, 0x80, // nested, 12 bytes
                8, 0, 3, 0, 0, 0, 0, 7, // big-endian 7
            ]
        );
    }

    #[test]
    fn a_batch_is_framed_and_numbered() {
        let mut b = Batch::new(100);
        b.owner_table("t");
        b.chain(
            "t",
            &Chain {
                name: "c",
                kind: "filter",
                hook: Hook::Input,
                priority: 0,
            },
        );
        let (bytes, what) = b.finish();
        assert_eq!(what, ["adding table inet t", "adding chain c"]);
        let (mut seqs, mut kinds, mut acked) = (Vec::new(), Vec::new(), Vec::new());
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            kinds.push(u16::from_ne_bytes(rest[4..6].try_into().unwrap()));
            let flags = u16::from_ne_bytes(rest[6..8].try_into().unwrap());
            acked.push(flags & NLM_F_ACK != 0);
            seqs.push(u32::from_ne_bytes(rest[8..12].try_into().unwrap()));
            rest = &rest[len..];
        }
        assert_eq!(kinds, [0x10, 0x0a00, 0x0a03, 0x11]);
        assert_eq!(seqs, [100, 101, 102, 103]);
        // Only the last nf_tables message asks for an acknowledgement.
        assert_eq!(acked, [false, false, true, false]);
    }

    #[test]
    fn acks_are_read_and_garbage_is_not() {
        let mut msg = vec![0u8; 36];
        msg[0..4].copy_from_slice(&36u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg[8..12].copy_from_slice(&7u32.to_ne_bytes());
        msg[16..20].copy_from_slice(&(-2i32).to_ne_bytes());
        assert_eq!(acks(&msg), [Ack { seq: 7, errno: 2 }]);
        // A length past the datagram, or shorter than a header: nothing, no panic.
        msg[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(acks(&msg).is_empty());
        msg[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(acks(&msg).is_empty());
        assert!(acks(&[1, 2, 3]).is_empty());
    }
}
