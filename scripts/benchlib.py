"""Shared helpers of the benchmarks (scripts/bench-*) and scripts/local-image (not a command itself).

- running the benchmark inside `scripts/with-kvm` (re-executing the script there);
- the guest kernel both brig and `qemu -M microvm` boot: brig's own config plus CONFIG_PVH,
  because QEMU loads an uncompressed vmlinux only through its PVH entry note (brig enters
  at the 64-bit entry and ignores the note); built by kernels/build.sh and cached;
- timing a child from start to exit with its max RSS (wait4), and sampling its RSS split
  into guest RAM and the rest (from /proc/PID/smaps);
- a cpio (newc) writer for QEMU's initramfs, an OCI image layout writer, the busybox-static
  image the benchmarks and scripts/local-image build, and the result tables.
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                     "brig", "bench")


class BenchError(Exception):
    """A benchmark cannot run; the message is the one line the user reads."""


def die(prog, msg):
    print(f"{prog}: error: {msg}", file=sys.stderr)
    sys.exit(1)


def note(prog, msg):
    print(f"{prog}: {msg}", file=sys.stderr, flush=True)


def need(*cmds):
    """Raises BenchError naming the Debian package of the first missing command."""
    packages = {"qemu-system-x86_64": "qemu-system-x86", "runc": "runc", "busybox": "busybox-static",
                "mkfs.erofs": "erofs-utils", "mkfs.ext4": "e2fsprogs", "cargo": "rustup/cargo",
                "go": "golang-go", "debootstrap": "debootstrap", "iperf3": "iperf3",
                "nft": "nftables", "passt": "passt", "ip": "iproute2", "ss": "iproute2",
                "setpriv": "util-linux", "ldd": "libc-bin"}
    for c in cmds:
        if not shutil.which(c):
            raise BenchError(f"'{c}' is missing (Debian package {packages.get(c, c)})")


# ---- where the benchmark runs -----------------------------------------------------------

def inside_kvm():
    return "BRIG_KVM_MODE" in os.environ


def reexec_under_with_kvm(script, argv):
    """Runs `script argv` under scripts/with-kvm and exits with its status."""
    cmd = [os.path.join(ROOT, "scripts/with-kvm"), sys.executable, os.path.abspath(script), *argv]
    try:
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode
    except KeyboardInterrupt:
        rc = 130
    sys.exit(rc if rc >= 0 else 128 - rc)


def hold_kvm_static_keys():
    """Creates an idle VM with one vCPU and an in-kernel local APIC that never runs, and
    returns its fds: keep them open for the whole benchmark. KVM counts vCPUs whose APIC is
    software-disabled (every vCPU until its guest enables the APIC) in a static key; each VM
    start flips it on and, a second after the guest enables its APIC, off again, patching
    kernel text each time. Under QEMU's multi-threaded TCG (the nested VM of a development
    machine) patching code that another vCPU runs can leave it a stale int3: with two VMs at
    once, L1 died in kvm_arch_vcpu_ioctl_run. Holding the key on (as any host running other
    VMs does) avoids the patching."""
    import fcntl
    fds = []
    try:
        fds.append(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        fds.append(fcntl.ioctl(fds[0], 0xAE01, 0))  # KVM_CREATE_VM (fds are O_CLOEXEC)
        fcntl.ioctl(fds[1], 0xAE60, 0)  # KVM_CREATE_IRQCHIP
        fds.append(fcntl.ioctl(fds[1], 0xAE41, 0))  # KVM_CREATE_VCPU 0
    except OSError as e:
        for fd in fds:
            os.close(fd)
        raise BenchError(f"cannot create an idle VM on /dev/kvm: {e}")
    return fds


def ensure_brig(path, prog):
    if os.path.exists(path):
        return path
    if path != os.path.join(ROOT, "target/release/brig"):
        raise BenchError(f"{path} does not exist")
    note(prog, "building target/release/brig (cargo build --release)")
    need("cargo")
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    subprocess.run([os.path.join(ROOT, "scripts/link-bins")], cwd=ROOT, check=True)
    return path


def is_static(path):
    """True when the ELF at `path` has no program interpreter (PT_INTERP)."""
    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", hdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", hdr, 54)
        f.seek(phoff)
        phdrs = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", phdrs, i * phentsize)[0] != 3 for i in range(phnum))


def shared_libraries(binary):
    """The shared libraries `binary` loads, its dynamic loader included, as the absolute paths
    `ldd` names them; [] for a static binary. A library ldd cannot find is an error."""
    if is_static(binary):
        return []
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"ldd {binary} failed: {out.stderr.strip() or out.stdout.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        words = line.split()
        if "=>" in words:  # libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)
            path = words[words.index("=>") + 1]
        elif words and words[0].startswith("/"):  # /lib64/ld-linux-x86-64.so.2 (0x...)
            path = words[0]
        else:  # linux-vdso.so.1, which the kernel provides
            continue
        if not path.startswith("/"):
            raise BenchError(f"ldd {binary}: {line.strip()}")
        libs.append(path)
    return libs


def need_static_busybox():
    if not os.path.exists("/bin/busybox") or not is_static("/bin/busybox"):
        raise BenchError("/bin/busybox must be static (apt-get install busybox-static)")


# ---- the guest kernel -------------------------------------------------------------------

def has_pvh_note(path):
    """True when the ELF at `path` carries XEN_ELFNOTE_PHYS32_ENTRY (what QEMU needs)."""
    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:
            raise BenchError(f"{path} is not a 64-bit ELF vmlinux")
        phoff, = struct.unpack_from("<Q", hdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", hdr, 54)
        f.seek(phoff)
        phdrs = f.read(phentsize * phnum)
        for i in range(phnum):
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", phdrs, i * phentsize)
            if p_type != 4:  # PT_NOTE
                continue
            f.seek(p_offset)
            notes, pos = f.read(p_filesz), 0
            while pos + 12 <= len(notes):
                namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
                name = notes[pos + 12:pos + 12 + namesz].rstrip(b"\0")
                if name == b"Xen" and ntype == 18:
                    return True
                pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def bench_kernel(prog):
    """brig's kernel config (kernels/microvm.config) plus CONFIG_PVH=y, built by
    kernels/build.sh into a cache of its own (minutes the first time; a no-op after)."""
    tmp = tempfile.mkdtemp(prefix="brig-bench-kernel-")
    try:
        shutil.copy(os.path.join(ROOT, "kernels/build.sh"), tmp)
        if os.path.isdir(os.path.join(ROOT, "kernels/patches")):
            shutil.copytree(os.path.join(ROOT, "kernels/patches"), os.path.join(tmp, "patches"))
        with open(os.path.join(ROOT, "kernels/microvm.config")) as src, \
                open(os.path.join(tmp, "microvm.config"), "w") as dst:
            dst.write(src.read())
            dst.write("\n# bench: PVH entry note, so that qemu -M microvm boots this same vmlinux\n"
                      "CONFIG_PVH=y\n")
        env = dict(os.environ, XDG_CACHE_HOME=CACHE)
        out = subprocess.run([os.path.join(tmp, "build.sh")], env=env, stdout=subprocess.PIPE,
                             text=True)
        if out.returncode != 0:
            raise BenchError("building the benchmark kernel (kernels/build.sh + CONFIG_PVH) failed")
        path = out.stdout.strip().splitlines()[-1]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not has_pvh_note(path):
        raise BenchError(f"{path} has no PVH note although built with CONFIG_PVH=y")
    return path


def resolve_kernel(arg, prog):
    """The kernel both sides boot: --kernel when given (it must have a PVH note), else
    brig's config + CONFIG_PVH (built here, on the host, before the nested VM)."""
    if arg:
        if not os.path.exists(arg):
            raise BenchError(f"kernel {arg} does not exist")
        if not has_pvh_note(arg):
            raise BenchError(f"kernel {arg} has no PVH ELF note (CONFIG_PVH): qemu -M microvm "
                             "cannot boot it; leave --kernel out to build brig's config with it")
        return os.path.abspath(arg)
    need("make", "gcc")
    return bench_kernel(prog)


