#!/usr/bin/env python3
"""Prints the blocks-sha256-4k digest of FILE, computed here from its definition
(docs/archive.md) and not through the agent, so that a test compares two computations: the
SHA-256 of "WRENNBLK", the leaf size 4096, the group size 128 and the image size (u64,
little-endian), then for each 512 KiB group the SHA-256 of its 4 KiB leaves' SHA-256s (the last
leaf as long as what is left). With --whole, "sha256:" and the SHA-256 of the whole file (what
version 1 archives name)."""
import hashlib
import struct
import sys

LEAF = 4096
GROUP = 128


def blocks_digest(path):
    listing = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        listing.update(b"WRENNBLK" + struct.pack("<QQQ", LEAF, GROUP, size))
        while True:
            group = f.read(LEAF * GROUP)
            if not group:
                break
            leaves = b"".join(hashlib.sha256(group[at:at + LEAF]).digest()
                              for at in range(0, len(group), LEAF))
            listing.update(hashlib.sha256(leaves).digest())
    return "blocks-sha256-4k:" + listing.hexdigest()


def whole_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return "sha256:" + h.hexdigest()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--whole":
        print(whole_digest(sys.argv[2]))
    elif len(sys.argv) == 2:
        print(blocks_digest(sys.argv[1]))
    else:
        sys.exit("usage: blocks_digest.py [--whole] FILE")
