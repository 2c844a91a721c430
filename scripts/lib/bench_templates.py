"""The guest side of scripts/bench-templates (see there)."""
import hashlib
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from agentclient import AgentProcess, median  # noqa: E402
from results import result  # noqa: E402

build, runs, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
binary = os.path.join(build, "wrenn-agent")
MIB = 1 << 20
TEMPLATE_MIB = 1024
PIECES = 16              # the data: 16 pieces of 8 MiB of random bytes, one every 64 MiB
PIECE_MIB = 8
DATA = PIECES * PIECE_MIB * MIB
STRIDE = TEMPLATE_MIB * MIB // PIECES
READ = MIB               # the baseline's reads, as dd bs=1M
# B's filesystems: the agent's advised one (XFS, the disk A is on too) and ext4 (a disk of its own).
TARGETS = (("xfs", "/scratch"), ("ext4", "/scratch-ext4"))
MODES = (("zstd", ""), ("raw", "?compress=false"))  # GET .../image as documented, and uncompressed


def step(what):
    """progress on the console: a run takes minutes under TCG"""
    print(f"== {time.strftime('%T')} {what}", file=sys.stderr, flush=True)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def body(answer):
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def make_template(path):
    """1 GiB of holes with PIECES pieces of random data; the SHA-256 of each piece"""
    sums = []
    with open(path, "wb") as f:
        f.truncate(TEMPLATE_MIB * MIB)
        for i in range(PIECES):
            h = hashlib.sha256()
            f.seek(i * STRIDE)
            for _ in range(PIECE_MIB):
                piece = os.urandom(MIB)
                h.update(piece)
                f.write(piece)
            sums.append(h.hexdigest())
        f.flush()
        os.fsync(f.fileno())
    return sums


def piece_sums(path):
    sums = []
    with open(path, "rb") as f:
        for i in range(PIECES):
            h = hashlib.sha256()
            f.seek(i * STRIDE)
            for _ in range(PIECE_MIB):
                h.update(f.read(MIB))
            sums.append(h.hexdigest())
    return sums


def read_data(path):
    """the baseline: every byte of data read from A's image, 1 MiB at a time (seconds)"""
    drop_caches()
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        for i in range(PIECES):
            for at in range(i * STRIDE, i * STRIDE + PIECE_MIB * MIB, READ):
                if len(os.pread(fd, READ, at)) != READ:
                    sys.exit(f"bench-templates: short read of {path} at {at}")
    finally:
        os.close(fd)
    return time.perf_counter() - start


def move(a_sock, b_sock, name, dest, digest, query, answer_file):
    """curl A/templates/NAME/image | curl -T - B/templates/DEST?digest=...: (seconds, B's status,
    B's answer, A's curl exit status), caches dropped first"""
    drop_caches()
    start = time.perf_counter()
    down = subprocess.Popen(["curl", "-fsS", "--unix-socket", a_sock,
                             f"http://localhost/templates/{name}/image{query}"],
                            stdout=subprocess.PIPE)
    up = subprocess.Popen(["curl", "-sS", "--unix-socket", b_sock, "-o", answer_file,
                           "-w", "%{http_code}", "-T", "-",
                           f"http://localhost/templates/{dest}?digest={digest}"],
                          stdin=down.stdout, stdout=subprocess.PIPE)
    down.stdout.close()  # up holds the pipe's read end alone: A's curl sees it if up exits
    status = up.communicate()[0].decode().strip()
    down_rc = down.wait()
    took = time.perf_counter() - start
    with open(answer_file, "rb") as f:
        answer = f.read()
    return took, status, answer, down_rc


