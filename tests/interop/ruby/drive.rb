# frozen_string_literal: true

# Drives the unmodified Ruby gem acme-client (Debian's ruby-acme-client) through one
# certificate's life against an ACME server, using only the gem's public API: account
# (termsOfServiceAgreed, contact), finding it again by its key (onlyReturnExisting), a contact
# update, order, one challenge per authorization (http-01 answered by a tiny HTTP responder
# here, or dns-01 through the challenge test server's management API), finalize with a CSR from
# Acme::Client::CertificateRequest, download the default chain and an alternate (RFC 8555
# §7.4.2), revoke (§7.6), account key change (§7.3.5), deactivation (§7.3.6), and the errors
# the server answers on the way, each with the Acme::Client::Error class the gem raised.
#
# Usage: ruby drive.rb '<json config>'   (see CONFIG below for the fields)
# TLS verification stays on: the CA's root is trusted through the gem's connection_options
# (Faraday's ssl ca_file) when caFile is given, else only the system store is.
# Prints one JSON object on stdout; exits 1 (printing {"error": ...}) on any failure.
# Every HTTP exchange is recorded (method, URL, JWS protected header and payload, status,
# problem document) by a Faraday middleware given through connection_options' builder_class,
# innermost, next to the adapter: the gem's own middleware runs unchanged.
#
# CONFIG fields:
#   directoryUrl: string           the ACME directory
#   caFile: string|null            PEM file of the CA's root
#   names: [string]                dns identifiers to order
#   challenge: "http-01"|"dns-01"
#   http01Port: integer            where the CA connects for http-01 (served here on 127.0.0.1)
#   challtestsrv: string           management API base URL, for dns-01
#   accountKey: "ecdsa"|"rsa"      account key type (ES256 or RS256 JWS)
#   certKey: "ecdsa"|"rsa"         certificate key type for the CSR
#   preferredChain: string|null    issuer CN of an alternate chain to ask for (force_chain)
#   revokeReason: integer|null     RFC 5280 reason code
#   keyChange: boolean             roll the account key over before deactivating
#   email: string
#   stopAfterDirectory: boolean    only fetch the directory and make an account (TLS checks)

require 'acme-client'
require 'json'
require 'net/http'
require 'openssl'
require 'socket'
require 'timeout'
require 'uri'

CONFIG = JSON.parse(ARGV.fetch(0, '{}'))
POLL_TIMEOUT = 30.0
POLL_INTERVAL = 0.2
EXCHANGES = []
TRANSPORT_ERRORS = []

def decode_b64u(value)
  text = Base64.urlsafe_decode64(value + '=' * ((4 - value.length % 4) % 4))
  text.empty? ? '' : JSON.parse(text)
rescue ArgumentError, JSON::ParserError
  value
end

def elide(entry)
  payload = entry[:payload]
  if payload.is_a?(Hash)
    %w[csr certificate].each { |key| payload[key] = '(elided)' if payload.key?(key) }
  end
  protected_header = entry[:protected]
  if protected_header.is_a?(Hash) && protected_header['jwk'].is_a?(Hash)
    protected_header['jwk'] = "(#{protected_header['jwk']['kty']} key)"
  end
  entry
end

# Records what went over the wire: the request as the gem's middleware signed it, the
# response before the gem's middleware decodes it (and raises on a problem document).
class Recorder < Faraday::Middleware
  def call(env)
    entry = { method: env.method.to_s.upcase, url: env.url.to_s }
    if env.body.is_a?(String) && env.body.start_with?('{')
      begin
        jws = JSON.parse(env.body)
        entry[:protected] = decode_b64u(jws['protected'].to_s)
        entry[:payload] = decode_b64u(jws['payload'].to_s)
      rescue JSON::ParserError
        entry[:body] = env.body
      end
    end
    @app.call(env).on_complete do |response|
      entry[:status] = response.status
      type = response.response_headers['content-type'].to_s
      entry[:contentType] = type
      %w[location link replay-nonce].each do |name|
        value = response.response_headers[name]
        entry[name.to_sym] = value if value
      end
      if type.start_with?('application/json', 'application/problem+json')
        entry[:response] = (JSON.parse(response.body) rescue response.body)
      end
      EXCHANGES << elide(entry)
    end
  rescue Faraday::Error, SystemCallError, OpenSSL::SSL::SSLError => e
    TRANSPORT_ERRORS << { url: env.url.to_s, class: e.class.name, message: e.message }
    raise
  end
end

class RecordingBuilder < Faraday::RackBuilder
  def to_app
    @handlers.reverse.inject(Recorder.new(@adapter.build)) { |app, handler| handler.build(app) }
  end
end

def last_problem(since = 0)
  EXCHANGES[since..].reverse_each do |entry|
    if entry[:status].to_i >= 400 && entry[:response].is_a?(Hash)
      return { 'status' => entry[:status] }.merge(entry[:response])
    end
  end
  nil
end

# The outcome of a call that may raise: the gem's exception class, the class its table maps the
# server's problem type to, and the problem document the server sent.
def attempt
  since = EXCHANGES.length
  value = yield
  { accepted: true, value: value }
