// Command drive runs the unmodified Go library golang.org/x/crypto/acme (the client behind
// autocert) through one certificate's life against an ACME server, using only the library's
// public API: Discover, Register (agreeing to the terms it is prompted with), GetReg,
// AuthorizeOrder, GetAuthorization, Accept, WaitAuthorization, WaitOrder, CreateOrderCert with
// a CSR from crypto/x509, FetchCert, ListCertAlternates, RevokeCert (by the account key or by
// the certificate's key), AccountKeyRollover and DeactivateReg. http-01 is answered by an
// HTTP server started here on the CA's http-01 port; dns-01 through the challenge test
// server's management API (POST /set-txt, /clear-txt).
//
// Usage: drive '<json config>'   (see config below)
//
// The flow "issue" gets one certificate and ends the account; "problems" collects the
// library's errors for requests the CA must refuse (*acme.Error, *acme.AuthorizationError,
// *acme.OrderError) and a badNonce the library must retry; "untrusted" only discovers the
// directory without the CA's root. TLS verification stays on: the client trusts exactly the
// root PEM named in the config.
//
// Prints one JSON object on stdout; exits 1 (printing {"error": ...}) on any failure. Every
// HTTP exchange is recorded (method, URL, JWS protected header and payload, status, the
// headers the library reads, JSON bodies), so that a server bug can be reported exactly.
package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
)

type config struct {
	DirectoryURL string   `json:"directoryUrl"`
	RootPEM      string   `json:"rootPem"` // path of the CA's root; empty: the system roots
	Challtestsrv string   `json:"challtestsrv"`
	HTTP01Port   int      `json:"http01Port"`
	Flow         string   `json:"flow"` // "issue", "problems" or "untrusted"
	Names        []string `json:"names"`
	Challenge    string   `json:"challenge"`  // "http-01" or "dns-01"
	AccountKey   string   `json:"accountKey"` // "ecdsa" (ES256) or "rsa" (RS256)
	CertKey      string   `json:"certKey"`
	RevokeWith   string   `json:"revokeWith"` // "account" or "certKey"
	RevokeReason int      `json:"revokeReason"`
	Rollover     bool     `json:"rollover"`
	Email        string   `json:"email"`
	// Answer http-01 this many seconds late, so that the CA answers the challenge POST
	// "processing" and the library polls the authorization (Retry-After).
	HTTP01Delay float64 `json:"http01DelaySeconds"`
}

const (
	requestTimeout = 15 * time.Second
	flowTimeout    = 50 * time.Second
)

// -- recording every exchange ---------------------------------------------------------------

type exchange struct {
	AtMs        int64           `json:"atMs"`
	Method      string          `json:"method"`
	URL         string          `json:"url"`
	Protected   json.RawMessage `json:"protected,omitempty"`
	Payload     interface{}     `json:"payload,omitempty"`
	Status      int             `json:"status"`
	ContentType string          `json:"contentType,omitempty"`
	Location    string          `json:"location,omitempty"`
	Links       []string        `json:"links,omitempty"` // each Link field line as received
	RetryAfter  string          `json:"retryAfter,omitempty"`
	Body        json.RawMessage `json:"body,omitempty"` // JSON and problem documents only
	StaleNonce  bool            `json:"staleNonceHandedOut,omitempty"`
}

type transportError struct {
	URL     string `json:"url"`
	Message string `json:"message"`
}

// recorder wraps the HTTP transport the library is given (Client.HTTPClient): it changes
// nothing, except once when armed: then the Replay-Nonce of the next answer to a POST is
// replaced by the nonce that POST just spent, as a client sharing nonces between goroutines
// might do, so that the library's next request meets badNonce (RFC 8555 §6.5).
type recorder struct {
	base      http.RoundTripper
	start     time.Time
	mu        sync.Mutex
	exchanges []exchange
	errors    []transportError
	armed     bool
}

func decodeSegment(segment string) []byte {
	b, err := base64.RawURLEncoding.DecodeString(segment)
	if err != nil {
		return nil
	}
	return b
}

