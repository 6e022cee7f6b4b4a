/*
 * stats.c — operator counters, published retained on {prefix}/stats.
 *
 * Every stats_interval_ms (from the broker tick) the plugin publishes one
 * JSON object (schema/stats.json) retained at QoS 0 on {prefix}/stats:
 * devices and users online, messages stored, requests and history requests
 * (totals since start and rates over the last interval), refusals and
 * request errors by code, the LMDB file and map use, the push outbox depth,
 * uptime and version. Only observers may read it (acl.c); nobody may write it.
 *
 * The counters are plain fields of struct chat_stats, incremented by one
 * line at each counting site (message.c, request.c); the broker calls the
 * plugin from one thread, so no atomics are needed. Messages stored reuse
 * chat->stored_msgs.
 */
#include <stdio.h>
#include <string.h>

#include "chat.h"

#ifndef CHAT_VERSION
#define CHAT_VERSION "unknown"
#endif

/* The slot of code in a by-code table (the last one takes any code beyond). */
static unsigned slot(enum chat_err code)
{
	return (unsigned)code < CHAT_STATS_CODES ? (unsigned)code : CHAT_STATS_CODES - 1;
}

void stats__refused(struct chat *chat, enum chat_err code)
{
	chat->stats.refused[slot(code)]++;
}

void stats__request_error(struct chat *chat, enum chat_err code)
{
	chat->stats.request_errors[slot(code)]++;
}

/* Events per second between two readings of a counter dt_ms apart. */
static double rate(uint64_t now_count, uint64_t then_count, uint64_t dt_ms)
{
	if(dt_ms == 0 || now_count < then_count) return 0.0;
	/* two decimals are plenty and keep the payload short */
	return (double)(uint64_t)(((double)(now_count - then_count) * 1000.0 / (double)dt_ms) * 100.0 + 0.5) / 100.0;
}

/* {"<code>": n, …} for every non-zero count; codes that share a name (the
 * store's failures) are summed. Returns the total through *total. */
static cJSON *by_code(const uint64_t counts[CHAT_STATS_CODES], uint64_t *total)
{
	cJSON *o = cJSON_CreateObject();
	*total = 0;
	if(!o) return NULL;
	for(unsigned i = 0; i < CHAT_STATS_CODES; i++){
		const char *name;
		cJSON *it;
		if(!counts[i]) continue;
		*total += counts[i];
		name = chat_err__code((enum chat_err)i);
		it = cJSON_GetObjectItemCaseSensitive(o, name);
		if(it){
			cJSON_SetNumberValue(it, it->valuedouble + (double)counts[i]);
		}else if(!cJSON_AddNumberToObject(o, name, (double)counts[i])){
			cJSON_Delete(o);
			return NULL;
		}
	}
	return o;
}