rescue Acme::Client::Error => e
  problem = last_problem(since)
  type = problem && problem['type']
  {
    accepted: false,
    errorClass: e.class.name,
    mappedClass: type && Acme::Client::Error::ACME_ERRORS.fetch(type, Acme::Client::Error).name,
    message: e.message,
    problem: problem
  }
end

def create_key(kind)
  kind == 'rsa' ? OpenSSL::PKey::RSA.new(2048) : OpenSSL::PKey::EC.generate('prime256v1')
end

def connection_options
  ssl = { verify: true }
  ssl[:ca_file] = CONFIG['caFile'] if CONFIG['caFile']
  { ssl: ssl, request: { open_timeout: 10, timeout: 20 }, builder_class: RecordingBuilder }
end

def client_for(key, kid: nil)
  Acme::Client.new(
    private_key: key, kid: kid, directory: CONFIG.fetch('directoryUrl'),
    connection_options: connection_options
  )
end

def poll(what)
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + POLL_TIMEOUT
  loop do
    done = yield
    return done if done
    if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      raise "#{what}: not settled after #{POLL_TIMEOUT}s"
    end
    sleep POLL_INTERVAL
  end
end

# -- challenge responders -----------------------------------------------------------------

# A minimal HTTP/1.1 responder for /.well-known/acme-challenge/<token> (RFC 8555 §8.3), one
# request per connection; records each hit's Host header.
class Http01Responder
  PREFIX = '/.well-known/acme-challenge/'

  attr_reader :hits

  def initialize(port)
    @tokens = {}
    @hits = []
    @lock = Mutex.new
    @server = TCPServer.new('127.0.0.1', port)
    @thread = Thread.new { serve }
  end

  def []=(token, key_authorization)
    @lock.synchronize { @tokens[token] = key_authorization }
  end

  def close
    @thread.kill
    @server.close
  end

  private

  def serve
    loop do
      socket = @server.accept
      Thread.new(socket) { |s| answer(s) }
    end
  end

  def answer(socket)
    Timeout.timeout(10) do
      request_line = socket.gets.to_s
      headers = {}
      while (line = socket.gets) && line != "\r\n" && line != "\n"
        name, value = line.split(':', 2)
        headers[name.strip.downcase] = value.to_s.strip if value
      end
      path = request_line.split(' ')[1].to_s
      token = path.start_with?(PREFIX) ? path.delete_prefix(PREFIX) : nil
      body = token && @lock.synchronize { @tokens[token] }
      if body
        @lock.synchronize { @hits << { host: headers['host'], path: path } }
        respond(socket, '200 OK', body)
      else
        respond(socket, '404 Not Found', 'not found')
      end
    end
  rescue StandardError
    nil
  ensure
    socket.close rescue nil
  end

  def respond(socket, status, body)
    socket.write("HTTP/1.1 #{status}\r\nContent-Type: text/plain\r\n" \
                 "Content-Length: #{body.bytesize}\r\nConnection: close\r\n\r\n#{body}")
  end
end

def challtestsrv(path, body)
  uri = URI("#{CONFIG.fetch('challtestsrv').chomp('/')}#{path}")
  response = Net::HTTP.start(uri.host, uri.port, open_timeout: 5, read_timeout: 5) do |http|
    http.post(uri.path, JSON.generate(body), 'Content-Type' => 'application/json')
  end
  raise "challtestsrv #{path} answered #{response.code}" unless response.code == '200'
end

# -- the flow -------------------------------------------------------------------------------

def split_pem(pem)
  pem.scan(/-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?/m)
end

def solve(client, order, result)
  authorizations = order.authorizations
  responder = CONFIG['challenge'] == 'http-01' ? Http01Responder.new(CONFIG.fetch('http01Port')) : nil
  txt_hosts = []
  begin
    chosen = authorizations.map do |authz|
      challenge = CONFIG['challenge'] == 'http-01' ? authz.http01 : authz.dns01
      unless challenge
        offered = authz.challenges.map(&:challenge_type)
        raise "no #{CONFIG['challenge']} challenge for #{authz.domain}: #{offered.inspect}"
      end
      if responder
        responder[challenge.token] = challenge.file_content
      else
        # RFC 8555 §8.4: the TXT record is at _acme-challenge.<identifier>; a wildcard's
        # authorization carries the base name with "wildcard": true (§7.1.4).
        host = "#{challenge.record_name}.#{authz.domain}."
        txt_hosts << host
        challtestsrv('/set-txt', { host: host, value: challenge.record_content })
      end
      [authz, challenge]
    end

    result[:authorizations] = chosen.map do |authz, challenge|
      challenge.request_validation
      status_after_answer = challenge.status
      poll("challenge of #{authz.domain}") do
        challenge.reload
        !%w[pending processing].include?(challenge.status)
      end
      raise "challenge of #{authz.domain} is #{challenge.status}: #{challenge.error.inspect}" unless challenge.status == 'valid'
      poll("authorization of #{authz.domain}") do
        authz.reload
        authz.status != 'pending'
      end
      {
        identifier: authz.identifier,
        wildcard: authz.wildcard == true,
        challengeType: challenge.challenge_type,
        statusAfterAnswer: status_after_answer,
        challengeStatus: challenge.status,
        authzStatus: authz.status
      }
    end
    result[:http01Requests] = responder ? responder.hits : []
  ensure
    responder&.close
    txt_hosts.uniq.each { |host| challtestsrv('/clear-txt', { host: host }) }
  end
