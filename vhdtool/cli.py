"""The command line: a thin typer layer over the workflows.

Heavy modules (numpy, construct, azure) are imported inside the commands, so that `--help`
and start-up stay fast. Errors are one line on stderr with the documented exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer

from vhdtool.errors import EXIT_UNUSABLE, NotVhdError, VhdError
from vhdtool.redaction import one_line, redact, shown

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

HELP = {"help_option_names": ["-h", "--help"]}


class CommandGroup(typer.core.TyperGroup):
    """A group whose usage errors name its commands: all of them when none is given (click
    would print the whole help), the closest when the name is unknown, as git does."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args in ([], ["--"]) and not ctx.resilient_parsing:
            ctx.fail(f"missing command: one of {', '.join(self.list_commands(ctx))}")
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        import click

        name = args[0]  # click's parser may use `args` up before it fails
        try:
            return super().resolve_command(ctx, args)
        except click.NoSuchOption:
            raise  # an option-like name: click suggests options itself
        except click.UsageError as exc:
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            exc.message += f" Did you mean {close[0]!r}?" if close else ""
            raise


app = typer.Typer(
    name="vhdtool",
    help=(
        "Validate, convert, snapshot and upload VHD and VHDX disk images to Azure.\n\n"
        "Exit codes: 0 ok, 1 check found problems, 2 unusable input or usage, 3 network gave up "
        "after retries (re-run to resume), 130 interrupted (Ctrl-C)."
    ),
    cls=CommandGroup,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help, as qemu-img and az print theirs: typer's rich panels import rich's
    # markdown, syntax and traceback modules, 70 ms before the first line
    rich_markup_mode=None,
    context_settings=HELP,
)


def show_version(value: bool) -> None:
    if value:
        from vhdtool import __version__  # not the installed metadata: works from a clone too

        typer.echo(f"vhdtool {__version__}")
        raise typer.Exit()


def set_quiet(value: bool) -> bool:
    # Called with the default too: a second run in the same process starts un-quiet.
    from vhdtool.engine import progress

    progress.quiet = value
    return value


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.", callback=show_version, is_eager=True)] = False,
) -> None:
    """Validate, convert, snapshot and upload VHD and VHDX disk images to Azure."""


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout (shapes: see README).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.", callback=set_quiet)]
AlignOpt = Annotated[bool, typer.Option("--align", help="Round a virtual size that is not whole MiB up to the next MiB, as Azure requires.")]
AuthOpt = Annotated[str, typer.Option("--auth", help="Azure: auto (the SAS or key given, else Azure AD sign-in for an https URL), login (Azure AD: environment service principal, managed identity or `az login`), anonymous (public container).")]
AllowHttpOpt = Annotated[bool, typer.Option("--allow-http", help="Azure: allow a SAS, key or token to go over plain http to a host that is not loopback.")]


def access(auth: str, allow_http: bool) -> Any:
    """The Azure access options of a command (--auth, --allow-http)."""
    from vhdtool.azure.location import Access

    return Access(auth, allow_http)


class CreateType(str, Enum):
    fixed = "fixed"
    dynamic = "dynamic"


def echo_lines(lines: Iterable[str]) -> None:
    """A text report, each line kept one line whatever it quotes from an image, a file name or
    a store record (redaction.one_line)."""
    typer.echo("\n".join(one_line(line) for line in lines))


def emit_json(data: Any) -> None:
    import json  # here: only --json needs it

    json.dump(data, sys.stdout, indent=2, default=str)  # default: paths
    sys.stdout.write("\n")


def result_dict(result: Any, **extra: Any) -> dict[str, Any]:
    """A workflow's result dataclass as the JSON object a result command prints."""
    from dataclasses import asdict

    return {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}, **extra}


def warn(message: str) -> None:
    typer.echo(f"vhdtool: warning: {one_line(message)}", err=True)


def size_arg(text: str) -> int:
    """A size the user typed; one typed in decimal units (1GB) is said to be decimal."""
    from vhdtool.units import decimal_note, parse_size

    size = parse_size(text)
    if note := decimal_note(text):
        warn(note)
    return size


@app.command()
def info(
    image: Annotated[str, typer.Argument(help="VHD or VHDX file (fixed, dynamic or differencing), a raw image, or a blob URL (with a SAS token, or signed in: see --auth).")],
    raw: Annotated[bool, typer.Option("--raw", help="Treat IMAGE as a raw disk image.")] = False,
    as_json: JsonOpt = False,
    auth: AuthOpt = "auto",
    allow_http: AllowHttpOpt = False,
) -> None:
    """Show every footer and header field, sizes, allocation and the parent chain.

    For a blob URL: the blob's properties and footer, read with two ranged GETs."""
    from vhdtool.azure import is_blob_url
    from vhdtool.workflows.report import print_info

    if is_blob_url(image):
        from vhdtool.workflows.info import describe_blob

        data = describe_blob(image, access(auth, allow_http))
    else:
        from vhdtool.workflows.info import describe

        try:
            data = describe(image, raw=raw)
        except (VhdError, OSError) as exc:
            if not as_json:
                raise
            # As check --json: a JSON answer even when the file is unusable.
            message = exc.detail if isinstance(exc, VhdError) else exc.strerror or str(exc)
            emit_json({"path": redact(image), "error": redact(message), "exit_code": EXIT_UNUSABLE})
            sys.exit(EXIT_UNUSABLE)
    emit_json(data) if as_json else print_info(data)
    sys.exit(data.get("exit_code", 0))  # 1: a damaged image, shown with its findings


