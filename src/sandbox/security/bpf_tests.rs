//! The compiled programs, run by a small classic-BPF interpreter over `seccomp_data`.

use super::*;
use crate::sandbox::security::caps;
use crate::sandbox::security::profile::{self, RET_ALLOW, RET_KILL_PROCESS};

/// Runs `prog` as the kernel would for one call; returns the action.
fn run(prog: &[Insn], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let i = prog[pc];
        pc += 1;
        match i.code {
            LD_W_ABS => {
                let o = i.k as usize;
                acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
            }
            ALU_AND_K => acc &= i.k,
            JMP_JA => pc += i.k as usize,
            RET_K => return i.k,
            JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                let t = match i.code {
                    JMP_JEQ_K => acc == i.k,
                    JMP_JGT_K => acc > i.k,
                    _ => acc >= i.k,
                };
                pc += usize::from(if t { i.jt } else { i.jf });
            }
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}

fn nr(arch: u32, name: &str) -> u32 {
    table(arch)[name]
}

const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;

fn docker_default() -> Vec<Insn> {
    let p = profile::resolve(profile::DEFAULT_PROFILE, caps::mask(caps::DOCKER_DEFAULT)).unwrap();
    compile(&p).unwrap()
}

#[test]
fn default_profile_on_x86_64() {
    let prog = docker_default();
    assert!(prog.len() < MAX_INSNS);
    let x = AUDIT_ARCH_X86_64;
    assert_eq!(run(&prog, x, nr(x, "read"), [0; 6]), RET_ALLOW);
    assert_eq!(run(&prog, x, nr(x, "execve"), [0; 6]), RET_ALLOW);
    assert_eq!(run(&prog, x, nr(x, "mount"), [0; 6]), EPERM);
    assert_eq!(run(&prog, x, nr(x, "unshare"), [0; 6]), EPERM);
    assert_eq!(run(&prog, x, nr(x, "keyctl"), [0; 6]), EPERM);
    assert_eq!(run(&prog, x, nr(x, "clone3"), [0; 6]), ENOSYS);
    // A number past every call the profile names looks unimplemented (runc's stub).
    assert_eq!(run(&prog, x, 1000, [0; 6]), ENOSYS);
    // clone: allowed without namespace flags.
    let clone = nr(x, "clone");
    assert_eq!(run(&prog, x, clone, [0x11, 0, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(run(&prog, x, clone, [0x1000_0000, 0, 0, 0, 0, 0]), EPERM);
    // socket: any family but AF_VSOCK (40 is allowed by GT... 39 EQ, <38 LT).
    let socket = nr(x, "socket");
    assert_eq!(run(&prog, x, socket, [2, 1, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(run(&prog, x, socket, [38, 1, 0, 0, 0, 0]), EPERM);
    assert_eq!(
        run(&prog, x, socket, [1 << 32 | 2, 1, 0, 0, 0, 0]),
        RET_ALLOW
    );
    // personality: only the listed values, compared on all 64 bits.
    let pers = nr(x, "personality");
    assert_eq!(run(&prog, x, pers, [0xffff_ffff, 0, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(run(&prog, x, pers, [0x1_0000_0000, 0, 0, 0, 0, 0]), EPERM);
    assert_eq!(run(&prog, x, pers, [1, 0, 0, 0, 0, 0]), EPERM);
    // Another arch: killed.
    assert_eq!(run(&prog, 0x4000_00b7, 0, [0; 6]), RET_KILL_PROCESS);
}

#[test]
fn default_profile_on_i386() {
    let prog = docker_default();
    let i = AUDIT_ARCH_I386;
    // i386 numbers, not x86_64's: write is 4, mount 21, socketcall 102.
    assert_eq!(run(&prog, i, 4, [0; 6]), RET_ALLOW);
    assert_eq!(run(&prog, i, nr(i, "mount"), [0; 6]), EPERM);
    assert_eq!(run(&prog, i, nr(i, "socketcall"), [0; 6]), RET_ALLOW);
    assert_eq!(run(&prog, i, nr(i, "_llseek"), [0; 6]), RET_ALLOW);
    assert_eq!(run(&prog, i, nr(i, "modify_ldt"), [0; 6]), RET_ALLOW);
    assert_eq!(
        run(&prog, i, nr(i, "clone"), [0x1000_0000, 0, 0, 0, 0, 0]),
        EPERM
    );
    assert_eq!(
        run(&prog, i, nr(i, "clone"), [0x11, 0, 0, 0, 0, 0]),
        RET_ALLOW
    );
    let pers = nr(i, "personality");
    assert_eq!(run(&prog, i, pers, [0xffff_ffff, 0, 0, 0, 0, 0]), RET_ALLOW);
}

#[test]
fn caps_unlock_calls() {
    let p = profile::resolve(profile::DEFAULT_PROFILE, caps::ALL).unwrap();
    let prog = compile(&p).unwrap();
    let x = AUDIT_ARCH_X86_64;
    assert_eq!(run(&prog, x, nr(x, "mount"), [0; 6]), RET_ALLOW);
    assert_eq!(run(&prog, x, nr(x, "clone3"), [0; 6]), RET_ALLOW);
    assert_eq!(
        run(&prog, x, nr(x, "clone"), [0x1000_0000, 0, 0, 0, 0, 0]),
        RET_ALLOW
    );
}

#[test]
fn comparisons_on_64_bit_arguments() {
    // (operator, value, [(argument, allowed)]).
    type Case<'a> = (&'a str, u64, &'a [(u64, bool)]);
    let cases: [Case; 6] = [
        (
            "SCMP_CMP_NE",
            5,
            &[(5, false), (6, true), (5 | 1 << 32, true)],
        ),
        (
            "SCMP_CMP_LT",
            1 << 32 | 5,
            &[
                (5, true),
                (1 << 32 | 4, true),
                (1 << 32 | 5, false),
                (2 << 32, false),
            ],
        ),
        (
            "SCMP_CMP_LE",
            1 << 32 | 5,
            &[(1 << 32 | 5, true), (1 << 32 | 6, false), (0, true)],
        ),
        (
            "SCMP_CMP_GT",
            1 << 32 | 5,
            &[
                (1 << 32 | 6, true),
                (1 << 32 | 5, false),
                (2 << 32, true),
                (u32::MAX as u64, false),
            ],
        ),
        (
            "SCMP_CMP_GE",
            1 << 32 | 5,
            &[(1 << 32 | 5, true), (1 << 32 | 4, false), (3 << 32, true)],
        ),
        (
            "SCMP_CMP_EQ",
            1 << 32 | 5,
            &[(1 << 32 | 5, true), (5, false)],
        ),
    ];
    for (op, value, checks) in cases {
        let json = format!(
            r#"{{"defaultAction":"SCMP_ACT_ERRNO","archMap":[{{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]}}],
            "syscalls":[{{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{{"index":1,"value":{value},"op":"{op}"}}]}}]}}"#
        );
        let prog = compile(&profile::resolve(&json, 0).unwrap()).unwrap();
        for (arg, allowed) in checks {
            let got = run(&prog, AUDIT_ARCH_X86_64, 0, [0, *arg, 0, 0, 0, 0]);
            assert_eq!(got == RET_ALLOW, *allowed, "{op} {value:#x} with {arg:#x}");
        }
    }
}

#[test]
fn without_the_x86_sub_arch_i386_is_killed() {
    let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#;
    let prog = compile(&profile::resolve(json, 0).unwrap()).unwrap();
    let x = AUDIT_ARCH_X86_64;
    assert_eq!(run(&prog, x, 1, [0; 6]), RET_ALLOW);
    assert_eq!(run(&prog, x, nr(x, "mkdir"), [0; 6]), EPERM);
    // An allow-by-default profile has no ENOSYS stub past its highest call.
    assert_eq!(run(&prog, x, nr(x, "getrandom"), [0; 6]), RET_ALLOW);
    assert_eq!(run(&prog, AUDIT_ARCH_I386, 4, [0; 6]), RET_KILL_PROCESS);
}

#[test]
fn packing_matches_the_protocol() {
    let i = Insn::jump(JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 2);
    assert_eq!(i.pack(), 0x15 | 1 << 16 | 2 << 24 | 0xc000_003e_u64 << 32);
}
