// Drives the unmodified ACME.js (the npm package `acme`, the shim that loads `@root/acme`)
// against an ACME server, using only the library's public API as its README gives it:
// ACME.create({ maintainerEmail, packageAgent, notify, skipDryRun, skipChallengeTest }) (the
// README's skipChallengeTests, as the code spells it), acme.init(directoryUrl),
// acme.accounts.create({ subscriberEmail, agreeToTerms, accountKey }) and
// acme.certificates.create({ account, accountKey, csr, domains, challenges }), with keys from
// @root/keypairs, CSRs from @root/csr and challenge plug-ins with init/zones/set/get/remove:
// acme-http-01-standalone for http-01 (its get() feeds the responder this driver runs on the
// CA's http-01 port) and one of ours for dns-01 (TXT records in the challenge test server).
// ACME.js has no call for revocation, key rollover or deactivation.
//
// Usage: node drive.mjs '<json config>'   (see `config` below for the fields)
// The CA's root must be trusted through NODE_EXTRA_CA_CERTS: ACME.js (through @root/request)
// makes its requests with Node's https module and its default TLS options, verification on.
// Prints one JSON object on stdout; exits 1 (printing {"error": ...}) on any failure.
// Every HTTP exchange is recorded (method, URL, JWS protected header and payload, status,
// problem document) and printed with the result.
//
// Node's global agents are replaced by ones that refuse, before any name lookup, every
// connection to a host other than 127.0.0.1: acme.init() schedules a request to the library
// author's server (maintainers.js: api.rootprojects.org, 3 s later, its error ignored), which
// must not leave this machine. Each refused connection is listed in `blocked`.

import http from 'node:http';
import https from 'node:https';
import { createRequire } from 'node:module';

import ACME from 'acme';
import CSR from '@root/csr';
import Keypairs from '@root/keypairs';
import Http01 from 'acme-http-01-standalone';

const config = JSON.parse(process.argv[2] ?? '{}');
// config fields:
//   directoryUrl: string           the ACME directory
//   http01Port: number             where the CA connects for http-01 (served here on 127.0.0.1)
//   challtestsrv: string           management API base URL, for dns-01
//   dnsZone: string                the zone the dns-01 plug-in says it manages
//   accountKey: "ec"|"rsa"         account key type (ES256 or RS256 JWS)
//   email: string                  subscriberEmail, the account's mailto: contact
//   certificates: [{ names: string[], certKey: "ec"|"rsa", challenge: "http-01"|"dns-01",
//                    withAccount: boolean }]
//       one certificates.create() each, in turn; withAccount false passes only the account
//       key, so that ACME.js finds the account's URL by its key (newAccount again)
//   wrongAnswerNames: string[]     names whose http-01 request the responder answers wrongly
//   expectFailure: boolean         certificates that fail are reported, not thrown

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);
const exchanges = [];
const transportErrors = [];
const blocked = [];
const events = [];
const pluginCalls = [];
const http01Requests = [];

// -- the network: loopback only, every exchange recorded ----------------------------------

function guarded(AgentClass) {
    return class extends AgentClass {
        createConnection(options, callback) {
            const host = options.host || options.hostname;
            if (!LOOPBACK.has(host)) {
                blocked.push({ host, port: options.port });
                callback(new Error(`drive.mjs: no connection to ${host} (loopback only)`));
                return undefined;
            }
            const socket = super.createConnection(options, callback);
            socket.on('error', (e) => {
                transportErrors.push({ host, port: options.port, code: e.code, message: e.message });
            });
            return socket;
        }
    };
}
https.globalAgent = new (guarded(https.Agent))({ keepAlive: true });
http.globalAgent = new (guarded(http.Agent))({ keepAlive: false });

function decodeB64u(value) {
    try {
        const text = Buffer.from(value, 'base64url').toString('utf8');
        return text === '' ? '' : JSON.parse(text);
    }
    catch {
        return value;
    }
}

