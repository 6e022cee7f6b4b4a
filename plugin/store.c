/*
 * store.c — the LMDB store (the only file that includes lmdb.h).
 *
 * One environment, fifteen named databases opened once at start. The broker is
 * single-threaded, so there is at most one write transaction at a time; read
 * transactions reuse one handle (mdb_txn_reset / mdb_txn_renew) so an ACL
 * check costs no allocation, and are reset as soon as the caller is done so a
 * reader never pins old pages.
 *
 * Durability modes. sync_each: every commit is fsynced before it returns
 * (LMDB's default). Otherwise MDB_NOSYNC | MDB_WRITEMAP: a commit writes its
 * pages straight into the shared file mapping — no write() per page, which
 * was most of the plugin's cost per message — and returns; the kernel owns
 * the pages from then on, so a killed broker loses nothing, and a flusher
 * thread msyncs every flush_ms so a power loss can take at most that window.
 * The flusher runs beside the broker's loop rather than on its tick because
 * a sync can take milliseconds and the loop must not stall for it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lmdb.h>

#include "store.h"

enum {
	DBI_CONVS,
	DBI_SEQS,
	DBI_MEMBERS,
	DBI_UMEMBERS,
	DBI_MSGS,
	DBI_CMIDS,
	DBI_DIRECTS,
	DBI_CURSORS,
	DBI_PRESENCE,
	DBI_PUSHDEVS,
	DBI_TOKENS,
	DBI_PREFS,
	DBI_PUSHQ,
	DBI_PUSHPEND,
	DBI_META,
	DBI_COUNT
};

static const char *const dbi_names[DBI_COUNT] = {
	"convs", "seqs", "members", "umembers", "msgs", "cmids", "directs", "cursors", "presence",
	"pushdevs", "tokens", "prefs", "pushq", "pushpend", "meta",
};

struct store {
	MDB_env *env;
	MDB_dbi dbi[DBI_COUNT];
	MDB_txn *rtxn;          /* the reusable read transaction, reset when idle */
	bool rtxn_live;
	bool sync_each;
	atomic_bool dirty;      /* commits not yet flushed (sync_each off) */
	unsigned flush_ms;
	bool flusher_running;
	pthread_t flusher;
	pthread_mutex_t flush_lock;
	pthread_cond_t flush_wake;
	bool flusher_stop;      /* under flush_lock */
	bool full;              /* the last write failed with MDB_MAP_FULL */
	uint64_t full_count;    /* writes that failed with MDB_MAP_FULL */
	char last_error[160];
};

struct store_txn {
	struct store *s;
	MDB_txn *txn;
	bool write;
};

/* LMDB keys are at most 511 bytes; our largest, user \0 platform \0 token, is
 * 64+1+7+1+400. */
#define KEY_MAX 511

/* ====================================================================== *
 * Keys
 * ====================================================================== */

static void be64_put(unsigned char *p, uint64_t v)
{
	for(int i = 7; i >= 0; i--){
		p[i] = (unsigned char)(v & 0xff);
		v >>= 8;
	}
}

static uint64_t be64_get(const unsigned char *p)
{
	uint64_t v = 0;
	for(int i = 0; i < 8; i++){
		v = (v << 8) | p[i];
	}
	return v;
}

/* Joins up to three ids with NUL separators into buf; returns the length,
 * or 0 if it would not fit. The last part has no trailing NUL. */
static size_t key_join(unsigned char *buf, const char *a, const char *b, const char *c)
{
	size_t n = 0;
	const char *parts[3] = {a, b, c};
	for(int i = 0; i < 3 && parts[i]; i++){
		size_t l = strlen(parts[i]);
		if(n + l + 1 > KEY_MAX) return 0;
		if(i > 0) buf[n++] = '\0';
		memcpy(buf + n, parts[i], l);
		n += l;
	}
	return n;
}

static int map_rc(struct store *s, int rc, const char *what)
{
	switch(rc){
		case MDB_SUCCESS: return STORE_OK;
		case MDB_NOTFOUND: return STORE_NOTFOUND;
		case MDB_MAP_FULL:
			s->full = true;
			s->full_count++;
			snprintf(s->last_error, sizeof(s->last_error), "%s: %s", what, mdb_strerror(rc));
			return STORE_FULL;
		default:
			snprintf(s->last_error, sizeof(s->last_error), "%s: %s", what, mdb_strerror(rc));
			return STORE_ERR;
	}
}

/* ====================================================================== *
 * Environment
 * ====================================================================== */

/* Flusher thread: msync/fdatasync the environment every flush_ms when
 * something was committed since the last flush, until told to stop. */
