/* Unit tests for config.c: defaults, every key, the exact message of each kind of bad config. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "lifeline/config.h"

/* JSON in C strings is written with single quotes; this turns them into
 * double quotes so the cases stay readable. */
static char *dq(const char *s)
{
    char *out = strdup(s);
    assert_non_null(out);
    for (char *p = out; *p; p++)
        if (*p == '\'')
            *p = '"';
    return out;
}

static void dump_errors(const char *label, const struct config_errors *errs)
{
    fprintf(stderr, "%s: %zu error(s)\n", label, errs->n);
    for (size_t i = 0; i < errs->n; i++)
        fprintf(stderr, "  got: %s\n", errs->msgs[i]);
}

/* Parses and asserts the exact, complete, ordered list of messages. */
static void expect_errors(const char *label, const char *json_sq, const char *const *want)
{
    char *json = dq(json_sq);
    struct config *cfg = (struct config *)&cfg; /* must be reset to NULL */
    struct config_errors errs = { 0 };
    int rc = config_parse(json, strlen(json), &cfg, &errs);
    size_t n_want = 0;
    while (want[n_want] != NULL)
        n_want++;
    int ok = rc == -EINVAL && cfg == NULL && errs.n == n_want;
    for (size_t i = 0; ok && i < n_want; i++)
        ok = strcmp(errs.msgs[i], want[i]) == 0;
    if (!ok) {
        fprintf(stderr, "case %s: rc %d\n", label, rc);
        for (size_t i = 0; i < n_want; i++)
            fprintf(stderr, "  want: %s\n", want[i]);
        dump_errors(label, &errs);
    }
    config_errors_free(&errs);
    config_free(rc == 0 ? cfg : NULL);
    free(json);
    assert_true(ok);
}

static struct config *expect_ok(const char *json_sq)
{
    char *json = dq(json_sq);
    struct config *cfg = NULL;
    struct config_errors errs = { 0 };
    int rc = config_parse(json, strlen(json), &cfg, &errs);
    if (rc != 0)
        dump_errors("expect_ok", &errs);
    assert_int_equal(rc, 0);
    assert_int_equal(errs.n, 0);
    assert_non_null(cfg);
    config_errors_free(&errs);
    free(json);
    return cfg;
}

/* Building blocks: a valid route, so each case changes one thing. */
#define SERVERS "'servers':['127.0.0.1:6000']"
#define UPSTREAM "'upstream':{" SERVERS "}"
#define ROUTE_NAMED(n, l) "{'name':'" n "','listen':'" l "'," UPSTREAM "}"
#define ROUTE ROUTE_NAMED("r", "127.0.0.1:5000")
#define ROUTES "'routes':[" ROUTE "]"
/* A config whose only route is `route`. */
#define ONE_ROUTE(route) "{'routes':[" route "]}"
/* A config with `top` (ending in a comma) before a valid route list. */
#define TOP(top) "{" top ROUTES "}"
/* A route whose upstream object holds `up`. */
#define WITH_UPSTREAM(up) ONE_ROUTE("{'name':'r','listen':'127.0.0.1:5000','upstream':{" up "}}")

#define NAME_RULE "expected 1-63 characters of A-Z a-z 0-9 _ . -, got "
/* A route whose client object holds `c`, and one whose client.heartbeat holds `h`. */
#define WITH_CLIENT(c)                                                                             \
    ONE_ROUTE("{'name':'r','listen':'127.0.0.1:5000','client':{" c "}," UPSTREAM "}")
#define WITH_HEARTBEAT(h) WITH_CLIENT("'heartbeat':{" h "}")

#define LEVELS "\"debug\", \"info\", \"warn\", \"error\""
#define IDENTITIES "\"address_port\", \"address\", \"none\""
#define DUPLICATES "\"replace\", \"reject\", \"allow\""
#define CLOSES "\"rst\", \"fin\""
#define ON_CLOSES "\"close_client\", \"reconnect\""
#define HB "routes[0].client.heartbeat."
#define NOT_LOOPBACK " is not a loopback address; set admin.allow_remote to true to serve it"
#define NOT_LOCALHOST                                                                              \
    " is a host name other than \"localhost\"; set admin.allow_remote to true to serve it"
#define ACCOUNT_RULE "expected an account name, got "
#define CIDR_RULE "expected an address or CIDR, got "
/* A config with an admin object holding `a`, before a valid route list. */
#define WITH_ADMIN(a) TOP("'admin':{" a "},")

struct bad_case {
    const char *label;
    const char *json;
    const char *errors[12];
};

