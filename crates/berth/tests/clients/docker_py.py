"""docker-py (the Python SDK from PyPI) against a Berth daemon: the calls people script.
Prints one line per check; the Rust test compares them."""
import io
import sys
import tarfile

import docker

c = docker.DockerClient(base_url=sys.argv[1])
print("api", c.version()["ApiVersion"])
print("run", c.containers.run("busybox", ["echo", "hi"], remove=True))
ctr = c.containers.run("busybox", ["sleep", "60"], detach=True, name="dpy")
ctr.reload()
print("status", ctr.status)
r = ctr.exec_run(["sh", "-c", "echo out; exit 3"])
print("exec", r.exit_code, r.output)
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    data = b"put via docker-py\n"
    info = tarfile.TarInfo("note.txt")
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))
print("put_archive", ctr.put_archive("/tmp", buf.getvalue()))
stream, stat = ctr.get_archive("/tmp/note.txt")
with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as t:
    print("get_archive", stat["name"], t.extractfile("note.txt").read())
other = c.containers.run("busybox", ["sh", "-c", "echo a; echo b >&2; exit 4"], detach=True)
print("wait", other.wait()["StatusCode"])
print("logs", other.logs(stdout=True, stderr=False), other.logs(stdout=False, stderr=True))
other.remove()
ctr.kill()
print("killed", ctr.wait()["StatusCode"])
ctr.remove()
print("list", [x.name for x in c.containers.list(all=True)])
print("images", sorted(t for i in c.images.list() for t in i.tags))
v = c.volumes.create("dv")
print("volume", v.name)
v.remove()
