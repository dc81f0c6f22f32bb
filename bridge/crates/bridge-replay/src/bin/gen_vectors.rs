//! `gen-vectors DIR` writes the golden test vectors: one `NAME.msgpack` per sample message and
//! `vectors.json` describing each one's decoded value (hashes/addresses/bytes as `0x` hex, uint256
//! as decimal strings, absent values as `null`). `gen-vectors --check DIR` compares instead and
//! exits 1 on any difference. The Python tests (`tests/test_wire.py`) decode every vector, check
//! every field against `vectors.json`, and re-encode byte-identically.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use monmouth_wire::sample::{fake_address, fake_hash};
use monmouth_wire::types::hex_string;
use monmouth_wire::{
    encode, Ack, Block, BlockRef, ErrorCode, ErrorMsg, Heartbeat, Hello, HistoryBlocks, HistoryRequest, Log, Message,
    Notification, NotificationMsg, Receipt, Transaction, Welcome, U256,
};
use serde_json::{json, Value};

fn u256(v: &U256) -> Value {
    Value::String(v.to_decimal())
}

fn opt_u256(v: &Option<U256>) -> Value {
    v.as_ref().map_or(Value::Null, u256)
}

fn block_ref(r: &BlockRef) -> Value {
    json!({"number": r.number, "hash": r.hash.to_hex()})
}

fn log_json(l: &Log) -> Value {
    json!({
        "address": l.address.to_hex(),
        "topics": l.topics.iter().map(|t| t.to_hex()).collect::<Vec<_>>(),
        "data": hex_string(&l.data),
    })
}

fn receipt_json(r: &Receipt) -> Value {
    json!({
        "status": r.status,
        "cumulative_gas_used": r.cumulative_gas_used,
        "logs": r.logs.iter().map(log_json).collect::<Vec<_>>(),
        "contract_address": r.contract_address.map(|a| a.to_hex()),
    })
}

fn tx_json(t: &Transaction) -> Value {
    json!({
        "hash": t.hash.to_hex(),
        "type": t.tx_type,
        "sender": t.sender.to_hex(),
        "to": t.to.map(|a| a.to_hex()),
        "value": u256(&t.value),
        "input": hex_string(&t.input),
        "nonce": t.nonce,
        "gas_limit": t.gas_limit,
        "gas_price": opt_u256(&t.gas_price),
        "max_fee_per_gas": opt_u256(&t.max_fee_per_gas),
        "max_priority_fee_per_gas": opt_u256(&t.max_priority_fee_per_gas),
        "chain_id": t.chain_id,
    })
}

fn block_json(b: &Block) -> Value {
    json!({
        "number": b.number,
        "hash": b.hash.to_hex(),
        "parent_hash": b.parent_hash.to_hex(),
        "timestamp": b.timestamp,
        "beneficiary": b.beneficiary.to_hex(),
        "gas_limit": b.gas_limit,
        "gas_used": b.gas_used,
        "base_fee_per_gas": opt_u256(&b.base_fee_per_gas),
        "transactions": b.transactions.iter().map(tx_json).collect::<Vec<_>>(),
        "receipts": b.receipts.iter().map(receipt_json).collect::<Vec<_>>(),
    })
}

fn chain_json(c: &Option<Vec<Block>>) -> Value {
    c.as_ref().map_or(Value::Null, |c| Value::Array(c.iter().map(block_json).collect()))
}

/// An optional key (`node_head`, `start_block`), present only when known (as on the wire).
fn with_optional(mut v: Value, key: &str, value: Option<u64>) -> Value {
    if let (Some(n), Some(map)) = (value, v.as_object_mut()) {
        map.insert(key.to_owned(), json!(n));
    }
    v
}

fn message_json(m: &Message) -> Value {
    match m {
        Message::Hello(h) => with_optional(
            json!({
                "type": "hello", "version": h.version, "head": h.head.as_ref().map(block_ref),
                "window": h.window, "client": h.client,
            }),
            "start_block",
            h.start_block,
        ),
        Message::Welcome(w) => with_optional(
            with_optional(
                json!({
                    "type": "welcome", "version": w.version, "chain_id": w.chain_id, "node": w.node,
                    "heartbeat_ms": w.heartbeat_ms, "epoch": w.epoch,
                }),
                "node_head",
                w.node_head,
            ),
            "history",
            w.history,
        ),
        Message::History(h) => json!({
            "type": "history", "id": h.id, "from": h.from, "to": h.to, "head": h.head.as_ref().map(block_ref),
        }),
        Message::HistoryBlocks(h) => json!({
            "type": "history_blocks", "id": h.id, "blocks": chain_json(&h.blocks), "error": h.error,
        }),
        Message::Notification(n) => json!({
            "type": "notification", "seq": n.seq, "kind": n.notification.kind.as_str(),
            "old": chain_json(&n.notification.old), "new": chain_json(&n.notification.new),
        }),
        Message::Ack(a) => json!({"type": "ack", "seq": a.seq, "head": a.head.as_ref().map(block_ref)}),
        Message::Heartbeat(h) => with_optional(json!({"type": "heartbeat", "ts_ms": h.ts_ms}), "node_head", h.node_head),
        Message::Error(e) => json!({"type": "error", "code": e.code, "message": e.message}),
    }
}

