//! Deterministic sample data for tests, golden vectors and benchmarks. Nothing here reads the clock
//! or a random source: the same arguments always give the same bytes.

use crate::types::{Address, Block, FixedBytes, Log, Receipt, Transaction, B256, U256};

/// A 32-byte value derived from a tag and two numbers (not a real hash; unique per input).
pub fn fake_hash(tag: u8, a: u64, b: u64) -> B256 {
    let mut out = [0u8; 32];
    out[0] = tag;
    out[8..16].copy_from_slice(&a.to_be_bytes());
    out[16..24].copy_from_slice(&b.to_be_bytes());
    // Spread the bits so that hashes do not look like counters.
    let mut x = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_add(u64::from(tag)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    for chunk in out[24..].iter_mut() {
        x ^= x >> 29;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        *chunk = (x >> 56) as u8;
    }
    FixedBytes(out)
}

/// A 20-byte address derived from a number.
pub fn fake_address(n: u64) -> Address {
    let mut out = [0u8; 20];
    out[0] = 0xa0;
    out[12..].copy_from_slice(&n.to_be_bytes());
    FixedBytes(out)
}

/// A sample transaction `i` of block `number` on fork `fork`; every fourth one is a contract
/// creation, the others alternate between legacy and EIP-1559 fee fields.
pub fn sample_tx(number: u64, fork: u64, i: u64) -> (Transaction, Receipt) {
    let creation = i % 4 == 3;
    let eip1559 = i % 2 == 1;
    let tx = Transaction {
        hash: fake_hash(0x7a ^ fork as u8, number, i),
        tx_type: if eip1559 { 2 } else { 0 },
        sender: fake_address(1000 + i),
        to: if creation { None } else { Some(fake_address(2000 + (number + i) % 7)) },
        value: U256::from(u128::from(i) * 1_000_000_000_000_000),
        input: if creation { vec![0x60, 0x80, 0x60, 0x40, 0x52] } else { vec![0xa9, 0x05, 0x9c, 0xbb, i as u8] },
        nonce: number * 10 + i,
        gas_limit: 21_000 + 1000 * i,
        gas_price: if eip1559 { None } else { Some(U256::from(30_000_000_000u64)) },
        max_fee_per_gas: if eip1559 { Some(U256::from(40_000_000_000u64)) } else { None },
        max_priority_fee_per_gas: if eip1559 { Some(U256::from(1_500_000_000u64)) } else { None },
        chain_id: Some(1),
    };
    let receipt = Receipt {
        status: Some(u64::from(i % 5 != 4)),
        cumulative_gas_used: 21_000 * (i + 1),
        logs: if creation {
            Vec::new()
        } else {
            vec![Log {
                address: fake_address(2000 + (number + i) % 7),
                topics: vec![fake_hash(0xdd, 0, 0), fake_hash(0x01, 1000 + i, 0)],
                data: U256::from(i + 1).0.to_vec(),
            }]
        },
        contract_address: if creation { Some(fake_address(5000 + number * 100 + i)) } else { None },
    };
    (tx, receipt)
}

/// `count` contiguous blocks starting at `first`, each with `txs` transactions, on fork `fork`
/// (forks differ in hashes from their first block on). The first block's parent hash is
/// `fake_hash(0xb0, first - 1, parent_fork)` where `parent_fork` is 0: forks branch off the main
/// chain (fork 0).
pub fn sample_chain(first: u64, count: u64, txs: u64, fork: u64) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut parent = fake_hash(0xb0, first.saturating_sub(1), 0);
    for number in first..first + count {
        let (transactions, receipts): (Vec<_>, Vec<_>) = (0..txs).map(|i| sample_tx(number, fork, i)).unzip();
        let hash = fake_hash(0xb0, number, fork);
        blocks.push(Block {
            number,
            hash,
            parent_hash: parent,
            timestamp: 1_700_000_000 + number * 12,
            beneficiary: fake_address(0xfee),
            gas_limit: 30_000_000,
            gas_used: 21_000 * txs,
            base_fee_per_gas: Some(U256::from(7_000_000_000u64 + number)),
            transactions,
            receipts,
        });
        parent = hash;
    }
    blocks
}
