"""The guest side of scripts/bench-density (see there)."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from agentclient import Agent, median, p99  # noqa: E402
from results import result  # noqa: E402

build, runs, scale, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
parts = sys.argv[5].split() if len(sys.argv) > 5 else ["cache", "resume", "scale"]
binary = os.path.join(build, "wrenn-agent")
work = f"/scratch/{prefix}"
disk = "vda"  # the XFS scratch disk under /scratch


def sh(*args):
    subprocess.run(args, check=True)


def start(state, log_name="agent.log"):
    sock = f"{work}/agent.sock"
    log = open(f"{work}/{log_name}", "a")
    proc = subprocess.Popen([binary, "serve", "--listen", f"unix:{sock}", "--state-dir", state,
                             "--min-free", "0"], stdout=log, stderr=subprocess.STDOUT)
    agent = Agent(sock)
    begin = time.perf_counter()
    while True:
        try:
            if agent.call("GET", "/healthz")[0] == 200:
                return proc, agent, time.perf_counter() - begin
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit(f"bench-density: the agent exited at start; see {work}/{log_name}")
        time.sleep(0.02)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait()


def sectors_read():
    with open(f"/sys/block/{disk}/stat") as f:
        return int(f.read().split()[2])


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def template(state, name, mib, sparse=False):
    path = f"{state}/templates/{name}.img"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if sparse:
        sh("truncate", "-s", f"{mib}M", path)
    else:
        sh("dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={mib}", "status=none")
    return path


def loop_of(path):
    for name in os.listdir("/sys/block"):
        f = f"/sys/block/{name}/loop/backing_file"
        if os.path.exists(f) and open(f).read().strip() == path:
            return f"/dev/{name}"
    sys.exit(f"bench-density: no loop over {path}")


def cache_sharing():
    state = f"{work}/cache"
    size = 96 << 20
    tpl = template(state, "t96", 96)
    proc, agent, _ = start(state)
    print("== cache sharing: sandboxes over one 96 MiB template, each read whole with O_DIRECT;"
          " bytes read from the disk / template size")

    def read_all(n):
        before = sectors_read()
        for i in range(n):
            sh("dd", f"if=/dev/mapper/wrenn-c{i}", "of=/dev/null", "bs=1M", "iflag=direct",
               "status=none")
        return (sectors_read() - before) * 512 / size

    for n in (8, 32):
        for i in range(n):
            agent.must("POST", "/sandboxes", {"id": f"c{i}", "template": "t96"}, 201)
        loop = loop_of(tpl)
        dio = open(f"/sys/block/{os.path.basename(loop)}/loop/dio").read().strip()
        drop_caches()
        cold = read_all(n)
        warm = read_all(n)
        print(f"   N={n:2d} template loop as the agent binds it (dio={dio}): cold {cold:6.2f}"
              f"  warm {warm:6.2f}   (goals: at most 1.2 cold, at most 0.1 warm)")
        result(f"density: N={n} read whole, disk bytes / template, cold", cold, "<= 1.2")
        result(f"density: N={n} read whole, disk bytes / template, warm", warm, "<= 0.1")
        sh("losetup", "--direct-io=on", loop)
        drop_caches()
        cold = read_all(n)
        warm = read_all(n)
        print(f"   N={n:2d} template loop switched to direct I/O:   cold {cold:6.2f}"
              f"  warm {warm:6.2f}")
        result(f"density: N={n} read whole, template loop direct I/O, cold", cold)
        for i in range(n):
            agent.must("DELETE", f"/sandboxes/c{i}", want=204)
    stop(proc)


def resume_growth():
    state = f"{work}/grow"
    template(state, "big", 1280, sparse=True)
    proc, agent, _ = start(state)
    print(f"== resume as the CoW grows: {runs} pause+resume each, 1280 MiB template")
    figures = {}
    for mib in (0, 256, 1024):
        agent.must("POST", "/sandboxes", {"id": "g", "template": "big"}, 201)
        if mib:
            sh("dd", "if=/dev/urandom", "of=/dev/mapper/wrenn-g", "bs=4M", f"count={mib // 4}",
               "oflag=direct", "status=none")
        resumes = []
        for _ in range(runs):
            agent.must("POST", "/sandboxes/g/pause")
            resumes.append(agent.must("POST", "/sandboxes/g/resume"))
        agent.must("DELETE", "/sandboxes/g", want=204)
        figures[mib] = median(resumes)
        print(f"   {mib:4d} MiB written: resume median {figures[mib] * 1000:7.1f} ms"
              f" p99 {p99(resumes) * 1000:7.1f} ms")
    print(f"   resume at 1024 MiB / at 0 = {figures[1024] / figures[0]:.2f}")
    result("density: resume median, 1024 MiB written (ms)", figures[1024] * 1000, digits=1)
    result("density: resume median 1024 MiB / 0 MiB", figures[1024] / figures[0])
    stop(proc)


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def slab_kib():
    with open("/proc/meminfo") as f:
        return int(re.search(r"^Slab:\s+(\d+) kB", f.read(), re.M).group(1))


def scale_run():
    state = f"{work}/scale"
    template(state, "t16", 16)
    proc, agent, _ = start(state)
    print(f"== scale: {scale} sandboxes over one 16 MiB template; at each level L, 10 rounds of"
          " create, pause, resume, destroy of one more sandbox with L - 1 others running"
          " (median / p99 of the 10)")
    levels = sorted({1, min(256, scale), scale})
    ops = {}

    def measure(level):
        rounds = {"create": [], "pause": [], "resume": [], "destroy": []}
        for r in range(10):
            sid = f"probe{level}-{r}"
            rounds["create"].append(agent.must("POST", "/sandboxes", {"id": sid, "template": "t16"},
                                               201))
            rounds["pause"].append(agent.must("POST", f"/sandboxes/{sid}/pause"))
            rounds["resume"].append(agent.must("POST", f"/sandboxes/{sid}/resume"))
            rounds["destroy"].append(agent.must("DELETE", f"/sandboxes/{sid}", want=204))
        ops[level] = rounds

    measure(1)
    drop_caches()
    base_rss, base_fds, base_slab = status_kib(proc.pid, "VmRSS"), \
        len(os.listdir(f"/proc/{proc.pid}/fd")), slab_kib()
    begin = time.perf_counter()
    for i in range(scale):
        if i + 1 in levels and i + 1 != 1:
            measure(i + 1)
        agent.must("POST", "/sandboxes", {"id": f"s{i}", "template": "t16"}, 201)
    made = time.perf_counter() - begin
    drop_caches()
    rss, fds, slab = status_kib(proc.pid, "VmRSS"), len(os.listdir(f"/proc/{proc.pid}/fd")), \
        slab_kib()
    print(f"   {scale} sandboxes made in {made:.0f} s (with the measured rounds)")
    print(f"   per sandbox at {scale}: agent RSS {(rss - base_rss) / scale:6.1f} KiB "
          f"(goal under 64), agent fds {(fds - base_fds) / scale:5.2f}, kernel slab "
          f"{(slab - base_slab) / scale:7.1f} KiB   (agent RSS {rss} KiB, {fds} fds in all)")
    result(f"density: agent RSS per sandbox at {scale} (KiB)", (rss - base_rss) / scale, "< 64",
           digits=1)
    result(f"density: agent fds per sandbox at {scale}", (fds - base_fds) / scale)
    result(f"density: kernel slab per sandbox at {scale} (KiB)", (slab - base_slab) / scale,
           digits=1)
    for op in ("create", "pause", "resume", "destroy"):
        row = "  ".join(f"L={level:4d} {median(ops[level][op]) * 1000:7.1f} /"
                        f"{p99(ops[level][op]) * 1000:7.1f} ms" for level in levels)
        ratio = median(ops[scale][op]) / median(ops[1][op])
        print(f"   {op:8s} {row}   L={scale}/L=1 {ratio:5.2f} (goal at most 1.5)")
        result(f"density: {op} median L={scale} / L=1", ratio, "<= 1.5")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc, agent, took = start(state, "agent-restart.log")
    print(f"   startup after kill -9 with {scale} running sandboxes to adopt: "
          f"{took:6.2f} s (goal under 5 s)")
    result(f"density: startup with {scale} sandboxes to adopt (s)", took, "< 5")
    begin = time.perf_counter()
    for i in range(scale):
        agent.must("DELETE", f"/sandboxes/s{i}", want=204)
    print(f"   {scale} destroyed in {time.perf_counter() - begin:.0f} s")
    stop(proc)


os.makedirs(work, exist_ok=True)
try:
    for part in parts:
        {"cache": cache_sharing, "resume": resume_growth, "scale": scale_run}[part]()
finally:
    shutil.rmtree(work, ignore_errors=True)
