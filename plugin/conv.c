/*
 * conv.c — conversations and their members: conv.create/list/get/update,
 * members.add/remove.
 *
 * Rules: a direct conversation has exactly its two members (role member),
 * no name, and one id per pair of users; a group has a name, 1..max_members
 * members and at least one admin while it has members (the creator first; if
 * the last admin leaves, the member with the smallest user id). Every change
 * is a system message in the conversation's sequence and a conv.added /
 * conv.removed event on each affected user's event topic.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "chat.h"

/* ====================================================================== *
 * Helpers
 * ====================================================================== */

enum chat_err conv__require_member(struct store_txn *txn, const char *conv, const char *user,
		struct store_conv *sc, char *role, struct chat_error *e)
{
	if(store__conv_get(txn, conv, sc) != STORE_OK || store__member_get(txn, conv, user, role) != STORE_OK){
		return chat__fail(e, CHAT_E_NOT_MEMBER, "you are not a member of this conversation");
	}
	return CHAT_E_OK;
}

struct conv_count {
	size_t n, max;
};

static int conv_count_cb(void *ud, const char *id)
{
	struct conv_count *c = ud;
	(void)id;
	return ++c->n >= c->max;
}

/* Refuses (too_many_conversations) when user already belongs to
 * max_conversations_per_user conversations: one more would exceed it. Costs
 * a walk of at most that many index entries. */
static enum chat_err conv__check_room(struct chat *chat, struct store_txn *txn, const char *user, struct chat_error *e)
{
	struct conv_count c = {0, chat->cfg.max_conversations_per_user};
	int rc = store__user_convs_each(txn, user, conv_count_cb, &c);
	if(c.n >= c.max){
		return chat__fail(e, CHAT_E_TOO_MANY_CONVERSATIONS, "%s already belongs to %u conversations, the limit",
				user, chat->cfg.max_conversations_per_user);
	}
	return rc == STORE_OK ? CHAT_E_OK : chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
}

/* conv__check_room for each user of a cJSON array of strings. */
static enum chat_err conv__check_rooms(struct chat *chat, struct store_txn *txn, const cJSON *users,
		struct chat_error *e)
{
	const cJSON *it;
	enum chat_err rc;
	cJSON_ArrayForEach(it, users){
		if((rc = conv__check_room(chat, txn, it->valuestring, e))) return rc;
	}
	return CHAT_E_OK;
}

/* Makes a fresh conversation id: kind ('d' or 'g') + "_" + 12 base62. */
static enum chat_err conv__new_id(struct store_txn *txn, char kind, char id[CHAT_ID_MAX + 1], struct chat_error *e)
{
	static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
	struct store_conv sc;

	for(int attempt = 0; attempt < 8; attempt++){
		unsigned char r[12];
		if(getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)){
			return chat__fail(e, CHAT_E_STORE, "no randomness for a conversation id");
		}
		id[0] = kind;
		id[1] = '_';
		for(size_t i = 0; i < sizeof(r); i++){
			id[2 + i] = b62[r[i] % 62];
		}
		id[2 + sizeof(r)] = '\0';
		if(store__conv_get(txn, id, &sc) == STORE_NOTFOUND) return CHAT_E_OK;
	}
	return chat__fail(e, CHAT_E_STORE, "could not find a free conversation id");
}

static const char *type_name(char type)
{
	return type == 'd' ? "direct" : "group";
}

struct members_json {
	cJSON *arr;
	bool with_roles;
	bool nomem;
};

static int members_json_cb(void *ud, const char *user, char role)
{
	struct members_json *m = ud;
	cJSON *it;
	if(m->with_roles){
		it = cJSON_CreateObject();
		if(it && (!cJSON_AddStringToObject(it, "user", user)
				|| !cJSON_AddStringToObject(it, "role", role == 'a' ? "admin" : "member"))){
			cJSON_Delete(it);
			it = NULL;
		}
	}else{
		it = cJSON_CreateString(user);
	}
	if(!it || !cJSON_AddItemToArray(m->arr, it)){
		cJSON_Delete(it);
		m->nomem = true;
		return 1;
	}
	return 0;
}