# ---- measuring children -----------------------------------------------------------------

class Result:
    def __init__(self, wall, rc, maxrss_kib, out=b"", guest_kib=None, other_kib=None):
        self.wall, self.rc, self.maxrss_kib, self.out = wall, rc, maxrss_kib, out
        self.guest_kib, self.other_kib = guest_kib, other_kib


def _read_out(f):
    f.seek(0)
    data = f.read()
    return data


def run_timed(argv, env=None, sample_guest_mib=None, cwd=None):
    """Runs argv (stdin /dev/null, stdout+stderr captured) and returns a Result: wall time
    from spawn to exit, exit status, max RSS (wait4's ru_maxrss, KiB). With
    sample_guest_mib, also samples /proc/PID/smaps every few ms, of the process and its
    descendants (brig's jailed VMM is its child): the largest RSS seen in the guest-RAM
    mapping(s) (anonymous, that size) and in everything else."""
    with tempfile.TemporaryFile(dir="/run" if os.path.isdir("/run") else None) as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT)
        guest = other = None
        if sample_guest_mib:
            guest = other = 0
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                g = o = 0
                for each in _tree(p.pid):
                    eg, eo = _smaps_split(each, sample_guest_mib)
                    g, o = g + eg, o + eo
                guest, other = max(guest, g), max(other, o)
                time.sleep(0.003)
        else:
            pid, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        return Result(wall, p.returncode, ru.ru_maxrss, _read_out(out), guest, other)


