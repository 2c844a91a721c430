"""The guest side of scripts/bench-io (see there)."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from agentclient import AgentProcess, median  # noqa: E402
from results import result  # noqa: E402

build, runs, seconds, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
binary = os.path.join(build, "wrenn-agent")
work = f"/scratch/{prefix}"
state = f"{work}/state"
TEMPLATE_MIB = 512
REWRITE_MIB = 64  # the region the rewrite job writes once untimed, then rewrites
# floor, the agent's sandbox, the seed's way, and the agent's loops with 64 KiB chunks
TARGETS = ("floor", "sandbox", "seed", "chunk64k")


def sh(*args, out=False):
    r = subprocess.run(args, check=True, stdout=subprocess.PIPE if out else None, text=True)
    return r.stdout.strip() if out else None


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def fio(dev, rw, bs, size_mib=None, timed=True):
    """the job's IOPS and bytes per second"""
    args = ["fio", "--name=j", f"--filename={dev}", f"--rw={rw}", f"--bs={bs}", "--direct=1",
            "--ioengine=psync", "--iodepth=1", "--numjobs=1", "--randrepeat=0",
            "--output-format=json"]
    if size_mib:
        args.append(f"--size={size_mib}M")
    if timed:
        args += ["--time_based", f"--runtime={seconds}"]
    result = json.loads(sh(*args, out=True))["jobs"][0]
    side = result["read"] if rw.endswith("read") else result["write"]
    return side["iops"], side["bw_bytes"]


class HandMadeSnapshot:
    """A snapshot made by hand: the seed's way (both loops buffered, 4 KiB chunks), or the
    agent's loops (template buffered, CoW direct) with another chunk size, to show what the
    chunk size costs: dm-snapshot splits every bio at a chunk boundary."""
    count = 0

    def __init__(self, template, chunk_sectors, cow_direct):
        HandMadeSnapshot.count += 1
        self.name = f"{prefix}-hand{HandMadeSnapshot.count}"
        self.cow = f"{work}/{self.name}.cow"
        sh("truncate", "-s", f"{TEMPLATE_MIB * 2}M", self.cow)
        self.origin = sh("losetup", "--find", "--show", "--read-only", template, out=True)
        self.cow_loop = sh("losetup", "--find", "--show", f"--direct-io={'on' if cow_direct else 'off'}",
                           self.cow, out=True)
        sectors = TEMPLATE_MIB * 2048
        sh("dmsetup", "create", self.name, "--table",
           f"0 {sectors} snapshot {self.origin} {self.cow_loop} P {chunk_sectors}")
        # /dev/dm-N always exists (devtmpfs); /dev/mapper/<name> needs udev or libdm's own nodes.
        minor = sh("dmsetup", "info", "-c", "--noheadings", "-o", "minor", self.name, out=True)
        self.dev = f"/dev/dm-{minor}"

    def remove(self):
        sh("dmsetup", "remove", self.name)
        sh("losetup", "-d", self.cow_loop, self.origin)
        os.unlink(self.cow)


def main():
    os.makedirs(f"{state}/templates", exist_ok=True)
    template = f"{state}/templates/base.img"
    sh("dd", "if=/dev/urandom", f"of={template}", "bs=1M", f"count={TEMPLATE_MIB}", "status=none")
    read_floor = sh("losetup", "--find", "--show", "--read-only", "--direct-io=off", template, out=True)
    write_file = f"{work}/floor-rw.img"
    sh("fallocate", "-l", f"{TEMPLATE_MIB}M", write_file)
    write_floor = sh("losetup", "--find", "--show", "--direct-io=on", write_file, out=True)
    agent = AgentProcess(binary, work, state, "bench-io")

    jobs = [("4 KiB random read", "randread", "4k", "IOPS"),
            ("1 MiB sequential read", "read", "1M", "MiB/s"),
            ("4 KiB random first write", "randwrite", "4k", "IOPS"),
            ("4 KiB random rewrite", "randwrite", "4k", "IOPS")]
    results = {}  # (job, target) -> [figure]
    n = 0
    for r in range(runs):
        for job, rw, bs, unit in jobs:
            rewrite = job.endswith("rewrite")
            for target in TARGETS:
                n += 1
                hand = sid = None
                if target == "floor":
                    dev = read_floor if rw.endswith("read") else write_floor
                elif target == "sandbox":
                    sid = f"io{n}"
                    dev = agent.sandbox(sid)
                elif target == "seed":
                    hand = HandMadeSnapshot(template, 8, cow_direct=False)
                    dev = hand.dev
                else:
                    hand = HandMadeSnapshot(template, 128, cow_direct=True)
                    dev = hand.dev
                size = None
                if rewrite:  # write the region once, untimed: the timed run rewrites it
                    size = REWRITE_MIB
                    fio(dev, "write", "1M", size_mib=size, timed=False)
                drop_caches()
                iops, bw = fio(dev, rw, bs, size_mib=size)
                results.setdefault((job, target), []).append(bw / (1 << 20) if unit == "MiB/s" else iops)
                if sid:
                    agent.destroy(sid)
                if hand:
                    hand.remove()
    agent.stop()
    sh("losetup", "-d", read_floor, write_floor)

    print(f"bench-io: fio direct=1 psync depth 1, {seconds} s per run, median of {runs} runs; "
          f"template {TEMPLATE_MIB} MiB on {sh('findmnt', '-n', '-o', 'FSTYPE', '--target', work, out=True)}")
    print(f"{'job':<28}{'unit':>7}" + "".join(f"{t:>10}{'ratio':>7}" for t in TARGETS[1:]) + f"{'floor':>10}")
    for job, _, _, unit in jobs:
        floor = median(results[(job, "floor")])
        row = f"{job:<28}{unit:>7}"
        for t in TARGETS[1:]:
            m = median(results[(job, t)])
            row += f"{m:>10.1f}{m / floor:>7.2f}"
        print(row + f"{floor:>10.1f}")
    # The sandbox against the floor: reads at 0.9 at least, writes (copy-up included) at 0.8.
    for job, rw, _, unit in jobs:
        floor = median(results[(job, "floor")])
        result(f"io: {job}, sandbox / floor", median(results[(job, "sandbox")]) / floor,
               ">= 0.9" if rw.endswith("read") else ">= 0.8")
        result(f"io: {job}, seed / floor", median(results[(job, "seed")]) / floor)
        if unit == "MiB/s":
            result(f"io: {job}, 64 KiB chunks / floor", median(results[(job, "chunk64k")]) / floor)


main()