/// A block with hand-picked edge cases in its transactions.
fn edge_block(number: u64, parent: [u8; 32], fork: u64, london: bool) -> Block {
    let hash = fake_hash(0xb0, number, fork);
    let token = fake_address(0x7070);
    let txs = vec![
        // Pre-EIP-155 legacy transfer: chain_id None, zero value (empty bin), empty input.
        (
            Transaction {
                hash: fake_hash(0x7a, number, 0),
                tx_type: 0,
                sender: fake_address(1),
                to: Some(fake_address(2)),
                value: U256::ZERO,
                input: Vec::new(),
                nonce: 0,
                gas_limit: 21_000,
                gas_price: Some(U256::from(20_000_000_000u64)),
                max_fee_per_gas: None,
                max_priority_fee_per_gas: None,
                chain_id: None,
            },
            // Pre-Byzantium receipt: status None, no logs.
            Receipt { status: None, cumulative_gas_used: 21_000, logs: Vec::new(), contract_address: None },
        ),
        // Contract creation: to None, contract_address set, large nonce.
        (
            Transaction {
                hash: fake_hash(0x7a, number, 1),
                tx_type: 2,
                sender: fake_address(3),
                to: None,
                value: U256::from(1u64),
                input: vec![0x60, 0x80, 0x60, 0x40, 0x52, 0x34, 0x80, 0x15],
                nonce: 1 << 40,
                gas_limit: 3_000_000,
                gas_price: None,
                max_fee_per_gas: Some(U256::from(100_000_000_000u64)),
                max_priority_fee_per_gas: Some(U256::ZERO),
                chain_id: Some(1),
            },
            Receipt {
                status: Some(1),
                cumulative_gas_used: 1_021_000,
                logs: vec![Log { address: fake_address(0xc0de), topics: Vec::new(), data: Vec::new() }],
                contract_address: Some(fake_address(0xc0de)),
            },
        ),
        // ERC-20 transfer with a 4-topic log and the largest uint256 value; a failed status.
        (
            Transaction {
                hash: fake_hash(0x7a, number, 2),
                tx_type: 2,
                sender: fake_address(4),
                to: Some(token),
                value: U256::MAX,
                input: vec![0xa9, 0x05, 0x9c, 0xbb, 0, 0, 0, 0],
                nonce: 300,
                gas_limit: 65_536,
                gas_price: None,
                max_fee_per_gas: Some(U256::from(u128::MAX)),
                max_priority_fee_per_gas: Some(U256::from(256u64)),
                chain_id: Some(1),
            },
            Receipt {
                status: Some(0),
                cumulative_gas_used: 1_086_536,
                logs: vec![Log {
                    address: token,
                    topics: vec![fake_hash(0xdd, 1, 0), fake_hash(0x01, 4, 0), fake_hash(0x01, 5, 0), fake_hash(0x02, 6, 0)],
                    data: U256::from(1_000_000u64).0.to_vec(),
                }],
                contract_address: None,
            },
        ),
    ];
    let (transactions, receipts): (Vec<_>, Vec<_>) = txs.into_iter().unzip();
    Block {
        number,
        hash,
        parent_hash: monmouth_wire::FixedBytes(parent),
        timestamp: 1_700_000_000 + number * 12,
        beneficiary: fake_address(0xfee),
        gas_limit: 30_000_000,
        gas_used: 1_086_536,
        base_fee_per_gas: london.then(|| U256::from(7_000_000_000u64)),
        transactions,
        receipts,
    }
}

