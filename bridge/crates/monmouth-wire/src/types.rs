//! Chain data carried by `notification` messages: blocks, transactions, receipts, logs.
//!
//! Field order in every struct is the order of `docs/wire.md`; `rmp_serde::to_vec_named` writes the
//! fields as a msgpack map in declaration order, which is what makes Rust and Python frames
//! byte-identical. Do not reorder fields.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// Fixed-size raw bytes (`bin`, exactly `N` bytes on the wire): hashes (`N = 32`) and addresses
/// (`N = 20`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FixedBytes<const N: usize>(pub [u8; N]);

/// A 32-byte hash (block, transaction, topic).
pub type B256 = FixedBytes<32>;
/// A 20-byte account address.
pub type Address = FixedBytes<20>;

impl<const N: usize> FixedBytes<N> {
    /// All zero bytes.
    pub const ZERO: Self = Self([0u8; N]);

    /// Copy from a slice; `None` unless it is exactly `N` bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; N]>::try_from(bytes).ok().map(Self)
    }

    /// Lower-case hex with a `0x` prefix.
    pub fn to_hex(&self) -> String {
        hex_string(&self.0)
    }
}

impl<const N: usize> Default for FixedBytes<N> {
    fn default() -> Self {
        Self::ZERO
    }
}

impl<const N: usize> fmt::Debug for FixedBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl<const N: usize> fmt::Display for FixedBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl<const N: usize> From<[u8; N]> for FixedBytes<N> {
    fn from(value: [u8; N]) -> Self {
        Self(value)
    }
}

impl<const N: usize> Serialize for FixedBytes<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

struct FixedVisitor<const N: usize>;

impl<const N: usize> Visitor<'_> for FixedVisitor<N> {
    type Value = FixedBytes<N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bin of exactly {N} bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        FixedBytes::from_slice(v).ok_or_else(|| E::invalid_length(v.len(), &self))
    }
}

impl<'de, const N: usize> Deserialize<'de> for FixedBytes<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(FixedVisitor::<N>)
    }
}

/// A 256-bit unsigned integer (wei amounts, fee fields), held as 32 big-endian bytes.
///
/// On the wire it is a `bin` of 0–32 bytes: big-endian, **no leading zero bytes**, zero is the
/// empty `bin`. Decoding refuses more than 32 bytes and a leading zero byte, so every value has
/// exactly one encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct U256(pub [u8; 32]);

impl U256 {
    /// Zero.
    pub const ZERO: Self = Self([0u8; 32]);
    /// 2^256 - 1.
    pub const MAX: Self = Self([0xff; 32]);

    /// From a big-endian byte string of at most 32 bytes (leading zeros allowed here).
    pub fn from_be_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > 32 {
            return None;
        }
        let mut out = [0u8; 32];
        out[32 - bytes.len()..].copy_from_slice(bytes);
        Some(Self(out))
    }

    /// The minimal big-endian encoding: no leading zero bytes, empty for zero.
    pub fn to_minimal_be(&self) -> &[u8] {
        let start = self.0.iter().position(|b| *b != 0).unwrap_or(32);
        &self.0[start..]
    }

    /// The value if it fits in a `u128`.
    pub fn to_u128(&self) -> Option<u128> {
        let (hi, lo) = self.0.split_at(16);
        if hi.iter().any(|b| *b != 0) {
            return None;
        }
        let mut buf = [0u8; 16];
        buf.copy_from_slice(lo);
        Some(u128::from_be_bytes(buf))
    }

    /// Decimal representation (for logs and JSON descriptions).
    pub fn to_decimal(&self) -> String {
        // Repeated division by 10 on a 32-byte big-endian number.
        let mut digits = Vec::new();
        let mut n = self.0;
        while n.iter().any(|b| *b != 0) {
            let mut rem: u16 = 0;
            for byte in n.iter_mut() {
                let cur = (rem << 8) | u16::from(*byte);
                *byte = (cur / 10) as u8;
                rem = cur % 10;
            }
            digits.push(b'0' + rem as u8);
        }
        if digits.is_empty() {
            return "0".to_owned();
        }
        digits.reverse();
        String::from_utf8_lossy(&digits).into_owned()
    }
}

impl From<u128> for U256 {
    fn from(v: u128) -> Self {
        let mut out = [0u8; 32];
        out[16..].copy_from_slice(&v.to_be_bytes());
        Self(out)
    }
}

impl From<u64> for U256 {
    fn from(v: u64) -> Self {
        Self::from(u128::from(v))
    }
}

impl fmt::Debug for U256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_decimal())
    }
}

impl fmt::Display for U256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_decimal())
    }
}

impl Serialize for U256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.to_minimal_be())
    }
}

struct U256Visitor;

impl Visitor<'_> for U256Visitor {
    type Value = U256;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bin of 0-32 big-endian bytes without leading zeros (uint256)")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<U256, E> {
        if v.first() == Some(&0) {
            return Err(E::custom("uint256 has a leading zero byte"));
        }
        U256::from_be_slice(v).ok_or_else(|| E::invalid_length(v.len(), &self))
    }
}

