"""Boot-time measurement for docs/vm.md: python tests/vm/measure_boot.py [N] (not a test)."""
import os
import re
import statistics
import sys
import time

os.environ.setdefault("HEAPBALLOON_RUN_DIR", "/tmp/hbmeasure")
from heapballoon.vm import qemu
from heapballoon.vm.image import build_image
img = build_image(progress=False)
print("image", img.key, "initrd", img.initrd_bytes, "root disk", img.rootdisk_bytes)
ready, boot, java, exec_, avail = [], [], [], [], []
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    t = time.monotonic()
    qemu.start_vm(f"m{i}", 1 << 30, image=img)
    ready.append(time.monotonic() - t)
    boot.append(float(re.search(r"uptime=([\d.]+)", qemu.vm_logs(f"m{i}")).group(1)))
    mem = dict(l.split(":", 1) for l in qemu.vm_exec(f"m{i}", ["cat", "/proc/meminfo"])[1].splitlines())
    avail.append(int(mem["MemAvailable"].split()[0]) / 1024)
    total = int(mem["MemTotal"].split()[0]) / 1024
    t = time.monotonic(); qemu.vm_exec(f"m{i}", ["true"]); exec_.append(time.monotonic() - t)
    t = time.monotonic(); rc, o, e = qemu.vm_exec(f"m{i}", ["java", "-version"]); java.append(time.monotonic() - t)
    assert rc == 0, e
    qemu.stop_vm(f"m{i}")
for n, v in (("start_vm->READY", ready), ("guest uptime at /init", boot), ("exec true", exec_), ("java -version", java)):
    print(f"{n}: median {statistics.median(v):.2f}s  all {[round(x, 2) for x in v]}")
print(f"MemAvailable after READY (MemTotal {total:.0f} MiB): median {statistics.median(avail):.0f} MiB  "
      f"all {[round(x) for x in avail]}")