fn vectors() -> Vec<(&'static str, Message)> {
    let n = 17_000_000;
    let root = fake_hash(0xb0, n - 1, 0).0;
    let b1 = edge_block(n, root, 0, false);
    let b2 = edge_block(n + 1, b1.hash.0, 0, true);
    let b2_fork = edge_block(n + 1, b1.hash.0, 1, true);
    let b3_fork = edge_block(n + 2, b2_fork.hash.0, 1, true);
    let head = b1.block_ref();
    vec![
        ("hello", Message::Hello(Hello { version: 1, head: Some(head), window: 64, client: "monmouth/0.1.0".into(), start_block: None })),
        ("hello_empty", Message::Hello(Hello { version: 1, head: None, window: 1, client: "monmouth/0.1.0".into(), start_block: None })),
        ("hello_start", Message::Hello(Hello { version: 1, head: None, window: 64, client: "monmouth/0.1.0".into(), start_block: Some(0) })),
        (
            "welcome",
            Message::Welcome(Welcome {
                version: 1,
                chain_id: 1,
                node: "reth/v1.9.0".into(),
                heartbeat_ms: 1000,
                epoch: 1_700_000_000_000,
                node_head: Some(21_000_000),
                history: None,
            }),
        ),
        (
            "welcome_history",
            Message::Welcome(Welcome {
                version: 1,
                chain_id: 1,
                node: "monmouth-reth/0.1.0 (reth v2.5.1)".into(),
                heartbeat_ms: 1000,
                epoch: 1_700_000_000_001,
                node_head: Some(21_000_000),
                history: Some(64),
            }),
        ),
        ("history", Message::History(HistoryRequest { id: 1, from: n, to: n + 63, head: Some(b2.block_ref()) })),
        ("history_any", Message::History(HistoryRequest { id: 1 << 33, from: 0, to: 0, head: None })),
        ("history_blocks", Message::HistoryBlocks(HistoryBlocks { id: 1, blocks: Some(vec![b1.clone(), b2.clone()]), error: None })),
        (
            "history_blocks_error",
            Message::HistoryBlocks(HistoryBlocks {
                id: 2,
                blocks: None,
                error: Some("history request 2: block 17000005 is beyond the node's head, block 17000001".into()),
            }),
        ),
        (
            "notification_committed",
            Message::Notification(NotificationMsg {
                seq: 1,
                notification: Notification::committed(vec![b1.clone(), b2.clone()]),
            }),
        ),
        (
            "notification_reorged",
            Message::Notification(NotificationMsg {
                seq: 2,
                notification: Notification::reorged(vec![b2.clone()], vec![b2_fork.clone(), b3_fork.clone()]),
            }),
        ),
        (
            "notification_reverted",
            Message::Notification(NotificationMsg {
                seq: (1 << 32) + 1,
                notification: Notification::reverted(vec![b2_fork, b3_fork]),
            }),
        ),
        ("ack", Message::Ack(Ack { seq: 3, head: Some(head) })),
        ("ack_empty", Message::Ack(Ack { seq: 4, head: None })),
        ("heartbeat", Message::Heartbeat(Heartbeat { ts_ms: 1_700_000_000_123, node_head: None })),
        ("heartbeat_bridge", Message::Heartbeat(Heartbeat { ts_ms: 1_700_000_000_456, node_head: Some(21_000_001) })),
        (
            "error_version",
            Message::Error(ErrorMsg::new(
                ErrorCode::UnsupportedVersion,
                "protocol version 2 is not supported; this bridge speaks version 1",
            )),
        ),
        ("error_gap", Message::Error(ErrorMsg::new(ErrorCode::Gap, "expected seq 5, got seq 7"))),
    ]
}

fn run(dir: &Path, check: bool) -> Result<bool, Box<dyn std::error::Error>> {
    let mut described = Vec::new();
    let mut files = Vec::new();
    for (name, msg) in vectors() {
        let file = format!("{name}.msgpack");
        described.push(json!({"name": name, "file": file, "type": msg.type_name(), "value": message_json(&msg)}));
        files.push((file, encode(&msg)?));
    }
    let doc = json!({
        "description": "Golden vectors of the Monmouth wire protocol v1, written by bridge/crates/bridge-replay/src/bin/gen_vectors.rs. Hashes, addresses and byte strings are 0x hex; uint256 values are decimal strings; absent values are null.",
        "protocol_version": monmouth_wire::PROTOCOL_VERSION,
        "vectors": described,
    });
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    files.push(("vectors.json".to_owned(), text.into_bytes()));
    let mut same = true;
    for (file, bytes) in files {
        let path = dir.join(&file);
        if check {
            let current = std::fs::read(&path).unwrap_or_default();
            if current != bytes {
                eprintln!("gen-vectors: {} differs from what the encoder writes now", path.display());
                same = false;
            }
        } else {
            std::fs::write(&path, bytes)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(same)
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.first().is_some_and(|a| a == "--check");
    if check {
        args.remove(0);
    }
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: gen-vectors [--check] DIR");
        return ExitCode::from(64);
    };
    if !check {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("gen-vectors: cannot create {}: {e}", dir.display());
            return ExitCode::from(1);
        }
    }
    match run(&dir, check) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("gen-vectors: {e}");
            ExitCode::from(1)
        }
    }
}
