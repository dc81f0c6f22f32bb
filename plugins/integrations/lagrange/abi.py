"""The Lagrange ZK coprocessor's query interface, as its contracts document it.

From Lagrange-Labs/lagrange-lpn-contracts, ``src/v1/interfaces/IQueryManager.sol`` (implemented by the
``LPNRegistryV1`` / ``QueryManager`` registry):

* ``function request(bytes32 queryHash, bytes32[] calldata placeholders, uint256 startBlock, uint256 endBlock)
  external payable returns (uint256)`` — ``msg.value`` must cover ``gasFee()``;
* ``event NewRequest(uint256 indexed requestId, bytes32 indexed queryHash, address indexed client,
  bytes32[] placeholders, uint256 startBlock, uint256 endBlock, uint256 gasFee, uint256 proofBlock)``;
* ``event NewResponse(uint256 indexed requestId, address indexed client, QueryOutput result)`` with
  ``struct QueryOutput { uint256 totalMatchedRows; bytes[] rows; QueryErrorCode error; }`` (``src/v1/
  Groth16VerifierExtension.sol``; the enum is ABI-encoded as ``uint8``), emitted by ``respond`` after the proof
  verified and the client's ``lpnCallback`` ran;
* ``function gasFee() public view returns (uint256)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_abi import decode, encode
from eth_hash.auto import keccak

from monmouth.chain import selector

REQUEST_SIGNATURE = "request(bytes32,bytes32[],uint256,uint256)"
REQUEST_SELECTOR = selector(REQUEST_SIGNATURE)
GAS_FEE_SELECTOR = selector("gasFee()")
NEW_REQUEST_TOPIC = keccak(b"NewRequest(uint256,bytes32,address,bytes32[],uint256,uint256,uint256,uint256)")
NEW_RESPONSE_TOPIC = keccak(b"NewResponse(uint256,address,(uint256,bytes[],uint8))")


def encode_request(query_hash: bytes, placeholders: Sequence[bytes], start_block: int, end_block: int) -> bytes:
    """Calldata of ``request(queryHash, placeholders, startBlock, endBlock)``."""
    return REQUEST_SELECTOR + encode(["bytes32", "bytes32[]", "uint256", "uint256"],
                                     [query_hash, list(placeholders), start_block, end_block])


def _topic_address(topic: bytes) -> bytes:
    return topic[12:]


def decode_new_request(topics: Sequence[bytes], data: bytes) -> dict[str, Any]:
    """Fields of a ``NewRequest`` log.

    Raises:
        ValueError: not a well-formed ``NewRequest`` log.
    """
    if len(topics) != 4 or topics[0] != NEW_REQUEST_TOPIC:
        raise ValueError("not a NewRequest log")
    placeholders, start, end, fee, proof_block = decode(["bytes32[]", "uint256", "uint256", "uint256", "uint256"],
                                                        data)
    return {"request_id": int.from_bytes(topics[1], "big"), "query_hash": topics[2],
            "client": _topic_address(topics[3]), "placeholders": list(placeholders), "start_block": start,
            "end_block": end, "fee": fee, "proof_block": proof_block}


def decode_new_response(topics: Sequence[bytes], data: bytes) -> dict[str, Any]:
    """Fields of a ``NewResponse`` log.

    Raises:
        ValueError: not a well-formed ``NewResponse`` log.
    """
    if len(topics) != 3 or topics[0] != NEW_RESPONSE_TOPIC:
        raise ValueError("not a NewResponse log")
    ((total, rows, error),) = decode(["(uint256,bytes[],uint8)"], data)
    return {"request_id": int.from_bytes(topics[1], "big"), "client": _topic_address(topics[2]),
            "total_matched_rows": total, "rows": list(rows), "error": error}
