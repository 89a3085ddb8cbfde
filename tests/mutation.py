"""A small mutation tester for goggles' core functions: can the tests fail when the code is wrong?

    python tests/mutation.py [--quick] [--max-per-function N] [--only TEXT] [--list]

Each mutant is one small change to one function (a swapped operator, a changed constant, a
deleted statement, ...) written into the source file; the tests named for that function run in
a subprocess (``pytest -x``); a mutant is *killed* when they fail (or time out) and *survives*
when they pass. The file is always restored, also on Ctrl-C, and git confirms the tree is as
it was. A measurement, not a gate: the exit status is 0 unless the script itself breaks.

Edit the two tables below when modules move: TARGETS names (file, function, tests) and
NAMED_MUTATIONS names one-line edits by a distinctive piece of their line, so they still
apply wherever that line ends up. Paths are relative to the repository root.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# -- what to mutate -----------------------------------------------------------------------------

AFFINITY_TESTS = ["tests/unit/test_affinity.py", "tests/unit/test_device.py"]
EVALUATION_TESTS = ["tests/unit/test_evaluation.py"]
EM_TESTS = ["tests/unit/test_inference.py"]
LIKELIHOOD_TESTS = ["tests/unit/test_inference.py", "tests/unit/test_device.py"]
STORAGE_TESTS = ["tests/unit/test_storage.py"]
RESUME_TESTS = ["tests/unit/test_resume.py"]
INGEST_TESTS = ["tests/unit/test_ingest.py", "tests/unit/test_hostile_inputs.py"]
GRAPH_TESTS = ["tests/unit/test_spectral.py", "tests/unit/test_graph.py"]
CONFIDENCE_TESTS = ["tests/unit/test_confidence.py"]
EXTEND_TESTS = ["tests/unit/test_extend.py"]
GRAPH_EM_TESTS = ["tests/unit/test_extend.py", "tests/unit/test_spectral.py",
                  "tests/unit/test_graph.py", "tests/unit/test_confidence.py"]
DEV_CHOICE_TESTS = ["tests/unit/test_dev_choice_units.py", "tests/unit/test_dev_choice.py"]
FANOUT_TESTS = ["tests/unit/test_fanout.py", "tests/unit/test_extend.py"]

#: (python file, qualified function name, tests to run: files or node ids)
TARGETS: list[tuple[str, str, list[str]]] = [
    ("goggles/features/affinity.py", "shard_bounds", AFFINITY_TESTS),
    ("goggles/features/affinity.py", "normalise", AFFINITY_TESTS),
    ("goggles/features/affinity.py", "block_shape", AFFINITY_TESTS),
    ("goggles/features/affinity.py", "affinity_block", AFFINITY_TESTS),
    ("goggles/report/evaluation.py", "confusion_matrix", EVALUATION_TESTS),
    ("goggles/report/evaluation.py", "best_mapping", EVALUATION_TESTS),
    ("goggles/report/evaluation.py", "calibration", EVALUATION_TESTS),
    ("goggles/report/evaluation.py", "expected_calibration_error", EVALUATION_TESTS),
    ("goggles/report/evaluation.py", "evaluate", EVALUATION_TESTS),
    ("goggles/inference/paper_em.py", "AffinityEM._e_step", EM_TESTS),
    ("goggles/inference/paper_em.py", "AffinityEM._m_step", EM_TESTS),
    ("goggles/inference/likelihood.py", "class_log_likelihood", LIKELIHOOD_TESTS),
    ("goggles/inference/likelihood.py", "gaussians_from_statistics", LIKELIHOOD_TESTS),
    ("goggles/inference/likelihood.py", "hard_statistics", LIKELIHOOD_TESTS),
    ("goggles/io/storage.py", "write_bytes", STORAGE_TESTS),
    ("goggles/io/storage.py", "_commit", STORAGE_TESTS),
    ("goggles/io/resume.py", "stage_key", RESUME_TESTS),
    ("goggles/io/resume.py", "StageRecords.finished", RESUME_TESTS),
    ("goggles/io/resume.py", "StageRecords.run", RESUME_TESTS),
    ("goggles/io/images.py", "decode_image", INGEST_TESTS),
    ("goggles/io/images.py", "_covered_pixels", INGEST_TESTS),
    ("goggles/ingest/manifest.py", "precheck", INGEST_TESTS),
    ("goggles/ingest/manifest.py", "inspect_data", INGEST_TESTS),
    ("goggles/ingest/manifest.py", "build_manifest", INGEST_TESTS),
    # the default method, graph EM: its graph, its EM, its confidence, its pass beyond the
    # sample and its choice between the clusters and a classifier of the dev labels
    ("goggles/inference/graph.py", "top_k", GRAPH_TESTS),
    ("goggles/inference/graph.py", "neighbour_lists", GRAPH_TESTS),
    ("goggles/inference/graph.py", "knn_graph", GRAPH_TESTS),
    ("goggles/inference/graph.py", "connected_knn_graph", GRAPH_TESTS),
    ("goggles/inference/graph.py", "_bridges", GRAPH_TESTS),
    ("goggles/inference/graph.py", "spectral_coordinates", GRAPH_TESTS),
    ("goggles/inference/graph.py", "_standardised", GRAPH_TESTS),
    ("goggles/inference/mixture.py", "gaussian_mixture_em", GRAPH_TESTS),
    ("goggles/inference/confidence.py", "neighbour_confidence", CONFIDENCE_TESTS),
    ("goggles/inference/confidence.py", "drifted", CONFIDENCE_TESTS),
    ("goggles/inference/views.py", "graph_sample", GRAPH_EM_TESTS),
    ("goggles/inference/views.py", "reference_parts", GRAPH_EM_TESTS),
    ("goggles/inference/views.py", "nearest_references", GRAPH_EM_TESTS),
    ("goggles/inference/graph_em.py", "GraphEM._fit_graph", GRAPH_EM_TESTS),
    ("goggles/inference/graph_em.py", "GraphEM._graph", GRAPH_EM_TESTS),
    ("goggles/inference/extend.py", "label_block", EXTEND_TESTS),
    ("goggles/inference/extend.py", "label_all", EXTEND_TESTS),
    ("goggles/inference/dev_choice.py", "seed_folds", DEV_CHOICE_TESTS),
    ("goggles/inference/dev_choice.py", "brier", DEV_CHOICE_TESTS),
    ("goggles/inference/dev_choice.py", "tempered", DEV_CHOICE_TESTS),
    ("goggles/inference/dev_choice.py", "fit_temperature", DEV_CHOICE_TESTS),
    ("goggles/inference/dev_choice.py", "choose", DEV_CHOICE_TESTS),
    # graph EM fanned out on a cluster: the plan's sample, the fit on it, a label task per
    # shard from the fit's half-precision state, the gather
    ("goggles/pipeline/fanout.py", "run_plan_sample", FANOUT_TESTS),
    ("goggles/pipeline/fanout.py", "run_fit", FANOUT_TESTS),
    ("goggles/pipeline/fanout.py", "run_label_shard", FANOUT_TESTS),
    ("goggles/pipeline/fanout.py", "run_gather_labels", FANOUT_TESTS),
    ("goggles/inference/extend.py", "_half_rounded", FANOUT_TESTS),
    ("goggles/inference/extend.py", "SampleFit.load", FANOUT_TESTS),
    ("goggles/io/npy.py", "write_array", STORAGE_TESTS),
    ("goggles/io/npy.py", "read_array", STORAGE_TESTS),
]

#: (name, python file, a distinctive piece of the line, what that piece becomes, tests)
NAMED_MUTATIONS: list[tuple[str, str, str, str, list[str]]] = [
    ("affinity: max written at the first column block",
     "goggles/features/affinity.py", "out=out[r0:r0 + r, c0:c0 + m]", "out=out[r0:r0 + r, :m]",
     AFFINITY_TESTS),
    ("evaluation: per-cluster majority instead of Hungarian",
     "goggles/report/evaluation.py", "mapping = {int(c): int(k) for k, c in zip(classes, clusters, "
     "strict=True)}", "mapping = {c: int(confusion[:, c].argmax()) for c in range(num_predicted)}",
     EVALUATION_TESTS),
    ("storage: local commit by copy instead of rename",
     "goggles/io/storage.py", "os.replace(temporary, path)",
     "__import__('shutil').copyfile(temporary, path)", STORAGE_TESTS),
    ("runners: infer resume key without its config",
     "goggles/pipeline/inprocess.py", 'stage_key("infer", shard_keys, configs["infer"].to_dict(), ',
     'stage_key("infer", shard_keys, ', RESUME_TESTS),
    ("inference: E-step without the prior",
     "goggles/inference/paper_em.py", "weighted += log_prior", "pass", EM_TESTS),
    ("graph EM: initial labels beyond the sample by argmin",
     "goggles/inference/extend.py", "initial[others] = votes.argmax(axis=1)",
     "initial[others] = votes.argmin(axis=1)", EXTEND_TESTS),
    ("graph EM: the sampled images' own posteriors not written back",
     "goggles/inference/extend.py", "posteriors[local] = fit.posteriors[inside]", "pass",
     EXTEND_TESTS),
    ("ingest: truncated images accepted",
     "goggles/io/images.py", "ImageFile.LOAD_TRUNCATED_IMAGES = False",
     "ImageFile.LOAD_TRUNCATED_IMAGES = True", INGEST_TESTS),
]

DEFAULT_MAX_PER_FUNCTION = 12
QUICK_MAX_PER_FUNCTION = 3

ROOT = Path(__file__).resolve().parents[1]


# -- mutants ------------------------------------------------------------------------------------

@dataclass
class Mutant:
    target: str  # "file::function" or the named mutation's name
    path: str
    line: int
    description: str
    source: str  # the whole mutated file


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed, survived, timeout (counts as killed), error
    seconds: float
    detail: str = ""


@dataclass
class Tally:
    mutants: int = 0
    killed: int = 0
    survivors: list[Mutant] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
BINOP_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
}


def find_function(tree: ast.Module, qualified: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    """The definition of ``Class.method`` or ``function`` at module level."""
    body: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for part in qualified.split("."):
        node = next((n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef
                                                   | ast.ClassDef) and n.name == part), None)
        if node is None:
            raise LookupError(f"no {qualified!r} (missing {part!r})")
        body = node.body  # type: ignore[attr-defined]
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        raise LookupError(f"{qualified!r} is not a function")
    return node


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
        and isinstance(statement.value.value, str)


def _is_logging(statement: ast.stmt) -> bool:
    """``logger.info(...)``, ``logging.x(...)`` and ``warnings.warn(...)``: mutating a message
    changes nothing the code computes."""
    if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)):
        return False
    func = statement.value.func
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
        func.value.id in ("logger", "logging", "log")


def _skipped_subtrees(function: ast.AST) -> set[int]:
    """ids of nodes not to mutate: docstrings, logging calls, asserts, annotations, f-strings,
    and nested definitions' signatures."""
    skipped: set[int] = set()

    def skip(node: ast.AST) -> None:
        skipped.update(id(n) for n in ast.walk(node))

    for node in ast.walk(function):
        if isinstance(node, ast.stmt) and (_is_docstring(node) or _is_logging(node)
                                           or isinstance(node, ast.Assert)):
            skip(node)
        elif isinstance(node, ast.AnnAssign):
            skip(node.annotation)
        elif isinstance(node, ast.JoinedStr):
            skip(node)
        elif isinstance(node, ast.keyword) and node.arg == "strict":
            skip(node)  # zip(..., strict=True) only matters when the code is already wrong
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            skip(node.args)
            if not isinstance(node, ast.Lambda) and node.returns is not None:
                skip(node.returns)
    return skipped


