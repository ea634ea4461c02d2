/* brig compatibility probe (issue 10), built by tests/compat.rs with `gcc -static` and run
 * in a guest.
 *
 *   probe syscalls   calls every x86_64 system call number of Linux 6.12 with harmless or
 *                    invalid arguments, each in a child process of its own (so that exit,
 *                    pause, fork or a fatal signal cannot disturb the probe), and prints
 *                    "enosys NR NAME" for each that returns ENOSYS, then "probed N".
 *   probe syscalls32 the same for the i386 table, through `int $0x80` (IA32 emulation).
 *   probe fs DIR     file system trials on DIR (the overlay root, a tmpfs...): prints
 *                    "ok NAME" or "FAIL NAME: why" per trial.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

static const char *names[] = {
[0] = "read",
[1] = "write",
[2] = "open",
[3] = "close",
[4] = "stat",
[5] = "fstat",
[6] = "lstat",
[7] = "poll",
[8] = "lseek",
[9] = "mmap",
[10] = "mprotect",
[11] = "munmap",
[12] = "brk",
[13] = "rt_sigaction",
[14] = "rt_sigprocmask",
[15] = "rt_sigreturn",
[16] = "ioctl",
[17] = "pread64",
[18] = "pwrite64",
[19] = "readv",
[20] = "writev",
[21] = "access",
[22] = "pipe",
[23] = "select",
[24] = "sched_yield",
[25] = "mremap",
[26] = "msync",
[27] = "mincore",
[28] = "madvise",
[29] = "shmget",
[30] = "shmat",
[31] = "shmctl",
[32] = "dup",
[33] = "dup2",
[34] = "pause",
[35] = "nanosleep",
[36] = "getitimer",
[37] = "alarm",
[38] = "setitimer",
[39] = "getpid",
[40] = "sendfile",
[41] = "socket",
[42] = "connect",
[43] = "accept",
[44] = "sendto",
[45] = "recvfrom",
[46] = "sendmsg",
[47] = "recvmsg",
[48] = "shutdown",
[49] = "bind",
[50] = "listen",
[51] = "getsockname",
[52] = "getpeername",
[53] = "socketpair",
[54] = "setsockopt",
[55] = "getsockopt",
[56] = "clone",
[57] = "fork",
[58] = "vfork",
[59] = "execve",
[60] = "exit",
[61] = "wait4",
[62] = "kill",
[63] = "uname",
[64] = "semget",
[65] = "semop",
[66] = "semctl",
[67] = "shmdt",
[68] = "msgget",
[69] = "msgsnd",
[70] = "msgrcv",
[71] = "msgctl",
[72] = "fcntl",
[73] = "flock",
[74] = "fsync",
[75] = "fdatasync",
[76] = "truncate",
[77] = "ftruncate",
[78] = "getdents",
[79] = "getcwd",
[80] = "chdir",
[81] = "fchdir",
[82] = "rename",
[83] = "mkdir",
[84] = "rmdir",
[85] = "creat",
[86] = "link",
[87] = "unlink",
[88] = "symlink",
[89] = "readlink",
[90] = "chmod",
[91] = "fchmod",
[92] = "chown",
[93] = "fchown",
[94] = "lchown",
[95] = "umask",
[96] = "gettimeofday",
[97] = "getrlimit",
[98] = "getrusage",
[99] = "sysinfo",
[100] = "times",
[101] = "ptrace",
[102] = "getuid",
[103] = "syslog",
[104] = "getgid",
[105] = "setuid",
[106] = "setgid",
[107] = "geteuid",
[108] = "getegid",
[109] = "setpgid",
[110] = "getppid",
[111] = "getpgrp",
[112] = "setsid",
[113] = "setreuid",
[114] = "setregid",
[115] = "getgroups",
[116] = "setgroups",
[117] = "setresuid",
[118] = "getresuid",
[119] = "setresgid",
[120] = "getresgid",
[121] = "getpgid",
[122] = "setfsuid",
[123] = "setfsgid",
[124] = "getsid",
[125] = "capget",
[126] = "capset",
[127] = "rt_sigpending",
[128] = "rt_sigtimedwait",
[129] = "rt_sigqueueinfo",
[130] = "rt_sigsuspend",
[131] = "sigaltstack",
[132] = "utime",
[133] = "mknod",
[134] = "uselib",
[135] = "personality",
[136] = "ustat",
[137] = "statfs",
[138] = "fstatfs",
[139] = "sysfs",
[140] = "getpriority",
[141] = "setpriority",
[142] = "sched_setparam",
[143] = "sched_getparam",
[144] = "sched_setscheduler",
[145] = "sched_getscheduler",
[146] = "sched_get_priority_max",
[147] = "sched_get_priority_min",
[148] = "sched_rr_get_interval",
[149] = "mlock",
[150] = "munlock",
[151] = "mlockall",
[152] = "munlockall",
[153] = "vhangup",
[154] = "modify_ldt",
[155] = "pivot_root",
[156] = "_sysctl",
[157] = "prctl",
[158] = "arch_prctl",
[159] = "adjtimex",
[160] = "setrlimit",
[161] = "chroot",
[162] = "sync",
[163] = "acct",
[164] = "settimeofday",
[165] = "mount",
[166] = "umount2",
[167] = "swapon",
[168] = "swapoff",
[169] = "reboot",
[170] = "sethostname",
[171] = "setdomainname",
[172] = "iopl",
[173] = "ioperm",
[174] = "create_module",
[175] = "init_module",
[176] = "delete_module",
[177] = "get_kernel_syms",
[178] = "query_module",
[179] = "quotactl",
[180] = "nfsservctl",
[181] = "getpmsg",
[182] = "putpmsg",
[183] = "afs_syscall",
[184] = "tuxcall",
[185] = "security",
[186] = "gettid",
[187] = "readahead",
[188] = "setxattr",
[189] = "lsetxattr",
[190] = "fsetxattr",
[191] = "getxattr",
[192] = "lgetxattr",
[193] = "fgetxattr",
[194] = "listxattr",
[195] = "llistxattr",
[196] = "flistxattr",
[197] = "removexattr",
[198] = "lremovexattr",
[199] = "fremovexattr",
[200] = "tkill",
[201] = "time",
[202] = "futex",
[203] = "sched_setaffinity",
[204] = "sched_getaffinity",
[205] = "set_thread_area",
[206] = "io_setup",
[207] = "io_destroy",
[208] = "io_getevents",
[209] = "io_submit",
[210] = "io_cancel",
[211] = "get_thread_area",
[212] = "lookup_dcookie",
[213] = "epoll_create",
[214] = "epoll_ctl_old",
[215] = "epoll_wait_old",
[216] = "remap_file_pages",
[217] = "getdents64",
[218] = "set_tid_address",
[219] = "restart_syscall",
[220] = "semtimedop",
[221] = "fadvise64",
[222] = "timer_create",
[223] = "timer_settime",
[224] = "timer_gettime",
[225] = "timer_getoverrun",
[226] = "timer_delete",
[227] = "clock_settime",
[228] = "clock_gettime",
[229] = "clock_getres",
[230] = "clock_nanosleep",
[231] = "exit_group",
[232] = "epoll_wait",
[233] = "epoll_ctl",
[234] = "tgkill",
[235] = "utimes",
[236] = "vserver",
[237] = "mbind",
[238] = "set_mempolicy",
[239] = "get_mempolicy",
[240] = "mq_open",
[241] = "mq_unlink",
[242] = "mq_timedsend",
[243] = "mq_timedreceive",
[244] = "mq_notify",
[245] = "mq_getsetattr",
[246] = "kexec_load",
[247] = "waitid",
[248] = "add_key",
[249] = "request_key",
[250] = "keyctl",
[251] = "ioprio_set",
[252] = "ioprio_get",
[253] = "inotify_init",
[254] = "inotify_add_watch",
[255] = "inotify_rm_watch",
[256] = "migrate_pages",
[257] = "openat",
[258] = "mkdirat",
[259] = "mknodat",
[260] = "fchownat",
[261] = "futimesat",
[262] = "newfstatat",
[263] = "unlinkat",
[264] = "renameat",
[265] = "linkat",
[266] = "symlinkat",
[267] = "readlinkat",
[268] = "fchmodat",
[269] = "faccessat",
[270] = "pselect6",
[271] = "ppoll",
[272] = "unshare",
[273] = "set_robust_list",
[274] = "get_robust_list",
[275] = "splice",
[276] = "tee",
[277] = "sync_file_range",
[278] = "vmsplice",
[279] = "move_pages",
[280] = "utimensat",
[281] = "epoll_pwait",
[282] = "signalfd",
[283] = "timerfd_create",
[284] = "eventfd",
[285] = "fallocate",
[286] = "timerfd_settime",
[287] = "timerfd_gettime",
[288] = "accept4",
[289] = "signalfd4",
[290] = "eventfd2",
[291] = "epoll_create1",
[292] = "dup3",
[293] = "pipe2",
[294] = "inotify_init1",
[295] = "preadv",
[296] = "pwritev",
[297] = "rt_tgsigqueueinfo",
[298] = "perf_event_open",
[299] = "recvmmsg",
[300] = "fanotify_init",
[301] = "fanotify_mark",
[302] = "prlimit64",
[303] = "name_to_handle_at",
[304] = "open_by_handle_at",
[305] = "clock_adjtime",
[306] = "syncfs",
[307] = "sendmmsg",
[308] = "setns",
[309] = "getcpu",
[310] = "process_vm_readv",
[311] = "process_vm_writev",
[312] = "kcmp",
[313] = "finit_module",
[314] = "sched_setattr",
[315] = "sched_getattr",
[316] = "renameat2",
[317] = "seccomp",
[318] = "getrandom",
[319] = "memfd_create",
[320] = "kexec_file_load",
[321] = "bpf",
[322] = "execveat",
[323] = "userfaultfd",
[324] = "membarrier",
[325] = "mlock2",
[326] = "copy_file_range",
[327] = "preadv2",
[328] = "pwritev2",
[329] = "pkey_mprotect",
[330] = "pkey_alloc",
[331] = "pkey_free",
[332] = "statx",
[333] = "io_pgetevents",
[334] = "rseq",
[335] = "uretprobe",
[424] = "pidfd_send_signal",
[425] = "io_uring_setup",
[426] = "io_uring_enter",
[427] = "io_uring_register",
[428] = "open_tree",
[429] = "move_mount",
[430] = "fsopen",
[431] = "fsconfig",
[432] = "fsmount",
[433] = "fspick",
[434] = "pidfd_open",
[435] = "clone3",
[436] = "close_range",
[437] = "openat2",
[438] = "pidfd_getfd",
[439] = "faccessat2",
[440] = "process_madvise",
[441] = "epoll_pwait2",
[442] = "mount_setattr",
[443] = "quotactl_fd",
[444] = "landlock_create_ruleset",
[445] = "landlock_add_rule",
[446] = "landlock_restrict_self",
[447] = "memfd_secret",
[448] = "process_mrelease",
[449] = "futex_waitv",
[450] = "set_mempolicy_home_node",
[451] = "cachestat",
[452] = "fchmodat2",
[453] = "map_shadow_stack",
[454] = "futex_wake",
[455] = "futex_wait",
[456] = "futex_requeue",
[457] = "statmount",
[458] = "listmount",
[459] = "lsm_get_self_attr",
[460] = "lsm_set_self_attr",
[461] = "lsm_list_modules",
[462] = "mseal",
};
#define NR_MAX ((long)(sizeof names / sizeof names[0]))

/* The i386 table, reached from this 64-bit process with `int $0x80` (IA32 emulation). */
static const char *names32[] = {
[0] = "restart_syscall",
[1] = "exit",
[2] = "fork",
[3] = "read",
[4] = "write",
[5] = "open",
[6] = "close",
[7] = "waitpid",
[8] = "creat",
[9] = "link",
[10] = "unlink",
[11] = "execve",
[12] = "chdir",
[13] = "time",
[14] = "mknod",
[15] = "chmod",
[16] = "lchown",
[17] = "break",
[18] = "oldstat",
[19] = "lseek",
[20] = "getpid",
[21] = "mount",
[22] = "umount",
[23] = "setuid",
[24] = "getuid",
[25] = "stime",
[26] = "ptrace",
[27] = "alarm",
[28] = "oldfstat",
[29] = "pause",
[30] = "utime",
[31] = "stty",
[32] = "gtty",
[33] = "access",
[34] = "nice",
[35] = "ftime",
[36] = "sync",
[37] = "kill",
[38] = "rename",
[39] = "mkdir",
[40] = "rmdir",
[41] = "dup",
[42] = "pipe",
[43] = "times",
[44] = "prof",
[45] = "brk",
[46] = "setgid",
[47] = "getgid",
[48] = "signal",
[49] = "geteuid",
[50] = "getegid",
[51] = "acct",
[52] = "umount2",
[53] = "lock",
[54] = "ioctl",
[55] = "fcntl",
[56] = "mpx",
[57] = "setpgid",
[58] = "ulimit",
[59] = "oldolduname",
[60] = "umask",
[61] = "chroot",
[62] = "ustat",
[63] = "dup2",
[64] = "getppid",
[65] = "getpgrp",
[66] = "setsid",
[67] = "sigaction",
[68] = "sgetmask",
[69] = "ssetmask",
[70] = "setreuid",
[71] = "setregid",
[72] = "sigsuspend",
[73] = "sigpending",
[74] = "sethostname",
[75] = "setrlimit",
[76] = "getrlimit",
[77] = "getrusage",
[78] = "gettimeofday",
[79] = "settimeofday",
[80] = "getgroups",
[81] = "setgroups",
[82] = "select",
[83] = "symlink",
[84] = "oldlstat",
[85] = "readlink",
[86] = "uselib",
[87] = "swapon",
[88] = "reboot",
[89] = "readdir",
[90] = "mmap",
[91] = "munmap",
[92] = "truncate",
[93] = "ftruncate",
[94] = "fchmod",
[95] = "fchown",
[96] = "getpriority",
[97] = "setpriority",
[98] = "profil",
[99] = "statfs",
[100] = "fstatfs",
[101] = "ioperm",
[102] = "socketcall",
[103] = "syslog",
[104] = "setitimer",
[105] = "getitimer",
[106] = "stat",
[107] = "lstat",
[108] = "fstat",
[109] = "olduname",
[110] = "iopl",
[111] = "vhangup",
[112] = "idle",
[113] = "vm86old",
[114] = "wait4",
[115] = "swapoff",
[116] = "sysinfo",
[117] = "ipc",
[118] = "fsync",
[119] = "sigreturn",
[120] = "clone",
[121] = "setdomainname",
[122] = "uname",
[123] = "modify_ldt",
[124] = "adjtimex",
[125] = "mprotect",
[126] = "sigprocmask",
[127] = "create_module",
[128] = "init_module",
[129] = "delete_module",
[130] = "get_kernel_syms",
[131] = "quotactl",
[132] = "getpgid",
[133] = "fchdir",
[134] = "bdflush",
[135] = "sysfs",
[136] = "personality",
[137] = "afs_syscall",
[138] = "setfsuid",
[139] = "setfsgid",
[140] = "_llseek",
[141] = "getdents",
[142] = "_newselect",
[143] = "flock",
[144] = "msync",
[145] = "readv",
[146] = "writev",
[147] = "getsid",
[148] = "fdatasync",
[149] = "_sysctl",
[150] = "mlock",
[151] = "munlock",
[152] = "mlockall",
[153] = "munlockall",
[154] = "sched_setparam",
[155] = "sched_getparam",
[156] = "sched_setscheduler",
[157] = "sched_getscheduler",
[158] = "sched_yield",
[159] = "sched_get_priority_max",
[160] = "sched_get_priority_min",
[161] = "sched_rr_get_interval",
[162] = "nanosleep",
[163] = "mremap",
[164] = "setresuid",
[165] = "getresuid",
[166] = "vm86",
[167] = "query_module",
[168] = "poll",
[169] = "nfsservctl",
[170] = "setresgid",
[171] = "getresgid",
[172] = "prctl",
[173] = "rt_sigreturn",
[174] = "rt_sigaction",
[175] = "rt_sigprocmask",
[176] = "rt_sigpending",
[177] = "rt_sigtimedwait",
[178] = "rt_sigqueueinfo",
[179] = "rt_sigsuspend",
[180] = "pread64",
[181] = "pwrite64",
[182] = "chown",
[183] = "getcwd",
[184] = "capget",
[185] = "capset",
[186] = "sigaltstack",
[187] = "sendfile",
[188] = "getpmsg",
[189] = "putpmsg",
[190] = "vfork",
[191] = "ugetrlimit",
[192] = "mmap2",
[193] = "truncate64",
[194] = "ftruncate64",
[195] = "stat64",
[196] = "lstat64",
[197] = "fstat64",
[198] = "lchown32",
[199] = "getuid32",
[200] = "getgid32",
[201] = "geteuid32",
[202] = "getegid32",
[203] = "setreuid32",
[204] = "setregid32",
[205] = "getgroups32",
[206] = "setgroups32",
[207] = "fchown32",
[208] = "setresuid32",
[209] = "getresuid32",
[210] = "setresgid32",
[211] = "getresgid32",
[212] = "chown32",
[213] = "setuid32",
[214] = "setgid32",
[215] = "setfsuid32",
[216] = "setfsgid32",
[217] = "pivot_root",
[218] = "mincore",
[219] = "madvise",
[220] = "getdents64",
[221] = "fcntl64",
[224] = "gettid",
[225] = "readahead",
[226] = "setxattr",
[227] = "lsetxattr",
[228] = "fsetxattr",
[229] = "getxattr",
[230] = "lgetxattr",
[231] = "fgetxattr",
[232] = "listxattr",
[233] = "llistxattr",
[234] = "flistxattr",
[235] = "removexattr",
[236] = "lremovexattr",
[237] = "fremovexattr",
[238] = "tkill",
[239] = "sendfile64",
[240] = "futex",
[241] = "sched_setaffinity",
[242] = "sched_getaffinity",
[243] = "set_thread_area",
[244] = "get_thread_area",
[245] = "io_setup",
[246] = "io_destroy",
[247] = "io_getevents",
[248] = "io_submit",
[249] = "io_cancel",
[250] = "fadvise64",
[252] = "exit_group",
[253] = "lookup_dcookie",
[254] = "epoll_create",
[255] = "epoll_ctl",
[256] = "epoll_wait",
[257] = "remap_file_pages",
[258] = "set_tid_address",
[259] = "timer_create",
[260] = "timer_settime",
[261] = "timer_gettime",
[262] = "timer_getoverrun",
[263] = "timer_delete",
[264] = "clock_settime",
[265] = "clock_gettime",
[266] = "clock_getres",
[267] = "clock_nanosleep",
[268] = "statfs64",
[269] = "fstatfs64",
[270] = "tgkill",
[271] = "utimes",
[272] = "fadvise64_64",
[273] = "vserver",
[274] = "mbind",
[275] = "get_mempolicy",
[276] = "set_mempolicy",
[277] = "mq_open",
[278] = "mq_unlink",
[279] = "mq_timedsend",
[280] = "mq_timedreceive",
[281] = "mq_notify",
[282] = "mq_getsetattr",
[283] = "kexec_load",
[284] = "waitid",
[286] = "add_key",
[287] = "request_key",
[288] = "keyctl",
[289] = "ioprio_set",
[290] = "ioprio_get",
[291] = "inotify_init",
[292] = "inotify_add_watch",
[293] = "inotify_rm_watch",
[294] = "migrate_pages",
[295] = "openat",
[296] = "mkdirat",
[297] = "mknodat",
[298] = "fchownat",
[299] = "futimesat",
[300] = "fstatat64",
[301] = "unlinkat",
[302] = "renameat",
[303] = "linkat",
[304] = "symlinkat",
[305] = "readlinkat",
[306] = "fchmodat",
[307] = "faccessat",
[308] = "pselect6",
[309] = "ppoll",
[310] = "unshare",
[311] = "set_robust_list",
[312] = "get_robust_list",
[313] = "splice",
[314] = "sync_file_range",
[315] = "tee",
[316] = "vmsplice",
[317] = "move_pages",
[318] = "getcpu",
[319] = "epoll_pwait",
[320] = "utimensat",
[321] = "signalfd",
[322] = "timerfd_create",
[323] = "eventfd",
[324] = "fallocate",
[325] = "timerfd_settime",
[326] = "timerfd_gettime",
[327] = "signalfd4",
[328] = "eventfd2",
[329] = "epoll_create1",
[330] = "dup3",
[331] = "pipe2",
[332] = "inotify_init1",
[333] = "preadv",
[334] = "pwritev",
[335] = "rt_tgsigqueueinfo",
[336] = "perf_event_open",
[337] = "recvmmsg",
[338] = "fanotify_init",
[339] = "fanotify_mark",
[340] = "prlimit64",
[341] = "name_to_handle_at",
[342] = "open_by_handle_at",
[343] = "clock_adjtime",
[344] = "syncfs",
[345] = "sendmmsg",
[346] = "setns",
[347] = "process_vm_readv",
[348] = "process_vm_writev",
[349] = "kcmp",
[350] = "finit_module",
[351] = "sched_setattr",
[352] = "sched_getattr",
[353] = "renameat2",
[354] = "seccomp",
[355] = "getrandom",
[356] = "memfd_create",
[357] = "bpf",
[358] = "execveat",
[359] = "socket",
[360] = "socketpair",
[361] = "bind",
[362] = "connect",
[363] = "listen",
[364] = "accept4",
[365] = "getsockopt",
[366] = "setsockopt",
[367] = "getsockname",
[368] = "getpeername",
[369] = "sendto",
[370] = "sendmsg",
[371] = "recvfrom",
[372] = "recvmsg",
[373] = "shutdown",
[374] = "userfaultfd",
[375] = "membarrier",
[376] = "mlock2",
[377] = "copy_file_range",
[378] = "preadv2",
[379] = "pwritev2",
[380] = "pkey_mprotect",
[381] = "pkey_alloc",
[382] = "pkey_free",
[383] = "statx",
[384] = "arch_prctl",
[385] = "io_pgetevents",
[386] = "rseq",
[393] = "semget",
[394] = "semctl",
[395] = "shmget",
[396] = "shmctl",
[397] = "shmat",
[398] = "shmdt",
[399] = "msgget",
[400] = "msgsnd",
[401] = "msgrcv",
[402] = "msgctl",
[403] = "clock_gettime64",
[404] = "clock_settime64",
[405] = "clock_adjtime64",
[406] = "clock_getres_time64",
[407] = "clock_nanosleep_time64",
[408] = "timer_gettime64",
[409] = "timer_settime64",
[410] = "timerfd_gettime64",
[411] = "timerfd_settime64",
[412] = "utimensat_time64",
[413] = "pselect6_time64",
[414] = "ppoll_time64",
[416] = "io_pgetevents_time64",
[417] = "recvmmsg_time64",
[418] = "mq_timedsend_time64",
[419] = "mq_timedreceive_time64",
[420] = "semtimedop_time64",
[421] = "rt_sigtimedwait_time64",
[422] = "futex_time64",
[423] = "sched_rr_get_interval_time64",
[424] = "pidfd_send_signal",
[425] = "io_uring_setup",
[426] = "io_uring_enter",
[427] = "io_uring_register",
[428] = "open_tree",
[429] = "move_mount",
[430] = "fsopen",
[431] = "fsconfig",
[432] = "fsmount",
[433] = "fspick",
[434] = "pidfd_open",
[435] = "clone3",
[436] = "close_range",
[437] = "openat2",
[438] = "pidfd_getfd",
[439] = "faccessat2",
[440] = "process_madvise",
[441] = "epoll_pwait2",
[442] = "mount_setattr",
[443] = "quotactl_fd",
[444] = "landlock_create_ruleset",
[445] = "landlock_add_rule",
[446] = "landlock_restrict_self",
[447] = "memfd_secret",
[448] = "process_mrelease",
[449] = "futex_waitv",
[450] = "set_mempolicy_home_node",
[451] = "cachestat",
[452] = "fchmodat2",
[453] = "map_shadow_stack",
[454] = "futex_wake",
[455] = "futex_wait",
[456] = "futex_requeue",
[457] = "statmount",
[458] = "listmount",
[459] = "lsm_get_self_attr",
[460] = "lsm_set_self_attr",
[461] = "lsm_list_modules",
[462] = "mseal",
};
#define NR32_MAX ((long)(sizeof names32 / sizeof names32[0]))

