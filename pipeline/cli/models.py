"""`patrol dataset|train|model|evaluate`: training data, training, the model registry, evaluation."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.options import check_dates, figure, open_ctx_store, pass_ctx, split_pair
from pipeline.core.errors import InputError

# lazy imports: each command imports its stage when it runs, so that `patrol --help` stays quick


@click.group("dataset")
def dataset_group():
    """Build YOLO training data: synthetic scenes and labelled real flights."""


@dataset_group.command("build")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--scenes", default=100, show_default=True, help="Synthetic training scenes.")
@click.option("--val-scenes", default=20, show_default=True, help="Synthetic validation scenes (other seeds).")
@click.option("--seed", default=1, show_default=True, help="First scene seed (train seed…, then val).")
@click.option("--size-m", default=128.0, show_default=True, help="Edge of each scene in metres.")
@click.option("--chip-px", default=640, show_default=True, help="Chip edge in pixels.")
@click.option("--real", multiple=True, metavar="ORTHO:LABELS", help="A labelled real flight for training; repeatable.")
@click.option("--real-val", multiple=True, metavar="ORTHO:LABELS", help="A labelled real flight for validation.")
@click.option("--real-stride", type=int, default=None, help="Step between real training chips (px; default chip edge).")
@click.option("--suite", "suite_dir", type=click.Path(file_okay=False),
              help="Also every training crop of the real-imagery suite in this folder (laid out like "
                   "../shared/realdata; roles from --manifest): evaluation crops and parts are never chipped.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Suite manifest (default: config/realdata_suite.yaml).")
@click.option("--coarse", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of scenes rendered at a coarse native GSD (0.15-0.30 m) and resampled to the "
                   "processing GSD, as the tiler resamples a coarse survey.")
@click.option("--l-houses/--no-l-houses", default=True, show_default=True,
              help="Houses with a second wing (L / T plan) among the scenes' houses.")
@click.option("--terraces", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of village blocks built as rows of adjoining houses, each roof its own structure "
                   "(dense settlements, old village cores).")
@pass_ctx
def dataset_build(ctx, out_dir, scenes, val_scenes, seed, size_m, chip_px, real, real_val, real_stride,
                  suite_dir, manifest, coarse, l_houses, terraces):
    """Render randomised synthetic scenes (split by scene) and import real flights into OUT."""
    from pipeline.model.dataset import build_dataset
    from pipeline.model.evaluate import DEFAULT_SUITE, read_suite
    suite_real = []
    if suite_dir:
        if not Path(suite_dir).is_dir():
            raise InputError(f"suite folder {Path(suite_dir).name} not found; pass the folder of the labelled real areas")
        for c in read_suite(manifest or DEFAULT_SUITE):
            if c["role"] == "train":
                suite_real.append((Path(suite_dir) / c["ortho"], Path(suite_dir) / c["truth"], c["holdout"]))
    res = build_dataset(Path(out_dir), scenes=scenes, val_scenes=val_scenes, seed=seed, size_m=size_m,
                        chip_px=chip_px, real=[split_pair(r) for r in real] + suite_real,
                        real_val=[split_pair(r) for r in real_val], gsd_m=ctx.settings.processing.gsd_m,
                        real_stride_px=real_stride, coarse=(coarse, 0.15, 0.30) if coarse else None,
                        l_houses=l_houses, terraces=terraces)
    for split in ("train", "val"):
        st = res[split]
        click.echo(f"{split}: {st.chips} chips, {st.boxes} boxes "
                   + ", ".join(f"{k} {v}" for k, v in st.per_class.items()))
    click.echo(f"dataset {Path(out_dir) / 'data.yaml'}")


@dataset_group.command("import")
@click.argument("ortho", type=click.Path(dir_okay=False))
@click.argument("labels", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--split", type=click.Choice(["train", "val"]), default="train", show_default=True)
@click.option("--class-column", help="Column with the class (default: class_name/class/condition if present).")
@click.option("--default-class", default="building", show_default=True, help="Class of unlabelled polygons.")
@click.option("--layer", help="Layer of the label file.")
@click.option("--chip-px", default=640, show_default=True, help="Chip edge in pixels.")
@click.option("--stride", "stride_px", type=int, default=None, help="Step between chips (px; default chip edge).")
@pass_ctx
def dataset_import(ctx, ortho, labels, out_dir, split, class_column, default_class, layer, chip_px, stride_px):
    """Import a labelled flight (ORTHO any CRS + LABELS polygons) as chips at the processing GSD."""
    from pipeline.model.dataset import import_labelled
    st = import_labelled(ortho, labels, out_dir, gsd_m=ctx.settings.processing.gsd_m, chip_px=chip_px,
                         split=split, stride_px=stride_px, class_column=class_column,
                         default_class=default_class, layer=layer)
    click.echo(f"{split}: {st.chips} chips, {st.boxes} boxes from {st.footprints} footprints → {out_dir}")


@dataset_group.command("from-reviews")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--since", help="Only flights captured on or after this date (YYYY-MM-DD).")
@click.option("--flights", "flight_ids", multiple=True, help="Only these flights (repeatable).")
@pass_ctx
def dataset_from_reviews_cmd(ctx, out_dir, since, flight_ids):
    """Chips from the officers' verdicts: confirmed, lawful and drawn cases labelled (corrected
    outlines), false positives as background, unjudged detections painted over; the frozen
    evaluation flights to val."""
    from pipeline.model.review_data import dataset_from_reviews
    check_dates(since)
    with open_ctx_store(ctx) as store:
        summary = dataset_from_reviews(store, ctx.settings, Path(out_dir), since=since,
                                       flights=list(flight_ids) or None)
    click.echo(f"{len(summary['flights'])} reviewed flights: {summary['positives']} positives, "
               f"{summary['negatives']} false positives, {summary['excluded_detections']} unjudged detections "
               f"painted over; chips train {summary['chips'].get('train', 0)}, val {summary['chips'].get('val', 0)}")
    held = ", ".join(f + (" (part)" if r else "") for f, r in summary["evaluation_set"]["flights"].items())
    click.echo(f"evaluation flights (never trained on): {held}")
    click.echo(f"dataset {Path(out_dir) / 'data.yaml'}")


@click.command("train")
@click.option("--from-reviews", "from_reviews", type=click.Path(file_okay=False),
              help="Fine-tune the active model on this `dataset from-reviews` folder and register a candidate.")
@click.option("--device", help="With --from-reviews: cpu (default) or a CUDA index.")
@click.option("--data", type=click.Path(), help="Dataset folder or data.yaml (default: from the training config).")
@click.option("--epochs", type=int, help="Epochs (default: from the training config).")
@click.option("--resume", is_flag=True, help="Resume the interrupted run from its last.pt.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Start from these weights (fine-tuning).")
@click.option("--pretrained", type=click.Path(dir_okay=False),
              help="Initialise from a detection checkpoint of another task (e.g. COCO YOLO11n): matching "
                   "tensors transfer, the class and angle outputs start fresh.")
@click.option("--name", help="Run name under the project folder.")
@click.option("--hours", type=float, help="Time budget: fit the epochs and LR schedule into this many hours.")
@click.option("--train-config", type=click.Path(dir_okay=False), help="Training settings (default: config/train.yaml).")
@click.option("--ship", "ship_to", type=click.Path(dir_okay=False),
              help="After training, copy best.pt here (optimizer stripped) and export .onnx beside it.")
@click.option("--ship-only", is_flag=True, help="Skip training; ship the run's best.pt.")
@pass_ctx
def train_cmd(ctx, from_reviews, device, data, epochs, resume, weights, pretrained, name, hours, train_config,
              ship_to, ship_only):
    """Train the detector with ultralytics on a dataset from `patrol dataset`."""
    from pipeline.model.train import load_train_config, ship_model, train
    if from_reviews:
        import getpass

        from pipeline.model.registry import train_candidate
        with open_ctx_store(ctx) as store:
            row = train_candidate(store, ctx.settings, Path(from_reviews), actor=getpass.getuser(), epochs=epochs,
                                  device=device)
        click.echo(f"candidate {row['version']} (parent {row['parent']}, {row['data']['epochs']} epochs, "
                   f"{row['data']['train_s']} s); next: patrol model compare {row['version']}")
        return
    if ship_only:
        cfg = load_train_config(train_config, {"name": name})
        run_dir = Path(cfg["project"]) / cfg["name"]
    else:
        run_dir = train(train_config, data=data, epochs=epochs, resume=resume, weights=weights, name=name,
                        hours=hours, pretrained=pretrained)
    click.echo(f"run {run_dir}")
    if ship_to:
        pt, onnx = ship_model(run_dir / "weights" / "best.pt", Path(ship_to), imgsz=ctx.settings.processing.tile_px)
        click.echo(f"shipped {pt} and {onnx}")


@click.group("model")
def model_group():
    """The model registry: list, compare, promote, roll back (docs/MODELS.md)."""


@model_group.command("list")
@pass_ctx
def model_list(ctx):
    """Registered models, the active one marked."""
    from pipeline.model.registry import listing
    with open_ctx_store(ctx) as store:
        rows = listing(store, ctx.settings)
    for r in rows:
        comp = (r.get("metrics") or {}).get("comparison") or {}
        mark = "*" if r["state"] == "active" else " "
        gate = "" if not comp else (" passes" if comp.get("passes") else " refused") + f" vs {comp.get('active')}"
        click.echo(f"{mark} {r['version']:<24} {r['state']:<10} parent {r.get('parent') or '—':<22}{gate}")


@model_group.command("compare")
@click.argument("candidate")
@pass_ctx
def model_compare(ctx, candidate):
    """CANDIDATE and the active model side by side on the frozen evaluation set."""
    import getpass

    from pipeline.model.registry import compare
    with open_ctx_store(ctx) as store:
        res = compare(store, ctx.settings, candidate, actor=getpass.getuser())
    click.echo(f"{'part':<12} {'':<10} {'recall':>8} {'precision':>10}")
    for part, both in res["parts"].items():
        for who in ("active", "candidate"):
            m = both[who]
            click.echo(f"{part:<12} {who:<10} {figure(m.get('recall')):>8} {figure(m.get('precision')):>10}")
    click.echo(f"{candidate} {'passes the gate' if res['passes'] else 'fails the gate'} (margin "
               f"{res['margin']:g} against {res['active']})")


@model_group.command("promote")
@click.argument("candidate")
@pass_ctx
def model_promote(ctx, candidate):
    """Make CANDIDATE the active model if it passes the gate."""
    import getpass

    from pipeline.model.registry import promote
    with open_ctx_store(ctx) as store:
        res = promote(store, ctx.settings, candidate, actor=getpass.getuser())
    click.echo(f"{candidate} is the active model (was {res['active']})")


@model_group.command("rollback")
@pass_ctx
def model_rollback(ctx):
    """Return to the model that was active before the current one."""
    import getpass

    from pipeline.model.registry import rollback
    with open_ctx_store(ctx) as store:
        row = rollback(store, ctx.settings, actor=getpass.getuser())
    click.echo(f"{row['version']} is the active model again")


@click.command("evaluate")
@click.option("--ortho", type=click.Path(dir_okay=False), help="Ortho to detect on (any CRS, RGB or RGBA).")
@click.option("--truth", type=click.Path(dir_okay=False), help="Footprints to score against (any vector file).")
@click.option("--truth-layer", help="Layer of the truth file (a district.gpkg: truth).")
@click.option("--epoch", type=int, help="Only truth rows of this epoch (district truth layer).")
@click.option("--classes", help="Comma-separated classes to score (default: all).")
@click.option("--iou", default=0.5, show_default=True, help="IoU for a match.")
@click.option("--envelopes", is_flag=True,
              help="Compare against each footprint's axis-aligned envelope (for axis-aligned box models).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="Weights (default: detector.model).")
@click.option("--suite", "suite_dir", type=click.Path(file_okay=False),
              help="Instead: every labelled real area of this folder (laid out like ../shared/realdata).")
@click.option("--manifest", type=click.Path(dir_okay=False),
              help="With --suite: which crop of each area is for evaluation (default config/realdata_suite.yaml).")
@click.option("--roles", default="eval", show_default=True, help="With --suite: crops of these roles (eval,train).")
@click.option("--scenes", type=int, help="Instead: this many held-out generated scenes (ultralytics mAP).")
@click.option("--seed", default=1_000_000, show_default=True, help="First seed of the held-out scenes.")
@click.option("--exclude-data", type=click.Path(file_okay=False), help="Refuse seeds used by this dataset.")
@click.option("--size-m", default=128.0, show_default=True, help="With --scenes: scene side in metres.")
@click.option("--chip-px", type=int, help="With --scenes: chip size (default: processing.tile_px).")
@click.option("--l-houses/--no-l-houses", default=True, show_default=True,
              help="With --scenes: houses with a second wing (L / T plan) among them; --no-l-houses draws "
                   "the scenes of the figures made before (2026-11-26).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the figures as JSON.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write a Markdown report.")
@pass_ctx
def evaluate_cmd(ctx, ortho, truth, truth_layer, epoch, classes, iou, envelopes, model_path, suite_dir, manifest,
                 roles, scenes, seed, exclude_data, size_m, chip_px, l_houses, json_path, report_path):
    """Precision/recall/F1 at IoU 0.5 on an ortho with truth, on a suite of real areas, or mAP on
    held-out generated scenes."""
    from pipeline.model import evaluate as ev
    if suite_dir:
        if not Path(suite_dir).is_dir():
            raise InputError(f"suite folder {suite_dir} not found; pass the folder of the labelled real areas")
        res = ev.evaluate_suite(suite_dir, ctx.settings, manifest or ev.DEFAULT_SUITE,
                                roles=[r.strip() for r in roles.split(",") if r.strip()], model=model_path, iou=iou)
        text = ev.suite_markdown(res, "patrol evaluate --suite " + Path(suite_dir).name)
        click.echo(text)
        if json_path:
            ev.write_json(res, json_path)
            click.echo(f"json {json_path}")
        if report_path:
            Path(report_path).parent.mkdir(parents=True, exist_ok=True)
            Path(report_path).write_text(text, encoding="utf-8")
            click.echo(f"report {report_path}")
        return
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    if names:
        unknown = [c for c in names if c not in ctx.settings.detector.classes]
        if unknown:
            raise InputError(f"class {unknown[0]} is not one of {', '.join(ctx.settings.detector.classes)}")
    if scenes:
        m = ev.evaluate_scenes(Path(model_path) if model_path else ctx.settings.model_path.with_suffix(".pt"),
                               scenes=scenes, seed=seed, exclude_data=exclude_data, size_m=size_m,
                               chip_px=chip_px or ctx.settings.processing.tile_px, l_houses=l_houses)
        click.echo(f"mAP50 {m['mAP50']:.3f}  mAP50-95 {m['mAP50-95']:.3f}  "
                   f"({m['chips']} chips, {m['objects']} objects, seeds {seed}…{seed + scenes - 1})")
        for c, v in m["per_class_yolo"].items():
            click.echo(f"  {c:<20} P {v['precision']:.3f}  R {v['recall']:.3f}  mAP50 {v['mAP50']:.3f}")
    else:
        if not ortho or not truth:
            raise InputError("evaluate needs --ortho and --truth (or --scenes N); pass them")
        m = ev.evaluate_ortho(ortho, truth, ctx.settings, classes=names, model=model_path, iou=iou,
                              truth_layer=truth_layer, epoch=epoch, envelope=envelopes)
        click.echo(f"precision {m['precision']:.3f}  recall {m['recall']:.3f}  F1 {m['f1']:.3f}  "
                   f"(tp {m['tp']}, fp {m['fp']}, fn {m['fn']}; IoU ≥ {iou})")
        cov = m["coverage"]
        click.echo(f"footprints found {cov['found_recall']:.3f} ({cov['found']} of {m['n_truth']} at least half "
                   f"covered by a detection); detections on a footprint {cov['on_target_precision']:.3f}")
        for c, v in m.get("per_class", {}).items():
            click.echo(f"  {c:<20} P {v['precision']:.3f}  R {v['recall']:.3f}  F1 {v['f1']:.3f}  "
                       f"(tp {v['tp']}, fp {v['fp']}, fn {v['fn']})")
    if json_path:
        out = m if scenes else {k: m[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")} | m
        ev.write_json(out, json_path)
        click.echo(f"json {json_path}")
    if report_path:
        ev.write_report(m, report_path)
        click.echo(f"report {report_path}")


COMMANDS = [dataset_group, train_cmd, model_group, evaluate_cmd]
