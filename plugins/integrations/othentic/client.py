"""Othentic AVS task performer: the ``sendTask`` JSON-RPC call and its ECDSA signature.

The call, as Othentic documents it for the Task Performer (Othentic docs, "Execution Service",
https://docs.othentic.xyz/main/avs-framework/othentic-consensus/execution-service)::

    {"jsonrpc": "2.0", "method": "sendTask",
     "params": [<proofOfTask: string>, <data: bytes>, <taskDefinitionId: uint16>, <performerAddress: address>,
                <signature: bytes>]}

The signature is the performer's ECDSA signature over
``keccak256(abi.encode(string proofOfTask, bytes data, address performerAddress, uint16 taskDefinitionId))`` —
the raw 32-byte digest signed directly, **without** the EIP-191 ``"\\x19Ethereum Signed Message"`` prefix,
serialized as 65 bytes ``r || s || v`` with ``v`` in {27, 28}. That is the encoding of Othentic's reference
performer, ``Execution_Service/src/dal.service.js`` in Othentic-Labs/simple-price-oracle-avs-example
(``AbiCoder.encode(["string", "bytes", "address", "uint16"], [...])``, ``keccak256``,
``wallet.signingKey.sign(messageHash).serialized``). Here it is computed with eth-abi and eth-account
(``Account.unsafe_sign_hash``).
"""

from __future__ import annotations

from typing import Any

from eth_abi import encode
from eth_account import Account
from eth_hash.auto import keccak

TASK_TYPES = ("string", "bytes", "address", "uint16")


def task_digest(proof_of_task: str, data: bytes, performer: str, task_definition_id: int) -> bytes:
    """``keccak256(abi.encode(proofOfTask, data, performer, taskDefinitionId))`` (32 bytes).

    Raises:
        ValueError: ``task_definition_id`` outside uint16, or ``performer`` not an address.
    """
    if not 0 <= task_definition_id <= 0xFFFF:
        raise ValueError(f"taskDefinitionId {task_definition_id} is not a uint16")
    return keccak(encode(list(TASK_TYPES), [proof_of_task, data, performer, task_definition_id]))


def sign_task(private_key: str, proof_of_task: str, data: bytes, task_definition_id: int) -> tuple[str, bytes]:
    """Sign a task as its performer; returns ``(performer address, 65-byte signature r||s||v)``."""
    acct = Account.from_key(private_key)
    digest = task_digest(proof_of_task, data, acct.address, task_definition_id)
    signed = Account.unsafe_sign_hash(digest, private_key)
    return acct.address, bytes(signed.signature)


def send_task_params(private_key: str, proof_of_task: str, data: bytes, task_definition_id: int) -> list[Any]:
    """The ``sendTask`` params, in the documented order: ``[proofOfTask, "0x" data, taskDefinitionId,
    performerAddress, "0x" signature]``."""
    performer, sig = sign_task(private_key, proof_of_task, data, task_definition_id)
    return [proof_of_task, "0x" + data.hex(), task_definition_id, performer, "0x" + sig.hex()]


def recover_performer(params: list[Any]) -> str:
    """The address that signed ``sendTask`` ``params`` (what an aggregator checks against ``performerAddress``).

    Raises:
        ValueError: malformed params or signature.
    """
    proof, data_hex, tdid, performer, sig_hex = params
    digest = task_digest(proof, bytes.fromhex(data_hex[2:]), performer, int(tdid))
    return str(Account._recover_hash(digest, signature=bytes.fromhex(sig_hex[2:])))
