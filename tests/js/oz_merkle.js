// Cross-check helper for tests/test_memory_merkle.py: builds an OpenZeppelin StandardMerkleTree from JSON on
// stdin and prints its root, every proof, and verification results as JSON.
//
// stdin:  {"types": [...], "values": [[...], ...], "check": [{"root", "leaf_values", "proof"}], "dump": {...}?}
// stdout: {"root", "proofs": [[...]], "leaves": [...], "checks": [bool], "dump_root", "dump_ok"}
'use strict';
const { StandardMerkleTree } = require('@openzeppelin/merkle-tree');

let input = '';
process.stdin.on('data', (c) => { input += c; });
process.stdin.on('end', () => {
  const req = JSON.parse(input);
  const out = {};
  if (req.values && req.values.length) {
    const tree = StandardMerkleTree.of(req.values, req.types);
    out.root = tree.root;
    out.proofs = req.values.map((_, i) => tree.getProof(i));
    out.leaves = req.values.map((v) => tree.leafHash(v));
  }
  out.checks = (req.check || []).map((c) => {
    try {
      return StandardMerkleTree.verify(c.root, req.types, c.leaf_values, c.proof);
    } catch (e) {
      return false;
    }
  });
  if (req.dump) {
    try {
      const t = StandardMerkleTree.load(req.dump);
      t.validate();
      out.dump_root = t.root;
      out.dump_ok = true;
    } catch (e) {
      out.dump_ok = false;
      out.dump_error = String(e);
    }
  }
  process.stdout.write(JSON.stringify(out));
});
