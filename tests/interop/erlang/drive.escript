#!/usr/bin/env escript
%% -*- erlang -*-
%%
%% Runs ProcessOne's ACME client library p1_acme (Debian's erlang-p1-acme, the client in
%% ejabberd), unmodified, through one certificate's life against an ACME server, using only
%% its public API: p1_acme:start/0, generate_key/1, issue/4 (options contact, cert_type,
%% ca_certs, challenge_fun, debug_fun, timeout), revoke/4 and format_error/1.
%%
%% http-01 is answered by a listener started here on 127.0.0.1 at the CA's http-01 port:
%% the library's challenge_fun hands over the key authorizations before it posts the
%% challenges, and the listener serves them at /.well-known/acme-challenge/TOKEN.
%%
%% p1_acme calls httpc:request/4 on inets' default profile with no TLS options, so on
%% OTP 25 it verifies nothing by itself (httpc's default is ssl's verify_none). The driver
%% turns verification on through httpc:set_options/1 {socket_opts, ...}, which httpc gives
%% to ssl:connect: verify_peer with exactly the CA's root as cacertfile. ca_certs (the root
%% again) makes the library check the issued chain itself (validation_result).
%%
%% Usage: drive.escript '<json config>'. Flows: "issue" (one certificate, issued again with
%% the same account key, then revoked twice), "problems" (a wrong http-01 answer and a
%% refused identifier) and "untrusted" (the system roots instead of the CA's, then httpc's
%% default TLS options). Prints one JSON object on stdout, with every HTTP exchange the
%% library reported through debug_fun; exits 1 with {"error": ...} on a failure.
-mode(compile).

-define(TIMEOUT_MS, 30000).
-define(SYSTEM_ROOTS, "/etc/ssl/certs/ca-certificates.crt").

main([ConfigJson]) ->
    Result =
        try
            run(jiffy:decode(list_to_binary(ConfigJson), [return_maps]))
        catch
            Class:Reason:Stack ->
                #{<<"error">> => fmt("~p:~p ~p", [Class, Reason, Stack]),
                  <<"exchanges">> => exchanges()}
        end,
    ok = io:put_chars([jiffy:encode(Result), $\n]),
    halt(case maps:is_key(<<"error">>, Result) of true -> 1; false -> 0 end);
main(_) ->
    io:format(standard_error, "usage: drive.escript '<json config>'~n", []),
    halt(2).