impl<'de> Deserialize<'de> for U256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(U256Visitor)
    }
}

/// Lower-case hex with a `0x` prefix.
pub fn hex_string(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// A block's identity: `number` and `hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockRef {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
}

impl fmt::Display for BlockRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {}", self.number, self.hash)
    }
}

/// An event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    /// Emitting contract.
    pub address: Address,
    /// 0–4 topics.
    pub topics: Vec<B256>,
    /// Non-indexed data.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A transaction receipt; `receipts[i]` of a block belongs to `transactions[i]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// 1 success, 0 failure (EIP-658); `None` before Byzantium.
    pub status: Option<u64>,
    /// Gas used by this and every earlier transaction of the block (gas).
    pub cumulative_gas_used: u64,
    /// Logs emitted, in order.
    pub logs: Vec<Log>,
    /// Address of the created contract, when this was a contract creation.
    #[serde(default)]
    pub contract_address: Option<Address>,
}

/// A signed transaction with its recovered sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Transaction hash.
    pub hash: B256,
    /// EIP-2718 envelope type (0 legacy, 1, 2, 3, 4).
    #[serde(rename = "type")]
    pub tx_type: u64,
    /// Recovered signer.
    pub sender: Address,
    /// Recipient; `None` for contract creation.
    pub to: Option<Address>,
    /// Value transferred (wei).
    pub value: U256,
    /// Calldata (or init code for a creation).
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    /// Sender nonce.
    pub nonce: u64,
    /// Gas limit (gas).
    pub gas_limit: u64,
    /// Legacy / EIP-2930 gas price (wei), else `None`.
    #[serde(default)]
    pub gas_price: Option<U256>,
    /// EIP-1559 fee cap (wei), else `None`.
    #[serde(default)]
    pub max_fee_per_gas: Option<U256>,
    /// EIP-1559 tip cap (wei), else `None`.
    #[serde(default)]
    pub max_priority_fee_per_gas: Option<U256>,
    /// EIP-155 chain id; `None` for pre-EIP-155 legacy transactions.
    #[serde(default)]
    pub chain_id: Option<u64>,
}

/// An executed block with its transactions and receipts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
    /// Parent block hash.
    pub parent_hash: B256,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    /// Fee recipient.
    pub beneficiary: Address,
    /// Gas limit (gas).
    pub gas_limit: u64,
    /// Gas used (gas).
    pub gas_used: u64,
    /// EIP-1559 base fee (wei); `None` before London.
    #[serde(default)]
    pub base_fee_per_gas: Option<U256>,
    /// Transactions in block order.
    pub transactions: Vec<Transaction>,
    /// Receipts, `receipts[i]` for `transactions[i]`.
    pub receipts: Vec<Receipt>,
}

impl Block {
    /// This block's identity.
    pub fn block_ref(&self) -> BlockRef {
        BlockRef { number: self.number, hash: self.hash }
    }

    /// The identity of this block's parent.
    pub fn parent_ref(&self) -> BlockRef {
        BlockRef { number: self.number.saturating_sub(1), hash: self.parent_hash }
    }
}

/// Which of Reth's `ExExNotification` variants a notification is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotificationKind {
    /// `new` was appended to the canonical chain.
    ChainCommitted,
    /// `old` was replaced by `new`.
    ChainReorged,
    /// `old` was reverted.
    ChainReverted,
}

impl NotificationKind {
    /// The wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ChainCommitted => "ChainCommitted",
            Self::ChainReorged => "ChainReorged",
            Self::ChainReverted => "ChainReverted",
        }
    }
}

impl fmt::Display for NotificationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for NotificationKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

struct KindVisitor;

impl Visitor<'_> for KindVisitor {
    type Value = NotificationKind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"ChainCommitted\", \"ChainReorged\" or \"ChainReverted\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<NotificationKind, E> {
        match v {
            "ChainCommitted" => Ok(NotificationKind::ChainCommitted),
            "ChainReorged" => Ok(NotificationKind::ChainReorged),
            "ChainReverted" => Ok(NotificationKind::ChainReverted),
            other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
        }
    }
}

impl<'de> Deserialize<'de> for NotificationKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KindVisitor)
    }
}

/// One ExEx notification: what changed on the canonical chain.
///
/// Invariants checked by [`Notification::validate`]: `old` is present exactly for reorgs and
/// reverts, `new` exactly for commits and reorgs; every chain is non-empty and contiguous
/// (numbers +1, parent hashes linked); a reorg's chains share a fork point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The variant.
    pub kind: NotificationKind,
    /// The reverted chain, oldest block first.
    pub old: Option<Vec<Block>>,
    /// The committed chain, oldest block first.
    pub new: Option<Vec<Block>>,
}

impl Notification {
    /// A `ChainCommitted` notification.
    pub fn committed(new: Vec<Block>) -> Self {
        Self { kind: NotificationKind::ChainCommitted, old: None, new: Some(new) }
    }

    /// A `ChainReorged` notification.
    pub fn reorged(old: Vec<Block>, new: Vec<Block>) -> Self {
        Self { kind: NotificationKind::ChainReorged, old: Some(old), new: Some(new) }
    }

