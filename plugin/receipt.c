/*
 * receipt.c — delivered/read cursors per (conversation, user).
 *
 * A receipt {"delivered": n} / {"read": n} on {p}/receipt/{conv} moves the
 * member's cursors forward; reading up to n implies delivered up to n. A
 * cursor beyond the conversation's last seq is refused (invalid_field); one
 * behind (or equal to) the stored cursor is ignored, so resends and
 * out-of-order receipts from several devices are harmless. A move is stored
 * and, in conversations of at most receipt_fanout_max members, fanned out
 * stamped on {p}/c/{conv}/receipt. Sending a message moves the sender's own
 * cursors to it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

/* ====================================================================== *
 * Receipts from members
 * ====================================================================== */

struct receipt_req {
	int64_t delivered, read;
	bool has_delivered, has_read;
};

static enum chat_err receipt__validate(const cJSON *root, struct receipt_req *r, struct chat_error *e)
{
	static const char *const fields[] = {"delivered", "read", NULL};
	enum chat_err rc;

	if((rc = json__only_fields(root, fields, e))
			|| (rc = json__opt_int(root, "delivered", 1, INT64_MAX / 2, &r->delivered, &r->has_delivered, e))
			|| (rc = json__opt_int(root, "read", 1, INT64_MAX / 2, &r->read, &r->has_read, e))){
		return rc;
	}
	if(!r->has_delivered && !r->has_read){
		return chat__fail(e, CHAT_E_INVALID_FIELD, "a receipt needs 'delivered' or 'read'");
	}
	return CHAT_E_OK;
}

static uint64_t max3(uint64_t a, uint64_t b, uint64_t c)
{
	uint64_t m = a > b ? a : b;
	return m > c ? m : c;
}

/* Queues {"from","delivered","read","ts"} to the conversation. */
static void receipt__fan_out(struct chat *chat, const char *conv, const char *user, uint64_t delivered,
		uint64_t read, struct chat_outbox *out)
{
	char topic[CHAT_TOPIC_MAX];
	cJSON *o = cJSON_CreateObject();
	if(o && topic__build(topic, sizeof(topic), &chat->cfg, "c", conv, "receipt")
			&& cJSON_AddStringToObject(o, "from", user)
			&& cJSON_AddNumberToObject(o, "delivered", (double)delivered)
			&& cJSON_AddNumberToObject(o, "read", (double)read)
			&& cJSON_AddNumberToObject(o, "ts", (double)chat->now_ms())){
		outbox__add_json(out, topic, o, OUTBOX_ALL, false);
	}
	cJSON_Delete(o);
}

enum chat_verdict receipt__handle(struct chat *chat, const struct chat_client *cl, const struct topic_ref *ref,
		const void *payload, size_t len, struct chat_outbox *out)
{
	struct chat_error e = {0};
	struct receipt_req r = {0};
	struct store_conv sc;
	struct store_txn *txn = NULL;
	cJSON *root = NULL;
	uint64_t od, orr, nd, nr;
	size_t members;
	enum chat_verdict v;

	if(ratelimit__take(chat, cl, CHAT_RATE_RECEIPT, &e)) return message__refuse(chat, cl, ref, NULL, &e, out);
	if(json__parse_object(payload, len, chat->cfg.max_payload, &root, &e)) goto refused;
	if(!ref->id_valid){
		chat__fail(&e, CHAT_E_INVALID_ID, "the conversation id in the topic is not a valid id");
		goto refused;
	}
	if(receipt__validate(root, &r, &e)) goto refused;
	if(store__begin(chat->store, true, &txn) != STORE_OK) goto store_failed;
	if(conv__require_member(txn, ref->id, cl->username, &sc, NULL, &e)) goto refused;
	if((r.has_delivered && (uint64_t)r.delivered > sc.last_seq) || (r.has_read && (uint64_t)r.read > sc.last_seq)){
		chat__fail(&e, CHAT_E_INVALID_FIELD, "a receipt cannot go beyond the last message (%llu)",
				(unsigned long long)sc.last_seq);
		goto refused;
	}
	if(store__cursor_get(txn, ref->id, cl->username, &od, &orr) != STORE_OK) goto store_failed;
	nr = r.has_read && (uint64_t)r.read > orr ? (uint64_t)r.read : orr;
	nd = max3(od, r.has_delivered ? (uint64_t)r.delivered : 0, nr);
	if(nd == od && nr == orr){
		v = CHAT_CONSUMED;           /* nothing moved: ignored */
		goto done;
	}
	members = store__member_count(txn, ref->id);
	if(store__cursor_put(txn, ref->id, cl->username, nd, nr) != STORE_OK) goto store_failed;
	if(store__commit(txn) != STORE_OK){
		txn = NULL;
		goto store_failed;
	}
	txn = NULL;
	if(members <= chat->cfg.receipt_fanout_max){
		receipt__fan_out(chat, ref->id, cl->username, nd, nr, out);
	}
	v = CHAT_CONSUMED;
	goto done;

store_failed:
	if(store__full(chat->store)){
		/* not stored; a later receipt carries the cursor anyway, so refuse
		 * it rather than cut the member off */
		outbox__clear(out);
		chat__fail(&e, CHAT_E_STORAGE_FULL, "the server's storage is full: receipt not stored");
		goto refused;
	}
	outbox__clear(out);
	v = CHAT_STORE_FAILED;
	goto done;
refused:
	v = message__refuse(chat, cl, ref, NULL, &e, out);
done:
	if(txn) store__abort(txn);
	cJSON_Delete(root);
	return v;
}