static void *flusher_main(void *arg)
{
	struct store *s = arg;
	struct timespec until;

	pthread_mutex_lock(&s->flush_lock);
	while(!s->flusher_stop){
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += s->flush_ms / 1000;
		until.tv_nsec += (long)(s->flush_ms % 1000) * 1000000L;
		if(until.tv_nsec >= 1000000000L){
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&s->flush_wake, &s->flush_lock, &until);
		if(s->flusher_stop) break;
		if(atomic_exchange(&s->dirty, false)){
			pthread_mutex_unlock(&s->flush_lock);
			mdb_env_sync(s->env, 1);
			pthread_mutex_lock(&s->flush_lock);
		}
	}
	pthread_mutex_unlock(&s->flush_lock);
	return NULL;
}

int store__open(struct store **out, const char *path, size_t map_size, bool sync_each, unsigned flush_ms,
		char *err, size_t errlen)
{
	struct store *s;
	MDB_txn *txn = NULL;
	int rc;

	*out = NULL;
	if(mkdir(path, 0750) != 0 && errno != EEXIST){
		snprintf(err, errlen, "cannot create database directory %s: %s", path, strerror(errno));
		return STORE_ERR;
	}
	s = calloc(1, sizeof(*s));
	if(!s){
		snprintf(err, errlen, "out of memory");
		return STORE_ERR;
	}
	s->sync_each = sync_each;
	s->flush_ms = flush_ms;
	atomic_init(&s->dirty, false);
	pthread_mutex_init(&s->flush_lock, NULL);
	pthread_cond_init(&s->flush_wake, NULL);

	if((rc = mdb_env_create(&s->env)) != 0) goto fail;
	if((rc = mdb_env_set_maxdbs(s->env, DBI_COUNT)) != 0) goto fail;
	if((rc = mdb_env_set_mapsize(s->env, map_size)) != 0) goto fail;
	/* NOTLS: the reusable read txn is not tied to a thread slot. NOSYNC
	 * unless every commit must reach the disk before the ack. */
	rc = mdb_env_open(s->env, path, MDB_NOTLS | (sync_each ? 0 : MDB_NOSYNC | MDB_WRITEMAP), 0640);
	if(rc) goto fail;

	if((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0) goto fail;
	for(int i = 0; i < DBI_COUNT; i++){
		if((rc = mdb_dbi_open(txn, dbi_names[i], MDB_CREATE, &s->dbi[i])) != 0) goto fail;
	}
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if(rc) goto fail;
	if(!sync_each && (rc = mdb_env_sync(s->env, 1)) != 0) goto fail;
	if(!sync_each && flush_ms > 0){
		if(pthread_create(&s->flusher, NULL, flusher_main, s) != 0){
			snprintf(err, errlen, "cannot start the database flusher thread");
			mdb_env_close(s->env);
			free(s);
			return STORE_ERR;
		}
		s->flusher_running = true;
	}

	*out = s;
	return STORE_OK;

fail:
	snprintf(err, errlen, "LMDB environment %s: %s", path, mdb_strerror(rc));
	if(txn) mdb_txn_abort(txn);
	if(s->env) mdb_env_close(s->env);
	free(s);
	return rc == MDB_MAP_FULL ? STORE_FULL : STORE_ERR;
}

void store__close(struct store *s)
{
	if(!s) return;
	if(s->flusher_running){
		pthread_mutex_lock(&s->flush_lock);
		s->flusher_stop = true;
		pthread_cond_signal(&s->flush_wake);
		pthread_mutex_unlock(&s->flush_lock);
		pthread_join(s->flusher, NULL);
	}
	if(s->rtxn) mdb_txn_abort(s->rtxn);
	if(s->env){
		if(!s->sync_each) mdb_env_sync(s->env, 1);
		mdb_env_close(s->env);
	}
	pthread_cond_destroy(&s->flush_wake);
	pthread_mutex_destroy(&s->flush_lock);
	free(s);
}

int store__sync(struct store *s)
{
	bool was = atomic_exchange(&s->dirty, false);
	int rc = mdb_env_sync(s->env, 1);
	if(rc != 0 && was) atomic_store(&s->dirty, true);
	return map_rc(s, rc, "sync");
}

const char *store__last_error(const struct store *s)
{
	return s->last_error;
}

bool store__full(const struct store *s)
{
	return s->full;
}

uint64_t store__full_count(const struct store *s)
{
	return s->full_count;
}

size_t store__map_size(const struct store *s)
{
	MDB_envinfo info;
	return mdb_env_info(s->env, &info) == 0 ? info.me_mapsize : 0;
}

/* ====================================================================== *
 * Transactions
 * ====================================================================== */

int store__begin(struct store *s, bool write, struct store_txn **out)
{
	struct store_txn *t;
	int rc;

	*out = NULL;
	t = malloc(sizeof(*t));
	if(!t) return STORE_ERR;
	t->s = s;
	t->write = write;
	if(write){
		s->full = false;
		rc = mdb_txn_begin(s->env, NULL, 0, &t->txn);
	}else if(s->rtxn && !s->rtxn_live){
		rc = mdb_txn_renew(s->rtxn);
		t->txn = s->rtxn;
	}else if(!s->rtxn){
		rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &s->rtxn);
		t->txn = s->rtxn;
	}else{
		/* nested use of the cached reader: give this caller its own */
		rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t->txn);
	}
	if(rc){
		free(t);
		return map_rc(s, rc, "begin");
	}
	if(t->txn == s->rtxn) s->rtxn_live = true;
	*out = t;
	return STORE_OK;
}