static const struct bad_case bad_cases[] = {
    /* Unknown and duplicate keys. */
    { "unknown top-level key", TOP("'wrkers':1,"), { "wrkers: unknown key" } },
    { "keys are case-sensitive", TOP("'Workers':1,"), { "Workers: unknown key" } },
    { "unknown upstream key",
      WITH_UPSTREAM(SERVERS ",'retrys':3"),
      { "routes[0].upstream.retrys: unknown key" } },
    { "unknown log key", TOP("'log':{'colour':'red'},"), { "log.colour: unknown key" } },
    { "misspelt required key",
      ONE_ROUTE("{'name':'r','lisen':'127.0.0.1:5000'," UPSTREAM "}"),
      { "routes[0].lisen: unknown key", "routes[0].listen: required key is missing" } },
    { "duplicate log.level",
      TOP("'log':{'level':'info','level':'debug'},"),
      { "log.level: duplicate key" } },
    { "duplicate top-level key", TOP("'workers':1,'workers':2,"), { "workers: duplicate key" } },
    { "duplicate unknown key", TOP("'x':1,'x':2,"), { "x: unknown key", "x: duplicate key" } },
    { "duplicate routes key", "{" ROUTES "," ROUTES "}", { "routes: duplicate key" } },

    /* Types. */
    { "integer given a string",
      TOP("'workers':'4',"),
      { "workers: expected integer, got string" } },
    { "integer given a fraction",
      TOP("'workers':1.5,"),
      { "workers: expected integer, got number" } },
    { "integer given a boolean",
      TOP("'workers':true,"),
      { "workers: expected integer, got boolean" } },
    { "integer given null", TOP("'workers':null,"), { "workers: expected integer, got null" } },
    { "integer given an object",
      TOP("'workers':{},"),
      { "workers: expected integer, got object" } },
    { "integer given an array", TOP("'workers':[1],"), { "workers: expected integer, got array" } },
    { "object given an array", TOP("'log':['info'],"), { "log: expected object, got array" } },
    { "object given a string",
      TOP("'shutdown':'now',"),
      { "shutdown: expected object, got string" } },
    { "nested integer given a string",
      TOP("'shutdown':{'drain_timeout_ms':'10s'},"),
      { "shutdown.drain_timeout_ms: expected integer, got string" } },
    { "enum given an integer",
      TOP("'log':{'level':3},"),
      { "log.level: expected string, got integer" } },
    { "route name given an integer",
      ONE_ROUTE("{'name':5,'listen':'127.0.0.1:5000'," UPSTREAM "}"),
      { "routes[0].name: expected string, got integer" } },
    { "listen given an array",
      ONE_ROUTE("{'name':'r','listen':['127.0.0.1:5000']," UPSTREAM "}"),
      { "routes[0].listen: expected string, got array" } },
    { "upstream given an array",
      ONE_ROUTE("{'name':'r','listen':'127.0.0.1:5000','upstream':[]}"),
      { "routes[0].upstream: expected object, got array" } },
    { "servers given a string",
      WITH_UPSTREAM("'servers':'127.0.0.1:6000'"),
      { "routes[0].upstream.servers: expected array, got string" } },
    { "server given an integer",
      WITH_UPSTREAM("'servers':[6000,'127.0.0.1:6000',false]"),
      { "routes[0].upstream.servers[0]: expected string, got integer",
        "routes[0].upstream.servers[2]: expected string, got boolean" } },
    { "source_address given an integer",
      WITH_UPSTREAM(SERVERS ",'source_address':0"),
      { "routes[0].upstream.source_address: expected string, got integer" } },

    /* Ranges: each bound of each integer key. */
    { "workers above range",
      TOP("'workers':5000,"),
      { "workers: must be between 0 and 256, got 5000" } },
    { "workers below range",
      TOP("'workers':-1,"),
      { "workers: must be between 0 and 256, got -1" } },
    { "workers far out of range",
      TOP("'workers':1e300,"),
      { "workers: must be between 0 and 256, got 1e+300" } },
    { "workers just above range",
      TOP("'workers':257,"),
      { "workers: must be between 0 and 256, got 257" } },
    { "drain timeout above range",
      TOP("'shutdown':{'drain_timeout_ms':3600001},"),
      { "shutdown.drain_timeout_ms: must be between 0 and 3600000, got 3600001" } },
    { "buffer_bytes below range",
      ONE_ROUTE("{'name':'r','listen':'127.0.0.1:5000','buffer_bytes':1023," UPSTREAM "}"),
      { "routes[0].buffer_bytes: must be between 1024 and 67108864, got 1023" } },
    { "buffer_bytes above range",
      ONE_ROUTE("{'name':'r','listen':'127.0.0.1:5000','buffer_bytes':67108865," UPSTREAM "}"),
      { "routes[0].buffer_bytes: must be between 1024 and 67108864, got 67108865" } },
    { "connect timeout zero",
      WITH_UPSTREAM(SERVERS ",'connect_timeout_ms':0"),
      { "routes[0].upstream.connect_timeout_ms: must be between 1 and 600000, got 0" } },
    { "connect timeout above range",
      WITH_UPSTREAM(SERVERS ",'connect_timeout_ms':600001"),
      { "routes[0].upstream.connect_timeout_ms: must be between 1 and 600000, got 600001" } },
    { "retries above range",
      WITH_UPSTREAM(SERVERS ",'retries':101"),
      { "routes[0].upstream.retries: must be between 0 and 100, got 101" } },
    { "retries negative",
      WITH_UPSTREAM(SERVERS ",'retries':-3"),
      { "routes[0].upstream.retries: must be between 0 and 100, got -3" } },
    { "backoff above range",
      WITH_UPSTREAM(SERVERS ",'retry_backoff_ms':600001"),
      { "routes[0].upstream.retry_backoff_ms: must be between 0 and 600000, got 600001" } },

    /* Enums. */
    { "unknown log level",
      TOP("'log':{'level':'verbose'},"),
      { "log.level: expected one of " LEVELS ", got \"verbose\"" } },
    { "log level is case-sensitive",
      TOP("'log':{'level':'INFO'},"),
      { "log.level: expected one of " LEVELS ", got \"INFO\"" } },
    { "unknown log format",
      TOP("'log':{'format':'yaml'},"),
      { "log.format: expected one of \"text\", \"json\", got \"yaml\"" } },

    /* routes[].client: takeover policy. */
    { "unknown identity",
      WITH_CLIENT("'identity':'x'"),
      { "routes[0].client.identity: expected one of " IDENTITIES ", got \"x\"" } },
    { "identity is case-sensitive",
      WITH_CLIENT("'identity':'Address'"),
      { "routes[0].client.identity: expected one of " IDENTITIES ", got \"Address\"" } },
    { "identity given an integer",
      WITH_CLIENT("'identity':1"),
      { "routes[0].client.identity: expected string, got integer" } },
    { "unknown on_duplicate",
      WITH_CLIENT("'on_duplicate':'x'"),
      { "routes[0].client.on_duplicate: expected one of " DUPLICATES ", got \"x\"" } },
    { "on_duplicate given null",
      WITH_CLIENT("'on_duplicate':null"),
      { "routes[0].client.on_duplicate: expected string, got null" } },
    { "unknown client close",
      WITH_CLIENT("'close':'x'"),
      { "routes[0].client.close: expected one of " CLOSES ", got \"x\"" } },
    { "client close given a boolean",
      WITH_CLIENT("'close':true"),
      { "routes[0].client.close: expected string, got boolean" } },
    { "client given a string",
      ONE_ROUTE("{'name':'r','listen':'127.0.0.1:5000','client':'address'," UPSTREAM "}"),
      { "routes[0].client: expected object, got string" } },
    { "client given an array",
      ONE_ROUTE("{'name':'r','listen':'127.0.0.1:5000','client':[]," UPSTREAM "}"),
      { "routes[0].client: expected object, got array" } },
    { "client given null",
      ONE_ROUTE("{'name':'r','listen':'127.0.0.1:5000','client':null," UPSTREAM "}"),
      { "routes[0].client: expected object, got null" } },
    { "unknown client key",
      WITH_CLIENT("'identiy':'address'"),
      { "routes[0].client.identiy: unknown key" } },
    { "heartbeat key directly in client",
      WITH_CLIENT("'silence_ms':1000"),
      { "routes[0].client.silence_ms: unknown key" } },
    { "duplicate client key",
      WITH_CLIENT("'close':'rst','close':'fin'"),
      { "routes[0].client.close: duplicate key" } },
    { "every client error in order",
      WITH_CLIENT("'identity':'port','x':1,'on_duplicate':'keep','close':'abort'"),
      { "routes[0].client.identity: expected one of " IDENTITIES ", got \"port\"",
        "routes[0].client.x: unknown key",
        "routes[0].client.on_duplicate: expected one of " DUPLICATES ", got \"keep\"",
        "routes[0].client.close: expected one of " CLOSES ", got \"abort\"" } },

    /* routes[].client.heartbeat: each bound of each key, then types. */
    { "heartbeat given an integer",
      WITH_CLIENT("'heartbeat':5"),
      { "routes[0].client.heartbeat: expected object, got integer" } },
    { "heartbeat given an array",
      WITH_CLIENT("'heartbeat':[]"),
      { "routes[0].client.heartbeat: expected object, got array" } },
    { "unknown heartbeat key", WITH_HEARTBEAT("'silence':1000"), { HB "silence: unknown key" } },
    { "heartbeat keys are case-sensitive",
      WITH_HEARTBEAT("'Keepalive_count':3"),
      { HB "Keepalive_count: unknown key" } },
    { "duplicate heartbeat key",
      WITH_HEARTBEAT("'silence_ms':1,'silence_ms':2"),
      { HB "silence_ms: duplicate key" } },
    { "silence negative",
      WITH_HEARTBEAT("'silence_ms':-1"),
      { HB "silence_ms: must be between 0 and 86400000, got -1" } },
    { "silence above range",
      WITH_HEARTBEAT("'silence_ms':86400001"),
      { HB "silence_ms: must be between 0 and 86400000, got 86400001" } },
    { "keepalive idle negative",
      WITH_HEARTBEAT("'keepalive_idle_ms':-1"),
      { HB "keepalive_idle_ms: must be between 0 and 32767000, got -1" } },
    { "keepalive idle above range",
      WITH_HEARTBEAT("'keepalive_idle_ms':32767001"),
      { HB "keepalive_idle_ms: must be between 0 and 32767000, got 32767001" } },
    { "keepalive interval zero",
      WITH_HEARTBEAT("'keepalive_interval_ms':0"),
      { HB "keepalive_interval_ms: must be between 1 and 32767000, got 0" } },
    { "keepalive interval above range",
      WITH_HEARTBEAT("'keepalive_interval_ms':32767001"),
      { HB "keepalive_interval_ms: must be between 1 and 32767000, got 32767001" } },
    { "keepalive count zero",
      WITH_HEARTBEAT("'keepalive_count':0"),
      { HB "keepalive_count: must be between 1 and 127, got 0" } },
    { "keepalive count above range",
      WITH_HEARTBEAT("'keepalive_count':128"),
      { HB "keepalive_count: must be between 1 and 127, got 128" } },
    { "user timeout negative",
      WITH_HEARTBEAT("'user_timeout_ms':-1"),
      { HB "user_timeout_ms: must be between 0 and 86400000, got -1" } },
    { "user timeout above range",
      WITH_HEARTBEAT("'user_timeout_ms':86400001"),
      { HB "user_timeout_ms: must be between 0 and 86400000, got 86400001" } },
    { "user timeout far above range",
      WITH_HEARTBEAT("'user_timeout_ms':1e20"),
      { HB "user_timeout_ms: must be between 0 and 86400000, got 1e+20" } },
    { "heartbeat types",
      WITH_HEARTBEAT("'silence_ms':'5s','keepalive_idle_ms':true,'keepalive_interval_ms':1.5,"
                     "'keepalive_count':null,'user_timeout_ms':[20000]"),
      { HB "silence_ms: expected integer, got string",
        HB "keepalive_idle_ms: expected integer, got boolean",
        HB "keepalive_interval_ms: expected integer, got number",
        HB "keepalive_count: expected integer, got null",
        HB "user_timeout_ms: expected integer, got array" } },
    { "heartbeat errors with client errors",
      WITH_CLIENT("'close':'x','heartbeat':{'keepalive_count':200,'y':0},'identity':'none'"),
      { "routes[0].client.close: expected one of " CLOSES ", got \"x\"",
        HB "keepalive_count: must be between 1 and 127, got 200", HB "y: unknown key" } },

    /* routes[].upstream.close and on_close. */
    { "unknown upstream close",
      WITH_UPSTREAM(SERVERS ",'close':'graceful'"),
      { "routes[0].upstream.close: expected one of " CLOSES ", got \"graceful\"" } },
    { "upstream close is case-sensitive",
      WITH_UPSTREAM(SERVERS ",'close':'FIN'"),
      { "routes[0].upstream.close: expected one of " CLOSES ", got \"FIN\"" } },
    { "upstream close given an integer",
      WITH_UPSTREAM(SERVERS ",'close':0"),
      { "routes[0].upstream.close: expected string, got integer" } },
    { "unknown on_close",
      WITH_UPSTREAM(SERVERS ",'on_close':'retry'"),
      { "routes[0].upstream.on_close: expected one of " ON_CLOSES ", got \"retry\"" } },
    { "on_close given an object",
      WITH_UPSTREAM(SERVERS ",'on_close':{}"),
      { "routes[0].upstream.on_close: expected string, got object" } },
    { "client keys are not upstream keys",
      WITH_UPSTREAM(SERVERS ",'on_duplicate':'reject'"),
      { "routes[0].upstream.on_duplicate: unknown key" } },

    /* Required keys and array sizes. */
    { "routes missing", "{'workers':1}", { "routes: required key is missing" } },
    { "empty object", "{}", { "routes: required key is missing" } },
    { "routes empty", "{'routes':[]}", { "routes: must hold at least one route" } },
    { "routes given an object", "{'routes':{}}", { "routes: expected array, got object" } },
    { "route given a string and null",
      "{'routes':['r'," ROUTE ",null]}",
      { "routes[0]: expected object, got string", "routes[2]: expected object, got null" } },
    { "route empty",
      "{'routes':[{}]}",
      { "routes[0].name: required key is missing", "routes[0].listen: required key is missing",
        "routes[0].upstream: required key is missing" } },
    { "servers missing",
      WITH_UPSTREAM("'retries':1"),
      { "routes[0].upstream.servers: required key is missing" } },
    { "servers empty",
      WITH_UPSTREAM("'servers':[]"),
      { "routes[0].upstream.servers: must hold at least one server" } },

    /* Endpoints. */
    { "server without port",
      WITH_UPSTREAM("'servers':['127.0.0.1:6000','10.0.0.1']"),
      { "routes[0].upstream.servers[1]: expected \"host:port\", got \"10.0.0.1\"" } },
    { "malformed listen addresses",
      "{'routes':[" ROUTE_NAMED("r0", "0.0.0.0:0") "," ROUTE_NAMED("r1", "0.0.0.0:65536") "," ROUTE_NAMED("r2", "h:http") "," ROUTE_NAMED("r3", ":5000") "," ROUTE_NAMED(
          "r4",
          "[::1:5000") "," ROUTE_NAMED("r5",
                                       "::1:5000") "," ROUTE_NAMED("r6",
                                                                   "[::g]:1") "," ROUTE_NAMED("r7",
                                                                                              " 1."
                                                                                              "2.3."
                                                                                              "4:5") "," ROUTE_NAMED("r8",
                                                                                                                     "") "," ROUTE_NAMED("r9",
                                                                                                                                         "a b:1") "]}",
      { "routes[0].listen: expected \"host:port\", got \"0.0.0.0:0\"",
        "routes[1].listen: expected \"host:port\", got \"0.0.0.0:65536\"",
        "routes[2].listen: expected \"host:port\", got \"h:http\"",
        "routes[3].listen: expected \"host:port\", got \":5000\"",
        "routes[4].listen: expected \"host:port\", got \"[::1:5000\"",
        "routes[5].listen: expected \"host:port\", got \"::1:5000\"",
        "routes[6].listen: expected \"host:port\", got \"[::g]:1\"",
        "routes[7].listen: expected \"host:port\", got \" 1.2.3.4:5\"",
        "routes[8].listen: expected \"host:port\", got \"\"",
        "routes[9].listen: expected \"host:port\", got \"a b:1\"" } },
    { "bad source addresses",
      "{'routes':["
      "{'name':'a','listen':'127.0.0.1:1','upstream':{" SERVERS ",'source_address':'foo'}},"
      "{'name':'b','listen':'127.0.0.1:2','upstream':{" SERVERS ",'source_address':'[::1]'}},"
      "{'name':'c','listen':'127.0.0.1:3','upstream':{" SERVERS ",'source_address':'1.2.3.4:5'}},"
      "{'name':'d','listen':'127.0.0.1:4','upstream':{" SERVERS ",'source_address':''}}"
      "]}",
      { "routes[0].upstream.source_address: expected an IP address or \"client\", got \"foo\"",
        "routes[1].upstream.source_address: expected an IP address or \"client\", got \"[::1]\"",
        "routes[2].upstream.source_address: expected an IP address or \"client\", got "
        "\"1.2.3.4:5\"",
        "routes[3].upstream.source_address: expected an IP address or \"client\", got \"\"" } },

    /* Route names. */
    { "name with a space",
      ONE_ROUTE(ROUTE_NAMED("a b", "127.0.0.1:5000")),
      { "routes[0].name: " NAME_RULE "\"a b\"" } },
    { "empty name",
      ONE_ROUTE(ROUTE_NAMED("", "127.0.0.1:5000")),
      { "routes[0].name: " NAME_RULE "\"\"" } },
    { "name of 64 characters",
      ONE_ROUTE(ROUTE_NAMED("0123456789012345678901234567890123456789012345678901234567890123",
                            "127.0.0.1:5000")),
      { "routes[0].name: " NAME_RULE
        "\"0123456789012345678901234567890123456789012345678901234567890123\"" } },
    { "name echoed with escapes",
      ONE_ROUTE(ROUTE_NAMED("a\\\"b\\\\c\\td/", "127.0.0.1:5000")),
      { "routes[0].name: " NAME_RULE "\"a\\\"b\\\\c\\u0009d/\"" } },

    /* Values that must differ between routes. */
    { "duplicate route name",
      "{'routes':[" ROUTE_NAMED("legacy", "0.0.0.0:5000") "," ROUTE_NAMED("legacy",
                                                                          "0.0.0.0:5001") "]}",
      { "routes[1].name: duplicate route name \"legacy\" (also routes[0].name)" } },
    { "duplicate listen address",
      "{'routes':[" ROUTE_NAMED("a", "0.0.0.0:5000") "," ROUTE_NAMED("b", "0.0.0.0:5000") "]}",
      { "routes[1].listen: duplicate listen address \"0.0.0.0:5000\" (also routes[0].listen)" } },
    { "duplicate IPv6 listen compared by value",
      "{'routes':[" ROUTE_NAMED("a", "[::0]:1") "," ROUTE_NAMED("b", "[::]:1") "]}",
      { "routes[1].listen: duplicate listen address \"[::]:1\" (also routes[0].listen)" } },
    { "duplicate listen host name ignoring case",
      "{'routes':[" ROUTE_NAMED("a", "localhost:80") "," ROUTE_NAMED("b", "LocalHost:80") "]}",
      { "routes[1].listen: duplicate listen address \"LocalHost:80\" (also routes[0].listen)" } },
    { "duplicates name the first match",
      "{'routes':[" ROUTE_NAMED("a", "127.0.0.1:1") "," ROUTE_NAMED(
          "b", "127.0.0.2:1") "," ROUTE_NAMED("b",
                                              "127.0.0.2:1") "," ROUTE_NAMED("a",
                                                                             "127.0.0.1:1") "]}",
      { "routes[2].name: duplicate route name \"b\" (also routes[1].name)",
        "routes[2].listen: duplicate listen address \"127.0.0.2:1\" (also routes[1].listen)",
        "routes[3].name: duplicate route name \"a\" (also routes[0].name)",
        "routes[3].listen: duplicate listen address \"127.0.0.1:1\" (also routes[0].listen)" } },

    /* admin: types, the required address, loopback unless allow_remote. */
    { "admin given a boolean", TOP("'admin':true,"), { "admin: expected object, got boolean" } },
    { "admin given a string",
      TOP("'admin':'127.0.0.1:9900',"),
      { "admin: expected object, got string" } },
    { "admin without listen", WITH_ADMIN(""), { "admin.listen: required key is missing" } },
    { "admin with only allow_remote",
      WITH_ADMIN("'allow_remote':true"),
      { "admin.listen: required key is missing" } },
    { "allow_remote given a string",
      WITH_ADMIN("'listen':'127.0.0.1:9900','allow_remote':'yes'"),
      { "admin.allow_remote: expected boolean, got string" } },
    { "allow_remote given an integer",
      WITH_ADMIN("'listen':'127.0.0.1:9900','allow_remote':1"),
      { "admin.allow_remote: expected boolean, got integer" } },
    { "allow_remote given null",
      WITH_ADMIN("'listen':'127.0.0.1:9900','allow_remote':null"),
      { "admin.allow_remote: expected boolean, got null" } },
    { "admin listen without port",
      WITH_ADMIN("'listen':'127.0.0.1'"),
      { "admin.listen: expected \"host:port\", got \"127.0.0.1\"" } },
    { "admin listen given an integer",
      WITH_ADMIN("'listen':9900"),
      { "admin.listen: expected string, got integer" } },
    { "unknown admin key",
      WITH_ADMIN("'listen':'127.0.0.1:9900','port':9900"),
      { "admin.port: unknown key" } },
    { "admin keys are case-sensitive",
      WITH_ADMIN("'Listen':'127.0.0.1:9900'"),
      { "admin.Listen: unknown key", "admin.listen: required key is missing" } },
    { "duplicate admin key",
      TOP("'admin':{'listen':'127.0.0.1:9900'},'admin':{'listen':'0.0.0.0:9900'},"),
      { "admin: duplicate key" } },
    { "admin on the IPv4 wildcard",
      WITH_ADMIN("'listen':'0.0.0.0:9900'"),
      { "admin.listen: \"0.0.0.0:9900\"" NOT_LOOPBACK } },
    { "admin on the IPv6 wildcard",
      WITH_ADMIN("'listen':'[::]:9900'"),
      { "admin.listen: \"[::]:9900\"" NOT_LOOPBACK } },
    { "admin on a private address",
      WITH_ADMIN("'listen':'10.0.0.5:9900'"),
      { "admin.listen: \"10.0.0.5:9900\"" NOT_LOOPBACK } },
    { "admin just outside 127/8",
      WITH_ADMIN("'listen':'128.0.0.1:9900'"),
      { "admin.listen: \"128.0.0.1:9900\"" NOT_LOOPBACK } },
    { "admin on IPv4-mapped loopback",
      WITH_ADMIN("'listen':'[::ffff:127.0.0.1]:9900'"),
      { "admin.listen: \"[::ffff:127.0.0.1]:9900\"" NOT_LOOPBACK } },
    { "admin on a host name",
      WITH_ADMIN("'listen':'admin.example:9900'"),
      { "admin.listen: \"admin.example:9900\"" NOT_LOCALHOST } },
    { "admin on a name that starts like localhost",
      WITH_ADMIN("'listen':'localhost.example:9900'"),
      { "admin.listen: \"localhost.example:9900\"" NOT_LOCALHOST } },
    { "allow_remote false",
      WITH_ADMIN("'allow_remote':false,'listen':'0.0.0.0:9900'"),
      { "admin.listen: \"0.0.0.0:9900\"" NOT_LOOPBACK } },
    { "allow_remote of the wrong type does not allow",
      WITH_ADMIN("'listen':'0.0.0.0:9900','allow_remote':'true'"),
      { "admin.allow_remote: expected boolean, got string",
        "admin.listen: \"0.0.0.0:9900\"" NOT_LOOPBACK } },
    { "admin on a route's address",
      WITH_ADMIN("'listen':'127.0.0.1:5000'"),
      { "admin.listen: duplicate listen address \"127.0.0.1:5000\" (also routes[0].listen)" } },
    { "admin after the routes it duplicates",
      "{'routes':[" ROUTE_NAMED("a", "127.0.0.1:1") "," ROUTE_NAMED("b", "[::1]:2") "," ROUTE_NAMED(
          "c", "[::1]:2") "],'admin':{'listen':'[0::1]:2'}}",
      { "routes[2].listen: duplicate listen address \"[::1]:2\" (also routes[1].listen)",
        "admin.listen: duplicate listen address \"[0::1]:2\" (also routes[1].listen)" } },
    { "admin duplicates a host name ignoring case",
      "{'admin':{'listen':'LocalHost:80'},'routes':[" ROUTE_NAMED("a", "localhost:80") "]}",
      { "admin.listen: duplicate listen address \"LocalHost:80\" (also routes[0].listen)" } },
    { "remote admin on a route's address",
      "{'admin':{'listen':'0.0.0.0:5000','allow_remote':true},'routes':[" ROUTE_NAMED(
          "a", "0.0.0.0:5000") "]}",
      { "admin.listen: duplicate listen address \"0.0.0.0:5000\" (also routes[0].listen)" } },
    { "both admin address errors",
      "{'admin':{'listen':'0.0.0.0:5000'},'routes':[" ROUTE_NAMED("a", "0.0.0.0:5000") "]}",
      { "admin.listen: \"0.0.0.0:5000\"" NOT_LOOPBACK,
        "admin.listen: duplicate listen address \"0.0.0.0:5000\" (also routes[0].listen)" } },
    { "admin checks follow every other error",
      "{'admin':{'listen':'0.0.0.0:9900'},'workers':-1," ROUTES ",'log':{'level':'x'}}",
      { "workers: must be between 0 and 256, got -1",
        "log.level: expected one of " LEVELS ", got \"x\"",
        "admin.listen: \"0.0.0.0:9900\"" NOT_LOOPBACK } },

    /* user and group: account names, not resolved here. */
    { "user with a space", TOP("'user':'Bad Name',"), { "user: " ACCOUNT_RULE "\"Bad Name\"" } },
    { "user in capitals", TOP("'user':'Lifeline',"), { "user: " ACCOUNT_RULE "\"Lifeline\"" } },
    { "user empty", TOP("'user':'',"), { "user: " ACCOUNT_RULE "\"\"" } },
    { "user starting with a digit", TOP("'user':'1000',"), { "user: " ACCOUNT_RULE "\"1000\"" } },
    { "user starting with a dash", TOP("'user':'-x',"), { "user: " ACCOUNT_RULE "\"-x\"" } },
    { "user starting with a dot", TOP("'user':'.x',"), { "user: " ACCOUNT_RULE "\".x\"" } },
    { "user of 33 characters",
      TOP("'user':'abcdefghijklmnopqrstuvwxyz0123456',"),
      { "user: " ACCOUNT_RULE "\"abcdefghijklmnopqrstuvwxyz0123456\"" } },
    { "user with '$' inside", TOP("'user':'a$b',"), { "user: " ACCOUNT_RULE "\"a$b\"" } },
    { "user of only '$'", TOP("'user':'$',"), { "user: " ACCOUNT_RULE "\"$\"" } },
    { "user with two '$'", TOP("'user':'ab$$$',"), { "user: " ACCOUNT_RULE "\"ab$$\"" } },
    { "user with a slash", TOP("'user':'a/b',"), { "user: " ACCOUNT_RULE "\"a/b\"" } },
    { "user given an integer", TOP("'user':0,"), { "user: expected string, got integer" } },
    { "group with punctuation", TOP("'group':'wheel!',"), { "group: " ACCOUNT_RULE "\"wheel!\"" } },
    { "group given an array", TOP("'group':['a'],"), { "group: expected string, got array" } },
    { "user and group",
      TOP("'group':'Staff','user':'root ',"),
      { "group: " ACCOUNT_RULE "\"Staff\"", "user: " ACCOUNT_RULE "\"root \"" } },
    { "duplicate user key", TOP("'user':'a','user':'b',"), { "user: duplicate key" } },

    /* routes[].client admission: allow, max_connections, max_per_address. */
    { "allow empty",
      WITH_CLIENT("'allow':[]"),
      { "routes[0].client.allow: must hold at least one CIDR" } },
    { "allow given a string",
      WITH_CLIENT("'allow':'10.0.0.0/8'"),
      { "routes[0].client.allow: expected array, got string" } },
    { "allow given null",
      WITH_CLIENT("'allow':null"),
      { "routes[0].client.allow: expected array, got null" } },
    { "bad CIDRs",
      WITH_CLIENT("'allow':['10.0.0.0/8','10.0.0.0/33','::1/129','localhost','10.0.0.0/',"
                  "5,'[::1]','10.0.0.0/8 ','fe80::1%eth0',null,'10.0.0/8','::1']"),
      { "routes[0].client.allow[1]: " CIDR_RULE "\"10.0.0.0/33\"",
        "routes[0].client.allow[2]: " CIDR_RULE "\"::1/129\"",
        "routes[0].client.allow[3]: " CIDR_RULE "\"localhost\"",
        "routes[0].client.allow[4]: " CIDR_RULE "\"10.0.0.0/\"",
        "routes[0].client.allow[5]: expected string, got integer",
        "routes[0].client.allow[6]: " CIDR_RULE "\"[::1]\"",
        "routes[0].client.allow[7]: " CIDR_RULE "\"10.0.0.0/8 \"",
        "routes[0].client.allow[8]: " CIDR_RULE "\"fe80::1%eth0\"",
        "routes[0].client.allow[9]: expected string, got null",
        "routes[0].client.allow[10]: " CIDR_RULE "\"10.0.0/8\"" } },
    { "max_connections above range",
      WITH_CLIENT("'max_connections':10000001"),
      { "routes[0].client.max_connections: must be between 0 and 10000000, got 10000001" } },
    { "max_connections negative",
      WITH_CLIENT("'max_connections':-1"),
      { "routes[0].client.max_connections: must be between 0 and 10000000, got -1" } },
    { "max_connections given a fraction",
      WITH_CLIENT("'max_connections':1.5"),
      { "routes[0].client.max_connections: expected integer, got number" } },
    { "max_per_address above range",
      WITH_CLIENT("'max_per_address':10000001"),
      { "routes[0].client.max_per_address: must be between 0 and 10000000, got 10000001" } },
    { "max_per_address given a string",
      WITH_CLIENT("'max_per_address':'5'"),
      { "routes[0].client.max_per_address: expected integer, got string" } },
    { "admission keys are client keys",
      WITH_UPSTREAM(SERVERS ",'max_connections':1"),
      { "routes[0].upstream.max_connections: unknown key" } },

    /* The document root. */
    { "root is an array", "[" ROUTE "]", { "(root): expected object, got array" } },
    { "root is a string", "'routes'", { "(root): expected object, got string" } },
    { "root is a number", "42", { "(root): expected object, got integer" } },
    { "root is null", "null", { "(root): expected object, got null" } },

    /* Text that is not JSON. */
    { "empty input", "", { "invalid JSON at line 1, column 1" } },
    { "only whitespace", "   ", { "invalid JSON at line 1, column 3" } },
    { "unterminated object", "{'workers':1", { "invalid JSON at line 1, column 12" } },
    { "missing colon", "{'workers' 1}", { "invalid JSON at line 1, column 12" } },
    { "trailing garbage", "{'routes':[]} x", { "invalid JSON at line 1, column 15" } },
    { "two documents", "{}\n{}", { "invalid JSON at line 2, column 1" } },
    { "bare word", "{'workers':four}", { "invalid JSON at line 1, column 12" } },
};