int receipt__on_send(struct store_txn *txn, const char *conv, const char *user, uint64_t seq)
{
	return store__cursor_put(txn, conv, user, seq, seq);
}

/* ====================================================================== *
 * Requests: receipts.get, receipts.counts
 * ====================================================================== */

struct cursor_row {
	char user[CHAT_ID_MAX + 1];
	uint64_t delivered, read;
};

struct cursor_table {
	struct store_txn *txn;
	const char *conv;
	struct cursor_row *rows;
	size_t n, cap;
	bool nomem;
};

static int cursor_table_cb(void *ud, const char *user, char role)
{
	struct cursor_table *t = ud;
	if(t->n == t->cap){
		size_t cap = t->cap ? t->cap * 2 : 64;
		struct cursor_row *rows = realloc(t->rows, cap * sizeof(*rows));
		if(!rows){
			t->nomem = true;
			return 1;
		}
		t->rows = rows;
		t->cap = cap;
	}
	snprintf(t->rows[t->n].user, sizeof(t->rows[t->n].user), "%s", user);
	store__cursor_get(t->txn, t->conv, user, &t->rows[t->n].delivered, &t->rows[t->n].read);
	t->n++;
	return 0;
}

/* Loads every current member of conv with their cursors. */
static enum chat_err cursor_table_load(struct cursor_table *t, struct store_txn *txn, const char *conv,
		struct chat_error *e)
{
	memset(t, 0, sizeof(*t));
	t->txn = txn;
	t->conv = conv;
	store__members_each(txn, conv, cursor_table_cb, t);
	if(t->nomem){
		free(t->rows);
		return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	}
	return CHAT_E_OK;
}

/* The "from" of a stored message (into from), or "" when unknown. */
static void message_from(const void *data, size_t len, char from[CHAT_ID_MAX + 1])
{
	cJSON *m = cJSON_ParseWithLength(data, len);
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(m, "from");
	snprintf(from, CHAT_ID_MAX + 1, "%s", cJSON_IsString(f) ? f->valuestring : "");
	cJSON_Delete(m);
}

/* Adds {"of","read_by","delivered_to"} for message seq sent by from: counts
 * of the members other than the sender. */
static bool add_counts(cJSON *o, const struct cursor_table *t, uint64_t seq, const char *from)
{
	size_t of = 0, read = 0, delivered = 0;
	for(size_t i = 0; i < t->n; i++){
		if(!strcmp(t->rows[i].user, from)) continue;
		of++;
		if(t->rows[i].read >= seq) read++;
		if(t->rows[i].delivered >= seq) delivered++;
	}
	return cJSON_AddNumberToObject(o, "of", (double)of) && cJSON_AddNumberToObject(o, "read_by", (double)read)
		&& cJSON_AddNumberToObject(o, "delivered_to", (double)delivered);
}

