//! Reth's types as wire types: headers, transactions (with their recovered senders), receipts and logs, a
//! committed chain, and a whole `ExExNotification` (a long committed chain split into bounded
//! `ChainCommitted`s). Used by the notification forwarding and by the history service alike, so that a block
//! reads the same whichever way it reaches the sidecar.

use monmouth_wire::{BlockRef, FixedBytes, Notification, U256};
use reth_ethereum::exex::{ExExHead, ExExNotification};
use reth_ethereum::primitives::{BlockHeader, NodePrimitives, Receipt, RecoveredBlock, SignedTransaction};
use reth_ethereum::provider::Chain;

/// Largest number of blocks per `ChainCommitted` sent to the sidecar; longer committed chains
/// (backfill) are split, which is equivalent and keeps frames far below the 64 MiB limit. Also the most
/// blocks per `history_blocks` answer.
pub(crate) const MAX_BLOCKS_PER_COMMIT: usize = 64;

pub(crate) fn b256(h: impl Into<[u8; 32]>) -> monmouth_wire::B256 {
    FixedBytes(h.into())
}

fn addr(a: impl Into<[u8; 20]>) -> monmouth_wire::Address {
    FixedBytes(a.into())
}

/// Reth's head type for a wire block reference.
pub(crate) fn exex_head(r: BlockRef) -> ExExHead {
    let mut head = ExExHead { block: Default::default() };
    head.block.number = r.number;
    head.block.hash = r.hash.0.into();
    head
}

/// A wire block with the header's fields and no transactions (receipts are added by the caller).
pub(crate) fn convert_header<H: BlockHeader>(header: &H, hash: monmouth_wire::B256) -> monmouth_wire::Block {
    monmouth_wire::Block {
        number: header.number(),
        hash,
        parent_hash: b256(header.parent_hash()),
        timestamp: header.timestamp(),
        beneficiary: addr(header.beneficiary()),
        gas_limit: header.gas_limit(),
        gas_used: header.gas_used(),
        base_fee_per_gas: header.base_fee_per_gas().map(U256::from),
        transactions: Vec::new(),
        receipts: Vec::new(),
    }
}

fn convert_tx<T: SignedTransaction>(sender: [u8; 20], tx: &T) -> monmouth_wire::Transaction {
    let dynamic = tx.is_dynamic_fee();
    monmouth_wire::Transaction {
        hash: b256(*tx.tx_hash()),
        tx_type: u64::from(tx.ty()),
        sender: FixedBytes(sender),
        to: tx.to().map(addr),
        value: U256(tx.value().to_be_bytes::<32>()),
        input: tx.input().to_vec(),
        nonce: tx.nonce(),
        gas_limit: tx.gas_limit(),
        gas_price: if dynamic { None } else { tx.gas_price().map(U256::from) },
        max_fee_per_gas: dynamic.then(|| U256::from(tx.max_fee_per_gas())),
        max_priority_fee_per_gas: if dynamic { tx.max_priority_fee_per_gas().map(U256::from) } else { None },
        chain_id: tx.chain_id(),
    }
}

/// Whether `tx` creates a contract, and its nonce (the created address is `sender.create(nonce)`).
fn creation<T: SignedTransaction>(tx: &T) -> (bool, u64) {
    (tx.to().is_none(), tx.nonce())
}

fn convert_receipt<R: Receipt>(contract_address: Option<monmouth_wire::Address>, r: &R) -> monmouth_wire::Receipt {
    monmouth_wire::Receipt {
        status: Some(u64::from(r.status())),
        cumulative_gas_used: r.cumulative_gas_used(),
        logs: r
            .logs()
            .iter()
            .map(|l| monmouth_wire::Log {
                address: addr(l.address),
                topics: l.data.topics().iter().map(|t| b256(*t)).collect(),
                data: l.data.data.to_vec(),
            })
            .collect(),
        contract_address,
    }
}

/// One block with its senders, and its receipts (`receipts[i]` belongs to transaction `i`), as a wire block.
pub(crate) fn convert_block<N: NodePrimitives>(
    block: &RecoveredBlock<N::Block>,
    receipts: &[N::Receipt],
) -> monmouth_wire::Block {
    let mut out = convert_header(block.header(), b256(block.hash()));
    out.transactions.reserve(receipts.len());
    out.receipts.reserve(receipts.len());
    for ((sender, tx), receipt) in block.transactions_with_sender().zip(receipts.iter()) {
        let (creates, nonce) = creation(tx);
        let created = creates.then(|| addr(sender.create(nonce)));
        out.transactions.push(convert_tx((*sender).into(), tx));
        out.receipts.push(convert_receipt(created, receipt));
    }
    out
}

/// One of Reth's chains (blocks with senders, and receipts) as wire blocks, oldest first.
fn convert_chain<N: NodePrimitives>(chain: &Chain<N>) -> impl Iterator<Item = monmouth_wire::Block> + '_ {
    chain.blocks_and_receipts().map(|(block, receipts)| convert_block::<N>(block, receipts))
}

/// One Reth notification as wire notifications, produced lazily: a long committed chain (backfill)
/// becomes `ChainCommitted`s of at most [`MAX_BLOCKS_PER_COMMIT`] blocks, converted one at a time.
pub(crate) fn convert<N: NodePrimitives>(n: &ExExNotification<N>) -> Box<dyn Iterator<Item = Notification> + Send + '_> {
    match n {
        ExExNotification::ChainCommitted { new } => {
            let mut blocks = convert_chain(new).peekable();
            Box::new(std::iter::from_fn(move || {
                blocks.peek()?;
                Some(Notification::committed(blocks.by_ref().take(MAX_BLOCKS_PER_COMMIT).collect()))
            }))
        }
        ExExNotification::ChainReorged { old, new } => Box::new(std::iter::once(Notification::reorged(
            convert_chain(old).collect(),
            convert_chain(new).collect(),
        ))),
        ExExNotification::ChainReverted { old } => {
            Box::new(std::iter::once(Notification::reverted(convert_chain(old).collect())))
        }
    }
}

/// The tip a notification leaves the chain at: the committed tip, or the fork point of a revert.
pub(crate) fn resulting_tip<N: NodePrimitives>(n: &ExExNotification<N>) -> u64 {
    match n {
        ExExNotification::ChainReverted { old } => old.range().start().saturating_sub(1),
        _ => n.committed_chain().map_or(0, |c| *c.range().end()),
    }
}
