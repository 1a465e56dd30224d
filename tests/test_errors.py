"""Every failure is a VhdError: contract violations included (they were ValueError, a traceback
at the CLI), still catchable as ValueError."""

import pytest

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
