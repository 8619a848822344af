#!/usr/bin/env bash
# Issue 16, CPU stage: fine-tune the shipped weights on the training crops of the real-imagery suite
# (config/realdata_suite.yaml, or MANIFEST: evaluation crops and parts are never chipped) plus new
# synthetic scenes (L / T-plan houses among them), on the 2-core project machine. REAL is
# ../shared/realdata. Data and runs live outside the repository. The three runs of the model card
# (2026-12-07):
#   bash scripts/finetune_suite.sh                                   # 320 px chips, ~37 min
#   NAME=ft16nk MANIFEST=SUITE_WITH_BOTH_KAMPALA_CROPS_EVAL.yaml bash scripts/finetune_suite.sh
#   NAME=ft16b CHIP=640 SIZE_M=128 SCENES=25 VAL=4 SEED=310000 EPOCHS=20 bash scripts/finetune_suite.sh
set -euo pipefail
REAL=${REAL:-/work/shared/realdata}
NAME=${NAME:-ft16}
DATA=${DATA:-/work/datasets/$NAME}
RUNS=${RUNS:-/work/runs}
MANIFEST=${MANIFEST:-config/realdata_suite.yaml}
EPOCHS=${EPOCHS:-25}
CHIP=${CHIP:-320}
SIZE_M=${SIZE_M:-64}
SCENES=${SCENES:-100}
VAL=${VAL:-8}
SEED=${SEED:-300000}
export YOLO_OFFLINE=1 OMP_NUM_THREADS=2

# 1. data: SCENES + VAL synthetic scenes of SIZE_M metres (seeds from SEED), CHIP px chips; every
#    `train` crop of the suite at 0.10 m, chips every CHIP px
patrol dataset build --out "$DATA" --scenes "$SCENES" --val-scenes "$VAL" --seed "$SEED" --size-m "$SIZE_M" \
  --chip-px "$CHIP" --real-stride "$CHIP" --suite "$REAL" --manifest "$MANIFEST"

# 2. fine-tune from the shipped weights: SGD lr 0.002, mosaic off for the last 5 epochs
python - "$DATA" "$RUNS" "$EPOCHS" "$NAME" "$CHIP" <<'PY'
import sys
from pipeline.model.train import train
data, runs, epochs, name, chip = sys.argv[1:6]
train(data=f"{data}/data.yaml", epochs=int(epochs), weights="models/lianwei-yolo11n.pt", name=name,
      settings={"imgsz": int(chip), "project": runs, "lr0": 0.002, "optimizer": "SGD", "warmup_epochs": 0,
                "close_mosaic": 5, "save_period": 1, "workers": 0, "patience": 1000, "device": "cpu"})
PY

# 3. measure the candidate (ship_model exports the ONNX beside a stripped .pt)
python -c "from pipeline.model.train import ship_model; ship_model('$RUNS/$NAME/weights/last.pt', '$RUNS/$NAME/candidate.pt')"
patrol evaluate --suite "$REAL" --manifest "$MANIFEST" --roles eval,train --model "$RUNS/$NAME/candidate.onnx" \
  --report "$RUNS/$NAME/suite.md" --json "$RUNS/$NAME/suite.json"
patrol evaluate --model "$RUNS/$NAME/candidate.pt" --scenes 30 --seed 1000000 --report "$RUNS/$NAME/scenes.md"
patrol evaluate --model "$RUNS/$NAME/candidate.pt" --scenes 30 --seed 1000000 --no-l-houses \
  --report "$RUNS/$NAME/scenes_old.md"
