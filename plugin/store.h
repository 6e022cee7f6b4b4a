/*
 * store.h — the durable store, behind a small interface.
 *
 * store.c is the only file that includes lmdb.h. Every call works inside a
 * transaction; values handed to callbacks or returned by pointer are only
 * valid until the transaction ends: copy what you keep.
 *
 * Key layout (all ids are 1..64 chars without NUL, so "\0" separates fields
 * and byte order is (id, id) order; seqs are 8-byte big-endian so byte order
 * is numeric order):
 *   convs     conv                      -> type(1) created_ms(8 BE) name(…)
 *   members   conv \0 user              -> role (1: 'a' admin, 'm' member)
 *   umembers  user \0 conv              -> (empty)   reverse index
 *   msgs      conv \0 seq(8 BE)         -> the stamped JSON, as delivered; a conv's last_seq is its last key
 *   cmids     conv \0 from \0 cmid      -> seq (8 BE)
 *             conv \0 user              -> delivered (8 BE) read (8 BE): receipt cursors, beside
 *                                         the user's cmids so a send dirties one B-tree for both
 *   directs   userA \0 userB (A < B)    -> conv
 *   presence  user                      -> state(1: '1' online, '0' offline) ts_ms (8 BE)
 *   pushdevs  user \0 platform \0 token  -> locale
 *   tokens    platform \0 token          -> user      (a token belongs to one user)
 *   prefs     conv \0 user              -> flags (1 byte: STORE_PREF_*)
 *   pushq     job id (8 BE)             -> due_ms (8 BE) sent_ms (8 BE) job JSON
 *   pushpend  user \0 conv              -> job id (8 BE) of the job still collecting messages
 *   meta      name                      -> counters (8 BE); "format" -> on-disk format (8 BE, now 3)
 */
#ifndef CHAT_STORE_H
#define CHAT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;
struct store_txn;

enum store_rc {
	STORE_OK = 0,
	STORE_NOTFOUND = 1,
	STORE_FULL = 2,      /* the map is full: raise plugin_opt_map_size */
	STORE_ERR = 3,       /* any other failure; see store__last_error() */
	STORE_EXISTS = 4,    /* store__cmid_claim: the key was there already */
};

struct store_conv {
	char type;                   /* 'd' direct, 'g' group */
	uint64_t created_ms;
	char name[128 + 1];
	uint64_t last_seq;
};

/* Opens (creating if needed) the environment in directory path.
 * sync_each: fsync every commit (power-loss safe) or not (process-crash safe).
 * flush_ms (sync_each off): a background thread flushes commits to disk this
 * often, bounding what a power loss can take; 0 leaves it to the kernel. */
int store__open(struct store **out, const char *path, size_t map_size, bool sync_each, unsigned flush_ms,
		char *err, size_t errlen);
/* Everything store__open takes, and the journal (see "Journal" in store.c):
 * journal: writes are acknowledged from the journal and committed to LMDB in
 * batches by store__tick; commit_ms (journal on): a tick commits the batch
 * once it is this old (0: every tick); journal_size: bytes (0: 4 MiB). A
 * journal left by an earlier run is applied at open whatever journal says. */
struct store_opts {
	size_t map_size;
	bool sync_each;
	unsigned flush_ms;
	bool journal;
	unsigned commit_ms;
	size_t journal_size;
};
int store__open_ex(struct store **out, const char *path, const struct store_opts *o, char *err, size_t errlen);
void store__close(struct store *s);
/* The broker's tick: commits the journal's batch when it is due. */
int store__tick(struct store *s);
/* What the journal did: records written (and their bytes), batch commits
 * that carried records, redos (a write txn that wrote and aborted), records
 * applied at open; the last lsn, bytes used in this round, its size. */
struct store_journal_stats {
	bool on;
	uint64_t records, bytes, commits, redos, replayed, lsn;
	size_t used, size;
};
void store__journal_stats(const struct store *s, struct store_journal_stats *st);
/* Flushes what fsync-less commits left in the page cache. */
int store__sync(struct store *s);
const char *store__last_error(const struct store *s);
/* Did the last write transaction fail because the map is full (MDB_MAP_FULL)?
 * Reset by every store__begin(write). */
bool store__full(const struct store *s);
/* How many writes have failed with MDB_MAP_FULL since the store opened. */
uint64_t store__full_count(const struct store *s);
/* The map size in effect (bytes), for the operator's log line. */
size_t store__map_size(const struct store *s);

int store__begin(struct store *s, bool write, struct store_txn **txn);
/* Commits and frees txn whatever the result. */
int store__commit(struct store_txn *txn);
void store__abort(struct store_txn *txn);

int store__conv_get(struct store_txn *txn, const char *conv, struct store_conv *out);
int store__conv_put(struct store_txn *txn, const char *conv, const struct store_conv *c);

/* role: 'a' or 'm'. */
int store__member_get(struct store_txn *txn, const char *conv, const char *user, char *role);
int store__member_put(struct store_txn *txn, const char *conv, const char *user, char role);
int store__member_del(struct store_txn *txn, const char *conv, const char *user);
/* Calls cb for each member of conv in user order; a non-zero return stops
 * the walk and is returned. */
