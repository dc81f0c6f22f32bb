//! `bridge-replay`: serve the notifications of a replay file to Monmouth sidecars over the wire
//! protocol, exactly as the Reth ExEx bridge does (ROUTER socket, hello/welcome, credit window,
//! re-send buffer, heartbeats). Used by the cross-language tests and `bench/bridge.py`.
//!
//! stdout carries one JSON object per line: `{"event":"listening",...}` once bound, and
//! `{"event":"summary",...}` when it ends (counters, ack latency percentiles, throughput). Logs go
//! to stderr.
//!
//! Exit status: 0 when stopped by a signal or drained (`--exit-when-acked`), 2 when the replay file
//! was damaged (everything before the damage was served), 1 on any other failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use monmouth_wire::{percentile, ReplaySource, RunEnd, Server, ServerConfig, MAX_FRAME_BYTES};
use serde_json::json;
use tracing::error;

#[derive(Parser, Debug)]
#[command(version, about = "Serve a Monmouth replay file over the bridge wire protocol")]
struct Args {
    /// Replay file to serve (`MNMRP` format, docs/wire.md).
    #[arg(long)]
    file: PathBuf,
    /// ZeroMQ endpoint to bind (ROUTER).
    #[arg(long, env = "MONMOUTH_BRIDGE_ENDPOINT", default_value = "tcp://127.0.0.1:5555")]
    endpoint: String,
    /// Chain id announced in `welcome`.
    #[arg(long, default_value_t = 1)]
    chain_id: u64,
    /// Node name announced in `welcome`.
    #[arg(long, default_value = concat!("bridge-replay/", env!("CARGO_PKG_VERSION")))]
    node: String,
    /// Heartbeat interval (milliseconds).
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Notifications per second (0: as fast as the credit window allows).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Exit once the file is served and every notification acknowledged.
    #[arg(long)]
    exit_when_acked: bool,
    /// Largest frame sent or accepted (bytes).
    #[arg(long, default_value_t = MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Block number to announce as the node's head in `welcome` and heartbeats (a replay has no node; default:
    /// none announced). Lets tests see a sidecar's lag while it is served an older part of the chain.
    #[arg(long)]
    node_head: Option<u64>,
    /// Test aid: send a garbage frame before every N-th notification (0: never).
    #[arg(long, default_value_t = 0)]
    garbage_every: u64,
    /// Log level for stderr: error, warn, info, debug.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(args.log_level)
        .init();
    match serve(&args) {
        Ok(code) => code,
        Err(e) => {
            error!("{e}");
            eprintln!("bridge-replay: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let rate = (args.rate > 0.0).then_some(args.rate);
    let mut source = ReplaySource::open(args.file.clone(), rate)?.with_node_head(args.node_head);
    let cfg = ServerConfig {
        endpoint: args.endpoint.clone(),
        chain_id: args.chain_id,
        node: args.node.clone(),
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(1)),
        max_frame_bytes: args.max_frame_bytes,
        exit_when_drained: args.exit_when_acked,
        garbage_every: args.garbage_every,
    };
    let mut server = Server::bind(cfg)?;
    println!("{}", json!({"event": "listening", "endpoint": server.endpoint(), "pid": std::process::id()}));
    let started = Instant::now();
    let end = server.run(&mut source, || stop.load(Ordering::Relaxed))?;
    let s = server.stats();
    let elapsed = match (s.first_send, s.last_ack) {
        (Some(a), Some(b)) if b > a => b.duration_since(a).as_secs_f64(),
        _ => started.elapsed().as_secs_f64(),
    };
    let ms = |p: f64| percentile(&s.ack_latency_us, p).map(|us| us as f64 / 1000.0);
    let per_s = |x: f64| if elapsed > 0.0 { x / elapsed } else { 0.0 };
    println!(
        "{}",
        json!({
            "event": "summary",
            "end": match end { RunEnd::Drained => "drained", RunEnd::Stopped => "stopped" },
            "sent": s.sent,
            "resent": s.resent,
            "acked": s.acked,
            "acked_seq": server.acked_seq(),
            "unacked": server.unacked(),
            "bytes_sent": s.bytes_sent,
            "sessions": s.sessions,
            "sessions_lost": s.sessions_lost,
            "bad_frames": s.bad_frames,
            "errors_received": s.errors_received,
            "garbage_sent": s.garbage_sent,
            "start_index": source.start_index,
            "elapsed_s": elapsed,
            "notifications_per_s": per_s(s.acked as f64),
            "mb_per_s": per_s(s.bytes_sent as f64 / 1e6),
            "ack_p50_ms": ms(50.0),
            "ack_p99_ms": ms(99.0),
            "ack_max_ms": ms(100.0),
            "replay_error": source.error.as_ref().map(ToString::to_string),
        })
    );
    Ok(if source.error.is_some() { ExitCode::from(2) } else { ExitCode::SUCCESS })
}
