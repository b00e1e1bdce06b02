# Two forked processes overwrite 100,000 bytes -> bytes keys of a shmap.Map, N writes each;
# run under `strace -f -c -e trace=membarrier` to count the reclaim passes' membarriers.
import os, sys
import shmap
n = int(sys.argv[1])
name = f"mbcount-{os.getpid()}"
shmap.remove(name)
m = shmap.Map.create(name, bytes, bytes, initial_capacity=200_000)
keys = [b"%d" % i for i in range(100_000)]
for k in keys:
    m[k] = k
m.close()
pids = []
for w in range(2):
    pid = os.fork()
    if pid == 0:
        c = shmap.Map.open(name)
        for i in range(n):
            c[keys[(i * 7919 + w) % 100_000]] = b"v%d" % i
        c.close()
        os._exit(0)
    pids.append(pid)
for p in pids:
    os.waitpid(p, 0)
shmap.remove(name)
