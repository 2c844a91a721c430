"""The guest side of scripts/bench-export (see there)."""
import hashlib
import mmap
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from agentclient import AgentProcess, download, median, upload  # noqa: E402
from results import result  # noqa: E402

build, runs, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
binary = os.path.join(build, "wrenn-agent")
work = f"/scratch/{prefix}"
state = f"{work}/state"
TEMPLATE_MIB = 1024
DATA_MIB = 256           # the template's first 256 MiB hold random data, the rest is a hole
CHUNK = 4096             # the agent's snapshot chunk
CHANGED = (TEMPLATE_MIB << 20) // CHUNK // 100  # 1% of the origin's chunks
ARCHIVE_TYPE = "application/vnd.wrenn.sandbox"


def sh(*args):
    subprocess.run(args, check=True)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def write_chunks(dev, chunks, data):
    """each chunk's 4 KiB of `data` at its index, with O_DIRECT, then fsync"""
    buf = mmap.mmap(-1, CHUNK)  # page-aligned, as O_DIRECT wants
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        for i, c in enumerate(chunks):
            buf.seek(0)
            buf.write(data[i * CHUNK:(i + 1) * CHUNK])
            os.pwrite(fd, buf, c * CHUNK)
        os.fsync(fd)
    finally:
        os.close(fd)


def digest_chunks(dev, chunks):
    h = hashlib.sha256()
    with open(dev, "rb") as f:
        for c in chunks:
            f.seek(c * CHUNK)
            h.update(f.read(CHUNK))
    return h.hexdigest()


def step(what):
    """progress on the console: a run takes minutes under TCG"""
    print(f"== {time.strftime('%T')} {what}", file=sys.stderr, flush=True)


def timed(fn):
    drop_caches()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main():
    os.makedirs(f"{state}/templates", exist_ok=True)
    template = f"{state}/templates/base.img"
    sh("dd", "if=/dev/urandom", f"of={template}", "bs=1M", f"count={DATA_MIB}", "status=none")
    os.truncate(template, TEMPLATE_MIB << 20)
    step(f"template: {DATA_MIB} MiB of random data in {TEMPLATE_MIB} MiB")
    agent = AgentProcess(binary, work, state, "bench-export")
    rng = random.Random(14)
    fig = {k: [] for k in ("raw", "zstd", "export", "export_zstd", "dd", "import", "write",
                           "export_running")}
    changed_bytes = CHANGED * CHUNK
    for r in range(runs):
        step(f"run {r + 1} of {runs}: a sandbox with {CHANGED} chunks written")
        chunks = sorted(rng.sample(range((TEMPLATE_MIB << 20) // CHUNK), CHANGED))
        data = rng.randbytes(changed_bytes)
        src = agent.sandbox(f"src{r}")
        write_chunks(src, chunks, data)
        want = digest_chunks(src, chunks)

        # A running sandbox's export: a point-in-time copy of its CoW, then the export of it.
        t, (status, _, size, err) = timed(lambda: download(
            agent.sock, f"/sandboxes/src{r}/export?compress=false", f"{work}/running.wrenn"))
        if status != 200:
            sys.exit(f"bench-export: export of running src{r}: {status} {err[-300:]!r}")
        fig["export_running"].append(t)
        os.unlink(f"{work}/running.wrenn")

        # The baseline for export: dd of the whole snapshot device.
        t, _ = timed(lambda: sh("dd", f"if={src}", "of=/dev/null", "bs=1M", "iflag=direct",
                                "status=none"))
        fig["dd"].append(t)
        agent.api.must("POST", f"/sandboxes/src{r}/pause")
        raw, packed = f"{work}/raw.wrenn", f"{work}/zstd.wrenn"
        for key, query, dest in (("export", "?compress=false", raw), ("export_zstd", "", packed)):
            t, (status, _, size, err) = timed(
                lambda: download(agent.sock, f"/sandboxes/src{r}/export{query}", dest))
            if status != 200:
                sys.exit(f"bench-export: export of src{r}{query}: {status} {err[-300:]!r}")
            fig[key].append(t)
            fig["raw" if key == "export" else "zstd"].append(size / changed_bytes)

        # Import of the uncompressed archive, against a create and the same chunks written
        # through the new sandbox's device.
        t, (status, _, answer) = timed(
            lambda: upload(agent.sock, f"/sandboxes/import?id=imp{r}", raw, ARCHIVE_TYPE))
        if status != 201:
            sys.exit(f"bench-export: import imp{r}: {status} {answer[-300:]!r}")
        fig["import"].append(t)
        t, _ = timed(lambda: write_chunks(agent.sandbox(f"wr{r}"), chunks, data))
        fig["write"].append(t)

        agent.api.must("POST", f"/sandboxes/imp{r}/resume")
        got = digest_chunks(f"/dev/mapper/wrenn-imp{r}", chunks)
        if got != want:
            sys.exit(f"bench-export: imp{r} does not read back src{r}'s chunks")
        for sid in (f"src{r}", f"imp{r}", f"wr{r}"):
            agent.destroy(sid)
        os.unlink(raw)
        os.unlink(packed)
    agent.stop()

    fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", work], check=True,
                            capture_output=True, text=True).stdout.strip()
    m = {k: median(v) for k, v in fig.items()}
    print(f"bench-export: {TEMPLATE_MIB} MiB template ({DATA_MIB} MiB of data), {CHANGED} "
          f"chunks of 4 KiB changed ({changed_bytes / (1 << 20):.1f} MiB, random bytes); "
          f"state dir on {fstype}; median of {runs} runs, caches dropped before each timing")
    print(f"export size / changed bytes, uncompressed   {m['raw']:8.4f}   (goal <= 1.05)")
    print(f"export size / changed bytes, zstd           {m['zstd']:8.4f}")
    print(f"export of the paused sandbox, uncompressed  {m['export']:8.3f} s")
    print(f"export of the paused sandbox, zstd          {m['export_zstd']:8.3f} s")
    print(f"export of the running sandbox (with copy)   {m['export_running']:8.3f} s")
    print(f"dd of the whole snapshot device (1 MiB)     {m['dd']:8.3f} s")
    print(f"export / dd                                 {m['export'] / m['dd']:8.4f}   (goal <= 0.05)")
    print(f"import of the uncompressed archive          {m['import']:8.3f} s")
    print(f"create + write the same chunks + fsync      {m['write']:8.3f} s")
    print(f"import / (create + write)                   {m['import'] / m['write']:8.4f}   (goal <= 1)")
    result("export: size / changed bytes, uncompressed", m["raw"], "<= 1.05", digits=4)
    result("export: size / changed bytes, zstd", m["zstd"], digits=4)
    result("export: export / dd of the device, paused", m["export"] / m["dd"], "<= 0.05", digits=4)
    result("export: export of the running sandbox (s)", m["export_running"], digits=3)
    result("export: import / (create + write)", m["import"] / m["write"], "<= 1", digits=4)


main()