/* Adds "members" (names, or {user, role} objects) of conv to obj. */
static bool add_members(struct store_txn *txn, const char *conv, cJSON *obj, bool with_roles)
{
	struct members_json m = {cJSON_AddArrayToObject(obj, "members"), with_roles, false};
	if(!m.arr) return false;
	store__members_each(txn, conv, members_json_cb, &m);
	return !m.nomem;
}

/* {"conv","type","name","last_seq","members":[{"user","role"}]} as result.conv */
static enum chat_err add_conv_object(struct store_txn *txn, const char *conv, cJSON *result, struct chat_error *e)
{
	struct store_conv sc;
	cJSON *o;

	if(store__conv_get(txn, conv, &sc) != STORE_OK) return chat__fail(e, CHAT_E_STORE, "conversation vanished");
	o = cJSON_AddObjectToObject(result, "conv");
	if(!o || !cJSON_AddStringToObject(o, "conv", conv) || !cJSON_AddStringToObject(o, "type", type_name(sc.type))
			|| !(sc.type == 'g' ? cJSON_AddStringToObject(o, "name", sc.name) : cJSON_AddNullToObject(o, "name"))
			|| !cJSON_AddNumberToObject(o, "last_seq", (double)sc.last_seq)
			|| !add_members(txn, conv, o, true)){
		return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	}
	return CHAT_E_OK;
}

/* Queues {"event": ev, "conv", "by"} to every device of user. */
static enum chat_err notify_user(struct chat *chat, const char *user, const char *ev, const char *conv,
		const char *by, struct chat_outbox *out, struct chat_error *e)
{
	char topic[CHAT_TOPIC_MAX];
	cJSON *o = cJSON_CreateObject();
	int rc = -1;
	if(o && topic__build(topic, sizeof(topic), &chat->cfg, "u", user, "event")
			&& cJSON_AddStringToObject(o, "event", ev) && cJSON_AddStringToObject(o, "conv", conv)
			&& cJSON_AddStringToObject(o, "by", by)){
		rc = outbox__add_json(out, topic, o, OUTBOX_ALL, false);
	}
	cJSON_Delete(o);
	return rc ? chat__fail(e, CHAT_E_NOMEM, "out of memory") : CHAT_E_OK;
}

/* Reads a list of user ids (1..max entries, folded for duplicates) into a
 * new cJSON array of strings. */
static enum chat_err read_users(const cJSON *args, const char *name, size_t min, size_t max, cJSON **out,
		struct chat_error *e)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(args, name), *it;
	cJSON *users;
	size_t n = 0;

	*out = NULL;
	if(!arr) return chat__fail(e, CHAT_E_INVALID_FIELD, "'%s' is required", name);
	if(!cJSON_IsArray(arr)) return chat__fail(e, CHAT_E_INVALID_FIELD, "'%s' must be an array of user ids", name);
	/* duplicates are folded by a walk of the users kept so far: bound the entries so one request's folding
	 * stays O(max^2) however long the payload */
	if((size_t)cJSON_GetArraySize(arr) > 2 * max){
		return chat__fail(e, CHAT_E_TOO_MANY_MEMBERS, "'%s' has more than %zu entries", name, 2 * max);
	}
	users = cJSON_CreateArray();
	if(!users) return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	cJSON_ArrayForEach(it, arr){
		const cJSON *seen;
		bool dup = false;
		if(!cJSON_IsString(it)){
			cJSON_Delete(users);
			return chat__fail(e, CHAT_E_INVALID_FIELD, "'%s' must be an array of user ids", name);
		}
		if(!json__valid_id(it->valuestring, strlen(it->valuestring))){
			cJSON_Delete(users);
			return chat__fail(e, CHAT_E_INVALID_ID, "'%.64s' in '%s' is not a valid user id", it->valuestring, name);
		}
		cJSON_ArrayForEach(seen, users){
			if(!strcmp(seen->valuestring, it->valuestring)){
				dup = true;
				break;
			}
		}
		if(dup) continue;
		if(++n > max){
			cJSON_Delete(users);
			return chat__fail(e, CHAT_E_TOO_MANY_MEMBERS, "'%s' lists more than %zu users", name, max);
		}
		if(!cJSON_AddItemToArray(users, cJSON_CreateString(it->valuestring))){
			cJSON_Delete(users);
			return chat__fail(e, CHAT_E_NOMEM, "out of memory");
		}
	}
	if(n < min){
		cJSON_Delete(users);
		return chat__fail(e, CHAT_E_INVALID_FIELD, "'%s' must list at least %zu user(s)", name, min);
	}
	*out = users;
	return CHAT_E_OK;
}

