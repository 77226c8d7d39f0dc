// Drives the unmodified npm `acme-client` through one certificate's life against an ACME
// server, using only the library's public API: account (termsOfServiceAgreed), order, one
// challenge per authorization (http-01 answered by a tiny HTTP server here, or dns-01 through
// the challenge test server's management API), finalize with acme.crypto.createCsr, download
// the default chain and an alternate (RFC 8555 §7.4.2), revoke (§7.6), deactivate the account
// (§7.3.6), and check that the server then refuses the account.
//
// Usage: node drive.mjs '<json config>'   (see `config` below for the fields)
// The CA's root must be trusted through NODE_EXTRA_CA_CERTS; TLS verification stays on.
// Prints one JSON object on stdout; exits 1 (printing {"error": ...}) on any failure.
// Every ACME exchange is recorded (method, URL, JWS protected header and payload, status,
// problem document) and printed with the result, so that a server bug can be reported exactly.

import http from 'node:http';
import https from 'node:https';
import { createRequire } from 'node:module';
import acme from 'acme-client';

const config = JSON.parse(process.argv[2] ?? '{}');
// config fields:
//   directoryUrl: string           the ACME directory
//   names: string[]                identifiers to order (dns)
//   challenge: "http-01"|"dns-01"
//   http01Port: number             where the CA connects for http-01 (served here on 127.0.0.1)
//   challtestsrv: string           management API base URL, for dns-01
//   accountKey: "ecdsa"|"rsa"      account key type (ES256 or RS256 JWS)
//   certKey: "ecdsa"|"rsa"         certificate key type for the CSR
//   preferredChain: string|null    issuer CN of an alternate chain to ask for
//   revokeReason: number|null      RFC 5280 reason code for revokeCertificate
//   rolloverKey: boolean           roll the account key over (RFC 8555 §7.3.5) before deactivating
//   email: string

const REQUEST_TIMEOUT_MS = 10000;
const exchanges = [];
const transportErrors = [];

function decodeB64u(value) {
    try {
        const text = Buffer.from(value, 'base64url').toString('utf8');
        return text === '' ? '' : JSON.parse(text);
    }
    catch {
        return value;
    }
}

function describeRequest(cfg) {
    const entry = { method: (cfg.method || 'get').toUpperCase(), url: cfg.url };
    if (typeof cfg.data === 'string' && cfg.data.startsWith('{')) {
        try {
            const jws = JSON.parse(cfg.data);
            entry.protected = decodeB64u(jws.protected);
            entry.payload = decodeB64u(jws.payload);
            if (entry.payload && typeof entry.payload === 'object' && 'csr' in entry.payload) {
                entry.payload = { ...entry.payload, csr: '(elided)' };
            }
            if (entry.payload && typeof entry.payload === 'object' && 'certificate' in entry.payload) {
                entry.payload = { ...entry.payload, certificate: '(elided)' };
            }
            if (entry.protected && typeof entry.protected === 'object' && 'jwk' in entry.protected) {
                entry.protected = { ...entry.protected, jwk: `(${entry.protected.jwk.kty} key)` };
            }
        }
        catch {
            entry.body = cfg.data;
        }
    }
    return entry;
}

function record(response) {
    if (!response || !response.config) {
        return;
    }
    const entry = describeRequest(response.config);
    entry.status = response.status;
    const type = String(response.headers['content-type'] || '');
    entry.contentType = type;
    if (response.headers.location) {
        entry.location = response.headers.location;
    }
    if (response.headers.link) {
        entry.link = response.headers.link;
    }
    if (type.startsWith('application/problem+json') || type.startsWith('application/json')) {
        entry.body = response.data;
    }
    exchanges.push(entry);
}

// The library's own interceptor settles each response first (retrying 429/5xx); these see
// what the client finally got.
acme.axios.interceptors.response.use(
    (response) => {
        record(response);
        return response;
    },
    (error) => {
        record(error.response);
        return Promise.reject(error);
    },
);
acme.axios.defaults.timeout = REQUEST_TIMEOUT_MS;

