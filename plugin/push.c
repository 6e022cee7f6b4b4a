/*
 * push.c — offline push: registered devices, per-conversation preferences,
 * and the durable push outbox the bridge drains (docs/push.md).
 *
 * A job is written in the same transaction as the message that causes it,
 * for each member with no connected device, registered push devices, and the
 * conversation not muted. While a user's job for a conversation waits out its
 * window (push_window_ms) further messages fold into it. When the window ends
 * the job is published on {p}/push/jobs (readable by push_users only); it
 * stays in LMDB until the bridge acks it on {p}/push/ack, and is published
 * again every push_retry_ms until then, and once more at every start. So no
 * job is lost, and a duplicate needs a bridge that died (or stalled past
 * push_retry_ms) between the provider's acceptance and its ack.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

#define PREVIEW_MAX 200
#define TOKEN_MAX 400
#define JOBS_PER_TICK 500

bool push__enabled(const struct chat *chat)
{
	return chat->cfg.push_user_count > 0;
}

bool push__is_bridge(const struct chat_config *cfg, const char *user)
{
	if(!user) return false;
	for(size_t i = 0; i < cfg->push_user_count; i++){
		if(!strcmp(cfg->push_users[i], user)) return true;
	}
	return false;
}

/* ====================================================================== *
 * Jobs
 * ====================================================================== */

/* The first max bytes of body, cut back to a UTF-8 boundary, as a new string. */
static cJSON *preview_of(const char *body)
{
	size_t n = strlen(body);
	char buf[PREVIEW_MAX + 1];
	if(n > PREVIEW_MAX){
		n = PREVIEW_MAX;
		while(n > 0 && ((unsigned char)body[n] & 0xC0) == 0x80) n--;   /* don't split a character */
	}
	memcpy(buf, body, n);
	buf[n] = '\0';
	return cJSON_CreateString(buf);
}

struct dev_probe {
	bool any;
};

static int dev_probe_cb(void *ud, const char *platform, const char *token, const char *locale)
{
	((struct dev_probe *)ud)->any = true;
	return 1;
}

/* Folds a message into user's waiting job for conv, or starts a new one. */
static enum chat_err push__job_for(struct chat *chat, struct store_txn *txn, const char *user, const char *conv,
		const struct store_conv *sc, const char *from, uint64_t seq, const char *body, struct chat_error *e)
{
	unsigned flags = 0;
	uint64_t id, due, sent;
	const char *old;
	size_t olen, len;
	cJSON *job = NULL;
	char *s;
	int rc;
	uint64_t now = chat->now_ms();

	store__pref_get(txn, conv, user, &flags);
	if(flags & STORE_PREF_MUTED) return CHAT_E_OK;

	if(store__pending_get(txn, user, conv, &id) == STORE_OK
			&& store__job_get(txn, id, &due, &sent, &old, &olen) == STORE_OK && sent == 0){
		job = cJSON_ParseWithLength(old, olen);
		const cJSON *count = cJSON_GetObjectItemCaseSensitive(job, "count");
		if(!job || !cJSON_IsNumber(count)){
			cJSON_Delete(job);
			job = NULL;
		}else{
			cJSON_ReplaceItemInObjectCaseSensitive(job, "count", cJSON_CreateNumber(count->valuedouble + 1));
			cJSON_ReplaceItemInObjectCaseSensitive(job, "from", cJSON_CreateString(from));
			cJSON_ReplaceItemInObjectCaseSensitive(job, "seq", cJSON_CreateNumber((double)seq));
			cJSON_ReplaceItemInObjectCaseSensitive(job, "ts", cJSON_CreateNumber((double)now));
			if(!cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(job, "preview"))){
				cJSON_ReplaceItemInObjectCaseSensitive(job, "preview", preview_of(body));
			}
		}
	}
	if(!job){
		struct dev_probe probe = {false};
		store__pushdevs_each(txn, user, dev_probe_cb, &probe);
		if(!probe.any) return CHAT_E_OK;
		if(store__next_id(txn, "push_job", &id) != STORE_OK) goto store_err;
		due = now + chat->cfg.push_window_ms;
		job = cJSON_CreateObject();
		if(!job) return chat__fail(e, CHAT_E_NOMEM, "out of memory");
		cJSON_AddNumberToObject(job, "id", (double)id);
		cJSON_AddStringToObject(job, "user", user);
		cJSON_AddStringToObject(job, "conv", conv);
		if(sc->type == 'g') cJSON_AddStringToObject(job, "conv_name", sc->name);
		else cJSON_AddNullToObject(job, "conv_name");
		cJSON_AddStringToObject(job, "type", sc->type == 'g' ? "group" : "direct");
		cJSON_AddStringToObject(job, "from", from);
		cJSON_AddNumberToObject(job, "seq", (double)seq);
		cJSON_AddNumberToObject(job, "count", 1);
		if(chat->cfg.push_preview && !(flags & STORE_PREF_NO_PREVIEW)) cJSON_AddItemToObject(job, "preview", preview_of(body));
		else cJSON_AddNullToObject(job, "preview");
		cJSON_AddNumberToObject(job, "ts", (double)now);
		if(store__pending_put(txn, user, conv, id) != STORE_OK) goto store_err;
	}
	s = json__print(job, &len);
	cJSON_Delete(job);
	job = NULL;
	if(!s) return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	rc = store__job_put(txn, id, due, 0, s, len);
	cJSON_free(s);
	if(rc != STORE_OK) goto store_err;
	return CHAT_E_OK;