static enum chat_err read_name(const struct chat *chat, const cJSON *args, const char **name, struct chat_error *e)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(args, "name");
	size_t len;
	if(!it) return chat__fail(e, CHAT_E_INVALID_FIELD, "'name' is required");
	if(!cJSON_IsString(it)) return chat__fail(e, CHAT_E_INVALID_FIELD, "'name' must be a string");
	len = strlen(it->valuestring);
	if(len == 0 || len > chat->cfg.max_name){
		return chat__fail(e, CHAT_E_INVALID_FIELD, "'name' must be 1-%u bytes", chat->cfg.max_name);
	}
	*name = it->valuestring;
	return CHAT_E_OK;
}

/* Writes a system message with {"users": users} and/or {"name": name}. */
static enum chat_err system_event(struct chat *chat, struct store_txn *txn, const char *conv, const char *actor,
		const char *event, const cJSON *users, const char *name, struct chat_outbox *out, struct chat_error *e)
{
	cJSON *fields = cJSON_CreateObject();
	enum chat_err rc;
	if(!fields || (users && !cJSON_AddItemReferenceToObject(fields, "users", (cJSON *)users))
			|| (name && !cJSON_AddStringToObject(fields, "name", name))){
		cJSON_Delete(fields);
		return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	}
	rc = message__append_system(chat, txn, conv, actor, event, fields, out, e);
	cJSON_Delete(fields);
	return rc;
}

/* ====================================================================== *
 * conv.create
 * ====================================================================== */

static enum chat_err create_direct(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	static const char *const fields[] = {"op", "req_id", "type", "with", NULL};
	struct store_conv sc = {.type = 'd'};
	char conv[CHAT_ID_MAX + 1];
	const char *with;
	cJSON *users;
	enum chat_err rc;

	if((rc = json__only_fields(args, fields, e))) return rc;
	if((rc = json__req_id(args, "with", &with, e))) return rc;
	if(!strcmp(with, user)) return chat__fail(e, CHAT_E_INVALID_FIELD, "'with' must be another user");

	if(store__direct_get(txn, user, with, conv) == STORE_OK){
		if((rc = add_conv_object(txn, conv, result, e))) return rc;
		return cJSON_AddBoolToObject(result, "created", false) ? CHAT_E_OK : chat__fail(e, CHAT_E_NOMEM, "oom");
	}
	if((rc = conv__check_room(chat, txn, user, e)) || (rc = conv__check_room(chat, txn, with, e))) return rc;
	if((rc = conv__new_id(txn, 'd', conv, e))) return rc;
	sc.created_ms = chat->now_ms();
	if(store__conv_put(txn, conv, &sc) || store__member_put(txn, conv, user, 'm')
			|| store__member_put(txn, conv, with, 'm') || store__direct_put(txn, user, with, conv)){
		return chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
	}
	users = cJSON_CreateArray();
	if(!users || !cJSON_AddItemToArray(users, cJSON_CreateString(user))
			|| !cJSON_AddItemToArray(users, cJSON_CreateString(with))){
		cJSON_Delete(users);
		return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	}
	rc = system_event(chat, txn, conv, user, "created", users, NULL, out, e);
	cJSON_Delete(users);
	if(rc || (rc = notify_user(chat, user, "conv.added", conv, user, out, e))
			|| (rc = notify_user(chat, with, "conv.added", conv, user, out, e))
			|| (rc = add_conv_object(txn, conv, result, e))){
		return rc;
	}
	return cJSON_AddBoolToObject(result, "created", true) ? CHAT_E_OK : chat__fail(e, CHAT_E_NOMEM, "oom");
}

