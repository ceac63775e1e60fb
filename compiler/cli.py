"""The ``squeezer`` command line.

Every user error is one line on stderr and a non-zero exit (2); ``--debug`` shows the traceback.
Tables go to stdout with rich; ``--quiet`` silences progress and tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a {what} integer, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_nonneg_int = _int_at_least(0, "non-negative")


def _console(args):
    from rich.console import Console

    # Pipes and CI logs get a wide table instead of rich's 80-column default.
    width = None if sys.stdout.isatty() else 160
    return Console(quiet=getattr(args, "quiet", False), width=width)


# -- commands ------------------------------------------------------------------------------------
def cmd_compile(args) -> int:
    import squeezer
    from squeezer.bench import read_npz
    from squeezer.frontend import parse_input_shapes

    example = read_npz(args.inputs) if args.inputs else None
    mod = squeezer.compile(
        args.model,
        example_inputs=example,
        target=args.target,
        threads=args.threads,
        input_shapes=parse_input_shapes(args.input_shape),
        dump_ir=args.dump_ir,
        verify=not args.no_verify,
        progress=not args.quiet,
        records=args.records,
        use_records=not args.no_records,
        requant=args.requant,
    )
    out = mod.save(args.output)
    con = _console(args)
    _print_coverage(mod.manifest.get("tuning") or {}, args.no_records)
    from squeezer.float_report import float_fallback_table

    fallback = float_fallback_table(mod.manifest.get("float_fallback") or [])
    if fallback is not None:
        con.print(fallback)
    if "vta" in mod.manifest:
        from squeezer.vta_compile import cpu_fallback_table, vta_layers_table

        for table in (vta_layers_table(mod.manifest["vta"]),
                      cpu_fallback_table(mod.manifest.get("cpu_fallback") or [])):
            if table is not None:
                con.print(table)
    verified = mod.manifest["verified"]
    note = "not verified (--no-verify)" if verified is None else "verified: " + ", ".join(
        f"{k} max abs err {v['max_abs']:.2g}" for k, v in verified.items())
    con.print(f"wrote {out} ({out.stat().st_size:,} bytes); {note}")
    return 0


def _print_coverage(tuning: dict, disabled: bool) -> None:
    """Coverage of the tuning records; untuned kernels are listed loudly on stderr."""
    if disabled:
        print("tuning records not used (--no-records): default schedules", file=sys.stderr)
        return
    key = tuning.get("target_key", "?")
    if not tuning.get("records_found"):
        dirs = ", ".join(tuning.get("record_dirs", [])) or "-"
        print(f"no tuning records for CPU class {key} (looked in {dirs}): compiled with default "
              "schedules; run `squeezer tune` for tuned speed", file=sys.stderr)
        return
    kernels = tuning.get("kernels", [])
    cov = tuning.get("coverage", 0.0)
    tuned = sum(1 for k in kernels if k["tuned"])
    print(f"tuning records ({key}): {tuned}/{len(kernels)} kernels tuned, covering "
          f"{cov:.0%} of the estimated time", file=sys.stderr)
    untuned = [k for k in kernels if not k["tuned"]]
    if untuned and cov < 0.999:
        total = sum(k["calls"] * k["seconds"] for k in kernels) or 1.0
        print(f"WARNING: {len(untuned)} kernel(s) use default schedules (no record, or none "
              "faster than the default):", file=sys.stderr)
        for k in untuned[:10]:
            share = k["calls"] * k["seconds"] / total
            print(f"  {k['name']:40s} {share:6.1%} of est. time ({k['estimate']})",
                  file=sys.stderr)
        if len(untuned) > 10:
            print(f"  ... and {len(untuned) - 10} more (squeezer info --json)", file=sys.stderr)


def cmd_tune(args) -> int:
    from squeezer.frontend import parse_input_shapes
    from squeezer.tune import parse_duration, tune
    from squeezer.tune.progress import TuneDisplay, task_table

    model, example, stem = _tune_model(args.model)
    con = _console(args)
    if args.target != "cpu":
        return _tune_vta(args, model, example, stem, con)
    display = TuneDisplay(con, quiet=args.quiet)
    try:
        result = tune(
            model,
            example_inputs=example,
            input_shapes=parse_input_shapes(args.input_shape),
            trials=args.trials,
            threads=args.threads,
            records=args.records,
            rpc=args.rpc,
            key=args.key,
            time_budget=parse_duration(args.time_budget) if args.time_budget else None,
            warm_start=not args.no_warm_start,
            per_iter=args.per_iter,
            seed=args.seed,
            on_event=display,
            model_name=stem,
            remeasure_defaults=args.remeasure_defaults,
        )
    finally:
        display.close()
    con.print(task_table(result.tasks, f"tuned {stem}: {result.trials_run} trials, "
                                       f"{result.elapsed:.0f}s, stopped by {result.stop_reason}"))
    before, after = result.model_seconds(False), result.model_seconds(True)
    if before and after:
        con.print(f"estimated model latency: default {before * 1e3:.3f} ms -> tuned "
                  f"{after * 1e3:.3f} ms ({before / after:.2f}x)")
    if result.trials_run:
        from squeezer.tune.report import load_report, plot_curves

        png = Path(args.png or f"tune-{stem}.png")
        timeline = load_report(result.records_dir).timeline  # exact trial order, from the file
        plot_curves(result.tasks, png, title=f"{stem} ({result.target_key})", timeline=timeline)
        con.print(f"records in {result.records_dir}; curves in {png}")
    if result.stop_reason == "interrupted":
        print("squeezer tune: interrupted; the measured records are kept, run the same command "
              "to resume", file=sys.stderr)
        return 130
    return 0


def _tune_vta(args, model, example, stem: str, con) -> int:
    """``squeezer tune --target vta[:CONFIG]``: MetaSchedule over the accelerator layers, the
    simulated cycles as the latency; records in <records>/vta-<config>/."""
    from squeezer.errors import SqueezerError
    from squeezer.frontend import parse_input_shapes
    from squeezer.targets.vta.tune import tune_layers
    from squeezer.tune import default_records_root, parse_duration
    from squeezer.tune.progress import task_table
    from squeezer.vta_compile import model_layers

    if args.rpc or args.key:
        raise SqueezerError("--rpc/--key measure on CPU devices; a VTA target is measured on "
                            "its simulator")
    config, layers = model_layers(model, args.target, example,
                                  parse_input_shapes(args.input_shape))
    if not layers:
        raise SqueezerError(f"{stem}: no layer runs on the accelerator (an int8 QDQ model is "
                            "needed: see `squeezer compile --target vta`)")
    con.print(f"{stem}: {len(layers)} accelerator layer(s) on {config.name}")
    result = tune_layers(layers, config, args.trials, args.records or default_records_root(),
                         per_iter=args.per_iter, seed=args.seed,
                         time_budget=parse_duration(args.time_budget) if args.time_budget
                         else None)
    con.print(task_table(result.tasks, f"tuned {stem} for vta-{config.name}: "
                                       f"{result.trials_run} trials, {result.elapsed:.0f}s, "
                                       f"stopped by {result.stop_reason}"))
    con.print(f"records in {result.records_dir}")
    return 0


def _tune_model(spec: str):
    """A model path, or ``zoo:NAME`` (full size) / ``zoo:NAME:small`` (a zoo model from torch)."""
    if not spec.startswith("zoo:"):
        return spec, None, Path(spec).stem
    import numpy as np
    import torch

    from squeezer import zoo
    from squeezer.errors import SqueezerError

    parts = spec.split(":")
    name = parts[1]
    size = parts[2] if len(parts) > 2 else "full"
    try:
        model = zoo.create(name, size=size)
    except ValueError as e:
        raise SqueezerError(f"{spec}: {e}") from None
    if hasattr(model, "condense"):
        model = model.condense().eval()
    shape = zoo.spec(name, size).input_shape
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    return model, (x,), f"{name}-{size}"


def cmd_tune_report(args) -> int:
    from squeezer.tune.report import cmd_tune_report as run

    return run(args, _console(args))


def cmd_tune_pack(args) -> int:
    from squeezer.tune.records import pack
    from squeezer.tune.report import resolve_dir

    out = pack(resolve_dir(args.records))
    con = _console(args)
    for name, (lines, size) in out.items():
        con.print(f"{name}.gz: {lines} lines, {size:,} bytes")
    if not out:
        con.print("nothing to pack")
    return 0


def cmd_farm(args) -> int:
    from squeezer.tune.farm import cmd_farm as run

    return run(args, _console(args))


def cmd_run(args) -> int:
    import numpy as np

    import squeezer
    from squeezer.bench import load_npz_inputs

    mod = squeezer.load(args.artifact, threads=args.threads)
    arrays = load_npz_inputs(args.inputs, mod.inputs)
    results = mod.run(arrays)
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(tmp, **results)
    tmp.replace(out)
    con = _console(args)
    con.print(f"wrote {out}: " + ", ".join(
        f"{k} {list(v.shape)} {v.dtype}" for k, v in results.items()))
    if mod.vta is not None:
        cycles = mod.vta.total_cycles()
        mhz = mod.vta.config.clock_mhz
        con.print(f"VTA ({mod.vta.config.name}, {type(mod.vta.driver).__name__}): "
                  f"{len(mod.vta.layers)} layer(s), {cycles:,} cycles "
                  f"({cycles / mhz / 1e3:.3f} ms at {mhz:g} MHz)")
    return 0


def cmd_bench(args) -> int:
    from squeezer import bench

    con = _console(args)
    title = f"squeezer bench {args.target}"
    if args.target in bench_suites():
        result = bench_suites()[args.target](args, con)
    else:
        result = bench.bench_artifact(args.target, inputs=args.inputs, repeat=args.repeat,
                                      against=args.against, threads=args.threads)
    # A suite returns plain rows (one table) or a Report with its own tables and JSON fields.
    if not isinstance(result, bench.Report):
        result = bench.Report(list(result), [bench.table(result, title=title)])
    for t in result.tables:
        con.print(t)
    if args.json:
        bench.write_json(result.rows, args.json, extra=result.extra)
    return 0


def bench_suites() -> dict:
    from squeezer.bench_lowbit import run_lowbit_suite
    from squeezer.bench_prune import run_prune_suite
    from squeezer.bench_quant import run_quant_suite
    from squeezer.bench_sparse import run_sparse_suite
    from squeezer.bench_vta import run_vta_suite
    from squeezer.bench_zoo import run_zoo_suite

    return {"zoo": run_zoo_suite, "sparse": run_sparse_suite, "prune": run_prune_suite,
            "lowbit": run_lowbit_suite, "quant": run_quant_suite, "vta": run_vta_suite}


def cmd_info(args) -> int:
    from squeezer.artifact import read_artifact
    from squeezer.info import info_tables

    contents = read_artifact(args.artifact)
    if args.json:
        print(json.dumps(contents.manifest, indent=2, sort_keys=True))
        return 0
    con = _console(args)
    for t in info_tables(args.artifact, contents):
        con.print(t)
    return 0


def cmd_compress(args) -> int:
    from squeezer.compression import compress_file

    report = compress_file(args.model, args.recipe, args.output, data=args.data,
                           progress=not args.quiet)
    con = _console(args)
    con.print(report.to_table())
    con.print(f"wrote {args.output}")
    return 0


def cmd_demo(args) -> int:
    from squeezer.demo import run_demo

    run_demo(console=_console(args), threads=args.threads, json_path=args.json)
    return 0


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    # --debug/--quiet work before or after the command; the copy on each command must not reset
    # a flag given before it, hence SUPPRESS there.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks")
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress, no tables")

    parser = argparse.ArgumentParser(
        prog="squeezer", parents=[common],
        description="Compile compressed neural networks into fast, small, verified modules.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", parents=[common], help="compile an ONNX or .pt2 model")
    p.add_argument("model", help="model.onnx or model.pt2 (torch.export.save)")
    p.add_argument("-o", "--output", required=True, help="artifact to write (.sqz)")
    p.add_argument("--target", default="cpu", metavar="cpu|vta[:CONFIG]",
                   help="cpu, or the VTA accelerator (simulated): vta (1x16x16), vta:PRESET or "
                        "vta:config.json")
    p.add_argument("--requant", choices=["int64", "vta32"],
                   help="int8 requantization (default: int64 on cpu; vta32 is the VTA target's "
                        "int32 arithmetic, on cpu its bit-exact reference)")
    p.add_argument("--threads", type=_positive_int, help="runtime threads (default: all cores)")
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224",
                   help="fix a dynamic input's shape (repeatable)")
    p.add_argument("--inputs", help=".npz of inputs used for verification (default: random)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the module after each stage")
    p.add_argument("--no-verify", action="store_true", help="skip the check against the reference")
    p.add_argument("--records", action="append", metavar="DIR",
                   help="tuning record root to apply (repeatable; the user's and the shipped "
                        "records are always searched)")
    p.add_argument("--no-records", action="store_true", help="default schedules only")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("tune", parents=[common],
                       help="search schedules by measured latency, write tuning records")
    p.add_argument("model", help="model.onnx, model.pt2, or zoo:NAME (full-size zoo model)")
    p.add_argument("--target", default="cpu", metavar="cpu|vta[:CONFIG]",
                   help="cpu (measured latency) or vta[:PRESET|CONFIG.json] (simulated cycles)")
    p.add_argument("--trials", type=_nonneg_int, default=2000,
                   help="measured candidates in this run, all tasks together (0: list tasks "
                        "and measure the defaults only)")
    p.add_argument("--records", metavar="DIR", help="record root (default: the user's data dir, "
                   "or $SQUEEZER_RECORDS); records go to DIR/<target-key>/")
    p.add_argument("--rpc", metavar="HOST:PORT", help="measure through this RPC tracker")
    p.add_argument("--key", help="device key of the RPC servers (with --rpc)")
    p.add_argument("--time-budget", metavar="DURATION", help="stop after e.g. 30m, 2h, 90s")
    p.add_argument("--threads", type=_positive_int, help="threads (default: all cores)")
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224")
    p.add_argument("--per-iter", type=_positive_int, default=64, help="candidates per batch")
    p.add_argument("--no-warm-start", action="store_true",
                   help="do not pre-train the cost model on the shipped records")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--remeasure-defaults", action="store_true",
                   help="measure the default schedules again (newest baseline wins)")
    p.add_argument("--png", help="tuning-curve plot to write (default tune-<model>.png)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("tune-report", parents=[common],
                       help="table and PNG of tuning curves, rebuilt from a record directory")
    p.add_argument("records", metavar="DIR", help="record directory (or a root holding one)")
    p.add_argument("--png", help="plot to write (default: tune-report-<key>.png here)")
    p.add_argument("--json", metavar="FILE", help="write the per-task rows as JSON")
    p.set_defaults(func=cmd_tune_report)

    p = sub.add_parser("tune-pack", parents=[common],
                       help="compress a record directory's logs into .jsonl.gz (for shipping)")
    p.add_argument("records", metavar="DIR", help="record directory (or a root holding one)")
    p.set_defaults(func=cmd_tune_pack)

    p = sub.add_parser("farm", parents=[common],
                       help="start/stop a local RPC tracker and servers for measurement")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--servers", type=_positive_int, default=1)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=_positive_int, default=9190, help="tracker port")
    p.add_argument("--key", default="local", help="device key the servers register with")
    p.add_argument("--state", help="state file (default: the user's runtime dir)")
    p.set_defaults(func=cmd_farm)

    p = sub.add_parser("run", parents=[common], help="run an artifact on inputs from an .npz")
    p.add_argument("artifact")
    p.add_argument("--inputs", required=True, help=".npz keyed by input name")
    p.add_argument("--output", required=True, help=".npz to write, keyed by output name")
    p.add_argument("--threads", type=_positive_int)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", parents=[common],
                       help="time an artifact against a peer, or run a suite "
                            "(zoo, sparse, prune, lowbit, quant, vta)")
    p.add_argument("target", metavar="ARTIFACT|SUITE",
                   help="model.sqz, or a suite name: zoo, sparse, prune, lowbit, quant, vta")
    p.add_argument("--inputs", help=".npz of inputs (default: random)")
    p.add_argument("--repeat", type=_positive_int, default=50)
    p.add_argument("--against", help="peer model on the same inputs: .onnx (onnxruntime) or "
                                     ".pt2 (torch)")
    p.add_argument("--threads", type=_positive_int, help="threads for every implementation")
    p.add_argument("--models", nargs="*", help="suite zoo: which models (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="suites sparse, prune and quant: a reduced case list (sparse: the "
                        "goal cases; prune, quant: the MLP and three methods)")
    p.add_argument("--config", metavar="NAME|FILE",
                   help="suite vta: the int8 core (preset name or config .json; default 1x16x16)")
    p.add_argument("--json", metavar="FILE", help="write rows as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", parents=[common], help="manifest and per-layer table")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("compress", parents=[common], help="compress a .pt2 model with a recipe")
    p.add_argument("model", help="model.pt2")
    p.add_argument("--recipe", required=True, help="recipe.yaml")
    p.add_argument("--data", default="digits", help="training data (digits)")
    p.add_argument("-o", "--output", required=True, help=".pt2 to write")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("demo", parents=[common], help="train, compress, compile, benchmark")
    p.add_argument("--threads", type=_positive_int)
    p.add_argument("--json", metavar="FILE", help="write the table as JSON")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("vta", parents=[common], help="VTA accelerator (simulated) tools")
    vta = p.add_subparsers(dest="vta_command", required=True, metavar="VTA_COMMAND")
    q = vta.add_parser("disasm", parents=[common], help="print a VTA program (.npz) as text")
    q.add_argument("program", help="program file written by Program.save")
    q.add_argument("--uops", action="store_true", help="list the micro-ops each LOAD UOP loads")
    q.set_defaults(func=cmd_vta_disasm)
    return parser


def cmd_vta_disasm(args) -> int:
    from squeezer.targets.vta.program import Program, disasm

    print(disasm(Program.load(args.program), uops=args.uops), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = getattr(args, "debug", False)
    args.quiet = getattr(args, "quiet", False)
    import warnings

    from squeezer.errors import SqueezerError

    # torch.export's pytree deprecation notice, printed once per export: noise for our users.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)

    try:
        return args.func(args)
    except SqueezerError as err:
        if args.debug:
            raise
        print(f"squeezer {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"squeezer {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an internal error: still one line unless --debug
        if args.debug:
            raise
        print(f"squeezer {args.command}: internal error: {type(err).__name__}: {err} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
