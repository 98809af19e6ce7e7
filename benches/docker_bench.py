#!/usr/bin/env python3
"""Docker discovery latency: from a container's `start` event (the engine's own timestamp) to the
first request Gantry routes to it, over N starts; and the time Gantry takes to list and inspect
M running containers. Loopback only; every container and process started here is removed.

    cargo build --release && python3 benches/docker_bench.py [--starts 50] [--relist 200]
"""
import argparse, http.client, json, os, re, shutil, socket, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "gantry")
TAG = "gantry-bench:latest"
RUN = "gb%d" % (os.getpid() % 100000)


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout.strip()


def build_image():
    root = tempfile.mkdtemp()
    try:
        def copy(src, dst):
            d = os.path.join(root, dst.lstrip("/"))
            os.makedirs(os.path.dirname(d), exist_ok=True)
            shutil.copy(src, d)
        copy(BIN, "/gantry")
        subprocess.run(["strip", "--strip-debug", os.path.join(root, "gantry")])
        for line in sh("ldd", BIN).splitlines():
            path = line.split("=>")[-1].split()[0] if line.split() else ""
            if path.startswith("/"):
                copy(path, path)
        copy("/bin/busybox", "/bin/sh")
        os.makedirs(os.path.join(root, "tmp"), exist_ok=True)
        tar = os.path.join(tempfile.gettempdir(), RUN + ".tar")
        sh("tar", "-C", root, "-cf", tar, ".")
        sh("docker", "import", "-c", 'ENTRYPOINT ["/gantry", "backend"]', "-c", "ENV PORT=80", tar, TAG)
        os.unlink(tar)
    finally:
        shutil.rmtree(root)


class Events(threading.Thread):
    """`start` event times (ns) by container id, read from the engine's event stream."""

    def __init__(self):
        super().__init__(daemon=True)
        self.starts, self.cond = {}, threading.Condition()

    def run(self):
        s = socket.socket(socket.AF_UNIX)
        s.connect("/var/run/docker.sock")
        q = 'filters={"type":["container"],"event":["start"]}'
        s.sendall(("GET /events?%s HTTP/1.1\r\nHost: docker\r\n\r\n" % q.replace('"', "%22")).encode())
        buf = b""
        while True:
            data = s.recv(65536)
            if not data:
                return
            buf += data
            for m in re.finditer(rb'\{"status":.*?"timeNano":(\d+)\}', buf):
                ev = json.loads(m.group(0))
                with self.cond:
                    self.starts[ev["id"][:12]] = int(ev["timeNano"])
                    self.cond.notify_all()
            buf = buf[buf.rfind(b"\n") + 1 :] if b"\n" in buf else buf

    def wait(self, cid, timeout=10):
        with self.cond:
            self.cond.wait_for(lambda: cid in self.starts, timeout)
            return self.starts.get(cid)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=50)
    ap.add_argument("--relist", type=int, default=200)
    a = ap.parse_args()
    build_image()
    events = Events()
    events.start()
    proxy, admin = free_port(), free_port()
    log = tempfile.NamedTemporaryFile(delete=False)
    g = subprocess.Popen([BIN, "run", "--docker", "--docker-address", "published", "--listen", "127.0.0.1:%d" % proxy,
                          "--admin", "127.0.0.1:%d" % admin], stderr=log, env=dict(os.environ, GANTRY_LOG="info", TOKIO_WORKER_THREADS="1"))
    made = []
    try:
        time.sleep(1)
        lat = []
        for i in range(a.starts):
            host = "%s-%d.bench" % (RUN, i)
            cid = sh("docker", "create", "--label", "gantry.routing.port_80=" + host, "-p", "127.0.0.1::80", TAG)[:12]
            made.append(cid)
            sh("docker", "start", cid)
            conn = http.client.HTTPConnection("127.0.0.1", proxy)
            while True:
                conn.request("GET", "/", headers={"Host": host})
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    done = time.time_ns()
                    break
            t0 = events.wait(cid)
            lat.append((done - t0) / 1e6)
            sh("docker", "rm", "-f", cid)
            made.remove(cid)
        print("start event -> first routed request over %d starts: p50 %.1f ms, p99 %.1f ms, min %.1f, max %.1f"
              % (len(lat), pct(lat, 50), pct(lat, 99), min(lat), max(lat)))
        g.terminate()
        g.wait()
        # Full re-list: M running containers, then Gantry starts and lists them.
        for i in range(a.relist):
            made.append(sh("docker", "run", "-d", "--label", "gantry.routing.port_80=%s-r%d.bench" % (RUN, i),
                           "-p", "127.0.0.1::80", TAG)[:12])
        timings = []
        for _ in range(3):
            log2 = tempfile.NamedTemporaryFile(delete=False)
            g = subprocess.Popen([BIN, "run", "--docker", "--docker-address", "published", "--listen", "127.0.0.1:%d" % proxy,
                                  "--admin", "127.0.0.1:%d" % admin], stderr=log2, env=dict(os.environ, GANTRY_LOG="info"))
            for _ in range(600):
                text = open(log2.name).read()
                m = re.search(r"docker: listed.*containers=(\d+) ms=([\d.]+)", text)
                if m and int(m.group(1)) >= a.relist:
                    timings.append(float(m.group(2)))
                    break
                time.sleep(0.05)
            g.terminate()
            g.wait()
            os.unlink(log2.name)
        print("full re-list of %d running containers (list + inspect each): %s ms (3 runs)" % (a.relist, ", ".join("%.0f" % t for t in timings)))
    finally:
        if g.poll() is None:
            g.terminate()
            g.wait()
        for cid in made:
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
        os.unlink(log.name)


if __name__ == "__main__":
    main()