typedef int (*store_member_cb)(void *ud, const char *user, char role);
int store__members_each(struct store_txn *txn, const char *conv, store_member_cb cb, void *ud);
size_t store__member_count(struct store_txn *txn, const char *conv);
/* Calls cb for each conversation user belongs to, in conv order. */
typedef int (*store_id_cb)(void *ud, const char *id);
int store__user_convs_each(struct store_txn *txn, const char *user, store_id_cb cb, void *ud);

int store__msg_put(struct store_txn *txn, const char *conv, uint64_t seq, const void *data, size_t len);
int store__msg_get(struct store_txn *txn, const char *conv, uint64_t seq, const void **data, size_t *len);
/* Walks messages of conv with lo <= seq <= hi, ascending or descending, until
 * cb returns non-zero (returned) or the range ends (STORE_OK). */
typedef int (*store_msg_cb)(void *ud, uint64_t seq, const void *data, size_t len);
int store__msgs_range(struct store_txn *txn, const char *conv, uint64_t lo, uint64_t hi, bool descending,
		store_msg_cb cb, void *ud);

int store__cmid_get(struct store_txn *txn, const char *conv, const char *from, const char *cmid, uint64_t *seq);
int store__cmid_put(struct store_txn *txn, const char *conv, const char *from, const char *cmid, uint64_t seq);
/* Records cmid -> *seq unless cmid was recorded before: then STORE_EXISTS and
 * *seq receives the stored seq (nothing written). */
int store__cmid_claim(struct store_txn *txn, const char *conv, const char *from, const char *cmid, uint64_t *seq);

int store__direct_get(struct store_txn *txn, const char *a, const char *b, char conv[65]);
int store__direct_put(struct store_txn *txn, const char *a, const char *b, const char *conv);

/* Receipt cursors of user in conv; both 0 when none is stored. */
int store__cursor_get(struct store_txn *txn, const char *conv, const char *user, uint64_t *delivered, uint64_t *read);
int store__cursor_put(struct store_txn *txn, const char *conv, const char *user, uint64_t delivered, uint64_t read);

/* Last known presence of user: online or not, and since when (ms). */
int store__presence_get(struct store_txn *txn, const char *user, bool *online, uint64_t *ts);
int store__presence_put(struct store_txn *txn, const char *user, bool online, uint64_t ts);
typedef int (*store_presence_cb)(void *ud, const char *user, bool online, uint64_t ts);
int store__presence_each(struct store_txn *txn, store_presence_cb cb, void *ud);

/* Push devices of a user. */
int store__pushdev_put(struct store_txn *txn, const char *user, const char *platform, const char *token, const char *locale);
int store__pushdev_del(struct store_txn *txn, const char *user, const char *platform, const char *token);
typedef int (*store_pushdev_cb)(void *ud, const char *platform, const char *token, const char *locale);
int store__pushdevs_each(struct store_txn *txn, const char *user, store_pushdev_cb cb, void *ud);
/* Who a (platform, token) belongs to; owner must hold 65 bytes. */
int store__token_owner(struct store_txn *txn, const char *platform, const char *token, char *owner);

/* Per-(conversation, user) preferences. */
#define STORE_PREF_MUTED 0x01
#define STORE_PREF_NO_PREVIEW 0x02
int store__pref_get(struct store_txn *txn, const char *conv, const char *user, unsigned *flags);
int store__pref_put(struct store_txn *txn, const char *conv, const char *user, unsigned flags);

/* The push outbox. json/len point into the map: valid until the txn ends. */
int store__job_put(struct store_txn *txn, uint64_t id, uint64_t due_ms, uint64_t sent_ms, const char *json, size_t len);
int store__job_get(struct store_txn *txn, uint64_t id, uint64_t *due_ms, uint64_t *sent_ms, const char **json, size_t *len);
int store__job_del(struct store_txn *txn, uint64_t id);
typedef int (*store_job_cb)(void *ud, uint64_t id, uint64_t due_ms, uint64_t sent_ms, const char *json, size_t len);
int store__jobs_each(struct store_txn *txn, store_job_cb cb, void *ud);
size_t store__job_count(struct store_txn *txn);
int store__pending_get(struct store_txn *txn, const char *user, const char *conv, uint64_t *id);
int store__pending_put(struct store_txn *txn, const char *user, const char *conv, uint64_t id);
int store__pending_del(struct store_txn *txn, const char *user, const char *conv);

/* Size of the environment (stats): data file size and disk blocks it uses,
 * the map size, and the bytes of the map in use (pages up to the last one). */
struct store_usage {
	uint64_t file_bytes, disk_bytes, map_bytes, used_bytes;
};
int store__usage(struct store *s, struct store_usage *u);

/* The in-memory read cache of store__conv_get and store__member_get (see
 * "Read cache" in store.c): lookups answered from it (hits) or from LMDB
 * (misses, counted only where the cache could be used), entries held, times
 * a full table was cleared, the bytes it takes, and its generation. */
struct store_cache_stats {
	uint64_t conv_hits, conv_misses, conv_clears;
	uint64_t member_hits, member_misses, member_clears;
	size_t conv_entries, member_entries, bytes;
	uint64_t generation;
};
void store__cache_stats(const struct store *s, struct store_cache_stats *st);

/* Returns the next value (from 1) of the named counter. */
int store__next_id(struct store_txn *txn, const char *name, uint64_t *id);

#endif
