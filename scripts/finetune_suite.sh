#!/usr/bin/env bash
# Issue 16, CPU stage: fine-tune the shipped weights on the training crops of the real-imagery suite
# (config/realdata_suite.yaml: evaluation crops and parts are never chipped) plus new synthetic
# scenes (L / T-plan houses among them), on the 2-core project machine. REAL is ../shared/realdata.
# Data and runs live outside the repository.
set -euo pipefail
REAL=${REAL:-/work/shared/realdata}
DATA=${DATA:-/work/datasets/ft16}
RUNS=${RUNS:-/work/runs}
EPOCHS=${EPOCHS:-25}
export YOLO_OFFLINE=1 OMP_NUM_THREADS=2

# 1. data: 100 + 8 synthetic scenes of 64 m (seeds 300000-300107, never used before), 320 px chips;
#    every `train` crop of the suite at 0.10 m, chips every 320 px
patrol dataset build --out "$DATA" --scenes 100 --val-scenes 8 --seed 300000 --size-m 64 --chip-px 320 \
  --real-stride 320 --suite "$REAL"

# 2. fine-tune from the shipped weights: SGD lr 0.002, 320 px, mosaic off for the last 5 epochs
python - "$DATA" "$RUNS" "$EPOCHS" <<'PY'
import sys
from pipeline.train import train
data, runs, epochs = sys.argv[1:4]
train(data=f"{data}/data.yaml", epochs=int(epochs), weights="models/lianwei-yolo11n.pt", name="ft16",
      settings={"imgsz": 320, "project": runs, "lr0": 0.002, "optimizer": "SGD", "warmup_epochs": 0,
                "close_mosaic": 5, "save_period": 1, "workers": 0, "patience": 1000, "device": "cpu"})
PY

# 3. measure the candidate (ship_model exports the ONNX beside a stripped .pt)
python -c "from pipeline.train import ship_model; ship_model('$RUNS/ft16/weights/last.pt', '$RUNS/ft16/candidate.pt')"
patrol evaluate --suite "$REAL" --model "$RUNS/ft16/candidate.onnx" --report "$RUNS/ft16/suite.md" --json "$RUNS/ft16/suite.json"
patrol evaluate --model "$RUNS/ft16/candidate.pt" --scenes 30 --seed 1000000 --report "$RUNS/ft16/scenes.md"
