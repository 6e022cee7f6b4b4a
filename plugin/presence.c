/*
 * presence.c — connected devices, and the retained presence topic
 * {p}/p/{user} = {"state":"online"|"offline","ts":ms}.
 *
 * mosquitto 2.0 has no CONNECT event for plugins. A device (one broker
 * connection, keyed by its opaque `struct mosquitto *`) counts as connected
 * from its first chat action — a publish to a chat topic or a subscription to
 * one (every client of the protocol subscribes to {p}/u/{me}/+ and publishes
 * its "online" state) — until the broker's DISCONNECT event for it, which
 * comes for clean and unclean ends alike. Keying by connection, not client
 * id, keeps a session take-over right: the new connection is a new device and
 * the old one's late DISCONNECT removes only the old one.
 *
 * A user is online while they have a connected device. Clients publish
 * "online"; the plugin stamps it with server time. "offline" is the plugin's
 * alone: when a user's last device disconnects it publishes
 * {"state":"offline","ts":<disconnect time>} itself — after presence_grace_ms,
 * and only if no device of the user turned up meanwhile. The grace covers an
 * MQTT session take-over, where mosquitto closes the old connection while it
 * is still handling the new CONNECT, before the new device can do anything,
 * and a phone that reconnects at once after a network change. Clients' Last Wills bypass the message
 * hook, so every "offline" write is refused in the write ACL — a will, even on
 * an MQTT session take-over, never says "offline" while another device is
 * connected, and the final state always carries server time.
 * States are kept in LMDB: at start, every stored state is republished
 * retained, and a user stored as online (a broker that died) becomes offline.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uthash.h>

#include "chat.h"

struct device {
	const void *conn;
	char user[CHAT_ID_MAX + 1];
	UT_hash_handle hh;
};

struct device_user {
	char user[CHAT_ID_MAX + 1];
	unsigned devices;
	UT_hash_handle hh;
};

struct offline_pending {
	char user[CHAT_ID_MAX + 1];
	uint64_t since;      /* when the last device went: the "last seen" */
	uint64_t due;        /* publish "offline" then, unless a device returns */
	UT_hash_handle hh;
};

/* ====================================================================== *
 * The device table
 * ====================================================================== */

void presence__track(struct chat *chat, const void *conn, const char *user)
{
	struct device *d;
	struct device_user *u;
	struct offline_pending *p;

	HASH_FIND_PTR(chat->devices, &conn, d);
	if(d) return;
	HASH_FIND_STR(chat->offline_pending, user, p);
	if(p){   /* back within the grace period: they never went offline */
		HASH_DEL(chat->offline_pending, p);
		free(p);
	}
	d = calloc(1, sizeof(*d));
	if(!d) return;
	d->conn = conn;
	snprintf(d->user, sizeof(d->user), "%s", user);
	HASH_FIND_STR(chat->device_users, user, u);
	if(!u){
		u = calloc(1, sizeof(*u));
		if(!u){
			free(d);
			return;
		}
		snprintf(u->user, sizeof(u->user), "%s", user);
		HASH_ADD_STR(chat->device_users, user, u);
	}
	u->devices++;
	HASH_ADD_PTR(chat->devices, conn, d);
}

/* Forgets conn; returns true when it was its user's last device (the
 * user's name is copied to user). */
static bool presence__untrack(struct chat *chat, const void *conn, char user[CHAT_ID_MAX + 1])
{
	struct device *d;
	struct device_user *u;
	bool last = false;

	HASH_FIND_PTR(chat->devices, &conn, d);
	if(!d) return false;
	snprintf(user, CHAT_ID_MAX + 1, "%s", d->user);
	HASH_FIND_STR(chat->device_users, d->user, u);
	if(u && --u->devices == 0){
		HASH_DEL(chat->device_users, u);
		free(u);
		last = true;
	}
	HASH_DEL(chat->devices, d);
	free(d);
	return last;
}

bool presence__user_connected(const struct chat *chat, const char *user)
{
	struct device_user *u;
	HASH_FIND_STR(chat->device_users, user, u);
	return u != NULL;
}

void presence__free(struct chat *chat)
{
	struct device *d, *dt;
	struct device_user *u, *ut;
	struct offline_pending *p, *pt;
	HASH_ITER(hh, chat->offline_pending, p, pt){
		HASH_DEL(chat->offline_pending, p);
		free(p);
	}
	HASH_ITER(hh, chat->devices, d, dt){
		HASH_DEL(chat->devices, d);
		free(d);
	}
	HASH_ITER(hh, chat->device_users, u, ut){
		HASH_DEL(chat->device_users, u);
		free(u);
	}
}

