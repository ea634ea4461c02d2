//! A resolved seccomp profile compiled to a classic BPF program, for x86_64 and i386.
//!
//! seccompiler (which the VMM's own filter uses) knows only x86_64's numbers and rejects any
//! other arch, but an i386 workload (`--platform linux/386`, CONFIG_IA32_EMULATION) makes
//! its calls with AUDIT_ARCH_I386 and the i386 numbers, so this module writes the program
//! itself, as libseccomp lays it out for docker's `archMap` (x86_64 with the x86 sub-arch):
//!
//! ```text
//!   load arch; x86_64 -> section A; i386 -> section B (when listed); else kill the process
//!   section: load nr; nr above the highest number the profile names -> ENOSYS when the
//!            default action denies (as runc's patchbpf does, so that newer calls look
//!            unimplemented rather than denied);
//!            per call: jeq nr -> its rules (argument checks, then the action); default
//! ```
//!
//! x86_64 compares 64-bit arguments as two 32-bit words; i386 compares the low word only, as
//! libseccomp does on 32-bit arches. Numbers come from the guest kernel's syscall tables
//! (`syscalls_x86_64.txt`, `syscalls_i386.txt`); a name an arch lacks is skipped there.

use std::collections::BTreeMap;

use super::profile::{Cond, Op, Resolved, RET_ALLOW, RET_ERRNO, RET_KILL_PROCESS, RET_LOG};
use super::SecurityError;

const X86_64_TABLE: &str = include_str!("syscalls_x86_64.txt");
const I386_TABLE: &str = include_str!("syscalls_i386.txt");

/// `AUDIT_ARCH_X86_64` and `AUDIT_ARCH_I386` (include/uapi/linux/audit.h).
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// The kernel's limit on a program's length (`BPF_MAXINSNS`).
const MAX_INSNS: usize = 4096;

// Classic BPF opcodes (include/uapi/linux/filter.h, bpf_common.h).
const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;

/// `struct seccomp_data` offsets: nr, arch, then args[6] as u64 (little-endian halves).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

/// One instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl Insn {
    fn stmt(code: u16, k: u32) -> Self {
        Self {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }
    fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Self {
        Self { code, jt, jf, k }
    }
    /// Packed as the protocol carries it: code | jt << 16 | jf << 24 | k << 32.
    pub fn pack(self) -> u64 {
        u64::from(self.code)
            | u64::from(self.jt) << 16
            | u64::from(self.jf) << 24
            | u64::from(self.k) << 32
    }
}

/// `jt`/`jf` value meaning "the condition failed: go to the next rule", patched once the
/// rule's length is known.
const FAIL: u8 = 0xff;

/// Name → number for one arch's table.
pub fn table(arch: u32) -> BTreeMap<&'static str, u32> {
    let text = if arch == AUDIT_ARCH_I386 {
        I386_TABLE
    } else {
        X86_64_TABLE
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (nr, name) = l.split_once(' ')?;
            Some((name, nr.parse().ok()?))
        })
        .collect()
}

/// The instructions that fall through when `c` holds and jump by FAIL when it does not.
fn condition(c: &Cond, wide: bool) -> Vec<Insn> {
    let lo = OFF_ARGS + 8 * c.index;
    let (vlo, vhi) = (c.value as u32, (c.value >> 32) as u32);
    let ld = |off| Insn::stmt(LD_W_ABS, off);
    let and =
        |m: u64, hi: bool| Insn::stmt(ALU_AND_K, if hi { (m >> 32) as u32 } else { m as u32 });
    // The low word's test: (jump code, k, jt, jf) falling through on success.
    let low = |code, jt, jf| vec![ld(lo), Insn::jump(code, vlo, jt, jf)];
    let mut out = Vec::new();
    match c.op {
        Op::Eq => {
            if wide {
                out.extend([ld(lo + 4), Insn::jump(JMP_JEQ_K, vhi, 0, FAIL)]);
            }
            out.extend(low(JMP_JEQ_K, 0, FAIL));
        }
        Op::Ne => {
            if wide {
                // hi differs: the condition holds, skip the low test.
                out.extend([ld(lo + 4), Insn::jump(JMP_JEQ_K, vhi, 0, 2)]);
            }
            out.extend(low(JMP_JEQ_K, FAIL, 0));
        }
        Op::MaskedEq(mask) => {
            if wide {
                out.extend([
                    ld(lo + 4),
                    and(mask, true),
                    Insn::jump(JMP_JEQ_K, vhi, 0, FAIL),
                ]);
            }
            out.extend([
                ld(lo),
                and(mask, false),
                Insn::jump(JMP_JEQ_K, vlo, 0, FAIL),
            ]);
        }
        Op::Gt | Op::Ge | Op::Lt | Op::Le => {
            let greater = matches!(c.op, Op::Gt | Op::Ge);
            if wide {
                out.push(ld(lo + 4));
                if greater {
                    // hi > vhi: holds; hi < vhi: fails; equal: decide on the low word.
                    out.push(Insn::jump(JMP_JGT_K, vhi, 3, 0));
                } else {
                    // hi < vhi (not >=): holds.
                    out.push(Insn::jump(JMP_JGE_K, vhi, 0, 3));
                }
                out.push(Insn::jump(JMP_JEQ_K, vhi, 0, FAIL));
            }
            out.extend(match c.op {
                Op::Gt => low(JMP_JGT_K, 0, FAIL),
                Op::Ge => low(JMP_JGE_K, 0, FAIL),
                Op::Lt => low(JMP_JGE_K, FAIL, 0),
                _ => low(JMP_JGT_K, FAIL, 0),
            });
        }
    }
    out
}

