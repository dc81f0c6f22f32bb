"""monmouth.chain: hex, addresses, selectors and contract addresses, against published values."""

from __future__ import annotations

import pytest
from eth_abi import decode as abi_decode
from pydantic import BaseModel, ValidationError, field_validator

from monmouth.chain import (
    AddressError,
    address_set,
    calldata,
    canonical_abi_type,
    check_address,
    create_address,
    hx,
    is_address,
    normalize_address,
    parse_address,
    selector,
    split_abi_params,
)
from monmouth.errors import MonmouthError

A = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # EIP-55's first example


def test_hx():
    assert hx(None) is None
    assert hx(b"") == "0x"
    assert hx(bytes.fromhex("00ff10")) == "0x00ff10"


def test_addresses_are_checked_and_the_refusal_names_field_and_value():
    assert is_address(A) and is_address(A.lower()) and not is_address(A[2:]) and not is_address(None)
    assert check_address(A, "watched") == A  # unchanged, case kept
    assert parse_address(A) == bytes.fromhex(A[2:])
    assert parse_address(A[2:], bare_ok=True) == bytes.fromhex(A[2:])
    for bad in ("0x1234", "0x" + "zz" * 20, A[2:], A + "00", " " + A, "0x" + "aa bb" * 8):
        with pytest.raises(AddressError) as e:
            check_address(bad, "plugins.rag.watched")
        assert str(e.value) == f"plugins.rag.watched: {bad!r} is not a 0x-prefixed 20-byte hex address"
        with pytest.raises(AddressError):
            parse_address(bad, bare_ok=bad != A[2:])
    assert isinstance(AddressError("x"), MonmouthError) and isinstance(AddressError("x"), ValueError)


def test_an_address_error_is_a_pydantic_field_error():
    class M(BaseModel):
        a: str

        @field_validator("a")
        @classmethod
        def _a(cls, v: str) -> str:
            return check_address(v)

    with pytest.raises(ValidationError, match="is not a 0x-prefixed 20-byte hex address"):
        M(a="0x12")


def test_normalize_and_address_set():
    raw = bytes.fromhex(A[2:])
    assert normalize_address(A) == A.lower() and normalize_address(raw) == A.lower()
    assert normalize_address("0x12") is None and normalize_address(b"\x01" * 19) is None
    assert address_set([A, A[2:].lower(), raw, b"\x01" * 19, "0x12", "nonsense" * 5]) == {raw}


def test_selector_and_calldata_match_the_erc20_transfer():
    assert selector("transfer(address,uint256)").hex() == "a9059cbb"  # EIP-20
    data = calldata("transfer(address,uint256)", A, 10**18)
    assert data[:10] == "0xa9059cbb"
    assert abi_decode(["address", "uint256"], bytes.fromhex(data[10:])) == (A.lower(), 10**18)
    assert calldata("totalSupply()") == "0x18160ddd"


@pytest.mark.parametrize(("nonce", "want"), [
    (0, "cd234a471b72ba2f1ccf0a70fcaba648a5eecd8d"),
    (1, "343c43a37d37dff08ae8c4a11544c718abb4fcf8"),
    (2, "f778b86fa74e846c4f0a1fbd1335fe81c00a0c91"),
    (3, "fffd933a0bc612844eaf0c6fe3e5b8e9b6c1d19c"),
])
def test_create_address_matches_known_deployments(nonce, want):
    """The widely quoted example sender 0x6ac7ea33f8831ea9dcc53393aaa88b25a785dbf0 and its first contracts."""
    assert create_address(bytes.fromhex("6ac7ea33f8831ea9dcc53393aaa88b25a785dbf0"), nonce).hex() == want


def test_abi_types_are_made_canonical_by_eth_abis_grammar():
    assert canonical_abi_type("uint") == "uint256" and canonical_abi_type("int[2]") == "int256[2]"
    assert canonical_abi_type("(address,uint)[]") == "(address,uint256)[]"
    for bad in ("uint7", "Foo", "bytes33", "address[", ""):
        with pytest.raises(ValueError, match="unknown type"):
            canonical_abi_type(bad)


def test_parameter_lists_split_outside_tuples_and_arrays():
    assert split_abi_params("(address,uint256)[] a, bool b") == ["(address,uint256)[] a", " bool b"]
    assert split_abi_params("uint256[2] x,") == ["uint256[2] x", ""]
    assert split_abi_params("") == [""]
    for bad in ("(address,uint256", "uint256]", "a)("):
        with pytest.raises(ValueError, match="unbalanced"):
            split_abi_params(bad)