static int ia32; /* probing the i386 table */

static long sys32(long nr, const unsigned long a[6]) {
    long ret;
    unsigned long a5 = a[5];
    __asm__ volatile("push %%rbp\n\tmov %k[a5], %%ebp\n\tint $0x80\n\tpop %%rbp"
                     : "=a"(ret)
                     : "a"(nr), "b"(a[0]), "c"(a[1]), "d"(a[2]), "S"(a[3]), "D"(a[4]),
                       [a5] "r"(a5)
                     : "memory", "cc", "r8", "r9", "r10", "r11");
    return (int)ret; /* a 32-bit result */
}

/* Arguments for one call: all ~0 (bad pointers, bad fds, bad flags) unless the call needs
 * others to tell "implemented" from "not": some return ENOSYS for an unknown sub-command,
 * and signals must not reach anyone. */
static void args_for(long nr, unsigned long a[6]) {
    for (int i = 0; i < 6; i++) a[i] = ia32 ? 0xffffffffUL : ~0UL;
    if (ia32) {
        switch (nr) {
        case 240: /* futex */
        case 422: /* futex_time64 */ a[0] = 0; a[1] = 1; a[2] = 1; break;
        case 123: /* modify_ldt */ a[0] = 0; a[1] = 0; a[2] = 0; break;
        case 399: /* msgget */ a[1] = 0; break;
        case 117: /* ipc: MSGGET with no IPC_CREAT */ a[0] = 13; a[2] = 0; break;
        case 37: /* kill */ a[0] = getpid(); a[1] = 0; break;
        case 238: /* tkill */ a[0] = syscall(SYS_gettid); a[1] = 0; break;
        case 270: /* tgkill */ a[0] = getpid(); a[1] = syscall(SYS_gettid); a[2] = 0; break;
        }
        return;
    }
    switch (nr) {
    case SYS_futex: /* an unknown op is ENOSYS: FUTEX_WAKE on NULL is EFAULT */
        a[0] = 0; a[1] = 1 /* FUTEX_WAKE */; a[2] = 1; break;
    case SYS_modify_ldt: /* an unknown func is ENOSYS: read the (empty) LDT */
        a[0] = 0; a[1] = 0; a[2] = 0; break;
    case SYS_msgget: /* ~0 flags would create a queue: only look one up */
        a[1] = 0; break;
    case SYS_kill: a[0] = getpid(); a[1] = 0; break;
    case SYS_tkill: a[0] = syscall(SYS_gettid); a[1] = 0; break;
    case SYS_tgkill: a[0] = getpid(); a[1] = syscall(SYS_gettid); a[2] = 0; break;
    }
}