static void test_bad_configs(void **state)
{
    (void)state;
    size_t n = sizeof(bad_cases) / sizeof(bad_cases[0]);
    int failed = 0;
    for (size_t i = 0; i < n; i++) {
        /* Run every case, then fail once, so one run shows every mismatch. */
        char *json = dq(bad_cases[i].json);
        struct config *cfg = NULL;
        struct config_errors errs = { 0 };
        int rc = config_parse(json, strlen(json), &cfg, &errs);
        size_t n_want = 0;
        while (n_want < 12 && bad_cases[i].errors[n_want] != NULL)
            n_want++;
        int ok = rc == -EINVAL && cfg == NULL && errs.n == n_want;
        for (size_t j = 0; ok && j < n_want; j++)
            ok = strcmp(errs.msgs[j], bad_cases[i].errors[j]) == 0;
        if (!ok) {
            failed++;
            fprintf(stderr, "case \"%s\" (%s): rc %d\n", bad_cases[i].label, json, rc);
            for (size_t j = 0; j < n_want; j++)
                fprintf(stderr, "  want: %s\n", bad_cases[i].errors[j]);
            dump_errors(bad_cases[i].label, &errs);
        }
        config_errors_free(&errs);
        config_free(cfg);
        free(json);
    }
    assert_true(n >= 30);
    assert_int_equal(failed, 0);
}

static void test_server_count_bounds(void **state)
{
    (void)state;
    /* 64 servers are fine, 65 are one too many. */
    char json[8192];
    for (int count = 64; count <= 65; count++) {
        size_t o = (size_t)snprintf(json, sizeof(json),
                                    "{'routes':[{'name':'r','listen':'127.0.0.1:1',"
                                    "'upstream':{'servers':[");
        for (int i = 0; i < count; i++)
            o += (size_t)snprintf(json + o, sizeof(json) - o, "%s'10.0.%d.%d:%d'", i ? "," : "",
                                  i / 250, i % 250 + 1, 1000 + i);
        snprintf(json + o, sizeof(json) - o, "]}}]}");
        if (count == 64) {
            struct config *cfg = expect_ok(json);
            assert_int_equal(cfg->routes[0].upstream.n_servers, 64);
            assert_int_equal(cfg->routes[0].upstream.servers[63].port, 1063);
            assert_string_equal(cfg->routes[0].upstream.servers[63].host, "10.0.0.64");
            config_free(cfg);
        } else {
            const char *want[] = { "routes[0].upstream.servers: must hold at most 64 servers",
                                   NULL };
            expect_errors("65 servers", json, want);
        }
    }
}

static void test_long_value_is_cut(void **state)
{
    (void)state;
    char name[301];
    memset(name, 'x', 300);
    name[300] = '\0';
    char json[1024];
    snprintf(json, sizeof(json), "{'routes':[{'name':'%s','listen':'127.0.0.1:1'," UPSTREAM "}]}",
             name);
    char want0[512];
    snprintf(want0, sizeof(want0), "routes[0].name: " NAME_RULE "\"%.199s...\"", name);
    const char *want[] = { want0, NULL };
    expect_errors("long name", json, want);
}

/* routes[].client and the close policies of routes[].upstream, untouched. */
static void assert_client_defaults(const struct route_config *r)
{
    assert_int_equal(r->client.identity, IDENTITY_ADDRESS_PORT);
    assert_int_equal(r->client.on_duplicate, DUPLICATE_REPLACE);
    assert_int_equal(r->client.close, CLOSE_RST);
    assert_int_equal(r->client.heartbeat.silence_ms, 0);
    assert_int_equal(r->client.heartbeat.keepalive_idle_ms, 10000);
    assert_int_equal(r->client.heartbeat.keepalive_interval_ms, 2000);
    assert_int_equal(r->client.heartbeat.keepalive_count, 3);
    assert_int_equal(r->client.heartbeat.user_timeout_ms, 20000);
    assert_null(r->client.allow);
    assert_int_equal(r->client.n_allow, 0);
    assert_int_equal(r->client.max_connections, 0);
    assert_int_equal(r->client.max_per_address, 0);
    assert_int_equal(r->upstream.close, CLOSE_FIN);
    assert_int_equal(r->upstream.on_close, ON_CLOSE_CLOSE_CLIENT);
}

