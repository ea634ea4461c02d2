/*
 * Stand-in for runc's contrib/cmd/recvtty (a Go program; we build nothing from runc's tree).
 * scripts/runc-bats compiles this with the host's gcc and installs it where helpers.bash looks
 * for it; scripts/runc-bats.d/recvtty.py is the fallback when there is no C compiler.
 *
 * Why C rather than Python: helpers.bash's setup_recvtty starts recvtty in the background and
 * goes straight on to `runc create --console-socket`; the Go tool starts in about a millisecond,
 * a Python interpreter in 30 ms (seconds on a loaded host), and the runtime then fails with
 * "dial unix .../tty/sock: connect: no such file or directory".
 *
 * It is the consumer end of the --console-socket API: listen on a unix socket and receive the
 * pty master that the runtime sends with SCM_RIGHTS, then
 *   --mode null    accept any number of terminals and drain each master until it hangs up;
 *   --mode single  accept ONE terminal, copy it to stdout (and stdin to it unless --no-stdin),
 *                  exit when it closes.
 * Command line as the Go tool: recvtty [--mode|-m single|null] [--pid-file F] [--no-stdin] SOCK
 * Like the Go tool it writes --pid-file BEFORE listening: teardown_recvtty kills by that pid,
 * so a recvtty that listened without a pid file could outlive its test.
 * Unlike it, it closes every inherited fd above 2: bats waits for its fd 3 to close, so an
 * orphaned recvtty holding it would hang the whole .bats file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#define MAXFDS 256

static void bail(const char *what) {
	fprintf(stderr, "[recvtty] fatal error: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int recv_fd(int conn) {
	char data[4096];
	char cbuf[CMSG_SPACE(sizeof(int) * 4)];
	struct iovec iov = {data, sizeof data};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof cbuf};
	if (recvmsg(conn, &msg, MSG_CMSG_CLOEXEC) < 0)
		return -1;
	int fd = -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		int n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int *fds = (int *)CMSG_DATA(c);
		for (int i = 0; i < n; i++) {
			if (fd < 0)
				fd = fds[i];
			else
				close(fds[i]);
		}
	}
	return fd;
}

static int write_all(int fd, const char *buf, ssize_t n) {
	while (n > 0) {
		ssize_t w = write(fd, buf, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		buf += w;
		n -= w;
	}
	return 0;
}

static void handle_null(int ln) {
	struct pollfd p[MAXFDS];
	int n = 1;
	char buf[65536];
	p[0] = (struct pollfd){.fd = ln, .events = POLLIN};
	for (;;) {
		if (poll(p, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			bail("poll");
		}
		for (int i = n - 1; i >= 1; i--) {
			if (!p[i].revents)
				continue;
			/* EIO (or 0) once every slave end is closed: drop this master. */
			if (read(p[i].fd, buf, sizeof buf) <= 0) {
				close(p[i].fd);
				p[i] = p[--n];
			}
		}
		if (p[0].revents & POLLIN) {
			int conn = accept4(ln, NULL, NULL, SOCK_CLOEXEC);
			if (conn < 0)
				continue;
			int m = recv_fd(conn);
			close(conn);
			if (m >= 0 && n < MAXFDS)
				p[n++] = (struct pollfd){.fd = m, .events = POLLIN};
			else if (m >= 0)
				close(m);
		}
	}
}

static void handle_single(int ln, int no_stdin) {
	int conn = accept4(ln, NULL, NULL, SOCK_CLOEXEC);
	if (conn < 0)
		bail("accept");
	close(ln);
	int m = recv_fd(conn);
	if (m < 0)
		bail("receive terminal");
	close(conn);
	struct termios t; /* console.ClearONLCR: no \n -> \r\n on output */
	if (tcgetattr(m, &t) == 0) {
		t.c_oflag &= ~ONLCR;
		tcsetattr(m, TCSANOW, &t);
	}
	struct pollfd p[2] = {{.fd = m, .events = POLLIN}, {.fd = no_stdin ? -1 : 0, .events = POLLIN}};
	char buf[65536];
	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			bail("poll");
		}
		if (p[0].revents) {
			ssize_t r = read(m, buf, sizeof buf);
			if (r <= 0 || write_all(1, buf, r) < 0)
				exit(0);
		}
		if (p[1].revents) {
			ssize_t r = read(0, buf, sizeof buf);
			if (r <= 0)
				p[1].fd = -1; /* stdin EOF: keep copying the output */
			else if (write_all(m, buf, r) < 0)
				exit(0);
		}
	}
}

int main(int argc, char **argv) {
	const char *mode = "single", *pid_file = NULL, *path = NULL;
	int no_stdin = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] == '-' && a[1] == '-')
			a++; /* urfave/cli takes -flag and --flag alike */
		const char *eq = strchr(a, '=');
		size_t len = eq ? (size_t)(eq - a) : strlen(a);
#define FLAG(name) (len == strlen(name) && strncmp(a, name, len) == 0)
#define VALUE() (eq ? eq + 1 : (i + 1 < argc ? argv[++i] : (fprintf(stderr, "missing value for %s\n", argv[i]), exit(2), "")))
		if (FLAG("-mode") || FLAG("-m"))
			mode = VALUE();
		else if (FLAG("-pid-file"))
			pid_file = VALUE();
		else if (FLAG("-no-stdin"))
			no_stdin = 1;
		else if (a[0] == '-' && a[1]) {
			fprintf(stderr, "recvtty: unknown flag %s\n", argv[i]);
			return 2;
		} else if (!path)
			path = argv[i];
		else {
			fprintf(stderr, "need to specify a single socket path\n");
			return 1;
		}
	}
	if (!path) {
		fprintf(stderr, "need to specify a single socket path\n");
		return 1;
	}
	if (strcmp(mode, "null") && strcmp(mode, "single")) {
		fprintf(stderr, "need to select a valid mode: %s\n", mode);
		return 1;
	}
	close_range(3, ~0U, 0);
	if (pid_file) {
		FILE *f = fopen(pid_file, "w");
		if (!f || fprintf(f, "%d\n", getpid()) < 0 || fclose(f))
			bail("pid file");
	}
	int ln = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof sa.sun_path) {
		errno = ENAMETOOLONG;
		bail(path);
	}
	strcpy(sa.sun_path, path);
	if (ln < 0 || bind(ln, (struct sockaddr *)&sa, sizeof sa) || listen(ln, 128))
		bail(path);
	if (!strcmp(mode, "null"))
		handle_null(ln);
	else
		handle_single(ln, no_stdin);
	return 0;
}
