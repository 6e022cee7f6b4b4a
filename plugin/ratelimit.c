/*
 * ratelimit.c — token buckets per user, one per kind of inbound publish.
 *
 * A user (not a connection: every device of a user draws on the same
 * buckets) has one bucket for sends, requests, receipts and typing each.
 * A bucket holds up to rate_<kind>_burst tokens and refills at rate_<kind>
 * tokens a second; every publish of that kind takes one token, and one that
 * finds the bucket empty is refused before anything is parsed or stored:
 *   send     PUBACK 0x87 + send_failed {code rate_limited, retry_after_ms}
 *   request  {"ok":false,"error":{"code":"rate_limited",…,"retry_after_ms"}}
 *   receipt  PUBACK 0x87 + send_failed {code rate_limited, retry_after_ms}
 *   typing   dropped silently (QoS 0, fire and forget)
 * The check comes before the payload is parsed: a refusal costs a hash
 * lookup, a scan of the payload for its cmid (echoed in send_failed) and the
 * event — no parse, no transaction. So a duplicate send (a resend of a
 * stored cmid) takes a token like any other.
 *
 * Tokens are counted in thousandths so rates need no floating point. Time is
 * chat->now_ms() (tests replace it); a clock that steps back refills nothing.
 * Memory: an entry per user who published lately (~180 bytes); an entry whose
 * buckets are all full again is worth nothing and is dropped by the sweep on
 * the broker tick, so the table holds only users active in the last
 * burst/rate seconds.
 *
 * Persistent flooders. A refusal is cheap but not free: the broker still
 * reads the publish, runs this hook, publishes the event and sends the
 * PUBACK, on the one thread that serves everyone. So each connection also
 * counts its refusals in a row, per kind; a publish of that kind that finds
 * a token ends the run. A connection refused more than rate_disconnect_after
 * times in a row for one kind (default 100) is dropped without an ack for the
 * publish that crossed the line (verdict CHAT_DISCONNECT). A client that
 * waits retry_after_ms sees about one refusal per token (its in-flight window
 * at most) and never gets there; one that keeps sending regardless gets there
 * once it sends more than rate_disconnect_after publishes per token, i.e.
 * faster than rate_disconnect_after × rate_X a second (1,000 sends/s by
 * default). Only connections inside a run cost memory (~150 bytes each),
 * forgotten at their first accepted publish or when they disconnect.
 *
 * Probation. A flooder that reconnects at once would be refused another
 * rate_disconnect_after times per connection: no cheaper than never dropping
 * it. So for PROBATION_MS after a kick, a connection of that user that has
 * had nothing accepted since is dropped at its first refusal; one that got
 * something through keeps the usual allowance (and is remembered as such
 * while the probation lasts).
 */
#define _GNU_SOURCE   /* memmem */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uthash.h>

#include "chat.h"

#define MILLI 1000u
#define SWEEP_EVERY_MS 1000u

struct rate_user {
	char user[CHAT_ID_MAX + 1];
	uint64_t last_ms;                    /* when the buckets were last refilled */
	uint64_t milli[CHAT_RATE_KINDS];     /* tokens × 1000 */
	UT_hash_handle hh;
};

struct rate_conn {
	const void *conn;                     /* the broker's connection (key) */
	char user[CHAT_ID_MAX + 1];
	unsigned refused[CHAT_RATE_KINDS];    /* refusals in a row, by kind */
	bool accepted;                        /* had a publish accepted while its user was on probation */
	UT_hash_handle hh;
};

#define KICK_LOG_EVERY_MS 60000u
#define PROBATION_MS 60000u

struct rate_kick_log {
	char user[CHAT_ID_MAX + 1];
	uint64_t kicked_ms;                   /* when a connection of this user was last dropped */
	uint64_t logged_ms;                   /* when a kick of this user was last logged (0: never) */
	unsigned unlogged;                    /* kicks since, not logged */
	UT_hash_handle hh;
};

static const char *const kind_names[CHAT_RATE_KINDS] = {
	[CHAT_RATE_SEND] = "send",
	[CHAT_RATE_REQUEST] = "request",
	[CHAT_RATE_RECEIPT] = "receipt",
	[CHAT_RATE_TYPING] = "typing",
};