run(#{<<"flow">> := Flow} = Config) ->
    %% Log reports (ssl's alerts among them) to stderr: stdout is the JSON document only.
    ok = logger:remove_handler(default),
    ok = logger:add_handler(default, logger_std_h, #{config => #{type => standard_error}}),
    ok = p1_acme:start(),
    put(exchanges, []),
    start_http01(maps:get(<<"http01Port">>, Config)),
    case Flow of
        <<"issue">> -> issue_flow(Config);
        <<"problems">> -> problems_flow(Config);
        <<"untrusted">> -> untrusted_flow(Config)
    end.

%% -- TLS --------------------------------------------------------------------------------------

trust(CaFile) ->
    Check = {customize_hostname_check, [{match_fun, fun ip_reference_matches/2}]},
    ok = httpc:set_options([{socket_opts, [{verify, verify_peer}, {cacertfile, CaFile}, Check]}]).

%% OTP 25's ssl takes the host of https://127.0.0.1:PORT as a DNS name and compares it with
%% the certificate's dNSName entries only; an IP address is to be compared with its iPAddress
%% entries (RFC 6125 section 1.7.2, RFC 5280 section 4.2.1.6). Every other case is ssl's own.
ip_reference_matches({dns_id, Host}, {iPAddress, Presented}) ->
    case inet:parse_strict_address(Host) of
        {ok, IP} when tuple_size(IP) =:= 4 -> tuple_to_list(IP) =:= Presented;
        {ok, IP} -> << <<W:16>> || W <- tuple_to_list(IP) >> =:= list_to_binary(Presented);
        {error, _} -> default
    end;
ip_reference_matches(_Reference, _Presented) ->
    default.

httpc_defaults() ->
    ok = httpc:set_options([{socket_opts, []}]).

%% -- flows ------------------------------------------------------------------------------------

issue_flow(#{<<"directoryUrl">> := Dir, <<"rootPem">> := Root, <<"names">> := Names} = Config) ->
    trust(binary_to_list(Root)),
    AccKey = p1_acme:generate_key(key_type(maps:get(<<"accountKey">>, Config))),
    Opts = [{contact, [maps:get(<<"contact">>, Config)]},
            {cert_type, key_type(maps:get(<<"certType">>, Config))},
            {ca_certs, root_certs(Root)},
            {challenge_fun, challenge_fun(right)},
            {debug_fun, fun debug/2},
            {timeout, ?TIMEOUT_MS}],
    Domains = [binary_to_list(N) || N <- Names],
    {ok, First} = p1_acme:issue(Dir, Domains, AccKey, Opts),
    Issued = issued(First, AccKey),
    mark(<<"again">>),
    %% The same account key again: newAccount finds the account, and the order reuses the
    %% valid authorizations.
    Again = p1_acme:issue(Dir, Domains, AccKey, Opts),
    Reissued = case Again of
                   {ok, Second} -> issued(Second, AccKey);
                   Err2 -> describe(Err2)
               end,
    #{cert_chain := [Leaf | _], cert_key := CertKey} = First,
    RevOpts = [{debug_fun, fun debug/2}, {timeout, ?TIMEOUT_MS}],
    mark(<<"revoke">>),
    Revoked = p1_acme:revoke(Dir, Leaf, CertKey, RevOpts),
    mark(<<"revokeAgain">>),
    RevokedAgain = p1_acme:revoke(Dir, Leaf, CertKey, RevOpts),
    #{<<"issued">> => Issued,
      <<"issuedAgain">> => Reissued,
      <<"challenges">> => lists:reverse(get_list(challenges)),
      <<"http01Requests">> => http01_hits(),
      <<"revoke">> => describe(Revoked),
      <<"revokeAgain">> => describe(RevokedAgain),
      <<"exchanges">> => exchanges()}.

problems_flow(#{<<"directoryUrl">> := Dir, <<"rootPem">> := Root,
                <<"wrongAnswerName">> := Wrong, <<"refusedName">> := Refused}) ->
    trust(binary_to_list(Root)),
    Opts = [{challenge_fun, challenge_fun(wrong)},
            {debug_fun, fun debug/2},
            {timeout, ?TIMEOUT_MS}],
    mark(<<"wrongAnswer">>),
    WrongAnswer = p1_acme:issue(Dir, [binary_to_list(Wrong)], p1_acme:generate_key(ec), Opts),
    mark(<<"refused">>),
    RefusedId = p1_acme:issue(Dir, [binary_to_list(Refused)], p1_acme:generate_key(ec), Opts),
    #{<<"wrongAnswer">> => describe(WrongAnswer),
      <<"wrongAnswerRequests">> => http01_hits(),
      <<"refused">> => describe(RefusedId),
      <<"exchanges">> => exchanges()}.

untrusted_flow(#{<<"directoryUrl">> := Dir, <<"refusedName">> := Refused}) ->
    Opts = [{debug_fun, fun debug/2}, {timeout, 5000}],
    Domains = [binary_to_list(Refused)],
    trust(?SYSTEM_ROOTS),
    mark(<<"systemRoots">>),
    SystemRoots = p1_acme:issue(Dir, Domains, p1_acme:generate_key(ec), Opts),
    httpc_defaults(),
    mark(<<"httpcDefaults">>),
    Defaults = p1_acme:issue(Dir, Domains, p1_acme:generate_key(ec), Opts),
    #{<<"systemRoots">> => describe(SystemRoots),
      <<"httpcDefaults">> => describe(Defaults),
      <<"exchanges">> => exchanges()}.

key_type(<<"ec">>) -> ec;
key_type(<<"rsa">>) -> rsa.

root_certs(Root) ->
    {ok, Pem} = file:read_file(Root),
    [public_key:pkix_decode_cert(Der, otp) || {'Certificate', Der, not_encrypted}
                                                  <- public_key:pem_decode(Pem)].

issued(#{cert_chain := Chain, cert_key := CertKey, acc_key := AccKey} = Result, AccKey) ->
    #{<<"chainPem">> => chain_pem(Chain),
      <<"certKeyType">> => key_name(CertKey),
      <<"validationResult">> => fmt("~p", [maps:get(validation_result, Result, none)])}.

key_name(Key) when element(1, Key) =:= 'ECPrivateKey' -> <<"ec">>;
key_name(Key) when element(1, Key) =:= 'RSAPrivateKey' -> <<"rsa">>.

chain_pem(Chain) ->
    Entries = [{'Certificate', public_key:pkix_encode('OTPCertificate', C, otp), not_encrypted}
               || C <- Chain],
    public_key:pem_encode(Entries).

%% -- the library's results --------------------------------------------------------------------

describe(ok) ->
    #{<<"ok">> => true};
describe({error, Reason}) ->
    (reason(Reason))#{<<"ok">> => false, <<"formatted">> => fmt("~ts", [p1_acme:format_error(Reason)])}.

reason({problem_report, Problem}) ->
    #{<<"kind">> => <<"problem_report">>, <<"problem">> => problem(Problem)};
reason({challenge_failed, Domain, Problem}) ->
    #{<<"kind">> => <<"challenge_failed">>, <<"domain">> => unicode:characters_to_binary(Domain),
      <<"problem">> => problem(Problem)};
