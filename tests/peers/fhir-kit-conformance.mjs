#!/usr/bin/env node
// A FHIR client this project did not write (npm `fhir-kit-client` 2.0.3), used unchanged and
// without workarounds against a running carebridge gateway.
//
//   node tests/peers/fhir-kit-conformance.mjs < input.json
//
// stdin: {"base": "http://…/fhir", "careteam": "<token>", "gp": "<token>", "patient":
//         "<gateway patient id>", "tag": "<unique suffix for ids>"}
// stdout: {"steps": [{"name", "ok", "detail"}], "resources": [every resource and Bundle the
//         gateway answered]}. Exit status 0 when every step passed, 1 otherwise, 2 on bad input.

import { Client } from 'fhir-kit-client';

const input = JSON.parse(await new Promise((resolve) => {
  let text = '';
  process.stdin.on('data', (c) => { text += c; });
  process.stdin.on('end', () => resolve(text));
}).catch(() => process.exit(2)));

const CPR = 'urn:oid:1.2.208.176.1.2';
const steps = [];
const resources = [];
const keep = (r) => { if (r && r.resourceType) resources.push(r); return r; };

async function step(name, fn) {
  try {
    const detail = await fn();
    steps.push({ name, ok: true, detail: detail ?? '' });
  } catch (e) {
    steps.push({ name, ok: false, detail: `${e.message} ${JSON.stringify(e.response?.data ?? '')}`.slice(0, 2000) });
  }
}

function must(cond, what) {
  if (!cond) throw new Error(what);
}

const careteam = new Client({ baseUrl: input.base, bearerToken: input.careteam });
const gp = new Client({ baseUrl: `${input.base}/gp`, bearerToken: input.gp });
const t = input.tag;
const pid = `fk-${t}`;

await step('metadata', async () => {
  const cap = keep(await careteam.capabilityStatement());
  must(cap.fhirVersion === '4.0.1', `fhirVersion ${cap.fhirVersion}`);
  return `${cap.rest[0].resource.length} types`;
});

await step('transaction to a sector base', async () => {
  const bundle = {
    resourceType: 'Bundle', type: 'transaction', entry: [
      { fullUrl: `urn:uuid:00000000-0000-4000-8000-${t.padStart(12, '0')}`, resource: { resourceType: 'Patient', id: pid, identifier: [{ system: CPR, value: `99${t.padStart(8, '0')}` }] }, request: { method: 'PUT', url: `Patient/${pid}` } },
      { resource: { resourceType: 'Condition', clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] }, code: { coding: [{ system: 'urn:oid:1.2.208.176.2.31', code: 'T90', display: 'Diabetes' }] }, subject: { reference: `urn:uuid:00000000-0000-4000-8000-${t.padStart(12, '0')}` } }, request: { method: 'POST', url: 'Condition' } },
    ],
  };
  const resp = keep(await gp.transaction({ body: bundle }));
  must(resp.type === 'transaction-response', resp.type);
  must(resp.entry.every((e) => /^20[01]/.test(e.response.status)), JSON.stringify(resp.entry));
  return resp.entry.map((e) => e.response.location).join(' ');
});

let created;
await step('create', async () => {
  created = keep(await gp.create({ resourceType: 'Condition', body: {
    resourceType: 'Condition', identifier: [{ system: 'urn:test:fk', value: `c-${t}` }],
    clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] },
    code: { coding: [{ system: 'urn:oid:1.2.208.176.2.31', code: 'K86', display: 'Hypertension' }] },
    subject: { reference: `Patient/${pid}` } } }));
  must(created.id && created.meta.versionId === '1', JSON.stringify(created.meta));
  return created.id;
});

await step('conditional create', async () => {
  const body = { ...created };
  delete body.id;
  delete body.meta;
  const again = keep(await gp.create({ resourceType: 'Condition', body, options: { headers: { 'If-None-Exist': `identifier=urn:test:fk|c-${t}` } } }));
  must(again.id === created.id, `matched ${again.id}, created ${created.id}`);
  return again.id;
});