def _variants(node: ast.AST) -> Iterator[tuple[ast.AST, str]]:
    """(replacement node, short description) for each mutation of ``node`` itself."""
    if isinstance(node, ast.Compare):
        for index, op in enumerate(node.ops):
            swap = COMPARE_SWAPS.get(type(op))
            if swap is not None:
                new = copy.deepcopy(node)
                new.ops[index] = swap()
                yield new, "comparison"
    elif isinstance(node, ast.BinOp | ast.AugAssign):
        swap = BINOP_SWAPS.get(type(node.op))
        if swap is not None:
            new = copy.deepcopy(node)
            new.op = swap()
            yield new, "arithmetic"
    elif isinstance(node, ast.Constant) and not isinstance(node.value, str | bytes):
        value = node.value
        if isinstance(value, bool):
            yield ast.Constant(not value), "boolean"
        elif isinstance(value, int):
            yield ast.Constant(0 if value == 1 else value + 1), "constant"
        elif isinstance(value, float):
            yield ast.Constant(value + 1.0), "constant"
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield new, "and/or"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield copy.deepcopy(node.operand), "not removed"
    elif isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        yield ast.Return(ast.Constant(None)), "return None"
    if isinstance(node, ast.Expr | ast.Assign | ast.AugAssign | ast.AnnAssign) and \
            not _is_docstring(node):
        yield ast.Pass(), "statement deleted"


