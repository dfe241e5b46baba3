"""The lab's Python client for the keepalive audit.

client.py HOST PORT on|off: SO_KEEPALIVE on, or left off (the default).
Requests, says "ready", waits for a line on stdin while the connection
idles, requests again; exits 0 if the connection survived, 1 if not.
"""
import socket
import sys


def request(sock, reader):
    sock.sendall(b"ping\n")
    line = reader.readline()
    if line != b"ok\n":
        raise OSError("unexpected answer %r" % line)


def main():
    host, port, keepalive = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if keepalive == "on":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.settimeout(5)
    sock.connect((host, port))
    reader = sock.makefile("rb")
    request(sock, reader)
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        request(sock, reader)
    except OSError as e:
        print("request after idling: %s" % e, file=sys.stderr)
        sys.exit(1)
    print("alive", flush=True)


main()