@app.command()
def create(
    out: Annotated[Path, typer.Argument(help="The VHD file to create.")],
    size: Annotated[str, typer.Option("--size", help="Virtual size: 20GiB, 512MiB, 1073741824.")],
    disk_type: Annotated[CreateType, typer.Option("--type", help="fixed (sparse on disk) or dynamic.")] = CreateType.fixed,
    block_size: Annotated[str | None, typer.Option("--block-size", help="Dynamic block size (default 2MiB).")] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create an empty VHD that qemu-img, libvhdi, Hyper-V and Azure read at exactly SIZE.

    The footer names creator "win " with spec CHS geometry, so every reader (qemu-img 7.2
    included) takes the footer's size as the disk size.
    """
    from vhdtool.workflows.create import create as do_create
    from vhdtool.format.vhd.footer import DiskType

    kind = DiskType.FIXED if disk_type == CreateType.fixed else DiskType.DYNAMIC
    footer, warnings = do_create(out, size_arg(size), kind, force=force,
                                  block_size=None if block_size is None else size_arg(block_size))
    for w in warnings:
        warn(w)
    if as_json:
        emit_json({"path": str(out), "type": disk_type.value, "virtual_size": footer.current_size, "warnings": warnings})
    else:
        typer.echo(f"created {shown(out)}: {disk_type.value} VHD, {footer.current_size:,} bytes")


@app.command()
def resize(
    image: Annotated[Path, typer.Argument(help="Fixed or dynamic VHD, resized in place unless -o is given.")],
    size: Annotated[Optional[str], typer.Option("--size", help="New virtual size: 20GiB, 1073741824.")] = None,
    align: AlignOpt = False,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Resize a sparse copy written here instead.")] = None,
    allow_shrink: Annotated[bool, typer.Option("--allow-shrink", help="Allow a smaller size when what is cut off is all zeros.")] = False,
    discard_data: Annotated[bool, typer.Option("--discard-data", help="Shrink even when what is cut off holds data (it is lost).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing OUTPUT.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Change the virtual size without copying data.

    A fixed image grows by a hole; a dynamic one within its BAT's room. The footer keeps
    its UUID."""
    from vhdtool.workflows.resize import AZURE_ALIGN
    from vhdtool.workflows.resize import resize as do_resize
    from vhdtool.units import format_change, format_size

    done = do_resize(
        image,
        size=None if size is None else size_arg(size),
        align=AZURE_ALIGN if align else None,
        out=output,
        allow_shrink=allow_shrink or discard_data,
        discard_data=discard_data,
        force=force,
    )
    if as_json:
        emit_json(result_dict(done))
    elif done.old_size == done.new_size and output is None:
        typer.echo(f"{shown(image)}: already {format_size(done.new_size)}, nothing to do")
    else:
        typer.echo(f"resized {shown(done.path)}: {format_change(done.old_size, done.new_size)}")


@app.command("map")
def map_(
    image: Annotated[Path, typer.Argument(help="VHD or VHDX file (fixed, dynamic or differencing).")],
    as_json: JsonOpt = False,
    granularity: Annotated[str, typer.Option("--granularity", help="Page size of zero detection (a multiple of 512, at most 4MiB).")] = "512",
    quiet: QuietOpt = False,
) -> None:
    """List the non-zero runs (start, length) of the virtual disk and how much data it holds.

    Like `qemu-img map`, but zero pages inside allocated blocks do not count as data.
    """
    from vhdtool.workflows.mapping import write_map

    write_map(image, sys.stdout, granularity=size_arg(granularity), as_json=as_json)


@app.command()
def snapshot(
    src: Annotated[Path, typer.Argument(help="VHD or VHDX file to copy (any type; read only).")],
    out: Annotated[Optional[Path], typer.Option("-o", "--output", help="Destination (default: <stem>-snapshot-YYYY-MM-DD[-NN].vhd next to SRC).")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Re-read both files and compare them.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing -o destination.")] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy an image file byte for byte, sparse where it has holes or zero pages.

    Point in time: a reflink where the filesystem supports it; otherwise the copy is
    discarded if the source changes meanwhile. Nothing appears under the destination name
    until the copy is complete and on disk.
    """
    from vhdtool.workflows.snapshot import snapshot as take
    from vhdtool.units import format_size

    done = take(src, out, verify=verify, force=force)
    if as_json:
        return emit_json(result_dict(done))
    how = "reflinked" if done.reflinked else f"{format_size(done.data_bytes)} written"  # file bytes: footer too
    typer.echo(f"snapshot {shown(done.path)}: {format_size(done.size)}, {how}{', verified' if done.verified else ''}")


class ConvertTo(str, Enum):
    fixed = "fixed"
    dynamic = "dynamic"
    raw = "raw"


class ConvertFrom(str, Enum):
    vhd = "vhd"
    raw = "raw"


RawOpt = Annotated[bool, typer.Option("--raw", help="Read the source as a raw disk image (the same as --from raw).")]
FromOpt = Annotated[Optional[ConvertFrom], typer.Option("--from", help="Source format; default: VHD, or raw when the file has no VHD footer and its name ends in .raw/.img.")]


def source_format(from_: Optional[ConvertFrom], raw: bool) -> Optional[str]:
    if raw and from_ == ConvertFrom.vhd:
        raise VhdError("--raw and --from vhd contradict each other")
    return "raw" if raw else from_.value if from_ else None


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Source image: fixed, dynamic or differencing VHD or VHDX, or raw.")],
    dest: Annotated[Path, typer.Argument(help="Output file (written atomically, sparse).")],
    to: Annotated[ConvertTo, typer.Option("--to", help="Output format.")],
    from_: FromOpt = None,
    block_size: Annotated[Optional[str], typer.Option("--block-size", help="Block size of a dynamic output (default 2MiB).")] = None,
    keep_uuid: Annotated[bool, typer.Option("--keep-uuid", help="Keep the source's UUID instead of a new one. Keep it when differencing children must still match this image as their parent (they find it by UUID); otherwise a new UUID keeps the copy distinct from the original.")] = False,
    raw: RawOpt = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Convert any image to a fixed, dynamic or raw one, writing only non-zero data.

    A differencing chain is resolved through its parents; sector bitmaps are honoured.
    """
    from vhdtool.workflows.convert import Format
    from vhdtool.workflows.convert import convert as do_convert
    from vhdtool.units import format_size

    done = do_convert(
        src, dest, Format(to.value), from_=source_format(from_, raw),
        block_size=None if block_size is None else size_arg(block_size), keep_uuid=keep_uuid, force=force,
    )
    for message in done.warnings:
        warn(message)
    if as_json:
        return emit_json(result_dict(done, format=to.value))
    typer.echo(f"wrote {shown(done.path)}: {to.value}, {format_size(done.virtual_size)} virtual, "
               f"{format_size(done.data_bytes)} of data")


@app.command()
def check(
    images: Annotated[list[Path], typer.Argument(help="The VHD or VHDX images to check.", metavar="IMAGE...")],
    target: Annotated[str, typer.Option("--target", help="azure (page blob for a VM disk), azure-managed-disk (direct upload) or generic (structure only).")] = "azure",
    as_json: JsonOpt = False,
) -> None:
    """Validate structure and suitability for TARGET before a long upload.

    Every problem, why, and the vhdtool command that fixes it. Exit 0 no errors, 1 errors,
    2 not a usable VHD; with several images, the worst of theirs. --json: one image's report,
    or a list of them when several are given."""
    from vhdtool.workflows.check import Target, check_image
    from vhdtool.workflows.check.render import render_text

    try:
        chosen = Target(target)
    except ValueError:
        names = ", ".join(t.value for t in Target)
        raise VhdError(f"--target: '{target}' is not one of {names}") from None
    reports = [check_image(image, chosen) for image in images]
    if as_json:
        dicts = [report.to_dict() for report in reports]
        emit_json(dicts[0] if len(dicts) == 1 else dicts)
    else:
        echo_lines([line for n, report in enumerate(reports) for line in ([""] if n else []) + render_text(report)])
    sys.exit(max(report.exit_code for report in reports))


@app.command()
def prepare(
    src: Annotated[Path, typer.Argument(help="Any image: fixed, dynamic or differencing VHD or VHDX, or raw.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output file (default: <stem>-azure.vhd next to SRC).")] = None,
    target: Annotated[str, typer.Option("--target", help="azure (page blob for a VM disk) or azure-managed-disk (direct upload).")] = "azure",
    from_: FromOpt = None,
    raw: RawOpt = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Make an image Azure accepts, in one step, and check the result.

    Fixed, a whole number of MiB, a fresh valid footer, written in one pass. A source that
    already passes is left alone (with -o: copied). Exit code as check's: 0 passes, 1 errors
    remain, 2 unusable input."""
    from vhdtool.workflows.check import Target
    from vhdtool.workflows.check.render import render_text
    from vhdtool.workflows.prepare import prepare as do_prepare
    from vhdtool.units import format_change

    if target not in (Target.AZURE.value, Target.AZURE_MANAGED_DISK.value):
        raise VhdError(f"--target: '{target}' is not one of azure, azure-managed-disk")
    done = do_prepare(src, output, target=Target(target), from_=source_format(from_, raw), force=force)
    if as_json:
        emit_json({"source": str(src), "rule": done.rule, "output": done.output and str(done.output),
                   "old_size": done.old_size, "new_size": done.new_size, "report": done.report.to_dict()})
        sys.exit(done.report.exit_code)
    typer.echo(f"{shown(src)}: {done.rule}")
    if done.output is None:
        typer.echo(f"{shown(src)} already passes check --target {target}: nothing written")
    else:
        typer.echo(f"wrote {shown(done.output)}: fixed, {format_change(done.old_size, done.new_size)}")
    echo_lines(render_text(done.report))
    sys.exit(done.report.exit_code)


ContainerOpt = Annotated[Optional[str], typer.Option("--container", help="Container of the blob (with --name and a connection string).")]
NameOpt = Annotated[Optional[str], typer.Option("--name", help="Blob name in --container.")]
ConnOpt = Annotated[Optional[str], typer.Option("--connection-string", help="Azure storage connection string; default: $AZURE_STORAGE_CONNECTION_STRING (safer: not shown in the process list).")]


def note(message: str) -> None:
    typer.echo(f"vhdtool: {one_line(message)}", err=True)


@app.command()
def upload(
    src: Annotated[Path, typer.Argument(help="VHD or VHDX to upload: fixed, dynamic or differencing (read only), streamed as the fixed VHD it represents.")],
    dest: Annotated[Optional[str], typer.Argument(help="Blob URL with a SAS token, or without one to sign in with Azure AD (or use --container/--name).")] = None,
    container: ContainerOpt = None,
    name: NameOpt = None,
    connection_string: ConnOpt = None,
    workers: Annotated[int, typer.Option("--workers", help="Parallel Put Page requests.")] = 16,
    overwrite: Annotated[bool, typer.Option("--force", "--overwrite", help="Replace a blob that holds something else (never one leased by someone else).")] = False,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Start again from an empty blob even if it holds part of this upload.")] = False,
    md5: Annotated[bool, typer.Option("--md5/--no-md5", help="Compute and set the blob's Content-MD5 (hashes every zero of the disk; each Put Page carries its own MD5 either way).")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Afterwards, check the blob's page ranges and read its data back to compare MD5s.")] = False,
    auth: AuthOpt = "auto",
    allow_http: AllowHttpOpt = False,
    align: AlignOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    managed_disk: Annotated[bool, typer.Option("--managed-disk", help="DEST is a managed disk created for upload (az disk create --for-upload): write pages only; progress kept in a local journal. Implied when the SAS cannot read the blob.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be sent (bytes, requests, blob size); contact nothing.")] = False,
    cap_mbps: Annotated[Optional[float], typer.Option("--cap-mbps", help="Bandwidth cap in megabits per second.")] = None,
    since: Annotated[Optional[Path], typer.Option("--since", help="DEST holds this older image (uploaded by vhdtool): send only the pages where SRC differs, clear those that became zero.")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="SRC is a differencing image whose parent was uploaded to this blob URL: copy it to DEST server-side, then send only SRC's own sectors.")] = None,
) -> None:
    """Upload SRC to an Azure page blob as a fixed VHD, sending only its non-zero 512-byte pages.

    Dynamic and differencing images are converted on the fly (no temporary file). An
    interrupted upload resumes where it stopped when run again. Exit codes: 0 uploaded,
    2 unusable input or refused blob, 3 interrupted by network or service failures (run
    the same command again to resume).
    """
    from vhdtool.azure.address import blob_from_args
    from vhdtool.azure.location import BlobLocation
    from vhdtool.units import format_size, plural
    from vhdtool.workflows.upload import UploadOptions
    from vhdtool.workflows.upload import upload as do_upload

    location = blob_from_args(dest, container, name, connection_string, access(auth, allow_http))
    options = UploadOptions(workers=workers, overwrite=overwrite, resume=not no_resume, md5=md5,
                            verify=verify, align=align, managed_disk=managed_disk, dry_run=dry_run,
                            cap_mbps=cap_mbps, since=since, log=note,
                            base=BlobLocation.from_url(base, access(auth, allow_http)) if base is not None else None)
    with resumable("upload"):
        done = do_upload(src, location, options)
    if as_json:
        return emit_json(result_dict(done, dry_run=dry_run))
    if dry_run:
        typer.echo(f"would upload {shown(src)} -> {shown(location)} ({done.blob_size:,} byte page blob)")
        typer.echo(f"  would send: {done.sent_bytes:,} bytes of page data in {plural(done.requests, 'Put Page request')}")
        typer.echo(f"  skipped:    {plural(done.zero_pages, 'zero page')}")
        return
    if done.already_complete and not done.sent_bytes:
        typer.echo(f"{shown(location)} already holds this upload of {shown(src)}: nothing sent")
    else:
        kind = "managed disk" if done.managed_disk else "page blob"
        typer.echo(f"uploaded {shown(src)} -> {shown(location)} ({format_size(done.blob_size)} {kind}"
                   f"{', resumed' if done.resumed else ''})")
        typer.echo(f"  sent:     {done.sent_bytes:,} bytes of page data in {plural(done.requests, 'Put Page request')}")
        if since is not None or base is not None:
            typer.echo(f"  cleared:  {plural(done.cleared, 'Clear Pages request')} (pages that became zero)")
        else:
            typer.echo(f"  skipped:  {plural(done.zero_pages, 'zero page')}; {done.present_bytes:,} bytes already on the blob")
    typer.echo(f"  retries:  {done.retries}")
    if done.content_md5:
        typer.echo(f"  md5:      {done.content_md5}")
    if done.sparse_digest:
        typer.echo(f"  digest:   {done.sparse_digest} (sparse SHA-256)")
    if done.verified:
        typer.echo("  verified: page ranges and MD5 match")
    typer.echo(f"  time:     {done.seconds:.2f} s")


@app.command()
def download(
    src: Annotated[Optional[str], typer.Argument(help="Blob URL with a SAS token, or without one to sign in with Azure AD (or use --container/--name).")] = None,
    dest: Annotated[Optional[Path], typer.Argument(help="Local file to write (sparse, atomic).")] = None,
    container: ContainerOpt = None,
    name: NameOpt = None,
    connection_string: ConnOpt = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Local file to write, when the blob is given by --container/--name.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Parallel ranged reads.")] = 4,
    force: ForceOpt = False,
    no_check_md5: Annotated[bool, typer.Option("--no-check-md5", help="Skip the whole-blob Content-MD5 check (it hashes every zero of the disk); each range and the sparse digest are still checked.")] = False,
    auth: AuthOpt = "auto",
    allow_http: AllowHttpOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Download a page blob into a sparse local file, fetching only its page ranges.

    DEST appears only when complete, checked against the blob's Content-MD5 if it has one;
    an interrupted download resumes when run again. Exit codes: 0 done, 2 unusable input,
    3 interrupted by network or service failures (run again to resume).
    """
    from vhdtool.azure import is_blob_url
    from vhdtool.azure.address import blob_from_args
    from vhdtool.workflows.download import DownloadOptions
    from vhdtool.workflows.download import download as do_download
    from vhdtool.units import format_size, plural

    if src is not None and not is_blob_url(src) and dest is None and output is None:
        src, output = None, Path(src)  # `download --container C --name N FILE`
    target = dest or output
    if target is None or (dest and output):
        raise VhdError("give exactly one local destination file (DEST or -o)")
    location = blob_from_args(src, container, name, connection_string, access(auth, allow_http))
    if workers < 1:
        raise VhdError("--workers must be at least 1")
    with resumable("download"):
        done = do_download(location, target, DownloadOptions(workers=workers, force=force, check_md5=not no_check_md5,
                                                             log=note))
    if as_json:
        return emit_json(result_dict(done))
    checked = ("Content-MD5 checked" if done.md5_checked else
               "Content-MD5 not checked" if no_check_md5 else "no Content-MD5 on the blob")
    if done.digest_checked:
        checked += ", sparse digest checked"
    typer.echo(f"downloaded {location} -> {done.path}: {format_size(done.size)}, "
               f"{format_size(done.fetched_bytes)} fetched, {format_size(done.written_bytes)} of data written, "
               f"{checked}, {plural(done.retries, 'retry', 'retries')}, {done.seconds:.2f} s")


@app.command()
def bench(
    size: Annotated[str, typer.Option("--size", help="Virtual size of each synthetic image.")] = "4GiB",
    data: Annotated[float, typer.Option("--data", help="Percent of each image holding random data.")] = 10.0,
    folder: Annotated[Optional[Path], typer.Option("--dir", help="Where the temporary folder goes (default: the system's temp folder). Choose the disk you will work on.")] = None,
    runs: Annotated[int, typer.Option("--runs", help="Measured runs of each command, after one warm-up; the median is shown.")] = 3,
    as_json: JsonOpt = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw the ratios as a PNG chart (needs: pip install 'vhdtool[plot]').")] = None,
    blob: Annotated[Optional[str], typer.Option("--blob", help="Blob URL with a SAS token, for a blob that does not exist yet: also measure upload (the blob is deleted afterwards).")] = None,
) -> None:
    """Measure vhdtool against the tools on PATH (cp, qemu-img) on this machine.

    Writes a sparse fixed, a dense fixed and a dynamic VHD in a temporary folder, times scan,
    map, snapshot, convert --to fixed (and upload, with --blob) by vhdtool and by each peer,
    interleaved, and shows median wall time, peak memory and vhdtool's time over each peer's.
    A peer not on PATH is reported as missing. Everything created is removed, even on Ctrl-C.
    """
    import tempfile

    from vhdtool.workflows.bench.render import as_json as report_json
    from vhdtool.workflows.bench.render import ratio_bars, table
    from vhdtool.workflows.bench.run import BenchOptions
    from vhdtool.workflows.bench.run import bench as run_bench

    if plot is not None:
        from vhdtool.workflows.bench.plot import require_matplotlib

        require_matplotlib("--plot")
        if not plot.parent.is_dir():
            raise VhdError("folder does not exist", plot.parent)
    report = run_bench(BenchOptions(size_arg(size), data, runs, folder or Path(tempfile.gettempdir()), blob))
    emit_json(report_json(report)) if as_json else echo_lines(table(report))
    if plot is not None:
        from vhdtool.workflows.bench.plot import ratio_chart

        bars = ratio_bars(report)
        if not bars:
            raise VhdError("nothing to plot: no peer tool was found on PATH")
        ratio_chart(bars, "vhdtool bench: vhdtool's time over each peer's", plot)


image_app = typer.Typer(
    name="image",
    cls=CommandGroup,
    rich_markup_mode=None,
    help=(
        "VM images as Azure keeps them: capture a VM's disks as a reusable image, list, show, "
        "deploy, delete, list and delete VMs, and find (and delete) orphaned VHDs.\n\n"
        "Store: --store PATH (a local folder) or --store URL (an Azure container URL with a SAS "
        "token), or --container NAME with a connection string; default $VHDTOOL_STORE, else "
        "$XDG_DATA_HOME/vhdtool/store (~/.local/share/vhdtool/store).\n\n"
        "Exit codes: 0 ok, 1 a disk fails check --target azure, 2 unusable input or usage, "
        "3 transfer interrupted."
    ),
)
app.add_typer(image_app)

StoreOpt = Annotated[Optional[str], typer.Option("--store", help="Local store folder, or Azure container URL (with a SAS token, or signed in: see --auth) (default: $VHDTOOL_STORE, else ~/.local/share/vhdtool/store).")]
StoreContainerOpt = Annotated[Optional[str], typer.Option("--container", help="Azure store: the container, with --connection-string or $AZURE_STORAGE_CONNECTION_STRING.")]


def image_store(store: Optional[str], container: Optional[str], connection_string: Optional[str], azure: Any) -> Any:
    from vhdtool.workflows.store import open_store

    return open_store(store, container=container, connection_string=connection_string, access=azure)


@image_app.command("capture")
def image_capture(
    name: Annotated[str, typer.Argument(help="Image name: letters, digits, '.', '_', '-'.")],
    os_disk: Annotated[str, typer.Option("--os-disk", help="The OS disk: a VHD file, or a page blob URL (Azure store).")],
    os_state: Annotated[str, typer.Option("--os-state", help="generalized (sysprep / waagent -deprovision; the VM is stopped) or specialized (may be running: crash-consistent).")],
    os_type: Annotated[Optional[str], typer.Option("--os-type", help="windows or linux. Default: what the OS disk's partition types say, when they say one OS (a value against them is warned about).", show_default=False)] = None,
    hyper_v_generation: Annotated[Optional[str], typer.Option("--hyper-v-generation", help="V1 (BIOS) or V2 (UEFI), as az takes it. Default: what the OS disk's partition table says (unknown without one: recorded as null, with a warning); a value the disk cannot boot with is refused.", show_default=False)] = None,
    data_disk: Annotated[Optional[list[str]], typer.Option("--data-disk", help="LUN=SRC[,caching=ReadOnly|ReadWrite|None] (caching default None); repeat for each data disk.")] = None,
    os_caching: Annotated[str, typer.Option("--os-caching", help="Host caching of the OS disk: ReadOnly, ReadWrite or None.")] = "ReadWrite",
    label: Annotated[Optional[str], typer.Option("--label", help="A description kept with the image.")] = None,
    source_vm: Annotated[Optional[str], typer.Option("--source-vm", help="The VM the disks belong to, kept as microsoftazurecompute_capturedvmkey (default: a key of the disk set).")] = None,
    md5: Annotated[Optional[bool], typer.Option("--md5/--no-md5", help="Set Content-MD5 on copies that have none. Default: on in an Azure store (an upload hashes in its one pass), off in a local store (MD5 hashes every byte, holes too: ~1.2 s per GiB; --md5 does it while copying).", show_default=False)] = None,
    store: StoreOpt = None,
    container: StoreContainerOpt = None,
    connection_string: ConnOpt = None,
    auth: AuthOpt = "auto",
    allow_http: AllowHttpOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Capture a VM's disks as image NAME, as Azure does.

    Each disk must pass check --target azure. All are then copied into the store at once, as
    NAME-os-YYYY-MM-DD.vhd and NAME-datadisk-LUN-YYYY-MM-DD.vhd (UTC date, -NN added if the
    name is taken), and the image record is written last, with the Hyper-V generation and OS
    type the OS disk's partition table gives unless told. A generalized disk in use (leased
    blob, file open for writing) is refused. On failure the copies are deleted; if the process
    is killed, the image never appears and the next capture (or image orphans --clean)
    deletes its copies.
    """
    from vhdtool.workflows.vmimage.capture import CaptureRequest, capture
    from vhdtool.workflows.vmimage.disks import DiskSpec, parse_data_disk
    from vhdtool.workflows.vmimage.names import CACHING, choice
    from vhdtool.workflows.vmimage.render import image_lines

    request = CaptureRequest(
        name, DiskSpec(None, os_disk, choice(os_caching, CACHING, "--os-caching")),
        [parse_data_disk(text) for text in data_disk or []], os_type, os_state, label, source_vm, md5=md5,
        hyper_v_generation=hyper_v_generation,
    )
    record = capture(image_store(store, container, connection_string, access(auth, allow_http)), request, log=note)
    emit_json(record) if as_json else echo_lines(image_lines(record))


@image_app.command("list")
def image_list(
    store: StoreOpt = None,
    container: StoreContainerOpt = None,
    connection_string: ConnOpt = None,
    auth: AuthOpt = "auto",
    allow_http: AllowHttpOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List the images in the store."""
    from vhdtool.workflows.vmimage.catalog import list_images
    from vhdtool.workflows.vmimage.render import list_lines

    rows = list_images(image_store(store, container, connection_string, access(auth, allow_http)))
    emit_json(rows) if as_json else echo_lines(list_lines(rows))


@image_app.command("show")
def image_show(
    name: Annotated[str, typer.Argument(help="Image name.")],
    store: StoreOpt = None,
    container: StoreContainerOpt = None,
    connection_string: ConnOpt = None,
    auth: AuthOpt = "auto",
    allow_http: AllowHttpOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show an image: OS, state, capture time, and every disk with its copy trail."""
    from vhdtool.workflows.vmimage.records import load_image
    from vhdtool.workflows.vmimage.render import image_lines

    record = load_image(image_store(store, container, connection_string, access(auth, allow_http)), name)
    emit_json(record) if as_json else echo_lines(image_lines(record))


@image_app.command("deploy")
def image_deploy(
    name: Annotated[str, typer.Argument(help="Image name.")],
    vm: Annotated[str, typer.Option("--vm", help="Name of the new VM.")],
    store: StoreOpt = None,
    container: StoreContainerOpt = None,
    connection_string: ConnOpt = None,
    auth: AuthOpt = "auto",
    allow_http: AllowHttpOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Deploy a VM from image NAME: fresh copies of its disks and a VM record.

    The copies are VM-os.vhd and VM-datadisk-LUN.vhd (never the image's own VHDs, never an
    existing VHD); the record is shaped like Azure's storage profile (createOption FromImage),
    with the image's Hyper-V generation.
    """
    from vhdtool.workflows.vmimage.deploy import deploy
    from vhdtool.workflows.vmimage.render import vm_lines

    record = deploy(image_store(store, container, connection_string, access(auth, allow_http)), name, vm, log=note)
    emit_json(record) if as_json else echo_lines(vm_lines(record))


@image_app.command("delete")
def image_delete(
    name: Annotated[str, typer.Argument(help="Image name.")],
    delete_disks: Annotated[bool, typer.Option("--delete-disks", help="Also delete its VHDs (never one another record uses or one in use).")] = False,
    store: StoreOpt = None,
    container: StoreContainerOpt = None,
    connection_string: ConnOpt = None,
    auth: AuthOpt = "auto",
    allow_http: AllowHttpOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete image NAME; like Azure, its VHDs stay unless --delete-disks.

    The VHDs left behind are listed: they are still stored (and billed) until deleted.
    """
    from vhdtool.workflows.vmimage.catalog import delete_image
    from vhdtool.workflows.vmimage.render import delete_lines

    result = delete_image(image_store(store, container, connection_string, access(auth, allow_http)), name, delete_disks)
    emit_json(result) if as_json else echo_lines(delete_lines(result))


@image_app.command("orphans")
def image_orphans(
    clean: Annotated[bool, typer.Option("--clean", help="Delete the incomplete copies (and what killed captures and deploys left).")] = False,
    delete: Annotated[bool, typer.Option("--delete", help="Delete every orphaned VHD not in use (needs --yes).")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm --delete.")] = False,
    store: StoreOpt = None,
    container: StoreContainerOpt = None,
    connection_string: ConnOpt = None,
    auth: AuthOpt = "auto",
    allow_http: AllowHttpOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List the VHDs in the store that no image or VM record refers to, with their sizes.

    Incomplete copies (left by a killed capture or deploy) are marked. --clean deletes those;
    --delete --yes deletes every orphan. A VHD in use (leased, open for writing, being copied)
    is never deleted.
    """
    from vhdtool.workflows.vmimage.catalog import clean_orphans, orphans
    from vhdtool.workflows.vmimage.render import clean_lines, orphan_lines

    chosen = image_store(store, container, connection_string, access(auth, allow_http))
    if delete and not yes:
        raise VhdError("--delete deletes every orphaned VHD for good: add --yes to confirm")
    if clean or delete:
        result = clean_orphans(chosen, everything=delete, log=note)
        emit_json(result) if as_json else echo_lines(clean_lines(result))
        return
    found = [e.to_dict() for e in orphans(chosen)]
    emit_json(found) if as_json else echo_lines(orphan_lines(found))


@image_app.command("vms")
def image_vms(
    store: StoreOpt = None,
    container: StoreContainerOpt = None,
    connection_string: ConnOpt = None,
    auth: AuthOpt = "auto",
    allow_http: AllowHttpOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List the VMs deployed in the store, with the image each came from and its VHDs."""
    from vhdtool.workflows.vmimage.catalog import list_vms
    from vhdtool.workflows.vmimage.render import vms_lines

    rows = list_vms(image_store(store, container, connection_string, access(auth, allow_http)))
    emit_json(rows) if as_json else echo_lines(vms_lines(rows))


@image_app.command("vm-delete")
def image_vm_delete(
    name: Annotated[str, typer.Argument(help="VM name.")],
    delete_disks: Annotated[bool, typer.Option("--delete-disks", help="Also delete its VHDs (never one another record uses or one in use).")] = False,
    store: StoreOpt = None,
    container: StoreContainerOpt = None,
    connection_string: ConnOpt = None,
    auth: AuthOpt = "auto",
    allow_http: AllowHttpOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete VM record NAME; like Azure, its VHDs stay unless --delete-disks.

    The VHDs left behind are listed: they are still stored (and billed) until deleted.
    """
    from vhdtool.workflows.vmimage.catalog import delete_vm
    from vhdtool.workflows.vmimage.render import delete_lines

    result = delete_vm(image_store(store, container, connection_string, access(auth, allow_http)), name, delete_disks)
    emit_json(result) if as_json else echo_lines(delete_lines(result))


class Interrupted(VhdError):
    """Ctrl-C during work that a re-run resumes."""

    exit_code = 130


@contextmanager
def resumable(what: str) -> Iterator[None]:
    """Ctrl-C inside: say that running the same command again resumes WHAT."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"{what} interrupted: run the same command again to resume") from None


def fail(message: str, code: int) -> NoReturn:
    """The one place a message reaches stderr on failure: one line, secrets redacted."""
    typer.echo(f"vhdtool: {one_line(' '.join(message.split()))}", err=True)
    sys.exit(code)


def usage_message(exc: Any) -> str:
    """click's usage error as one line, naming the command, without typer's "(env var: 'None')"."""
    import click

    message = exc.format_message()
    bad_value = isinstance(exc, click.BadParameter) and not isinstance(exc, click.MissingParameter)
    if bad_value and exc.param is not None and exc.param_hint is None:
        param = exc.param
        name = param.human_readable_name if isinstance(param, click.Argument) else " / ".join(param.opts)
        message = f"invalid value for {name}: {exc.message}"
    command = exc.ctx.command_path if exc.ctx is not None else "vhdtool"
    where = command.removeprefix("vhdtool").strip()
    return f"{where + ': ' if where else ''}{message} (see {command} -h)"


def command_for(args: list[str]) -> Any:
    """The click command for `app`, built with only the subcommand `args` name, when it names
    one: typer turns every command's signature into click parameters before running any,
    20 ms of a start-up whose whole budget is about 70. With no name (`--help`, `--version`,
    nothing) the commands are built for the list alone; an unknown name gets them all. Each
    build works on a copy: `app` itself never changes."""
    import copy

    wanted = next((arg for arg in args if not arg.startswith("-")), None)
    if wanted is None:
        return typer.main.get_command(listing(app))
    chosen = copy.copy(app)
    chosen.registered_commands = [c for c in app.registered_commands
                                  if typer.main.get_command_name(c.name or getattr(c.callback, "__name__", "")) == wanted]
    chosen.registered_groups = [g for g in app.registered_groups
                                if g.typer_instance is not None and g.typer_instance.info.name == wanted]
    if not (chosen.registered_commands or chosen.registered_groups):
        return typer.main.get_command(app)
    return typer.main.get_command(chosen)


def listing(group: typer.Typer) -> typer.Typer:
    """A copy of `group` whose commands, and its groups' commands, are as the command list shows
    them: each one's name and help by typer's own rules, with a callback that has no
    parameters to convert. Only for a list: none of these callbacks can run."""
    import copy
    import inspect

    def listed(info: Any) -> Any:
        def callback() -> None:
            raise AssertionError("a command from the list ran")  # command_for: no name, no run

        callback.__name__, callback.__doc__ = info.callback.__name__, inspect.getdoc(info.callback)
        entry = copy.copy(info)
        entry.callback = callback
        return entry

    def listed_group(info: Any) -> Any:
        entry = copy.copy(info)
        if info.typer_instance is not None:
            entry.typer_instance = listing(info.typer_instance)
        return entry

    clone = copy.copy(group)
    clone.registered_commands = [listed(info) for info in group.registered_commands]
    clone.registered_groups = [listed_group(info) for info in group.registered_groups]
    return clone


def main() -> None:
    """Console entry point: one-line errors and documented exit codes, never a traceback."""
    import click

    try:
        args = sys.argv[1:]
        code = command_for(args).main(args, prog_name="vhdtool", standalone_mode=False)
    except Interrupted as exc:
        fail(str(exc), exc.exit_code)
    except NotVhdError as exc:
        fail(f"error: {exc} (a raw disk image? info, convert and prepare read one with --raw; "
             "vhdtool prepare FILE --raw makes the fixed VHD Azure takes)", exc.exit_code)
    except VhdError as exc:
        fail(f"error: {exc}", exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        fail("interrupted", EXIT_INTERRUPTED)
    except OSError as exc:
        name = f"{exc.filename}: " if exc.filename else ""
        fail(f"error: {name}{exc.strerror or exc}", EXIT_UNUSABLE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        fail(f"error: {usage_message(exc)}", EXIT_UNUSABLE)
    except click.ClickException as exc:
        fail(f"error: {exc.format_message()}", EXIT_UNUSABLE)
    # Outside standalone mode click returns an Exit's code instead of exiting; typer turns
    # Ctrl-C into Exit(130).
    if isinstance(code, int) and code:
        if code == EXIT_INTERRUPTED:
            fail("interrupted", code)
        sys.exit(code)


def run() -> None:
    """The `vhdtool` program: `main`, then, once it succeeded, leave without the interpreter's
    teardown (25-85 ms freeing numpy, typer, the Azure SDK...). Safe then: every output is
    durable and renamed, and no thread is left that the interpreter would wait for (daemon
    threads die either way); what was registered with atexit (logging's flush, a wrapper's
    hooks) still runs, and the streams are flushed here. Failures exit normally, and `main`
    stays callable in-process (tests)."""
    import atexit
    import os
    import threading

    main()
    if all(thread.daemon for thread in threading.enumerate() if thread is not threading.main_thread()):
        atexit._run_exitfuncs()  # CPython's own exit runs these first too; then they are gone
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:
            return  # a closed pipe: the interpreter's own exit reports it as before
        os._exit(0)


if __name__ == "__main__":
    run()
