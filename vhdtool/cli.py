"""The command line: a thin typer layer over the workflows.

Heavy modules (numpy, construct, azure) are imported inside the commands, so that `--help`
and start-up stay fast. Errors are one line on stderr with the documented exit code.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vhdtool.errors import EXIT_UNUSABLE, VhdError

app = typer.Typer(
    name="vhdtool",
    help=(
        "Validate, convert, snapshot and upload VHD disk images to Azure.\n\n"
        "Exit codes: 0 ok, 1 check found problems, 2 unusable input or usage."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]


class CreateType(str, Enum):
    fixed = "fixed"
    dynamic = "dynamic"


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def size_arg(text: str) -> int:
    from vhdtool.units import parse_size

    return parse_size(text)


@app.command()
def info(
    image: Annotated[Path, typer.Argument(help="VHD file (fixed, dynamic or differencing).")],
    raw: Annotated[bool, typer.Option("--raw", help="Treat IMAGE as a raw disk image.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show every footer and header field, sizes, allocation and the parent chain."""
    from vhdtool.info import describe
    from vhdtool.report import print_info

    data = describe(str(image), raw=raw)
    emit_json(data) if as_json else print_info(data)


@app.command()
def create(
    out: Annotated[Path, typer.Argument(help="The VHD file to create.")],
    size: Annotated[str, typer.Option("--size", help="Virtual size: 20GiB, 512MiB, 1073741824.")],
    disk_type: Annotated[CreateType, typer.Option("--type", help="fixed (sparse on disk) or dynamic.")] = CreateType.fixed,
    block_size: Annotated[str, typer.Option("--block-size", help="Dynamic block size.")] = "2MiB",
    force: ForceOpt = False,
) -> None:
    """Create an empty VHD that qemu-img, libvhdi, Hyper-V and Azure read at exactly SIZE.

    The footer names creator "win " with spec CHS geometry, so every reader (qemu-img 7.2
    included) takes the footer's size as the disk size.
    """
    from vhdtool.create import create as do_create
    from vhdtool.format.footer import DiskType

    kind = DiskType.FIXED if disk_type == CreateType.fixed else DiskType.DYNAMIC
    footer, warnings = do_create(out, size_arg(size), kind, block_size=size_arg(block_size), force=force)
    for w in warnings:
        typer.echo(f"vhdtool: warning: {w}", err=True)
    typer.echo(f"created {out}: {disk_type.value} VHD, {footer.current_size:,} bytes")


@app.command()
def check(
    image: Annotated[Path, typer.Argument(help="The VHD to check.")],
    target: Annotated[str, typer.Option("--target", help="azure (page blob for a VM disk), azure-managed-disk (direct upload) or generic (structure only).")] = "azure",
    as_json: JsonOpt = False,
) -> None:
    """Validate structure and suitability for TARGET before a long upload: every problem, why,
    and the vhdtool command that fixes it. Exit 0 no errors, 1 errors, 2 not a usable VHD."""
    from vhdtool.check import Target, check_image
    from vhdtool.check.render import render_text

    try:
        chosen = Target(target)
    except ValueError:
        names = ", ".join(t.value for t in Target)
        raise VhdError(f"--target: '{target}' is not one of {names}") from None
    report = check_image(image, chosen)
    emit_json(report.to_dict()) if as_json else typer.echo("\n".join(render_text(report)))
    sys.exit(report.exit_code)


@app.command("map")
def map_(
    image: Annotated[Path, typer.Argument(help="VHD file (fixed, dynamic or differencing).")],
    as_json: JsonOpt = False,
    granularity: Annotated[str, typer.Option("--granularity", help="Page size of zero detection (a multiple of 512).")] = "512",
) -> None:
    """List the non-zero runs (start, length) of the virtual disk and how much data it holds.

    Like `qemu-img map`, but zero pages inside allocated blocks do not count as data.
    """
    from vhdtool.mapping import write_map

    write_map(image, sys.stdout, granularity=size_arg(granularity), as_json=as_json)


@app.command()
def snapshot(
    src: Annotated[Path, typer.Argument(help="VHD file to copy (any type; read only).")],
    out: Annotated[Optional[Path], typer.Option("-o", "--output", help="Destination (default: <stem>-snapshot-YYYY-MM-DD[-NN].vhd next to SRC).")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Re-read both files and compare them.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing -o destination.")] = False,
) -> None:
    """Copy an image file byte for byte, sparse where it has holes or zero pages.

    Point in time: a reflink where the filesystem supports it; otherwise the copy is
    discarded if the source changes meanwhile. Nothing appears under the destination name
    until the copy is complete and on disk.
    """
    from vhdtool.snapshot import snapshot as take
    from vhdtool.units import format_size

    done = take(src, out, verify=verify, force=force)
    how = "reflinked" if done.reflinked else f"{format_size(done.data_bytes)} of data written"
    typer.echo(f"snapshot {done.path}: {format_size(done.size)}, {how}{', verified' if done.verified else ''}")


def main() -> None:
    """Console entry point: one-line errors and documented exit codes, never a traceback."""
    try:
        app(standalone_mode=False)
    except VhdError as exc:
        typer.echo(f"vhdtool: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("vhdtool: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        name = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"vhdtool: error: {name}{exc.strerror or exc}", err=True)
        sys.exit(EXIT_UNUSABLE)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(EXIT_UNUSABLE)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