// acme-client 5.4.0 turns a transport failure (refused connection, TLS verification error)
// into "Cannot read properties of undefined (reading 'config')" after its retries; record the
// socket's own error so a failure says what happened. Default TLS options: verification on,
// roots = Node's store plus NODE_EXTRA_CA_CERTS.
class RecordingAgent extends https.Agent {
    createConnection(options, callback) {
        const socket = super.createConnection(options, callback);
        socket.on('error', (e) => {
            transportErrors.push({ host: options.host, port: options.port, code: e.code, message: e.message });
        });
        return socket;
    }
}
acme.axios.defaults.httpsAgent = new RecordingAgent({ keepAlive: true });
// Keep the library's retry of 429/5xx (RFC 8555 §6.6) but with a short default delay, so a
// server error shows within the test's time budget instead of after 5+10+15+20+25 s.
acme.axios.defaults.acmeSettings.retryMaxAttempts = 2;
acme.axios.defaults.acmeSettings.retryDefaultDelay = 1;

function lastProblem() {
    for (let i = exchanges.length - 1; i >= 0; i -= 1) {
        const body = exchanges[i].body;
        if (exchanges[i].status >= 400 && body && typeof body === 'object') {
            return { status: exchanges[i].status, ...body };
        }
    }
    return null;
}

async function createKey(kind) {
    return kind === 'rsa' ? acme.crypto.createPrivateRsaKey(2048) : acme.crypto.createPrivateEcdsaKey('P-256');
}

// -- challenge responders -----------------------------------------------------------------

