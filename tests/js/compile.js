// Compiles contracts/MemoryRootVerifier.sol with the npm solc (solc-js) against the npm @openzeppelin/contracts,
// printing {"abi": [...], "bytecode": "0x..."} as JSON on stdout.
'use strict';
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const source = path.join(__dirname, 'contracts', 'MemoryRootVerifier.sol');
const input = {
  language: 'Solidity',
  sources: { 'MemoryRootVerifier.sol': { content: fs.readFileSync(source, 'utf8') } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: 'cancun',
    outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
  },
};

function findImports(p) {
  const candidate = path.join(__dirname, 'node_modules', p);
  if (fs.existsSync(candidate)) return { contents: fs.readFileSync(candidate, 'utf8') };
  return { error: 'not found: ' + p };
}

const out = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (out.errors || []).filter((e) => e.severity === 'error');
if (errors.length) {
  process.stderr.write(errors.map((e) => e.formattedMessage).join('\n'));
  process.exit(1);
}
const c = out.contracts['MemoryRootVerifier.sol'].MemoryRootVerifier;
process.stdout.write(JSON.stringify({ abi: c.abi, bytecode: '0x' + c.evm.bytecode.object, solc: solc.version() }));