func describeJWS(body []byte, e *exchange) (nonce string) {
	var jws struct {
		Protected string `json:"protected"`
		Payload   string `json:"payload"`
	}
	if json.Unmarshal(body, &jws) != nil {
		return ""
	}
	var protected map[string]interface{}
	if json.Unmarshal(decodeSegment(jws.Protected), &protected) == nil {
		if jwk, ok := protected["jwk"].(map[string]interface{}); ok {
			protected["jwk"] = fmt.Sprintf("(%v key)", jwk["kty"])
		}
		if n, ok := protected["nonce"].(string); ok {
			nonce = n
		}
		e.Protected, _ = json.Marshal(protected)
	}
	raw := decodeSegment(jws.Payload)
	if len(raw) == 0 {
		e.Payload = "" // POST-as-GET (RFC 8555 §6.3)
		return nonce
	}
	var payload map[string]interface{}
	if json.Unmarshal(raw, &payload) != nil {
		e.Payload = "(not JSON)"
		return nonce
	}
	for _, big := range []string{"csr", "certificate"} {
		if _, ok := payload[big]; ok {
			payload[big] = "(elided)"
		}
	}
	e.Payload = payload
	return nonce
}

func (r *recorder) arm() {
	r.mu.Lock()
	r.armed = true
	r.mu.Unlock()
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	e := exchange{
		AtMs:   time.Since(r.start).Milliseconds(),
		Method: req.Method,
		URL:    req.URL.String(),
	}
	spent := ""
	if req.Body != nil {
		body, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		spent = describeJWS(body, &e)
	}
	res, err := r.base.RoundTrip(req)
	if err != nil {
		r.mu.Lock()
		r.errors = append(r.errors, transportError{URL: e.URL, Message: err.Error()})
		r.mu.Unlock()
		return nil, err
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return nil, err
	}
	res.Body = io.NopCloser(bytes.NewReader(body))
	e.Status = res.StatusCode
	e.ContentType = res.Header.Get("Content-Type")
	e.Location = res.Header.Get("Location")
	e.Links = res.Header.Values("Link")
	e.RetryAfter = res.Header.Get("Retry-After")
	if strings.Contains(e.ContentType, "json") && json.Valid(body) {
		e.Body = body
	}
	r.mu.Lock()
	if r.armed && req.Method == "POST" && spent != "" && res.Header.Get("Replay-Nonce") != "" {
		res.Header.Set("Replay-Nonce", spent)
		e.StaleNonce = true
		r.armed = false
	}
	r.exchanges = append(r.exchanges, e)
	r.mu.Unlock()
	return res, nil
}

func newHTTPClient(rootPEM string, rec *recorder) (*http.Client, error) {
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if rootPEM != "" {
		pemBytes, err := os.ReadFile(rootPEM)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("no certificate in %s", rootPEM)
		}
		tlsConfig.RootCAs = pool
	}
	rec.base = &http.Transport{
		Proxy:               nil, // loopback only
		TLSClientConfig:     tlsConfig,
		TLSHandshakeTimeout: requestTimeout,
		MaxIdleConnsPerHost: 2,
	}
	return &http.Client{Transport: rec, Timeout: requestTimeout}, nil
}

// -- describing the library's errors --------------------------------------------------------

type problem struct {
	StatusCode  int                 `json:"statusCode"`
	ProblemType string              `json:"problemType"`
	Detail      string              `json:"detail"`
	Subproblems []map[string]string `json:"subproblems,omitempty"`
}

type errorInfo struct {
	GoType     string      `json:"goType"`
	Message    string      `json:"message"`
	Sentinel   string      `json:"sentinel,omitempty"` // acme.ErrNoAccount, acme.ErrAccountAlreadyExists
	Problem    *problem    `json:"problem,omitempty"`  // *acme.Error
	AuthzURI   string      `json:"authzUri,omitempty"` // *acme.AuthorizationError
	Identifier string      `json:"identifier,omitempty"`
	Errors     []errorInfo `json:"errors,omitempty"`
	OrderURL   string      `json:"orderUrl,omitempty"` // *acme.OrderError
	Status     string      `json:"status,omitempty"`
}

