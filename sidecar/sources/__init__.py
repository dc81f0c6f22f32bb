"""Sources: exex (ZeroMQ bridge), rpc (JSON-RPC polling), replay (recorded file)."""
