"""B6 — data throughput: images/s an image folder delivers, streamed (0, 1, 2 workers) or from memory.

Generates once (cached in --folder) an image folder of JPEGs: train/<class>/*.jpg and
test/<class>/*.jpg, 224 x 224, 10 classes, smooth random colour fields plus noise (about
9-19 KB a file at quality 85, the size of ImageNet images resized to 224). Then every
arm runs in a SEPARATE process, one at a time (the arms never share the cores):

  stream:K  load_data("imagefolder", data_mode="stream", workers=K): a FolderSet whose
            batches K DataLoader worker processes decode (0: the arm's own process)
  memory:K  load_data("imagefolder", data_mode="memory", workers=K): every image decoded
            once, by K workers (the FolderSet's batch loader, ``FolderSet.in_memory``),
            into one preallocated uint8 tensor (an ImageSet).

Each arm times, apart, its setup (load_data: the folder scan, the validation split and
the normalisation statistics; for memory the one-off decode of every image) and one
training epoch of ``iterate_batches`` exactly as `sdprune train` calls it (shuffled,
drop_last, batch 128, crop seeds set so a FolderSet runs its RandomResizedCrop), or the
first --max-images of it. The iteration time runs from the iterate_batches call to the
last batch (a DataLoader's worker start-up is paid every epoch, so it is included; the
first batch's delay is reported too). The memory arm also times the same epoch through
the training step's host augmentation (pad + random crop + flip, ``data.augment``), the
work its batches still need on a CPU device; a FolderSet's batches need only the flip.

Memory, per arm process: ru_maxrss of the arm (RUSAGE_SELF) and of its largest finished
worker (RUSAGE_CHILDREN: the max of one child, not a sum; a forked worker's figure
includes the pages it shares with its parent; importing torch already ran `ldconfig -p`
from a ~440 MiB process, which sets a floor, recorded), in MiB, over setup and iteration; and,
sampled every --sample-s during the iteration alone, the peak RSS of the arm process and
the peak summed PSS of the arm and its workers (shared pages counted once).

    python tools/bench_data.py --folder /tmp/sdprune-b6 --out bench-out/data.json
    python tools/bench_data.py --arms stream:2,memory:0 --max-images 2560   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

# --- the generated folder -------------------------------------------------------------
IMAGE_SIZE = 224          # pixels, side of the generated JPEGs and of the delivered images
TRAIN_IMAGES = 20_000     # JPEGs in train/ (load_data carves 10% of them off as validation)
TEST_IMAGES = 2_000       # JPEGs in test/
CLASSES = 10
JPEG_QUALITY = 85
NOISE = (0.02, 0.07)      # per-image std of the added Gaussian noise, in [0, 1] pixel units
SCALES = ((3, 0.5), (8, 0.3), (28, 0.15))  # (grid cells per side, weight) of the colour fields
GEN_SEED = 0
GEN_CHUNK = 250           # images per generation task
MARKER = "b6-folder.json"  # written last: the folder is complete and made with these settings
# --- the measurement ------------------------------------------------------------------
BATCH_SIZE = 128          # images per batch
ORDER_SEED, CROP_SEED, AUG_SEED = 0, 1, 2
SAMPLE_S = 0.5            # seconds between memory samples during the iteration
ARMS = ("stream:0", "stream:1", "stream:2", "memory:0", "memory:2")
MIB = 2**20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--folder", default="/tmp/sdprune-b6", help="the generated image folder (made once, then reused)")
    a("--out", default="bench-out/data.json", help="results JSON")
    a("--arms", default=",".join(ARMS),
      help="comma-separated: stream:K (streamed, K DataLoader workers), memory:K (decoded once by K workers)")
    a("--rounds", type=int, default=1, help="the arms run in turn this many times; medians are reported")
    a("--max-images", type=int, default=0, help="images per timed iteration (0: one whole training epoch)")
    a("--batch-size", type=int, default=BATCH_SIZE, help="images per batch")
    a("--train-images", type=int, default=TRAIN_IMAGES, help="JPEGs to generate in train/")
    a("--test-images", type=int, default=TEST_IMAGES, help="JPEGs to generate in test/")
    a("--image-size", type=int, default=IMAGE_SIZE, help="side of the JPEGs and of the batches, pixels")
    a("--gen-procs", type=int, default=os.cpu_count() or 1, help="processes generating the folder")
    a("--sample-s", type=float, default=SAMPLE_S, help="seconds between memory samples while iterating")
    a("--generate-only", action="store_true", help="make the folder and stop")
    a("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process, print its JSON
    return p.parse_args(argv)


# --- generation -----------------------------------------------------------------------

def folder_spec(args) -> dict:
    return {"train": args.train_images, "test": args.test_images, "size": args.image_size, "classes": CLASSES,
            "quality": JPEG_QUALITY, "noise": list(NOISE), "scales": [list(s) for s in SCALES], "seed": GEN_SEED}


def make_images(n: int, labels, size: int, protos, generator):
    """n uint8 (3, size, size) images: the class's coarse colour field plus multi-scale random
    smooth colour fields plus per-image Gaussian noise."""
    import torch
    import torch.nn.functional as F

    x = 0.3 * protos[labels]
    for cells, weight in SCALES:
        low = torch.rand(n, 3, cells, cells, generator=generator)
        x = x + weight * F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = x / (0.3 + sum(w for _, w in SCALES))
    sigma = NOISE[0] + (NOISE[1] - NOISE[0]) * torch.rand(n, 1, 1, 1, generator=generator)
    x = x + sigma * torch.randn(n, 3, size, size, generator=generator)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def class_protos(size: int):
    import torch
    import torch.nn.functional as F

    low = torch.rand(CLASSES, 3, 2, 2, generator=torch.Generator().manual_seed(GEN_SEED))
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def generate_chunk(task: tuple[str, str, int, int, int]) -> int:
    """Write images start..start+count-1 of one split; returns the bytes written."""
    import torch
    from PIL import Image  # torchvision.io's encoders are deprecated (0.29); Pillow is sdprune's decoder too

    root, split, start, count, size = task
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(GEN_SEED * 1_000_003 + (0 if split == "train" else 500_009) + start)
    protos = class_protos(size)
    labels = torch.arange(start, start + count) % CLASSES
    written = 0
    for lo in range(0, count, 50):
        part = labels[lo:lo + 50]
        for j, image in enumerate(make_images(len(part), part, size, protos, gen)):
            i = start + lo + j
            path = os.path.join(root, split, f"c{i % CLASSES}", f"{i:06d}.jpg")
            Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path, quality=JPEG_QUALITY)
            written += os.path.getsize(path)
    return written


def ensure_folder(args) -> dict:
    """Make the folder unless a complete one with the same settings is there; returns its facts."""
    import multiprocessing

    root = Path(args.folder)
    spec = folder_spec(args)
    marker = root / MARKER
    if marker.exists():
        facts = json.loads(marker.read_text())
        if facts.get("spec") == spec:
            print(f"reusing {root} ({spec['train']} + {spec['test']} JPEGs, made in {facts['seconds']:.0f} s)")
            return facts
    elif any((root / d).exists() for d in ("train", "test")):
        raise SystemExit(f"{root} holds train/ or test/ not made by this tool; pass another --folder")
    for split in ("train", "test"):
        shutil.rmtree(root / split, ignore_errors=True)
        for c in range(CLASSES):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    tasks = [(str(root), split, start, min(GEN_CHUNK, total - start), args.image_size)
             for split, total in (("train", args.train_images), ("test", args.test_images))
             for start in range(0, total, GEN_CHUNK)]
    print(f"generating {args.train_images} + {args.test_images} JPEGs ({args.image_size} px) in {root} "
          f"with {args.gen_procs} processes ...", flush=True)
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.gen_procs) as pool:
        total_bytes = sum(pool.imap_unordered(generate_chunk, tasks))
    seconds = time.perf_counter() - t0
    count = args.train_images + args.test_images
    facts = {"spec": spec, "seconds": round(seconds, 1), "bytes": total_bytes,
             "mean_kib": round(total_bytes / count / 1024, 2)}
    marker.write_text(json.dumps(facts, indent=1))
    print(f"made {count} JPEGs in {seconds:.0f} s, mean {facts['mean_kib']:.1f} KiB, "
          f"{total_bytes / MIB:.0f} MiB in all", flush=True)
    return facts


# --- memory probes ----------------------------------------------------------------------

def maxrss_mib() -> tuple[float, float]:
    """ru_maxrss (KiB on Linux) of this process and of its largest waited-for child, MiB."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