func describeError(err error) *errorInfo {
	if err == nil {
		return nil
	}
	info := &errorInfo{GoType: fmt.Sprintf("%T", err), Message: err.Error()}
	switch {
	case errors.Is(err, acme.ErrNoAccount):
		info.Sentinel = "ErrNoAccount"
	case errors.Is(err, acme.ErrAccountAlreadyExists):
		info.Sentinel = "ErrAccountAlreadyExists"
	}
	var acmeErr *acme.Error
	var authzErr *acme.AuthorizationError
	var orderErr *acme.OrderError
	switch {
	case errors.As(err, &acmeErr):
		p := &problem{
			StatusCode:  acmeErr.StatusCode,
			ProblemType: acmeErr.ProblemType,
			Detail:      acmeErr.Detail,
		}
		for _, sp := range acmeErr.Subproblems {
			entry := map[string]string{"type": sp.Type, "detail": sp.Detail}
			if sp.Identifier != nil {
				entry["identifierType"] = sp.Identifier.Type
				entry["identifierValue"] = sp.Identifier.Value
			}
			p.Subproblems = append(p.Subproblems, entry)
		}
		info.Problem = p
	case errors.As(err, &authzErr):
		info.AuthzURI = authzErr.URI
		info.Identifier = authzErr.Identifier
		for _, inner := range authzErr.Errors {
			info.Errors = append(info.Errors, *describeError(inner))
		}
	case errors.As(err, &orderErr):
		info.OrderURL = orderErr.OrderURL
		info.Status = orderErr.Status
	}
	return info
}

// -- keys, CSRs, challenge responders -------------------------------------------------------

func newKey(kind string) (crypto.Signer, error) {
	if kind == "rsa" {
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// csrFor makes the CSR as autocert does: the first name as CN, every name in the SAN.
func csrFor(key crypto.Signer, names []string) ([]byte, error) {
	template := &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: names[0]},
		DNSNames: names,
	}
	return x509.CreateCertificateRequest(rand.Reader, template, key)
}

type http01Hit struct {
	Host string `json:"host"`
	Path string `json:"path"`
}

type http01Responder struct {
	server *http.Server
	delay  time.Duration
	mu     sync.Mutex
	bodies map[string]string // path -> body
	hits   []http01Hit
}

func startHTTP01(port int, delay time.Duration) (*http01Responder, error) {
	responder := &http01Responder{delay: delay, bodies: map[string]string{}}
	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil, err
	}
	responder.server = &http.Server{Handler: responder, ReadHeaderTimeout: requestTimeout}
	go responder.server.Serve(listener)
	return responder, nil
}

func (h *http01Responder) set(path, body string) {
	h.mu.Lock()
	h.bodies[path] = body
	h.mu.Unlock()
}

func (h *http01Responder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	body, ok := h.bodies[r.URL.Path]
	if ok {
		h.hits = append(h.hits, http01Hit{Host: r.Host, Path: r.URL.Path})
	}
	h.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	if h.delay > 0 {
		time.Sleep(h.delay)
	}
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, body)
}

func (h *http01Responder) close() []http01Hit {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h.server.Shutdown(ctx)
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hits
}

func challtestsrv(cfg *config, path string, body map[string]string) error {
	b, _ := json.Marshal(body)
	client := &http.Client{Timeout: requestTimeout, Transport: &http.Transport{Proxy: nil}}
	res, err := client.Post(strings.TrimRight(cfg.Challtestsrv, "/")+path, "application/json", bytes.NewReader(b))
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("challtestsrv %s answered %d", path, res.StatusCode)
	}
	return nil
}

// RFC 8555 §8.4: the TXT record lives at _acme-challenge.<identifier>; a wildcard's
// authorization carries the base name with "wildcard": true (§7.1.4).
func txtHost(authz *acme.Authorization) string {
	return "_acme-challenge." + authz.Identifier.Value + "."
}

func pick(authz *acme.Authorization, kind string) (*acme.Challenge, error) {
	var offered []string
	for _, c := range authz.Challenges {
		if c.Type == kind {
			return c, nil
		}
		offered = append(offered, c.Type)
	}
	return nil, fmt.Errorf("no %s challenge for %s: offered %v", kind, authz.Identifier.Value, offered)
}

func pemChain(der [][]byte) string {
	var b strings.Builder
	for _, c := range der {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c})
	}
	return b.String()
}

// -- the flows ------------------------------------------------------------------------------

type result map[string]interface{}

type session struct {
	cfg *config
	rec *recorder
	hc  *http.Client
	ctx context.Context
}

func (s *session) client(key crypto.Signer) *acme.Client {
	return &acme.Client{
		Key:          key,
		HTTPClient:   s.hc,
		DirectoryURL: s.cfg.DirectoryURL,
		UserAgent:    "acme-ca-interop",
	}
}