/* One call in a child; returns the errno (0 for success, -1 when the child did not report:
 * it exited, was killed or timed out, all of which mean the call exists). */
static int call_in_child(long nr) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) { perror("pipe2"); exit(2); }
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); exit(2); }
    if (pid == 0) {
        close(p[0]);
        setsid(); /* no controlling terminal: vhangup and friends touch nothing */
        alarm(1);
        unsigned long a[6];
        args_for(nr, a);
        int e;
        if (ia32) {
            long r = sys32(nr, a);
            e = r < 0 && r > -4096 ? (int)-r : 0;
        } else {
            long r = syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
            e = r == -1 ? errno : 0;
        }
        if (write(p[1], &e, sizeof e) < 0) _exit(3);
        _exit(0);
    }
    close(p[1]);
    int e = -1;
    struct pollfd pfd = {.fd = p[0], .events = POLLIN};
    if (poll(&pfd, 1, 3000) > 0 && read(p[0], &e, sizeof e) != sizeof e) e = -1;
    close(p[0]);
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    return e;
}

static int probe_syscalls(void) {
    int probed = 0;
    const char **tbl = ia32 ? names32 : names;
    long max = ia32 ? NR32_MAX : NR_MAX;
    if (ia32) {
        /* int $0x80 must reach the i386 table: getpid (20) answers this process's pid */
        unsigned long a[6] = {0};
        pid_t pid = fork();
        if (pid == 0) _exit(sys32(20, a) == getpid() ? 0 : 1);
        int status;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status)) {
            printf("no ia32 system calls (int $0x80 failed)\n");
            return 1;
        }
    }
    for (long nr = 0; nr < max; nr++) {
        if (!tbl[nr]) continue;
        probed++;
        if (call_in_child(nr) == ENOSYS) printf("enosys %ld %s\n", nr, tbl[nr]);
        fflush(stdout);
    }
    printf("probed %d\n", probed);
    return 0;
}