def status_kib(pid: int, key: str, name: str = "status") -> int:
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """Peak RSS of this process and peak summed PSS of it and its children, sampled in a thread."""

    def __init__(self, every_s: float) -> None:
        self.every_s, self.peak_rss, self.peak_pss, self.peak_workers = every_s, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        me = os.getpid()
        kids = children(me)
        self.peak_rss = max(self.peak_rss, status_kib(me, "VmRSS"))
        self.peak_pss = max(self.peak_pss, sum(status_kib(p, "Pss", "smaps_rollup") for p in [me] + kids))
        self.peak_workers = max(self.peak_workers, len(kids))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# --- one arm ----------------------------------------------------------------------------

def run_arm(args) -> dict:
    import torch

    from sdprune.data.augment import augment
    from sdprune.data.bundle import load_data
    from sdprune.data.images import drops_last, iterate_batches

    arm = args.arm
    import_children = maxrss_mib()[1]  # importing torch runs `ldconfig -p` (ctypes.util.find_library)
    mode, workers = arm.split(":")[0], int(arm.split(":")[1])
    t0 = time.perf_counter()
    data = load_data("imagefolder", args.folder, image_size=args.image_size, workers=workers, data_mode=mode)
    setup_s = time.perf_counter() - t0
    setup_rss = maxrss_mib()
    train = data.train
    drop_last = drops_last(len(train), args.batch_size)
    epoch = (len(train) // args.batch_size) * args.batch_size if drop_last else len(train)
    target = min(args.max_images, epoch) if args.max_images > 0 else epoch

    def epoch_pass(with_augment: bool) -> dict:
        order = torch.Generator().manual_seed(ORDER_SEED)
        gen_aug = torch.Generator().manual_seed(AUG_SEED)
        seen, first_s, checksum = 0, None, None
        with MemorySampler(args.sample_s) as mem:
            t_start = time.perf_counter()
            batches = iterate_batches(train, args.batch_size, order, drop_last, crop_seed=CROP_SEED)
            for images, labels in batches:
                if with_augment:
                    images = augment(images, data.augment, gen_aug)
                seen += len(labels)
                if first_s is None:
                    first_s = time.perf_counter() - t_start
                    checksum = int(images.view(len(images), -1)[:, ::97].sum(dtype=torch.int64))
                if seen >= target:
                    break
            seconds = time.perf_counter() - t_start
            batches.close()  # a FolderSet's DataLoader shuts its workers down here
            del batches
        return {"images": seen, "seconds": round(seconds, 3), "images_per_s": round(seen / seconds, 1),
                "first_batch_s": round(first_s or 0.0, 3), "first_batch_checksum": checksum, "shape": list(images.shape),
                "peak_rss_main_mib": round(mem.peak_rss / 1024, 1),
                "peak_pss_total_mib": round(mem.peak_pss / 1024, 1), "workers_seen": mem.peak_workers}

    result = {"arm": arm, "mode": mode, "workers": workers, "train_images": len(train), "epoch_images": epoch,
              "setup_s": round(setup_s, 2), "torch_threads": torch.get_num_threads(),
              "maxrss_after_setup_mib": [round(v, 1) for v in setup_rss],
              "maxrss_children_at_import_mib": round(import_children, 1)}
    result["iterate"] = epoch_pass(False)
    if mode == "memory":
        result["iterate_augment"] = epoch_pass(True)
        result["augment"] = {"pad": data.augment.pad, "flip": data.augment.flip}
    main_mib, child_mib = maxrss_mib()
    result["maxrss_self_mib"], result["maxrss_children_mib"] = round(main_mib, 1), round(child_mib, 1)
    return result


# --- the driver ---------------------------------------------------------------------------

def machine() -> dict:
    import torch
    import torchvision

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_gib": round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1),  # MemTotal
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "platform": platform.platform(), "date": date.today().isoformat()}


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (not idle or iowait) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run_in_process(args, arm: str) -> dict:
    """One arm in its own process; also records how busy the rest of the machine was meanwhile."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, t0 = busy_cpu_s(), time.perf_counter()
    cmd = [sys.executable, os.path.abspath(__file__), "--arm", arm, "--folder", args.folder,
           "--max-images", str(args.max_images), "--batch-size", str(args.batch_size),
           "--image-size", str(args.image_size),
           "--sample-s", str(args.sample_s)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall, busy = time.perf_counter() - t0, busy_cpu_s() - busy0
    if done.returncode != 0:
        raise SystemExit(f"arm {arm} failed (exit {done.returncode})")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)  # the arm and its workers
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(arm_wall_s=round(wall, 1), arm_cpu_s=round(own, 1),
                  other_load_cores=round(max(0.0, busy - own) / wall, 2))  # 0: the machine was ours
    return result


def table(results: list[dict], rounds: int) -> str:
    lines = ["| arm | setup s | images timed | images/s (per round) | first batch s | vs memory "
             "| ru_maxrss main MiB | ru_maxrss largest worker MiB | iteration peak RSS main MiB "
             "| iteration peak PSS main+workers MiB | other load (cores) |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    by_arm: dict[str, list[dict]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    memory = [r["iterate"]["images_per_s"] for r in results if r["mode"] == "memory"]
    mem_rate = statistics.median(memory) if memory else None

    def worker_rss(runs: list[dict]) -> str:
        if runs[0]["workers"] == 0:
            return "no workers"
        peak, floor = (max(r[k] for r in runs) for k in ("maxrss_children_mib", "maxrss_children_at_import_mib"))
        return f"{peak:.0f}" if peak > floor + 1 else f"<= {floor:.0f} (import's ldconfig)"

    def row(name: str, runs: list[dict], key: str) -> str:
        rates = [r[key]["images_per_s"] for r in runs]
        med = statistics.median(rates)
        per = f"**{med:.0f}**" + (f" ({', '.join(f'{v:.0f}' for v in rates)})" if rounds > 1 else "")
        vs = f"{med / mem_rate:.3f}" if mem_rate else "-"
        return (f"| {name} | {statistics.median(r['setup_s'] for r in runs):.1f} | {runs[0][key]['images']} | {per} "
                f"| {statistics.median(r[key]['first_batch_s'] for r in runs):.2f} | {vs} "
                f"| {max(r['maxrss_self_mib'] for r in runs):.0f} | {worker_rss(runs)} "
                f"| {max(r[key]['peak_rss_main_mib'] for r in runs):.0f} "
                f"| {max(r[key]['peak_pss_total_mib'] for r in runs):.0f} "
                f"| {max(r['other_load_cores'] for r in runs):.2f} |")

    for arm, runs in by_arm.items():
        k = runs[0]["workers"]
        workers = f"{k} worker{'' if k == 1 else 's'}"
        if runs[0]["mode"] == "memory":
            lines.append(row(f"memory (decoded once by {workers})", runs, "iterate"))
            a = runs[0]["augment"]
            lines.append(row(f"memory:{k} + host augmentation (pad {a['pad']}, flip)", runs, "iterate_augment"))
        else:
            lines.append(row(f"stream, {workers}", runs, "iterate"))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.arm:
        print(json.dumps(run_arm(args)), flush=True)
        return 0
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for arm in arms:
        mode, _, k = arm.partition(":")
        if mode not in ("stream", "memory") or not k.isdigit():
            raise SystemExit(f"unknown arm {arm!r}: stream:K or memory:K")
    folder = ensure_folder(args)
    if args.generate_only:
        return 0
    info = machine()
    print(f"{info['cpu']}, {info['cpus_usable']} usable CPUs, {info['memory_gib']} GiB, python {info['python']}, "
          f"torch {info['torch']}, torchvision {info['torchvision']}", flush=True)
    results = []
    for rnd in range(args.rounds):
        for arm in arms:
            r = run_in_process(args, arm)
            r["round"] = rnd
            results.append(r)
            it = r["iterate"]
            print(f"round {rnd + 1} {arm}: setup {r['setup_s']:.1f} s, {it['images']} images in {it['seconds']:.1f} s "
                  f"= {it['images_per_s']:.0f} images/s, ru_maxrss {r['maxrss_self_mib']:.0f} + "
                  f"{r['maxrss_children_mib']:.0f} MiB (arm wall {r['arm_wall_s']:.0f} s, "
                  f"other processes {r['other_load_cores']:.2f} cores)", flush=True)
    md = table(results, args.rounds)
    out = {"benchmark": "B6 data throughput", "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
           "machine": info, "folder": {"path": args.folder, **folder}, "batch_size": args.batch_size,
           "max_images": args.max_images, "rounds": args.rounds, "results": results, "table": md}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(md)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