// answer sets up the response of each pending authorization of order, accepts the chosen
// challenge and waits for the authorization; it returns what it saw, and the first error of
// WaitAuthorization (an *acme.AuthorizationError for a failed one).
func (s *session) answer(client *acme.Client, order *acme.Order, kind string, wrong bool, http01 *http01Responder) ([]result, error, error) {
	var seen []result
	var txt []string
	defer func() {
		for _, host := range txt {
			challtestsrv(s.cfg, "/clear-txt", map[string]string{"host": host})
		}
	}()
	type chosen struct {
		authz *acme.Authorization
		chal  *acme.Challenge
	}
	var todo []chosen
	for _, url := range order.AuthzURLs {
		authz, err := client.GetAuthorization(s.ctx, url)
		if err != nil {
			return nil, nil, fmt.Errorf("GetAuthorization: %w", err)
		}
		chal, err := pick(authz, kind)
		if err != nil {
			return nil, nil, err
		}
		switch kind {
		case "http-01":
			body, err := client.HTTP01ChallengeResponse(chal.Token)
			if err != nil {
				return nil, nil, err
			}
			if wrong {
				body = chal.Token + ".not-the-account-key-thumbprint"
			}
			http01.set(client.HTTP01ChallengePath(chal.Token), body)
		case "dns-01":
			value, err := client.DNS01ChallengeRecord(chal.Token)
			if err != nil {
				return nil, nil, err
			}
			host := txtHost(authz)
			if err := challtestsrv(s.cfg, "/set-txt", map[string]string{"host": host, "value": value}); err != nil {
				return nil, nil, err
			}
			txt = append(txt, host)
		}
		todo = append(todo, chosen{authz, chal})
	}
	var waitErr error
	for _, t := range todo {
		var types []string
		for _, c := range t.authz.Challenges {
			types = append(types, c.Type)
		}
		accepted, err := client.Accept(s.ctx, t.chal)
		if err != nil {
			return nil, nil, fmt.Errorf("Accept: %w", err)
		}
		entry := result{
			"uri":               t.authz.URI,
			"identifier":        map[string]string{"type": t.authz.Identifier.Type, "value": t.authz.Identifier.Value},
			"wildcard":          t.authz.Wildcard,
			"statusBefore":      t.authz.Status,
			"challengesOffered": types,
			"challengeType":     t.chal.Type,
			"statusAfterAccept": accepted.Status,
		}
		final, err := client.WaitAuthorization(s.ctx, t.authz.URI)
		entry["waitError"] = describeError(err)
		if err != nil && waitErr == nil {
			waitErr = err
		}
		if final != nil {
			entry["status"] = final.Status
			for _, c := range final.Challenges {
				if c.Type == kind {
					entry["challengeStatus"] = c.Status
				}
			}
		}
		seen = append(seen, entry)
	}
	return seen, waitErr, nil
}

