"""ABI registry: function selectors and event topics → names, argument names and types; known contracts → labels,
token symbols and decimals.

Bundled ABIs are written as human-readable Solidity signatures (``"function transfer(address to, uint256 value)"``,
``"event Transfer(address indexed from, address indexed to, uint256 value)"``), parsed here; the selector is the
first 4 bytes of ``keccak256`` of the canonical signature, and an event's topic 0 the full hash (Solidity ABI spec,
https://docs.soliditylang.org/en/latest/abi-spec.html). Users add standard JSON ABIs and labels through
``plugins.rag.abi_dir``.

Events are keyed by ``(topic0, number of indexed arguments)``, so that ERC-20 ``Transfer`` (2 indexed) and ERC-721
``Transfer`` (3 indexed), which share topic 0, decode correctly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_hash.auto import keccak

from monmouth.chain import canonical_abi_type, parse_address, split_abi_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Param:
    """One argument: ``name`` (may be empty), canonical ``type`` (``uint256``, ``(address,uint256)[]``...),
    ``indexed`` (events only) and ``components`` for tuples."""

    name: str
    type: str
    indexed: bool = False
    components: tuple[Param, ...] = ()


@dataclass(frozen=True)
class AbiEntry:
    """A function or event: ``kind`` (``function``/``event``), ``name``, ``inputs``; ``signature`` is the canonical
    ``name(type,...)`` and ``selector`` its 4-byte selector (functions) or 32-byte topic 0 (events)."""

    kind: str
    name: str
    inputs: tuple[Param, ...]

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(p.type for p in self.inputs)})"

    @property
    def selector(self) -> bytes:
        digest = keccak(self.signature.encode())
        return digest[:4] if self.kind == "function" else digest

    @property
    def indexed_count(self) -> int:
        return sum(1 for p in self.inputs if p.indexed)


# ----------------------------------------------------------------------------------------------- signature parser


def _params(text: str) -> list[str]:
    """The non-empty parameters of a parameter list (a trailing comma is tolerated)."""
    return [p for p in split_abi_params(text) if p.strip()]


def _parse_param(text: str) -> Param:
    text = text.strip()
    if text.startswith("("):
        depth = 0
        i = 0
        for i, ch in enumerate(text):  # noqa: B007 - i is used after the loop
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        inner, rest = text[1:i], text[i + 1:]
        comps = tuple(_parse_param(c) for c in _params(inner))
        suffix = ""
        while rest.startswith("["):
            j = rest.index("]")
            suffix += rest[:j + 1]
            rest = rest[j + 1:]
        words = rest.split()
        indexed = "indexed" in words
        names = [w for w in words if w not in ("indexed", "calldata", "memory", "storage")]
        typ = "(" + ",".join(c.type for c in comps) + ")" + suffix
        return Param(names[-1] if names else "", typ, indexed, comps)
    words = text.split()
    typ = canonical_abi_type(words[0])
    indexed = "indexed" in words[1:]
    names = [w for w in words[1:] if w not in ("indexed", "calldata", "memory", "storage", "payable")]
    return Param(names[-1] if names else "", typ, indexed)


def parse_signature(text: str) -> AbiEntry:
    """Parse ``"function name(type name, ...)"`` or ``"event Name(type indexed name, ...)"``.

    Types are made canonical and validated with eth-abi's grammar (:func:`monmouth.chain.canonical_abi_type`);
    the parameter list is split by :func:`monmouth.chain.split_abi_params`, as the memory plugin's event parser does.

    Raises:
        ValueError: not of that form, or an unknown ABI type.
    """
    text = text.strip()
    kind, _, rest = text.partition(" ")
    if kind not in ("function", "event"):
        raise ValueError(f"ABI signature must start with 'function' or 'event': {text!r}")
    name, paren, args = rest.partition("(")
    if not paren or not args.rstrip().endswith(")"):
        raise ValueError(f"malformed ABI signature {text!r}")
    body = args.rstrip()[:-1]
    inputs = tuple(_parse_param(p) for p in _params(body))
    return AbiEntry(kind, name.strip(), inputs)


def _param_from_json(p: Mapping[str, Any]) -> Param:
    typ = str(p.get("type", ""))
    comps = tuple(_param_from_json(c) for c in p.get("components") or ())
    if typ.startswith("tuple"):
        typ = "(" + ",".join(c.type for c in comps) + ")" + typ[len("tuple"):]
    return Param(str(p.get("name") or ""), typ, bool(p.get("indexed", False)), comps)


def entries_from_json(abi: Iterable[Mapping[str, Any]]) -> list[AbiEntry]:
    """Functions and events of a standard JSON ABI (other entries are skipped)."""
    out = []
    for item in abi:
        kind = item.get("type", "function")
        if kind not in ("function", "event") or not item.get("name"):
            continue
        if kind == "event" and item.get("anonymous"):
            continue
        out.append(AbiEntry(kind, str(item["name"]), tuple(_param_from_json(p) for p in item.get("inputs") or ())))
    return out


# ----------------------------------------------------------------------------------------------- bundled ABIs

#: Standards and widely used contracts: ERC-20, ERC-721, ERC-1155, WETH9, Uniswap V2 router/pair, Uniswap V3
#: routers/pool/positions, Universal Router, Multicall, Seaport, Curve, Balancer, Lido, the beacon deposit contract,
#: EtherDelta and a few others seen on mainnet.
BUNDLED_SIGNATURES: tuple[str, ...] = (
    # ERC-20
    "function transfer(address to, uint256 value)",
    "function transferFrom(address from, address to, uint256 value)",
    "function approve(address spender, uint256 value)",
    "function increaseAllowance(address spender, uint256 addedValue)",
    "function decreaseAllowance(address spender, uint256 subtractedValue)",
    "function permit(address owner, address spender, uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s)",
    "event Transfer(address indexed from, address indexed to, uint256 value)",
    "event Approval(address indexed owner, address indexed spender, uint256 value)",
    # mint / burn (common token extensions)
    "function mint()",
    "function mint(uint256 amount)",
    "function mint(address to, uint256 amount)",
    "function burn(uint256 amount)",
    "function burnFrom(address account, uint256 amount)",
    # ERC-721
    "function safeTransferFrom(address from, address to, uint256 tokenId)",
    "function safeTransferFrom(address from, address to, uint256 tokenId, bytes data)",
    "function setApprovalForAll(address operator, bool approved)",
    "event Transfer(address indexed from, address indexed to, uint256 indexed tokenId)",
    "event Approval(address indexed owner, address indexed approved, uint256 indexed tokenId)",
    "event ApprovalForAll(address indexed owner, address indexed operator, bool approved)",
    # ERC-1155
    "function safeTransferFrom(address from, address to, uint256 id, uint256 amount, bytes data)",
    "function safeBatchTransferFrom(address from, address to, uint256[] ids, uint256[] amounts, bytes data)",
    "event TransferSingle(address indexed operator, address indexed from, address indexed to, uint256 id, "
    "uint256 value)",
    "event TransferBatch(address indexed operator, address indexed from, address indexed to, uint256[] ids, "
    "uint256[] values)",
    # WETH9
    "function deposit()",
    "function withdraw(uint256 wad)",
    "event Deposit(address indexed dst, uint256 wad)",
    "event Withdrawal(address indexed src, uint256 wad)",
    # Uniswap V2 router 02
    "function swapExactTokensForTokens(uint256 amountIn, uint256 amountOutMin, address[] path, address to, "
    "uint256 deadline)",
    "function swapTokensForExactTokens(uint256 amountOut, uint256 amountInMax, address[] path, address to, "
    "uint256 deadline)",
    "function swapExactETHForTokens(uint256 amountOutMin, address[] path, address to, uint256 deadline)",
    "function swapTokensForExactETH(uint256 amountOut, uint256 amountInMax, address[] path, address to, "
    "uint256 deadline)",
    "function swapExactTokensForETH(uint256 amountIn, uint256 amountOutMin, address[] path, address to, "
    "uint256 deadline)",
    "function swapETHForExactTokens(uint256 amountOut, address[] path, address to, uint256 deadline)",
    "function swapExactTokensForTokensSupportingFeeOnTransferTokens(uint256 amountIn, uint256 amountOutMin, "
    "address[] path, address to, uint256 deadline)",
    "function swapExactETHForTokensSupportingFeeOnTransferTokens(uint256 amountOutMin, address[] path, address to, "
    "uint256 deadline)",
    "function swapExactTokensForETHSupportingFeeOnTransferTokens(uint256 amountIn, uint256 amountOutMin, "
    "address[] path, address to, uint256 deadline)",
    "function addLiquidity(address tokenA, address tokenB, uint256 amountADesired, uint256 amountBDesired, "
    "uint256 amountAMin, uint256 amountBMin, address to, uint256 deadline)",
    "function addLiquidityETH(address token, uint256 amountTokenDesired, uint256 amountTokenMin, "
    "uint256 amountETHMin, address to, uint256 deadline)",
    "function removeLiquidity(address tokenA, address tokenB, uint256 liquidity, uint256 amountAMin, "
    "uint256 amountBMin, address to, uint256 deadline)",
    "function removeLiquidityETH(address token, uint256 liquidity, uint256 amountTokenMin, uint256 amountETHMin, "
    "address to, uint256 deadline)",
    # Uniswap V2 pair / factory
    "function swap(uint256 amount0Out, uint256 amount1Out, address to, bytes data)",
    "function sync()",
    "function skim(address to)",
    "event Swap(address indexed sender, uint256 amount0In, uint256 amount1In, uint256 amount0Out, "
    "uint256 amount1Out, address indexed to)",
    "event Sync(uint112 reserve0, uint112 reserve1)",
    "event Mint(address indexed sender, uint256 amount0, uint256 amount1)",
    "event Burn(address indexed sender, uint256 amount0, uint256 amount1, address indexed to)",
    "event PairCreated(address indexed token0, address indexed token1, address pair, uint256 allPairsLength)",
    # Uniswap V3 SwapRouter, SwapRouter02, positions manager
    "function exactInputSingle((address tokenIn, address tokenOut, uint24 fee, address recipient, uint256 deadline, "
    "uint256 amountIn, uint256 amountOutMinimum, uint160 sqrtPriceLimitX96) params)",
    "function exactInput((bytes path, address recipient, uint256 deadline, uint256 amountIn, "
    "uint256 amountOutMinimum) params)",
    "function exactOutputSingle((address tokenIn, address tokenOut, uint24 fee, address recipient, "
    "uint256 deadline, uint256 amountOut, uint256 amountInMaximum, uint160 sqrtPriceLimitX96) params)",
    "function exactOutput((bytes path, address recipient, uint256 deadline, uint256 amountOut, "
    "uint256 amountInMaximum) params)",
    "function exactInputSingle((address tokenIn, address tokenOut, uint24 fee, address recipient, uint256 amountIn, "
    "uint256 amountOutMinimum, uint160 sqrtPriceLimitX96) params)",
    "function exactInput((bytes path, address recipient, uint256 amountIn, uint256 amountOutMinimum) params)",
    "function exactOutputSingle((address tokenIn, address tokenOut, uint24 fee, address recipient, "
    "uint256 amountOut, uint256 amountInMaximum, uint160 sqrtPriceLimitX96) params)",
    "function exactOutput((bytes path, address recipient, uint256 amountOut, uint256 amountInMaximum) params)",
    "function multicall(bytes[] data)",
    "function multicall(uint256 deadline, bytes[] data)",
    "function multicall(bytes32 previousBlockhash, bytes[] data)",
    "function unwrapWETH9(uint256 amountMinimum, address recipient)",
    "function unwrapWETH9(uint256 amountMinimum)",
    "function refundETH()",
    "function sweepToken(address token, uint256 amountMinimum, address recipient)",
    "function mint((address token0, address token1, uint24 fee, int24 tickLower, int24 tickUpper, "
    "uint256 amount0Desired, uint256 amount1Desired, uint256 amount0Min, uint256 amount1Min, address recipient, "
    "uint256 deadline) params)",
    "function increaseLiquidity((uint256 tokenId, uint256 amount0Desired, uint256 amount1Desired, "
    "uint256 amount0Min, uint256 amount1Min, uint256 deadline) params)",
    "function decreaseLiquidity((uint256 tokenId, uint128 liquidity, uint256 amount0Min, uint256 amount1Min, "
    "uint256 deadline) params)",
    "function collect((uint256 tokenId, address recipient, uint128 amount0Max, uint128 amount1Max) params)",
    "event IncreaseLiquidity(uint256 indexed tokenId, uint128 liquidity, uint256 amount0, uint256 amount1)",
    "event DecreaseLiquidity(uint256 indexed tokenId, uint128 liquidity, uint256 amount0, uint256 amount1)",
    "event Collect(uint256 indexed tokenId, address recipient, uint256 amount0, uint256 amount1)",
    # Uniswap V3 pool / factory
    "event Swap(address indexed sender, address indexed recipient, int256 amount0, int256 amount1, "
    "uint160 sqrtPriceX96, uint128 liquidity, int24 tick)",
    "event Mint(address sender, address indexed owner, int24 indexed tickLower, int24 indexed tickUpper, "
    "uint128 amount, uint256 amount0, uint256 amount1)",
    "event Burn(address indexed owner, int24 indexed tickLower, int24 indexed tickUpper, uint128 amount, "
    "uint256 amount0, uint256 amount1)",
    "event Collect(address indexed owner, address recipient, int24 indexed tickLower, int24 indexed tickUpper, "
    "uint128 amount0, uint128 amount1)",
    "event Flash(address indexed sender, address indexed recipient, uint256 amount0, uint256 amount1, "
    "uint256 paid0, uint256 paid1)",
    "event PoolCreated(address indexed token0, address indexed token1, uint24 indexed fee, int24 tickSpacing, "
    "address pool)",
    # Uniswap Universal Router, Permit2
    "function execute(bytes commands, bytes[] inputs, uint256 deadline)",
    "function execute(bytes commands, bytes[] inputs)",
    "event Permit(address indexed owner, address indexed token, address indexed spender, uint160 amount, "
    "uint48 expiration, uint48 nonce)",
    # Multicall, Multicall2, Multicall3
    "function aggregate((address target, bytes callData)[] calls)",
    "function tryAggregate(bool requireSuccess, (address target, bytes callData)[] calls)",
    "function aggregate3((address target, bool allowFailure, bytes callData)[] calls)",
    "function aggregate3Value((address target, bool allowFailure, uint256 value, bytes callData)[] calls)",
    # Seaport
    "function fulfillBasicOrder((address considerationToken, uint256 considerationIdentifier, "
    "uint256 considerationAmount, address offerer, address zone, address offerToken, uint256 offerIdentifier, "
    "uint256 offerAmount, uint8 basicOrderType, uint256 startTime, uint256 endTime, bytes32 zoneHash, uint256 salt, "
    "bytes32 offererConduitKey, bytes32 fulfillerConduitKey, uint256 totalOriginalAdditionalRecipients, "
    "(uint256 amount, address recipient)[] additionalRecipients, bytes signature) parameters)",
    "function fulfillBasicOrder_efficient_6GL6yc((address considerationToken, uint256 considerationIdentifier, "
    "uint256 considerationAmount, address offerer, address zone, address offerToken, uint256 offerIdentifier, "
    "uint256 offerAmount, uint8 basicOrderType, uint256 startTime, uint256 endTime, bytes32 zoneHash, uint256 salt, "
    "bytes32 offererConduitKey, bytes32 fulfillerConduitKey, uint256 totalOriginalAdditionalRecipients, "
    "(uint256 amount, address recipient)[] additionalRecipients, bytes signature) parameters)",
    "event OrderFulfilled(bytes32 orderHash, address indexed offerer, address indexed zone, address recipient, "
    "(uint8 itemType, address token, uint256 identifier, uint256 amount)[] offer, "
    "(uint8 itemType, address token, uint256 identifier, uint256 amount, address recipient)[] consideration)",
    # Curve, Balancer V2
    "function exchange(int128 i, int128 j, uint256 dx, uint256 min_dy)",
    "event TokenExchange(address indexed buyer, int128 sold_id, uint256 tokens_sold, int128 bought_id, "
    "uint256 tokens_bought)",
    "event Swap(bytes32 indexed poolId, address indexed tokenIn, address indexed tokenOut, uint256 amountIn, "
    "uint256 amountOut)",
    # Lido, beacon deposit contract
    "function submit(address referral)",
    "event Submitted(address indexed sender, uint256 amount, address referral)",
    "function deposit(bytes pubkey, bytes withdrawal_credentials, bytes signature, bytes32 deposit_data_root)",
    "event DepositEvent(bytes pubkey, bytes withdrawal_credentials, bytes amount, bytes signature, bytes index)",
    # Generic vault / staking
    "function deposit(uint256 amount)",
    "function deposit(uint256 pid, uint256 amount)",
    "function withdraw(uint256 pid, uint256 amount)",
    "function withdraw()",
    "function claim()",
    "function stake(uint256 amount)",
    # EtherDelta (2017-2018 exchange)
    "function trade(address tokenGet, uint256 amountGet, address tokenGive, uint256 amountGive, uint256 expires, "
    "uint256 nonce, address user, uint8 v, bytes32 r, bytes32 s, uint256 amount)",
    "function cancelOrder(address tokenGet, uint256 amountGet, address tokenGive, uint256 amountGive, "
    "uint256 expires, uint256 nonce, uint8 v, bytes32 r, bytes32 s)",
    "function depositToken(address token, uint256 amount)",
    "function withdrawToken(address token, uint256 amount)",
    "event Trade(address tokenGet, uint256 amountGet, address tokenGive, uint256 amountGive, address get, "
    "address give)",
    "event Deposit(address token, address user, uint256 amount, uint256 balance)",
    "event Withdraw(address token, address user, uint256 amount, uint256 balance)",
    "event Cancel(address tokenGet, uint256 amountGet, address tokenGive, uint256 amountGive, uint256 expires, "
    "uint256 nonce, address user, uint8 v, bytes32 r, bytes32 s)",
    # zkSync Era
    "function requestL2Transaction(address contractL2, uint256 l2Value, bytes calldata, uint256 l2GasLimit, "
    "uint256 l2GasPerPubdataByteLimit, bytes[] factoryDeps, address refundRecipient)",
    # CryptoKitties auctions
    "function bid(uint256 tokenId)",
    # Ownership / proxies
    "event OwnershipTransferred(address indexed previousOwner, address indexed newOwner)",
    "event Upgraded(address indexed implementation)",
)


@dataclass(frozen=True)
class Contract:
    """A known contract: ``label``; for tokens ``symbol`` and ``decimals`` (``None`` for non-fungible ones)."""

    label: str
    symbol: str | None = None
    decimals: int | None = None


def _c(label: str, symbol: str | None = None, decimals: int | None = None) -> Contract:
    return Contract(label, symbol, decimals)


#: Well-known mainnet contracts (lower-case hex without 0x).
BUNDLED_CONTRACTS: dict[str, Contract] = {
    # tokens
    "c02aaa39b223fe8d0a0e5c4f27ead9083c756cc2": _c("Wrapped Ether", "WETH", 18),
    "dac17f958d2ee523a2206206994597c13d831ec7": _c("Tether USD", "USDT", 6),
    "a0b86991c6218b36c1d19d4a2e9eb0ce3606eb48": _c("USD Coin", "USDC", 6),
    "6b175474e89094c44da98b954eedeac495271d0f": _c("Dai Stablecoin", "DAI", 18),
    "89d24a6b4ccb1b6faa2625fe562bdd9a23260359": _c("Sai Stablecoin (single-collateral Dai)", "SAI", 18),
    "2260fac5e5542a773aa44fbcfedf7c193bc2c599": _c("Wrapped BTC", "WBTC", 8),
    "1f9840a85d5af5bf1d1762f925bdaddc4201f984": _c("Uniswap", "UNI", 18),
    "514910771af9ca656af840dff83e8264ecf986ca": _c("ChainLink Token", "LINK", 18),
    "7fc66500c84a76ad7e9c93437bfc5ac33e2ddae9": _c("Aave Token", "AAVE", 18),
    "95ad61b0a150d79219dcf64e1e6cc01f0b64c4ce": _c("SHIBA INU", "SHIB", 18),
    "ae7ab96520de3a18e5e111b5eaab095312d7fe84": _c("Lido: Liquid staked Ether 2.0", "stETH", 18),
    "7f39c581f595b53c5cb19bd0b3f8da6c935e2ca0": _c("Lido: Wrapped liquid staked Ether 2.0", "wstETH", 18),
    "4fabb145d64652a948d72533023f6e7a623c7c53": _c("Binance USD", "BUSD", 18),
    "0d8775f648430679a709e98d2b0cb6250d2887ef": _c("Basic Attention Token", "BAT", 18),
    "e41d2489571d322189246dafa5ebde1f4699f498": _c("0x Protocol Token", "ZRX", 18),
    "9f8f72aa9304c8b593d555f12ef6589cc3a579a2": _c("Maker", "MKR", 18),
    "d533a949740bb3306d119cc777fa900ba034cd52": _c("Curve DAO Token", "CRV", 18),
    "c011a73ee8576fb46f5e1c5751ca3b9fe0af2a6f": _c("Synthetix Network Token", "SNX", 18),
    "6982508145454ce325ddbe47a25d4ec3d2311933": _c("Pepe", "PEPE", 18),
    "4d224452801aced8b2f0aebe155379bb5d594381": _c("ApeCoin", "APE", 18),
    "5a98fcbea516cf06857215779fd812ca3bef1b32": _c("Lido DAO Token", "LDO", 18),
    "0000000000085d4780b73119b644ae5ecd22b376": _c("TrueUSD", "TUSD", 18),
    "853d955acef822db058eb8505911ed77f175b99e": _c("Frax", "FRAX", 18),
    "d26114cd6ee289accf82350c8d8487fedb8a0c07": _c("OMG Network", "OMG", 18),
    "b8c77482e45f1f44de1745f52c74426c631bdd52": _c("BNB (ERC-20)", "BNB", 18),
    "86fa049857e0209aa7d9e616f7eb3b3b78ecfdb0": _c("EOS (ERC-20)", "EOS", 18),
    "e0b7927c4af23765cb51314a0e0521a9645f0e2a": _c("DigixDAO", "DGD", 9),
    "a74476443119a942de498590fe1f2454d7d4ac0d": _c("Golem Network Token", "GNT", 18),
    "06012c8cf97bead5deae237070f9587f8e7a266d": _c("CryptoKitties", "CK", None),
    "bc4ca0eda7647a8ab7c2061c2e118a18a936f13d": _c("Bored Ape Yacht Club", "BAYC", None),
    "57f1887a8bf19b14fc0df6fd9b2acc9af147ea85": _c("ENS: Base Registrar", "ENS-NAME", None),
    # DEXes and routers
    "7a250d5630b4cf539739df2c5dacb4c659f2488d": _c("Uniswap V2: Router 2"),
    "5c69bee701ef814a2b6a3edd4b1652cb9cc5aa6f": _c("Uniswap V2: Factory"),
    "e592427a0aece92de3edee1f18e0157c05861564": _c("Uniswap V3: SwapRouter"),
    "68b3465833fb72a70ecdf485e0e4c7bd8665fc45": _c("Uniswap V3: SwapRouter02"),
    "1f98431c8ad98523631ae4a59f267346ea31f984": _c("Uniswap V3: Factory"),
    "c36442b4a4522e871399cd717abdd847ab11fe88": _c("Uniswap V3: Positions NFT", "UNI-V3-POS", None),
    "ef1c6e67703c7bd7107eed8303fbe6ec2554bf6b": _c("Uniswap: Universal Router (v1)"),
    "3fc91a3afd70395cd496c647d5a6cc9d4b2b7fad": _c("Uniswap: Universal Router"),
    "000000000022d473030f116ddee9f6b43ac78ba3": _c("Uniswap: Permit2"),
    "88e6a0c2ddd26feeb64f039a2c41296fcb3f5640": _c("Uniswap V3: USDC/WETH 0.05% pool"),
    "8ad599c3a0ff1de082011efddc58f1908eb6e6d8": _c("Uniswap V3: USDC/WETH 0.3% pool"),
    "11b815efb8f581194ae79006d24e0d814b7697f6": _c("Uniswap V3: WETH/USDT 0.05% pool"),
    "4e68ccd3e89f51c3074ca5072bbac773960dfa36": _c("Uniswap V3: WETH/USDT 0.3% pool"),
    "b4e16d0168e52d35cacd2c6185b44281ec28c9dc": _c("Uniswap V2: USDC/WETH pair"),
    "0d4a11d5eeaac28ec3f61d100daf4d40471f1852": _c("Uniswap V2: WETH/USDT pair"),
    "a478c2975ab1ea89e8196811f51a7b7ade33eb11": _c("Uniswap V2: DAI/WETH pair"),
    "d9e1ce17f2641f24ae83637ab66a2cca9c378b9f": _c("SushiSwap: Router"),
    "1111111254eeb25477b68fb85ed929f73a960582": _c("1inch v5: Aggregation Router"),
    "1111111254fb6c44bac0bed2854e76f90643097d": _c("1inch v4: Aggregation Router"),
    "def1c0ded9bec7f1a1670819833240f027b25eff": _c("0x: Exchange Proxy"),
    "881d40237659c251811cec9c364ef91dc08d300c": _c("MetaMask: Swap Router"),
    "00000000006c3852cbef3e08e8df289169ede581": _c("OpenSea: Seaport 1.1"),
    "00000000000001ad428e4906ae43d8f9852d0dd6": _c("OpenSea: Seaport 1.4"),
    "00000000000000adc04c56bf30ac9d3c0aaf14dc": _c("OpenSea: Seaport 1.5"),
    "8d12a197cb00d4747a1fe03395095ce2a5cc6819": _c("EtherDelta 2"),
    "b1690c08e213a35ed9bab7b318de14420fb57d8c": _c("CryptoKitties: Sale Auction"),
    # infrastructure
    "ca11bde05977b3631167028862be2a173976ca11": _c("Multicall3"),
    "eefba1e63905ef1d7acba5a8513c70307c1ce441": _c("Multicall"),
    "00000000219ab540356cbb839cbe05303d7705fa": _c("Beacon Chain Deposit Contract"),
    "32400084c286cf3e17e7b677ea9583e60a000324": _c("zkSync Era: Diamond Proxy"),
    "0000000000000000000000000000000000000000": _c("null address"),
}


# ----------------------------------------------------------------------------------------------- registry


@dataclass
class Registry:
    """Lookup tables for the decoder.

    Attributes:
        functions: ``{selector (4 bytes): [AbiEntry, ...]}``; the first entry wins, user ABIs come first.
        events: ``{(topic0 (32 bytes), indexed count): AbiEntry}``.
        contracts: ``{address (20 bytes): Contract}``.
    """

    functions: dict[bytes, list[AbiEntry]] = field(default_factory=dict)
    events: dict[tuple[bytes, int], AbiEntry] = field(default_factory=dict)
    contracts: dict[bytes, Contract] = field(default_factory=dict)

    def add(self, entry: AbiEntry, *, first: bool = False) -> None:
        """Register a function or event (``first`` puts it ahead of existing entries with the same selector)."""
        if entry.kind == "function":
            lst = self.functions.setdefault(entry.selector, [])
            if all(e.signature != entry.signature for e in lst):
                lst.insert(0, entry) if first else lst.append(entry)
        else:
            key = (entry.selector, entry.indexed_count)
            if first or key not in self.events:
                self.events[key] = entry

    def function(self, selector: bytes) -> AbiEntry | None:
        lst = self.functions.get(selector)
        return lst[0] if lst else None

    def event(self, topic0: bytes, indexed: int) -> AbiEntry | None:
        return self.events.get((topic0, indexed))

    def contract(self, address: bytes | None) -> Contract | None:
        return self.contracts.get(address) if address is not None else None

    def label(self, address: bytes | None) -> str | None:
        c = self.contract(address)
        return c.label if c else None

    def set_label(self, address: bytes, label: str) -> None:
        old = self.contracts.get(address)
        self.contracts[address] = Contract(label, old.symbol, old.decimals) if old else Contract(label)


def load_abi_dir(registry: Registry, directory: Path) -> int:
    """Add the ABIs, labels and tokens of ``directory`` to ``registry`` (user entries take precedence).

    Files: ``*.json`` holding an ABI list or an object with an ``abi`` list (Hardhat/Foundry artifacts);
    ``labels.json`` ``{"0xaddr": "label"}``; ``tokens.json`` ``{"0xaddr": {"symbol": "X", "decimals": 18,
    "label": "..."}}``. Returns the number of ABI entries added.

    Raises:
        ValueError: the directory is missing, or a file is not valid JSON of those shapes (naming the file).
    """
    if not directory.is_dir():
        raise ValueError(f"plugins.rag.abi_dir: {directory} is not a directory")
    added = 0
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if path.name == "labels.json":
                for a, label in data.items():
                    registry.set_label(parse_address(a, bare_ok=True), str(label))
            elif path.name == "tokens.json":
                for a, info in data.items():
                    registry.contracts[parse_address(a, bare_ok=True)] = Contract(
                        str(info.get("label") or info.get("symbol") or a), info.get("symbol"), info.get("decimals"))
            else:
                abi = data["abi"] if isinstance(data, dict) else data
                for e in entries_from_json(abi):
                    registry.add(e, first=True)
                    added += 1
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"plugins.rag.abi_dir: {path}: {type(e).__name__}: {e}") from e
    return added


def build_registry(abi_dir: Path | None = None, labels: Mapping[str, str] | None = None) -> Registry:
    """The bundled registry, plus ``abi_dir`` and ``labels`` (``{"0xaddr": label}``) from the config.

    Raises:
        ValueError: a bad ``abi_dir`` file or label address.
    """
    reg = Registry()
    for sig in BUNDLED_SIGNATURES:
        reg.add(parse_signature(sig))
    for hexaddr, c in BUNDLED_CONTRACTS.items():
        reg.contracts[bytes.fromhex(hexaddr)] = c
    if abi_dir is not None:
        load_abi_dir(reg, abi_dir)
    for a, label in (labels or {}).items():
        reg.set_label(parse_address(a, bare_ok=True), label)
    return reg