function startHttp01Server(port, tokens) {
    const server = http.createServer((req, res) => {
        const prefix = '/.well-known/acme-challenge/';
        const token = req.url.startsWith(prefix) ? req.url.slice(prefix.length) : null;
        const body = token === null ? undefined : tokens.get(token);
        if (body === undefined) {
            res.writeHead(404, { 'Content-Type': 'text/plain' });
            res.end('not found');
            return;
        }
        tokens.hits.push({ host: req.headers.host, url: req.url });
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.end(body);
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
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    if (response.status !== 200) {
        throw new Error(`challtestsrv ${path} answered ${response.status}`);
    }
}

// RFC 8555 §8.4: the TXT record lives at _acme-challenge.<identifier>; an authorization for a
// wildcard carries the base name with "wildcard": true (§7.1.4).
function dnsRecordName(authz) {
    return `_acme-challenge.${authz.identifier.value}.`;
}

// -- the flow -------------------------------------------------------------------------------

async function main() {
    const result = { acmeClientVersion: createRequire(import.meta.url)('acme-client/package.json').version };

    const clientFor = (accountKey) => new acme.Client({
        directoryUrl: config.directoryUrl,
        accountKey,
        // Poll quickly: the server validates in well under a second on loopback.
        backoffAttempts: 30,
        backoffMin: 100,
        backoffMax: 1000,
    });
    const accountKey = await createKey(config.accountKey);
    const client = clientFor(accountKey);

    const account = await client.createAccount({
        termsOfServiceAgreed: true,
        contact: [`mailto:${config.email}`],
    });
    result.account = { url: client.getAccountUrl(), status: account.status, contact: account.contact };

    // Finding the same account again by its key (RFC 8555 §7.3.1 onlyReturnExisting).
    const again = await client.createAccount({ onlyReturnExisting: true });
    result.accountFoundAgain = { url: client.getAccountUrl(), status: again.status };

    const order = await client.createOrder({
        identifiers: config.names.map((value) => ({ type: 'dns', value })),
    });
    result.order = { url: order.url, status: order.status, identifiers: order.identifiers };

    const authorizations = await client.getAuthorizations(order);
    const tokens = new Map();
    tokens.hits = [];
    let httpServer = null;
    if (config.challenge === 'http-01') {
        httpServer = await startHttp01Server(config.http01Port, tokens);
    }
    const txtHosts = new Set();
    try {
        const chosen = [];
        for (const authz of authorizations) {
            const challenge = authz.challenges.find((c) => c.type === config.challenge);
            if (!challenge) {
                throw new Error(`no ${config.challenge} challenge offered for ${authz.identifier.value}: ${JSON.stringify(authz.challenges.map((c) => c.type))}`);
            }
            const keyAuthorization = await client.getChallengeKeyAuthorization(challenge);
            if (config.challenge === 'http-01') {
                tokens.set(challenge.token, keyAuthorization);
            }
            else {
                const host = dnsRecordName(authz);
                txtHosts.add(host);
                await challtestsrv('/set-txt', { host, value: keyAuthorization });
            }
            chosen.push({ authz, challenge });
        }

        result.authorizations = [];
        for (const { authz, challenge } of chosen) {
            const answered = await client.completeChallenge(challenge);
            const validChallenge = await client.waitForValidStatus(challenge);
            const validAuthz = await client.waitForValidStatus(authz);
            result.authorizations.push({
                identifier: authz.identifier,
                wildcard: authz.wildcard === true,
                challengeType: challenge.type,
                statusAfterAnswer: answered.status,
                challengeStatus: validChallenge.status,
                validated: validChallenge.validated ?? null,
                authzStatus: validAuthz.status,
            });
        }
        result.http01Requests = tokens.hits;
    }
    finally {
        if (httpServer) {
            await new Promise((resolve) => { httpServer.close(resolve); });
        }
        for (const host of txtHosts) {
            await challtestsrv('/clear-txt', { host });
        }
    }

    const ready = await client.waitForValidStatus(order);
    result.orderStatusBeforeFinalize = ready.status;

    const certKey = await createKey(config.certKey);
    const [, csr] = await acme.crypto.createCsr({ altNames: [...config.names] }, certKey);
    const finalized = await client.finalizeOrder(ready, csr);
    result.finalizeStatus = finalized.status;

    const certificate = await client.getCertificate(finalized);
    result.certificate = certificate;
    result.chainLength = acme.crypto.splitPemChain(certificate).length;
    const info = acme.crypto.readCertificateInfo(certificate);
    result.certificateInfo = { issuer: info.issuer, domains: info.domains, notBefore: info.notBefore, notAfter: info.notAfter };
    if (config.preferredChain) {
        // The library follows Link rel="alternate" only when asked for a preferred issuer.
        result.alternate = await client.getCertificate(finalized, config.preferredChain);
    }

    const revokeData = config.revokeReason === null || config.revokeReason === undefined ? {} : { reason: config.revokeReason };
    await client.revokeCertificate(certificate, revokeData);
    result.revoked = true;
    // A second revocation must be refused: alreadyRevoked (RFC 8555 §7.6).
    try {
        await client.revokeCertificate(certificate, { ...revokeData });
        result.secondRevocation = { accepted: true };
    }
    catch (e) {
        result.secondRevocation = { accepted: false, message: e.message, problem: lastProblem() };
    }

    if (config.rolloverKey) {
        const newKey = await createKey(config.accountKey === 'rsa' ? 'ecdsa' : 'rsa');
        await client.updateAccountKey(newKey);
        const byNewKey = clientFor(newKey);
        await byNewKey.createAccount({ onlyReturnExisting: true });
        result.rollover = { accountUrlByNewKey: byNewKey.getAccountUrl() };
        // The old key no longer names an account (RFC 8555 §7.3.5, §7.3.1).
        try {
            await clientFor(accountKey).createAccount({ onlyReturnExisting: true });
            result.rollover.oldKey = { accepted: true };
        }
        catch (e) {
            result.rollover.oldKey = { accepted: false, message: e.message, problem: lastProblem() };
        }
    }

    const deactivated = await client.updateAccount({ status: 'deactivated' });
    result.deactivatedStatus = deactivated.status;
    // RFC 8555 §7.3.6: the server MUST NOT accept further requests signed by that account.
    try {
        await client.createOrder({ identifiers: [{ type: 'dns', value: config.names[0] }] });
        result.afterDeactivation = { accepted: true };
    }
    catch (e) {
        result.afterDeactivation = { accepted: false, message: e.message, problem: lastProblem() };
    }

    result.exchanges = exchanges;
    result.transportErrors = transportErrors;
    return result;
}

try {
    const result = await main();
    process.stdout.write(`${JSON.stringify(result)}\n`);
}
catch (e) {
    process.stdout.write(`${JSON.stringify({ error: String(e && e.stack ? e.stack : e), problem: lastProblem(), transportErrors, exchanges })}\n`);
    process.exitCode = 1;
}