func (s *session) issue(res result) error {
	cfg := s.cfg
	accountKey, err := newKey(cfg.AccountKey)
	if err != nil {
		return err
	}
	client := s.client(accountKey)
	dir, err := client.Discover(s.ctx)
	if err != nil {
		return fmt.Errorf("Discover: %w", err)
	}
	res["directory"] = result{"terms": dir.Terms, "keyChange": dir.KeyChangeURL != "", "revoke": dir.RevokeURL != ""}

	var prompted []string
	account, err := client.Register(s.ctx, &acme.Account{Contact: []string{"mailto:" + cfg.Email}},
		func(tos string) bool { prompted = append(prompted, tos); return true })
	if err != nil {
		return fmt.Errorf("Register: %w", err)
	}
	res["account"] = result{"uri": account.URI, "status": account.Status, "contact": account.Contact, "termsPrompted": prompted}
	// RFC 8555 §7.3.1: a second newAccount with the same key answers 200 and the account's
	// URL, which the library reports as ErrAccountAlreadyExists.
	_, again := client.Register(s.ctx, &acme.Account{}, acme.AcceptTOS)
	res["registerAgain"] = describeError(again)
	found, err := client.GetReg(s.ctx, "")
	if err != nil {
		return fmt.Errorf("GetReg: %w", err)
	}
	res["accountFoundAgain"] = result{"uri": found.URI, "status": found.Status}

	var http01 *http01Responder
	if cfg.Challenge == "http-01" {
		http01, err = startHTTP01(cfg.HTTP01Port, time.Duration(cfg.HTTP01Delay*float64(time.Second)))
		if err != nil {
			return err
		}
	}
	order, err := client.AuthorizeOrder(s.ctx, acme.DomainIDs(cfg.Names...))
	if err != nil {
		return fmt.Errorf("AuthorizeOrder: %w", err)
	}
	var ids []string
	for _, id := range order.Identifiers {
		ids = append(ids, id.Type+":"+id.Value)
	}
	res["order"] = result{"uri": order.URI, "status": order.Status, "identifiers": ids, "authorizations": len(order.AuthzURLs)}
	authzs, waitErr, err := s.answer(client, order, cfg.Challenge, false, http01)
	if http01 != nil {
		res["http01Requests"] = http01.close()
	}
	if err != nil {
		return err
	}
	res["authorizations"] = authzs
	if waitErr != nil {
		return fmt.Errorf("WaitAuthorization: %w", waitErr)
	}
	ready, err := client.WaitOrder(s.ctx, order.URI)
	if err != nil {
		return fmt.Errorf("WaitOrder: %w", err)
	}
	res["orderStatusBeforeFinalize"] = ready.Status

	certKey, err := newKey(cfg.CertKey)
	if err != nil {
		return err
	}
	csr, err := csrFor(certKey, cfg.Names)
	if err != nil {
		return err
	}
	der, certURL, err := client.CreateOrderCert(s.ctx, ready.FinalizeURL, csr, true)
	if err != nil {
		return fmt.Errorf("CreateOrderCert: %w", err)
	}
	res["certificate"] = pemChain(der)
	res["certificateUrl"] = certURL
	leafOnly, err := client.FetchCert(s.ctx, certURL, false)
	if err != nil {
		return fmt.Errorf("FetchCert: %w", err)
	}
	res["fetchedLeafOnly"] = len(leafOnly) == 1 && bytes.Equal(leafOnly[0], der[0])
	// RFC 8555 §7.4.2: alternate chains are offered with Link rel="alternate".
	alternates, err := client.ListCertAlternates(s.ctx, certURL)
	if err != nil {
		return fmt.Errorf("ListCertAlternates: %w", err)
	}
	var altChains []string
	for _, url := range alternates {
		chain, err := client.FetchCert(s.ctx, url, true)
		if err != nil {
			return fmt.Errorf("FetchCert(alternate): %w", err)
		}
		altChains = append(altChains, pemChain(chain))
	}
	res["alternateUrls"] = alternates
	res["alternates"] = altChains

	// RFC 8555 §7.6: revocation by the account that holds the certificate (kid) or signed by
	// the certificate's own key (jwk).
	var revokeKey crypto.Signer
	if cfg.RevokeWith == "certKey" {
		revokeKey = certKey
	}
	reason := acme.CRLReasonCode(cfg.RevokeReason)
	res["revokeError"] = describeError(client.RevokeCert(s.ctx, revokeKey, der[0], reason))
	// The library treats alreadyRevoked as success: the exchange shows what the CA answered.
	res["secondRevokeError"] = describeError(client.RevokeCert(s.ctx, revokeKey, der[0], reason))

	if cfg.Rollover {
		rolled, err := newKey(map[string]string{"rsa": "ecdsa", "ecdsa": "rsa"}[cfg.AccountKey])
		if err != nil {
			return err
		}
		rollover := result{"error": describeError(client.AccountKeyRollover(s.ctx, rolled))}
		byNewKey, err := s.client(rolled).GetReg(s.ctx, "")
		rollover["byNewKeyError"] = describeError(err)
		if byNewKey != nil {
			rollover["accountUriByNewKey"] = byNewKey.URI
		}
		// RFC 8555 §7.3.5: the old key no longer names an account.
		_, err = s.client(accountKey).GetReg(s.ctx, "")
		rollover["byOldKeyError"] = describeError(err)
		res["rollover"] = rollover
	}

	res["deactivateError"] = describeError(client.DeactivateReg(s.ctx))
	// RFC 8555 §7.3.6: no further requests of a deactivated account.
	_, err = client.AuthorizeOrder(s.ctx, acme.DomainIDs(cfg.Names[0]))
	res["afterDeactivation"] = describeError(err)
	return nil
}

