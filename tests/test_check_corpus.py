"""Every image of the bad-image corpus (fixtures/make_corpus.py) gets exactly its findings.

The table below is the specification: for each image, the target it is checked against, the
exact set of finding codes and the exit code. Images are generated once into a temporary
folder (the large ones are sparse).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import FIXTURES
from vhdtool.workflows.check import check_image
from vhdtool.cli import app

G, A, M = "generic", "azure", "azure-managed-disk"

EXPECTED: dict[str, tuple[str, set[str], int]] = {
    # controls: sound images have no findings
    "fixed-good.vhd": (A, set(), 0),
    "dynamic-good.vhd": (G, set(), 0),
    "diff-good.vhd": (G, {"parent.chain"}, 0),
    # the file itself: not usable at all
    "empty.vhd": (A, {"file.empty"}, 2),
    "tiny.vhd": (A, {"file.too-small"}, 2),
    "random-bytes.bin": (A, {"footer.missing"}, 2),
    # footer fields
    "fixed-checksum-flipped.vhd": (A, {"footer.checksum"}, 1),
    "fixed-bad-cookie.vhd": (A, {"footer.cookie", "footer.checksum"}, 1),
    "fixed-features-clear.vhd": (A, {"footer.features"}, 1),
    "fixed-features-unknown.vhd": (A, {"footer.features-unknown"}, 1),
    "fixed-temporary.vhd": (A, {"footer.temporary"}, 0),
    "fixed-bad-version.vhd": (A, {"footer.version"}, 1),
    "fixed-data-offset.vhd": (A, {"footer.data-offset"}, 1),
    "fixed-disk-type-5.vhd": (G, {"footer.disk-type"}, 1),
    "fixed-future-timestamp.vhd": (A, {"footer.timestamp-future"}, 0),
    "fixed-saved-state.vhd": (A, {"footer.saved-state"}, 0),
    "fixed-saved-state-invalid.vhd": (A, {"footer.saved-state-invalid"}, 1),
    "fixed-reserved-nonzero.vhd": (A, {"footer.reserved"}, 0),
    "fixed-null-uuid.vhd": (A, {"footer.null-uuid"}, 0),
    "fixed-resized.vhd": (A, {"footer.resized"}, 0),
    "fixed-geometry-too-large.vhd": (A, {"footer.geometry"}, 1),
    "fixed-geometry-max.vhd": (A, {"footer.geometry-max"}, 0),
    "dynamic-size-unaligned.vhd": (G, {"footer.size-unaligned", "qemu.chs-size"}, 1),
    # file length and layout
    "fixed-odd-length.vhd": (G, {"file.length", "fixed.extra-data"}, 1),
    "fixed-short-footer-511.vhd": (A, {"footer.short", "azure.blob-length", "azure.file-length"}, 1),
    "fixed-truncated.vhd": (G, {"fixed.truncated"}, 1),
    "fixed-extra-data.vhd": (A, {"fixed.extra-data", "azure.file-length"}, 1),
    "fixed-head-cookie.vhd": (A, {"fixed.head-cookie"}, 0),
    # footer copies of dynamic images
    "dynamic-head-differs.vhd": (G, {"footer.copies-differ"}, 1),
    "dynamic-head-missing.vhd": (G, {"footer.head-missing"}, 1),
    "dynamic-tail-missing.vhd": (G, {"footer.tail-missing"}, 1),
    "dynamic-truncated-mid-block.vhd": (G, {"footer.tail-missing", "bat.block-truncated"}, 1),
    # dynamic header
    "dynamic-header-offset-past-eof.vhd": (G, {"footer.data-offset"}, 1),
    "dynamic-header-cookie.vhd": (G, {"header.cookie"}, 1),
    "dynamic-header-checksum.vhd": (G, {"header.checksum"}, 1),
    "dynamic-header-version.vhd": (G, {"header.version"}, 1),
    "dynamic-header-data-offset.vhd": (G, {"header.data-offset"}, 1),
    "dynamic-block-size-3m.vhd": (G, {"header.block-size"}, 1),
    "dynamic-header-reserved.vhd": (G, {"header.reserved"}, 0),
    "dynamic-parent-fields.vhd": (G, {"header.parent-fields"}, 0),
    # BAT
    "dynamic-bat-offset-unaligned.vhd": (G, {"bat.offset"}, 1),
    "dynamic-bat-in-header.vhd": (G, {"bat.offset"}, 1),
    "dynamic-bat-too-small.vhd": (G, {"bat.too-small"}, 1),
    "dynamic-bat-beyond-eof.vhd": (G, {"bat.beyond-eof"}, 1),
    "dynamic-bat-2-32-entries.vhd": (G, {"bat.too-large", "bat.beyond-eof"}, 1),
    "dynamic-bat-entry-past-eof.vhd": (G, {"bat.entry-past-eof"}, 1),
    "dynamic-bat-overlap.vhd": (G, {"bat.overlap"}, 1),
    "dynamic-bat-entry-in-header.vhd": (G, {"bat.entry-in-metadata"}, 1),
    # differencing
    "diff-parent-missing.vhd": (G, {"parent.missing"}, 1),
    "diff-parent-uuid-mismatch.vhd": (G, {"parent.uuid-mismatch"}, 1),
    "diff-parent-invalid.vhd": (G, {"parent.invalid"}, 1),
    "diff-parent-cycle.vhd": (G, {"parent.cycle"}, 1),
    "diff-locator-bad-code.vhd": (G, {"parent.locator", "parent.chain"}, 1),
    # a locator pointing outside the file is skipped, and the header name alone does not lead
    # to parents/base.vhd
    "diff-locator-past-eof.vhd": (G, {"parent.locator", "parent.missing"}, 1),
    # targets
    "dynamic-for-azure.vhd": (A, {"azure.not-fixed"}, 1),
    "qemu-style-1g-fixed.vhd": (A, {"azure.size-not-mib"}, 1),
    "vpc-5g-chs-short.vhd": (A, {"qemu.chs-size"}, 0),
    "fixed-10m-for-managed-disk.vhd": (M, {"azure.too-small"}, 1),
    "fixed-over-2040gib.vhd": (M, {"size.over-2040gib"}, 0),
    "fixed-9tib-page-blob.vhd": (A, {"azure.too-large", "size.over-2040gib"}, 1),
}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    subprocess.run([sys.executable, str(FIXTURES / "make_corpus.py"), str(out)], check=True, capture_output=True)
    return out


def test_corpus_is_large_and_every_image_is_specified(corpus):
    images = {p.name for p in corpus.iterdir() if p.is_file()}
    assert images == set(EXPECTED)
    assert len(images) >= 30


# What check adds for every Azure target besides the rules this corpus damages: the
# generation (these images hold no partition table) and, for a managed disk, the az disk create
# line. Both are tested in test_info_partitions.py and test_check_vhdx.py.
ADVICE = {"partitions.generation-unknown", "azure.disk-create"}


def structural(codes) -> set[str]:
    return set(codes) - ADVICE


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_image_gets_its_findings(corpus, name):
    target, codes, exit_code = EXPECTED[name]
    report = check_image(corpus / name, target)
    assert structural(report.codes) == codes, [f.message for f in report.findings]
    assert report.exit_code == exit_code


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cli_json_matches_and_never_raises(corpus, name):
    target, codes, exit_code = EXPECTED[name]
    result = CliRunner().invoke(app, ["check", str(corpus / name), "--target", target, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == exit_code
    data = json.loads(result.stdout)
    assert structural(f["code"] for f in data["findings"]) == codes
    assert data["exit_code"] == exit_code


def finding(corpus: Path, name: str, code: str):
    target = EXPECTED[name][0]
    (match,) = [f for f in check_image(corpus / name, target).findings if f.code == code]
    return match


def test_messages_name_the_numbers(corpus):
    """The numbers in the messages are the ones damaged into the images."""
    from make_corpus import BLOCK, SIZE, TABLE_AT

    span = BLOCK + 512  # bitmap + data
    first_block = TABLE_AT + 512  # after the one-sector BAT of 5 entries
    assert "block 2 at byte 8,589,934,592" in finding(corpus, "dynamic-bat-entry-past-eof.vhd", "bat.entry-past-eof").message
    assert "first: block 0 at byte 512" in finding(corpus, "dynamic-bat-entry-in-header.vhd", "bat.entry-in-metadata").message
    overlap = finding(corpus, "dynamic-bat-overlap.vhd", "bat.overlap").message
    assert f"blocks 0 and 2 overlap: block 0 occupies bytes {first_block:,}-{first_block + span:,}" in overlap
    assert f"block 2 starts at byte {first_block + 4096:,}" in overlap
    truncated = corpus / "dynamic-truncated-mid-block.vhd"
    cut = finding(corpus, truncated.name, "bat.block-truncated").message
    block4 = first_block + 2 * span  # blocks 0, 2, 4 were written in that order
    assert f"block 4 occupies bytes {block4:,}-{block4 + span:,}" in cut
    assert f"ends at byte {truncated.stat().st_size:,}" in cut
    assert "the BAT has 2 entries but the 10,485,760-byte disk needs 5 blocks" in finding(
        corpus, "dynamic-bat-too-small.vhd", "bat.too-small").message
    assert "4,294,967,295 BAT entries" in finding(corpus, "dynamic-bat-2-32-entries.vhd", "bat.too-large").message
    assert f"holds only {5 * 1024**2:,} before its footer: {SIZE - 5 * 1024**2:,} bytes are missing" in finding(
        corpus, "fixed-truncated.vhd", "fixed.truncated").message
    assert "(timestamp, checksum)" in finding(corpus, "dynamic-head-differs.vhd", "footer.copies-differ").message


def test_checksum_message_names_stored_and_computed(corpus):
    from vhdtool.format.vhd.footer import footer_checksum, parse_footer

    raw = (corpus / "fixed-checksum-flipped.vhd").read_bytes()[-512:]
    stored, computed = parse_footer(raw).checksum, footer_checksum(raw)
    assert stored == computed ^ 0x01  # the corpus flipped the low bit
    message = finding(corpus, "fixed-checksum-flipped.vhd", "footer.checksum").message
    assert f"stored as 0x{stored:08x} but the footer's bytes give 0x{computed:08x}" in message


def test_fixes_name_the_command_and_the_file(corpus):
    not_fixed = finding(corpus, "dynamic-for-azure.vhd", "azure.not-fixed")
    assert not_fixed.fix == f"vhdtool prepare {corpus / 'dynamic-for-azure.vhd'}"
    mib = finding(corpus, "qemu-style-1g-fixed.vhd", "azure.size-not-mib")
    assert mib.fix == f"vhdtool resize --align {corpus / 'qemu-style-1g-fixed.vhd'}"
    assert "1,073,995,776 bytes" in mib.message and "1,074,790,400 bytes" in mib.message
    small = finding(corpus, "fixed-10m-for-managed-disk.vhd", "azure.too-small")
    assert small.fix == f"vhdtool resize --size 20MiB {corpus / 'fixed-10m-for-managed-disk.vhd'}"
    assert "10,486,272-byte blob" in small.message and "at least 20,972,032 bytes" in small.message


def test_no_fix_is_offered_for_a_damaged_image(corpus):
    """prepare reads through a reader that would carry the damage (zeros for a lost block)."""
    report = check_image(corpus / "dynamic-truncated-mid-block.vhd", "azure")
    assert [(f.code, f.fix) for f in report.findings if f.code.startswith("azure.")] == [("azure.not-fixed", None)]
    truncated = check_image(corpus / "fixed-truncated.vhd", "azure-managed-disk")
    assert {f.code: f.fix for f in truncated.findings} == {
        "fixed.truncated": None, "azure.file-length": None, "azure.too-small": None}


# Damage that changes what the disk reads: every command reading the disk refuses these.
REFUSED = {
    "empty.vhd", "tiny.vhd", "random-bytes.bin", "fixed-checksum-flipped.vhd",
    "fixed-bad-cookie.vhd", "fixed-data-offset.vhd", "fixed-disk-type-5.vhd", "fixed-truncated.vhd",
    "dynamic-tail-missing.vhd", "dynamic-truncated-mid-block.vhd", "dynamic-bat-entry-past-eof.vhd",
    "dynamic-bat-overlap.vhd", "dynamic-bat-entry-in-header.vhd", "dynamic-bat-2-32-entries.vhd",
    "diff-parent-missing.vhd", "diff-parent-uuid-mismatch.vhd", "diff-parent-invalid.vhd",
}


def test_the_reader_refuses_exactly_what_check_says_changes_the_disk(corpus):
    """One structural truth: open_disk refuses an image iff its check has a finding that
    changes what the disk reads, and the refusal names those codes and `vhdtool check`."""
    from vhdtool.disk.findings import CHANGES_CONTENT
    from vhdtool.disk.image import open_disk
    from vhdtool.errors import NotVhdError, VhdError

    refused = set()
    for name in sorted(EXPECTED):
        codes = [c for c in check_image(corpus / name, "generic").codes if c in CHANGES_CONTENT]
        try:
            open_disk(corpus / name).close()
        except NotVhdError:
            refused.add(name)
        except VhdError as exc:
            refused.add(name)
            assert codes and all(c in str(exc) for c in codes), (name, str(exc))
            assert f"vhdtool check {corpus / name}" in str(exc)
        else:
            assert not codes, name
    assert REFUSED <= refused
