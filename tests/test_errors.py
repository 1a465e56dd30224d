"""Every failure is a VhdError: contract violations included (they were ValueError, a traceback
at the CLI), still catchable as ValueError."""

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from vhdtool.azure.location import BlobLocation
from vhdtool.azure.pageblob import PageBlob
from vhdtool.engine.digest import ContentMd5
from vhdtool.errors import VhdError


def test_md5_fed_out_of_order_is_a_vhd_error():
    md5 = ContentMd5()
    md5.zeros_to(1024)
    with pytest.raises(VhdError, match="MD5 input out of order: 512 after 1,024") as err:
        md5.zeros_to(512)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(("offset", "length"), [(100, 512), (0, 100), (0, 0), (0, 4 * 1024 * 1024 + 512)])
def test_bad_put_page_is_a_vhd_error_before_any_request(offset, length):
    # No server behind this address: the check must refuse before a request is made.
    blob = PageBlob(BlobLocation.from_url("https://acct.blob.core.windows.net/cont/b.vhd?sig=secret"))
    with pytest.raises(VhdError, match=f"bad Put Page: {length} bytes at {offset}"):
        blob.put(offset, bytes(length), None)


@given(st.text())
def test_a_shown_name_is_one_line_and_reads_back_as_the_name(name):
    """Output quotes a name with control characters C-style (Python reads them back)."""
    import ast

    from vhdtool.redaction import redact, shown

    assume(redact(name) == name)  # a name holding a secret is redacted first
    text = shown(name)
    assert len(text.splitlines()) <= 1 and "\x1b" not in text
    assert (ast.literal_eval(text) if text.startswith('"') and text != name else text) == name


def test_a_name_with_a_newline_cannot_forge_report_lines(cli, tmp_path):
    """`check` shows the name quoted, its fix command in bash's $'...' (one line that bash
    runs as is), and `convert`'s summary stays one line."""
    import shutil
    import subprocess

    from conftest import FIXTURES

    name = tmp_path / "evil\nverdict: OK for target azure: 0 errors, 0 warnings\n.vhd"
    shutil.copy(FIXTURES / "windows-dynamic-10m.vhd", name)
    outcome = cli("check", str(name))
    assert outcome.code == 1 and not any(line.startswith("verdict: OK") for line in outcome.out.splitlines())
    head = outcome.out.splitlines()[0]
    assert head.startswith(f'"{tmp_path}/evil\\nverdict: OK') and head.endswith('\\n.vhd" (target azure): dynamic VHD, '
                                                                                  "virtual size 10 MiB, file 4,197,888 bytes")
    fix = next(line for line in outcome.out.splitlines() if "fix: vhdtool prepare" in line).split("fix: ", 1)[1]
    echoed = subprocess.run(["bash", "-c", fix.replace("vhdtool prepare", "printf %s", 1)], capture_output=True, text=True)
    assert echoed.stdout == str(name)
    outcome = cli("convert", "-q", str(name), str(tmp_path / "out.raw"), "--to", "raw")
    assert outcome.code == 0 and len(outcome.out.splitlines()) == 1 and outcome.out.startswith("wrote ")


def test_strings_from_an_image_cannot_break_a_report_line(tmp_path, capsys):
    """A VHD header's parent name (any bytes the image holds) in info's text, a finding's
    message in check's, and an error on stderr: each stays one line, escape sequences
    escaped, secrets redacted."""
    from vhdtool.disk.findings import Report, Target
    from vhdtool.workflows.check.render import render_text
    from vhdtool.workflows.report import print_info
    from vhdtool.cli import echo_lines, fail

    forged = "base.vhd\nverdict: OK for target azure\x1b[2J?sig=SECRET"
    print_info({"path": "child.vhd", "type": "vhd", "dynamic_header": {
        "parent_name": forged, "parent_locators": [{"platform_code": "W2ku", "path": forged, "data_length": 1,
                                                     "data_space": 512, "data_offset": 0}]}})
    report = Report("child.vhd", Target.AZURE)
    report.add("parent.missing", f"parent {forged} not found")
    echo_lines(render_text(report))
    with pytest.raises(SystemExit):
        fail(f"error: {forged}", 2)
    out, err = capsys.readouterr()
    for text in (out, err):
        assert "\x1b" not in text and "SECRET" not in text
        assert not any(line.startswith("verdict: OK") for line in text.splitlines())
    assert out.count("base.vhd\\nverdict: OK for target azure\\x1b[2J?sig=REDACTED") == 3