store_err:
	cJSON_Delete(job);
	return chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
}

struct member_walk {
	struct chat *chat;
	struct store_txn *txn;
	const char *conv, *from, *body;
	const struct store_conv *sc;
	uint64_t seq;
	struct chat_error *e;
	enum chat_err rc;
};

static int push_member_cb(void *ud, const char *user, char role)
{
	struct member_walk *w = ud;
	if(!strcmp(user, w->from) || presence__user_connected(w->chat, user)) return 0;
	w->rc = push__job_for(w->chat, w->txn, user, w->conv, w->sc, w->from, w->seq, w->body, w->e);
	return w->rc != CHAT_E_OK;
}

enum chat_err push__on_message(struct chat *chat, struct store_txn *txn, const char *conv, const struct store_conv *sc,
		const char *from, uint64_t seq, const char *body, struct chat_error *e)
{
	struct member_walk w = {chat, txn, conv, from, body, sc, seq, e, CHAT_E_OK};
	if(!push__enabled(chat)) return CHAT_E_OK;
	store__members_each(txn, conv, push_member_cb, &w);
	return w.rc;
}

/* ====================================================================== *
 * Publishing due jobs (broker tick)
 * ====================================================================== */

struct dev_list {
	cJSON *arr;
};

static int dev_list_cb(void *ud, const char *platform, const char *token, const char *locale)
{
	struct dev_list *l = ud;
	cJSON *d = cJSON_CreateObject();
	if(!d || !cJSON_AddItemToArray(l->arr, d)){
		cJSON_Delete(d);
		return 1;
	}
	cJSON_AddStringToObject(d, "platform", platform);
	cJSON_AddStringToObject(d, "token", token);
	if(*locale) cJSON_AddStringToObject(d, "locale", locale);
	else cJSON_AddNullToObject(d, "locale");
	return 0;
}

struct badge_walk {
	struct store_txn *txn;
	const char *user;
	uint64_t unread;
};

static int badge_cb(void *ud, const char *conv)
{
	struct badge_walk *b = ud;
	struct store_conv sc;
	uint64_t delivered, read;
	if(store__conv_get(b->txn, conv, &sc) != STORE_OK) return 0;
	store__cursor_get(b->txn, conv, b->user, &delivered, &read);
	if(sc.last_seq > read) b->unread += sc.last_seq - read;
	return 0;
}

struct due_job {
	uint64_t id, due;
	char *json;
	size_t len;
};

struct due_walk {
	uint64_t now, retry;
	bool all;
	struct due_job jobs[JOBS_PER_TICK];
	size_t n;
};