static enum chat_err create_group(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	static const char *const fields[] = {"op", "req_id", "type", "name", "members", NULL};
	struct store_conv sc = {.type = 'g'};
	char conv[CHAT_ID_MAX + 1];
	const char *name;
	cJSON *users = NULL, *it, *all = NULL;
	enum chat_err rc;

	if((rc = json__only_fields(args, fields, e))) return rc;
	if((rc = read_name(chat, args, &name, e))) return rc;
	/* read one more than allowed: the creator may be in the list or not */
	if((rc = read_users(args, "members", 0, chat->cfg.max_members, &users, e))) return rc;

	/* creator first, then the others in the order given */
	all = cJSON_CreateArray();
	if(!all || !cJSON_AddItemToArray(all, cJSON_CreateString(user))){
		rc = chat__fail(e, CHAT_E_NOMEM, "out of memory");
		goto out;
	}
	cJSON_ArrayForEach(it, users){
		if(strcmp(it->valuestring, user) != 0) cJSON_AddItemToArray(all, cJSON_CreateString(it->valuestring));
	}
	if((size_t)cJSON_GetArraySize(all) > chat->cfg.max_members){
		rc = chat__fail(e, CHAT_E_TOO_MANY_MEMBERS, "a group has at most %u members", chat->cfg.max_members);
		goto out;
	}
	if((rc = conv__check_rooms(chat, txn, all, e))) goto out;
	if((rc = conv__new_id(txn, 'g', conv, e))) goto out;
	sc.created_ms = chat->now_ms();
	snprintf(sc.name, sizeof(sc.name), "%s", name);
	if(store__conv_put(txn, conv, &sc)){
		rc = chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
		goto out;
	}
	cJSON_ArrayForEach(it, all){
		if(store__member_put(txn, conv, it->valuestring, it == all->child ? 'a' : 'm')){
			rc = chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
			goto out;
		}
	}
	if((rc = system_event(chat, txn, conv, user, "created", all, name, out, e))) goto out;
	cJSON_ArrayForEach(it, all){
		if((rc = notify_user(chat, it->valuestring, "conv.added", conv, user, out, e))) goto out;
	}
	if((rc = add_conv_object(txn, conv, result, e))) goto out;
	if(!cJSON_AddBoolToObject(result, "created", true)) rc = chat__fail(e, CHAT_E_NOMEM, "out of memory");
out:
	cJSON_Delete(users);
	cJSON_Delete(all);
	return rc;
}

enum chat_err conv__create(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(args, "type");
	if(cJSON_IsString(type) && !strcmp(type->valuestring, "direct")){
		return create_direct(chat, txn, user, args, result, out, e);
	}
	if(cJSON_IsString(type) && !strcmp(type->valuestring, "group")){
		return create_group(chat, txn, user, args, result, out, e);
	}
	return chat__fail(e, CHAT_E_INVALID_FIELD, "'type' must be \"direct\" or \"group\"");
}

/* ====================================================================== *
 * conv.list, conv.get
 * ====================================================================== */

struct list_walk {
	struct store_txn *txn;
	const char *user;
	cJSON *arr;
	bool nomem;
};

static int list_cb(void *ud, const char *conv)
{
	struct list_walk *w = ud;
	struct store_conv sc;
	cJSON *o, *last;

	if(store__conv_get(w->txn, conv, &sc) != STORE_OK) return 0;
	o = cJSON_CreateObject();
	if(!o || !cJSON_AddItemToArray(w->arr, o)){
		cJSON_Delete(o);
		w->nomem = true;
		return 1;
	}
	uint64_t delivered, read;
	store__cursor_get(w->txn, conv, w->user, &delivered, &read);
	if(read > sc.last_seq) read = sc.last_seq;
	last = message__load(w->txn, conv, sc.last_seq);
	if(!cJSON_AddStringToObject(o, "conv", conv) || !cJSON_AddStringToObject(o, "type", type_name(sc.type))
			|| !(sc.type == 'g' ? cJSON_AddStringToObject(o, "name", sc.name) : cJSON_AddNullToObject(o, "name"))
			|| !add_members(w->txn, conv, o, false)
			|| !cJSON_AddNumberToObject(o, "last_seq", (double)sc.last_seq)
			|| !cJSON_AddNumberToObject(o, "read_seq", (double)read)
			|| !cJSON_AddNumberToObject(o, "unread", (double)(sc.last_seq - read))
			|| !cJSON_AddItemToObject(o, "last", last ? last : cJSON_CreateNull())){
		w->nomem = true;
		return 1;
	}
	return 0;
}