class Source:
    """A file's text, with edits made at AST positions (UTF-8 byte columns)."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.encode().splitlines(keepends=True)

    def segment(self, node: ast.AST) -> str:
        start, end = self._span(node)
        return b"".join(self.lines)[start:end].decode()

    def _span(self, node: ast.AST) -> tuple[int, int]:
        offsets = [0]
        for line in self.lines:
            offsets.append(offsets[-1] + len(line))
        start = offsets[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
        end = offsets[node.end_lineno - 1] + node.end_col_offset  # type: ignore[attr-defined]
        return start, end

    def replaced(self, node: ast.AST, replacement: ast.AST) -> str:
        start, end = self._span(node)
        new = ast.unparse(replacement)
        if isinstance(replacement, ast.expr) and not isinstance(node, ast.stmt):
            new = f"({new})"
        data = b"".join(self.lines)
        return (data[:start] + new.encode() + data[end:]).decode()


def function_mutants(path: str, qualified: str) -> list[Mutant]:
    """Every mutant of function ``qualified`` in ``path``, in source order."""
    text = (ROOT / path).read_text()
    source = Source(text)
    function = find_function(ast.parse(text), qualified)
    skipped = _skipped_subtrees(function)
    mutants = []
    body = [n for statement in function.body for n in ast.walk(statement)]
    for node in sorted((n for n in body if id(n) not in skipped and hasattr(n, "lineno")),
                       key=lambda n: (n.lineno, n.col_offset)):  # type: ignore[attr-defined]
        for replacement, kind in _variants(node):
            mutated = source.replaced(node, replacement)
            try:
                compile(mutated, path, "exec")
            except SyntaxError:
                continue
            before = " ".join(source.segment(node).split())
            after = " ".join(ast.unparse(replacement).split())
            mutants.append(Mutant(f"{path}::{qualified}", path, node.lineno,  # type: ignore[attr-defined]
                                  f"{kind}: {_short(before)} -> {_short(after)}", mutated))
    return mutants


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def sample(mutants: list[Mutant], limit: int) -> list[Mutant]:
    """At most ``limit`` mutants, spread evenly over the function (deterministic)."""
    if limit <= 0 or len(mutants) <= limit:
        return mutants
    return [mutants[(i * len(mutants)) // limit] for i in range(limit)]


def named_mutant(name: str, path: str, piece: str, becomes: str) -> Mutant:
    text = (ROOT / path).read_text()
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if piece in line]
    if len(hits) != 1:
        raise LookupError(f"{name}: {piece!r} is on {len(hits)} lines of {path}, not one")
    lines[hits[0]] = lines[hits[0]].replace(piece, becomes)
    mutated = "".join(lines)
    compile(mutated, path, "exec")
    return Mutant(name, path, hits[0] + 1, f"named: {_short(piece)} -> {_short(becomes)}",
                  mutated)


# -- running ------------------------------------------------------------------------------------

def run_tests(tests: list[str], timeout: float) -> tuple[str, float, str]:
    """(killed/survived/timeout/error, seconds, last lines) of ``pytest -x`` on ``tests``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started, ""
    seconds = time.monotonic() - started
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    if done.returncode == 0:
        return "survived", seconds, tail
    if done.returncode == 1:
        return "killed", seconds, tail
    return "error", seconds, f"pytest exited {done.returncode}: {tail}"