await step('update, then a stale If-Match is 412', async () => {
  const v2 = keep(await gp.update({ resourceType: 'Condition', id: created.id, body: { ...created, note: [{ text: 'v2' }] }, options: { headers: { 'If-Match': 'W/"1"' } } }));
  must(v2.meta.versionId === '2', JSON.stringify(v2.meta));
  try {
    await gp.update({ resourceType: 'Condition', id: created.id, body: { ...created, note: [{ text: 'lost update' }] }, options: { headers: { 'If-Match': 'W/"1"' } } });
  } catch (e) {
    must(e.response?.status === 412, `status ${e.response?.status}`);
    keep(typeof e.response.data === 'string' ? JSON.parse(e.response.data) : e.response.data);
    return '412';
  }
  throw new Error('the stale update was applied');
});

await step('read, vread and history', async () => {
  const own = keep(await gp.read({ resourceType: 'Condition', id: created.id }));
  must(own.meta.versionId === '2', own.meta.versionId);
  const v1 = keep(await gp.vread({ resourceType: 'Condition', id: created.id, version: '1' }));
  must(!v1.note, 'version 1 has no note');
  const hist = keep(await gp.history({ resourceType: 'Condition', id: created.id }));
  must(hist.type === 'history' && hist.entry.length === 2, `${hist.entry?.length} versions`);
  // The cross-sector view, by gateway id.
  const found = keep(await careteam.search({ resourceType: 'Condition', searchParams: { identifier: `urn:test:fk|c-${t}` } }));
  must(found.total === 1, `total ${found.total}`);
  const gid = found.entry[0].resource.id;
  keep(await careteam.read({ resourceType: 'Condition', id: gid }));
  keep(await careteam.vread({ resourceType: 'Condition', id: gid, version: '1' }));
  const h = keep(await careteam.history({ resourceType: 'Condition', id: gid }));
  must(h.entry.length === 2, `${h.entry.length} versions across sectors`);
  return gid;
});

let alerts = [];
await step('search with paging to the end', async () => {
  let page = keep(await careteam.search({ resourceType: 'DetectedIssue', searchParams: { patient: input.patient, _count: 2 } }));
  const total = page.total;
  alerts = [...(page.entry ?? [])];
  let pages = 1;
  for (let next = careteam.nextPage({ bundle: page }); next; next = careteam.nextPage({ bundle: page })) {
    page = keep(await next);
    alerts.push(...(page.entry ?? []));
    pages += 1;
  }
  must(total > 2 && alerts.length === total, `${alerts.length} of ${total}`);
  return `${alerts.length} alerts in ${pages} pages`;
});

await step('_include', async () => {
  const b = keep(await careteam.search({ resourceType: 'Communication', searchParams: { patient: input.patient, _include: 'Communication:about' } }));
  const included = (b.entry ?? []).filter((e) => e.search.mode === 'include');
  must(included.length > 0 && included.every((e) => e.resource.resourceType === 'DetectedIssue'), JSON.stringify(b).slice(0, 400));
  return `${b.total} messages, ${included.length} alerts included`;
});

await step('$total-plan', async () => {
  const plan = keep(await careteam.operation({ name: '$total-plan', resourceType: 'Patient', id: input.patient, method: 'GET' }));
  must(plan.type === 'collection' && plan.entry.length > 1, plan.type);
  // Every reference of the plan resolves.
  const base = `${input.base}/`;
  let refs = 0;
  for (const e of plan.entry) {
    for (const m of JSON.stringify(e.resource).matchAll(/"reference":"([A-Za-z]+)\/([A-Za-z0-9.-]+)"/g)) {
      keep(await careteam.read({ resourceType: m[1], id: m[2] }));
      refs += 1;
    }
    must(e.fullUrl.startsWith(base), e.fullUrl);
  }
  return `${plan.entry.length} entries, ${refs} references read`;
});

await step('$acknowledge', async () => {
  const id = alerts[0].resource.id;
  const acked = keep(await careteam.operation({ name: '$acknowledge', resourceType: 'DetectedIssue', id, input: { resourceType: 'Parameters', parameter: [{ name: 'author', valueString: 'fhir-kit-client' }, { name: 'note', valueString: 'seen' }] } }));
  must(acked.resourceType === 'DetectedIssue', acked.resourceType);
  return id;
});

// exitCode, not exit(): a large report must be flushed to the pipe first.
process.stdout.write(JSON.stringify({ steps, resources }));
process.exitCode = steps.every((s) => s.ok) ? 0 : 1;