enum chat_err conv__list(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	static const char *const fields[] = {"op", "req_id", NULL};
	struct list_walk w = {txn, user, NULL, false};
	enum chat_err rc;

	if((rc = json__only_fields(args, fields, e))) return rc;
	w.arr = cJSON_AddArrayToObject(result, "conversations");
	if(!w.arr) return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	if(store__user_convs_each(txn, user, list_cb, &w) != STORE_OK && !w.nomem){
		return chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
	}
	return w.nomem ? chat__fail(e, CHAT_E_NOMEM, "out of memory") : CHAT_E_OK;
}

enum chat_err conv__get(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	static const char *const fields[] = {"op", "req_id", "conv", NULL};
	struct store_conv sc;
	const char *conv;
	enum chat_err rc;

	if((rc = json__only_fields(args, fields, e)) || (rc = json__req_id(args, "conv", &conv, e))
			|| (rc = conv__require_member(txn, conv, user, &sc, NULL, e))){
		return rc;
	}
	return add_conv_object(txn, conv, result, e);
}

/* ====================================================================== *
 * conv.update
 * ====================================================================== */

/* Loads conv for a change by user: a group, and user an admin unless
 * self_ok (leaving). */
static enum chat_err require_group_admin(struct store_txn *txn, const char *conv, const char *user, bool self_ok,
		struct chat_error *e)
{
	struct store_conv sc;
	char role;
	enum chat_err rc;

	if((rc = conv__require_member(txn, conv, user, &sc, &role, e))) return rc;
	if(sc.type != 'g') return chat__fail(e, CHAT_E_FORBIDDEN, "a direct conversation cannot be changed");
	if(role != 'a' && !self_ok) return chat__fail(e, CHAT_E_FORBIDDEN, "only an admin of the group may do this");
	return CHAT_E_OK;
}

enum chat_err conv__update(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	static const char *const fields[] = {"op", "req_id", "conv", "name", NULL};
	struct store_conv sc;
	const char *conv, *name;
	enum chat_err rc;

	if((rc = json__only_fields(args, fields, e)) || (rc = json__req_id(args, "conv", &conv, e))
			|| (rc = require_group_admin(txn, conv, user, false, e)) || (rc = read_name(chat, args, &name, e))){
		return rc;
	}
	if(store__conv_get(txn, conv, &sc) != STORE_OK) return chat__fail(e, CHAT_E_STORE, "conversation vanished");
	if(strcmp(sc.name, name) != 0){
		snprintf(sc.name, sizeof(sc.name), "%s", name);
		if(store__conv_put(txn, conv, &sc)) return chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
		if((rc = system_event(chat, txn, conv, user, "renamed", NULL, name, out, e))) return rc;
	}
	return add_conv_object(txn, conv, result, e);
}

/* ====================================================================== *
 * members.add, members.remove
 * ====================================================================== */

enum chat_err conv__members_add(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	static const char *const fields[] = {"op", "req_id", "conv", "users", NULL};
	const char *conv;
	cJSON *users = NULL, *added = NULL, *it;
	enum chat_err rc;

	if((rc = json__only_fields(args, fields, e)) || (rc = json__req_id(args, "conv", &conv, e))
			|| (rc = require_group_admin(txn, conv, user, false, e))
			|| (rc = read_users(args, "users", 1, chat->cfg.max_members, &users, e))){
		return rc;
	}
	added = cJSON_CreateArray();
	if(!added){
		rc = chat__fail(e, CHAT_E_NOMEM, "out of memory");
		goto out;
	}
	cJSON_ArrayForEach(it, users){
		if(store__member_get(txn, conv, it->valuestring, NULL) == STORE_NOTFOUND){
			cJSON_AddItemToArray(added, cJSON_CreateString(it->valuestring));
		}
	}
	if(store__member_count(txn, conv) + (size_t)cJSON_GetArraySize(added) > chat->cfg.max_members){
		rc = chat__fail(e, CHAT_E_TOO_MANY_MEMBERS, "a group has at most %u members", chat->cfg.max_members);
		goto out;
	}
	if((rc = conv__check_rooms(chat, txn, added, e))) goto out;
	cJSON_ArrayForEach(it, added){
		if(store__member_put(txn, conv, it->valuestring, 'm')){
			rc = chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
			goto out;
		}
	}
	if(cJSON_GetArraySize(added) > 0){
		if((rc = system_event(chat, txn, conv, user, "members_added", added, NULL, out, e))) goto out;
		cJSON_ArrayForEach(it, added){
			if((rc = notify_user(chat, it->valuestring, "conv.added", conv, user, out, e))) goto out;
		}
	}
	if((rc = add_conv_object(txn, conv, result, e))) goto out;
	cJSON_AddItemToObject(result, "added", added);
	added = NULL;
out:
	cJSON_Delete(users);
	cJSON_Delete(added);
	return rc;
}