function describeBody(entry, text) {
    if (!text.startsWith('{')) {
        return;
    }
    try {
        const jws = JSON.parse(text);
        if (!('protected' in jws)) {
            entry.body = jws;
            return;
        }
        entry.protected = decodeB64u(jws.protected);
        entry.payload = decodeB64u(jws.payload);
        if (entry.payload && typeof entry.payload === 'object' && 'csr' in entry.payload) {
            entry.payload = { ...entry.payload, csr: '(elided)' };
        }
        if (entry.protected && typeof entry.protected === 'object' && 'jwk' in entry.protected) {
            entry.protected = { ...entry.protected, jwk: `(${entry.protected.jwk.kty} key)` };
        }
    }
    catch {
        entry.requestBody = text;
    }
}

// ACME.js (through @root/request) calls https.request and http.request of Node's modules
// for every request; these wrappers record what was sent and what came back. Node's
// diagnostics channel for a client request is published only once its body is written.
function recordResponse(entry, response) {
    entry.status = response.statusCode;
    const type = String(response.headers['content-type'] || '');
    entry.contentType = type;
    for (const header of ['location', 'link']) {
        if (response.headers[header]) {
            entry[header] = response.headers[header];
        }
    }
    if (type.startsWith('application/problem+json') || type.startsWith('application/json')) {
        const chunks = [];
        response.on('data', (chunk) => chunks.push(chunk));
        response.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            try {
                entry.body = JSON.parse(text);
            }
            catch {
                entry.body = text;
            }
        });
    }
}

function recording(module, scheme) {
    const original = module.request;
    module.request = function (...args) {
        const request = original.apply(this, args);
        const entry = {
            method: request.method,
            url: `${scheme}//${request.getHeader('host')}${request.path}`,
            userAgent: request.getHeader('user-agent') ?? null,
            accept: request.getHeader('accept') ?? null,
        };
        if (!LOOPBACK.has(request.host)) {
            return request; // refused by the agent below; listed in `blocked`
        }
        exchanges.push(entry);
        const chunks = [];
        const keep = (chunk) => {
            if (chunk !== undefined && chunk !== null && typeof chunk !== 'function') {
                chunks.push(Buffer.from(chunk));
            }
        };
        const { write, end } = request;
        request.write = function (chunk, ...rest) {
            keep(chunk);
            return write.call(this, chunk, ...rest);
        };
        request.end = function (chunk, ...rest) {
            keep(chunk);
            describeBody(entry, Buffer.concat(chunks).toString('utf8'));
            return end.call(this, chunk, ...rest);
        };
        request.on('response', (response) => recordResponse(entry, response));
        return request;
    };
}
recording(https, 'https:');
recording(http, 'http:');

function lastProblem() {
    for (let i = exchanges.length - 1; i >= 0; i -= 1) {
        const { status, body, contentType } = exchanges[i];
        if (status >= 400 && body && typeof body === 'object') {
            return { httpStatus: status, contentType, ...body };
        }
    }
    return null;
}

// -- challenge plug-ins and the http-01 responder -----------------------------------------

// ACME.js calls a plug-in's functions with one argument ({ challenge }) and awaits a promise;
// one of arity 2 would be taken for a callback API. These wrappers record each call.
function recorded(type, plugin) {
    const wrap = (op) => async (args) => {
        const ch = (args && args.challenge) || {};
        pluginCalls.push({ type, op, altname: ch.altname ?? null, token: ch.token ?? null, dnsHost: ch.dnsHost ?? null });
        return plugin[op](args);
    };
    const out = { set: wrap('set'), get: wrap('get'), remove: wrap('remove') };
    if (plugin.init) {
        out.init = async (deps) => plugin.init(deps);
    }
    if (plugin.zones) {
        out.zones = wrap('zones');
    }
    if ('propagationDelay' in plugin) {
        out.propagationDelay = plugin.propagationDelay;
    }
    return out;
}

// acme-http-01-standalone keeps key authorizations in memory by identifier and token; its
// get() is what a web server asks. This responder is that web server, on the CA's port.
const http01Store = Http01.create({ cache: {} });
const wrongAnswer = new Set(config.wrongAnswerNames || []);

