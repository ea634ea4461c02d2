#!/usr/bin/env python3
"""Stand-in for runc's contrib/cmd/recvtty: the fallback for recvtty.c when there is no C
compiler (a Python start-up is slow enough to lose helpers.bash's race; see recvtty.c).

It is the consumer end of the OCI runtime's --console-socket API: listen on a unix
socket, receive the pty master fd that the runtime sends with SCM_RIGHTS, then
  --mode null   (what helpers.bash's setup_recvtty uses): accept any number of
                terminals and drain each master into nothing until it hangs up;
  --mode single (update.bats uses it with --no-stdin): accept ONE terminal, hook it
                to our stdout (and stdin unless --no-stdin), exit when it closes.
Same command line as the Go original:
  recvtty [--mode|-m single|null] [--pid-file F] [--no-stdin] SOCKET

Like the Go tool it writes --pid-file before listening (teardown_recvtty kills by that
pid). Unlike it, it closes inherited fds above 2: bats waits for its fd 3 to close, so an
orphaned recvtty holding it would hang the whole .bats file.
"""

import argparse
import array
import os
import selectors
import socket
import sys
import termios


def recv_fd(conn):
    """Receive one fd sent with SCM_RIGHTS (runc sends the master with a dummy byte)."""
    try:
        _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4)
    except OSError:
        return None
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if fds else None


def clear_onlcr(fd):
    # console.ClearONLCR in the Go tool: do not turn \n into \r\n on output.
    try:
        attrs = termios.tcgetattr(fd)
        attrs[1] &= ~termios.ONLCR
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except termios.error:
        pass


def handle_null(ln):
    sel = selectors.DefaultSelector()
    sel.register(ln, selectors.EVENT_READ, "listen")
    while True:
        for key, _ in sel.select():
            if key.data == "listen":
                conn, _ = ln.accept()
                fd = recv_fd(conn)
                conn.close()
                if fd is not None:
                    sel.register(fd, selectors.EVENT_READ, "master")
            else:
                try:
                    data = os.read(key.fd, 65536)
                except OSError:  # EIO once every slave end is closed
                    data = b""
                if not data:
                    sel.unregister(key.fd)
                    os.close(key.fd)


def handle_single(ln, no_stdin):
    conn, _ = ln.accept()
    ln.close()
    master = recv_fd(conn)
    conn.close()
    if master is None:
        raise RuntimeError("no file descriptor received")
    clear_onlcr(master)
    sel = selectors.DefaultSelector()
    sel.register(master, selectors.EVENT_READ, "master")
    if not no_stdin:
        sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
    out = sys.stdout.fileno()
    while True:
        for key, _ in sel.select():
            try:
                data = os.read(key.fd, 65536)
            except OSError:
                data = b""
            if key.data == "master":
                if not data:
                    return
                os.write(out, data)
            elif data:
                os.write(master, data)
            else:  # stdin EOF: stop forwarding it, keep copying the output
                sel.unregister(key.fd)


def main():
    ap = argparse.ArgumentParser(prog="recvtty")
    ap.add_argument("--mode", "-m", default="single", choices=("single", "null"))
    ap.add_argument("--pid-file", default="")
    ap.add_argument("--no-stdin", action="store_true")
    ap.add_argument("socket")
    args = ap.parse_args()

    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    try:
        if args.pid_file:
            with open(args.pid_file, "w") as f:
                f.write("%d\n" % os.getpid())
        ln = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ln.bind(args.socket)
        ln.listen(128)
        if args.mode == "null":
            handle_null(ln)
        else:
            handle_single(ln, args.no_stdin)
    except Exception as e:  # noqa: BLE001 - mirror the Go tool's "fatal error" exit
        print("[recvtty] fatal error: %s" % e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