enum chat_err receipt__get(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	static const char *const fields[] = {"op", "req_id", "conv", "seq", NULL};
	struct store_conv sc;
	struct cursor_table t;
	const char *conv;
	const void *data;
	size_t len;
	char role, from[CHAT_ID_MAX + 1];
	int64_t seq = 0;
	bool has_seq;
	enum chat_err rc;

	if((rc = json__only_fields(args, fields, e)) || (rc = json__req_id(args, "conv", &conv, e))
			|| (rc = json__opt_int(args, "seq", 1, INT64_MAX / 2, &seq, &has_seq, e))
			|| (rc = conv__require_member(txn, conv, user, &sc, &role, e))){
		return rc;
	}
	if(!has_seq) return chat__fail(e, CHAT_E_INVALID_FIELD, "'seq' is required");
	if((uint64_t)seq > sc.last_seq || store__msg_get(txn, conv, (uint64_t)seq, &data, &len) != STORE_OK){
		return chat__fail(e, CHAT_E_INVALID_FIELD, "no message %lld in this conversation", (long long)seq);
	}
	message_from(data, len, from);
	if((rc = cursor_table_load(&t, txn, conv, e))) return rc;

	bool ok = cJSON_AddStringToObject(result, "conv", conv) && cJSON_AddNumberToObject(result, "seq", (double)seq)
		&& cJSON_AddStringToObject(result, "from", from) && add_counts(result, &t, (uint64_t)seq, from);
	/* who exactly: for the group's admins and the message's sender only */
	if(ok && (role == 'a' || !strcmp(user, from))){
		cJSON *readers = cJSON_AddArrayToObject(result, "readers");
		cJSON *delivered = cJSON_AddArrayToObject(result, "delivered");
		ok = readers && delivered;
		for(size_t i = 0; ok && i < t.n; i++){
			if(!strcmp(t.rows[i].user, from)) continue;
			if(t.rows[i].read >= (uint64_t)seq) ok = cJSON_AddItemToArray(readers, cJSON_CreateString(t.rows[i].user));
			if(ok && t.rows[i].delivered >= (uint64_t)seq){
				ok = cJSON_AddItemToArray(delivered, cJSON_CreateString(t.rows[i].user));
			}
		}
	}
	free(t.rows);
	return ok ? CHAT_E_OK : chat__fail(e, CHAT_E_NOMEM, "out of memory");
}

struct counts_walk {
	const struct cursor_table *t;
	cJSON *arr;
	bool nomem;
};

static int counts_cb(void *ud, uint64_t seq, const void *data, size_t len)
{
	struct counts_walk *w = ud;
	char from[CHAT_ID_MAX + 1];
	cJSON *o = cJSON_CreateObject();

	if(!o || !cJSON_AddItemToArray(w->arr, o)){
		cJSON_Delete(o);
		w->nomem = true;
		return 1;
	}
	message_from(data, len, from);
	if(!cJSON_AddNumberToObject(o, "seq", (double)seq) || !cJSON_AddStringToObject(o, "from", from)
			|| !add_counts(o, w->t, seq, from)){
		w->nomem = true;
		return 1;
	}
	return 0;
}

enum chat_err receipt__counts(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	static const char *const fields[] = {"op", "req_id", "conv", "after", "limit", NULL};
	struct store_conv sc;
	struct cursor_table t;
	struct counts_walk w;
	const char *conv;
	int64_t after = 0, limit = 50;
	bool has_after, has_limit;
	uint64_t lo, hi;
	enum chat_err rc;

	if((rc = json__only_fields(args, fields, e)) || (rc = json__req_id(args, "conv", &conv, e))
			|| (rc = json__opt_int(args, "after", 0, INT64_MAX / 2, &after, &has_after, e))
			|| (rc = json__opt_int(args, "limit", 1, chat->cfg.history_limit, &limit, &has_limit, e))
			|| (rc = conv__require_member(txn, conv, user, &sc, NULL, e))){
		return rc;
	}
	if(!has_limit && limit > (int64_t)chat->cfg.history_limit) limit = chat->cfg.history_limit;
	if(has_after){
		lo = (uint64_t)after + 1;
		hi = lo + (uint64_t)limit - 1;
	}else{
		hi = sc.last_seq;
		lo = hi > (uint64_t)limit ? hi - (uint64_t)limit + 1 : 1;
	}
	if((rc = cursor_table_load(&t, txn, conv, e))) return rc;
	w.t = &t;
	w.nomem = false;
	w.arr = cJSON_AddArrayToObject(result, "messages");
	if(w.arr && cJSON_AddStringToObject(result, "conv", conv)){
		store__msgs_range(txn, conv, lo, hi, false, counts_cb, &w);
	}else{
		w.nomem = true;
	}
	free(t.rows);
	return w.nomem ? chat__fail(e, CHAT_E_NOMEM, "out of memory") : CHAT_E_OK;
}