def main():
    work_a = f"/scratch/{prefix}/a"
    state_a = f"{work_a}/state"
    os.makedirs(f"{state_a}/templates", exist_ok=True)
    image = f"{state_a}/templates/t.img"
    step(f"template t: {TEMPLATE_MIB} MiB with {DATA // MIB} MiB of random data in {PIECES} pieces")
    want = make_template(image)
    a = AgentProcess(binary, work_a, state_a, "bench-templates")
    # A create makes A read the new image's digest (in the background); a download would
    # otherwise read it first, inside the timing.
    a.sandbox("warm", "t")
    deadline = time.perf_counter() + 1800
    while True:
        status, _, answer = a.api.call("GET", "/templates/t")
        if status != 200:
            sys.exit(f"bench-templates: GET /templates/t on A: {status} {answer[-300:]!r}")
        digest = body(answer)["digest"]
        if digest is None:
            sys.exit(f"bench-templates: A will not use t: {answer[-300:]!r}")
        if digest != "pending":
            break
        if time.perf_counter() > deadline:
            sys.exit("bench-templates: A did not know t's digest within 1800 s")
        time.sleep(0.2)
    a.destroy("warm")
    step(f"t's digest on A: {digest}")

    agents = {}
    for fs, mount in TARGETS:
        work_b = f"{mount}/{prefix}/b-{fs}"
        os.makedirs(f"{work_b}/state/templates", exist_ok=True)
        agents[fs] = (AgentProcess(binary, work_b, f"{work_b}/state", "bench-templates"),
                      f"{work_b}/state/templates")
    fig = {"read": []}
    for fs, _ in TARGETS:
        for mode, _ in MODES:
            fig[f"{fs}-{mode}"] = []
        fig[f"{fs}-alloc"] = []

    for r in range(runs):
        step(f"run {r + 1} of {runs}: reading A's data")
        fig["read"].append(read_data(image))
        for fs, _ in TARGETS:
            b, templates = agents[fs]
            for mode, query in MODES:
                dest = f"t{r}-{mode}"
                step(f"run {r + 1} of {runs}: A -> B ({fs}) as {dest}, {mode}")
                took, status, answer, down_rc = move(a.sock, b.sock, "t", dest, digest, query,
                                                     f"{work_a}/answer")
                if status != "201" or down_rc != 0:
                    sys.exit(f"bench-templates: A -> B ({fs}, {mode}): B answered {status} "
                             f"{answer[-300:]!r}, A's curl exited {down_rc}")
                fig[f"{fs}-{mode}"].append(took)
                copy = f"{templates}/{dest}.img"
                st = os.stat(copy)
                if st.st_size != TEMPLATE_MIB * MIB or piece_sums(copy) != want:
                    sys.exit(f"bench-templates: {copy} does not hold t's bytes")
                fig[f"{fs}-alloc"].append(st.st_blocks * 512 / DATA)
                b.api.must("DELETE", f"/templates/{dest}", want=204)
    for b, _ in agents.values():
        b.stop()
    a.stop()

    m = {k: median(v) for k, v in fig.items()}
    worst = {fs: max(fig[f"{fs}-alloc"]) for fs, _ in TARGETS}
    print(f"bench-templates: template t, {TEMPLATE_MIB} MiB with {DATA // MIB} MiB of data "
          f"({PIECES} pieces of {PIECE_MIB} MiB, random bytes), on agent A (xfs), moved to agent "
          f"B through a pipe (curl -fsS A/templates/t/image | curl -T - B/templates/tN?digest=...); "
          f"median of {runs} runs, caches dropped before each timing")
    label = f"reading t's {DATA // MIB} MiB of data on A (1 MiB reads)"
    print(f"{label:<46}{m['read']:8.3f} s")
    for fs, _ in TARGETS:
        for mode, query in MODES:
            label = f"A -> B ({fs}), {'zstd (the default)' if mode == 'zstd' else 'compress=false'}"
            ratio = m[f"{fs}-{mode}"] / m["read"]
            goal = "   (goal <= 1.2)" if mode == "zstd" else ""
            print(f"{label:<46}{m[f'{fs}-{mode}']:8.3f} s   x{ratio:.3f} of the read{goal}")
        print(f"{f'B ({fs}): allocated / {DATA // MIB} MiB, largest':<46}{worst[fs]:8.4f}     (goal <= 1.05)")
    for fs, _ in TARGETS:
        result(f"templates: A to B through a pipe / reading the data, B on {fs}",
               m[f"{fs}-zstd"] / m["read"], "<= 1.2", digits=3)
        result(f"templates: the same, compress=false, B on {fs}", m[f"{fs}-raw"] / m["read"],
               digits=3)
        result(f"templates: B's copy allocated / data, {fs}", worst[fs], "<= 1.05", digits=4)


main()
