/*
 * mosquitto-chat: the private header of the protocol core.
 *
 * One section per file. Nothing here includes a mosquitto header or lmdb.h:
 * the core takes plain structs and returns plain results, so unit tests and
 * fuzzers drive it without a broker. plugin.c is the only broker adapter and
 * store.c the only file that knows LMDB (behind store.h).
 */
#ifndef CHAT_H
#define CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "store.h"
#include "jwt.h"

#define CHAT_ID_MAX 64          /* user, conv and cmid ids: 1..64 chars */
#define CHAT_NAME_MAX 128       /* group name, in bytes of UTF-8 */
#define CHAT_REQ_ID_MAX 64
#define CHAT_CMID_ECHO_MAX 256  /* longest cmid string echoed in a send_failed event */

/* ======================================================================
 * config.c — plugin_opt_* options
 * ====================================================================== */

enum chat_fsync {
	CHAT_FSYNC_OFF = 0,     /* commit without fsync: survives a killed broker */
	CHAT_FSYNC_ALWAYS = 1,  /* fsync before the ack: survives power loss */
};

/* ratelimit.c: what a user's token buckets count */
enum chat_rate {
	CHAT_RATE_SEND = 0,     /* publishes on {p}/send/{conv}, duplicates included */
	CHAT_RATE_REQUEST,      /* publishes on {p}/req and {p}/p/{me} */
	CHAT_RATE_RECEIPT,      /* publishes on {p}/receipt/{conv} */
	CHAT_RATE_TYPING,       /* publishes on {p}/typing/{conv} */
	CHAT_RATE_KINDS,
};

#define CHAT_COMMIT_DEFAULT 0xFFFFFFFFu

struct chat_config {
	char *db_path;
	size_t map_size;
	enum chat_fsync fsync;
	unsigned sync_interval_ms;  /* fsync=off: background flush period, 0 = never */
	int journal;                /* acknowledge from the journal, commit LMDB in batches (store.c):
	                             * 1 on, 0 off, -1 (default) on with fsync always, off with fsync off */
	unsigned commit_interval_ms;  /* journal: a tick commits LMDB once the batch is this old;
	                               * CHAT_COMMIT_DEFAULT: 100 with fsync always, 0 (every tick) with off */
	char prefix[CHAT_ID_MAX + 1];
	size_t prefix_len;
	unsigned max_members;
	unsigned max_body;
	unsigned max_payload;
	unsigned history_limit;
	unsigned receipt_fanout_max;   /* groups larger than this store receipts, don't fan out */
	unsigned typing_fanout_max;    /* groups larger than this get no typing events */
	unsigned typing_interval_ms;   /* at most one "typing" fan-out per (user, conv) per interval */
	unsigned typing_ttl_ms;        /* a "typing" state expires this long after its last refresh */
	unsigned presence_grace_ms;    /* "offline" waits this long for a device to come back */
	char **observers;
	size_t observer_count;
	char **push_users;             /* who may read push jobs and write acks (the bridge) */
	size_t push_user_count;
	unsigned push_window_ms;       /* coalescing window per (user, conversation) */
	unsigned push_retry_ms;        /* re-publish a job not acked within this */
	bool push_preview;             /* message text in pushes at all */
	unsigned push_max_devices;     /* push devices per user */
	struct jwt_config jwt;         /* plugin_opt_auth and jwt_* (jwt.h) */
	unsigned stats_interval_ms;    /* stats.c: publish {p}/stats this often, 0 = never */
	unsigned max_conversations_per_user;  /* conversations one user may belong to */
	unsigned max_name;             /* group name, bytes of UTF-8 (<= CHAT_NAME_MAX) */
	unsigned rate[CHAT_RATE_KINDS];              /* ratelimit.c: tokens per second per user, by enum chat_rate; 0 = unlimited */
	unsigned rate_burst[CHAT_RATE_KINDS];        /* ratelimit.c: bucket size, by enum chat_rate */
	unsigned rate_disconnect_after;  /* ratelimit.c: refusals in a row of one kind that drop a connection; 0 = never */
};

void config__defaults(struct chat_config *cfg);
/* Applies one "plugin_opt_<key> <value>" (key without the plugin_opt_ part).
 * Returns 0, or -1 with a human sentence in err. */
int config__set(struct chat_config *cfg, const char *key, const char *value, char *err, size_t errlen);
void config__free(struct chat_config *cfg);
bool config__is_observer(const struct chat_config *cfg, const char *user);

