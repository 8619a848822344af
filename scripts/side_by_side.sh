#!/usr/bin/env bash
# Issue 32, side by side before choosing: the same data (the recipe's dataset, scripts/train_pretrained.sh),
# the same config (config/train_pretrained.yaml), the same epochs, three starts: the COCO-trained
# YOLO11n (../shared/pretrained), the shipped weights (models/lianwei-yolo11n.pt), and scratch.
# Each run is shipped as a candidate and scored on the suite's evaluation crops; a table at the end.
#   bash scripts/side_by_side.sh            # EPOCHS=4: about 20 min of training per start on 2 cores
set -euo pipefail
REAL=${REAL:-/work/shared/realdata}
PRETRAINED=${PRETRAINED:-/work/shared/pretrained/yolo11n-coco.pt}
DATA=${DATA:-/work/datasets/p32}
RUNS=${RUNS:-/work/runs}
EPOCHS=${EPOCHS:-4}
STARTS=${STARTS:-coco shipped scratch}
export YOLO_OFFLINE=1 OMP_NUM_THREADS=2
mkdir -p "$RUNS"
sed 's#^pretrained:.*#pretrained: null#' config/train_pretrained.yaml > "$RUNS/sbs-no-pretrained.yaml"
for start in $STARTS; do
  name=sbs-$start-e$EPOCHS
  if [ ! -f "$RUNS/$name/suite.json" ]; then
    case $start in
      coco)    start_args=(--train-config config/train_pretrained.yaml --pretrained "$PRETRAINED") ;;
      shipped) start_args=(--train-config "$RUNS/sbs-no-pretrained.yaml" --weights models/lianwei-yolo11n.pt) ;;
      scratch) start_args=(--train-config "$RUNS/sbs-no-pretrained.yaml") ;;
    esac
    patrol train "${start_args[@]}" --data "$DATA" --epochs "$EPOCHS" --name "$name" > "$RUNS/$name.log" 2>&1
    python -c "from pipeline.model.train import ship_model; ship_model('$RUNS/$name/weights/last.pt', '$RUNS/$name/candidate.pt')"
    patrol evaluate --suite "$REAL" --model "$RUNS/$name/candidate.onnx" --json "$RUNS/$name/suite.json" \
      --report "$RUNS/$name/suite.md"
  fi
done
