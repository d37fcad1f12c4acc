# write(320 B) + fdatasync latency: appending vs into fallocate-d vs zero-filled space (run on the
# filesystem to measure: it writes probe_*.bin in the current folder). python3 scripts/fsync-probe.py
import os, time
def run(mode, n=2000):
    p=f"probe_{mode}.bin"
    if os.path.exists(p): os.remove(p)
    fd=os.open(p, os.O_CREAT|os.O_RDWR)
    if mode=="falloc": os.posix_fallocate(fd,0,64<<20)
    if mode=="zero":
        os.write(fd, b"\0"*(64<<20)); os.fsync(fd); os.lseek(fd,0,0)
    buf=b"x"*320
    ts=[]
    for i in range(n):
        t=time.perf_counter(); os.write(fd,buf); os.fdatasync(fd); ts.append(time.perf_counter()-t)
    ts.sort(); os.close(fd); os.remove(p)
    print(mode, "p50 %.1fus p99 %.1fus"%(ts[n//2]*1e6, ts[int(n*.99)]*1e6))
for m in ["append","falloc","zero","append","falloc","zero"]: run(m)