reason({http_error, Detail}) ->
    #{<<"kind">> => <<"http_error">>, <<"detail">> => fmt("~p", [Detail])};
reason(Other) ->
    #{<<"kind">> => fmt("~p", [element(1, Other)]), <<"detail">> => fmt("~p", [Other])}.

%% The library's err_obj(): the type is an atom for the ACME URNs it knows, else the binary.
problem(undefined) ->
    null;
problem(#{type := Type} = Problem) ->
    TypeUrn = case Type of
                  T when is_atom(T) -> <<"urn:ietf:params:acme:error:", (atom_to_binary(T))/binary>>;
                  T -> T
              end,
    #{<<"type">> => TypeUrn,
      <<"detail">> => maps:get(detail, Problem, null),
      <<"status">> => maps:get(status, Problem, null)}.

%% -- http-01 ----------------------------------------------------------------------------------

challenge_fun(Answer) ->
    fun(Challenges) ->
            lists:foreach(
              fun(#{domain := Domain, token := Token, key := KeyAuth}) ->
                      Served = case Answer of
                                   right -> KeyAuth;
                                   wrong -> <<Token/binary, ".not-the-account-thumbprint">>
                               end,
                      true = ets:insert(http01_tokens, {Token, Served}),
                      put(challenges, [#{<<"domain">> => unicode:characters_to_binary(Domain),
                                         <<"token">> => Token,
                                         <<"keyAuthorization">> => KeyAuth}
                                       | get_list(challenges)])
              end,
              Challenges)
    end.

start_http01(Port) ->
    ets:new(http01_tokens, [named_table, public, set]),
    ets:new(http01_hits, [named_table, public, ordered_set]),
    {ok, Listen} = gen_tcp:listen(Port, [binary, {packet, http_bin}, {active, false},
                                         {reuseaddr, true}, {ip, {127, 0, 0, 1}}]),
    Acceptor = spawn(fun() -> accept_loop(Listen) end),
    ok = gen_tcp:controlling_process(Listen, Acceptor).

accept_loop(Listen) ->
    {ok, Socket} = gen_tcp:accept(Listen),
    Handler = spawn(fun() -> receive go -> serve(Socket) end end),
    ok = gen_tcp:controlling_process(Socket, Handler),
    Handler ! go,
    accept_loop(Listen).

serve(Socket) ->
    case gen_tcp:recv(Socket, 0, 5000) of
        {ok, {http_request, Method, {abs_path, Path}, _}} ->
            Host = read_headers(Socket, <<>>),
            {Status, Body} = answer(Method, Path),
            ets:insert(http01_hits, {erlang:unique_integer([monotonic]),
                                     #{<<"host">> => Host, <<"path">> => Path,
                                       <<"status">> => Status}}),
            ok = gen_tcp:send(Socket, [<<"HTTP/1.1 ">>, integer_to_binary(Status),
                                       <<" X\r\nContent-Type: text/plain\r\nContent-Length: ">>,
                                       integer_to_binary(byte_size(Body)),
                                       <<"\r\nConnection: close\r\n\r\n">>, Body]);
        _ -> ok
    end,
    gen_tcp:close(Socket).