static int due_cb(void *ud, uint64_t id, uint64_t due, uint64_t sent, const char *json, size_t len)
{
	struct due_walk *w = ud;
	/* a job still collecting keeps its window; a sent one goes again when
	 * its ack is overdue, or at once after a start or a bridge resubscribe */
	bool is_due = sent == 0 ? w->now >= due : (w->all || w->now - sent >= w->retry);
	if(!is_due) return 0;
	w->jobs[w->n].id = id;
	w->jobs[w->n].due = due;
	w->jobs[w->n].json = malloc(len + 1);
	if(!w->jobs[w->n].json) return 1;
	memcpy(w->jobs[w->n].json, json, len);
	w->jobs[w->n].json[len] = '\0';
	w->jobs[w->n].len = len;
	return ++w->n == JOBS_PER_TICK;
}

/* Publishes one due job with its devices and badge, marking it sent; a job
 * whose user has no device left is dropped. */
static int push__send(struct chat *chat, struct store_txn *txn, const struct due_job *dj, const char *topic,
		uint64_t now, struct chat_outbox *out)
{
	cJSON *job = cJSON_ParseWithLength(dj->json, dj->len);
	const cJSON *user = cJSON_GetObjectItemCaseSensitive(job, "user");
	const cJSON *conv = cJSON_GetObjectItemCaseSensitive(job, "conv");
	struct dev_list devs;
	struct badge_walk badge;
	int rc = STORE_OK;

	if(!cJSON_IsString(user) || !cJSON_IsString(conv)){
		cJSON_Delete(job);
		return store__job_del(txn, dj->id);   /* unreadable: drop it */
	}
	/* no longer collecting: the next message starts a new job */
	store__pending_del(txn, user->valuestring, conv->valuestring);
	devs.arr = cJSON_AddArrayToObject(job, "devices");
	if(devs.arr) store__pushdevs_each(txn, user->valuestring, dev_list_cb, &devs);
	if(!devs.arr || cJSON_GetArraySize(devs.arr) == 0){
		cJSON_Delete(job);
		return store__job_del(txn, dj->id);
	}
	badge.txn = txn;
	badge.user = user->valuestring;
	badge.unread = 0;
	store__user_convs_each(txn, user->valuestring, badge_cb, &badge);
	cJSON_AddNumberToObject(job, "badge", (double)badge.unread);
	if(outbox__add_json(out, topic, job, OUTBOX_ALL, false) == 0){
		rc = store__job_put(txn, dj->id, dj->due, now, dj->json, dj->len);
	}
	cJSON_Delete(job);
	return rc;
}

void push__tick(struct chat *chat, struct chat_outbox *out)
{
	struct due_walk *w;
	struct store_txn *txn;
	char topic[CHAT_TOPIC_MAX];
	uint64_t now = chat->now_ms();
	struct chat_outbox batch;

	if(!push__enabled(chat)) return;
	if(!topic__build(topic, sizeof(topic), &chat->cfg, "push", "jobs", NULL)) return;
	w = calloc(1, sizeof(*w));
	if(!w) return;
	w->now = now;
	w->retry = chat->cfg.push_retry_ms;
	w->all = chat->push_resend_all;
	if(store__begin(chat->store, false, &txn) == STORE_OK){
		store__jobs_each(txn, due_cb, w);
		store__abort(txn);
	}
	/* the startup resend is over once every job has been walked */
	if(w->n < JOBS_PER_TICK) chat->push_resend_all = false;
	outbox__init(&batch);
	if(w->n && store__begin(chat->store, true, &txn) == STORE_OK){
		for(size_t i = 0; i < w->n; i++){
			push__send(chat, txn, &w->jobs[i], topic, now, &batch);
		}
		if(store__commit(txn) == STORE_OK){
			/* publish only what the outbox now records as sent */
			outbox__append(out, &batch);
		}
	}
	outbox__clear(&batch);
	for(size_t i = 0; i < w->n; i++) free(w->jobs[i].json);
	free(w);
}

/* ====================================================================== *
 * Acks from the bridge
 * ====================================================================== */

static bool valid_platform(const char *p)
{
	return !strcmp(p, "fcm") || !strcmp(p, "apns") || !strcmp(p, "webhook");
}

static bool valid_token(const char *t)
{
	size_t n = strlen(t);
	if(n == 0 || n > TOKEN_MAX) return false;
	for(size_t i = 0; i < n; i++){
		if(t[i] < 0x21 || t[i] > 0x7e) return false;
	}
	return true;
}