/* ======================================================================
 * json.c — ids, UTF-8, errors and cJSON helpers
 * ====================================================================== */

enum chat_err {
	CHAT_E_OK = 0,
	CHAT_E_TOO_LARGE,
	CHAT_E_INVALID_UTF8,
	CHAT_E_INVALID_JSON,
	CHAT_E_INVALID_ID,
	CHAT_E_INVALID_FIELD,
	CHAT_E_UNKNOWN_FIELD,
	CHAT_E_UNKNOWN_OP,
	CHAT_E_NOT_MEMBER,
	CHAT_E_FORBIDDEN,
	CHAT_E_TOO_MANY_MEMBERS,
	CHAT_E_INVALID_RESPONSE_TOPIC,
	CHAT_E_NOT_SUPPORTED,
	CHAT_E_TOO_MANY_DEVICES,
	CHAT_E_STORAGE_FULL,   /* the LMDB map is full: a write refused, reads go on */
	CHAT_E_RATE_LIMITED,
	CHAT_E_TOO_MANY_CONVERSATIONS,
	CHAT_E_STORE,   /* never sent: the commit failed, the client gets no ack */
	CHAT_E_NOMEM,   /* never sent: treated like CHAT_E_STORE */
};

struct chat_error {
	enum chat_err code;
	char message[200];
	uint32_t retry_after_ms;   /* CHAT_E_RATE_LIMITED: when the next token is due */
};