const char *ratelimit__kind_name(enum chat_rate kind)
{
	return kind_names[kind];
}

/* ====================================================================== *
 * Bucket arithmetic
 * ====================================================================== */

uint64_t ratelimit__refill(uint64_t milli, unsigned rate, unsigned burst, uint64_t elapsed_ms)
{
	uint64_t cap = (uint64_t)burst * MILLI;
	/* rate tokens/s is rate milli-tokens per ms */
	if(milli >= cap) return cap;
	if(elapsed_ms >= (cap - milli) / rate + 1) return cap;
	milli += elapsed_ms * rate;
	return milli > cap ? cap : milli;
}

bool ratelimit__take_one(uint64_t *milli, unsigned rate, uint32_t *retry_ms)
{
	if(*milli >= MILLI){
		*milli -= MILLI;
		return true;
	}
	*retry_ms = (uint32_t)((MILLI - *milli + rate - 1) / rate);
	return false;
}

/* ====================================================================== *
 * Per user
 * ====================================================================== */

/* Brings every bucket of u to now. */
static void user_refill(const struct chat_config *cfg, struct rate_user *u, uint64_t now)
{
	uint64_t elapsed = now > u->last_ms ? now - u->last_ms : 0;
	for(int k = 0; k < CHAT_RATE_KINDS; k++){
		if(cfg->rate[k]) u->milli[k] = ratelimit__refill(u->milli[k], cfg->rate[k], cfg->rate_burst[k], elapsed);
	}
	if(now > u->last_ms) u->last_ms = now;
}

static bool user_full(const struct chat_config *cfg, const struct rate_user *u)
{
	for(int k = 0; k < CHAT_RATE_KINDS; k++){
		if(cfg->rate[k] && u->milli[k] < (uint64_t)cfg->rate_burst[k] * MILLI) return false;
	}
	return true;
}

/* The entry of user, made with full buckets if there is none; NULL when
 * out of memory (the caller then lets the publish through). */
static struct rate_user *user_get(struct chat *chat, const char *user, uint64_t now)
{
	struct rate_user *u;
	size_t len = strlen(user);

	HASH_FIND(hh, chat->rate_users, user, len, u);
	if(u){
		user_refill(&chat->cfg, u, now);
		return u;
	}
	if(len > CHAT_ID_MAX || !(u = calloc(1, sizeof(*u)))) return NULL;
	memcpy(u->user, user, len + 1);
	u->last_ms = now;
	for(int k = 0; k < CHAT_RATE_KINDS; k++){
		u->milli[k] = (uint64_t)chat->cfg.rate_burst[k] * MILLI;
	}
	HASH_ADD(hh, chat->rate_users, user, len, u);
	return u;
}

/* ====================================================================== *
 * Per connection: runs of refusals
 * ====================================================================== */

static struct rate_conn *conn_find(struct chat *chat, const void *conn)
{
	struct rate_conn *c = NULL;
	if(chat->rate_conns) HASH_FIND_PTR(chat->rate_conns, &conn, c);
	return c;
}

static void conn_drop(struct chat *chat, struct rate_conn *c)
{
	HASH_DEL(chat->rate_conns, c);
	free(c);
}

static struct rate_conn *conn_get(struct chat *chat, const void *conn, const char *user)
{
	struct rate_conn *c = conn_find(chat, conn);

	if(c || !(c = calloc(1, sizeof(*c)))) return c;
	c->conn = conn;
	snprintf(c->user, sizeof(c->user), "%s", user);
	HASH_ADD_PTR(chat->rate_conns, conn, c);
	return c;
}

/* Was a connection of user dropped in the last PROBATION_MS? */
static bool on_probation(struct chat *chat, const char *user, uint64_t now)
{
	struct rate_kick_log *l = NULL;

	if(!chat->rate_kick_logs) return false;
	HASH_FIND_STR(chat->rate_kick_logs, user, l);
	return l && now >= l->kicked_ms && now - l->kicked_ms < PROBATION_MS;
}

/* A publish of kind from conn took a token: its run of that kind ends. On
 * probation the connection is remembered as one that got something through. */
