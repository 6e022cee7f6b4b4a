/*
 * acl.c — who may publish, subscribe to and receive which chat topic.
 *
 * The read check runs on every delivery (the broker calls it per subscriber
 * and message), so it is the real fence: a member removed a moment ago stops
 * receiving on a subscription made while they were a member, and a '#'
 * subscriber never sees what it may not read. Subscribe checks refuse early
 * what can never be read.
 *
 * Writes to inbound topics are allowed to any user with a valid name: the
 * message hook checks membership itself, so that a refusal can carry a
 * send_failed event with a specific code (an ACL denial here would be silent).
 */
#include <string.h>

#include "chat.h"

static bool is_member(struct chat *chat, const char *conv, const char *user)
{
	struct store_txn *txn;
	int rc;
	if(store__begin(chat->store, false, &txn) != STORE_OK) return false;
	rc = store__member_get(txn, conv, user, NULL);
	store__abort(txn);
	return rc == STORE_OK;
}

struct share_walk {
	struct store_txn *txn;
	const char *other;
	bool found;
};

static int share_cb(void *ud, const char *conv)
{
	struct share_walk *w = ud;
	if(store__member_get(w->txn, conv, w->other, NULL) == STORE_OK){
		w->found = true;
		return 1;
	}
	return 0;
}

/* Does user share a conversation with other? Walks user's conversations. */
static bool shares_conv(struct chat *chat, const char *user, const char *other)
{
	struct share_walk w = {NULL, other, false};
	if(store__begin(chat->store, false, &w.txn) != STORE_OK) return false;
	store__user_convs_each(w.txn, user, share_cb, &w);
	store__abort(w.txn);
	return w.found;
}

/* What a reader (subscribe or delivery) may see of an outbound topic. */
static enum chat_acl check_read(struct chat *chat, const char *user, bool observer, const struct topic_ref *ref)
{
	switch(ref->kind){
		case TOPIC_SEND:
		case TOPIC_TYPING:
		case TOPIC_RECEIPT:
		case TOPIC_REQ:
			return CHAT_ACL_DENY;   /* inbound: nobody, observers included */
		case TOPIC_CONV_OUT:
			if(observer) return CHAT_ACL_ALLOW;
			return ref->id_valid && is_member(chat, ref->id, user) ? CHAT_ACL_ALLOW : CHAT_ACL_DENY;
		case TOPIC_USER_OUT:
			if(observer) return CHAT_ACL_ALLOW;
			return ref->id_valid && !strcmp(ref->id, user) ? CHAT_ACL_ALLOW : CHAT_ACL_DENY;
		case TOPIC_PUSH_JOBS:
			/* device tokens: the bridge's alone, not even observers */
			return push__is_bridge(&chat->cfg, user) ? CHAT_ACL_ALLOW : CHAT_ACL_DENY;
		case TOPIC_PUSH_ACK:
			return CHAT_ACL_DENY;
		case TOPIC_PUSH_STATUS:
			return observer || push__is_bridge(&chat->cfg, user) ? CHAT_ACL_ALLOW : CHAT_ACL_DENY;
		case TOPIC_STATS:
			return observer ? CHAT_ACL_ALLOW : CHAT_ACL_DENY;   /* operators' counters */
		case TOPIC_PRESENCE:
			if(observer) return CHAT_ACL_ALLOW;
			if(!ref->id_valid) return CHAT_ACL_DENY;
			if(!strcmp(ref->id, user)) return CHAT_ACL_ALLOW;
			return shares_conv(chat, user, ref->id) ? CHAT_ACL_ALLOW : CHAT_ACL_DENY;
		default:
			return observer ? CHAT_ACL_ALLOW : CHAT_ACL_DENY;
	}
}

static enum chat_acl check_write(struct chat *chat, const void *conn, const char *user, bool observer,
		const struct topic_ref *ref, const void *payload, size_t len)
{
	if(observer) return CHAT_ACL_DENY;
	switch(ref->kind){
		case TOPIC_SEND:
		case TOPIC_TYPING:
		case TOPIC_RECEIPT:
		case TOPIC_REQ:
			return CHAT_ACL_ALLOW;
		case TOPIC_PUSH_ACK:
		case TOPIC_PUSH_STATUS:
			return push__is_bridge(&chat->cfg, user) ? CHAT_ACL_ALLOW : CHAT_ACL_DENY;
		case TOPIC_PRESENCE:
			if(!ref->id_valid || strcmp(ref->id, user) != 0) return CHAT_ACL_DENY;
			return presence__may_write(chat, conn, payload, len) ? CHAT_ACL_ALLOW : CHAT_ACL_DENY;
		default:
			return CHAT_ACL_DENY;   /* outbound topics are the plugin's alone */
	}
}

enum chat_acl acl__check(struct chat *chat, const void *conn, const char *username, enum chat_access access,
		const char *topic, const void *payload, size_t len)
{
	struct topic_ref ref;
	bool leading_wildcard, observer, named;

	topic__parse(&chat->cfg, topic, &ref, &leading_wildcard);
	named = username && json__valid_id(username, strlen(username));
	observer = named && config__is_observer(&chat->cfg, username);

	if(ref.kind == TOPIC_OUTSIDE){
		/* Not ours, except that a filter like '#' also covers our topics:
		 * observers may make it (the read check still applies per message);
		 * for anyone else, the other plugins decide. */
		if(access == CHAT_ACCESS_SUBSCRIBE && leading_wildcard && observer) return CHAT_ACL_ALLOW;
		return CHAT_ACL_DEFER;
	}
	if(access == CHAT_ACCESS_UNSUBSCRIBE) return CHAT_ACL_ALLOW;
	if(!named) return CHAT_ACL_DENY;

	switch(access){
		case CHAT_ACCESS_WRITE:
			return check_write(chat, conn, username, observer, &ref, payload, len);
		case CHAT_ACCESS_SUBSCRIBE:
			/* subscribing is a chat action of a connected device (presence.c) */
			if(conn) presence__track(chat, conn, username);
			/* a bridge (re)subscribing gets the jobs it was sent and may have
			 * lost at once, not after push_retry_ms */
			if(ref.kind == TOPIC_PUSH_JOBS && push__is_bridge(&chat->cfg, username)) chat->push_resend_all = true;
			/* fall through */
		case CHAT_ACCESS_READ:
			if(ref.kind == TOPIC_WILDCARD || ref.kind == TOPIC_OTHER){
				return observer ? CHAT_ACL_ALLOW : CHAT_ACL_DENY;
			}
			return check_read(chat, username, observer, &ref);
		default:
			return CHAT_ACL_DENY;
	}
}