/* ====================================================================== *
 * States
 * ====================================================================== */

static char *state_json(bool online, uint64_t ts, size_t *len)
{
	char *s = malloc(64);
	int n;
	if(!s) return NULL;
	n = snprintf(s, 64, "{\"state\":\"%s\",\"ts\":%llu}", online ? "online" : "offline", (unsigned long long)ts);
	*len = (size_t)n;
	return s;
}

/* Queues the retained state of user. */
static void presence__publish(struct chat *chat, const char *user, bool online, uint64_t ts, struct chat_outbox *out)
{
	char topic[CHAT_TOPIC_MAX];
	size_t len;
	char *s = state_json(online, ts, &len);
	if(!s) return;
	if(!topic__build(topic, sizeof(topic), &chat->cfg, "p", user, NULL)){
		free(s);
		return;
	}
	if(outbox__add(out, topic, s, len, OUTBOX_ALL, false) == 0) out->last->retain = true;
}

/* Stores user's state as of now; returns the state's ts (kept when the
 * state is unchanged, so "online since" survives a second device). */
static int presence__store(struct chat *chat, const char *user, bool online, uint64_t now, uint64_t *ts)
{
	struct store_txn *txn;
	bool was_online;
	uint64_t since;
	int rc;

	if(store__begin(chat->store, true, &txn) != STORE_OK) return STORE_ERR;
	rc = store__presence_get(txn, user, &was_online, &since);
	if(rc == STORE_OK && was_online == online){
		store__abort(txn);
		*ts = since;
		return STORE_OK;
	}
	rc = store__presence_put(txn, user, online, now);
	if(rc != STORE_OK){
		store__abort(txn);
		return rc;
	}
	*ts = now;
	return store__commit(txn);
}

bool presence__may_write(struct chat *chat, const void *conn, const void *payload, size_t len)
{
	static const char *const fields[] = {"state", NULL};
	struct chat_error e = {0};
	struct device *d;
	cJSON *root = NULL;
	const cJSON *st;
	bool ok;

	HASH_FIND_PTR(chat->devices, &conn, d);
	if(d){
		/* A connected device: only the "offline" state is refused here;
		 * anything else goes on to the hook, which validates it and answers
		 * a bad payload with a specific error. */
		if(len == 0 || len > chat->cfg.max_payload) return true;
		root = cJSON_ParseWithLength(payload, len);
		st = cJSON_GetObjectItemCaseSensitive(root, "state");
		ok = !(cJSON_IsString(st) && !strcmp(st->valuestring, "offline"));
		cJSON_Delete(root);
		return ok;
	}
	/* Not a device (yet): a connection's first chat action, or a Last Will
	 * (mosquitto checks a will after the DISCONNECT event removed its
	 * device). Wills never reach the hook, so whatever passes here would be
	 * retained unchecked: only a well-formed {"state":"online"} may pass,
	 * for the hook to stamp. */
	ok = !json__parse_object(payload, len, chat->cfg.max_payload, &root, &e) && !json__only_fields(root, fields, &e);
	if(ok){
		st = cJSON_GetObjectItemCaseSensitive(root, "state");
		ok = cJSON_IsString(st) && !strcmp(st->valuestring, "online");
	}
	cJSON_Delete(root);
	return ok;
}

enum chat_verdict presence__handle(struct chat *chat, const struct chat_client *cl, const struct topic_ref *ref,
		const void *payload, size_t len, struct chat_outbox *out, struct chat_rewrite *rw)
{
	static const char *const fields[] = {"state", NULL};
	struct topic_ref noconv = *ref;
	struct chat_error e = {0};
	const cJSON *st;
	cJSON *root = NULL;
	uint64_t ts;

	noconv.id_valid = false;    /* the event carries no conversation */
	if(!ref->id_valid || strcmp(ref->id, cl->username) != 0){
		chat__fail(&e, CHAT_E_FORBIDDEN, "only %s may publish %s's presence", ref->id, ref->id);
		goto refused;
	}
	/* each accepted state is retained and fanned out to every watcher: it draws on the request bucket */
	if(ratelimit__take(chat, cl, CHAT_RATE_REQUEST, &e)) goto refused;
	if(json__parse_object(payload, len, chat->cfg.max_payload, &root, &e) || json__only_fields(root, fields, &e)){
		goto refused;
	}
	st = cJSON_GetObjectItemCaseSensitive(root, "state");
	if(!cJSON_IsString(st) || strcmp(st->valuestring, "online") != 0){
		/* "offline" never gets here (the write ACL refuses it) */
		chat__fail(&e, CHAT_E_INVALID_FIELD, "'state' must be \"online\" (going offline is the plugin's: disconnect)");
		goto refused;
	}
	cJSON_Delete(root);

	presence__track(chat, cl->conn, cl->username);
	if(presence__store(chat, cl->username, true, chat->now_ms(), &ts) != STORE_OK){
		/* a full map: the live state is still right, it just will not be
		 * remembered across a restart; any other failure drops the client */
		if(!store__full(chat->store)) return CHAT_STORE_FAILED;
		ts = chat->now_ms();
	}
	rw->payload = state_json(true, ts, &rw->len);
	rw->retain = true;
	return rw->payload ? CHAT_REWRITE : CHAT_STORE_FAILED;

refused:
	cJSON_Delete(root);
	return message__refuse(chat, cl, &noconv, NULL, &e, out);
}

