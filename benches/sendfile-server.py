#!/usr/bin/env python3
# The fastest a blob server can be on this machine, for benches/registry.sh: HTTP/1.1 GETs
# of the files in one directory, each answered with a bare header and one sendfile(2) of
# the whole file, a thread per connection. No routing, storage or checks: whatever a real
# registry reaches is at most this, so its ratio to distribution bounds every registry's.
#
#   benches/sendfile-server.py DIR PORT
import os, socket, sys, threading
root, port = sys.argv[1], int(sys.argv[2])
def serve(c):
    with c:
        req = b""
        while b"\r\n\r\n" not in req:
            k = c.recv(4096)
            if not k: return
            req += k
        name = os.path.basename(req.split(b" ")[1].decode())
        with open(os.path.join(root, name), "rb") as f:
            n = os.fstat(f.fileno()).st_size
            c.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n".encode())
            off = 0
            while off < n:
                off += os.sendfile(c.fileno(), f.fileno(), off, n - off)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