static void txn_release(struct store_txn *t)
{
	struct store *s = t->s;
	if(t->txn == s->rtxn){
		mdb_txn_reset(s->rtxn);
		s->rtxn_live = false;
	}else{
		mdb_txn_abort(t->txn);
	}
	free(t);
}

int store__commit(struct store_txn *t)
{
	struct store *s = t->s;
	int rc;

	if(!t->write){
		txn_release(t);
		return STORE_OK;
	}
	rc = mdb_txn_commit(t->txn);
	free(t);
	if(rc == 0 && !s->sync_each) atomic_store(&s->dirty, true);
	return map_rc(s, rc, "commit");
}

void store__abort(struct store_txn *t)
{
	if(!t) return;
	if(t->write){
		mdb_txn_abort(t->txn);
		free(t);
	}else{
		txn_release(t);
	}
}

/* ====================================================================== *
 * Small get/put helpers
 * ====================================================================== */

static int kv_get(struct store_txn *t, int dbi, const void *k, size_t kl, MDB_val *v)
{
	MDB_val key = {kl, (void *)k};
	return map_rc(t->s, mdb_get(t->txn, t->s->dbi[dbi], &key, v), dbi_names[dbi]);
}

static int kv_put(struct store_txn *t, int dbi, const void *k, size_t kl, const void *d, size_t dl)
{
	MDB_val key = {kl, (void *)k};
	MDB_val val = {dl, (void *)d};
	return map_rc(t->s, mdb_put(t->txn, t->s->dbi[dbi], &key, &val, 0), dbi_names[dbi]);
}

static int kv_del(struct store_txn *t, int dbi, const void *k, size_t kl)
{
	MDB_val key = {kl, (void *)k};
	return map_rc(t->s, mdb_del(t->txn, t->s->dbi[dbi], &key, NULL), dbi_names[dbi]);
}

/* Walks every key of dbi that starts with prefix (plen bytes), handing the
 * key's remainder to cb. */
typedef int (*prefix_cb)(void *ud, const unsigned char *rest, size_t rl, const MDB_val *val);