    /// A `ChainReverted` notification.
    pub fn reverted(old: Vec<Block>) -> Self {
        Self { kind: NotificationKind::ChainReverted, old: Some(old), new: None }
    }

    /// The tip of the committed chain, if any.
    pub fn committed_tip(&self) -> Option<BlockRef> {
        self.new.as_ref().and_then(|c| c.last()).map(Block::block_ref)
    }

    /// The chain head after applying this notification: the committed tip, or for a revert the
    /// parent of the first reverted block.
    pub fn resulting_head(&self) -> Option<BlockRef> {
        match self.kind {
            NotificationKind::ChainReverted => self.old.as_ref().and_then(|c| c.first()).map(Block::parent_ref),
            _ => self.committed_tip(),
        }
    }

    /// Number of blocks carried (old + new).
    pub fn block_count(&self) -> usize {
        self.old.as_ref().map_or(0, Vec::len) + self.new.as_ref().map_or(0, Vec::len)
    }

    /// Check the invariants listed on the type.
    ///
    /// # Errors
    /// A sentence naming the broken invariant.
    pub fn validate(&self) -> Result<(), String> {
        let (need_old, need_new) = match self.kind {
            NotificationKind::ChainCommitted => (false, true),
            NotificationKind::ChainReorged => (true, true),
            NotificationKind::ChainReverted => (true, false),
        };
        if need_old != self.old.is_some() {
            return Err(format!("{}: `old` must be {}", self.kind, if need_old { "present" } else { "nil" }));
        }
        if need_new != self.new.is_some() {
            return Err(format!("{}: `new` must be {}", self.kind, if need_new { "present" } else { "nil" }));
        }
        for (name, chain) in [("old", &self.old), ("new", &self.new)] {
            if let Some(chain) = chain {
                check_chain(chain).map_err(|e| format!("{}: {name}: {e}", self.kind))?;
            }
        }
        if let (Some(old), Some(new)) = (&self.old, &self.new) {
            let (a, b) = (old.first().map(Block::parent_ref), new.first().map(Block::parent_ref));
            if a != b {
                return Err(format!("{}: chains do not share a fork point ({a:?} vs {b:?})", self.kind));
            }
        }
        Ok(())
    }
}

pub(crate) fn check_chain(chain: &[Block]) -> Result<(), String> {
    let Some(first) = chain.first() else {
        return Err("chain is empty".to_owned());
    };
    let mut prev = first;
    for b in &chain[1..] {
        if prev.number.checked_add(1) != Some(b.number) || b.parent_hash != prev.hash {
            return Err(format!("block {} does not follow {}", b.block_ref(), prev.block_ref()));
        }
        prev = b;
    }
    for b in chain {
        if b.transactions.len() != b.receipts.len() {
            return Err(format!(
                "block {} has {} transactions but {} receipts",
                b.block_ref(),
                b.transactions.len(),
                b.receipts.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u256_minimal_encoding() {
        assert_eq!(U256::ZERO.to_minimal_be(), &[] as &[u8]);
        assert_eq!(U256::from(1u64).to_minimal_be(), &[1]);
        assert_eq!(U256::from(0x0100u64).to_minimal_be(), &[1, 0]);
        assert_eq!(U256::MAX.to_minimal_be().len(), 32);
        assert_eq!(U256::from(1_000_000_000_000_000_000u128).to_decimal(), "1000000000000000000");
        assert_eq!(U256::ZERO.to_decimal(), "0");
        assert_eq!(
            U256::MAX.to_decimal(),
            "115792089237316195423570985008687907853269984665640564039457584007913129639935"
        );
        assert_eq!(U256::from(u128::MAX).to_u128(), Some(u128::MAX));
        assert_eq!(U256::MAX.to_u128(), None);
    }

    #[test]
    fn u256_roundtrip_and_refusals() {
        for v in [U256::ZERO, U256::from(255u64), U256::from(256u64), U256::MAX] {
            let bytes = rmp_serde::to_vec(&v).expect("encode");
            let back: U256 = rmp_serde::from_slice(&bytes).expect("decode");
            assert_eq!(back, v);
        }
        // bin8 of [0, 1]: leading zero refused.
        assert!(rmp_serde::from_slice::<U256>(&[0xc4, 2, 0, 1]).is_err());
        // 33 bytes refused.
        let mut long = vec![0xc4, 33];
        long.extend([1u8; 33]);
        assert!(rmp_serde::from_slice::<U256>(&long).is_err());
        // str refused.
        assert!(rmp_serde::from_slice::<U256>(&[0xa1, b'1']).is_err());
    }

    #[test]
    fn fixed_bytes_length_checked() {
        let mut ok = vec![0xc4, 20];
        ok.extend([7u8; 20]);
        assert_eq!(rmp_serde::from_slice::<Address>(&ok).expect("decode"), FixedBytes([7u8; 20]));
        let mut bad = vec![0xc4, 19];
        bad.extend([7u8; 19]);
        assert!(rmp_serde::from_slice::<Address>(&bad).is_err());
        assert!(rmp_serde::from_slice::<B256>(&ok).is_err());
    }
}