/* ---------------------------------------------------------------------------------- */
/* File system trials */

static int failures;
static char msg[1200];
#define FAIL(...) do { snprintf(msg, sizeof msg, __VA_ARGS__); return -1; } while (0)
#define TRY(x) do { if ((x) < 0) FAIL("%s: %s", #x, strerror(errno)); } while (0)

static void report(const char *name, int r) {
    if (r == 0) printf("ok %s\n", name);
    else { printf("FAIL %s: %s\n", name, msg); failures++; }
    fflush(stdout);
}

static char dir[256];
static char *path(const char *name) {
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", dir, name);
    return buf[i];
}

static int write_file(const char *p, const char *data) {
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    ssize_t n = write(fd, data, strlen(data));
    close(fd);
    return n == (ssize_t)strlen(data) ? 0 : -1;
}

/* readdir's d_ino equals stat's st_ino for every entry of `d` (as os.scandir relies on). */
static int inodes_match_in(const char *d) {
    DIR *dp = opendir(d);
    if (!dp) FAIL("opendir %s: %s", d, strerror(errno));
    struct dirent *de;
    int n = 0;
    while ((de = readdir(dp))) {
        if (!strcmp(de->d_name, "..")) continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", d, de->d_name);
        struct stat st;
        if (lstat(p, &st) < 0) continue;
        n++;
        if (st.st_ino != de->d_ino) {
            closedir(dp);
            FAIL("%s: readdir ino %llu, stat ino %llu", p, (unsigned long long)de->d_ino,
                 (unsigned long long)st.st_ino);
        }
    }
    closedir(dp);
    if (n == 0) FAIL("%s: no entries", d);
    return 0;
}