static int prefix_each(struct store_txn *t, int dbi, const unsigned char *prefix, size_t plen, prefix_cb cb, void *ud)
{
	MDB_cursor *cur;
	MDB_val k = {plen, (void *)prefix}, v;
	int rc, out = STORE_OK;

	rc = mdb_cursor_open(t->txn, t->s->dbi[dbi], &cur);
	if(rc) return map_rc(t->s, rc, "cursor");
	rc = mdb_cursor_get(cur, &k, &v, plen ? MDB_SET_RANGE : MDB_FIRST);
	while(rc == 0){
		if(k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0) break;
		out = cb(ud, (const unsigned char *)k.mv_data + plen, k.mv_size - plen, &v);
		if(out) break;
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	if(rc != 0 && rc != MDB_NOTFOUND) return map_rc(t->s, rc, "cursor");
	return out;
}

/* ====================================================================== *
 * Conversations
 * ====================================================================== */

int store__conv_get(struct store_txn *t, const char *conv, struct store_conv *out)
{
	MDB_val v;
	size_t kl = strlen(conv);
	int rc = kv_get(t, DBI_CONVS, conv, kl, &v);
	if(rc) return rc;
	if(v.mv_size < 9) return STORE_ERR;
	const unsigned char *p = v.mv_data;
	size_t nl = v.mv_size - 9;
	if(nl > sizeof(out->name) - 1) nl = sizeof(out->name) - 1;
	out->type = (char)p[0];
	out->created_ms = be64_get(p + 1);
	memcpy(out->name, p + 9, nl);
	out->name[nl] = '\0';
	rc = kv_get(t, DBI_SEQS, conv, kl, &v);
	if(rc == STORE_NOTFOUND){
		out->last_seq = 0;
	}else if(rc){
		return rc;
	}else{
		out->last_seq = v.mv_size == 8 ? be64_get(v.mv_data) : 0;
	}
	return STORE_OK;
}

int store__conv_put(struct store_txn *t, const char *conv, const struct store_conv *c)
{
	unsigned char buf[9 + sizeof(c->name)];
	size_t nl = strlen(c->name);
	buf[0] = (unsigned char)c->type;
	be64_put(buf + 1, c->created_ms);
	memcpy(buf + 9, c->name, nl);
	return kv_put(t, DBI_CONVS, conv, strlen(conv), buf, 9 + nl);
}

int store__seq_put(struct store_txn *t, const char *conv, uint64_t last_seq)
{
	unsigned char buf[8];
	be64_put(buf, last_seq);
	return kv_put(t, DBI_SEQS, conv, strlen(conv), buf, 8);
}

/* ====================================================================== *
 * Members
 * ====================================================================== */

int store__member_get(struct store_txn *t, const char *conv, const char *user, char *role)
{
	unsigned char k[KEY_MAX];
	size_t kl = key_join(k, conv, user, NULL);
	MDB_val v;
	int rc;
	if(!kl) return STORE_NOTFOUND;
	rc = kv_get(t, DBI_MEMBERS, k, kl, &v);
	if(rc) return rc;
	if(role) *role = v.mv_size ? ((const char *)v.mv_data)[0] : 'm';
	return STORE_OK;
}

int store__member_put(struct store_txn *t, const char *conv, const char *user, char role)
{
	unsigned char k[KEY_MAX];
	size_t kl = key_join(k, conv, user, NULL);
	int rc;
	if(!kl) return STORE_ERR;
	rc = kv_put(t, DBI_MEMBERS, k, kl, &role, 1);
	if(rc) return rc;
	kl = key_join(k, user, conv, NULL);
	return kv_put(t, DBI_UMEMBERS, k, kl, "", 0);
}

int store__member_del(struct store_txn *t, const char *conv, const char *user)
{
	unsigned char k[KEY_MAX];
	size_t kl = key_join(k, conv, user, NULL);
	int rc;
	if(!kl) return STORE_NOTFOUND;
	rc = kv_del(t, DBI_MEMBERS, k, kl);
	if(rc) return rc;
	kl = key_join(k, user, conv, NULL);
	rc = kv_del(t, DBI_UMEMBERS, k, kl);
	return rc == STORE_NOTFOUND ? STORE_OK : rc;
}

struct id_walk {
	store_member_cb member_cb;
	store_id_cb id_cb;
	void *ud;
	size_t count;
};

static int member_walk_cb(void *ud, const unsigned char *rest, size_t rl, const MDB_val *val)
{
	struct id_walk *w = ud;
	char id[65];
	if(rl == 0 || rl > 64) return STORE_OK;   /* not a member key of ours */
	memcpy(id, rest, rl);
	id[rl] = '\0';
	w->count++;
	if(w->member_cb) return w->member_cb(w->ud, id, val->mv_size ? ((const char *)val->mv_data)[0] : 'm');
	if(w->id_cb) return w->id_cb(w->ud, id);
	return STORE_OK;
}

/* The prefix "id\0" selects exactly the keys of that id. */
static size_t id_prefix(unsigned char *k, const char *id)
{
	size_t l = strlen(id);
	if(l + 1 > KEY_MAX) return 0;
	memcpy(k, id, l);
	k[l] = '\0';
	return l + 1;
}

int store__members_each(struct store_txn *t, const char *conv, store_member_cb cb, void *ud)
{
	unsigned char k[KEY_MAX];
	struct id_walk w = {cb, NULL, ud, 0};
	size_t kl = id_prefix(k, conv);
	return kl ? prefix_each(t, DBI_MEMBERS, k, kl, member_walk_cb, &w) : STORE_OK;
}

size_t store__member_count(struct store_txn *t, const char *conv)
{
	unsigned char k[KEY_MAX];
	struct id_walk w = {NULL, NULL, NULL, 0};
	size_t kl = id_prefix(k, conv);
	if(kl) prefix_each(t, DBI_MEMBERS, k, kl, member_walk_cb, &w);
	return w.count;
}

int store__user_convs_each(struct store_txn *t, const char *user, store_id_cb cb, void *ud)
{
	unsigned char k[KEY_MAX];
	struct id_walk w = {NULL, cb, ud, 0};
	size_t kl = id_prefix(k, user);
	return kl ? prefix_each(t, DBI_UMEMBERS, k, kl, member_walk_cb, &w) : STORE_OK;
}

/* ====================================================================== *
 * Messages
 * ====================================================================== */

static size_t msg_key(unsigned char *k, const char *conv, uint64_t seq)
{
	size_t l = id_prefix(k, conv);
	if(!l || l + 8 > KEY_MAX) return 0;
	be64_put(k + l, seq);
	return l + 8;
}

int store__msg_put(struct store_txn *t, const char *conv, uint64_t seq, const void *data, size_t len)
{
	unsigned char k[KEY_MAX];
	size_t kl = msg_key(k, conv, seq);
	if(!kl) return STORE_ERR;
	return kv_put(t, DBI_MSGS, k, kl, data, len);
}

int store__msg_get(struct store_txn *t, const char *conv, uint64_t seq, const void **data, size_t *len)
{
	unsigned char k[KEY_MAX];
	size_t kl = msg_key(k, conv, seq);
	MDB_val v;
	int rc;
	if(!kl) return STORE_NOTFOUND;
	rc = kv_get(t, DBI_MSGS, k, kl, &v);
	if(rc) return rc;
	*data = v.mv_data;
	*len = v.mv_size;
	return STORE_OK;
}

int store__msgs_range(struct store_txn *t, const char *conv, uint64_t lo, uint64_t hi, bool descending,
		store_msg_cb cb, void *ud)
{
	unsigned char k[KEY_MAX];
	size_t kl, pl;
	MDB_cursor *cur;
	MDB_val key, v;
	int rc, out = STORE_OK;

	if(lo > hi) return STORE_OK;
	pl = id_prefix(k, conv);
	kl = msg_key(k, conv, descending ? hi : lo);
	if(!kl) return STORE_OK;
	rc = mdb_cursor_open(t->txn, t->s->dbi[DBI_MSGS], &cur);
	if(rc) return map_rc(t->s, rc, "cursor");

	key.mv_size = kl;
	key.mv_data = k;
	rc = mdb_cursor_get(cur, &key, &v, MDB_SET_RANGE);
	if(descending){
		/* SET_RANGE lands on the first key >= (conv, hi): step back unless
		 * it is (conv, hi) itself. */
		if(rc == MDB_NOTFOUND){
			rc = mdb_cursor_get(cur, &key, &v, MDB_LAST);
		}else if(rc == 0 && (key.mv_size != kl || memcmp(key.mv_data, k, kl) != 0)){
			rc = mdb_cursor_get(cur, &key, &v, MDB_PREV);
		}
	}
	while(rc == 0){
		if(key.mv_size != pl + 8 || memcmp(key.mv_data, k, pl) != 0) break;
		uint64_t seq = be64_get((const unsigned char *)key.mv_data + pl);
		if(seq < lo || seq > hi) break;
		out = cb(ud, seq, v.mv_data, v.mv_size);
		if(out) break;
		rc = mdb_cursor_get(cur, &key, &v, descending ? MDB_PREV : MDB_NEXT);
	}
	mdb_cursor_close(cur);
	if(rc != 0 && rc != MDB_NOTFOUND) return map_rc(t->s, rc, "cursor");
	return out;
}

/* ====================================================================== *
 * Idempotency and direct-pair index
 * ====================================================================== */

int store__cmid_get(struct store_txn *t, const char *conv, const char *from, const char *cmid, uint64_t *seq)
{
	unsigned char k[KEY_MAX];
	size_t kl = key_join(k, conv, from, cmid);
	MDB_val v;
	int rc;
	if(!kl) return STORE_NOTFOUND;
	rc = kv_get(t, DBI_CMIDS, k, kl, &v);
	if(rc) return rc;
	if(v.mv_size != 8) return STORE_ERR;
	*seq = be64_get(v.mv_data);
	return STORE_OK;
}

int store__cmid_put(struct store_txn *t, const char *conv, const char *from, const char *cmid, uint64_t seq)
{
	unsigned char k[KEY_MAX], v[8];
	size_t kl = key_join(k, conv, from, cmid);
	if(!kl) return STORE_ERR;
	be64_put(v, seq);
	return kv_put(t, DBI_CMIDS, k, kl, v, 8);
}

static size_t pair_key(unsigned char *k, const char *a, const char *b)
{
	return strcmp(a, b) < 0 ? key_join(k, a, b, NULL) : key_join(k, b, a, NULL);
}

int store__direct_get(struct store_txn *t, const char *a, const char *b, char conv[65])
{
	unsigned char k[KEY_MAX];
	size_t kl = pair_key(k, a, b);
	MDB_val v;
	int rc;
	if(!kl) return STORE_NOTFOUND;
	rc = kv_get(t, DBI_DIRECTS, k, kl, &v);
	if(rc) return rc;
	if(v.mv_size == 0 || v.mv_size > 64) return STORE_ERR;
	memcpy(conv, v.mv_data, v.mv_size);
	conv[v.mv_size] = '\0';
	return STORE_OK;
}

int store__direct_put(struct store_txn *t, const char *a, const char *b, const char *conv)
{
	unsigned char k[KEY_MAX];
	size_t kl = pair_key(k, a, b);
	if(!kl) return STORE_ERR;
	return kv_put(t, DBI_DIRECTS, k, kl, conv, strlen(conv));
}

/* ====================================================================== *
 * Receipt cursors
 * ====================================================================== */

int store__cursor_get(struct store_txn *t, const char *conv, const char *user, uint64_t *delivered, uint64_t *read)
{
	unsigned char k[KEY_MAX];
	size_t kl = key_join(k, conv, user, NULL);
	MDB_val v;
	int rc;

	*delivered = *read = 0;
	if(!kl) return STORE_OK;
	rc = kv_get(t, DBI_CURSORS, k, kl, &v);
	if(rc == STORE_NOTFOUND) return STORE_OK;
	if(rc) return rc;
	if(v.mv_size != 16) return STORE_ERR;
	*delivered = be64_get(v.mv_data);
	*read = be64_get((const unsigned char *)v.mv_data + 8);
	return STORE_OK;
}

int store__cursor_put(struct store_txn *t, const char *conv, const char *user, uint64_t delivered, uint64_t read)
{
	unsigned char k[KEY_MAX], v[16];
	size_t kl = key_join(k, conv, user, NULL);
	if(!kl) return STORE_ERR;
	be64_put(v, delivered);
	be64_put(v + 8, read);
	return kv_put(t, DBI_CURSORS, k, kl, v, 16);
}

/* ====================================================================== *
 * Presence
 * ====================================================================== */

int store__presence_get(struct store_txn *t, const char *user, bool *online, uint64_t *ts)
{
	MDB_val v;
	int rc = kv_get(t, DBI_PRESENCE, user, strlen(user), &v);
	if(rc) return rc;
	if(v.mv_size != 9) return STORE_ERR;
	*online = ((const char *)v.mv_data)[0] == '1';
	*ts = be64_get((const unsigned char *)v.mv_data + 1);
	return STORE_OK;
}

int store__presence_put(struct store_txn *t, const char *user, bool online, uint64_t ts)
{
	unsigned char v[9];
	v[0] = online ? '1' : '0';
	be64_put(v + 1, ts);
	return kv_put(t, DBI_PRESENCE, user, strlen(user), v, 9);
}

struct presence_walk {
	store_presence_cb cb;
	void *ud;
};

static int presence_walk_cb(void *ud, const unsigned char *rest, size_t rl, const MDB_val *val)
{
	struct presence_walk *w = ud;
	char user[65];
	if(rl == 0 || rl > 64 || val->mv_size != 9) return STORE_OK;
	memcpy(user, rest, rl);
	user[rl] = '\0';
	return w->cb(w->ud, user, ((const char *)val->mv_data)[0] == '1', be64_get((const unsigned char *)val->mv_data + 1));
}

int store__presence_each(struct store_txn *t, store_presence_cb cb, void *ud)
{
	struct presence_walk w = {cb, ud};
	return prefix_each(t, DBI_PRESENCE, (const unsigned char *)"", 0, presence_walk_cb, &w);
}

/* ====================================================================== *
 * Push devices, token owners, preferences
 * ====================================================================== */

int store__pushdev_put(struct store_txn *t, const char *user, const char *platform, const char *token, const char *locale)
{
	unsigned char k[KEY_MAX];
	size_t kl = key_join(k, user, platform, token);
	int rc;
	if(!kl) return STORE_ERR;
	rc = kv_put(t, DBI_PUSHDEVS, k, kl, locale ? locale : "", locale ? strlen(locale) : 0);
	if(rc) return rc;
	kl = key_join(k, platform, token, NULL);
	return kv_put(t, DBI_TOKENS, k, kl, user, strlen(user));
}

int store__pushdev_del(struct store_txn *t, const char *user, const char *platform, const char *token)
{
	unsigned char k[KEY_MAX];
	char owner[65];
	size_t kl = key_join(k, user, platform, token);
	int rc;
	if(!kl) return STORE_NOTFOUND;
	rc = kv_del(t, DBI_PUSHDEVS, k, kl);
	if(rc) return rc;
	/* the token index follows only if it still points at this user */
	if(store__token_owner(t, platform, token, owner) == STORE_OK && !strcmp(owner, user)){
		kl = key_join(k, platform, token, NULL);
		rc = kv_del(t, DBI_TOKENS, k, kl);
		if(rc == STORE_NOTFOUND) rc = STORE_OK;
	}
	return rc;
}

struct pushdev_walk {
	store_pushdev_cb cb;
	void *ud;
};

static int pushdev_walk_cb(void *ud, const unsigned char *rest, size_t rl, const MDB_val *val)
{
	struct pushdev_walk *w = ud;
	char platform[16], token[401], locale[64];
	const unsigned char *sep = memchr(rest, '\0', rl);
	size_t pl, tl;
	if(!sep) return STORE_OK;
	pl = (size_t)(sep - rest);
	tl = rl - pl - 1;
	if(pl >= sizeof(platform) || tl >= sizeof(token) || val->mv_size >= sizeof(locale)) return STORE_OK;
	memcpy(platform, rest, pl);
	platform[pl] = '\0';
	memcpy(token, sep + 1, tl);
	token[tl] = '\0';
	memcpy(locale, val->mv_data, val->mv_size);
	locale[val->mv_size] = '\0';
	return w->cb(w->ud, platform, token, locale);
}

int store__pushdevs_each(struct store_txn *t, const char *user, store_pushdev_cb cb, void *ud)
{
	unsigned char k[KEY_MAX];
	struct pushdev_walk w = {cb, ud};
	size_t kl = id_prefix(k, user);
	return kl ? prefix_each(t, DBI_PUSHDEVS, k, kl, pushdev_walk_cb, &w) : STORE_OK;
}

int store__token_owner(struct store_txn *t, const char *platform, const char *token, char *owner)
{
	unsigned char k[KEY_MAX];
	size_t kl = key_join(k, platform, token, NULL);
	MDB_val v;
	int rc;
	if(!kl) return STORE_NOTFOUND;
	rc = kv_get(t, DBI_TOKENS, k, kl, &v);
	if(rc) return rc;
	if(v.mv_size == 0 || v.mv_size > 64) return STORE_ERR;
	memcpy(owner, v.mv_data, v.mv_size);
	owner[v.mv_size] = '\0';
	return STORE_OK;
}

int store__pref_get(struct store_txn *t, const char *conv, const char *user, unsigned *flags)
{
	unsigned char k[KEY_MAX];
	size_t kl = key_join(k, conv, user, NULL);
	MDB_val v;
	int rc;
	*flags = 0;
	if(!kl) return STORE_OK;
	rc = kv_get(t, DBI_PREFS, k, kl, &v);
	if(rc == STORE_NOTFOUND) return STORE_OK;
	if(rc) return rc;
	*flags = v.mv_size ? ((const unsigned char *)v.mv_data)[0] : 0;
	return STORE_OK;
}

int store__pref_put(struct store_txn *t, const char *conv, const char *user, unsigned flags)
{
	unsigned char k[KEY_MAX], f = (unsigned char)flags;
	size_t kl = key_join(k, conv, user, NULL);
	if(!kl) return STORE_ERR;
	if(flags == 0){
		int rc = kv_del(t, DBI_PREFS, k, kl);
		return rc == STORE_NOTFOUND ? STORE_OK : rc;
	}
	return kv_put(t, DBI_PREFS, k, kl, &f, 1);
}

/* ====================================================================== *
 * The push outbox
 * ====================================================================== */

int store__job_put(struct store_txn *t, uint64_t id, uint64_t due_ms, uint64_t sent_ms, const char *json, size_t len)
{
	unsigned char k[8];
	MDB_val key = {8, k}, val = {16 + len, NULL};
	int rc;
	be64_put(k, id);
	/* MDB_RESERVE: write the record in place, no staging copy */
	rc = mdb_put(t->txn, t->s->dbi[DBI_PUSHQ], &key, &val, MDB_RESERVE);
	if(rc) return map_rc(t->s, rc, "pushq");
	be64_put(val.mv_data, due_ms);
	be64_put((unsigned char *)val.mv_data + 8, sent_ms);
	memcpy((unsigned char *)val.mv_data + 16, json, len);
	return STORE_OK;
}

int store__job_get(struct store_txn *t, uint64_t id, uint64_t *due_ms, uint64_t *sent_ms, const char **json, size_t *len)
{
	unsigned char k[8];
	MDB_val v;
	int rc;
	be64_put(k, id);
	rc = kv_get(t, DBI_PUSHQ, k, 8, &v);
	if(rc) return rc;
	if(v.mv_size < 16) return STORE_ERR;
	*due_ms = be64_get(v.mv_data);
	*sent_ms = be64_get((const unsigned char *)v.mv_data + 8);
	*json = (const char *)v.mv_data + 16;
	*len = v.mv_size - 16;
	return STORE_OK;
}

int store__job_del(struct store_txn *t, uint64_t id)
{
	unsigned char k[8];
	be64_put(k, id);
	return kv_del(t, DBI_PUSHQ, k, 8);
}

struct job_walk {
	store_job_cb cb;
	void *ud;
	size_t count;
};

static int job_walk_cb(void *ud, const unsigned char *rest, size_t rl, const MDB_val *val)
{
	struct job_walk *w = ud;
	if(rl != 8 || val->mv_size < 16) return STORE_OK;
	w->count++;
	if(!w->cb) return STORE_OK;
	return w->cb(w->ud, be64_get(rest), be64_get(val->mv_data), be64_get((const unsigned char *)val->mv_data + 8),
			(const char *)val->mv_data + 16, val->mv_size - 16);
}

int store__jobs_each(struct store_txn *t, store_job_cb cb, void *ud)
{
	struct job_walk w = {cb, ud, 0};
	return prefix_each(t, DBI_PUSHQ, (const unsigned char *)"", 0, job_walk_cb, &w);
}

size_t store__job_count(struct store_txn *t)
{
	MDB_stat st;
	if(mdb_stat(t->txn, t->s->dbi[DBI_PUSHQ], &st)) return 0;
	return st.ms_entries;
}

int store__pending_get(struct store_txn *t, const char *user, const char *conv, uint64_t *id)
{
	unsigned char k[KEY_MAX];
	size_t kl = key_join(k, user, conv, NULL);
	MDB_val v;
	int rc;
	if(!kl) return STORE_NOTFOUND;
	rc = kv_get(t, DBI_PUSHPEND, k, kl, &v);
	if(rc) return rc;
	if(v.mv_size != 8) return STORE_ERR;
	*id = be64_get(v.mv_data);
	return STORE_OK;
}

int store__pending_put(struct store_txn *t, const char *user, const char *conv, uint64_t id)
{
	unsigned char k[KEY_MAX], v[8];
	size_t kl = key_join(k, user, conv, NULL);
	if(!kl) return STORE_ERR;
	be64_put(v, id);
	return kv_put(t, DBI_PUSHPEND, k, kl, v, 8);
}

int store__pending_del(struct store_txn *t, const char *user, const char *conv)
{
	unsigned char k[KEY_MAX];
	size_t kl = key_join(k, user, conv, NULL);
	int rc;
	if(!kl) return STORE_OK;
	rc = kv_del(t, DBI_PUSHPEND, k, kl);
	return rc == STORE_NOTFOUND ? STORE_OK : rc;
}

int store__next_id(struct store_txn *t, const char *name, uint64_t *id)
{
	MDB_val v;
	unsigned char buf[8];
	uint64_t cur = 0;
	int rc = kv_get(t, DBI_META, name, strlen(name), &v);
	if(rc == STORE_OK && v.mv_size == 8) cur = be64_get(v.mv_data);
	else if(rc != STORE_NOTFOUND && rc != STORE_OK) return rc;
	be64_put(buf, cur + 1);
	rc = kv_put(t, DBI_META, name, strlen(name), buf, 8);
	if(rc == STORE_OK) *id = cur + 1;
	return rc;
}

/* ====================================================================== *
 * Usage (operator stats)
 * ====================================================================== */

int store__usage(struct store *s, struct store_usage *u)
{
	MDB_envinfo info;
	MDB_stat st;
	const char *dir = NULL;
	char file[4096];
	struct stat fs;
	int rc;

	memset(u, 0, sizeof(*u));
	if((rc = mdb_env_info(s->env, &info)) != 0 || (rc = mdb_env_stat(s->env, &st)) != 0){
		snprintf(s->last_error, sizeof(s->last_error), "env info: %s", mdb_strerror(rc));
		return STORE_ERR;
	}
	u->map_bytes = info.me_mapsize;
	u->used_bytes = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
	if(mdb_env_get_path(s->env, &dir) == 0 && dir
			&& snprintf(file, sizeof(file), "%s/data.mdb", dir) < (int)sizeof(file)
			&& stat(file, &fs) == 0){
		u->file_bytes = (uint64_t)fs.st_size;
		u->disk_bytes = (uint64_t)fs.st_blocks * 512u;   /* WRITEMAP files are sparse */
	}
	return STORE_OK;
}