func (s *session) problems(res result) error {
	cfg := s.cfg
	accountKey, err := newKey(cfg.AccountKey)
	if err != nil {
		return err
	}
	client := s.client(accountKey)
	// RFC 8555 §7.3: a contact the CA cannot use is invalidContact.
	_, err = client.Register(s.ctx, &acme.Account{Contact: []string{"mailto:not an address"}}, acme.AcceptTOS)
	res["invalidContact"] = describeError(err)
	// RFC 8555 §7.3.1: onlyReturnExisting for an unknown key is accountDoesNotExist, which the
	// library reports as ErrNoAccount.
	_, err = client.GetReg(s.ctx, "")
	res["unknownAccount"] = describeError(err)
	if _, err := client.Register(s.ctx, &acme.Account{Contact: []string{"mailto:" + cfg.Email}}, acme.AcceptTOS); err != nil {
		return fmt.Errorf("Register: %w", err)
	}
	// RFC 8555 §6.7.1: one problem, a subproblem per refused identifier.
	_, err = client.AuthorizeOrder(s.ctx, acme.DomainIDs("bad_label.go-problems.example.test", "*.*.go-problems.example.test"))
	res["rejectedIdentifiers"] = describeError(err)

	// badNonce: the next POST after the armed one carries a spent nonce; the library must
	// retry it with a fresh one (RFC 8555 §6.5) and succeed.
	s.rec.arm()
	if _, err := client.GetReg(s.ctx, ""); err != nil {
		return fmt.Errorf("GetReg: %w", err)
	}
	wrongName := cfg.Names[0]
	order, err := client.AuthorizeOrder(s.ctx, acme.DomainIDs(wrongName))
	res["afterStaleNonce"] = describeError(err)
	if err != nil {
		return nil
	}
	http01, err := startHTTP01(cfg.HTTP01Port, 0)
	if err != nil {
		return err
	}
	authzs, waitErr, err := s.answer(client, order, "http-01", true, http01)
	res["wrongResponseRequests"] = http01.close()
	if err != nil {
		return err
	}
	res["wrongResponseAuthorizations"] = authzs
	// The failed authorization is an *acme.AuthorizationError; the order then is invalid, an
	// *acme.OrderError from WaitOrder; finalizing it is orderNotReady (RFC 8555 §7.4).
	res["wrongResponse"] = describeError(waitErr)
	_, err = client.WaitOrder(s.ctx, order.URI)
	res["invalidOrder"] = describeError(err)
	certKey, err := newKey(cfg.CertKey)
	if err != nil {
		return err
	}
	csr, err := csrFor(certKey, []string{wrongName})
	if err != nil {
		return err
	}
	_, _, err = client.CreateOrderCert(s.ctx, order.FinalizeURL, csr, true)
	res["finalizeInvalidOrder"] = describeError(err)

	// A ready order finalized with a CSR for other names is badCSR (RFC 8555 §7.4).
	csrName := cfg.Names[1]
	readyOrder, err := client.AuthorizeOrder(s.ctx, acme.DomainIDs(csrName))
	if err != nil {
		return fmt.Errorf("AuthorizeOrder: %w", err)
	}
	if _, waitErr, err := s.answer(client, readyOrder, "dns-01", false, nil); err != nil || waitErr != nil {
		return fmt.Errorf("dns-01 for %s: %v %v", csrName, err, waitErr)
	}
	if _, err := client.WaitOrder(s.ctx, readyOrder.URI); err != nil {
		return fmt.Errorf("WaitOrder: %w", err)
	}
	csr, err = csrFor(certKey, []string{"not-in-the-order." + csrName})
	if err != nil {
		return err
	}
	_, _, err = client.CreateOrderCert(s.ctx, readyOrder.FinalizeURL, csr, true)
	res["badCsr"] = describeError(err)
	return nil
}

func run(cfg *config, rec *recorder, res result) error {
	hc, err := newHTTPClient(cfg.RootPEM, rec)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
	defer cancel()
	s := &session{cfg: cfg, rec: rec, hc: hc, ctx: ctx}
	switch cfg.Flow {
	case "issue":
		return s.issue(res)
	case "problems":
		return s.problems(res)
	case "untrusted":
		_, err := s.client(nil).Discover(ctx)
		res["discoverError"] = describeError(err)
		return nil
	}
	return fmt.Errorf("unknown flow %q", cfg.Flow)
}

func main() {
	rec := &recorder{start: time.Now()}
	res := result{"goVersion": runtime.Version()}
	var cfg config
	var err error
	if len(os.Args) != 2 {
		err = errors.New("usage: drive '<json config>'")
	} else if err = json.Unmarshal([]byte(os.Args[1]), &cfg); err == nil {
		err = run(&cfg, rec, res)
	}
	rec.mu.Lock()
	res["exchanges"] = rec.exchanges
	res["transportErrors"] = rec.errors
	rec.mu.Unlock()
	if err != nil {
		res["error"] = err.Error()
		res["errorInfo"] = describeError(err)
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	if err != nil {
		os.Exit(1)
	}
}
