// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// Verifies Monmouth memory proofs on chain with OpenZeppelin's MerkleProof (tests/test_memory_onchain.py).
contract MemoryRootVerifier {
    /// agent => published per-agent memory root
    mapping(address => bytes32) public roots;

    event RootPublished(address indexed agent, bytes32 root);

    function publish(address agent, bytes32 root) external {
        roots[agent] = root;
        emit RootPublished(agent, root);
    }

    function verify(bytes32[] calldata proof, bytes32 root, bytes32 leaf) external pure returns (bool) {
        return MerkleProof.verify(proof, root, leaf);
    }

    /// Recomputes the StandardMerkleTree leaf of a memory item from its values, then verifies it against the
    /// agent's published root.
    function verifyItem(address agent, bytes32[] calldata proof, bytes32 id, uint8 kind, uint32 version,
                        uint64 anchorBlock, bytes32 commitment) external view returns (bool) {
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(id, agent, kind, version, anchorBlock, commitment))));
        return MerkleProof.verify(proof, roots[agent], leaf);
    }
}