def _tree(pid):
    """pid and its descendants, from /proc/PID/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return out


def _smaps_split(pid, guest_mib):
    """(RSS KiB in anonymous mappings of guest_mib .. guest_mib+2 MiB, RSS KiB elsewhere)."""
    guest = other = 0
    try:
        with open(f"/proc/{pid}/smaps") as f:
            size, is_guest = 0, False
            for line in f:
                first = line.split(None, 1)[0]
                if "-" in first and not first.endswith(":"):  # a mapping's header line
                    lo, hi = (int(x, 16) for x in first.split("-"))
                    size = (hi - lo) >> 10
                    fields = line.split()
                    anon = len(fields) < 6  # no path
                    is_guest = anon and guest_mib << 10 <= size <= (guest_mib + 2) << 10
                elif first == "Rss:":
                    kib = int(line.split()[1])
                    if is_guest:
                        guest += kib
                    else:
                        other += kib
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return guest, other


# ---- cpio (newc) for QEMU's initramfs -----------------------------------------------------

def cpio(entries):
    """entries: (path, mode, data bytes | symlink target str | (major, minor) for a char
    device). Returns the archive (uncompressed, as brig's own initramfs)."""
    out, ino = bytearray(), 1

    def entry(name, mode, data=b"", rdev=(0, 0)):
        nonlocal ino
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0))
        ino += 1
        out.extend(hdr.encode() + nb)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for path, mode, content in entries:
        if isinstance(content, str):
            entry(path, 0o120777, content.encode())
        elif isinstance(content, tuple):
            entry(path, 0o020000 | mode, rdev=content)
        elif content is None:
            entry(path, 0o040000 | mode)
        else:
            entry(path, 0o100000 | mode, content)
    entry("TRAILER!!!", 0)
    return bytes(out)


# ---- the busybox-static image -----------------------------------------------------------------

BUSYBOX_DIRS = (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o755), ("sys", 0o755),
                ("tmp", 0o1777), ("root", 0o700))


