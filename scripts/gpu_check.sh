#!/usr/bin/env bash
# The GPU check of the data path, in one go (sized for under 10 minutes on one H200 with 16 cores; not yet run there):
#   1. benchmark.py model: ResNet-50, 8 segments, train-step images/s in fp32, bf16 + channels-last, + compile;
#   2. benchmark.py train with 16 loader workers from source videos, prepared copies (tools/prepare_videos.py,
#      the defaults) and frame folders (tools/extract_frames.py), each as a ratio to the same step fed from
#      memory (1.0: the loader keeps up with the GPU).
# No data set is needed: it generates H.264 source videos like actrecog2's (720 px, a keyframe every 150
# frames, B-frames; their flat backgrounds decode faster than real footage). Usage, from the repository root:  bash scripts/gpu_check.sh [OUT_DIR]
# Smaller for a CPU dry run: VIDEOS=4 SIZE=160 FRAMES=60 STEPS=2 BACKBONE=resnet18 BATCH=2 WORKERS=2 DEVICE=cpu
set -euo pipefail
OUT=${1:-work_dirs/gpu_check}
VIDEOS=${VIDEOS:-96}; SIZE=${SIZE:-720}; FRAMES=${FRAMES:-300}; STEPS=${STEPS:-20}
BACKBONE=${BACKBONE:-resnet50}; BATCH=${BATCH:-32}; WORKERS=${WORKERS:-16}; DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: the config's paths are joined to it
RESULTS="$OUT/results.jsonl"; : > "$RESULTS"
log() { echo "[$(date +%T)] $*" >&2; }

[ "$DEVICE" = cuda ] && { nvidia-smi -L || true; }
log "model-only train steps: fp32, bf16 + channels-last, + compile"
for flags in "" "--amp bf16 --channels-last" "--amp bf16 --channels-last --compile"; do
  # shellcheck disable=SC2086
  $PY tools/benchmark.py model --backbone "$BACKBONE" --batch-size "$BATCH" --num-segments 8 --steps "$STEPS" \
      $flags | tee -a "$RESULTS"
done

log "generating $VIDEOS source videos (${SIZE}x${SIZE}, $FRAMES frames, H.264, keyframe every 150)"
$PY - "$OUT/src" "$VIDEOS" "$SIZE" "$FRAMES" "$WORKERS" <<'PYEOF'
import sys
from fractions import Fraction
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from tsn.data.synthetic import demo_video_frames
from tsn.io.prepare import PrepareSettings, encode_video

root, count, size, frames, workers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
SOURCE = PrepareSettings(short_side=0, keyframe_interval=150, crf=23, bframes=3)  # like actrecog2's clips

def make(i: int) -> str:
    label = i % 4
    path = root / f"class{label}" / f"v{i:04d}.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.mp4")
        encode_video(demo_video_frames(label, 4, frames, size, np.random.default_rng(i)), tmp, Fraction(30), SOURCE)
        tmp.rename(path)
    return f"class{label}/v{i:04d}.mp4 {label}"

with Pool(workers) as pool:
    lines = pool.map(make, range(count))
(root / "train.txt").write_text("\n".join(lines) + "\n")
(root / "classes.txt").write_text("".join(f"class{c}\n" for c in range(4)))
PYEOF

log "prepared copies (defaults) and frame folders, $WORKERS workers"
$PY tools/prepare_videos.py --src "$OUT/src" --list "$OUT/src/train.txt" --out "$OUT/prepared" --workers "$WORKERS" --no-progress
$PY tools/extract_frames.py --src "$OUT/src" --list "$OUT/src/train.txt" --out "$OUT/frames" --workers "$WORKERS" --no-progress
du -sh "$OUT/src" "$OUT/prepared" "$OUT/frames" >&2

COMMON=(--opt model.backbone="$BACKBONE" --opt model.pretrained=false --opt data.num_segments=8
        --opt data.classes="$OUT/src/classes.txt" --opt train.amp=bf16 --opt train.channels_last=true
        --workers "$WORKERS" --batch-size "$BATCH" --steps "$STEPS")
[ "$DEVICE" = cuda ] || COMMON+=(--opt train.amp=none)
log "train steps from the loader against the same steps from memory (ratio)"
$PY tools/benchmark.py train --config configs/bench_actrecog2.yaml "${COMMON[@]}" \
    --opt data.root="$OUT/src" --opt data.train_list=train.txt | tee -a "$RESULTS"
$PY tools/benchmark.py train --config configs/bench_actrecog2.yaml "${COMMON[@]}" \
    --opt data.root="$OUT/prepared" --opt data.train_list=train_prepared.txt | tee -a "$RESULTS"
$PY tools/benchmark.py train --config configs/bench_actrecog2.yaml "${COMMON[@]}" --opt data.format=rawframes \
    --opt data.root="$OUT/frames" --opt data.train_list=train_rawframes.txt | tee -a "$RESULTS"

$PY - "$RESULTS" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
models = [r for r in rows if r["mode"] == "model"]
print("\nmodel-only train step, images/s:")
for r in models:
    print(f"  amp {r.get('amp')}, channels_last {r.get('channels_last')}, compile {r.get('compile')}: "
          f"{r.get('images_per_s')}")
print("train steps with the loader, as a ratio to the same steps fed from memory:")
names = ["source videos", "prepared copies", "frame folders"]
for name, r in zip(names, [r for r in rows if r["mode"] == "train"]):
    print(f"  {name:16s} ratio {r['ratio']:.3f}  loader {r['loader_clips_per_s']} clips/s  "
          f"memory {r['memory_steps_per_s'] * r['batch']:.1f} clips/s")
PYEOF