/* The user is offline since `since`: store, publish, end their typing. */
static void presence__go_offline(struct chat *chat, const char *user, uint64_t since, struct chat_outbox *out)
{
	uint64_t ts;
	typing__user_gone(chat, user, out);
	if(presence__store(chat, user, false, since, &ts) != STORE_OK) ts = since;
	presence__publish(chat, user, false, ts, out);
}

void presence__disconnect(struct chat *chat, const void *conn, struct chat_outbox *out)
{
	char user[CHAT_ID_MAX + 1];
	struct offline_pending *p;
	uint64_t now = chat->now_ms();

	if(!presence__untrack(chat, conn, user)) return;
	if(chat->cfg.presence_grace_ms == 0){
		presence__go_offline(chat, user, now, out);
		return;
	}
	HASH_FIND_STR(chat->offline_pending, user, p);
	if(!p){
		p = calloc(1, sizeof(*p));
		if(!p){
			presence__go_offline(chat, user, now, out);
			return;
		}
		snprintf(p->user, sizeof(p->user), "%s", user);
		HASH_ADD_STR(chat->offline_pending, user, p);
	}
	p->since = now;
	p->due = now + chat->cfg.presence_grace_ms;
}

void presence__tick(struct chat *chat, struct chat_outbox *out)
{
	struct offline_pending *p, *tmp;
	uint64_t now = chat->now_ms();
	HASH_ITER(hh, chat->offline_pending, p, tmp){
		if(now < p->due) continue;
		HASH_DEL(chat->offline_pending, p);
		presence__go_offline(chat, p->user, p->since, out);
		free(p);
	}
}

struct startup_walk {
	struct chat *chat;
	struct chat_outbox *out;
	char (*stale)[CHAT_ID_MAX + 1];
	size_t nstale, cap;
};

static int startup_cb(void *ud, const char *user, bool online, uint64_t ts)
{
	struct startup_walk *w = ud;
	if(online){
		if(w->nstale == w->cap){
			size_t cap = w->cap ? w->cap * 2 : 64;
			void *grown = realloc(w->stale, cap * sizeof(*w->stale));
			if(!grown) return 1;
			w->stale = grown;
			w->cap = cap;
		}
		snprintf(w->stale[w->nstale++], CHAT_ID_MAX + 1, "%s", user);
		return 0;
	}
	presence__publish(w->chat, user, false, ts, w->out);
	return 0;
}

void presence__startup(struct chat *chat, struct chat_outbox *out)
{
	struct startup_walk w = {chat, out, NULL, 0, 0};
	struct store_txn *txn;
	uint64_t now = chat->now_ms();

	if(store__begin(chat->store, false, &txn) != STORE_OK) return;
	store__presence_each(txn, startup_cb, &w);
	store__abort(txn);
	/* online at the last stop means the broker died: they are offline now */
	if(w.nstale && store__begin(chat->store, true, &txn) == STORE_OK){
		for(size_t i = 0; i < w.nstale; i++){
			store__presence_put(txn, w.stale[i], false, now);
		}
		if(store__commit(txn) != STORE_OK) now = chat->now_ms();
	}
	for(size_t i = 0; i < w.nstale; i++){
		presence__publish(chat, w.stale[i], false, now, out);
	}
	free(w.stale);
}

void presence__counts(const struct chat *chat, size_t *devices, size_t *users)
{
	*devices = HASH_COUNT(chat->devices);
	*users = HASH_COUNT(chat->device_users);
}