static void conn_accepted(struct chat *chat, const void *conn, const char *user, enum chat_rate kind, uint64_t now)
{
	struct rate_conn *c = conn_find(chat, conn);
	bool probation = on_probation(chat, user, now);

	if(probation && chat->cfg.rate_disconnect_after && conn && (c = conn_get(chat, conn, user))) c->accepted = true;
	if(!c) return;
	c->refused[kind] = 0;
	if(probation && c->accepted) return;   /* kept while the probation lasts */
	for(int k = 0; k < CHAT_RATE_KINDS; k++){
		if(c->refused[k]) return;
	}
	conn_drop(chat, c);
}

/* A publish of kind from conn was refused. Out of memory: not counted. */
static void conn_refused(struct chat *chat, const void *conn, const char *user, enum chat_rate kind)
{
	struct rate_conn *c;

	if(!chat->cfg.rate_disconnect_after || !conn || !(c = conn_get(chat, conn, user))) return;
	if(c->refused[kind] < UINT32_MAX) c->refused[kind]++;
}

/* The longest run of c, and its kind. */
static unsigned conn_run(const struct rate_conn *c, enum chat_rate *kind)
{
	unsigned most = 0;
	for(int k = 0; k < CHAT_RATE_KINDS; k++){
		if(c->refused[k] > most){
			most = c->refused[k];
			*kind = (enum chat_rate)k;
		}
	}
	return most;
}

bool ratelimit__kick(struct chat *chat, const struct chat_client *cl)
{
	struct rate_conn *c = conn_find(chat, cl->conn);
	struct rate_kick_log *l;
	enum chat_rate kind = CHAT_RATE_SEND;
	uint64_t now = chat->now_ms();
	unsigned limit = chat->cfg.rate_disconnect_after;

	if(!c || !limit) return false;
	/* a user whose connection was dropped lately: a connection of theirs
	 * that never got anything through goes at its first refusal (a flooder
	 * reconnecting at once), one that did has the usual allowance */
	if(!c->accepted && on_probation(chat, c->user, now)) limit = 0;
	if(conn_run(c, &kind) <= limit) return false;
	chat->stats.kicked++;
	HASH_FIND_STR(chat->rate_kick_logs, c->user, l);
	if(!l && (l = calloc(1, sizeof(*l)))){
		memcpy(l->user, c->user, sizeof(l->user));
		HASH_ADD_STR(chat->rate_kick_logs, user, l);
	}
	if(l) l->kicked_ms = now;
	return true;
}

bool ratelimit__kick_note(struct chat *chat, const struct chat_client *cl, char *line, size_t size)
{
	struct rate_conn *c = conn_find(chat, cl->conn);
	struct rate_kick_log *l;
	enum chat_rate kind = CHAT_RATE_SEND;
	uint64_t now = chat->now_ms();
	unsigned run, unlogged;
	bool probation = false;
	int n;

	if(!c) return false;
	run = conn_run(c, &kind);
	if(!c->accepted && run <= chat->cfg.rate_disconnect_after) probation = true;
	HASH_FIND_STR(chat->rate_kick_logs, c->user, l);
	if(!l) return false;   /* out of memory in ratelimit__kick */
	if(l->logged_ms && now >= l->logged_ms && now - l->logged_ms < KICK_LOG_EVERY_MS){
		l->unlogged++;
		return false;
	}
	unlogged = l->unlogged;
	l->logged_ms = now;
	l->unlogged = 0;
	n = snprintf(line, size, "disconnected client '%.64s' of user '%s': %u %s publishes refused in a row "
			"(rate_limited; plugin_opt_rate_disconnect_after %u%s)", cl->client_id ? cl->client_id : "", c->user, run,
			kind_names[kind], chat->cfg.rate_disconnect_after,
			probation ? "; a connection of this user was dropped in the last minute and this one got nothing through" : "");
	if(unlogged && n > 0 && (size_t)n < size){
		snprintf(line + n, size - (size_t)n, "; %u more kick(s) of this user in the last minute not logged", unlogged);
	}
	return true;
}

void ratelimit__forget(struct chat *chat, const void *conn)
{
	struct rate_conn *c = conn_find(chat, conn);
	if(c) conn_drop(chat, c);
}

/* ====================================================================== *
 * Taking a token
 * ====================================================================== */