enum chat_verdict push__ack(struct chat *chat, const struct chat_client *cl, const void *payload, size_t len)
{
	static const char *const fields[] = {"id", "result", "unregister", NULL};
	struct chat_error e;
	struct store_txn *txn;
	cJSON *root = NULL, *it;
	const cJSON *res, *unreg;
	int64_t id;
	bool has_id;
	uint64_t due, sent;
	const char *json;
	size_t jlen;
	char user[CHAT_ID_MAX + 1] = "";

	if(json__parse_object(payload, len, chat->cfg.max_payload, &root, &e) || json__only_fields(root, fields, &e)
			|| json__opt_int(root, "id", 1, INT64_MAX / 2, &id, &has_id, &e) || !has_id){
		cJSON_Delete(root);
		return CHAT_REFUSED;
	}
	res = cJSON_GetObjectItemCaseSensitive(root, "result");
	unreg = cJSON_GetObjectItemCaseSensitive(root, "unregister");
	if(!cJSON_IsString(res) || (unreg && !cJSON_IsArray(unreg))){
		cJSON_Delete(root);
		return CHAT_REFUSED;
	}
	if(store__begin(chat->store, true, &txn) != STORE_OK){
		cJSON_Delete(root);
		return CHAT_STORE_FAILED;
	}
	if(store__job_get(txn, (uint64_t)id, &due, &sent, &json, &jlen) == STORE_OK){
		cJSON *job = cJSON_ParseWithLength(json, jlen);
		const cJSON *u = cJSON_GetObjectItemCaseSensitive(job, "user");
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(job, "conv");
		uint64_t pending;
		if(cJSON_IsString(u)) snprintf(user, sizeof(user), "%s", u->valuestring);
		if(cJSON_IsString(u) && cJSON_IsString(c)
				&& store__pending_get(txn, u->valuestring, c->valuestring, &pending) == STORE_OK
				&& pending == (uint64_t)id){
			store__pending_del(txn, u->valuestring, c->valuestring);
		}
		cJSON_Delete(job);
		store__job_del(txn, (uint64_t)id);
		if(!strcmp(res->valuestring, "delivered")) chat->push_delivered++;
		else chat->push_failed++;
	}
	/* permanent provider refusals: forget those tokens of the job's user */
	cJSON_ArrayForEach(it, unreg){
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(it, "platform");
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(it, "token");
		if(*user && cJSON_IsString(p) && cJSON_IsString(t)){
			if(store__pushdev_del(txn, user, p->valuestring, t->valuestring) == STORE_OK) chat->push_unregistered++;
		}
	}
	cJSON_Delete(root);
	return store__commit(txn) == STORE_OK ? CHAT_CONSUMED : CHAT_STORE_FAILED;
}

/* ====================================================================== *
 * Requests: devices.*, conv.mute, conv.preview
 * ====================================================================== */

static int count_cb(void *ud, const char *platform, const char *token, const char *locale)
{
	(*(size_t *)ud)++;
	return 0;
}

static enum chat_err read_device(const cJSON *args, const char **platform, const char **token, struct chat_error *e)
{
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(args, "platform");
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(args, "token");
	if(!cJSON_IsString(p) || !valid_platform(p->valuestring)){
		return chat__fail(e, CHAT_E_INVALID_FIELD, "'platform' must be \"fcm\", \"apns\" or \"webhook\"");
	}
	if(!cJSON_IsString(t) || !valid_token(t->valuestring)){
		return chat__fail(e, CHAT_E_INVALID_FIELD, "'token' must be 1-%d printable ASCII characters", TOKEN_MAX);
	}
	*platform = p->valuestring;
	*token = t->valuestring;
	return CHAT_E_OK;
}