const char *chat_err__code(enum chat_err code);
/* Fills e and returns code, so callers can `return chat__fail(e, ...)`. */
enum chat_err chat__fail(struct chat_error *e, enum chat_err code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

bool json__valid_id(const char *s, size_t len);
bool json__valid_cmid(const char *s, size_t len);
bool json__valid_utf8(const unsigned char *s, size_t len);
/* Parses a client payload: size, UTF-8, JSON object. */
enum chat_err json__parse_object(const void *payload, size_t len, size_t max, cJSON **out, struct chat_error *e);
/* Refuses any member of obj whose name is not in allowed (NULL-terminated). */
enum chat_err json__only_fields(const cJSON *obj, const char *const *allowed, struct chat_error *e);
/* Reads an optional integer field in [min,max]; *present tells if it was given. */
enum chat_err json__opt_int(const cJSON *obj, const char *name, int64_t min, int64_t max,
		int64_t *out, bool *present, struct chat_error *e);
/* Reads a required id field (user or conv syntax). */
enum chat_err json__req_id(const cJSON *obj, const char *name, const char **out, struct chat_error *e);
/* Prints obj unformatted; the result is malloc'ed (free with cJSON_free). */
char *json__print(const cJSON *obj, size_t *len);
uint64_t json__now_ms(void);
/* Formatting JSON straight into a buffer (the hot path: no cJSON tree). */
#define JSON_U64_MAX 20
size_t json__str_len(const char *s);
char *json__put_str(char *dst, const char *s);
char *json__put_u64(char *dst, uint64_t v);
char *json__put_raw(char *dst, const char *s, size_t n);
char *json__put_plain(char *dst, const char *s, size_t n);
/* One member of a flat object read by json__flat_parse. */
struct json_flat {
	const char *name;
	bool string;        /* a string (else a positive integer of at most 15 digits) */
	bool present;
	const char *str;    /* decoded, NUL-terminated, in the scratch buffer */
	size_t len;
	uint64_t num;
	bool plain;         /* str's bytes need no escaping: it prints as '"' + str + '"' */
};
/* Reads payload as an object whose members are all among f (each at most
 * once) with string values free of \u escapes and control bytes and plain
 * integers; decoded strings go to scratch (len + 1 bytes). Returns false for
 * anything else, valid JSON or not: the caller then takes the general path,
 * which says what is wrong. The payload must be valid UTF-8 already. */
bool json__flat_parse(const char *payload, size_t len, struct json_flat *f, size_t nf, char *scratch);

/* ======================================================================
 * topic.c — the topic router
 * ====================================================================== */

enum topic_kind {
	TOPIC_OUTSIDE = 0,  /* not under the prefix */
	TOPIC_SEND,         /* {p}/send/{conv} */
	TOPIC_TYPING,       /* {p}/typing/{conv} */
	TOPIC_RECEIPT,      /* {p}/receipt/{conv} */
	TOPIC_REQ,          /* {p}/req */
	TOPIC_CONV_OUT,     /* {p}/c/{conv}/{x} */
	TOPIC_USER_OUT,     /* {p}/u/{user}/{x...} */
	TOPIC_PRESENCE,     /* {p}/p/{user} */
	TOPIC_PUSH_JOBS,    /* {p}/push/jobs: plugin -> bridge */
	TOPIC_PUSH_ACK,     /* {p}/push/ack: bridge -> plugin */
	TOPIC_PUSH_STATUS,  /* {p}/push/status: the bridge's retained counters */
	TOPIC_STATS,        /* {p}/stats: the plugin's retained counters (observers read) */
	TOPIC_WILDCARD,     /* a filter with a wildcard where an id or kind goes */
	TOPIC_OTHER,        /* anything else under the prefix */
};

struct topic_ref {
	enum topic_kind kind;
	bool id_valid;                 /* id holds a valid user/conv id */
	char id[CHAT_ID_MAX + 1];
};

/* Classifies a topic or subscription filter. A filter whose first level is a
 * wildcard is TOPIC_OUTSIDE with *leading_wildcard set. */
void topic__parse(const struct chat_config *cfg, const char *topic, struct topic_ref *ref, bool *leading_wildcard);
/* Writes "{prefix}/{a}/{b}[/{c}]" into buf; returns buf or NULL if too long. */
char *topic__build(char *buf, size_t size, const struct chat_config *cfg, const char *a, const char *b, const char *c);
#define CHAT_TOPIC_MAX (CHAT_ID_MAX * 2 + 32)

/* ======================================================================
 * outbox.c — publishes the core asks the adapter to make
 * ====================================================================== */

enum outbox_target {
	OUTBOX_ALL = 0,     /* to every subscriber (the broker checks read ACL) */
	OUTBOX_SENDER = 1,  /* to the publishing device alone */
};

struct outbox_pub {
	struct outbox_pub *next;
	char *topic;
	char *payload;      /* owned by the outbox, freed with free_payload */
	void (*free_payload)(void *);   /* free, or chat->payload_free (the adapter may hand it over) */
	size_t len;
	enum outbox_target target;
	bool correlate;     /* attach the request's correlation data (MQTT 5) */
	int qos;            /* 1 unless set otherwise */
	bool retain;
	bool in_sequence;   /* a stamped message on a conversation's m topic: members must get these in seq order */
	bool as_inbound;    /* the stamped copy of the send being handled: the adapter may deliver it as that
	                       publish itself (payload and topic rewritten in place) instead of publishing a copy */
};

struct chat_outbox {
	struct outbox_pub *head;
	struct outbox_pub **tail;
	struct outbox_pub *last;   /* the entry added last, to adjust qos/retain */
	size_t count;
};

void outbox__init(struct chat_outbox *ob);
/* Takes ownership of payload (malloc'ed) in every case. Returns 0 or -1 (nomem). */
int outbox__add(struct chat_outbox *ob, const char *topic, char *payload, size_t len, enum outbox_target target, bool correlate);
/* Same, for a payload that free_payload frees (freed by it on failure too). */
int outbox__add_owned(struct chat_outbox *ob, const char *topic, char *payload, size_t len,
		void (*free_payload)(void *), enum outbox_target target, bool correlate);
/* Prints obj and queues it; obj stays the caller's. */
int outbox__add_json(struct chat_outbox *ob, const char *topic, const cJSON *obj, enum outbox_target target, bool correlate);
/* Moves every entry of from to the end of ob, in order; from ends empty. */
void outbox__append(struct chat_outbox *ob, struct chat_outbox *from);
void outbox__clear(struct chat_outbox *ob);

/* ======================================================================
 * stats.c — operator counters, published retained on {p}/stats
 * ====================================================================== */

#define CHAT_STATS_CODES 32   /* room for every enum chat_err, present and future */

struct chat_stats {
	uint64_t started_ms;
	uint64_t last_ms;                    /* when the last interval began (0: no tick yet) */
	uint64_t requests, history_requests; /* counted since start */
	uint64_t refused[CHAT_STATS_CODES];  /* refused publishes (send_failed), by code */
	uint64_t request_errors[CHAT_STATS_CODES]; /* {"ok":false} replies, by code */
	uint64_t prev_stored, prev_requests, prev_history; /* at last_ms, for the rates */
	uint64_t kicked;                     /* connections dropped for publishing on while refused */
};

struct chat;
/* A publish was refused with code (one line at each refusal site). */
void stats__refused(struct chat *chat, enum chat_err code);
/* A request was answered {"ok":false} with code. */
void stats__request_error(struct chat *chat, enum chat_err code);
/* Publishes the stats when stats_interval_ms has passed since the last time. */
void stats__tick(struct chat *chat, uint64_t now, struct chat_outbox *out);

/* ======================================================================
 * The core's state and entry points (acl.c, message.c, request.c)
 * ====================================================================== */

struct device;
struct device_user;
struct offline_pending;
struct typing_entry;
struct rate_user;
struct rate_conn;
struct rate_kick_log;

struct chat {
	struct chat_config cfg;
	struct store *store;
	uint64_t (*now_ms)(void);   /* server clock, replaceable by tests */
	/* Allocator of hot-path outbox payloads (stamped messages): malloc/free
	 * by default; the adapter sets the broker's own so it can hand a payload
	 * to the broker without a copy. */
	void *(*payload_alloc)(size_t);
	void (*payload_free)(void *);
	uint64_t stored_msgs;       /* counters, for logs and later stats */
	uint64_t refusals;
	struct device *devices;          /* presence.c: connected devices by connection */
	struct device_user *device_users;/* presence.c: users with >= 1 connected device */
	struct offline_pending *offline_pending; /* presence.c: users whose last device just went */
	struct typing_entry *typing;     /* typing.c: who is typing where */
	struct rate_user *rate_users;    /* ratelimit.c: token buckets of users seen lately */
	uint64_t rate_swept_ms;          /* ratelimit.c: last sweep of idle full buckets */
	struct rate_conn *rate_conns;    /* ratelimit.c: connections in a run of refusals */
	struct rate_kick_log *rate_kick_logs; /* ratelimit.c: users whose kick was logged in the last minute */
	bool push_resend_all;            /* push.c: re-publish every job (at start) */
	uint64_t push_delivered, push_failed, push_unregistered;
	struct chat_stats stats;         /* stats.c */
};

/* Who published: the authenticated username (may be NULL) of one device. */
struct chat_client {
	const void *conn;                /* the broker's connection, an opaque key */
	const char *username;
	const char *client_id;
	int protocol_version;            /* 3, 4 or 5 */
	const char *response_topic;      /* MQTT 5 property, or NULL */
	bool has_correlation;            /* MQTT 5 correlation data present */
};

enum chat_verdict {
	CHAT_PASS = 0,      /* not ours: let the broker route it untouched */
	CHAT_CONSUMED,      /* handled; the inbound copy goes nowhere */
	CHAT_REFUSED,       /* refuse the publish (MQTT 5: PUBACK 0x87) */
	CHAT_STORE_FAILED,  /* commit failed: no PUBACK, drop the connection */
	CHAT_REWRITE,       /* route it with the payload (and retain flag) in chat_rewrite */
	CHAT_DISCONNECT,    /* a persistent flooder: no ack, drop the connection (ratelimit.c) */
};

struct chat_rewrite {
	char *payload;      /* malloc'ed; the adapter takes it */
	size_t len;
	bool retain;
};

enum chat_access {
	CHAT_ACCESS_READ,
	CHAT_ACCESS_WRITE,
	CHAT_ACCESS_SUBSCRIBE,
	CHAT_ACCESS_UNSUBSCRIBE,
};

enum chat_acl {
	CHAT_ACL_ALLOW,
	CHAT_ACL_DENY,
	CHAT_ACL_DEFER,
};

int chat__open(struct chat **out, struct chat_config *cfg, char *err, size_t errlen);
void chat__close(struct chat *chat);

/* acl.c. conn, payload and len matter for writes to the presence topic. */
enum chat_acl acl__check(struct chat *chat, const void *conn, const char *username, enum chat_access access,
		const char *topic, const void *payload, size_t len);

/* chat.c: the message hook's work for one inbound publish; rw is filled when
 * the verdict is CHAT_REWRITE. */
enum chat_verdict chat__handle_publish(struct chat *chat, const struct chat_client *cl, const char *topic,
		const void *payload, size_t len, struct chat_outbox *out, struct chat_rewrite *rw);
/* chat.c: periodic work (typing expiry). */
void chat__tick(struct chat *chat, struct chat_outbox *out);
/* chat.c: a connection ended (clean or not). */
void chat__disconnect(struct chat *chat, const void *conn, struct chat_outbox *out);

enum chat_verdict message__send(struct chat *chat, const struct chat_client *cl, const struct topic_ref *ref,
		const void *payload, size_t len, struct chat_outbox *out);
/* Queues a send_failed event for e to the sending device; returns CHAT_REFUSED. */
enum chat_verdict message__refuse(struct chat *chat, const struct chat_client *cl, const struct topic_ref *ref,
		const char *cmid, const struct chat_error *e, struct chat_outbox *out);
/* Appends a system message to conv inside txn (seq = last_seq + 1) and queues
 * its publish. fields is merged into the message (not consumed). */
enum chat_err message__append_system(struct chat *chat, struct store_txn *txn, const char *conv,
		const char *actor, const char *event, const cJSON *fields, struct chat_outbox *out, struct chat_error *e);
enum chat_err message__history(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_error *e);
/* The stored message of conv at seq as a raw cJSON item (NULL if none). */
cJSON *message__load(struct store_txn *txn, const char *conv, uint64_t seq);

enum chat_verdict request__handle(struct chat *chat, const struct chat_client *cl,
		const void *payload, size_t len, struct chat_outbox *out);

/* ======================================================================
 * conv.c — conversations and members
 * ====================================================================== */

/* Every op: args is the request object, result receives the reply's fields.
 * Writes happen in txn; events and system messages go to out. */
typedef enum chat_err (*conv_op_fn)(struct chat *chat, struct store_txn *txn, const char *user,
		const cJSON *args, cJSON *result, struct chat_outbox *out, struct chat_error *e);

enum chat_err conv__create(struct chat *, struct store_txn *, const char *, const cJSON *, cJSON *, struct chat_outbox *, struct chat_error *);
enum chat_err conv__list(struct chat *, struct store_txn *, const char *, const cJSON *, cJSON *, struct chat_outbox *, struct chat_error *);
enum chat_err conv__get(struct chat *, struct store_txn *, const char *, const cJSON *, cJSON *, struct chat_outbox *, struct chat_error *);
enum chat_err conv__update(struct chat *, struct store_txn *, const char *, const cJSON *, cJSON *, struct chat_outbox *, struct chat_error *);
enum chat_err conv__members_add(struct chat *, struct store_txn *, const char *, const cJSON *, cJSON *, struct chat_outbox *, struct chat_error *);
enum chat_err conv__members_remove(struct chat *, struct store_txn *, const char *, const cJSON *, cJSON *, struct chat_outbox *, struct chat_error *);

/* Loads conv and checks user is a member; role receives 'a' or 'm'. */
enum chat_err conv__require_member(struct store_txn *txn, const char *conv, const char *user,
		struct store_conv *sc, char *role, struct chat_error *e);

/* ======================================================================
 * receipt.c — delivered/read cursors
 * ====================================================================== */

enum chat_verdict receipt__handle(struct chat *chat, const struct chat_client *cl, const struct topic_ref *ref,
		const void *payload, size_t len, struct chat_outbox *out);
/* The sender has read what they sent: moves their cursors to seq in txn. */
int receipt__on_send(struct store_txn *txn, const char *conv, const char *user, uint64_t seq);
enum chat_err receipt__get(struct chat *, struct store_txn *, const char *, const cJSON *, cJSON *, struct chat_outbox *, struct chat_error *);
enum chat_err receipt__counts(struct chat *, struct store_txn *, const char *, const cJSON *, cJSON *, struct chat_outbox *, struct chat_error *);

/* ======================================================================
 * typing.c — typing indicators (memory only)
 * ====================================================================== */

enum chat_verdict typing__handle(struct chat *chat, const struct chat_client *cl, const struct topic_ref *ref,
		const void *payload, size_t len, struct chat_outbox *out);
/* Publishes "idle" for every typing state past its ttl. */
void typing__expire(struct chat *chat, uint64_t now, struct chat_outbox *out);
/* Publishes "idle" for every conversation user was typing in. */
void typing__user_gone(struct chat *chat, const char *user, struct chat_outbox *out);
void typing__free(struct chat *chat);

/* ======================================================================
 * presence.c — connected devices and the retained presence topic
 * ====================================================================== */

/* Notes that conn (a device of user) is connected. */
void presence__track(struct chat *chat, const void *conn, const char *user);
bool presence__user_connected(const struct chat *chat, const char *user);
/* A publish on {p}/p/{user}: validated and stamped into rw. */
enum chat_verdict presence__handle(struct chat *chat, const struct chat_client *cl, const struct topic_ref *ref,
		const void *payload, size_t len, struct chat_outbox *out, struct chat_rewrite *rw);
/* May this payload be written to one's own presence topic? Refuses
 * "offline", the plugin's alone (and what wills say). */
bool presence__may_write(struct chat *chat, const void *conn, const void *payload, size_t len);
/* conn is gone: when it was its user's last device, "offline" is due after
 * presence_grace_ms unless a device of the user turns up meanwhile. */
void presence__disconnect(struct chat *chat, const void *conn, struct chat_outbox *out);
/* Publishes the "offline" states that came due. */
void presence__tick(struct chat *chat, struct chat_outbox *out);
/* At start: republishes every stored presence, turning stale "online"
 * (from a broker that died) into "offline". */
void presence__startup(struct chat *chat, struct chat_outbox *out);
void presence__free(struct chat *chat);
/* Connected devices and users with at least one (stats.c). */
void presence__counts(const struct chat *chat, size_t *devices, size_t *users);

/* ======================================================================
 * push.c — push devices, preferences and the durable push outbox
 * ====================================================================== */

bool push__enabled(const struct chat *chat);
bool push__is_bridge(const struct chat_config *cfg, const char *user);
/* In the transaction storing message seq of conv: jobs for offline members. */
enum chat_err push__on_message(struct chat *chat, struct store_txn *txn, const char *conv, const struct store_conv *sc,
		const char *from, uint64_t seq, const char *body, struct chat_error *e);
/* Publishes jobs whose window ended, or whose ack is overdue. */
void push__tick(struct chat *chat, struct chat_outbox *out);
/* {p}/push/ack from the bridge. */
enum chat_verdict push__ack(struct chat *chat, const struct chat_client *cl, const void *payload, size_t len);
enum chat_err push__devices_register(struct chat *, struct store_txn *, const char *, const cJSON *, cJSON *, struct chat_outbox *, struct chat_error *);
enum chat_err push__devices_unregister(struct chat *, struct store_txn *, const char *, const cJSON *, cJSON *, struct chat_outbox *, struct chat_error *);
enum chat_err push__devices_list(struct chat *, struct store_txn *, const char *, const cJSON *, cJSON *, struct chat_outbox *, struct chat_error *);
enum chat_err push__conv_mute(struct chat *, struct store_txn *, const char *, const cJSON *, cJSON *, struct chat_outbox *, struct chat_error *);
enum chat_err push__conv_preview(struct chat *, struct store_txn *, const char *, const cJSON *, cJSON *, struct chat_outbox *, struct chat_error *);

/* ======================================================================
 * ratelimit.c — token buckets per user (all devices of a user share them)
 * ====================================================================== */

/* "send", "request", …: the option name after "rate_". */
const char *ratelimit__kind_name(enum chat_rate kind);
/* Bucket arithmetic on milli-tokens (pure, for the unit tests). rate is
 * tokens/s (> 0), burst the bucket size in tokens. */
uint64_t ratelimit__refill(uint64_t milli, unsigned rate, unsigned burst, uint64_t elapsed_ms);
/* Takes one token: true, or false with *retry_ms = ms until one is due. */
bool ratelimit__take_one(uint64_t *milli, unsigned rate, uint32_t *retry_ms);
/* Takes a token of kind from the bucket of cl's user at chat->now_ms().
 * Returns CHAT_E_OK or CHAT_E_RATE_LIMITED with e filled (retry_after_ms
 * set), and counts the refusal against cl's connection (a token taken ends
 * its run). Decided before anything is parsed or stored. */
enum chat_err ratelimit__take(struct chat *chat, const struct chat_client *cl, enum chat_rate kind, struct chat_error *e);
/* A send refused by ratelimit__take: the send_failed event, with the
 * payload's cmid echoed when it has one. Returns CHAT_REFUSED. */
enum chat_verdict ratelimit__refuse_send(struct chat *chat, const struct chat_client *cl, const struct topic_ref *ref,
		const void *payload, size_t len, const struct chat_error *e, struct chat_outbox *out);
/* Has cl's connection been refused more than rate_disconnect_after times in
 * a row for one kind? Then it is to be dropped (counted in the stats). */
bool ratelimit__kick(struct chat *chat, const struct chat_client *cl);
/* A kicked connection: true with a log line in line when none was logged
 * for its user in the last minute; false (counted) otherwise. */
bool ratelimit__kick_note(struct chat *chat, const struct chat_client *cl, char *line, size_t size);
/* conn is gone: forget its run of refusals. */
void ratelimit__forget(struct chat *chat, const void *conn);
/* Forgets users whose buckets are all full again and kick notes older than
 * a minute (at most once a second). */
void ratelimit__sweep(struct chat *chat, uint64_t now);
size_t ratelimit__tracked(const struct chat *chat);
void ratelimit__free(struct chat *chat);

#endif