static int t_inodes(void) {
    /* lower-only entries, entries created in the upper layer, a copied-up lower file */
    if (inodes_match_in("/bin") < 0) return -1;
    if (inodes_match_in("/etc") < 0) return -1;
    TRY(write_file(path("new-file"), "x"));
    /* a lower file copied up by an append (not on a read-only root) */
    if (getenv("PROBE_LOWER") && access("/data/lower.txt", F_OK) == 0) {
        int fd = open("/data/lower.txt", O_WRONLY | O_APPEND);
        TRY(fd);
        TRY(write(fd, "more\n", 5));
        close(fd);
        if (inodes_match_in("/data") < 0) return -1;
    }
    return inodes_match_in(dir);
}

static volatile sig_atomic_t got_sigio;
static void on_sig(int s) { (void)s; got_sigio = 1; }

static int t_dnotify(void) {
    TRY(mkdir(path("dn"), 0755));
    int fd = open(path("dn"), O_RDONLY | O_DIRECTORY);
    TRY(fd);
    signal(SIGRTMIN + 1, on_sig);
    TRY(fcntl(fd, F_SETSIG, SIGRTMIN + 1));
    TRY(fcntl(fd, F_NOTIFY, DN_CREATE));
    TRY(write_file(path("dn/f"), "x"));
    for (int i = 0; i < 100 && !got_sigio; i++) usleep(10000);
    close(fd);
    if (!got_sigio) FAIL("no signal after a create");
    return 0;
}