struct first_member {
	char user[CHAT_ID_MAX + 1];
	bool any, admin;
};

static int first_member_cb(void *ud, const char *user, char role)
{
	struct first_member *f = ud;
	if(!f->any){
		snprintf(f->user, sizeof(f->user), "%s", user);
		f->any = true;
	}
	if(role == 'a'){
		f->admin = true;
		return 1;
	}
	return 0;
}

/* If a group with members has no admin left, promotes the member with the
 * smallest user id. */
static enum chat_err ensure_admin(struct chat *chat, struct store_txn *txn, const char *conv, const char *actor,
		struct chat_outbox *out, struct chat_error *e)
{
	struct first_member f = {{0}, false, false};
	cJSON *users;
	enum chat_err rc;

	store__members_each(txn, conv, first_member_cb, &f);
	if(!f.any || f.admin) return CHAT_E_OK;
	if(store__member_put(txn, conv, f.user, 'a')) return chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
	users = cJSON_CreateArray();
	if(!users || !cJSON_AddItemToArray(users, cJSON_CreateString(f.user))){
		cJSON_Delete(users);
		return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	}
	rc = system_event(chat, txn, conv, actor, "admin_changed", users, NULL, out, e);
	cJSON_Delete(users);
	return rc;
}

enum chat_err conv__members_remove(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	static const char *const fields[] = {"op", "req_id", "conv", "users", NULL};
	const char *conv;
	cJSON *users = NULL, *removed = NULL, *it;
	bool only_self;
	enum chat_err rc;

	if((rc = json__only_fields(args, fields, e)) || (rc = json__req_id(args, "conv", &conv, e))
			|| (rc = read_users(args, "users", 1, chat->cfg.max_members, &users, e))){
		return rc;
	}
	only_self = cJSON_GetArraySize(users) == 1 && !strcmp(users->child->valuestring, user);
	if((rc = require_group_admin(txn, conv, user, only_self, e))) goto out;

	removed = cJSON_CreateArray();
	if(!removed){
		rc = chat__fail(e, CHAT_E_NOMEM, "out of memory");
		goto out;
	}
	cJSON_ArrayForEach(it, users){
		if(store__member_get(txn, conv, it->valuestring, NULL) == STORE_OK){
			cJSON_AddItemToArray(removed, cJSON_CreateString(it->valuestring));
		}
	}
	if(cJSON_GetArraySize(removed) > 0){
		/* the system message is written while they are still members; it is
		 * delivered after the commit, to the members that remain */
		if((rc = system_event(chat, txn, conv, user, "members_removed", removed, NULL, out, e))) goto out;
		cJSON_ArrayForEach(it, removed){
			if(store__member_del(txn, conv, it->valuestring)){
				rc = chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
				goto out;
			}
			if((rc = notify_user(chat, it->valuestring, "conv.removed", conv, user, out, e))) goto out;
		}
		if((rc = ensure_admin(chat, txn, conv, user, out, e))) goto out;
	}
	if((rc = add_conv_object(txn, conv, result, e))) goto out;
	cJSON_AddItemToObject(result, "removed", removed);
	removed = NULL;
out:
	cJSON_Delete(users);
	cJSON_Delete(removed);
	return rc;
}