function startHttp01Responder(port) {
    const prefix = '/.well-known/acme-challenge/';
    const server = http.createServer((req, res) => {
        const host = String(req.headers.host || '').replace(/:\d+$/, '');
        const token = req.url.startsWith(prefix) ? req.url.slice(prefix.length) : null;
        http01Requests.push({ host: req.headers.host ?? null, url: req.url });
        const reply = (status, body) => {
            res.writeHead(status, { 'Content-Type': 'text/plain' });
            res.end(body);
        };
        if (token === null) {
            reply(404, 'not found');
            return;
        }
        http01Store.get({ challenge: { identifier: { value: host }, token } }).then(
            (found) => {
                if (!found) {
                    reply(404, 'not found');
                }
                else if (wrongAnswer.has(host)) {
                    reply(200, `${token}.not-the-account-thumbprint`);
                }
                else {
                    reply(200, found.keyAuthorization);
                }
            },
            () => reply(500, 'error'),
        );
    });
    return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, '127.0.0.1', () => resolve(server));
    });
}

async function challtestsrv(path, body) {
    const response = await fetch(`${config.challtestsrv.replace(/\/$/, '')}${path}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(10000),
    });
    if (response.status !== 200) {
        throw new Error(`challtestsrv ${path} answered ${response.status}`);
    }
}

// dns-01 as ACME.js hands it over: challenge.dnsHost (_acme-challenge.<base name>, also for a
// wildcard) and challenge.dnsAuthorization (the digest, RFC 8555 §8.4). A wildcard and its
// base name put two values at one name; challtestsrv clears a name whole, so a value is
// cleared only with the last one at its name (ACME.js does not await remove()).
function dns01Plugin(zone) {
    const values = new Map();
    return {
        propagationDelay: 200, // ms; ACME.js waits 5 s when it is 0 or missing
        init: async () => null,
        zones: async () => [zone],
        set: async ({ challenge }) => {
            const host = `${challenge.dnsHost}.`;
            if (!values.has(host)) {
                values.set(host, new Set());
            }
            values.get(host).add(challenge.dnsAuthorization);
            await challtestsrv('/set-txt', { host, value: challenge.dnsAuthorization });
            return null;
        },
        get: async ({ challenge }) => {
            const held = values.get(`${challenge.dnsHost}.`);
            return held && held.has(challenge.dnsAuthorization) ? { dnsAuthorization: challenge.dnsAuthorization } : null;
        },
        remove: async ({ challenge }) => {
            const host = `${challenge.dnsHost}.`;
            const held = values.get(host);
            if (held) {
                held.delete(challenge.dnsAuthorization);
                if (held.size === 0) {
                    values.delete(host);
                    await challtestsrv('/clear-txt', { host });
                }
            }
            return null;
        },
    };
}

// -- the flow -------------------------------------------------------------------------------

async function generateKey(kind) {
    const pair = kind === 'rsa'
        ? await Keypairs.generate({ kty: 'RSA', modulusLength: 2048 })
        : await Keypairs.generate({ kty: 'EC', namedCurve: 'P-256' });
    return pair.private;
}

function errorInfo(e) {
    return { message: String(e && e.message ? e.message : e), code: e && e.code ? e.code : null, urn: e && e.urn ? e.urn : null, problem: lastProblem() };
}

async function main() {
    const require = createRequire(import.meta.url);
    const result = {
        acmeVersion: require('acme/package.json').version,
        rootAcmeVersion: require('@root/acme/package.json').version,
    };

    const acme = ACME.create({
        maintainerEmail: 'interop@example.test',
        packageAgent: 'acme-ca-interop/1',
        notify: (ev, params) => {
            if (params instanceof Error) {
                events.push({ ev, params: { message: params.message, code: params.code ?? null } });
            }
            else {
                const { challenge, ...rest } = params || {};
                events.push({ ev, params: rest });
            }
        },
        // ACME.js first tries the plug-ins with challenges of its own and fetches them itself
        // (http://NAME/ on port 80, TXT through the system resolver), then does the same with
        // the server's before answering them. Neither can reach this test's names: off. (The
        // README calls the second option skipChallengeTests; the code reads skipChallengeTest.)
        skipDryRun: true,
        skipChallengeTest: true,
    });
    result.api = {
        acme: Object.keys(acme).filter((k) => typeof acme[k] === 'object' && acme[k] !== null && !k.startsWith('_')).sort(),
        accounts: Object.keys(acme.accounts).sort(),
        certificates: Object.keys(acme.certificates).sort(),
    };

    const directory = await acme.init(config.directoryUrl);
    result.directory = { termsOfService: directory.meta ? directory.meta.termsOfService : null, keys: Object.keys(directory).sort() };

    const accountKey = await generateKey(config.accountKey);
    const account = await acme.accounts.create({
        subscriberEmail: config.email,
        agreeToTerms: true,
        accountKey,
    });
    result.account = { kid: account.key.kid, status: account.status, contact: account.contact };

    // The same key again: ACME.js's newAccount is idempotent by key (RFC 8555 §7.3.1).
    const again = await acme.accounts.create({ subscriberEmail: config.email, agreeToTerms: true, accountKey });
    result.accountAgain = { kid: again.key.kid, status: again.status };

    const needsHttp = (config.certificates || []).some((c) => c.challenge === 'http-01');
    const responder = needsHttp ? await startHttp01Responder(config.http01Port) : null;
    result.certificates = [];
    try {
        for (const spec of config.certificates || []) {
            const certKey = await generateKey(spec.certKey);
            const csr = await CSR.csr({ jwk: certKey, domains: spec.names, encoding: 'pem' });
            const challenges = spec.challenge === 'http-01'
                ? { 'http-01': recorded('http-01', http01Store) }
                : { 'dns-01': recorded('dns-01', dns01Plugin(config.dnsZone)) };
            const request = { accountKey, csr, domains: [...spec.names], challenges };
            if (spec.withAccount) {
                request.account = account;
            }
            else {
                // Without `account`, ACME.js registers the key again to learn the account's
                // URL, with these options (without agreeToTerms it prints a notice on stdout).
                request.subscriberEmail = config.email;
                request.agreeToTerms = true;
            }
            const started = exchanges.length;
            const firstEvent = events.length;
            const outcome = { names: spec.names, challenge: spec.challenge, withAccount: spec.withAccount === true };
            try {
                const pems = await acme.certificates.create(request);
                outcome.cert = pems.cert;
                outcome.chain = pems.chain;
                outcome.fullchain = `${pems.cert.trim()}\n${pems.chain.trim()}\n`;
                outcome.expires = pems.expires ?? null;
                outcome.identifiers = pems.identifiers ?? null;
            }
            catch (e) {
                if (!config.expectFailure) {
                    throw e;
                }
                outcome.error = errorInfo(e);
            }
            outcome.exchanges = exchanges.slice(started).map((x) => ({
                method: x.method,
                url: x.url,
                accept: x.accept,
                payload: x.payload,
                status: x.status,
                contentType: x.contentType,
                location: x.location,
                // the object's own status and error (a challenge's, an order's)
                bodyStatus: x.body && typeof x.body === 'object' ? x.body.status : undefined,
                bodyError: x.body && typeof x.body === 'object' ? x.body.error : undefined,
            }));
            outcome.events = events.slice(firstEvent);
            result.certificates.push(outcome);
        }
    }
    finally {
        if (responder) {
            const closed = new Promise((resolve) => { responder.close(resolve); });
            responder.closeAllConnections();
            await closed;
        }
    }
    return result;
}

let output;
try {
    output = await main();
}
catch (e) {
    output = { error: String(e && e.stack ? e.stack : e), errorInfo: errorInfo(e) };
    process.exitCode = 1;
}
Object.assign(output, { exchanges, transportErrors, blocked, events, pluginCalls, http01Requests });
process.stdout.write(`${JSON.stringify(output)}\n`);