static void test_minimal_defaults(void **state)
{
    (void)state;
    struct config *cfg = expect_ok(ONE_ROUTE(ROUTE));
    assert_int_equal(cfg->workers, 0);
    assert_int_equal(cfg->log_level, LOG_INFO);
    assert_int_equal(cfg->log_format, LOG_FORMAT_TEXT);
    assert_int_equal(cfg->drain_timeout_ms, 10000);
    assert_int_equal(cfg->buffer_total_bytes, 16 * 1024 * 1024);
    assert_int_equal(cfg->routes[0].dual_stack, 0);
    assert_int_equal(cfg->routes[0].upstream.retry_backoff_max_ms, 30000);
    assert_int_equal(cfg->admin.enabled, 0);
    assert_int_equal(cfg->admin.allow_remote, 0);
    assert_string_equal(cfg->admin.listen.host, "");
    assert_string_equal(cfg->user, "");
    assert_string_equal(cfg->group, "");
    assert_int_equal(cfg->n_routes, 1);
    const struct route_config *r = &cfg->routes[0];
    assert_string_equal(r->name, "r");
    assert_string_equal(r->listen.host, "127.0.0.1");
    assert_int_equal(r->listen.port, 5000);
    assert_int_equal(r->listen.numeric, 1);
    assert_int_equal(r->listen.sa.ss_family, AF_INET);
    assert_int_equal(r->buffer_bytes, 1048576);
    assert_int_equal(r->upstream.n_servers, 1);
    assert_string_equal(r->upstream.servers[0].host, "127.0.0.1");
    assert_int_equal(r->upstream.servers[0].port, 6000);
    assert_int_equal(r->upstream.source.addr.ss_family, AF_UNSPEC);
    assert_int_equal(r->upstream.connect_timeout_ms, 3000);
    assert_int_equal(r->upstream.retries, 3);
    assert_int_equal(r->upstream.retry_backoff_ms, 200);
    assert_client_defaults(r);
    /* The default keepalive times are whole seconds: nothing to note. */
    assert_int_equal(cfg->notes.n, 0);
    config_free(cfg);

    /* Empty nested objects also take every default. */
    cfg = expect_ok("{'log':{},'shutdown':{}," ROUTES "}");
    assert_int_equal(cfg->log_level, LOG_INFO);
    assert_int_equal(cfg->log_format, LOG_FORMAT_TEXT);
    assert_int_equal(cfg->drain_timeout_ms, 10000);
    config_free(cfg);

    cfg = expect_ok(WITH_CLIENT(""));
    assert_client_defaults(&cfg->routes[0]);
    config_free(cfg);
    cfg = expect_ok(WITH_HEARTBEAT(""));
    assert_client_defaults(&cfg->routes[0]);
    config_free(cfg);

    /* One key set leaves its neighbours at their defaults. */
    cfg = expect_ok(WITH_HEARTBEAT("'keepalive_count':9"));
    const struct heartbeat_config *hb = &cfg->routes[0].client.heartbeat;
    assert_int_equal(hb->keepalive_count, 9);
    assert_int_equal(hb->silence_ms, 0);
    assert_int_equal(hb->keepalive_idle_ms, 10000);
    assert_int_equal(hb->keepalive_interval_ms, 2000);
    assert_int_equal(hb->user_timeout_ms, 20000);
    assert_int_equal(cfg->routes[0].client.identity, IDENTITY_ADDRESS_PORT);
    config_free(cfg);
}

static const char full_config[] =
    "{\n"
    "  'workers': 8,\n"
    "  'buffer_total_bytes': 4294967295,\n"
    "  'log': { 'level': 'debug', 'format': 'json' },\n"
    "  'shutdown': { 'drain_timeout_ms': 0 },\n"
    "  'admin': { 'listen': '[::1]:9900', 'allow_remote': false },\n"
    "  'user': 'lifeline',\n"
    "  'group': 'nogroup',\n"
    "  'routes': [\n"
    "    {\n"
    "      'name': 'legacy',\n"
    "      'listen': '0.0.0.0:5000',\n"
    "      'buffer_bytes': 1024,\n"
    "      'client': {\n"
    "        'identity': 'address',\n"
    "        'on_duplicate': 'reject',\n"
    "        'close': 'fin',\n"
    "        'allow': ['10.0.0.0/8', '::1/128', '192.168.1.7', '172.16.5.4/12'],\n"
    "        'max_connections': 10000000,\n"
    "        'max_per_address': 1,\n"
    "        'heartbeat': {\n"
    "          'silence_ms': 30000,\n"
    "          'keepalive_idle_ms': 0,\n"
    "          'keepalive_interval_ms': 1,\n"
    "          'keepalive_count': 1,\n"
    "          'user_timeout_ms': 0\n"
    "        }\n"
    "      },\n"
    "      'upstream': {\n"
    "        'servers': ['127.0.0.1:6000', 'backup.example:6001', '192.0.2.7:6002'],\n"
    "        'source_address': '192.0.2.10',\n"
    "        'connect_timeout_ms': 600000,\n"
    "        'retries': 0,\n"
    "        'retry_backoff_ms': 600000,\n"
    "        'retry_backoff_max_ms': 3600000,\n"
    "        'close': 'rst',\n"
    "        'on_close': 'reconnect'\n"
    "      }\n"
    "    },\n"
    "    {\n"
    "      'name': 'Next_1.b-2',\n"
    "      'listen': '[::1]:5001',\n"
    "      'buffer_bytes': 67108864,\n"
    "      'upstream': {\n"
    "        'servers': ['db.internal:7000'],\n"
    "        'source_address': '2001:db8::1',\n"
    "        'connect_timeout_ms': 1,\n"
    "        'retries': 100,\n"
    "        'retry_backoff_ms': 0,\n"
    "        'on_close': 'reconnect',\n"
    "        'close': 'rst'\n"
    "      },\n"
    "      'client': {\n"
    "        'heartbeat': {\n"
    "          'user_timeout_ms': 86400000,\n"
    "          'keepalive_count': 127,\n"
    "          'keepalive_interval_ms': 32767000,\n"
    "          'keepalive_idle_ms': 32767000,\n"
    "          'silence_ms': 86400000\n"
    "        },\n"
    "        'close': 'fin',\n"
    "        'max_per_address': 10000000,\n"
    "        'allow': ['::/0'],\n"
    "        'on_duplicate': 'allow',\n"
    "        'max_connections': 0,\n"
    "        'identity': 'none'\n"
    "      }\n"
    "    }\n"
    "  ]\n"
    "}\n";

static void assert_cidr(const struct cidr *c, int family, const char *addr, unsigned prefix)
{
    char text[INET6_ADDRSTRLEN];
    assert_int_equal(c->family, family);
    assert_non_null(inet_ntop(family, c->addr, text, sizeof(text)));
    assert_string_equal(text, addr);
    assert_int_equal(c->prefix, prefix);
}

static void test_full_config(void **state)
{
    (void)state;
    struct config *cfg = expect_ok(full_config);
    char buf[ADDR_STR_MAX];
    assert_int_equal(cfg->workers, 8);
    assert_int_equal(cfg->buffer_total_bytes, 4294967295u);
    assert_int_equal(cfg->log_level, LOG_DEBUG);
    assert_int_equal(cfg->log_format, LOG_FORMAT_JSON);
    assert_int_equal(cfg->drain_timeout_ms, 0);
    assert_int_equal(cfg->admin.enabled, 1);
    assert_int_equal(cfg->admin.allow_remote, 0);
    assert_string_equal(cfg->admin.listen.host, "::1");
    assert_int_equal(cfg->admin.listen.port, 9900);
    assert_int_equal(cfg->admin.listen.sa.ss_family, AF_INET6);
    assert_string_equal(cfg->user, "lifeline");
    assert_string_equal(cfg->group, "nogroup");
    assert_int_equal(cfg->n_routes, 2);

    const struct route_config *r = &cfg->routes[0];
    assert_string_equal(r->name, "legacy");
    assert_string_equal(addr_format((const struct sockaddr *)&r->listen.sa, buf, sizeof(buf)),
                        "0.0.0.0:5000");
    assert_int_equal(r->buffer_bytes, 1024);
    const struct upstream_config *u = &r->upstream;
    assert_int_equal(u->n_servers, 3);
    assert_string_equal(u->servers[0].host, "127.0.0.1");
    assert_int_equal(u->servers[0].numeric, 1);
    assert_string_equal(u->servers[1].host, "backup.example");
    assert_int_equal(u->servers[1].port, 6001);
    assert_int_equal(u->servers[1].numeric, 0);
    assert_string_equal(u->servers[2].host, "192.0.2.7");
    assert_int_equal(u->servers[2].numeric, 1);
    assert_string_equal(addr_format((const struct sockaddr *)&u->servers[2].sa, buf, sizeof(buf)),
                        "192.0.2.7:6002");
    assert_int_equal(u->source.addr.ss_family, AF_INET);
    assert_string_equal(addr_format((const struct sockaddr *)&u->source.addr, buf, sizeof(buf)),
                        "192.0.2.10:0");
    assert_int_equal(u->connect_timeout_ms, 600000);
    assert_int_equal(u->retries, 0);
    assert_int_equal(u->retry_backoff_ms, 600000);
    assert_int_equal(u->retry_backoff_max_ms, 3600000);
    assert_int_equal(u->close, CLOSE_RST);
    assert_int_equal(u->on_close, ON_CLOSE_RECONNECT);
    const struct client_config *cl = &r->client;
    assert_int_equal(cl->identity, IDENTITY_ADDRESS);
    assert_int_equal(cl->on_duplicate, DUPLICATE_REJECT);
    assert_int_equal(cl->close, CLOSE_FIN);
    assert_int_equal(cl->heartbeat.silence_ms, 30000);
    assert_int_equal(cl->heartbeat.keepalive_idle_ms, 0);
    assert_int_equal(cl->heartbeat.keepalive_interval_ms, 1);
    assert_int_equal(cl->heartbeat.keepalive_count, 1);
    assert_int_equal(cl->heartbeat.user_timeout_ms, 0);
    assert_int_equal(cl->n_allow, 4);
    assert_cidr(&cl->allow[0], AF_INET, "10.0.0.0", 8);
    assert_cidr(&cl->allow[1], AF_INET6, "::1", 128);
    assert_cidr(&cl->allow[2], AF_INET, "192.168.1.7", 32);
    assert_cidr(&cl->allow[3], AF_INET, "172.16.0.0", 12); /* host bits masked off */
    assert_int_equal(cl->max_connections, 10000000);
    assert_int_equal(cl->max_per_address, 1);

    r = &cfg->routes[1];
    assert_string_equal(r->name, "Next_1.b-2");
    assert_string_equal(r->listen.host, "::1");
    assert_int_equal(r->listen.port, 5001);
    assert_int_equal(r->listen.numeric, 1);
    assert_int_equal(r->listen.sa.ss_family, AF_INET6);
    assert_int_equal(addr_port((const struct sockaddr *)&r->listen.sa), 5001);
    assert_int_equal(r->buffer_bytes, 67108864);
    u = &r->upstream;
    assert_int_equal(u->n_servers, 1);
    assert_string_equal(u->servers[0].host, "db.internal");
    assert_int_equal(u->servers[0].port, 7000);
    assert_int_equal(u->source.addr.ss_family, AF_INET6);
    assert_string_equal(addr_format((const struct sockaddr *)&u->source.addr, buf, sizeof(buf)),
                        "[2001:db8::1]:0");
    assert_int_equal(u->connect_timeout_ms, 1);
    assert_int_equal(u->retries, 100);
    assert_int_equal(u->retry_backoff_ms, 0);
    assert_int_equal(u->retry_backoff_max_ms, 30000); /* the default */
    assert_int_equal(u->close, CLOSE_RST);
    assert_int_equal(u->on_close, ON_CLOSE_RECONNECT);
    cl = &r->client;
    assert_int_equal(cl->identity, IDENTITY_NONE);
    assert_int_equal(cl->on_duplicate, DUPLICATE_ALLOW);
    assert_int_equal(cl->close, CLOSE_FIN);
    assert_int_equal(cl->heartbeat.silence_ms, 86400000);
    assert_int_equal(cl->heartbeat.keepalive_idle_ms, 32767000);
    assert_int_equal(cl->heartbeat.keepalive_interval_ms, 32767000);
    assert_int_equal(cl->heartbeat.keepalive_count, 127);
    assert_int_equal(cl->heartbeat.user_timeout_ms, 86400000);
    assert_int_equal(cl->n_allow, 1);
    assert_cidr(&cl->allow[0], AF_INET6, "::", 0);
    assert_int_equal(cl->max_connections, 0);
    assert_int_equal(cl->max_per_address, 10000000);

    /* Keepalive is off on routes[0] (its 1 ms interval is not used), and
     * routes[1] uses whole seconds. */
    assert_int_equal(cfg->notes.n, 0);
    config_free(cfg);
}

