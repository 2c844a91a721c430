"""The guest side of scripts/bench-identity (see there)."""
import mmap
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from agentclient import AgentProcess, median, p99  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tests/integration"))
from blocks_digest import blocks_digest  # noqa: E402

build, runs, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
binary = os.path.join(build, "wrenn-agent")
CHUNK = 4096
MIB = 1 << 20
FLATTEN_MIB = 512
SPARSE_MIB, SPARSE_DATA_MIB = 4096, 256
DENSE_MIB = 1024
HASHED_MIB = 256  # each of the four templates read while GET is timed
GETS = 1000


def step(what):
    """progress on the console: a run takes minutes under TCG"""
    print(f"== {time.strftime('%T')} {what}", file=sys.stderr, flush=True)


def result(figure, value, goal, met):
    """one line scripts/bench-all collects: figure, value, goal, met"""
    print(f"RESULT\t{figure}\t{value}\t{goal}\t{met}", flush=True)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


_noise = os.urandom(64 * MIB)


def write_data(path, mib, seed, offset_mib=0):
    """`mib` MiB of incompressible bytes at `offset_mib` (64 MiB of random data, each 64 MiB
    piece stamped with its own seed and place, so no two blocks are alike)"""
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        f.seek(offset_mib * MIB)
        for piece in range(0, mib, 64):
            n = min(64, mib - piece) * MIB
            stamp = f"{seed}:{piece}".encode().ljust(32, b".")
            buf = bytearray(_noise[:n])
            for at in range(0, n, 64 << 10):
                buf[at:at + 32] = stamp
            f.write(buf)
        f.flush()
        os.fsync(f.fileno())


def write_chunks(dev, chunks, rng):
    """4 KiB of random bytes at each chunk index, with O_DIRECT, then fsync"""
    buf = mmap.mmap(-1, CHUNK)  # page-aligned, as O_DIRECT wants
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        for c in chunks:
            buf.seek(0)
            buf.write(rng.randbytes(CHUNK))
            os.pwrite(fd, buf, c * CHUNK)
        os.fsync(fd)
    finally:
        os.close(fd)


def json_field(answer, field):
    import json
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])[field]


def wait_digest(agent, sid, deadline_s=1800):
    """seconds until GET /sandboxes/{sid} shows its template's digest (polled every 20 ms)"""
    start = time.perf_counter()
    while time.perf_counter() - start < deadline_s:
        status, _, answer = agent.api.call("GET", f"/sandboxes/{sid}")
        if status == 200 and json_field(answer, "template_digest") != "pending":
            return time.perf_counter() - start, json_field(answer, "template_digest")
        time.sleep(0.02)
    sys.exit(f"bench-identity: the digest of {sid}'s template was not known in {deadline_s} s")