class Restorer:
    """Keeps the original bytes and times of every file it touches and puts them back."""

    def __init__(self) -> None:
        self.saved: dict[Path, tuple[bytes, int, int]] = {}

    def write(self, relative: str, text: str) -> None:
        path = ROOT / relative
        if path not in self.saved:
            info = path.stat()
            self.saved[path] = (path.read_bytes(), info.st_atime_ns, info.st_mtime_ns)
        path.write_text(text)

    def restore(self, relative: str | None = None) -> None:
        for path, (data, atime, mtime) in self.saved.items():
            if relative is None or path == ROOT / relative:
                if path.read_bytes() != data:
                    path.write_bytes(data)
                os.utime(path, ns=(atime, mtime))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # a kill (SIGTERM) restores the files like Ctrl-C does


def git_status(paths: list[str]) -> str:
    done = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return done.stdout


# -- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"at most {QUICK_MAX_PER_FUNCTION} mutants per function")
    parser.add_argument("--max-per-function", type=int, default=None,
                        help=f"cap per function (default {DEFAULT_MAX_PER_FUNCTION}; 0: all)")
    parser.add_argument("--only", default="", help="only targets whose file::function or "
                        "name contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--no-named", action="store_true", help="skip the named mutations")
    args = parser.parse_args(argv)
    limit = args.max_per_function if args.max_per_function is not None else (
        QUICK_MAX_PER_FUNCTION if args.quick else DEFAULT_MAX_PER_FUNCTION)

    plan: list[tuple[Mutant, list[str]]] = []
    problems: list[str] = []
    for path, qualified, tests in TARGETS:
        if args.only not in f"{path}::{qualified}":
            continue
        try:
            found = function_mutants(path, qualified)
        except (OSError, LookupError, SyntaxError) as error:
            problems.append(f"{path}::{qualified}: {error}")
            continue
        plan += [(m, tests) for m in sample(found, limit)]
    if not args.no_named:
        for name, path, piece, becomes, tests in NAMED_MUTATIONS:
            if args.only not in name and args.only not in path:
                continue
            try:
                plan.append((named_mutant(name, path, piece, becomes), tests))
            except (OSError, LookupError, SyntaxError) as error:
                problems.append(str(error))
    for problem in problems:
        print(f"cannot mutate: {problem}")
    if args.list:
        for mutant, _ in plan:
            print(f"{mutant.path}:{mutant.line}  [{mutant.target}]  {mutant.description}")
        print(f"{len(plan)} mutants")
        return 0

    touched = sorted({mutant.path for mutant, _ in plan})
    status_before = git_status(touched)
    restorer = Restorer()
    outcomes: list[Outcome] = []
    started = time.monotonic()
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        budgets: dict[tuple[str, ...], float] = {}
        for tests in {tuple(t) for _, t in plan}:  # the unmutated code must pass first
            status, seconds, tail = run_tests(list(tests), timeout=1800)
            print(f"baseline {' '.join(tests)}: {status} in {seconds:.1f} s", flush=True)
            if status != "survived":
                problems.append(f"the tests fail on the unmutated code: {' '.join(tests)}\n"
                                f"{tail}")
                continue
            budgets[tests] = 3 * seconds + 30
        for number, (mutant, tests) in enumerate(plan, 1):
            if tuple(tests) not in budgets:
                continue
            restorer.write(mutant.path, mutant.source)
            try:
                status, seconds, tail = run_tests(tests, budgets[tuple(tests)])
            finally:
                restorer.restore(mutant.path)
            outcomes.append(Outcome(mutant, status, seconds, tail))
            print(f"[{number}/{len(plan)}] {status:8s} {seconds:5.1f} s  "
                  f"{mutant.path}:{mutant.line}  {mutant.description}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: reporting the mutants run so far")
    finally:
        restorer.restore()
        signal.signal(signal.SIGTERM, previous_term)
    status_after = git_status(touched)
    clean = status_after == status_before and all(
        path.read_bytes() == data for path, (data, _, _) in restorer.saved.items())
    report(outcomes, problems, time.monotonic() - started)
    print(f"source tree restored: {'yes' if clean else 'NO'} "
          f"(git status of the mutated files {'unchanged' if clean else 'CHANGED'})")
    return 0 if clean else 3