/* Parses a valid config and asserts its exact, complete list of notes. */
static void expect_notes(const char *json_sq, const char *const *want)
{
    struct config *cfg = expect_ok(json_sq);
    size_t n_want = 0;
    while (want[n_want] != NULL)
        n_want++;
    int ok = cfg->notes.n == n_want;
    for (size_t i = 0; ok && i < n_want; i++)
        ok = strcmp(cfg->notes.msgs[i], want[i]) == 0;
    if (!ok) {
        fprintf(stderr, "notes of %s\n", json_sq);
        for (size_t i = 0; i < n_want; i++)
            fprintf(stderr, "  want: %s\n", want[i]);
        dump_errors("notes", &cfg->notes);
    }
    config_free(cfg);
    assert_true(ok);
}

#define ROUNDED " (the kernel counts keepalive time in whole seconds)"

/* Keepalive times the kernel will round up are noted, not refused. */
static void test_notes(void **state)
{
    (void)state;
    const char *idle[] = { HB "keepalive_idle_ms: 1500 ms is rounded up to 2 s" ROUNDED, NULL };
    expect_notes(WITH_HEARTBEAT("'keepalive_idle_ms':1500"), idle);

    const char *none[] = { NULL };
    expect_notes(WITH_HEARTBEAT("'keepalive_idle_ms':3000,'keepalive_interval_ms':1000"), none);
    expect_notes(WITH_HEARTBEAT("'keepalive_idle_ms':32767000,'keepalive_interval_ms':32767000"),
                 none);
    /* Keepalive off: its interval does not matter. */
    expect_notes(WITH_HEARTBEAT("'keepalive_idle_ms':0,'keepalive_interval_ms':1500"), none);
    /* Silence and the user timeout are kept to the millisecond. */
    expect_notes(WITH_HEARTBEAT("'silence_ms':1500,'user_timeout_ms':1501"), none);

    /* "client" behind a dual-stack listener with servers of one family. */
    const char *dual[] = { "routes[0].upstream.source_address: \"client\" with dual_stack: IPv4 "
                           "clients cannot reach the IPv6 servers from their own addresses and "
                           "will fail to connect",
                           NULL };
    expect_notes("{'routes':[{'name':'r','listen':'[::]:5000','dual_stack':true,'upstream':{"
                 "'servers':['[2001:db8::2]:6000'],'source_address':'client'}}]}",
                 dual);
    expect_notes("{'routes':[{'name':'r','listen':'[::]:5000','dual_stack':true,'upstream':{"
                 "'servers':['db.example:6000'],'source_address':'client'}}]}",
                 none);
    const char *loop[] = { "routes[0].upstream.servers[0]: a loopback server, with source_address "
                           "\"client\": only clients on this host can reach it, others will fail "
                           "to connect (\"127.0.0.1:6000\")",
                           NULL };
    expect_notes("{'routes':[{'name':'r','listen':'0.0.0.0:5000','upstream':{"
                 "'servers':['127.0.0.1:6000'],'source_address':'client'}}]}",
                 loop);

    const char *interval[] = { HB "keepalive_interval_ms: 1500 ms is rounded up to 2 s" ROUNDED,
                               NULL };
    expect_notes(WITH_HEARTBEAT("'keepalive_interval_ms':1500"), interval);

    const char *both[] = { HB "keepalive_idle_ms: 1 ms is rounded up to 1 s" ROUNDED,
                           HB "keepalive_interval_ms: 32766001 ms is rounded up to 32767 s" ROUNDED,
                           NULL };
    expect_notes(WITH_HEARTBEAT("'keepalive_interval_ms':32766001,'keepalive_idle_ms':1"), both);

    /* Each route is named; routes without anything to note add nothing. */
    const char *routes[] = {
        "routes[0].client.heartbeat.keepalive_idle_ms: 10001 ms is rounded up to 11 s" ROUNDED,
        "routes[2].client.heartbeat.keepalive_interval_ms: 999 ms is rounded up to 1 s" ROUNDED,
        NULL
    };
    expect_notes("{'routes':["
                 "{'name':'a','listen':'127.0.0.1:1','client':{'heartbeat':"
                 "{'keepalive_idle_ms':10001}}," UPSTREAM "},"
                 "{'name':'b','listen':'127.0.0.1:2','client':{'heartbeat':"
                 "{'keepalive_idle_ms':0,'keepalive_interval_ms':999}}," UPSTREAM "},"
                 "{'name':'c','listen':'127.0.0.1:3','client':{'heartbeat':"
                 "{'keepalive_interval_ms':999}}," UPSTREAM "}"
                 "]}",
                 routes);

    /* A config with errors has no notes to give: only the errors. */
    const char *want[] = { HB "keepalive_count: must be between 1 and 127, got 0", NULL };
    expect_errors("notes and errors",
                  WITH_HEARTBEAT("'keepalive_idle_ms':1500,'keepalive_count':0"), want);

    /* Notes come with the config even when errors are not wanted. */
    char *json = dq(WITH_HEARTBEAT("'keepalive_idle_ms':1500"));
    struct config *cfg = NULL;
    assert_int_equal(config_parse(json, strlen(json), &cfg, NULL), 0);
    assert_int_equal(cfg->notes.n, 1);
    assert_string_equal(cfg->notes.msgs[0], idle[0]);
    config_free(cfg);
    free(json);
}

/* The admin endpoint: off unless given; loopback or "localhost" unless
 * allow_remote says otherwise. */
static void count_change(const char *path, void *arg)
{
    assert_string_equal(path, "cluster");
    (*(int *)arg)++;
}

/* "cluster": off unless given; its defaults; every kind of bad value named. */
static void test_cluster(void **state)
{
    (void)state;
    struct config *cfg = expect_ok("{" ROUTES "}");
    assert_int_equal(cfg->cluster.enabled, 0);
    config_free(cfg);

    cfg = expect_ok(TOP("'cluster':{'etcd':['http://127.0.0.1:2379','https://etcd.example:2379'],"
                        "'instance':'lb-1.a_b'},"));
    assert_int_equal(cfg->cluster.enabled, 1);
    assert_int_equal(cfg->cluster.n_etcd, 2);
    assert_string_equal(cfg->cluster.etcd[0].url, "http://127.0.0.1:2379");
    assert_string_equal(cfg->cluster.etcd[1].url, "https://etcd.example:2379");
    assert_string_equal(cfg->cluster.instance, "lb-1.a_b");
    assert_string_equal(cfg->cluster.prefix, "/lifeline");
    assert_int_equal(cfg->cluster.lease_ttl_ms, 5000);
    assert_int_equal(cfg->cluster.on_unavailable, UNAVAILABLE_REFUSE);
    config_free(cfg);

    cfg = expect_ok(TOP("'cluster':{'etcd':['http://[::1]:2379'],'instance':'b','prefix':'/x/y',"
                        "'lease_ttl_ms':2000,'on_unavailable':'local'},"));
    assert_string_equal(cfg->cluster.prefix, "/x/y");
    assert_int_equal(cfg->cluster.lease_ttl_ms, 2000);
    assert_int_equal(cfg->cluster.on_unavailable, UNAVAILABLE_LOCAL);
    config_free(cfg);

    const char *bad[] = {
        "cluster.etcd[0]: expected an etcd client URL \"http://host:port\" or "
        "\"https://host:port\", got \"127.0.0.1:2379\"",
        "cluster.etcd[1]: expected an etcd client URL \"http://host:port\" or "
        "\"https://host:port\", got \"http://127.0.0.1:2379/v3\"",
        "cluster.instance: expected 1-63 letters, digits, '_', '.' or '-', got \"a b\"",
        "cluster.prefix: expected a key prefix: '/' then up to 126 characters, not ending in '/', "
        "got \"/lifeline/\"",
        "cluster.lease_ttl_ms: must be between 2000 and 600000, got 1000",
        "cluster.on_unavailable: expected one of \"refuse\", \"local\", got \"maybe\"",
        NULL,
    };
    expect_errors("bad cluster values",
                  TOP("'cluster':{'etcd':['127.0.0.1:2379','http://127.0.0.1:2379/v3'],"
                      "'instance':'a b','prefix':'/lifeline/','lease_ttl_ms':1000,"
                      "'on_unavailable':'maybe'},"),
                  bad);
    const char *missing[] = {
        "cluster.etcd: required key is missing",
        "cluster.instance: required key is missing",
        NULL,
    };
    expect_errors("an empty cluster", TOP("'cluster':{},"), missing);
    const char *empty[] = {
        "cluster.etcd: must hold at least one endpoint",
        NULL,
    };
    expect_errors("no endpoint", TOP("'cluster':{'etcd':[],'instance':'a'},"), empty);

    const char *ttl[] = { "cluster.lease_ttl_ms: etcd counts a lease in whole seconds: it lasts "
                          "3 s; lifeline fences as for 2500 ms",
                          NULL };
    expect_notes(TOP("'cluster':{'etcd':['http://127.0.0.1:2379'],'instance':'a',"
                     "'lease_ttl_ms':2500},"),
                 ttl);
    const char *none[] = { NULL };
    expect_notes(TOP("'cluster':{'etcd':['http://127.0.0.1:2379'],'instance':'a'},"), none);

    /* A reload that changes only an endpoint is reported: "cluster" needs a
     * restart as a whole. */
    struct config *a =
        expect_ok(TOP("'cluster':{'etcd':['http://127.0.0.1:2379'],'instance':'a'},"));
    struct config *b =
        expect_ok(TOP("'cluster':{'etcd':['http://127.0.0.1:2479'],'instance':'a'},"));
    struct config *c =
        expect_ok(TOP("'cluster':{'etcd':['http://127.0.0.1:2379','http://127.0.0.1:2479'],"
                      "'instance':'a'},"));
    struct config *same =
        expect_ok(TOP("'cluster':{'etcd':['http://127.0.0.1:2379'],'instance':'a'},"));
    int n = 0;
    config_restart_changes(a, b, count_change, &n);
    assert_int_equal(n, 1);
    n = 0;
    config_restart_changes(a, c, count_change, &n);
    assert_int_equal(n, 1);
    n = 0;
    config_restart_changes(a, same, count_change, &n);
    assert_int_equal(n, 0);
    config_free(a);
    config_free(b);
    config_free(c);
    config_free(same);
}

static void test_admin(void **state)
{
    (void)state;
    struct config *cfg = expect_ok(WITH_ADMIN("'listen':'127.0.0.1:9900'"));
    assert_int_equal(cfg->admin.enabled, 1);
    assert_int_equal(cfg->admin.allow_remote, 0);
    assert_string_equal(cfg->admin.listen.host, "127.0.0.1");
    assert_int_equal(cfg->admin.listen.port, 9900);
    assert_int_equal(cfg->admin.listen.numeric, 1);
    assert_int_equal(addr_port((const struct sockaddr *)&cfg->admin.listen.sa), 9900);
    config_free(cfg);

    const char *local[] = { "127.255.0.9:1", "[::1]:65535", "[0:0::1]:2", "localhost:9900",
                            "LocalHost.:9900" };
    for (size_t i = 0; i < sizeof(local) / sizeof(local[0]); i++) {
        char json[256];
        snprintf(json, sizeof(json), TOP("'admin':{'listen':'%s'},"), local[i]);
        cfg = expect_ok(json);
        assert_int_equal(cfg->admin.enabled, 1);
        config_free(cfg);
    }

    const char *remote[] = { "0.0.0.0:9900", "[::]:9900", "10.0.0.5:9900", "admin.example:9900",
                             "[::ffff:127.0.0.1]:9900" };
    for (size_t i = 0; i < sizeof(remote) / sizeof(remote[0]); i++) {
        char json[256];
        snprintf(json, sizeof(json), TOP("'admin':{'allow_remote':true,'listen':'%s'},"),
                 remote[i]);
        cfg = expect_ok(json);
        assert_int_equal(cfg->admin.enabled, 1);
        assert_int_equal(cfg->admin.allow_remote, 1);
        config_free(cfg);
    }

    /* allow_remote on a loopback address changes nothing. */
    cfg = expect_ok(WITH_ADMIN("'listen':'[::1]:9900','allow_remote':true"));
    assert_int_equal(cfg->admin.allow_remote, 1);
    config_free(cfg);
    cfg = expect_ok(WITH_ADMIN("'listen':'[::1]:9900','allow_remote':false"));
    assert_int_equal(cfg->admin.allow_remote, 0);
    config_free(cfg);

    /* Another port, or another address on a route's port, is no clash. */
    cfg = expect_ok("{'admin':{'listen':'127.0.0.1:5001'},'routes':[" ROUTE_NAMED(
        "a", "127.0.0.1:5000") "," ROUTE_NAMED("b", "[::1]:5001") "]}");
    assert_int_equal(cfg->admin.listen.port, 5001);
    config_free(cfg);
}

static void test_user_and_group(void **state)
{
    (void)state;
    struct config *cfg = expect_ok(TOP("'user':'lifeline','group':'lifeline',"));
    assert_string_equal(cfg->user, "lifeline");
    assert_string_equal(cfg->group, "lifeline");
    config_free(cfg);

    const char *names[] = { "a",
                            "_",
                            "_svc",
                            "www-data",
                            "svc.relay_1",
                            "host$",
                            "n0body-",
                            "abcdefghijklmnopqrstuvwxyz012345",
                            "abcdefghijklmnopqrstuvwxyz01234$",
                            "abcdefghijklmnopqrstuvwxyz012345$" };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char json[256];
        snprintf(json, sizeof(json), TOP("'user':'%s','group':'%s',"), names[i], names[i]);
        cfg = expect_ok(json);
        assert_string_equal(cfg->user, names[i]);
        assert_string_equal(cfg->group, names[i]);
        config_free(cfg);
    }

    /* Only the form is checked: an account that does not exist is the
     * daemon's problem, when it starts. */
    cfg = expect_ok(TOP("'user':'no_such_user_lifeline',"));
    assert_string_equal(cfg->user, "no_such_user_lifeline");
    assert_string_equal(cfg->group, "");
    config_free(cfg);
}

