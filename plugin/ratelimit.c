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

enum chat_err ratelimit__take(struct chat *chat, const char *user, enum chat_rate kind, struct chat_error *e)
{
	unsigned rate = chat->cfg.rate[kind];
	struct rate_user *u;
	uint32_t retry = 0;

	if(!rate || !user) return CHAT_E_OK;
	u = user_get(chat, user, chat->now_ms());
	if(!u || ratelimit__take_one(&u->milli[kind], rate, &retry)) return CHAT_E_OK;
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

	if(!chat->rate_users || now - chat->rate_swept_ms < SWEEP_EVERY_MS) return;
	chat->rate_swept_ms = now;
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
	HASH_ITER(hh, chat->rate_users, u, tmp){
		HASH_DEL(chat->rate_users, u);
		free(u);
	}
}