static int t_inotify(void) {
    int in = inotify_init1(IN_NONBLOCK);
    TRY(in);
    TRY(inotify_add_watch(in, dir, IN_CREATE));
    TRY(write_file(path("in-file"), "x"));
    char buf[4096];
    struct pollfd pfd = {.fd = in, .events = POLLIN};
    if (poll(&pfd, 1, 2000) <= 0) FAIL("no event");
    ssize_t n = read(in, buf, sizeof buf);
    close(in);
    if (n < (ssize_t)sizeof(struct inotify_event)) FAIL("short read");
    struct inotify_event *ev = (struct inotify_event *)buf;
    if (!(ev->mask & IN_CREATE) || strcmp(ev->name, "in-file")) FAIL("wrong event");
    return 0;
}

static int t_fanotify(void) {
    int fan = syscall(SYS_fanotify_init, 0 /* FAN_CLASS_NOTIF */, O_RDONLY);
    TRY(fan);
    /* FAN_OPEN | FAN_CLOSE_WRITE on the directory's children */
    TRY(syscall(SYS_fanotify_mark, fan, 1 /* FAN_MARK_ADD */,
                0x20ULL | 0x08ULL | 0x08000000ULL /* FAN_EVENT_ON_CHILD */, AT_FDCWD, dir));
    TRY(write_file(path("fan-file"), "x"));
    char buf[4096];
    struct pollfd pfd = {.fd = fan, .events = POLLIN};
    if (poll(&pfd, 1, 2000) <= 0) FAIL("no event");
    ssize_t n = read(fan, buf, sizeof buf);
    close(fan);
    if (n < 24) FAIL("short read (%zd)", n);
    return 0;
}

