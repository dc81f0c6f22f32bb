// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

// A test stand-in for Lagrange's ZK coprocessor query registry (LPNRegistryV1 / QueryManager), implementing the
// interface documented in Lagrange-Labs/lagrange-lpn-contracts src/v1/interfaces/IQueryManager.sol: request(...),
// gasFee(), respond(...) and the NewRequest / NewResponse events, with QueryOutput as in
// src/v1/Groth16VerifierExtension.sol. What it leaves out, on purpose: the Groth16 proof verification in respond()
// (the test calling respond() plays the prover network's relayer, and the rows it passes are the result) and the
// L1 block-hash bookkeeping of non-Ethereum chains. Written for Monmouth's tests; not Lagrange's code.

enum QueryErrorCode {
    NoError,
    ComputationOverflow
}

struct QueryOutput {
    uint256 totalMatchedRows;
    bytes[] rows;
    QueryErrorCode error;
}

interface ILPNClientV1 {
    function lpnCallback(uint256 requestId, QueryOutput memory result) external;
}

contract TestLPNRegistry {
    uint256 public constant ETH_GAS_FEE = 0.01 ether;
    uint256 public constant MAX_QUERY_RANGE = 50_000;

    struct QueryRequest {
        address client;
        bytes32 queryHash;
        uint64 startBlock;
        uint64 endBlock;
    }

    uint256 public requestId;
    mapping(uint256 => QueryRequest) public requests;

    event NewRequest(
        uint256 indexed requestId,
        bytes32 indexed queryHash,
        address indexed client,
        bytes32[] placeholders,
        uint256 startBlock,
        uint256 endBlock,
        uint256 gasFee,
        uint256 proofBlock
    );

    event NewResponse(uint256 indexed requestId, address indexed client, QueryOutput result);

    function gasFee() public pure returns (uint256) {
        return ETH_GAS_FEE;
    }

    function request(bytes32 queryHash, bytes32[] calldata placeholders, uint256 startBlock, uint256 endBlock)
        external
        payable
        returns (uint256)
    {
        require(msg.value >= gasFee(), "InsufficientGasFee");
        require(endBlock <= block.number, "QueryAfterCurrentBlock");
        require(startBlock <= endBlock, "QueryInvalidRange");
        require(endBlock - startBlock + 1 <= MAX_QUERY_RANGE, "QueryGreaterThanMaxRange");
        unchecked {
            requestId++;
        }
        requests[requestId] = QueryRequest(msg.sender, queryHash, uint64(startBlock), uint64(endBlock));
        emit NewRequest(requestId, queryHash, msg.sender, placeholders, startBlock, endBlock, msg.value, 0);
        return requestId;
    }

    function respond(uint256 requestId_, bytes32[] calldata data, uint256 blockNumber) external {
        QueryRequest memory q = requests[requestId_];
        require(q.client != address(0), "unknown request");
        require(blockNumber <= block.number, "future block");
        delete requests[requestId_];
        bytes[] memory rows = new bytes[](data.length);
        for (uint256 i = 0; i < data.length; i++) {
            rows[i] = abi.encodePacked(data[i]);
        }
        QueryOutput memory result = QueryOutput(data.length, rows, QueryErrorCode.NoError);
        if (q.client.code.length > 0) {
            ILPNClientV1(q.client).lpnCallback(requestId_, result);
        }
        emit NewResponse(requestId_, q.client, result);
    }
}