read_headers(Socket, Host) ->
    case gen_tcp:recv(Socket, 0, 5000) of
        {ok, {http_header, _, 'Host', _, Value}} -> read_headers(Socket, Value);
        {ok, {http_header, _, _, _, _}} -> read_headers(Socket, Host);
        {ok, http_eoh} -> Host;
        _ -> Host
    end.

answer('GET', <<"/.well-known/acme-challenge/", Token/binary>>) ->
    case ets:lookup(http01_tokens, Token) of
        [{_, KeyAuth}] -> {200, KeyAuth};
        [] -> {404, <<"no such token">>}
    end;
answer(_, _) ->
    {404, <<"not found">>}.

http01_hits() ->
    [Hit || {_, Hit} <- ets:tab2list(http01_hits)].

%% -- recording the exchanges (debug_fun) ------------------------------------------------------

mark(Step) ->
    put(step, Step).

debug("HTTP request: ~p", [{Method, Req}]) ->
    Base = #{<<"step">> => get_step(), <<"method">> => atom_to_binary(Method),
             <<"url">> => list_to_binary(element(1, Req))},
    Entry = case Req of
                {_URL, _Hdrs, _CT, Body} -> maps:merge(Base, describe_jws(Body));
                _ -> Base
            end,
    put(exchanges, [Entry | get_list(exchanges)]);
debug("HTTP response: ~p", [Response]) ->
    case get_list(exchanges) of
        [Last | Rest] -> put(exchanges, [maps:merge(Last, describe_response(Response)) | Rest]);
        [] -> ok
    end;
debug("HTTP request timeout", []) ->
    case get_list(exchanges) of
        [Last | Rest] -> put(exchanges, [Last#{<<"timedOut">> => true} | Rest]);
        [] -> ok
    end;
debug(_Format, _Args) ->
    ok.

get_step() ->
    case get(step) of undefined -> <<"issue">>; Step -> Step end.

describe_jws(Body) ->
    try jiffy:decode(Body, [return_maps]) of
        #{<<"protected">> := Protected, <<"payload">> := Payload} ->
            Header = jiffy:decode(base64url:decode(Protected), [return_maps]),
            Header1 = case Header of
                          #{<<"jwk">> := #{<<"kty">> := Kty}} ->
                              Header#{<<"jwk">> => <<"(", Kty/binary, " key)">>};
                          _ -> Header
                      end,
            #{<<"protected">> => Header1, <<"payload">> => describe_payload(Payload)};
        _ -> #{}
    catch
        _:_ -> #{}
    end.

describe_payload(<<>>) ->
    <<>>;  % POST-as-GET (RFC 8555 §6.3)
describe_payload(Payload) ->
    try jiffy:decode(base64url:decode(Payload), [return_maps]) of
        Map when is_map(Map) ->
            maps:map(fun(K, V) when K =:= <<"csr">>; K =:= <<"certificate">> ->
                             <<"(", (integer_to_binary(byte_size(V)))/binary, " chars)">>;
                        (_, V) -> V
                     end, Map);
        _ -> <<"(not an object)">>
    catch
        _:_ -> <<"(not JSON)">>
    end.

describe_response({{_Version, Status, _Slogan}, Headers, Body}) ->
    Header = fun(Name) ->
                     case lists:keyfind(Name, 1, Headers) of
                         {_, Value} -> unicode:characters_to_binary(Value);
                         false -> null
                     end
             end,
    ContentType = Header("content-type"),
    Decoded = case ContentType of
                  <<"application/json">> -> try_json(Body);
                  <<"application/problem+json">> -> try_json(Body);
                  _ -> <<"(", (integer_to_binary(byte_size(Body)))/binary, " bytes)">>
              end,
    #{<<"status">> => Status,
      <<"contentType">> => ContentType,
      <<"location">> => Header("location"),
      <<"replayNonce">> => Header("replay-nonce") =/= null,
      <<"body">> => Decoded};
describe_response(Other) ->
    #{<<"transportError">> => fmt("~p", [Other])}.

try_json(Body) ->
    try jiffy:decode(Body, [return_maps]) catch _:_ -> <<"(not JSON)">> end.

exchanges() ->
    lists:reverse(get_list(exchanges)).

get_list(Key) ->
    case get(Key) of undefined -> []; List -> List end.

fmt(Format, Args) ->
    unicode:characters_to_binary(io_lib:format(Format, Args)).
