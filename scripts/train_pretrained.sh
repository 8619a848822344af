#!/usr/bin/env bash
# Issue 32, the CPU recipe from a pretrained start: COCO-trained YOLO11n (../shared/pretrained, by
# path; AGPL-3.0) transferred into YOLO11n-OBB, trained on the 2-core project machine on generated
# scenes and the suite's training crops (config/realdata_suite.yaml: evaluation crops and parts are
# never chipped), then measured. Data and runs live outside the repository. One command:
#   bash scripts/train_pretrained.sh                 # ~2.1 h of training, then the measurements
# Stopped? `patrol train --train-config config/train_pretrained.yaml --resume` goes on from the last epoch.
set -euo pipefail
REAL=${REAL:-/work/shared/realdata}
PRETRAINED=${PRETRAINED:-/work/shared/pretrained/yolo11n-coco.pt}
DATA=${DATA:-/work/datasets/p32}
RUNS=${RUNS:-/work/runs}
NAME=${NAME:-p32-coco}
HOURS=${HOURS:-2.1}
export YOLO_OFFLINE=1 OMP_NUM_THREADS=2

# 1. data (2026-12-07): 120 + 300 generated 64 m scenes (320 px chips; terraced blocks in 30 %, coarse
#    0.15-0.30 m survey look in 25 %), 6 validation scenes, and every training crop of the suite at
#    0.10 m, chips every 240 px: 2,520 training chips (about 640 of them real)
if [ ! -f "$DATA/data.yaml" ]; then
  patrol dataset build --out "$DATA" --scenes 120 --val-scenes 6 --seed 320000 --size-m 64 --chip-px 320 \
    --real-stride 240 --suite "$REAL" --terraces 0.3 --coarse 0.25
  patrol dataset build --out "$DATA" --scenes 300 --val-scenes 0 --seed 320126 --size-m 64 --chip-px 320 \
    --terraces 0.3 --coarse 0.25
fi

# 2. training from the COCO start (config/train_pretrained.yaml: AdamW lr 0.001, cosine, 320 px, batch 16),
#    epochs fitted into HOURS by ultralytics, a checkpoint every epoch
patrol train --train-config config/train_pretrained.yaml --data "$DATA" --pretrained "$PRETRAINED" \
  --name "$NAME" --hours "$HOURS"

# 3. the candidate (optimizer stripped, ONNX beside) measured: the suite's evaluation crops, and
#    held-out generated scenes
python -c "from pipeline.model.train import ship_model; ship_model('$RUNS/$NAME/weights/last.pt', '$RUNS/$NAME/candidate.pt')"
patrol evaluate --suite "$REAL" --model "$RUNS/$NAME/candidate.onnx" \
  --report "$RUNS/$NAME/suite.md" --json "$RUNS/$NAME/suite.json"
patrol evaluate --model "$RUNS/$NAME/candidate.pt" --scenes 30 --seed 1000000 --report "$RUNS/$NAME/scenes.md"