/* {"total": t, "per_s": r} */
static cJSON *counter(uint64_t total, uint64_t prev, uint64_t dt_ms)
{
	cJSON *o = cJSON_CreateObject();
	if(o && (!cJSON_AddNumberToObject(o, "total", (double)total)
				|| !cJSON_AddNumberToObject(o, "per_s", rate(total, prev, dt_ms)))){
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

/* {"total": t, "by_code": {…}} under name in parent. */
static bool add_codes(cJSON *parent, const char *name, const uint64_t counts[CHAT_STATS_CODES])
{
	uint64_t total;
	cJSON *codes = by_code(counts, &total), *o = cJSON_CreateObject();
	if(!codes || !o || !cJSON_AddNumberToObject(o, "total", (double)total)
			|| !cJSON_AddItemToObject(o, "by_code", codes)){
		cJSON_Delete(codes);
		cJSON_Delete(o);
		return false;
	}
	if(!cJSON_AddItemToObject(parent, name, o)){
		cJSON_Delete(o);
		return false;
	}
	return true;
}

static bool add_item(cJSON *parent, const char *name, cJSON *item)
{
	if(!item) return false;
	if(!cJSON_AddItemToObject(parent, name, item)){
		cJSON_Delete(item);
		return false;
	}
	return true;
}

/* The store's read cache (store.c): hits and misses since start, tables
 * cleared for being full, entries and bytes now. */
static cJSON *cache_part(struct chat *chat)
{
	struct store_cache_stats c;
	cJSON *o = cJSON_CreateObject();

	if(!o) return NULL;
	store__cache_stats(chat->store, &c);
	if(!cJSON_AddNumberToObject(o, "hits", (double)(c.conv_hits + c.member_hits))
			|| !cJSON_AddNumberToObject(o, "misses", (double)(c.conv_misses + c.member_misses))
			|| !cJSON_AddNumberToObject(o, "clears", (double)(c.conv_clears + c.member_clears))
			|| !cJSON_AddNumberToObject(o, "entries", (double)(c.conv_entries + c.member_entries))
			|| !cJSON_AddNumberToObject(o, "bytes", (double)c.bytes)){
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

static cJSON *store_part(struct chat *chat)
{
	struct store_usage u;
	struct store_txn *txn;
	size_t jobs = 0;
	cJSON *o = cJSON_CreateObject();

	if(!o) return NULL;
	if(store__usage(chat->store, &u) != STORE_OK) memset(&u, 0, sizeof(u));
	if(store__begin(chat->store, false, &txn) == STORE_OK){
		jobs = store__job_count(txn);
		store__abort(txn);
	}
	if(!add_item(o, "cache", cache_part(chat))
			|| !cJSON_AddNumberToObject(o, "file_bytes", (double)u.file_bytes)
			|| !cJSON_AddNumberToObject(o, "disk_bytes", (double)u.disk_bytes)
			|| !cJSON_AddNumberToObject(o, "map_bytes", (double)u.map_bytes)
			|| !cJSON_AddNumberToObject(o, "map_used_bytes", (double)u.used_bytes)
			|| !cJSON_AddNumberToObject(o, "map_used_pct",
				u.map_bytes ? (double)(uint64_t)(u.used_bytes * 10000.0 / (double)u.map_bytes + 0.5) / 100.0 : 0.0)
			|| !cJSON_AddNumberToObject(o, "push_outbox", (double)jobs)){
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

/* The whole stats object at now; dt_ms is the time since the last one. */
static cJSON *stats__build(struct chat *chat, uint64_t now, uint64_t dt_ms)
{
	struct chat_stats *st = &chat->stats;
	size_t devices, users;
	cJSON *o = cJSON_CreateObject();

	presence__counts(chat, &devices, &users);
	if(!o) return NULL;
	if(!cJSON_AddStringToObject(o, "version", CHAT_VERSION)
			|| !cJSON_AddNumberToObject(o, "ts", (double)now)
			|| !cJSON_AddNumberToObject(o, "uptime_s", (double)((now - st->started_ms) / 1000))
			|| !cJSON_AddNumberToObject(o, "interval_ms", (double)dt_ms)
			|| !cJSON_AddNumberToObject(o, "devices", (double)devices)
			|| !cJSON_AddNumberToObject(o, "users_online", (double)users)
			|| !add_item(o, "messages", counter(chat->stored_msgs, st->prev_stored, dt_ms))
			|| !add_item(o, "requests", counter(st->requests, st->prev_requests, dt_ms))
			|| !add_item(o, "history_requests", counter(st->history_requests, st->prev_history, dt_ms))
			|| !add_codes(o, "refusals", st->refused)
			|| !add_codes(o, "request_errors", st->request_errors)
			|| !cJSON_AddNumberToObject(o, "kicked", (double)st->kicked)
			|| !add_item(o, "store", store_part(chat))){
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

void stats__tick(struct chat *chat, uint64_t now, struct chat_outbox *out)
{
	struct chat_stats *st = &chat->stats;
	char topic[CHAT_TOPIC_MAX];
	uint64_t dt;
	cJSON *o;

	if(!chat->cfg.stats_interval_ms) return;
	if(!st->last_ms){   /* the first tick starts the first interval */
		st->last_ms = now;
		return;
	}
	if(now - st->last_ms < chat->cfg.stats_interval_ms) return;
	dt = now - st->last_ms;
	o = stats__build(chat, now, dt);
	if(o && topic__build(topic, sizeof(topic), &chat->cfg, "stats", NULL, NULL)
			&& outbox__add_json(out, topic, o, OUTBOX_ALL, false) == 0){
		out->last->retain = true;   /* a new observer sees the latest at once */
		out->last->qos = 0;
	}
	cJSON_Delete(o);
	st->last_ms = now;
	st->prev_stored = chat->stored_msgs;
	st->prev_requests = st->requests;
	st->prev_history = st->history_requests;
}