static void test_allow(void **state)
{
    (void)state;
    struct config *cfg = expect_ok(
        WITH_CLIENT("'allow':['10.1.2.3/8','::ffff:192.168.0.0/112','2001:db8::1/32','::1']"));
    const struct client_config *cl = &cfg->routes[0].client;
    assert_int_equal(cl->n_allow, 4);
    assert_cidr(&cl->allow[0], AF_INET, "10.0.0.0", 8);
    assert_cidr(&cl->allow[1], AF_INET, "192.168.0.0", 16);
    assert_cidr(&cl->allow[2], AF_INET6, "2001:db8::", 32);
    assert_cidr(&cl->allow[3], AF_INET6, "::1", 128);
    config_free(cfg);

    /* 1024 entries are fine, 1025 are one too many. */
    size_t cap = 1100 * 24;
    char *json = malloc(cap);
    assert_non_null(json);
    for (int count = 1024; count <= 1025; count++) {
        size_t o = (size_t)snprintf(json, cap,
                                    "{'routes':[{'name':'r','listen':'127.0.0.1:1',"
                                    "'client':{'allow':[");
        for (int i = 0; i < count; i++)
            o += (size_t)snprintf(json + o, cap - o, "%s'10.%d.%d.0/24'", i ? "," : "", i / 256,
                                  i % 256);
        snprintf(json + o, cap - o, "]}," UPSTREAM "}]}");
        if (count == 1024) {
            cfg = expect_ok(json);
            assert_int_equal(cfg->routes[0].client.n_allow, 1024);
            assert_cidr(&cfg->routes[0].client.allow[1023], AF_INET, "10.3.255.0", 24);
            config_free(cfg);
        } else {
            const char *want[] = { "routes[0].client.allow: must hold at most 1024 CIDRs", NULL };
            expect_errors("1025 CIDRs", json, want);
        }
    }
    free(json);

    /* Each route has its own list and limits. */
    cfg =
        expect_ok("{'routes':["
                  "{'name':'a','listen':'127.0.0.1:1','client':{'allow':['10.0.0.0/8'],"
                  "'max_connections':5}," UPSTREAM "},"
                  "{'name':'b','listen':'127.0.0.1:2','client':{'max_per_address':2}," UPSTREAM "}"
                  "]}");
    assert_int_equal(cfg->routes[0].client.n_allow, 1);
    assert_int_equal(cfg->routes[0].client.max_connections, 5);
    assert_int_equal(cfg->routes[0].client.max_per_address, 0);
    assert_null(cfg->routes[1].client.allow);
    assert_int_equal(cfg->routes[1].client.max_connections, 0);
    assert_int_equal(cfg->routes[1].client.max_per_address, 2);
    config_free(cfg);
}

/* The variables the substitution tests set, all unset before and after. */
static const char *const test_vars[] = {
    "LIFELINE_PORT",  "LIFELINE_T_HOST", "LIFELINE_T_EMPTY", "LIFELINE_T_LEVEL",
    "LIFELINE_T_RAW", "LIFELINE_T_NAME", "LIFELINE_T_CIDR",  "UPSTREAM_HOST",
    "UPSTREAM_PORT",  "LIFELINE_T_KEY",  "LIFELINE_T_ADMIN", "PORT",
};

static void unset_test_vars(void)
{
    for (size_t i = 0; i < sizeof(test_vars) / sizeof(test_vars[0]); i++)
        assert_int_equal(unsetenv(test_vars[i]), 0);
}

static void test_env_substitution(void **state)
{
    (void)state;
    unset_test_vars();
    assert_int_equal(setenv("LIFELINE_PORT", "5123", 1), 0);
    assert_int_equal(setenv("LIFELINE_T_HOST", "10.9.8.7", 1), 0);
    assert_int_equal(setenv("LIFELINE_T_EMPTY", "", 1), 0);
    assert_int_equal(setenv("LIFELINE_T_LEVEL", "debug", 1), 0);
    assert_int_equal(setenv("LIFELINE_T_NAME", "from-env", 1), 0);
    assert_int_equal(setenv("LIFELINE_T_CIDR", "192.168.0.0/16", 1), 0);
    assert_int_equal(setenv("UPSTREAM_PORT", "7001", 1), 0);

    struct config *cfg = expect_ok(
        "{'log':{'level':'${LIFELINE_T_LEVEL}','format':'${LIFELINE_T_UNSET_FORMAT:-json}'},"
        "'user':'svc$$','group':'${LIFELINE_T_EMPTY:-staff}',"
        "'admin':{'listen':'${LIFELINE_T_ADMIN:-127.0.0.1:9900}'},"
        "'routes':[{'name':'${LIFELINE_T_NAME}',"
        "'listen':'127.0.0.1:${LIFELINE_PORT}${LIFELINE_T_EMPTY}',"
        "'client':{'allow':['${LIFELINE_T_CIDR}','${LIFELINE_T_UNSET_CIDR:-::1}']},"
        "'upstream':{'servers':['${UPSTREAM_HOST:-127.0.0.1}:${UPSTREAM_PORT}',"
        "'${LIFELINE_T_HOST}:${LIFELINE_T_EMPTY:-1}'],"
        "'source_address':'${LIFELINE_T_HOST}'}}]}");
    assert_int_equal(cfg->log_level, LOG_DEBUG);
    assert_int_equal(cfg->log_format, LOG_FORMAT_JSON);
    /* "$$" is one "$". */
    assert_string_equal(cfg->user, "svc$");
    /* Set but empty takes the default too. */
    assert_string_equal(cfg->group, "staff");
    assert_string_equal(cfg->admin.listen.host, "127.0.0.1");
    assert_int_equal(cfg->admin.listen.port, 9900);
    const struct route_config *r = &cfg->routes[0];
    assert_string_equal(r->name, "from-env");
    assert_int_equal(r->listen.port, 5123);
    assert_int_equal(r->client.n_allow, 2);
    assert_cidr(&r->client.allow[0], AF_INET, "192.168.0.0", 16);
    assert_cidr(&r->client.allow[1], AF_INET6, "::1", 128);
    assert_int_equal(r->upstream.n_servers, 2);
    assert_string_equal(r->upstream.servers[0].host, "127.0.0.1");
    assert_int_equal(r->upstream.servers[0].port, 7001);
    assert_string_equal(r->upstream.servers[1].host, "10.9.8.7");
    assert_int_equal(r->upstream.servers[1].port, 1);
    assert_int_equal(r->upstream.source.addr.ss_family, AF_INET);
    config_free(cfg);

    /* The sidecar form with both variables set; a long value grows the string. */
    char long_host[201];
    memset(long_host, 'h', 200);
    long_host[200] = '\0';
    long_host[100] = '.';
    assert_int_equal(setenv("UPSTREAM_HOST", long_host, 1), 0);
    cfg = expect_ok(WITH_UPSTREAM("'servers':['${UPSTREAM_HOST:-127.0.0.1}:${UPSTREAM_PORT}']"));
    assert_string_equal(cfg->routes[0].upstream.servers[0].host, long_host);
    assert_int_equal(cfg->routes[0].upstream.servers[0].port, 7001);
    config_free(cfg);

    /* A '$' that starts nothing is kept. */
    cfg = expect_ok(TOP("'user':'svc$','group':'${LIFELINE_T_UNSET_G:-wheel}$',"));
    assert_string_equal(cfg->user, "svc$");
    assert_string_equal(cfg->group, "wheel$");
    config_free(cfg);
    /* The default is taken as written, up to the first '}'. */
    const char *literal[] = { "user: " ACCOUNT_RULE "\"a$$\"", "group: " ACCOUNT_RULE "\"b}\"",
                              NULL };
    expect_errors("literal default",
                  TOP("'user':'${LIFELINE_T_UNSET_U:-a$$}','group':'${LIFELINE_T_UNSET_G:-b}}',"),
                  literal);

    /* Errors quote the substituted value; a value is not scanned again. */
    assert_int_equal(setenv("LIFELINE_PORT", "http", 1), 0);
    assert_int_equal(setenv("LIFELINE_T_LEVEL", "loud", 1), 0);
    assert_int_equal(setenv("LIFELINE_T_RAW", "${LIFELINE_T_HOST}", 1), 0);
    const char *quoted[] = {
        "log.level: expected one of " LEVELS ", got \"loud\"",
        "routes[0].listen: expected \"host:port\", got \"127.0.0.1:http\"",
        "routes[0].upstream.servers[0]: expected \"host:port\", got \"${LIFELINE_T_HOST}\"", NULL
    };
    expect_errors("substituted values",
                  "{'log':{'level':'${LIFELINE_T_LEVEL}'},'routes':[{'name':'r',"
                  "'listen':'127.0.0.1:${LIFELINE_PORT}',"
                  "'upstream':{'servers':['${LIFELINE_T_RAW}']}}]}",
                  quoted);

    const char *admin[] = { "admin.listen: \"0.0.0.0:9900\"" NOT_LOOPBACK, NULL };
    expect_errors("admin default", WITH_ADMIN("'listen':'${LIFELINE_T_ADMIN:-0.0.0.0:9900}'"),
                  admin);

    /* Values that must differ are compared after substitution. */
    const char *dup[] = { "routes[1].name: duplicate route name \"from-env\" (also routes[0].name)",
                          NULL };
    expect_errors("duplicate after substitution",
                  "{'routes':[" ROUTE_NAMED("from-env", "127.0.0.1:1") "," ROUTE_NAMED(
                      "${LIFELINE_T_NAME}", "127.0.0.1:2") "]}",
                  dup);

    /* Unset without a default, unterminated, bad names: one error each, in
     * document order, and the value is not checked further. */
    assert_int_equal(unsetenv("LIFELINE_PORT"), 0);
    const char *errors[] = {
        "routes[0].listen: environment variable LIFELINE_PORT is not set",
        "routes[0].client.allow[0]: unterminated ${ in \"${LIFELINE_T_CIDR\"",
        "routes[0].client.allow[2]: " CIDR_RULE "\"192.168.0.0/16}\"",
        "routes[0].upstream.servers[0]: environment variable LIFELINE_T_UNSET_HOST is not set",
        "routes[0].upstream.servers[1]: invalid variable name in \"${1X}\"",
        "routes[0].upstream.servers[2]: invalid variable name in \"${}:1\"",
        "routes[0].upstream.servers[3]: invalid variable name in \"h:${A-B}\"",
        "routes[0].upstream.servers[4]: invalid variable name in \"${A:x}\"",
        "routes[0].upstream.servers[5]: invalid variable name in \"${ A}\"",
        "routes[0].upstream.servers[6]: unterminated ${ in \"a:${LIFELINE_T_HOST}${B\"",
        "routes[0].upstream.source_address: environment variable LIFELINE_T_UNSET_SRC is not set",
        NULL
    };
    expect_errors("substitution errors",
                  "{'routes':[{'name':'r','listen':'127.0.0.1:${LIFELINE_PORT}',"
                  "'client':{'allow':['${LIFELINE_T_CIDR','::1','${LIFELINE_T_CIDR}}']},"
                  "'upstream':{'servers':['${LIFELINE_T_UNSET_HOST}:1','${1X}','${}:1',"
                  "'h:${A-B}','${A:x}','${ A}','a:${LIFELINE_T_HOST}${B'],"
                  "'source_address':'${LIFELINE_T_UNSET_SRC}'}}]}",
                  errors);

    /* The messages as the README shows them. */
    const char *unterminated[] = { "routes[0].listen: unterminated ${ in \"${PORT\"", NULL };
    expect_errors("unterminated", ONE_ROUTE(ROUTE_NAMED("r", "${PORT")), unterminated);
    const char *unset[] = { "routes[0].listen: environment variable PORT is not set", NULL };
    expect_errors("unset", ONE_ROUTE(ROUTE_NAMED("r", "0.0.0.0:${PORT}")), unset);
    assert_int_equal(setenv("PORT", "", 1), 0);
    const char *empty[] = { "routes[0].listen: expected \"host:port\", got \"0.0.0.0:\"", NULL };
    expect_errors("set but empty", ONE_ROUTE(ROUTE_NAMED("r", "0.0.0.0:${PORT}")), empty);

    /* Only values the schema reads are substituted: keys never, and a value
     * of the wrong type or under an unknown key is reported as such. */
    assert_int_equal(setenv("LIFELINE_T_KEY", "workers", 1), 0);
    const char *keys[] = { "${LIFELINE_T_KEY}: unknown key",
                           "workers: expected integer, got string", "extra: unknown key", NULL };
    expect_errors("keys and types",
                  TOP("'${LIFELINE_T_KEY}':1,'workers':'${LIFELINE_T_UNSET_W}',"
                      "'extra':'${LIFELINE_T_UNSET_X}',"),
                  keys);

    /* A long variable name is cut in the message like any echoed value. */
    char json[1024], want0[512];
    char name[301];
    memset(name, 'V', 300);
    name[300] = '\0';
    snprintf(json, sizeof(json), TOP("'user':'${%s}',"), name);
    snprintf(want0, sizeof(want0), "user: environment variable %.200s is not set", name);
    const char *long_name[] = { want0, NULL };
    expect_errors("long name", json, long_name);

    unset_test_vars();
}

