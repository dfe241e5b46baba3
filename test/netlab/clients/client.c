/*
 * The lab's C client for the keepalive audit.
 *
 * client HOST PORT IDLE: setsockopt(SO_KEEPALIVE), and TCP_KEEPIDLE IDLE
 * unless IDLE is 0. Requests, says "ready", waits for a line on stdin while
 * the connection idles, requests again; exits 0 if the connection survived,
 * 1 if not.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static void fail(const char *what) {
	perror(what);
	exit(1);
}

static int request(int fd) {
	char buf[16];
	size_t n = 0;
	if (write(fd, "ping\n", 5) != 5)
		return -1;
	while (n < sizeof buf - 1) {
		ssize_t r = read(fd, buf + n, 1);
		if (r == 0)
			errno = ECONNABORTED; /* closed by the peer */
		if (r <= 0)
			return -1;
		if (buf[n++] == '\n')
			break;
	}
	buf[n] = 0;
	if (strcmp(buf, "ok\n") != 0) {
		errno = EPROTO; /* not the answer */
		return -1;
	}
	return 0;
}

int main(int argc, char **argv) {
	if (argc != 4) {
		fprintf(stderr, "usage: %s HOST PORT IDLE\n", argv[0]);
		return 2;
	}
	int one = 1, idle = atoi(argv[3]);
	struct timeval timeout = {.tv_sec = 5};
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", argv[1]);
		return 2;
	}
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		fail("socket");
	if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) < 0)
		fail("SO_KEEPALIVE");
	if (idle > 0 && setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) < 0)
		fail("TCP_KEEPIDLE");
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) < 0)
		fail("timeouts");
	if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
		fail("connect");
	if (request(fd) < 0)
		fail("first request");
	printf("ready\n");
	fflush(stdout);
	char line[16];
	if (!fgets(line, sizeof line, stdin))
		fail("stdin");
	if (request(fd) < 0)
		fail("request after idling");
	printf("alive\n");
	return 0;
}
