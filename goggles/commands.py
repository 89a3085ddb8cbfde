"""The commands on a finished run: ``goggles train``, ``goggles apply``, ``goggles export`` and
``goggles suggest``, and before one, ``goggles plan`` (their options and what they do;
:mod:`goggles.cli` parses, dispatches and prints), and the argument parser every command uses
(:class:`Parser`: no abbreviated options)."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from goggles import parameters


class Parser(argparse.ArgumentParser):
    """An argument parser that takes no abbreviated options (``--num-class`` is an error, not
    ``--num-classes``) and names the closest real option of a mistyped one. Its subcommands'
    parsers are of this class too (argparse makes them with the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._command_parser(parsed).error("unrecognized arguments: " + " ".join(extras))
        return parsed

    def error(self, message: str) -> NoReturn:
        super().error(message + self._closest())

    def _command_parser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The parser of the subcommand ``parsed`` chose (this one when there is none)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(parsed, action.dest, None) or "")
                if isinstance(chosen, Parser):
                    return chosen._command_parser(parsed)
        return self

    def _closest(self) -> str:
        """``"; --num-class is not an option of goggles run: did you mean --num-classes?"`` for
        the first option given to this parser that it does not know and that is close to one it
        does, else empty."""
        known = [option for action in self._actions for option in action.option_strings
                 if option.startswith("--")]
        for given in getattr(self, "_given", []):
            name = given.split("=", 1)[0]
            if name.startswith("--") and name not in known:
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                if close:
                    return (f"; {name} is not an option of {self.prog}: "
                            f"did you mean {close[0]}?")
        return ""



def add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from goggles.export import FORMATS

    export = sub.add_parser("export", help="write a run's labels for another tool "
                                           "(docs/export.md)")
    export.add_argument("out", metavar="OUT",
                        help="the --output of a finished run (or its labels Parquet file)")
    export.add_argument("--format", required=True, choices=FORMATS,
                        help="imagefolder: DEST/<class>/<image> (torchvision); csv, jsonl: "
                             "image_id, uri, label, confidence, probs; label-studio: tasks with "
                             "predictions and the labeling config; huggingface: datasets' "
                             "imagefolder layout with metadata.jsonl")
    export.add_argument("--output", required=True, metavar="DEST",
                        help="an empty or new folder, local or gs://, s3:// (never overwritten)")
    export.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                        help="export only labels with confidence >= P (default: 0, all)")
    export.add_argument("--copy", action="store_true",
                        help="imagefolder, huggingface: copy local images instead of linking "
                             "them with relative symlinks (a bucket on either side always "
                             "gets copies; copy a tree you will move to another machine)")
    export.add_argument("--names", default="", metavar="OLD=NEW,...|FILE",
                        help="name the classes in the export without a rerun, e.g. "
                             "cluster_0=cat,cluster_1=dog, or a file of OLD=NEW lines (or a "
                             "JSON object); the run itself is unchanged")
    export.add_argument("--label-studio-root", default="/", metavar="DIR",
                        help="label-studio: the LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT Label "
                             "Studio serves local images from (default: /)")
    export.add_argument("--only", default="", metavar="FILE",
                        help="export only the images FILE lists (a CSV or Parquet with a uri "
                             "column, e.g. goggles suggest --output FILE), e.g. to label "
                             "them in Label Studio (default: all)")