end

def issue(client, result)
  names = CONFIG.fetch('names')
  order = client.new_order(identifiers: names)
  result[:order] = { url: order.url, status: order.status, identifiers: order.identifiers }
  solve(client, order, result)

  poll('order before finalize') do
    order.reload
    order.status != 'pending'
  end
  result[:orderStatusBeforeFinalize] = order.status

  cert_key = create_key(CONFIG['certKey'])
  csr = Acme::Client::CertificateRequest.new(names: names, private_key: cert_key)
  result[:csrVersion] = csr.csr.version
  order.finalize(csr: csr)
  result[:finalizeStatus] = order.status
  poll('order after finalize') do
    order.reload
    order.status != 'processing'
  end
  result[:orderStatus] = order.status
  certificate = order.certificate
  result[:certificate] = certificate
  result[:chainLength] = split_pem(certificate).length
  if CONFIG['preferredChain']
    # The gem follows Link rel="alternate" only when asked for an issuer name.
    result[:alternate] = order.certificate(force_chain: CONFIG['preferredChain'])
  end
  [order, certificate]
end

# A second order for the same names: the server reuses the valid authorizations (RFC 8555
# §7.1.3), and a CSR naming another identifier than the order's is refused (§7.4: badCSR).
def bad_csr(client)
  names = CONFIG.fetch('names')
  order = client.new_order(identifiers: names)
  extra = "extra.#{names.last.delete_prefix('*.')}"
  csr = Acme::Client::CertificateRequest.new(names: [*names, extra], private_key: create_key('ecdsa'))
  { orderStatus: order.status }.merge(attempt { order.finalize(csr: csr) })
end

def main
  result = { acmeClientVersion: Acme::Client::VERSION, rubyVersion: RUBY_VERSION, faradayVersion: Faraday::VERSION }
  account_key = create_key(CONFIG['accountKey'])
  client = client_for(account_key)
  result[:directoryMeta] = client.meta

  account = client.new_account(contact: "mailto:#{CONFIG.fetch('email')}", terms_of_service_agreed: true)
  result[:account] = { url: account.url, status: account.status, contact: account.contact, termsOfServiceAgreed: account.term_of_service }
  return result if CONFIG['stopAfterDirectory']

  # RFC 8555 §7.3.1: the same key finds the same account (onlyReturnExisting), from a client
  # that does not know its URL.
  result[:accountFoundAgain] = { url: client_for(account_key).account.url }

  updated = client.account_update(contact: ["mailto:updated-#{CONFIG.fetch('email')}"])
  result[:accountUpdated] = { status: updated.status, contact: updated.contact }

  # RFC 8555 §7.1.3: "localhost" is not a name this CA issues for: rejectedIdentifier.
  result[:rejectedIdentifier] = attempt { client.new_order(identifiers: ['localhost']) }

  _order, certificate = issue(client, result)
  result[:badCsr] = bad_csr(client)

  reason = CONFIG['revokeReason']
  result[:revoked] = client.revoke(certificate: certificate, reason: reason)
  # RFC 8555 §7.6: revoking it again is refused (alreadyRevoked).
  result[:secondRevocation] = attempt { client.revoke(certificate: certificate, reason: reason) }

  if CONFIG['keyChange']
    new_key = create_key(CONFIG['accountKey'] == 'rsa' ? 'ecdsa' : 'rsa')
    changed = client.account_key_change(new_private_key: new_key)
    result[:keyChange] = { status: changed.status, url: changed.url }
    result[:keyChange][:accountUrlByNewKey] = client_for(new_key).account.url
    # The old key no longer names an account (RFC 8555 §7.3.5, §7.3.1).
    result[:keyChange][:oldKey] = attempt { client_for(account_key).account.url }
  end

  deactivated = client.account_deactivate
  result[:deactivatedStatus] = deactivated.status
  # RFC 8555 §7.3.6: the server MUST NOT accept further requests signed by that account.
  result[:afterDeactivation] = attempt { client.new_order(identifiers: [CONFIG.fetch('names').first]) }
  result
end

begin
  result = main
  result[:exchanges] = EXCHANGES
  result[:transportErrors] = TRANSPORT_ERRORS
  $stdout.puts JSON.generate(result)
rescue StandardError, Timeout::Error => e
  $stdout.puts JSON.generate(
    error: "#{e.class}: #{e.message}\n#{Array(e.backtrace).first(8).join("\n")}",
    problem: last_problem, transportErrors: TRANSPORT_ERRORS, exchanges: EXCHANGES
  )
  exit 1
end