enum chat_err ratelimit__take(struct chat *chat, const struct chat_client *cl, enum chat_rate kind, struct chat_error *e)
{
	unsigned rate = chat->cfg.rate[kind];
	struct rate_user *u;
	uint32_t retry = 0;

	if(!rate || !cl->username) return CHAT_E_OK;
	u = user_get(chat, cl->username, chat->now_ms());
	if(!u || ratelimit__take_one(&u->milli[kind], rate, &retry)){
		if(chat->rate_conns || chat->rate_kick_logs) conn_accepted(chat, cl->conn, cl->username, kind, chat->now_ms());
		return CHAT_E_OK;
	}
	conn_refused(chat, cl->conn, cl->username, kind);
	chat__fail(e, CHAT_E_RATE_LIMITED, "more than %u %s publishes a second (bursts of %u); retry in %u ms",
			rate, kind_names[kind], chat->cfg.rate_burst[kind], retry);
	e->retry_after_ms = retry;
	return CHAT_E_RATE_LIMITED;
}

/* Finds the cmid of a refused send without parsing the payload (a flood
 * must stay cheap to refuse, whatever its size): the first "cmid" key
 * followed by a string with no escapes, up to CHAT_CMID_ECHO_MAX bytes of
 * UTF-8. The key cannot match inside a string value, where its quotes would
 * be escaped. Copies it into buf; false if there is none. */
static bool scan_cmid(const char *p, size_t len, char *buf)
{
	const char *end = p + len, *q = memmem(p, len, "\"cmid\"", 6), *v;

	if(!q) return false;
	for(q += 6; q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r'); q++);
	if(q == end || *q++ != ':') return false;
	for(; q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r'); q++);
	if(q == end || *q++ != '"') return false;
	for(v = q; q < end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20; q++){
		if(q - v >= CHAT_CMID_ECHO_MAX) return false;
	}
	if(q == end || *q != '"' || !json__valid_utf8((const unsigned char *)v, (size_t)(q - v))) return false;
	memcpy(buf, v, (size_t)(q - v));
	buf[q - v] = '\0';
	return true;
}

enum chat_verdict ratelimit__refuse_send(struct chat *chat, const struct chat_client *cl, const struct topic_ref *ref,
		const void *payload, size_t len, const struct chat_error *e, struct chat_outbox *out)
{
	char cmid[CHAT_CMID_ECHO_MAX + 1];
	bool found = len <= chat->cfg.max_payload && scan_cmid(payload, len, cmid);

	/* the cmid tells the client which send to retry */
	return message__refuse(chat, cl, ref, found ? cmid : NULL, e, out);
}

void ratelimit__sweep(struct chat *chat, uint64_t now)
{
	struct rate_user *u, *tmp;
	struct rate_kick_log *l, *ltmp;

	if((!chat->rate_users && !chat->rate_kick_logs) || now - chat->rate_swept_ms < SWEEP_EVERY_MS) return;
	chat->rate_swept_ms = now;
	HASH_ITER(hh, chat->rate_kick_logs, l, ltmp){
		if((now - l->logged_ms >= KICK_LOG_EVERY_MS && now - l->kicked_ms >= PROBATION_MS)
				|| now < l->logged_ms || now < l->kicked_ms){
			HASH_DEL(chat->rate_kick_logs, l);
			free(l);
		}
	}
	HASH_ITER(hh, chat->rate_users, u, tmp){
		user_refill(&chat->cfg, u, now);
		if(user_full(&chat->cfg, u)){
			HASH_DEL(chat->rate_users, u);
			free(u);
		}
	}
}

size_t ratelimit__tracked(const struct chat *chat)
{
	return HASH_COUNT(chat->rate_users);
}

void ratelimit__free(struct chat *chat)
{
	struct rate_user *u, *tmp;
	struct rate_conn *c, *ctmp;
	struct rate_kick_log *l, *ltmp;

	HASH_ITER(hh, chat->rate_users, u, tmp){
		HASH_DEL(chat->rate_users, u);
		free(u);
	}
	HASH_ITER(hh, chat->rate_conns, c, ctmp){
		conn_drop(chat, c);
	}
	HASH_ITER(hh, chat->rate_kick_logs, l, ltmp){
		HASH_DEL(chat->rate_kick_logs, l);
		free(l);
	}
}