def busybox_layer(applets, dirs=BUSYBOX_DIRS, files=()):
    """An image layer, an uncompressed tar (owners root, fixed times, so the same inputs give
    the same digest): `dirs` ((name, mode) pairs), the host's /bin/busybox with a link in /bin
    per name in `applets`, `files` ((path in the image, host file) pairs, mode 0755, their
    parent directories made as needed), /etc/passwd and /etc/group (root, nobody)."""
    import tarfile
    buf = io.BytesIO()
    made = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(name, kind, mode, data=b"", target=""):
            parent = os.path.dirname(name)
            if parent and parent not in made:
                add(parent, tarfile.DIRTYPE, 0o755)
            if kind == tarfile.DIRTYPE:
                if name in made:
                    return
                made.add(name)
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.uname, ti.gname = kind, mode, 1700000000, "root", "root"
            if kind == tarfile.SYMTYPE:
                ti.linkname = target
            ti.size = len(data) if kind == tarfile.REGTYPE else 0
            t.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for d, mode in dirs:
            add(d, tarfile.DIRTYPE, mode)
        with open("/bin/busybox", "rb") as f:
            add("bin/busybox", tarfile.REGTYPE, 0o755, f.read())
        for a in applets:
            add(f"bin/{a}", tarfile.SYMTYPE, 0o777, target="busybox")
        for path, src in files:
            with open(src, "rb") as f:
                add(path.lstrip("/"), tarfile.REGTYPE, 0o755, f.read())
        add("etc/passwd", tarfile.REGTYPE, 0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def write_busybox_layout(layout, tar, path):
    """An OCI image layout at `layout` with `tar` (gzip) as its only layer, tagged `latest`:
    amd64, PATH=`path`, `sh` as its command."""
    write_oci_layout(
        layout,
        [(gzip.compress(tar, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip",
          f"sha256:{hashlib.sha256(tar).hexdigest()}")],
        {"architecture": "amd64", "os": "linux", "config": {"Env": [f"PATH={path}"], "Cmd": ["sh"]}})


# ---- tables -------------------------------------------------------------------------------

def write_oci_layout(layout, layers, config):
    """An OCI image layout at `layout` holding one image tagged `latest`. `layers` are
    (blob, media type, diff_id): the blob as bytes or as the path of a file (copied, hashed
    as it is read), diff_id None for an uncompressed layer (its own digest). `config` is the
    image config without `rootfs`, which is filled in here."""
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)

    def put(blob, media):
        if isinstance(blob, bytes):
            digest = hashlib.sha256(blob).hexdigest()
            with open(os.path.join(blobs, digest), "wb") as f:
                f.write(blob)
            size = len(blob)
        else:
            h = hashlib.sha256()
            with open(blob, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = h.hexdigest()
            shutil.copyfile(blob, os.path.join(blobs, digest))
            size = os.path.getsize(blob)
        return {"mediaType": media, "digest": f"sha256:{digest}", "size": size}

    descs = [put(blob, media) for blob, media, _ in layers]
    diff_ids = [diff_id or d["digest"] for (_, _, diff_id), d in zip(layers, descs)]
    config = dict(config, rootfs={"type": "layers", "diff_ids": diff_ids})
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": put(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
                "layers": descs}
    m = put(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    m["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [m]}, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


def fmt_s(s):
    return f"{s * 1000:9.1f} ms" if s < 10 else f"{s:9.2f} s "


def fmt_mib(kib):
    return f"{kib / 1024:7.1f} MiB"


def table(rows, ratios):
    """rows: (name, [seconds]); ratios: (column title, baseline row name): each row's median
    divided by the baseline's."""
    meds = {n: statistics.median(xs) for n, xs in rows}
    w = max(32, *(len(n) for n, _ in rows))
    head = "".join(f" {t:>9} |" for t, _ in ratios)
    print(f"| {'case':<{w}} | {'min':>12} | {'median':>12} | {'max':>12} |{head}")
    print(f"|{'-' * (w + 2)}|{'-' * 14}|{'-' * 14}|{'-' * 14}|" + "-----------|" * len(ratios))
    for name, xs in rows:
        med = meds[name]
        cols = "".join(f" {med / meds[b]:>8.2f}x |" for _, b in ratios)
        print(f"| {name:<{w}} | {fmt_s(min(xs)):>12} | {fmt_s(med):>12} | {fmt_s(max(xs)):>12} "
              f"|{cols}")