static void test_ipv6_listen(void **state)
{
    (void)state;
    struct config *cfg = expect_ok(ONE_ROUTE(ROUTE_NAMED("v6", "[::]:8443")));
    const struct hostport *l = &cfg->routes[0].listen;
    assert_string_equal(l->host, "::");
    assert_int_equal(l->port, 8443);
    assert_int_equal(l->numeric, 1);
    assert_int_equal(l->sa.ss_family, AF_INET6);
    assert_true(addr_is_any((const struct sockaddr *)&l->sa));
    config_free(cfg);

    /* The IPv4 and IPv6 wildcards on one port are two distinct sockets. */
    cfg = expect_ok("{'routes':[" ROUTE_NAMED("a", "0.0.0.0:1") "," ROUTE_NAMED(
        "b", "[::]:1") "," ROUTE_NAMED("c", "[::1]:1") "," ROUTE_NAMED("d", "[::1]:2") "]}");
    assert_int_equal(cfg->n_routes, 4);
    config_free(cfg);
}

static void test_wildcard_source_is_unset(void **state)
{
    (void)state;
    struct config *cfg = expect_ok(
        "{'routes':["
        "{'name':'a','listen':'127.0.0.1:1','upstream':{" SERVERS ",'source_address':'0.0.0.0'}},"
        "{'name':'b','listen':'127.0.0.1:2','upstream':{" SERVERS ",'source_address':'::'}},"
        "{'name':'c','listen':'127.0.0.1:3','upstream':{'servers':['[::1]:6000'],"
        "'source_address':'::1'}}"
        "]}");
    assert_int_equal(cfg->routes[0].upstream.source.addr.ss_family, AF_UNSPEC);
    assert_int_equal(cfg->routes[1].upstream.source.addr.ss_family, AF_UNSPEC);
    assert_int_equal(cfg->routes[2].upstream.source.addr.ss_family, AF_INET6);
    assert_int_equal(cfg->routes[0].upstream.source.kind, SOURCE_KERNEL);
    assert_int_equal(cfg->routes[1].upstream.source.kind, SOURCE_KERNEL);
    assert_int_equal(cfg->routes[2].upstream.source.kind, SOURCE_ADDRESS);
    assert_int_equal(cfg->routes[2].upstream.mark, 0);
    config_free(cfg);
}

/* cJSON holds numbers as doubles: an integral value is an integer however it
 * is written, anything with a fraction is a number. */
static void test_integer_vs_number(void **state)
{
    (void)state;
    struct config *cfg =
        expect_ok("{'workers':2.0,'shutdown':{'drain_timeout_ms':1e4}," ROUTES "}");
    assert_int_equal(cfg->workers, 2);
    assert_int_equal(cfg->drain_timeout_ms, 10000);
    config_free(cfg);

    cfg = expect_ok("{'workers':-0," ROUTES "}");
    assert_int_equal(cfg->workers, 0);
    config_free(cfg);

    const char *want[] = { "workers: expected integer, got number",
                           "shutdown.drain_timeout_ms: expected integer, got number", NULL };
    expect_errors("fractions", "{'workers':0.5,'shutdown':{'drain_timeout_ms':1e-3}," ROUTES "}",
                  want);

    const char *want_range[] = { "workers: must be between 0 and 256, got 100000", NULL };
    expect_errors("exponent", "{'workers':1e5," ROUTES "}", want_range);
}

static void test_route_names_are_case_sensitive(void **state)
{
    (void)state;
    struct config *cfg = expect_ok(
        "{'routes':[" ROUTE_NAMED("a", "127.0.0.1:1") "," ROUTE_NAMED("A", "127.0.0.1:2") "]}");
    assert_string_equal(cfg->routes[0].name, "a");
    assert_string_equal(cfg->routes[1].name, "A");
    config_free(cfg);

    cfg = expect_ok(ONE_ROUTE(ROUTE_NAMED(
        "012345678901234567890123456789012345678901234567890123456789012", "127.0.0.1:1")));
    assert_int_equal(strlen(cfg->routes[0].name), 63);
    config_free(cfg);
}

/* Every problem in one pass, in document order; missing required keys come
 * at the end of the object that lacks them. */
static void test_many_errors_in_one_pass(void **state)
{
    (void)state;
    const char *json =
        "{'workers':300,'log':{'level':'loud','format':'text','fmt':1},"
        "'routes':["
        "{'name':'a b','listen':'1.2.3.4','buffer_bytes':10,"
        " 'upstream':{'servers':['ok.example:1','bad','[::1]:0'],'retries':1.5,'bogus':null}},"
        "{'listen':'1.2.3.4:1','upstream':{'source_address':'nope'}},"
        "{'name':'c','listen':'1.2.3.4:1','upstream':{'servers':['1.1.1.1:1']},'name':'d'}"
        "],"
        "'shutdown':{'drain_timeout_ms':true},'extra':{}}";
    const char *want[] = {
        "workers: must be between 0 and 256, got 300",
        "log.level: expected one of " LEVELS ", got \"loud\"",
        "log.fmt: unknown key",
        "routes[0].name: " NAME_RULE "\"a b\"",
        "routes[0].listen: expected \"host:port\", got \"1.2.3.4\"",
        "routes[0].buffer_bytes: must be between 1024 and 67108864, got 10",
        "routes[0].upstream.servers[1]: expected \"host:port\", got \"bad\"",
        "routes[0].upstream.servers[2]: expected \"host:port\", got \"[::1]:0\"",
        "routes[0].upstream.retries: expected integer, got number",
        "routes[0].upstream.bogus: unknown key",
        "routes[1].upstream.source_address: expected an IP address or \"client\", got \"nope\"",
        "routes[1].upstream.servers: required key is missing",
        "routes[1].name: required key is missing",
        "routes[2].listen: duplicate listen address \"1.2.3.4:1\" (also routes[1].listen)",
        "routes[2].name: duplicate key",
        "shutdown.drain_timeout_ms: expected integer, got boolean",
        "extra: unknown key",
        NULL,
    };
    expect_errors("many", json, want);
}

static void test_invalid_json_position(void **state)
{
    (void)state;
    const char *bad_value = "{\n"
                            "  'log': {'level': 'info'},\n"
                            "  'workers': x,\n"
                            "  'routes': []\n"
                            "}\n";
    const char *want[] = { "invalid JSON at line 3, column 14", NULL };
    expect_errors("bad value", bad_value, want);

    const char *missing_comma = "{\n"
                                "  'workers': 1\n"
                                "  'routes': []\n"
                                "}\n";
    const char *want_comma[] = { "invalid JSON at line 3, column 3", NULL };
    expect_errors("missing comma", missing_comma, want_comma);

    const char *trailing = "{\n  'routes': []\n}\n\n  ]\n";
    const char *want_trailing[] = { "invalid JSON at line 5, column 3", NULL };
    expect_errors("trailing", trailing, want_trailing);

    const char *unclosed = "{\n  'routes': [\n";
    const char *want_unclosed[] = { "invalid JSON at line 2, column 14", NULL };
    expect_errors("unclosed", unclosed, want_unclosed);
}

/* The length is honoured: no NUL terminator is needed, and text after it is
 * not read. */
static void test_length_is_honoured(void **state)
{
    (void)state;
    char *json = dq(ONE_ROUTE(ROUTE));
    size_t len = strlen(json);
    char *exact = malloc(len);
    assert_non_null(exact);
    memcpy(exact, json, len);
    struct config *cfg = NULL;
    struct config_errors errs = { 0 };
    assert_int_equal(config_parse(exact, len, &cfg, &errs), 0);
    assert_int_equal(errs.n, 0);
    config_free(cfg);
    free(exact);

    /* Cut short: the text ends inside the document. */
    cfg = NULL;
    assert_int_equal(config_parse(json, len - 1, &cfg, &errs), -EINVAL);
    assert_null(cfg);
    assert_int_equal(errs.n, 1);
    /* cJSON stops at the last byte it was given. */
    char want[64];
    snprintf(want, sizeof(want), "invalid JSON at line 1, column %zu", len - 1);
    assert_string_equal(errs.msgs[0], want);
    config_errors_free(&errs);

    assert_int_equal(config_parse(NULL, 0, &cfg, &errs), -EINVAL);
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.msgs[0], "invalid JSON at line 1, column 1");
    config_errors_free(&errs);
    free(json);
}

static void test_errors_are_optional(void **state)
{
    (void)state;
    struct config *cfg = NULL;
    char *bad = dq("{'workers':-1,'routes':[]}");
    assert_int_equal(config_parse(bad, strlen(bad), &cfg, NULL), -EINVAL);
    assert_null(cfg);
    free(bad);
    char *good = dq(ONE_ROUTE(ROUTE));
    assert_int_equal(config_parse(good, strlen(good), &cfg, NULL), 0);
    assert_non_null(cfg);
    config_free(cfg);
    free(good);

    config_free(NULL);
    config_errors_free(NULL);
    struct config_errors none = { 0 };
    config_errors_free(&none);
}

static char *write_temp(const char *content)
{
    char tmpl[] = "/tmp/lifeline-test-config-XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    size_t len = strlen(content);
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    close(fd);
    char *path = strdup(tmpl);
    assert_non_null(path);
    return path;
}

static void test_load(void **state)
{
    (void)state;
    struct config *cfg = (struct config *)&cfg;
    struct config_errors errs = { 0 };

    assert_int_equal(config_load("/nonexistent/lifeline/x.json", &cfg, &errs), -ENOENT);
    assert_null(cfg);
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.msgs[0],
                        "cannot read /nonexistent/lifeline/x.json: No such file or directory");
    config_errors_free(&errs);

    assert_int_equal(config_load("/", &cfg, &errs), -EISDIR);
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.msgs[0], "cannot read /: Is a directory");
    config_errors_free(&errs);

    char *json = dq(full_config);
    char *path = write_temp(json);
    assert_int_equal(config_load(path, &cfg, &errs), 0);
    assert_int_equal(errs.n, 0);
    assert_int_equal(cfg->workers, 8);
    assert_int_equal(cfg->n_routes, 2);
    assert_string_equal(cfg->routes[1].upstream.servers[0].host, "db.internal");
    config_free(cfg);
    unlink(path);
    free(path);
    free(json);

    json = dq("{\n  'workers': 'many',\n  'routes': []\n}\n");
    path = write_temp(json);
    assert_int_equal(config_load(path, &cfg, &errs), -EINVAL);
    assert_null(cfg);
    assert_int_equal(errs.n, 2);
    assert_string_equal(errs.msgs[0], "workers: expected integer, got string");
    assert_string_equal(errs.msgs[1], "routes: must hold at least one route");
    config_errors_free(&errs);
    unlink(path);
    free(path);
    free(json);

    path = write_temp("");
    assert_int_equal(config_load(path, &cfg, &errs), -EINVAL);
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.msgs[0], "invalid JSON at line 1, column 1");
    config_errors_free(&errs);
    unlink(path);
    free(path);
}

/* A file of the source tree, found from this file's own path. */
static int source_path(char *buf, size_t len, const char *rel)
{
    const char *here = __FILE__;
    const char *tail = strstr(here, "tests/unit/test_config.c");
    if (tail == NULL || here[0] != '/')
        return -1;
    snprintf(buf, len, "%.*s%s", (int)(tail - here), here, rel);
    return 0;
}

/* The example shipped in config/ stays valid. */
static void test_shipped_example(void **state)
{
    (void)state;
    char path[1024];
    if (source_path(path, sizeof(path), "config/lifeline.json") < 0)
        skip();
    struct config *cfg = NULL;
    struct config_errors errs = { 0 };
    int rc = config_load(path, &cfg, &errs);
    if (rc != 0)
        dump_errors(path, &errs);
    assert_int_equal(rc, 0);
    assert_true(cfg->n_routes >= 1);
    config_free(cfg);
    config_errors_free(&errs);
}

/* Sets the member named by a documented path ("routes[].upstream.retries")
 * to `value` inside a valid config, creating objects on the way. */
static void set_at(cJSON *doc, const char *doc_path, cJSON *value)
{
    char segs[256];
    snprintf(segs, sizeof(segs), "%s", doc_path);
    cJSON *at = doc;
    char *save = NULL;
    for (char *seg = strtok_r(segs, ".", &save); seg != NULL; seg = strtok_r(NULL, ".", &save)) {
        size_t len = strlen(seg);
        int into_array = len > 2 && strcmp(seg + len - 2, "[]") == 0;
        if (into_array)
            seg[len - 2] = '\0';
        if (*save == '\0' && !into_array) {
            cJSON_DeleteItemFromObjectCaseSensitive(at, seg);
            cJSON_AddItemToObject(at, seg, value);
            return;
        }
        cJSON *next = cJSON_GetObjectItemCaseSensitive(at, seg);
        if (next == NULL)
            next = cJSON_AddObjectToObject(at, seg);
        assert_non_null(next);
        at = into_array ? cJSON_GetArrayItem(next, 0) : next;
        assert_non_null(at);
    }
}

