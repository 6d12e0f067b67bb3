"""Time and memory of attention as the sequence grows: from scratch against PyTorch's SDPA.

    python -m benchmarks.attention                 # T = 128 ... 2048, B=1, 8 heads of 64, fp32, CPU
    python -m benchmarks.attention --device cuda   # on a GPU, where one is present

Memory on the CPU is the growth of the process's peak resident memory during one forward pass,
measured in a fresh process per case (ru_maxrss); on a GPU it is torch.cuda.max_memory_allocated.
"""

import argparse
import json
import subprocess
import sys

CASE = r"""
import json, resource, sys, time, torch, torch.nn.functional as F
from llmscratch.attention import scaled_dot_product_attention, causal_mask
impl, T, B, nh, hs, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.manual_seed(0)
q, k, v = (torch.randn(B, nh, T, hs, device=device) for _ in range(3))
mask = causal_mask(T, device)
fn = (lambda: scaled_dot_product_attention(q, k, v, mask)) if impl == "scratch" else (
      lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
# Warm up on a tiny input first: the first call loads kernels and grows allocator pools, which is
# start-up cost, not the memory that attention over T tokens needs.
small = [t[:, :, :16] for t in (q, k, v)]
(scaled_dot_product_attention(*small, causal_mask(16, device)) if impl == "scratch" else
 F.scaled_dot_product_attention(*small, is_causal=True)); sync()
if device == "cuda":
    torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
else:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
fn(); sync()
peak = (torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - before
times = []
for _ in range(9):
    start = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - start)
print(json.dumps({"seconds": sorted(times)[4], "peak_bytes": max(peak, 0)}))
"""


def measure(impl: str, T: int, B: int = 1, nh: int = 8, hs: int = 64, device: str = "cpu") -> dict:
    out = subprocess.run([sys.executable, "-c", CASE, impl, str(T), str(B), str(nh), str(hs), device],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(lengths, device):
    print(f"causal self-attention, B=1, 8 heads x 64, fp32, {device}; median of 9 runs, peak extra memory")
    print(f"{'T':>6} | {'scratch ms':>10} | {'SDPA ms':>8} | {'speed-up':>8} | {'scratch MiB':>11} | "
          f"{'SDPA MiB':>8} | {'T x T scores MiB':>16}")
    for T in lengths:
        a, b = measure("scratch", T, device=device), measure("sdpa", T, device=device)
        scores_mib = 8 * T * T * 4 / 2**20
        print(f"{T:>6} | {a['seconds'] * 1e3:10.2f} | {b['seconds'] * 1e3:8.2f} | {a['seconds'] / b['seconds']:7.1f}x | "
              f"{a['peak_bytes'] / 2**20:11.1f} | {b['peak_bytes'] / 2**20:8.1f} | {scores_mib:16.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    run(args.lengths, args.device)
