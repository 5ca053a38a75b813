"""Running the command line inside a test: one helper for every CLI test file."""

from __future__ import annotations

from diffusionlens.cli import main


def run_cli(args, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``diffusionlens *args``, the output captured since the call began."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse exits on usage errors and --help
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err