/* Rules that span keys of one route: each names the key to change. */
static void test_cross_key_rules(void **state)
{
    (void)state;
    const char *backoff[] = {
        "routes[0].upstream.retry_backoff_ms: must not exceed retry_backoff_max_ms (30000), "
        "got 40000",
        NULL,
    };
    expect_errors("backoff over the default cap",
                  "{'routes':[{'name':'r','listen':'127.0.0.1:5000','upstream':{" SERVERS
                  ",'retry_backoff_ms':40000}}]}",
                  backoff);
    struct config *cfg =
        expect_ok("{'routes':[{'name':'r','listen':'127.0.0.1:5000','upstream':{" SERVERS
                  ",'retry_backoff_ms':40000,"
                  "'retry_backoff_max_ms':60000}}]}");
    assert_int_equal(cfg->routes[0].upstream.retry_backoff_max_ms, 60000);
    config_free(cfg);

    const char *family[] = {
        "routes[0].upstream.source_address: an IPv4 source cannot reach the IPv6 server "
        "servers[1] \"[::1]:6001\"",
        "routes[0].upstream.source_address: an IPv4 source cannot reach the IPv6 server "
        "servers[2] \"[::1]:6002\"",
        "routes[1].upstream.source_address: an IPv6 source cannot reach the IPv4 server "
        "servers[0] \"127.0.0.1:6000\"",
        NULL,
    };
    expect_errors("source family against literal servers",
                  "{'routes':["
                  "{'name':'a','listen':'127.0.0.1:1','upstream':{'servers':['127.0.0.1:6000',"
                  "'[::1]:6001','[::1]:6002'],'source_address':'127.0.0.1'}},"
                  "{'name':'b','listen':'127.0.0.1:2','upstream':{" SERVERS
                  ",'source_address':'::1'}}]}",
                  family);
    const char *mapped[] = {
        "routes[0].upstream.source_address: an IPv4-mapped address: write the IPv4 address "
        "itself, got \"::ffff:127.0.0.1\"",
        NULL,
    };
    expect_errors("IPv4-mapped source address",
                  "{'routes':[{'name':'a','listen':'127.0.0.1:1','upstream':{"
                  "'servers':['[::1]:6001'],'source_address':'::ffff:127.0.0.1'}}]}",
                  mapped);
    /* A host name is resolved in the source's family: it may be reachable. */
    cfg = expect_ok("{'routes':[{'name':'r','listen':'127.0.0.1:5000','upstream':{"
                    "'servers':['db.example:6000'],'source_address':'::1'}}]}");
    config_free(cfg);

    /* "client": the listen address gives the clients' family, unless the
     * listener is dual-stack (both). */
    const char *client[] = {
        "routes[0].upstream.source_address: \"client\": the clients of listen "
        "\"10.0.0.1:5000\" are IPv4 and cannot reach the IPv6 server servers[1] "
        "\"[2001:db8::2]:6001\" from their own addresses",
        "routes[1].upstream.source_address: \"client\": the clients of listen \"[::]:5001\" "
        "are IPv6 and cannot reach the IPv4 server servers[0] \"10.0.0.2:6000\" from their "
        "own addresses",
        NULL,
    };
    expect_errors("client source family against literal servers",
                  "{'routes':["
                  "{'name':'a','listen':'10.0.0.1:5000','upstream':{'servers':['10.0.0.2:6000',"
                  "'[2001:db8::2]:6001','db.example:6002'],'source_address':'client'}},"
                  "{'name':'b','listen':'[::]:5001','upstream':{'servers':['10.0.0.2:6000'],"
                  "'source_address':'client'}}]}",
                  client);
    /* A loopback server sees only loopback sources: fine for loopback
     * clients, never for outside ones. */
    const char *loopback[] = {
        "routes[0].upstream.servers[1]: a loopback server cannot be reached from client "
        "addresses (source_address \"client\"): use an address of this host, got "
        "\"127.0.0.1:6001\"",
        NULL,
    };
    expect_errors("client source to a loopback server",
                  "{'routes':["
                  "{'name':'a','listen':'10.0.0.1:5000','upstream':{'servers':['10.0.0.2:6000',"
                  "'127.0.0.1:6001'],'source_address':'client'}},"
                  "{'name':'b','listen':'127.0.0.1:5001','upstream':{'servers':['127.0.0.1:6000'],"
                  "'source_address':'client'}}]}",
                  loopback);
    cfg = expect_ok("{'routes':[{'name':'r','listen':'[::]:5000','dual_stack':true,'upstream':{"
                    "'servers':['10.0.0.2:6000','[2001:db8::2]:6001'],'source_address':'client',"
                    "'mark':4294967295}}]}");
    assert_int_equal(cfg->routes[0].upstream.source.kind, SOURCE_CLIENT);
    assert_int_equal(cfg->routes[0].upstream.source.addr.ss_family, AF_UNSPEC);
    assert_int_equal(cfg->routes[0].upstream.mark, 4294967295u);
    assert_int_equal(cfg->notes.n, 0);
    config_free(cfg);

    const char *dual[] = {
        "routes[0].dual_stack: needs the listen address \"[::]:1\" (the IPv6 wildcard), got "
        "\"0.0.0.0:1\"",
        "routes[1].dual_stack: needs the listen address \"[::]:2\" (the IPv6 wildcard), got "
        "\"[::1]:2\"",
        "routes[2].dual_stack: needs the listen address \"[::]:3\" (the IPv6 wildcard), got "
        "\"localhost:3\"",
        NULL,
    };
    expect_errors("dual_stack on something else than [::]",
                  "{'routes':["
                  "{'name':'a','listen':'0.0.0.0:1','dual_stack':true," UPSTREAM "},"
                  "{'name':'b','listen':'[::1]:2','dual_stack':true," UPSTREAM "},"
                  "{'name':'c','listen':'localhost:3','dual_stack':true," UPSTREAM "}]}",
                  dual);
    cfg =
        expect_ok("{'routes':[{'name':'r','listen':'[::]:5000','dual_stack':true," UPSTREAM "}]}");
    assert_int_equal(cfg->routes[0].dual_stack, 1);
    config_free(cfg);

    const char *total[] = {
        "buffer_total_bytes: must be between 1048576 and 4294967295, got 1048575",
        NULL,
    };
    expect_errors("buffer_total_bytes under 1 MiB", "{'buffer_total_bytes':1048575," ROUTES "}",
                  total);
}

/* Every key the parser knows, from its own tables. */
#define MAX_KEYS 128
struct key_list {
    struct {
        char path[128], type[16], def[64], allowed[256];
        int has_def, has_allowed, restart_only, documented;
    } k[MAX_KEYS];
    size_t n;
};

static void collect_key(const struct config_key_doc *d, void *arg)
{
    struct key_list *l = arg;
    assert_true(l->n < MAX_KEYS);
    snprintf(l->k[l->n].path, sizeof(l->k[l->n].path), "%s", d->path);
    snprintf(l->k[l->n].type, sizeof(l->k[l->n].type), "%s", d->type);
    l->k[l->n].has_def = d->def != NULL;
    snprintf(l->k[l->n].def, sizeof(l->k[l->n].def), "%s", d->def ? d->def : "");
    l->k[l->n].has_allowed = d->allowed != NULL;
    snprintf(l->k[l->n].allowed, sizeof(l->k[l->n].allowed), "%s", d->allowed ? d->allowed : "");
    l->k[l->n].restart_only = d->restart_only;
    l->n++;
}

/* Splits a Markdown table row "| a | b | c |" into its cells, trimmed;
 * returns how many. */
static int cells(char *line, char **out, int max)
{
    int n = 0;
    char *p = strchr(line, '|');
    while (p != NULL && n < max) {
        char *start = p + 1;
        char *end = strchr(start, '|');
        if (end == NULL)
            break;
        *end = '\0';
        while (*start == ' ')
            start++;
        char *t = end;
        while (t > start && t[-1] == ' ')
            *--t = '\0';
        out[n++] = start;
        p = end;
    }
    return n;
}

/* The README's "Configuration" table is the schema as the parser knows it:
 * every key once, with the parser's type, default and bounds (or choices);
 * each key given a value of the wrong type fails with its path; and the
 * "Needs a restart" list is the table's restart-only keys. */
static void test_documented_keys(void **state)
{
    (void)state;
    char path[1024];
    if (source_path(path, sizeof(path), "README.md") < 0)
        skip();
    static struct key_list keys;
    keys.n = 0;
    config_describe_keys(collect_key, &keys);
    assert_true(keys.n > 30);

    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[4096], restart_line[4096] = "";
    int rows = 0, bad = 0;
    int in_section = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "- **Needs a restart:**", 22) == 0)
            snprintf(restart_line, sizeof(restart_line), "%s", line);
        if (strncmp(line, "## ", 3) == 0)
            in_section = strcmp(line, "## Configuration\n") == 0;
        char *col[6];
        if (!in_section || line[0] != '|' || line[2] != '`' || cells(line, col, 6) < 5)
            continue;
        char key[256], type[64];
        if (sscanf(col[0], "`%255[^`]`", key) != 1)
            continue;
        snprintf(type, sizeof(type), "%s", col[1]);
        size_t i = 0;
        while (i < keys.n && strcmp(keys.k[i].path, key) != 0)
            i++;
        if (i == keys.n) {
            fprintf(stderr, "README documents %s, which the parser does not know\n", key);
            bad++;
            continue;
        }
        keys.k[i].documented++;
        if (strncmp(type, keys.k[i].type, strlen(keys.k[i].type)) != 0) {
            fprintf(stderr, "%s: README type \"%s\", parser %s\n", key, type, keys.k[i].type);
            bad++;
        }
        if (keys.k[i].has_def && strcmp(col[2], keys.k[i].def) != 0) {
            fprintf(stderr, "%s: README default \"%s\", parser %s\n", key, col[2], keys.k[i].def);
            bad++;
        }
        if (keys.k[i].has_allowed &&
            strncmp(col[3], keys.k[i].allowed, strlen(keys.k[i].allowed)) != 0) {
            fprintf(stderr, "%s: README allows \"%s\", parser %s\n", key, col[3],
                    keys.k[i].allowed);
            bad++;
        }

        /* The admin and cluster objects are there so that their keys can be
         * set one at a time; a boolean key is given a string, any other key
         * `true`. */
        char *base_json =
            dq("{'admin':{'listen':'127.0.0.1:9900'},"
               "'cluster':{'etcd':['http://127.0.0.1:2379'],'instance':'a'}," ROUTES "}");
        cJSON *doc = cJSON_Parse(base_json);
        free(base_json);
        assert_non_null(doc);
        int boolean = strcmp(keys.k[i].type, "boolean") == 0;
        set_at(doc, key, boolean ? cJSON_CreateString("yes") : cJSON_CreateTrue());
        char *json = cJSON_PrintUnformatted(doc);
        cJSON_Delete(doc);
        assert_non_null(json);

        char err_path[300];
        size_t o = 0;
        for (const char *k = key; *k && o + 4 < sizeof(err_path); k++) {
            if (k[0] == '[' && k[1] == ']') {
                o += (size_t)snprintf(err_path + o, sizeof(err_path) - o, "[0]");
                k++;
            } else {
                err_path[o++] = *k;
            }
        }
        err_path[o] = '\0';
        char want0[512];
        snprintf(want0, sizeof(want0), "%s: expected %s, got %s", err_path, keys.k[i].type,
                 boolean ? "string" : "boolean");
        const char *want[] = { want0, NULL };
        expect_errors(key, json, want);
        cJSON_free(json);
        rows++;
    }
    fclose(f);
    for (size_t i = 0; i < keys.n; i++) {
        if (keys.k[i].documented != 1) {
            fprintf(stderr, "%s: documented %d times\n", keys.k[i].path, keys.k[i].documented);
            bad++;
        }
        /* A top-level restart-only key is named in the list; nothing else is. */
        char quoted[140];
        snprintf(quoted, sizeof(quoted), "`%s`", keys.k[i].path);
        int top = strchr(keys.k[i].path, '.') == NULL && strchr(keys.k[i].path, '[') == NULL;
        int listed = strstr(restart_line, quoted) != NULL;
        if (listed != (top && keys.k[i].restart_only)) {
            fprintf(stderr, "%s: restart-only %d, in the README's restart list %d\n",
                    keys.k[i].path, keys.k[i].restart_only, listed);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
    assert_int_equal(rows, (int)keys.n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_server_count_bounds),
        cmocka_unit_test(test_long_value_is_cut),
        cmocka_unit_test(test_minimal_defaults),
        cmocka_unit_test(test_full_config),
        cmocka_unit_test(test_notes),
        cmocka_unit_test(test_admin),
        cmocka_unit_test(test_cluster),
        cmocka_unit_test(test_user_and_group),
        cmocka_unit_test(test_allow),
        cmocka_unit_test(test_env_substitution),
        cmocka_unit_test(test_ipv6_listen),
        cmocka_unit_test(test_wildcard_source_is_unset),
        cmocka_unit_test(test_integer_vs_number),
        cmocka_unit_test(test_route_names_are_case_sensitive),
        cmocka_unit_test(test_many_errors_in_one_pass),
        cmocka_unit_test(test_invalid_json_position),
        cmocka_unit_test(test_length_is_honoured),
        cmocka_unit_test(test_errors_are_optional),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_shipped_example),
        cmocka_unit_test(test_cross_key_rules),
        cmocka_unit_test(test_documented_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
