"""One grammar for every command: -h/--help, one-line usage errors with exit 2 (secrets
redacted), --version, and each result command's --json in the shape README documents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
import typer

from conftest import FIXTURES
from vhdtool.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def walk(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            found += walk(sub, (*path, name))
    return found


COMMANDS = walk(typer.main.get_command(app))
LEAVES = [(path, cmd) for path, cmd in COMMANDS if not isinstance(cmd, click.Group)]
ids = [" ".join(path) or "vhdtool" for path, _ in COMMANDS]
leaf_ids = [" ".join(path) for path, _ in LEAVES]


def filled(command: click.Command) -> list[str]:
    """Every positional argument and required option given a value click accepts."""
    args: list[str] = []
    for param in command.params:
        if isinstance(param, click.Argument):
            args.append("x")
        elif param.required:
            choices = getattr(param.type, "choices", None)
            args += [param.opts[0], str(list(choices)[0]) if choices else "x"]
    return args


def one_line_usage_error(outcome, where: str) -> None:
    assert outcome.code == 2, outcome
    lines = outcome.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vhdtool: error: {where}"), outcome.err
    assert "env var" not in outcome.err and "Traceback" not in outcome.err


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=ids)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(cli, path, flag):
    outcome = cli(*path, flag)
    assert outcome.code == 0 and "Usage: vhdtool" in outcome.out and outcome.err == ""


@pytest.mark.parametrize("path,command", LEAVES, ids=leaf_ids)
def test_missing_argument_or_option(cli, path, command):
    if not any(p.required for p in command.params):
        pytest.skip("nothing required")
    one_line_usage_error(cli(*path), " ".join(path) + ": Missing")


@pytest.mark.parametrize("path,command", LEAVES, ids=leaf_ids)
def test_surplus_argument_is_one_line_and_redacted(cli, path, command):
    if any(isinstance(p, click.Argument) and p.nargs == -1 for p in command.params):
        pytest.skip("takes any number of arguments")
    secret = "https://a.blob.core.windows.net/c/b.vhd?sv=2022&sig=S3CRET%2Bvalue"
    outcome = cli(*path, *filled(command), secret)
    one_line_usage_error(outcome, " ".join(path) + ": Got unexpected extra argument")
    assert "S3CRET" not in outcome.err and "sig=REDACTED" in outcome.err


def typed_option(command: click.Command) -> click.Option | None:
    """An option whose value click checks (a number or a choice)."""
    for param in command.params:
        if isinstance(param, click.Option) and not param.is_flag and isinstance(
            param.type, (click.Choice, click.types.IntParamType, click.types.FloatParamType)
        ):
            return param
    return None


# Options typed as plain text whose values vhdtool checks itself, with a value each refuses.
CHECKED_TEXT = {"--target": "bogus", "--granularity": "lots", "--size": "lots", "--os-caching": "bogus"}


@pytest.mark.parametrize("path,command", LEAVES, ids=leaf_ids)
def test_bad_option_value(cli, path, command):
    args = filled(command)
    option = typed_option(command)
    if option is not None:
        if option.opts[0] in args:  # a required choice: replace its valid value
            args[args.index(option.opts[0]) + 1] = "bogus"
        else:
            args += [option.opts[0], "bogus"]
        return one_line_usage_error(cli(*path, *args), " ".join(path) + f": invalid value for {option.opts[0]}")
    names = [o for p in command.params if isinstance(p, click.Option) for o in p.opts if o in CHECKED_TEXT]
    if not names:
        pytest.skip("no option whose value is checked")
    if names[0] in args:
        args[args.index(names[0]) + 1] = CHECKED_TEXT[names[0]]
    else:
        args += [names[0], CHECKED_TEXT[names[0]]]
    outcome = cli(*path, *args)
    assert outcome.code == 2 and len(outcome.err.splitlines()) == 1, outcome
    assert outcome.err.startswith("vhdtool: error: ") and CHECKED_TEXT[names[0]] in outcome.err


def test_version(cli):
    outcome = cli("--version")
    assert outcome.code == 0 and re.fullmatch(r"vhdtool \d+\.\d+\.\d+\n", outcome.out)


def test_decimal_size_is_said_to_be_decimal(cli, tmp_path):
    outcome = cli("create", str(tmp_path / "d.vhd"), "--size", "2GB", "--json")
    assert outcome.code == 0
    assert "vhdtool: warning: 2GB is decimal: 2,000,000,000 bytes (for binary units write 2GiB)" in outcome.err
    assert json.loads(outcome.out)["virtual_size"] == 2_000_000_000


# --json shapes, as README's table documents them.
SHAPES = {
    name: set(re.findall(r"\w+", keys))
    for name, keys in re.findall(r"^\| `([a-z ]+?)`(?: \(failure\))? \| `\{([^}]*)\}`", README, re.M)
}


def keys(outcome) -> set[str]:
    return set(json.loads(outcome.out))


def test_readme_documents_every_result_command():
    assert {"create", "resize", "snapshot", "convert", "prepare", "check", "info", "upload", "download"} <= set(SHAPES)


def test_local_result_commands_json_shapes(cli, tmp_path):
    made = cli("create", str(tmp_path / "a.vhd"), "--size", "2123776", "--json")
    assert made.code == 0 and keys(made) == SHAPES["create"]
    assert json.loads(made.out)["virtual_size"] == 2123776
    resized = cli("resize", str(tmp_path / "a.vhd"), "--align", "--json")
    assert keys(resized) == SHAPES["resize"]
    assert json.loads(resized.out)["new_size"] == 3 * 1024 * 1024
    snap = cli("snapshot", str(tmp_path / "a.vhd"), "-o", str(tmp_path / "s.vhd"), "--json")
    assert keys(snap) == SHAPES["snapshot"]
    conv = cli("convert", str(FIXTURES / "windows-dynamic-10m.vhd"), str(tmp_path / "c.vhd"), "--to", "fixed", "--json")
    assert keys(conv) == SHAPES["convert"] and json.loads(conv.out)["format"] == "fixed"
    prep = cli("prepare", str(FIXTURES / "qemu-fixed-2m.vhd"), "-o", str(tmp_path / "p.vhd"), "--json")
    assert keys(prep) == SHAPES["prepare"] and set(json.loads(prep.out)["report"]) == SHAPES["check"]
    checked = cli("check", str(FIXTURES / "qemu-fixed-2m.vhd"), "--json")
    assert checked.code == 1 and keys(checked) == SHAPES["check"]
    both = cli("check", str(tmp_path / "p.vhd"), str(FIXTURES / "qemu-fixed-2m.vhd"), "--json")
    assert both.code == 1 and [set(r) for r in json.loads(both.out)] == [SHAPES["check"]] * 2
    failed = cli("info", str(tmp_path / "nothing.vhd"), "--json")
    assert failed.code == 2 and json.loads(failed.out) == {"path": str(tmp_path / "nothing.vhd"), "error": "no such file", "exit_code": 2}


def test_check_of_several_images_exits_with_the_worst(cli, tmp_path):
    ok = cli("prepare", str(FIXTURES / "qemu-fixed-2m.vhd"), "-o", str(tmp_path / "p.vhd"))
    assert ok.code == 0
    assert cli("check", str(tmp_path / "p.vhd"), str(tmp_path / "p.vhd")).code == 0
    assert cli("check", str(tmp_path / "p.vhd"), str(FIXTURES / "qemu-fixed-2m.vhd")).code == 1
    both = cli("check", str(FIXTURES / "qemu-fixed-2m.vhd"), str(tmp_path / "missing.vhd"), str(tmp_path / "p.vhd"))
    assert both.code == 2 and both.out.count("verdict:") == 3


def test_transfer_json_shapes(cli, azurite, container, tmp_path):
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    target = ["--container", container.container_name, "--name", "j.vhd"]
    up = cli("upload", str(FIXTURES / "windows-fixed-10m.vhd"), *target, "--json", env=env)
    assert up.code == 0 and keys(up) == SHAPES["upload"]
    again = cli("upload", str(FIXTURES / "windows-fixed-10m.vhd"), *target, "--json", env=env)
    assert json.loads(again.out)["already_complete"] is True
    down = cli("download", *target, "-o", str(tmp_path / "j.vhd"), "--json", env=env)
    assert down.code == 0 and keys(down) == SHAPES["download"]


def test_check_findings_carry_their_numbers(cli):
    outcome = cli("check", str(FIXTURES / "qemu-fixed-2m.vhd"), "--json")
    by_code = {f["code"]: f for f in json.loads(outcome.out)["findings"]}
    assert by_code["azure.size-not-mib"]["virtual_size"] == 2_123_776
    assert by_code["azure.size-not-mib"]["aligned_size"] == 3 * 1024 * 1024


@pytest.mark.parametrize("command", ["info", "map", "upload"])
def test_a_file_without_footer_gets_the_raw_hint(cli, tmp_path, command):
    raw = tmp_path / "disk.bin"  # no .raw/.img name: not taken as raw by itself
    raw.write_bytes((FIXTURES / "raw-3m.img").read_bytes())
    outcome = cli(command, str(raw), *(["https://a.blob.core.windows.net/cont/b.vhd?sig=x"] if command == "upload" else []))
    assert outcome.code == 2 and len(outcome.err.splitlines()) == 1
    assert "not a VHD" in outcome.err and "--raw" in outcome.err


def test_raw_flag_reads_a_raw_image(cli, tmp_path):
    raw = tmp_path / "disk.bin"
    raw.write_bytes((FIXTURES / "raw-3m.img").read_bytes())
    outcome = cli("convert", str(raw), str(tmp_path / "d.vhd"), "--to", "fixed", "--raw", "--json")
    assert outcome.code == 0 and json.loads(outcome.out)["virtual_size"] == 3 * 1024 * 1024
    contradiction = cli("convert", str(raw), str(tmp_path / "e.vhd"), "--to", "fixed", "--raw", "--from", "vhd")
    assert contradiction.code == 2 and "contradict" in contradiction.err


@pytest.mark.parametrize("to", ["fixed", "dynamic", "raw"])
def test_convert_data_bytes_are_the_disks_not_the_footers(cli, tmp_path, to):
    src = str(FIXTURES / "windows-dynamic-10m.vhd")
    mapped = json.loads(cli("map", src, "--json").out)["data_bytes"]
    done = cli("convert", src, str(tmp_path / f"o.{to}"), "--to", to, "--json")
    assert json.loads(done.out)["data_bytes"] == mapped == 77_824


def test_info_takes_a_raw_image_by_the_name_rule_of_convert(cli):
    outcome = cli("info", str(FIXTURES / "raw-3m.img"), "--json")  # no footer, named .img
    assert outcome.code == 0 and json.loads(outcome.out)["virtual_size"] == 3 * 1024 * 1024


def test_plurals(cli):
    one = cli("map", str(FIXTURES / "qemu-fixed-forcesize-3m.vhd"))
    assert one.out.splitlines()[-1].startswith("1 run, 512 bytes of data")
    two = cli("map", str(FIXTURES / "qemu-fixed-2m.vhd"))
    assert two.out.splitlines()[-1].startswith("2 runs, ")


def test_download_summary_says_retries_in_words(cli, azurite, container, tmp_path):
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    target = ["--container", container.container_name, "--name", "w.vhd"]
    assert cli("upload", str(FIXTURES / "windows-fixed-10m.vhd"), *target, env=env).code == 0
    down = cli("download", *target, "-o", str(tmp_path / "w.vhd"), env=env)
    assert down.code == 0 and ", 0 retries, " in down.out


def test_the_program_runs_atexit_hooks_before_its_fast_exit(tmp_path):
    """`vhdtool` skips the interpreter's teardown after a success, but what a wrapper or
    logging registered with atexit still runs (bench_upload's I/O probe lost its numbers)."""
    import subprocess
    import sys

    marker = tmp_path / "hook-ran"
    code = (f"import atexit, pathlib, runpy, sys; atexit.register(pathlib.Path({str(marker)!r}).touch); "
            f"sys.argv = ['vhdtool', 'info', {str(FIXTURES / 'windows-fixed-10m.vhd')!r}, '--json']; "
            "runpy.run_module('vhdtool.cli', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout)["virtual_size"] == 10 * 1024 * 1024, done.stderr
    assert marker.exists()


@pytest.mark.parametrize("args,built", [
    (["info", "x.vhd"], {"info"}),
    (["--version"], None),
    (["-h"], None),
    (["image", "list", "--store", "s"], {"image"}),
    (["infoo", "x.vhd"], None),  # a typo: every name, for click's "No such command"
])
def test_only_the_invoked_command_is_built(args, built):
    """Start-up (#17): typer converts each command's signature before running one, so main
    builds just the named command (its group for `image`); help lists every name (see the
    next test), an unknown name gets every command, for click's "No such command"."""
    from vhdtool.cli import command_for

    everything = set(typer.main.get_command(app).commands)
    assert set(command_for(args).commands) == (built or everything)
    assert set(typer.main.get_command(app).commands) == everything  # the app is left whole


def help_text(command, args: list[str]) -> str:
    return command.get_help(command.make_context("vhdtool", args, resilient_parsing=True))


def test_the_command_list_is_the_one_typer_builds_and_no_listed_callback_runs():
    """Start-up (#17): with no command named, the list is built from parameter-less
    callbacks (20 ms less); it must read exactly as typer's full build, and the app must be
    left whole."""
    from vhdtool.cli import command_for

    full = typer.main.get_command(app)
    listed = command_for(["--help"])
    assert help_text(listed, ["--help"]) == help_text(full, ["--help"])
    assert help_text(listed.commands["image"], []) == help_text(full.commands["image"], [])
    assert all(not command.params for command in listed.commands["image"].commands.values())
    with pytest.raises(AssertionError, match="from the list ran"):
        listed.commands["info"].callback()
    assert help_text(typer.main.get_command(app).commands["info"], []) == help_text(full.commands["info"], [])


@pytest.mark.parametrize("args,where,close", [
    (["infoo", "x.vhd"], "", "info"),
    (["snapshott"], "", "snapshot"),
    (["image", "lst", "x"], "image: ", "list"),
    (["zzz"], "", None),
])
def test_a_mistyped_command_is_named_with_the_close_match(cli, args, where, close):
    outcome = cli(*args)
    one_line_usage_error(outcome, where)
    assert f"No such command {args[1 if where else 0]!r}." in outcome.err
    assert ("Did you mean" in outcome.err) == (close is not None)
    assert close is None or f"Did you mean {close!r}?" in outcome.err


@pytest.mark.parametrize("args,where", [(["--", "-x"], ""), (["image", "--", "-x"], "image: ")])
def test_an_option_where_the_command_goes_is_one_line(cli, args, where):
    """click parses an option-like name as options, using up the arguments (a traceback once)."""
    outcome = cli(*args)
    one_line_usage_error(outcome, where)
    assert "No such option: -x" in outcome.err and "Did you mean" not in outcome.err


@pytest.mark.parametrize("args,where,names", [
    ([], "", "info, create, resize, map, snapshot, convert, check, prepare, upload, download, bench, image"),
    (["image"], "image: ", "capture, list, show, deploy, delete, orphans, vms, vm-delete"),
    (["--"], "", "info, create, resize, map, snapshot, convert, check, prepare, upload, download, bench, image"),
])
def test_a_group_alone_names_its_commands_on_one_line(cli, args, where, names):
    """click would print the whole help as the error (flattened here into one line)."""
    outcome = cli(*args)
    one_line_usage_error(outcome, where)
    assert outcome.err == f"vhdtool: error: {where}missing command: one of {names} (see vhdtool {where[:-2] + ' ' if where else ''}-h)\n"