def flatten_figures(fs, label):
    """flatten of a paused sandbox (512 MiB dense template, 1% of its chunks rewritten at random)
    against dd of its device into a file, caches dropped before each run"""
    work = f"{fs}/{prefix}-flatten"
    state = f"{work}/state"
    templates = f"{state}/templates"
    os.makedirs(templates, exist_ok=True)
    write_data(f"{templates}/base.img", FLATTEN_MIB, 1)
    agent = AgentProcess(binary, work, state, "bench-identity")
    try:
        dev = agent.sandbox("fl")
        wait_digest(agent, "fl")
        rng = random.Random(24)
        chunks = sorted(rng.sample(range(FLATTEN_MIB * MIB // CHUNK), FLATTEN_MIB * MIB // CHUNK // 100))
        write_chunks(dev, chunks, rng)
        dd_times = []
        for _ in range(runs):
            if os.path.exists(f"{work}/dd.img"):
                os.unlink(f"{work}/dd.img")
            drop_caches()
            start = time.perf_counter()
            subprocess.run(["dd", f"if={dev}", f"of={work}/dd.img", "bs=4M", "conv=fsync",
                            "status=none"], check=True)
            dd_times.append(time.perf_counter() - start)
        agent.api.must("POST", "/sandboxes/fl/pause")
        fl_times = []
        for r in range(runs):
            drop_caches()
            start = time.perf_counter()
            status, _, answer = agent.api.call("POST", "/sandboxes/fl/flatten",
                                               {"template": f"flat{r}"})
            fl_times.append(time.perf_counter() - start)
            if status != 201:
                sys.exit(f"bench-identity: flatten answered {status}: {answer[-300:]!r}")
            digest = json_field(answer, "digest")
            out = f"{templates}/flat{r}.img"
            if r == 0:
                # Checked once, outside the timing: the bytes are dd's, the digest is theirs.
                subprocess.run(["cmp", out, f"{work}/dd.img"], check=True)
                want = blocks_digest(out)
                if digest != want:
                    sys.exit(f"bench-identity: flatten answered digest {digest}, the image has {want}")
            os.unlink(out)
        agent.api.must("DELETE", "/sandboxes/fl", want=204)
    finally:
        agent.stop()
    with open(f"{work}/agent.log") as log:
        for line in log:
            if "flattened" in line or "derived" in line:
                print(f"{label}: agent: {line.strip()[-220:]}")
    ratio = median(fl_times) / median(dd_times)
    print(f"{label}: dd of the device   runs {' '.join(f'{t:.3f}' for t in dd_times)}  "
          f"median {median(dd_times):.3f} s")
    print(f"{label}: flatten (API, digest included)   runs "
          f"{' '.join(f'{t:.3f}' for t in fl_times)}  median {median(fl_times):.3f} s")
    return ratio


def create_figures():
    """first create over a version never seen against a second create, and the time until the
    first version's digest is known against reading the data it holds"""
    work = f"/scratch/{prefix}-create"
    state = f"{work}/state"
    templates = f"{state}/templates"
    os.makedirs(templates, exist_ok=True)
    sparse = f"{templates}/sparse.img"
    write_data(sparse, SPARSE_DATA_MIB, 2)
    os.truncate(sparse, SPARSE_MIB * MIB)
    write_data(f"{templates}/dense.img", DENSE_MIB, 3)
    out = {}
    agent = AgentProcess(binary, work, state, "bench-identity")
    try:
        for name in ("sparse", "dense"):
            first, second, known = [], [], []
            for r in range(runs):
                # A new version of the image (its mtime and ctime move), cold caches.
                os.utime(f"{templates}/{name}.img")
                drop_caches()
                first.append(agent.api.must("POST", "/sandboxes",
                                            {"id": f"{name}a{r}", "template": name}, want=201))
                second.append(agent.api.must("POST", "/sandboxes",
                                             {"id": f"{name}b{r}", "template": name}, want=201))
                took, _ = wait_digest(agent, f"{name}a{r}")
                known.append(took + first[-1])
                agent.destroy(f"{name}a{r}")
                agent.destroy(f"{name}b{r}")
            out[name] = (first, second, known)
            print(f"{name}: first create  runs {' '.join(f'{t * 1000:.1f}' for t in first)} ms")
            print(f"{name}: second create runs {' '.join(f'{t * 1000:.1f}' for t in second)} ms")
            print(f"{name}: digest known after (from the first create) runs "
                  f"{' '.join(f'{t:.2f}' for t in known)} s")
        reads = []
        for _ in range(runs):
            drop_caches()
            start = time.perf_counter()
            subprocess.run(["dd", f"if={sparse}", "of=/dev/null", "bs=4M",
                            f"count={SPARSE_DATA_MIB // 4}", "status=none"], check=True)
            reads.append(time.perf_counter() - start)
        print(f"sparse: read of its {SPARSE_DATA_MIB} MiB of data (dd bs=4M) runs "
              f"{' '.join(f'{t:.2f}' for t in reads)} s")
        out["read"] = reads
        # What hashing those bytes costs on this (emulated) CPU, the data in the page cache: the
        # floor of any digest of them.
        hashes = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(["sh", "-c", f"dd if={sparse} bs=4M count={SPARSE_DATA_MIB // 4} "
                            "status=none | sha256sum >/dev/null"], check=True)
            hashes.append(time.perf_counter() - start)
        print(f"sparse: sha256sum of its {SPARSE_DATA_MIB} MiB of data, cached, runs "
              f"{' '.join(f'{t:.2f}' for t in hashes)} s")
        out["sha256sum"] = hashes
    finally:
        agent.stop()
    return out


def query_figures():
    """GET /sandboxes/{id} latency, idle and while four new templates are read"""
    work = f"/scratch/{prefix}-query"
    state = f"{work}/state"
    templates = f"{state}/templates"
    os.makedirs(templates, exist_ok=True)
    write_data(f"{templates}/base.img", 64, 4)
    for i in range(4):
        write_data(f"{templates}/new{i}.img", HASHED_MIB, 10 + i)
    agent = AgentProcess(binary, work, state, "bench-identity")
    try:
        agent.sandbox("q")
        wait_digest(agent, "q")

        def gets():
            return [agent.api.must("GET", "/sandboxes/q") for _ in range(GETS)]

        idle = gets()
        drop_caches()
        agent.api.must("GET", "/templates")  # queues the four new versions
        busy = gets()
        status, _, answer = agent.api.call("GET", "/templates")
        pending = answer.count(b'"pending"')
        agent.destroy("q")
    finally:
        agent.stop()
    print(f"GET /sandboxes/q: idle p50 {median(idle) * 1000:.2f} ms p99 {p99(idle) * 1000:.2f} ms; "
          f"while reading: p50 {median(busy) * 1000:.2f} ms p99 {p99(busy) * 1000:.2f} ms "
          f"({pending} of 4 digests still pending after the {GETS} GETs)")
    return idle, busy, pending


def main():
    parts = (sys.argv[4] if len(sys.argv) > 4 else "flatten create query").split()

    def yes(ok):
        return "yes" if ok else "no"

    if "flatten" in parts:
        step("flatten on XFS")
        xfs = flatten_figures("/scratch", "xfs")
        step("flatten on ext4")
        ext4 = flatten_figures("/scratch-ext4", "ext4")
        result("flatten / dd of the device, xfs (512 MiB, 1% changed)", f"{xfs:.3f}",
               "<= 0.1 (0.05)", yes(xfs <= 0.1))
        result("flatten / dd of the device, ext4", f"{ext4:.3f}", "-", "-")
    if "create" in parts:
        step("first and second creates")
        c = create_figures()
        for name, label in (("sparse", "4 GiB sparse, 256 MiB data"), ("dense", "1 GiB dense")):
            first, second, _ = c[name]
            ratio = median(first) / median(second)
            result(f"first create / second create, {label}", f"{ratio:.2f}", "<= 2",
                   yes(ratio <= 2))
        known_ratio = median(c["sparse"][2]) / median(c["read"])
        result("digest known / read of the data, 4 GiB sparse", f"{known_ratio:.2f}", "<= 1.2",
               yes(known_ratio <= 1.2))
        floor_ratio = median(c["sparse"][2]) / median(c["sha256sum"])
        result("digest known / sha256sum of the same data (the CPU's floor)",
               f"{floor_ratio:.2f}", "-", "-")
    if "query" in parts:
        step("GET while templates are read")
        idle, busy, pending = query_figures()
        get_ratio = p99(busy) / p99(idle)
        result(f"GET p99 while 4 templates are read / idle ({pending} of 4 still pending after)",
               f"{get_ratio:.2f}", "<= 2", yes(get_ratio <= 2))


main()