/* A POSIX ACL with a named user entry, in the kernel's xattr format. */
static int t_acl(void) {
    struct { uint16_t tag, perm; uint32_t id; } __attribute__((packed)) e[5] = {
        {0x01, 6, ~0u},   /* ACL_USER_OBJ rw */
        {0x02, 4, 1000},  /* ACL_USER 1000 r */
        {0x04, 4, ~0u},   /* ACL_GROUP_OBJ r */
        {0x10, 4, ~0u},   /* ACL_MASK r */
        {0x20, 0, ~0u},   /* ACL_OTHER - */
    };
    char blob[4 + sizeof e];
    uint32_t ver = 2;
    memcpy(blob, &ver, 4);
    memcpy(blob + 4, e, sizeof e);
    TRY(write_file(path("acl-file"), "x"));
    TRY(setxattr(path("acl-file"), "system.posix_acl_access", blob, sizeof blob, 0));
    char back[256];
    ssize_t n = getxattr(path("acl-file"), "system.posix_acl_access", back, sizeof back);
    TRY(n);
    if (n != (ssize_t)sizeof blob || memcmp(back, blob, n)) FAIL("ACL read back differs");
    /* a default ACL on a directory is inherited */
    TRY(mkdir(path("acl-dir"), 0755));
    TRY(setxattr(path("acl-dir"), "system.posix_acl_default", blob, sizeof blob, 0));
    TRY(write_file(path("acl-dir/child"), "x"));
    n = getxattr(path("acl-dir/child"), "system.posix_acl_access", back, sizeof back);
    if (n <= 0) FAIL("default ACL not inherited: %s", strerror(errno));
    return 0;
}

static int t_xattr(void) {
    TRY(write_file(path("xattr-file"), "x"));
    TRY(setxattr(path("xattr-file"), "user.brig", "v1", 2, 0));
    TRY(setxattr(path("xattr-file"), "trusted.brig", "v2", 2, 0));
    char b[16] = {0};
    TRY(getxattr(path("xattr-file"), "user.brig", b, sizeof b));
    if (strcmp(b, "v1")) FAIL("user.brig = %s", b);
    char list[256];
    ssize_t n = listxattr(path("xattr-file"), list, sizeof list);
    TRY(n);
    int seen = 0;
    for (char *p = list; p < list + n; p += strlen(p) + 1) seen += !strcmp(p, "user.brig");
    if (!seen) FAIL("listxattr lacks user.brig");
    TRY(removexattr(path("xattr-file"), "user.brig"));
    return 0;
}

static int t_tmpfile(void) {
    int fd = open(dir, O_TMPFILE | O_RDWR, 0600);
    TRY(fd);
    TRY(write(fd, "tmp", 3));
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    TRY(linkat(AT_FDCWD, proc, AT_FDCWD, path("tmpfile-linked"), AT_SYMLINK_FOLLOW));
    close(fd);
    struct stat st;
    TRY(stat(path("tmpfile-linked"), &st));
    if (st.st_size != 3) FAIL("size %lld", (long long)st.st_size);
    return 0;
}

static int t_renameat2(void) {
    TRY(write_file(path("ra"), "a"));
    TRY(write_file(path("rb"), "b"));
    if (syscall(SYS_renameat2, AT_FDCWD, path("ra"), AT_FDCWD, path("rb"), 1 /* NOREPLACE */) == 0)
        FAIL("RENAME_NOREPLACE replaced");
    if (errno != EEXIST) FAIL("RENAME_NOREPLACE: %s", strerror(errno));
    TRY(syscall(SYS_renameat2, AT_FDCWD, path("ra"), AT_FDCWD, path("rb"), 2 /* EXCHANGE */));
    char b[4] = {0};
    int fd = open(path("ra"), O_RDONLY);
    TRY(fd);
    TRY(read(fd, b, 3));
    close(fd);
    if (strcmp(b, "b")) FAIL("RENAME_EXCHANGE did not swap");
    return 0;
}

