#!/usr/bin/env node
// Independent FHIR R4 validation for carebridge tests: Lantana FHIR.js (npm `fhir` 4.12.0), a
// validator this project did not write, run over the gateway's output.
//
//   node tests/peers/validate-fhir.mjs [--allow-unexpected] < resources.ndjson
//
// stdin: NDJSON, one FHIR resource (a JSON object) per line; blank lines are skipped.
// stdout: one JSON line per resource, in input order:
//   {"index":n,"resourceType":"Condition","id":"x","valid":true,"messages":[{"severity","location","message"}]}
// `valid` is false when FHIR.js reports an `error` or `fatal` message; `warning` and `info`
// messages are listed but do not make a resource invalid.
// Exit status: 0 when every resource is valid, 1 when at least one is not, 2 when the input is
// unusable (no resources, or a line that is not a JSON object; such a line still gets a result
// line with a fatal message so the caller can see which one).
//
// Options passed to FHIR.js: errorOnUnexpected (unknown elements are errors, not warnings)
// unless --allow-unexpected is given. Code validation is on: a code outside a *required*
// binding's value set is an error, outside an extensible/preferred one a warning.
// See README.md for the known quirks of FHIR.js on official R4 examples.

import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

const USAGE = 'usage: node validate-fhir.mjs [--allow-unexpected] < resources.ndjson';

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      'allow-unexpected': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  process.stderr.write(`${err.message}\n${USAGE}\n`);
  process.exit(2);
}
if (args.help) {
  process.stderr.write(`${USAGE}\n`);
  process.exit(0);
}

// FHIR.js is CommonJS; its default parser loads the bundled R4 (4.0.x) definitions.
const require = createRequire(import.meta.url);
const { Fhir } = require('fhir');
const fhir = new Fhir();
const OPTIONS = { errorOnUnexpected: !args['allow-unexpected'] };

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function message(severity, location, text) {
  return { severity, location: location ?? '', message: text ?? '' };
}

function validateOne(resource) {
  if (resource === null || typeof resource !== 'object' || Array.isArray(resource)) {
    return { usable: false, messages: [message('fatal', '', 'line is not a JSON object')] };
  }
  let response;
  try {
    response = fhir.validate(resource, { ...OPTIONS });
  } catch (err) {
    // FHIR.js throws on some shapes instead of reporting them (e.g. `null` where a boolean is
    // expected: it calls null.toString()). That is still an invalid resource.
    return { usable: true, messages: [message('fatal', '', `validator threw: ${err?.message ?? err}`)] };
  }
  const messages = (response.messages ?? []).map((m) => message(m.severity, m.location, m.message));
  return { usable: true, messages };
}

const text = await readStdin();
const lines = text.split('\n').filter((line) => line.trim() !== '');
if (lines.length === 0) {
  process.stderr.write(`no resources on stdin\n${USAGE}\n`);
  process.exit(2);
}

let allValid = true;
let unusable = false;
const out = [];
lines.forEach((line, index) => {
  let resource;
  let result;
  try {
    resource = JSON.parse(line);
    result = validateOne(resource);
  } catch (err) {
    result = { usable: false, messages: [message('fatal', '', `line is not JSON: ${err.message}`)] };
  }
  if (!result.usable) unusable = true;
  const valid = result.usable && !result.messages.some((m) => m.severity === 'error' || m.severity === 'fatal');
  if (!valid) allValid = false;
  const isObject = resource !== null && typeof resource === 'object' && !Array.isArray(resource);
  out.push(
    JSON.stringify({
      index,
      resourceType: isObject ? resource.resourceType ?? null : null,
      id: isObject ? resource.id ?? null : null,
      valid,
      messages: result.messages,
    }),
  );
});

process.stdout.write(out.join('\n') + '\n', () => {
  process.exit(unusable ? 2 : allValid ? 0 : 1);
});
