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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


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
    )
    out = mod.save(args.output)
    con = _console(args)
    verified = mod.manifest["verified"]
    note = "not verified (--no-verify)" if verified is None else "verified: " + ", ".join(
        f"{k} max abs err {v['max_abs']:.2g}" for k, v in verified.items())
    con.print(f"wrote {out} ({out.stat().st_size:,} bytes); {note}")
    return 0


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
    _console(args).print(f"wrote {out}: " + ", ".join(
        f"{k} {list(v.shape)} {v.dtype}" for k, v in results.items()))
    return 0


def cmd_bench(args) -> int:
    from squeezer import bench

    con = _console(args)
    if args.target in bench_suites():
        rows = bench_suites()[args.target](args, con)
        title = f"squeezer bench {args.target}"
    else:
        rows = bench.bench_artifact(args.target, inputs=args.inputs, repeat=args.repeat,
                                    against=args.against, threads=args.threads)
        title = f"squeezer bench {args.target}"
    con.print(bench.table(rows, title=title))
    if args.json:
        bench.write_json(rows, args.json)
    return 0


def bench_suites() -> dict:
    from squeezer.bench_zoo import run_zoo_suite

    return {"zoo": run_zoo_suite}


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
    p.add_argument("--target", default="cpu", choices=["cpu"])
    p.add_argument("--threads", type=_positive_int, help="runtime threads (default: all cores)")
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224",
                   help="fix a dynamic input's shape (repeatable)")
    p.add_argument("--inputs", help=".npz of inputs used for verification (default: random)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the module after each stage")
    p.add_argument("--no-verify", action="store_true", help="skip the check against the reference")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", parents=[common], help="run an artifact on inputs from an .npz")
    p.add_argument("artifact")
    p.add_argument("--inputs", required=True, help=".npz keyed by input name")
    p.add_argument("--output", required=True, help=".npz to write, keyed by output name")
    p.add_argument("--threads", type=_positive_int)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", parents=[common],
                       help="time an artifact against a peer, or run a suite (zoo)")
    p.add_argument("target", metavar="ARTIFACT|SUITE", help="model.sqz, or a suite name: zoo")
    p.add_argument("--inputs", help=".npz of inputs (default: random)")
    p.add_argument("--repeat", type=_positive_int, default=50)
    p.add_argument("--against", help="peer model on the same inputs: .onnx (onnxruntime) or "
                                     ".pt2 (torch)")
    p.add_argument("--threads", type=_positive_int, help="threads for every implementation")
    p.add_argument("--models", nargs="*", help="suite zoo: which models (default: all)")
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
    return parser


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