static int t_locks(void) {
    TRY(write_file(path("lock"), "0123456789"));
    int a = open(path("lock"), O_RDWR), b = open(path("lock"), O_RDWR);
    TRY(a); TRY(b);
    TRY(flock(a, LOCK_EX));
    if (flock(b, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK) FAIL("flock did not conflict");
    TRY(flock(a, LOCK_UN));
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 5};
    TRY(fcntl(a, F_OFD_SETLK, &fl));
    struct flock fl2 = fl;
    if (fcntl(b, F_OFD_SETLK, &fl2) == 0 || (errno != EAGAIN && errno != EACCES))
        FAIL("OFD locks did not conflict");
    struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
    TRY(fcntl(b, F_OFD_GETLK, &q));
    if (q.l_type != F_WRLCK || q.l_pid != -1) FAIL("F_OFD_GETLK: type %d pid %d", q.l_type, q.l_pid);
    /* classic POSIX locks against a child */
    struct flock pl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 6, .l_len = 2};
    TRY(fcntl(a, F_SETLK, &pl));
    pid_t pid = fork();
    if (pid == 0) {
        int c = open(path("lock"), O_RDWR);
        struct flock t = pl;
        _exit(fcntl(c, F_SETLK, &t) == 0 ? 1 : 0);
    }
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status)) FAIL("POSIX lock did not conflict in a child");
    close(a); close(b);
    return 0;
}

static int t_hardlink_lower(void) {
    if (access("/data/link-src.txt", F_OK) < 0) FAIL("image lacks /data/link-src.txt");
    TRY(link("/data/link-src.txt", "/data/link-dst.txt"));
    struct stat s1, s2;
    TRY(stat("/data/link-src.txt", &s1));
    TRY(stat("/data/link-dst.txt", &s2));
    if (s1.st_ino != s2.st_ino || s1.st_nlink != 2)
        FAIL("ino %llu/%llu nlink %lu", (unsigned long long)s1.st_ino,
             (unsigned long long)s2.st_ino, (unsigned long)s1.st_nlink);
    int fd = open("/data/link-dst.txt", O_WRONLY | O_APPEND);
    TRY(fd);
    TRY(write(fd, "!", 1));
    close(fd);
    TRY(stat("/data/link-src.txt", &s1));
    if (s1.st_size != s2.st_size + 1) FAIL("a write through one name is not seen by the other");
    return 0;
}

static int t_copy_file_range(void) {
    char data[8192];
    memset(data, 'z', sizeof data);
    int in = open(path("cfr-in"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    TRY(in);
    TRY(write(in, data, sizeof data));
    TRY(lseek(in, 0, SEEK_SET));
    int out = open(path("cfr-out"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    TRY(out);
    ssize_t n = copy_file_range(in, NULL, out, NULL, sizeof data, 0);
    TRY(n);
    if (n != (ssize_t)sizeof data) FAIL("copied %zd", n);
    close(in); close(out);
    return 0;
}

static int t_sparse_fallocate(void) {
    int fd = open(path("sparse"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    TRY(fd);
    TRY(ftruncate(fd, 1LL << 30));
    struct stat st;
    TRY(fstat(fd, &st));
    if (st.st_blocks > 64) FAIL("1 GiB truncate allocated %lld blocks", (long long)st.st_blocks);
    TRY(pwrite(fd, "data", 4, 1 << 20));
    off_t d = lseek(fd, 0, SEEK_DATA);
    off_t h = lseek(fd, 1 << 20, SEEK_HOLE);
    if (d != (1 << 20) || h <= d || h >= (1LL << 30)) FAIL("SEEK_DATA %lld SEEK_HOLE %lld", (long long)d, (long long)h);
    TRY(fallocate(fd, 0, 0, 4 << 20));
    TRY(fstat(fd, &st));
    if (st.st_blocks < 8192) FAIL("fallocate of 4 MiB: %lld blocks", (long long)st.st_blocks);
    TRY(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 2 << 20));
    TRY(fallocate(fd, FALLOC_FL_ZERO_RANGE, 2 << 20, 4096));
    TRY(fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, 1 << 20));
    TRY(fstat(fd, &st));
    if (st.st_size != (1LL << 30) - (1 << 20)) FAIL("size after collapse %lld", (long long)st.st_size);
    close(fd);
    return 0;
}

static int t_fadvise_madvise(void) {
    TRY(write_file(path("adv"), "0123456789"));
    int fd = open(path("adv"), O_RDONLY);
    TRY(fd);
    int e = posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    if (e) FAIL("posix_fadvise: %s", strerror(e));
    e = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if (e) FAIL("posix_fadvise DONTNEED: %s", strerror(e));
    TRY(readahead(fd, 0, 10));
    void *m = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) FAIL("mmap");
    TRY(madvise(m, 1 << 16, MADV_DONTNEED));
    TRY(madvise(m, 1 << 16, MADV_FREE));
    close(fd);
    return 0;
}

static int probe_fs(const char *d) {
    snprintf(dir, sizeof dir, "%s", d);
    mkdir(dir, 0755);
    report("readdir_inode_matches_stat", t_inodes());
    report("dnotify", t_dnotify());
    report("inotify", t_inotify());
    report("fanotify", t_fanotify());
    report("posix_acl", t_acl());
    report("xattr", t_xattr());
    report("o_tmpfile", t_tmpfile());
    report("renameat2", t_renameat2());
    report("flock_ofd_posix_locks", t_locks());
    report("copy_file_range", t_copy_file_range());
    report("sparse_and_fallocate", t_sparse_fallocate());
    report("fadvise_madvise_readahead", t_fadvise_madvise());
    if (!strcmp(getenv("PROBE_LOWER") ? getenv("PROBE_LOWER") : "", "1"))
        report("hardlink_to_a_lower_file", t_hardlink_lower());
    printf("failures %d\n", failures);
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "syscalls")) return probe_syscalls();
    if (argc >= 2 && !strcmp(argv[1], "syscalls32")) { ia32 = 1; return probe_syscalls(); }
    if (argc >= 3 && !strcmp(argv[1], "fs")) return probe_fs(argv[2]);
    fprintf(stderr, "usage: probe syscalls | probe syscalls32 | probe fs DIR\n");
    return 2;
}