/// One call's block, entered when nr matched: its rules in order, then the default action.
fn call_block(rules: &[(&[Cond], u32)], default: u32, wide: bool) -> Vec<Insn> {
    // An unconditional rule decides alone, as in libseccomp.
    if let Some((_, action)) = rules.iter().find(|(conds, _)| conds.is_empty()) {
        return vec![Insn::stmt(RET_K, *action)];
    }
    let mut block = Vec::new();
    for (conds, action) in rules {
        let mut rule: Vec<Insn> = conds.iter().flat_map(|c| condition(c, wide)).collect();
        rule.push(Insn::stmt(RET_K, *action));
        let len = rule.len();
        for (i, insn) in rule.iter_mut().enumerate() {
            // Jump to just past this rule's ret: the next rule, or the default.
            let to_next = (len - i - 1) as u8;
            if insn.jt == FAIL {
                insn.jt = to_next;
            }
            if insn.jf == FAIL {
                insn.jf = to_next;
            }
        }
        block.extend(rule);
    }
    block.push(Insn::stmt(RET_K, default));
    block
}

/// One arch's section.
fn section(p: &Resolved, arch: u32) -> Result<Vec<Insn>, SecurityError> {
    let numbers = table(arch);
    let wide = arch == AUDIT_ARCH_X86_64;
    let mut by_nr: BTreeMap<u32, Vec<(&[Cond], u32)>> = BTreeMap::new();
    for rule in &p.rules {
        for name in &rule.names {
            if let Some(nr) = numbers.get(name.as_str()) {
                by_nr
                    .entry(*nr)
                    .or_default()
                    .push((rule.conds.as_slice(), rule.action));
            }
        }
    }
    let mut out = vec![Insn::stmt(LD_W_ABS, OFF_NR)];
    // runc adds the stub only when the default action denies (not allow or log).
    let denies = !matches!(p.default, RET_ALLOW | RET_LOG);
    if let Some(max) = by_nr.keys().next_back().filter(|_| denies) {
        out.push(Insn::jump(JMP_JGT_K, *max, 0, 1));
        out.push(Insn::stmt(RET_K, RET_ERRNO | libc::ENOSYS as u32));
    }
    for (nr, rules) in &by_nr {
        let block = call_block(rules, p.default, wide);
        let skip = u8::try_from(block.len()).map_err(|_| {
            SecurityError::Profile(format!("too many conditions on system call {nr}"))
        })?;
        out.push(Insn::jump(JMP_JEQ_K, *nr, 0, skip));
        out.extend(block);
    }
    out.push(Insn::stmt(RET_K, p.default));
    Ok(out)
}

/// The program for `p`.
pub fn compile(p: &Resolved) -> Result<Vec<Insn>, SecurityError> {
    let x86_64 = section(p, AUDIT_ARCH_X86_64)?;
    let i386 = if p.i386 {
        section(p, AUDIT_ARCH_I386)?
    } else {
        Vec::new()
    };
    // Head: dispatch on the arch (long jumps: sections exceed jt/jf's 255).
    let head_len: u32 = if p.i386 { 6 } else { 4 };
    let mut out = vec![
        Insn::stmt(LD_W_ABS, OFF_ARCH),
        Insn::jump(JMP_JEQ_K, AUDIT_ARCH_X86_64, 0, 1),
        // ja's k counts from the next instruction.
        Insn::stmt(JMP_JA, head_len - 3),
    ];
    if p.i386 {
        out.push(Insn::jump(JMP_JEQ_K, AUDIT_ARCH_I386, 0, 1));
        out.push(Insn::stmt(JMP_JA, x86_64.len() as u32 + 1));
    }
    out.push(Insn::stmt(RET_K, RET_KILL_PROCESS));
    debug_assert_eq!(out.len() as u32, head_len);
    out.extend(x86_64);
    out.extend(i386);
    if out.len() > MAX_INSNS {
        return Err(SecurityError::Profile(format!(
            "the filter has {} instructions, more than the kernel's {MAX_INSNS}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "bpf_tests.rs"]
mod tests;