def report(outcomes: list[Outcome], problems: list[str], seconds: float) -> None:
    tallies: dict[str, Tally] = {}
    for outcome in outcomes:
        key = outcome.mutant.target if "::" in outcome.mutant.target else "named mutations"
        tally = tallies.setdefault(key, Tally())
        if outcome.status == "error":
            tally.errors.append(f"{outcome.mutant.path}:{outcome.mutant.line} "
                                f"{outcome.mutant.description}: {outcome.detail}")
            continue
        tally.mutants += 1
        if outcome.status in ("killed", "timeout"):
            tally.killed += 1
        else:
            tally.survivors.append(outcome.mutant)
    print("\n" + "=" * 100)
    print(f"{'target':60s} {'mutants':>8s} {'killed':>7s} {'share':>7s}")
    total = Tally()
    for key, tally in tallies.items():
        share = tally.killed / tally.mutants if tally.mutants else 0.0
        print(f"{key:60s} {tally.mutants:8d} {tally.killed:7d} {share:7.0%}")
        total.mutants += tally.mutants
        total.killed += tally.killed
        total.survivors += tally.survivors
        total.errors += tally.errors
    share = total.killed / total.mutants if total.mutants else 0.0
    print(f"{'total':60s} {total.mutants:8d} {total.killed:7d} {share:7.1%}")
    print(f"run time: {seconds / 60:.1f} min")
    if total.survivors:
        print("\nsurvivors:")
        for mutant in total.survivors:
            print(f"  {mutant.path}:{mutant.line}  {mutant.description}")
    for error in total.errors:
        print(f"error (not counted): {error}")
    for problem in problems:
        print(f"problem: {problem}")


if __name__ == "__main__":
    sys.exit(main())