enum chat_err push__devices_register(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	static const char *const fields[] = {"op", "req_id", "platform", "token", "locale", NULL};
	const char *platform, *token, *locale = "";
	const cJSON *l;
	char owner[CHAT_ID_MAX + 1];
	size_t count = 0;
	cJSON *d;
	enum chat_err rc;

	if((rc = json__only_fields(args, fields, e)) || (rc = read_device(args, &platform, &token, e))) return rc;
	l = cJSON_GetObjectItemCaseSensitive(args, "locale");
	if(l){
		if(!cJSON_IsString(l) || !*l->valuestring || strlen(l->valuestring) > 35
				|| strspn(l->valuestring, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
					!= strlen(l->valuestring)){
			return chat__fail(e, CHAT_E_INVALID_FIELD, "'locale' must be 1-35 of A-Z a-z 0-9 _ -");
		}
		locale = l->valuestring;
	}
	if(store__token_owner(txn, platform, token, owner) == STORE_OK && strcmp(owner, user) != 0){
		/* the device changed hands: it notifies its new user only */
		if(store__pushdev_del(txn, owner, platform, token) != STORE_OK) goto store_err;
	}
	store__pushdevs_each(txn, user, count_cb, &count);
	if(store__token_owner(txn, platform, token, owner) != STORE_OK && count >= chat->cfg.push_max_devices){
		return chat__fail(e, CHAT_E_TOO_MANY_DEVICES, "at most %u push devices per user", chat->cfg.push_max_devices);
	}
	if(store__pushdev_put(txn, user, platform, token, locale) != STORE_OK) goto store_err;
	d = cJSON_AddObjectToObject(result, "device");
	if(!d || !cJSON_AddStringToObject(d, "platform", platform) || !cJSON_AddStringToObject(d, "token", token)
			|| !(*locale ? cJSON_AddStringToObject(d, "locale", locale) : cJSON_AddNullToObject(d, "locale"))){
		return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	}
	return CHAT_E_OK;
store_err:
	return chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
}

enum chat_err push__devices_unregister(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	static const char *const fields[] = {"op", "req_id", "platform", "token", NULL};
	const char *platform, *token;
	enum chat_err rc;
	int src;

	if((rc = json__only_fields(args, fields, e)) || (rc = read_device(args, &platform, &token, e))) return rc;
	src = store__pushdev_del(txn, user, platform, token);
	if(src != STORE_OK && src != STORE_NOTFOUND) return chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
	return cJSON_AddBoolToObject(result, "removed", src == STORE_OK) ? CHAT_E_OK : chat__fail(e, CHAT_E_NOMEM, "oom");
}

enum chat_err push__devices_list(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	static const char *const fields[] = {"op", "req_id", NULL};
	struct dev_list l;
	enum chat_err rc;

	if((rc = json__only_fields(args, fields, e))) return rc;
	l.arr = cJSON_AddArrayToObject(result, "devices");
	if(!l.arr) return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	store__pushdevs_each(txn, user, dev_list_cb, &l);
	return CHAT_E_OK;
}

/* conv.mute {conv, muted} and conv.preview {conv, preview}: one flag each. */
static enum chat_err set_pref(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, const char *field, unsigned flag, bool flag_when_true, struct chat_error *e)
{
	const char *fields[] = {"op", "req_id", "conv", field, NULL};
	struct store_conv sc;
	const char *conv;
	const cJSON *v;
	unsigned flags;
	enum chat_err rc;

	if((rc = json__only_fields(args, fields, e)) || (rc = json__req_id(args, "conv", &conv, e))
			|| (rc = conv__require_member(txn, conv, user, &sc, NULL, e))){
		return rc;
	}
	v = cJSON_GetObjectItemCaseSensitive(args, field);
	if(!cJSON_IsBool(v)) return chat__fail(e, CHAT_E_INVALID_FIELD, "'%s' must be true or false", field);
	store__pref_get(txn, conv, user, &flags);
	if(cJSON_IsTrue(v) == flag_when_true) flags |= flag;
	else flags &= ~flag;
	if(store__pref_put(txn, conv, user, flags) != STORE_OK){
		return chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
	}
	if(!cJSON_AddStringToObject(result, "conv", conv) || !cJSON_AddBoolToObject(result, field, cJSON_IsTrue(v))){
		return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	}
	return CHAT_E_OK;
}

enum chat_err push__conv_mute(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	return set_pref(chat, txn, user, args, result, "muted", STORE_PREF_MUTED, true, e);
}

enum chat_err push__conv_preview(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	return set_pref(chat, txn, user, args, result, "preview", STORE_PREF_NO_PREVIEW, false, e);
}