def add_suggest(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    suggest = sub.add_parser("suggest", help="the images of a finished run to label next, as a "
                                             "CSV to fill in and give back with --dev-labels")
    suggest.add_argument("out", metavar="OUT", help="the --output of a finished goggles run")
    suggest.add_argument("--budget", type=int, required=True, metavar="B",
                         help="how many images to ask for (e.g. 4 per class a round)")
    suggest.add_argument("--output", required=True, metavar="FILE",
                         help="a new CSV (local or a bucket): columns uri and label, the label "
                              "left empty for the person")
    suggest.add_argument("--dev-labels", action="append", default=[], metavar="FILE",
                         help="labels of earlier rounds (CSV, Parquet or a Label Studio "
                              "export; repeatable): their images are not asked for again")
    suggest.add_argument("--seed", type=int, default=None, help="default: the run's seed")


def add_plan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = sub.add_parser("plan", help="pods, bytes, memory and seconds of each task of a "
                                        "cluster run at N images (goggles.pipeline.costs)")
    plan.add_argument("--images", type=int, required=True, metavar="N",
                      help="number of images")
    plan.add_argument("--num-classes", type=int, default=2, metavar="K",
                      help="number of classes (default: 2)")
    plan.add_argument("--shards", type=int, default=0, metavar="S",
                      help="row shards (default: one per 10,240 images)")
    plan.add_argument("--max-prototypes", type=int, default=None, metavar="P",
                      help="the run's --max-prototypes (default: the run's default, -1)")
    plan.add_argument("--gpu", action="store_true",
                      help="extract and affinity on a GPU each (assumed rates)")
    plan.add_argument("--json", action="store_true",
                      help="a JSON list of objects: task, pods, bytes_read, bytes_written, "
                           "peak_memory_bytes, seconds (per pod), reads")


def add_train_and_apply(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from goggles.training.config import HEADS, LABELERS, TARGETS

    train = sub.add_parser("train", help="train an end classifier on a finished run's labels "
                                          "(OUT/model; metrics.json gains end_model)")
    train.add_argument("run", metavar="OUT", help="the --output of a finished goggles run")
    train.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                       help="share of the images held out to score the head (default: 1/3)")
    train.add_argument("--head", choices=HEADS, default=None,
                       help="linear (default) or a one-hidden-layer mlp")
    train.add_argument("--targets", choices=TARGETS, default=None,
                       help="soft: the noise-aware loss on the probabilities (default); hard: "
                            "their arg-max")
    train.add_argument("--seed", type=int, default=None, help="default: the run's seed")

    apply = sub.add_parser("apply", help="label new images with a trained run, without "
                                          "refitting")
    apply.add_argument("model", metavar="MODEL", help="a finished run's OUT, or OUT/model")
    apply.add_argument("source", metavar="SOURCE", help="folder or bucket prefix of the new "
                                                        "images (first-level folders: truth)")
    apply.add_argument("--output", required=True, metavar="OUT",
                       help="where labels.parquet, manifest.parquet and metrics.json go")
    apply.add_argument("--labeler", choices=LABELERS, default="auto",
                       help="end-model: the trained head (needs OUT/model); affinity: the run's "
                            "own fit on new rows of A (needs the run's OUT); auto "
                            "(default): affinity when MODEL is a run's OUT, else the end "
                            "model")
    apply.add_argument("--device", choices=parameters.spec("device").choices, default="auto",
                       help="where the CNN runs (default: auto)")
    apply.add_argument("--follow-symlinks", action="store_true",
                       help=parameters.spec("follow_symlinks").help)
    apply.add_argument("--break-lock", action="store_true",
                       help="remove the lock another command left on OUT")


def _train(args: argparse.Namespace) -> str:
    from goggles.pipeline.train_apply import train_config_for, train_finished_run

    config = train_config_for(args.run, holdout=args.holdout, head=args.head,
                              targets=args.targets, seed=args.seed)
    scores = train_finished_run(args.run, config)
    return f"{json.dumps(scores, indent=2)}\nmodel: {args.run.rstrip('/')}/model"


def _apply(args: argparse.Namespace) -> str:
    from goggles.pipeline.train_apply import apply_to_source
    from goggles.training.config import ApplyConfig

    if args.break_lock:
        from goggles.io.lock import break_lock

        break_lock(args.output)
    metrics = apply_to_source(args.model, args.source, args.output,
                              ApplyConfig(labeler=args.labeler, device=args.device),
                              follow_symlinks=args.follow_symlinks)
    summary = {k: metrics[k] for k in ("n_images", "n_rejected", "num_classes", "labeler",
                                       "accuracy", "images_per_s", "timings_s") if k in metrics}
    return f"{json.dumps(summary, indent=2)}\nlabels: {args.output.rstrip('/')}/labels.parquet"


def _plan(args: argparse.Namespace) -> str:
    from goggles.pipeline.costs import plan, recommended_shards, table

    shards = args.shards or recommended_shards(args.images)
    costs = plan(args.images, num_classes=args.num_classes, shards=shards,
                 max_prototypes=args.max_prototypes, gpu=args.gpu)
    if args.json:
        return json.dumps([c.to_dict() for c in costs], indent=2)
    return (f"{args.images:,} images, {args.num_classes} classes, {shards} shards "
            f"({'GPU' if args.gpu else 'CPU'} pods); per pod:\n{table(costs)}")


def _export(args: argparse.Namespace) -> str:
    from goggles.export import export_labels
    from goggles.export.naming import parse_names
    from goggles.io import storage

    names = None
    if args.names:
        given = args.names
        if storage.is_file(given):
            given = storage.read_bytes(given).decode("utf-8-sig")
        names = parse_names(given)
    summary = export_labels(args.out, args.output, args.format,
                            min_confidence=args.min_confidence, link=not args.copy,
                            label_studio_root=args.label_studio_root, only=args.only,
                            names=names)
    return summary.line()


def _suggest(args: argparse.Namespace) -> str:
    from goggles.pipeline.suggest import suggest_for_run

    done = suggest_for_run(args.out, args.budget, args.output, dev_labels_uris=args.dev_labels,
                           seed=args.seed)
    return (f"{done['suggested']} image(s) to label in {done['output']} (fill in the label "
            f"column; {done['labeled_before']} labeled before); then rerun with --dev-labels")


COMMANDS = {"train": _train, "apply": _apply, "export": _export, "suggest": _suggest,
            "plan": _plan}
"""Handlers by command name: each takes the parsed arguments, does the work and returns what
the command prints on success (the CLI prints it; errors are raised)."""
