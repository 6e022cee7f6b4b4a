/*
 * typing.c — typing indicators: stamped, rate-limited, never stored.
 *
 * {"state":"typing"|"idle"} on {p}/typing/{conv} from a member becomes
 * {"from","state","ts","ttl_ms"} on {p}/c/{conv}/typing (QoS 0). The rule
 * clients follow: a "typing" state is shown for ttl_ms after its ts unless a
 * newer event from the same user arrives; a client that keeps typing resends
 * "typing" every few seconds (resends inside typing_interval_ms are absorbed
 * here, not fanned out). The plugin also ends a state itself: it publishes
 * "idle" when the ttl passes without a refresh and when the user's last
 * device disconnects. Groups above typing_fanout_max members get no typing
 * events at all (and no memory is kept for them).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uthash.h>

#include "chat.h"

struct typing_entry {
	char key[2 * CHAT_ID_MAX + 2];   /* conv \0 user */
	size_t keylen;
	const char *conv, *user;         /* point into key */
	uint64_t last_fanout;
	uint64_t expires;
	UT_hash_handle hh;
};

static size_t typing_key(char *key, const char *conv, const char *user)
{
	size_t cl = strlen(conv), ul = strlen(user);
	memcpy(key, conv, cl + 1);
	memcpy(key + cl + 1, user, ul + 1);
	return cl + 1 + ul;
}

/* Queues the stamped state to the conversation, QoS 0. */
static void typing__fan_out(struct chat *chat, const char *conv, const char *user, bool typing,
		struct chat_outbox *out)
{
	char topic[CHAT_TOPIC_MAX];
	cJSON *o = cJSON_CreateObject();
	if(o && topic__build(topic, sizeof(topic), &chat->cfg, "c", conv, "typing")
			&& cJSON_AddStringToObject(o, "from", user)
			&& cJSON_AddStringToObject(o, "state", typing ? "typing" : "idle")
			&& cJSON_AddNumberToObject(o, "ts", (double)chat->now_ms())
			&& (!typing || cJSON_AddNumberToObject(o, "ttl_ms", chat->cfg.typing_ttl_ms))
			&& outbox__add_json(out, topic, o, OUTBOX_ALL, false) == 0){
		out->last->qos = 0;
	}
	cJSON_Delete(o);
}

static void typing__remove(struct chat *chat, struct typing_entry *t)
{
	HASH_DEL(chat->typing, t);
	free(t);
}

enum chat_verdict typing__handle(struct chat *chat, const struct chat_client *cl, const struct topic_ref *ref,
		const void *payload, size_t len, struct chat_outbox *out)
{
	static const char *const fields[] = {"state", NULL};
	struct chat_error e = {0};
	struct store_conv sc;
	struct store_txn *txn;
	struct typing_entry *t;
	char key[2 * CHAT_ID_MAX + 2];
	size_t keylen, members;
	const cJSON *st;
	cJSON *root = NULL;
	bool typing;
	uint64_t now;

	if(ratelimit__take(chat, cl, CHAT_RATE_TYPING, &e)) return CHAT_CONSUMED;   /* over the limit: dropped */
	if(json__parse_object(payload, len, chat->cfg.max_payload, &root, &e)) goto refused;
	if(!ref->id_valid){
		chat__fail(&e, CHAT_E_INVALID_ID, "the conversation id in the topic is not a valid id");
		goto refused;
	}
	if(json__only_fields(root, fields, &e)) goto refused;
	st = cJSON_GetObjectItemCaseSensitive(root, "state");
	if(!cJSON_IsString(st) || (strcmp(st->valuestring, "typing") && strcmp(st->valuestring, "idle"))){
		chat__fail(&e, CHAT_E_INVALID_FIELD, "'state' must be \"typing\" or \"idle\"");
		goto refused;
	}
	typing = !strcmp(st->valuestring, "typing");
	if(store__begin(chat->store, false, &txn) != STORE_OK){
		cJSON_Delete(root);
		return CHAT_CONSUMED;   /* typing is best effort */
	}
	if(conv__require_member(txn, ref->id, cl->username, &sc, NULL, &e)){
		store__abort(txn);
		goto refused;
	}
	members = store__member_count(txn, ref->id);
	store__abort(txn);
	cJSON_Delete(root);
	if(members > chat->cfg.typing_fanout_max) return CHAT_CONSUMED;

	now = chat->now_ms();
	keylen = typing_key(key, ref->id, cl->username);
	HASH_FIND(hh, chat->typing, key, keylen, t);
	if(!typing){
		if(t){
			typing__remove(chat, t);
			typing__fan_out(chat, ref->id, cl->username, false, out);
		}
		return CHAT_CONSUMED;
	}
	if(t && now < t->expires && now - t->last_fanout < chat->cfg.typing_interval_ms){
		t->expires = now + chat->cfg.typing_ttl_ms;   /* a refresh inside the interval: absorbed */
		return CHAT_CONSUMED;
	}
	if(!t){
		t = calloc(1, sizeof(*t));
		if(!t) return CHAT_CONSUMED;
		memcpy(t->key, key, keylen + 1);
		t->keylen = keylen;
		t->conv = t->key;
		t->user = t->key + strlen(t->key) + 1;
		HASH_ADD(hh, chat->typing, key, t->keylen, t);
	}
	t->last_fanout = now;
	t->expires = now + chat->cfg.typing_ttl_ms;
	typing__fan_out(chat, ref->id, cl->username, true, out);
	return CHAT_CONSUMED;

refused:
	cJSON_Delete(root);
	return message__refuse(chat, cl, ref, NULL, &e, out);
}

void typing__expire(struct chat *chat, uint64_t now, struct chat_outbox *out)
{
	struct typing_entry *t, *tmp;
	HASH_ITER(hh, chat->typing, t, tmp){
		if(now >= t->expires){
			typing__fan_out(chat, t->conv, t->user, false, out);
			typing__remove(chat, t);
		}
	}
}

void typing__user_gone(struct chat *chat, const char *user, struct chat_outbox *out)
{
	struct typing_entry *t, *tmp;
	HASH_ITER(hh, chat->typing, t, tmp){
		if(!strcmp(t->user, user)){
			typing__fan_out(chat, t->conv, t->user, false, out);
			typing__remove(chat, t);
		}
	}
}

void typing__free(struct chat *chat)
{
	struct typing_entry *t, *tmp;
	HASH_ITER(hh, chat->typing, t, tmp){
		typing__remove(chat, t);
	}
}
