/*
 * store.c — the LMDB store (the only file that includes lmdb.h).
 *
 * One environment, thirteen named databases opened once at start. The broker is
 * single-threaded, so there is at most one write transaction at a time; read
 * transactions reuse one handle (mdb_txn_reset / mdb_txn_renew) so an ACL
 * check costs no allocation, and are reset as soon as the caller is done so a
 * reader never pins old pages. The reused reader is renewed only when a
 * lookup reaches LMDB: one the read cache answers (below) costs no renew.
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
#include <sys/random.h>
#include <sys/stat.h>

#include <lmdb.h>

#include "journal.h"
#include "store.h"

enum {
	DBI_CONVS,
	DBI_MEMBERS,
	DBI_UMEMBERS,
	DBI_MSGS,
	DBI_CMIDS,
	DBI_DIRECTS,
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
	"convs", "members", "umembers", "msgs", "cmids", "directs", "presence",
	"pushdevs", "tokens", "prefs", "pushq", "pushpend", "meta",
};

/* What a write txn has noted for the read cache (see "Read cache"). */
enum txn_pending { PENDING_NONE, PENDING_ONE, PENDING_MANY };

struct store_txn {
	struct store *s;
	MDB_txn *txn;
	bool write;
	bool wrote_cm;          /* wrote convs or members: the generation moves at commit */
	bool wrote_msgs;        /* wrote msgs: last_seq of pending_conv moves at commit */
	uint64_t epoch;         /* s->epoch at begin: an older one means an older snapshot */
	enum txn_pending pending;
	uint64_t pending_seq;   /* the highest seq put in pending_conv */
	char pending_conv[65];
	bool failed;            /* journaled: an LMDB write failed, the batch must be redone */
};

/* One table of the read cache: open addressing, linear probing, never more
 * than half full; an entry is malloc'd to the size of its key and value. */
struct cache_entry {
	uint64_t gen;           /* s->gen when it was read */
	uint64_t last_seq;      /* conversations: the last message's seq */
	uint32_t hash;
	uint16_t klen;
	uint8_t vlen;
	bool found;             /* false: a negative entry (no such record) */
	unsigned char data[];   /* the key (klen), then the value (vlen) */
};

struct cache {
	struct cache_entry **slot;
	uint32_t nslots;        /* 0 or a power of two, at most 2 * cap */
	uint32_t count;
	uint32_t cap;
	uint64_t hits, misses, clears;
	size_t bytes;           /* entries' malloc'd sizes */
};

struct store {
	MDB_env *env;
	MDB_dbi dbi[DBI_COUNT];
	MDB_txn *rtxn;          /* the reusable read transaction, reset when idle */
	struct store_txn rtx;   /* the store_txn that holds it */
	bool rtxn_live;         /* rtx is handed out */
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
	struct store_txn wtxn;  /* the one write transaction (the broker is single-threaded) */
	bool wtxn_busy;
	struct cache convs;     /* read cache of store__conv_get */
	struct cache members;   /* read cache of store__member_get */
	uint64_t gen;           /* cache entries of an older generation are misses */
	uint64_t epoch;         /* moves with every commit that changes what the cache answers */
	uint32_t seed;          /* of the cache's hash */
	/* the journal (see "Journal") */
	bool journaled;
	unsigned commit_ms;     /* commit the batch at a tick once it is this old (0: every tick) */
	struct journal *jr;
	MDB_txn *batch;         /* the open LMDB write txn, NULL between commits */
	uint64_t batch_since;   /* when it was begun (ms, monotonic) */
	uint64_t lsn;           /* the last record written */
	uint64_t applied;       /* the last record committed in LMDB */
	bool broken;            /* a redo failed: writes are refused until a restart */
	unsigned char *ops;     /* the write txn's operations, after JOURNAL_HEADER bytes of room */
	size_t ops_len, ops_cap;
	struct store_journal_stats jst;
	char last_error[160];
};

/* The on-disk format, in meta under FORMAT_KEY.
 *   1 (no record): last_seq in a "seqs" database, receipt cursors in "cursors".
 *   3: a conversation's last_seq is the key of its last message, and cursors
 *      (conv \0 user) live in "cmids" beside that user's cmids (conv \0 user
 *      \0 cmid): a send writes two B-trees fewer. A plain "seqs" key in LMDB's
 *      main database makes a format 1 build fail to start (its
 *      mdb_dbi_open("seqs") gets MDB_INCOMPATIBLE) instead of reading no
 *      last_seq and reusing seqs.
 *   4: the same records; acknowledged writes may still be in the journal
 *      file beside data.mdb (meta "journal": the last record LMDB holds), so
 *      a format 3 build, which would not apply them, refuses the database.
 * (2, never released, had cursors still apart.) A database of a newer format
 * than FORMAT_VERSION is refused. */
#define FORMAT_KEY "format"
#define FORMAT_VERSION 4
#define FORMAT1_SEQS "seqs"
#define FORMAT1_CURSORS "cursors"

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
 * Read cache: conversation records and memberships
 * ====================================================================== */

/*
 * Every send reads its conversation (record and last_seq, a cursor seek in
 * msgs) and the sender's membership, and every delivery's ACL check reads a
 * membership. Those answers change rarely, and only through this file, so
 * they are kept in memory: conv id -> record and last_seq, (conv, user) ->
 * role, both with negative entries ("no such conversation", "not a member").
 * Why the answers stay right:
 *  - One writer, one thread. The broker's loop is the only caller of store.c
 *    and every write goes through a store_txn: kv_put/kv_del note what a txn
 *    wrote (the flusher thread only syncs). The format conversion at open
 *    writes before the cache holds anything.
 *  - Committed state only, by generation. Each entry keeps the generation
 *    s->gen it was read at, and an entry of an older generation is a miss.
 *    The commit of a txn that wrote convs or members bumps s->gen; an abort,
 *    or a failed commit, applied nothing and changes nothing here.
 *  - last_seq. store__msg_put notes (conv, seq) in its txn; once the txn has
 *    committed, a current entry of that conv takes max(last_seq, seq) —
 *    messages are never deleted, so the last key is the largest seq. A txn
 *    that put messages in more than one conversation bumps s->gen instead.
 *  - A txn sees its own writes. Once a write txn has written convs, members
 *    or msgs, its conv/member reads go to LMDB and fill nothing. A txn begun
 *    before a commit that changed what the cache answers (a reader held open
 *    across a write: s->epoch moved) reads an older snapshot than the cache's,
 *    so it neither uses nor fills the cache either. Other txns use the cache
 *    and fill it on a miss; errors are never cached.
 *  - Exact keys. The hash only picks a slot; keys are compared byte for byte,
 *    so a collision can cost a miss, never another key's answer (never a
 *    membership). The hash is seeded at open, and a lookup probes at most
 *    CACHE_PROBE_MAX slots (an insert that finds no room there replaces its
 *    home slot's entry), so crafted ids cannot make lookups slow.
 *  - Bounded. CACHE_CONVS_MAX and CACHE_MEMBERS_MAX entries (a table of
 *    twice as many pointers, grown on demand); a full table is cleared
 *    whole. An entry is its key and value plus 24 bytes (a membership of two
 *    16-char ids: 58 bytes), so the member table holds the 30,000 memberships
 *    of 10,000 clients in 3 conversations each in about 3 MB with room to
 *    spare, and never takes more than about 14 MB (conversations: 4 MB).
 *    Everything is freed at store__close.
 */
#define CACHE_MEMBERS_MAX 65536u
#define CACHE_CONVS_MAX 16384u
#define CACHE_PROBE_MAX 16u
#define CACHE_SLOTS_MIN 64u
#define CACHE_KEY_MAX (64 + 1 + 64)          /* conv \0 user */
#define CONV_REC_MAX (9 + 128)              /* type, created_ms, name: see store__conv_put */

static uint32_t cache_hash(const struct store *s, const void *k, size_t kl)
{
	const unsigned char *p = k;
	uint32_t h = 2166136261u ^ s->seed;     /* FNV-1a, then a final mix for the low bits */
	for(size_t i = 0; i < kl; i++){
		h ^= p[i];
		h *= 16777619u;
	}
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
#ifdef STORE_CACHE_TEST_HASH_MASK
	h &= STORE_CACHE_TEST_HASH_MASK;        /* tests/unit/test_cache_collide.c: collisions everywhere */
#endif
	return h;
}

/* The slot of key k (hash h) in c, or of the free slot where it would go, or
 * NULL when neither is within CACHE_PROBE_MAX slots of its home. */
static struct cache_entry **cache_slot(struct cache *c, uint32_t h, const void *k, size_t kl)
{
	uint32_t mask = c->nslots - 1;
	if(!c->nslots) return NULL;
	for(uint32_t i = 0; i < CACHE_PROBE_MAX && i < c->nslots; i++){
		struct cache_entry **sl = &c->slot[(h + i) & mask];
		struct cache_entry *e = *sl;
		if(!e || (e->hash == h && e->klen == kl && memcmp(e->data, k, kl) == 0)) return sl;
	}
	return NULL;
}

/* The entry of key k if it is there and of the current generation. */
static struct cache_entry *cache_get(struct store *s, struct cache *c, uint32_t h, const void *k, size_t kl)
{
	struct cache_entry **sl = cache_slot(c, h, k, kl);
	if(sl && *sl && (*sl)->gen == s->gen){
		c->hits++;
		return *sl;
	}
	c->misses++;
	return NULL;
}

static void cache_clear(struct cache *c)
{
	for(uint32_t i = 0; i < c->nslots; i++){
		free(c->slot[i]);
		c->slot[i] = NULL;
	}
	c->count = 0;
	c->bytes = 0;
}

static void cache_free(struct cache *c)
{
	cache_clear(c);
	free(c->slot);
	c->slot = NULL;
	c->nslots = 0;
}

/* Puts e in its slot (replacing an entry of the same key, or the one in its
 * home slot when the probe finds no room). */
static void cache_place(struct cache *c, struct cache_entry *e)
{
	struct cache_entry **sl = cache_slot(c, e->hash, e->data, e->klen);
	if(!sl) sl = &c->slot[e->hash & (c->nslots - 1)];
	if(*sl){
		c->bytes -= sizeof(**sl) + (*sl)->klen + (*sl)->vlen;
		free(*sl);
	}else{
		c->count++;
	}
	*sl = e;
	c->bytes += sizeof(*e) + e->klen + e->vlen;
}

/* Doubles the slots (up to twice the cap); false if that failed. */
static bool cache_grow(struct cache *c)
{
	struct cache_entry **old = c->slot;
	uint32_t n = c->nslots;
	uint32_t want = n ? n * 2 : CACHE_SLOTS_MIN;
	struct cache_entry **slot = calloc(want, sizeof(*slot));

	if(!slot) return false;
	c->slot = slot;
	c->nslots = want;
	c->count = 0;
	c->bytes = 0;
	for(uint32_t i = 0; i < n; i++){
		if(old[i]) cache_place(c, old[i]);
	}
	free(old);
	return true;
}

/* Records what LMDB answered for key k at the current generation: found with
 * value v (vl bytes) and last_seq, or not found. Out of memory: nothing
 * cached. */
static void cache_fill(struct store *s, struct cache *c, uint32_t h, const void *k, size_t kl, bool found,
		const void *v, size_t vl, uint64_t last_seq)
{
	struct cache_entry *e;

	if(kl > CACHE_KEY_MAX || vl > UINT8_MAX) return;
	if(c->count >= c->cap){
		cache_clear(c);
		c->clears++;
	}
	if(c->count + 1 > c->nslots / 2 && c->nslots < 2 * c->cap && !cache_grow(c)) return;
	e = malloc(sizeof(*e) + kl + vl);
	if(!e) return;
	e->gen = s->gen;
	e->last_seq = last_seq;
	e->hash = h;
	e->klen = (uint16_t)kl;
	e->vlen = (uint8_t)vl;
	e->found = found;
	memcpy(e->data, k, kl);
	if(vl) memcpy(e->data + kl, v, vl);
	cache_place(c, e);
}

/* May txn t answer from the cache and fill it? */
static bool cache_usable(const struct store_txn *t)
{
	const struct store *s = t->s;
	/* journaled, a reader shares the batch with an open writer: it would see
	 * what that writer has not committed yet */
	if(s->journaled && s->wtxn_busy && t != &s->wtxn && (s->wtxn.wrote_cm || s->wtxn.wrote_msgs)) return false;
	return !t->wrote_cm && !t->wrote_msgs && t->epoch == s->epoch;
}

/* A write into dbi by t (called before the write, whatever its outcome). */
static void cache_note_write(struct store_txn *t, int dbi)
{
	if(dbi == DBI_CONVS || dbi == DBI_MEMBERS) t->wrote_cm = true;
	else if(dbi == DBI_MSGS) t->wrote_msgs = true;
}

/* A message seq stored in conv by t. */
static void cache_note_msg(struct store_txn *t, const char *conv, uint64_t seq)
{
	size_t l = strlen(conv);
	if(t->pending == PENDING_NONE && l < sizeof(t->pending_conv)){
		memcpy(t->pending_conv, conv, l + 1);
		t->pending_seq = seq;
		t->pending = PENDING_ONE;
	}else if(t->pending == PENDING_ONE && strcmp(t->pending_conv, conv) == 0){
		if(seq > t->pending_seq) t->pending_seq = seq;
	}else{
		t->pending = PENDING_MANY;
	}
}

/* Write txn t has committed: apply what it changed to the cache. */
static void cache_committed(struct store_txn *t)
{
	struct store *s = t->s;
	if(t->wrote_cm || t->pending == PENDING_MANY){
		s->gen++;
		s->epoch++;
	}else if(t->pending == PENDING_ONE){
		size_t kl = strlen(t->pending_conv);
		struct cache_entry **sl = cache_slot(&s->convs, cache_hash(s, t->pending_conv, kl), t->pending_conv, kl);
		if(sl && *sl && (*sl)->gen == s->gen && (*sl)->found && (*sl)->last_seq < t->pending_seq){
			(*sl)->last_seq = t->pending_seq;
		}
		s->epoch++;
	}
}

void store__cache_stats(const struct store *s, struct store_cache_stats *st)
{
	st->conv_hits = s->convs.hits;
	st->conv_misses = s->convs.misses;
	st->conv_clears = s->convs.clears;
	st->conv_entries = s->convs.count;
	st->member_hits = s->members.hits;
	st->member_misses = s->members.misses;
	st->member_clears = s->members.clears;
	st->member_entries = s->members.count;
	st->bytes = s->convs.bytes + s->members.bytes + ((size_t)s->convs.nslots + s->members.nslots) * sizeof(void *);
	st->generation = s->gen;
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

/* ====================================================================== *
 * Journal
 * ====================================================================== */

/*
 * Why. mosquitto 2.0 writes the PUBACK as soon as the message hook returns,
 * so "acknowledged means stored" needs the message stored inside the hook,
 * and an LMDB commit per message was most of what the plugin cost a send
 * (≈ 13k of its 26k instructions; with fsync always, two syncs of ~8 pages).
 * Journaled, a write txn instead:
 *  - applies its puts and deletes to the batch, one LMDB write txn that
 *    stays open across write txns (every txn, readers too, works in it, so
 *    each sees what the ones before it committed), and notes each operation;
 *  - at store__commit appends the operations as one record to the journal
 *    (journal.h): copied into the shared mapping with fsync off — in the
 *    page cache, safe from a killed broker — or written O_DSYNC with fsync
 *    always — on the disk before the ack, one sync of one small write.
 * The batch is committed to LMDB by store__tick (the broker's tick, which
 * ends each loop pass; fsync always: once commit_ms old or the journal a
 * quarter full, LMDB's own synced commit), together with the lsn of the last
 * record it holds (meta "journal"); the journal then starts again at offset
 * 0. LMDB stays what it was — synced commits with fsync always, so a power
 * loss never finds it torn — and the journal only carries what was
 * acknowledged since the last batch commit.
 *  - Abort: a write txn that wrote and aborts (or whose LMDB write failed)
 *    throws the batch away and redoes this round's records into a new one.
 *  - Start: records from applied + 1 on (one chain: consecutive lsns, one
 *    process lifetime, checksums — journal.h) are applied and committed
 *    before anything else runs, whatever the options say, so turning the
 *    journal off never strands acknowledged writes in it.
 *  - A record that does not fit what is left of the round commits the
 *    batch, that txn in it, instead.
 *  - Without ticks (per_listener_settings true) the write that finds the
 *    batch older than commit_ms + 1 s commits it.
 * The op format: kind(1: put, 2: del) dbi(1, the DBI_* order: part of the
 * on-disk format) klen(2 LE) vlen(4 LE) key value.
 */
#define JOURNAL_SIZE_DEFAULT (4u << 20)
#define META_JOURNAL "journal"   /* meta: lsn of the last journal record LMDB holds (8 BE) */
#define COMMIT_LATE_MS 1000u
enum { OP_PUT = 1, OP_DEL = 2 };

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int ops_add(struct store *s, int kind, int dbi, const void *k, size_t kl, const void *v, size_t vl)
{
	size_t need = JOURNAL_HEADER + s->ops_len + 8 + kl + vl;
	unsigned char *o;

	if(need > s->ops_cap){
		size_t cap = s->ops_cap ? s->ops_cap : 4096;
		unsigned char *p;
		while(cap < need) cap *= 2;
		if(!(p = realloc(s->ops, cap))) return -1;
		s->ops = p;
		s->ops_cap = cap;
	}
	o = s->ops + JOURNAL_HEADER + s->ops_len;
	o[0] = (unsigned char)kind;
	o[1] = (unsigned char)dbi;
	o[2] = (unsigned char)kl;
	o[3] = (unsigned char)(kl >> 8);
	for(int i = 0; i < 4; i++) o[4 + i] = (unsigned char)(vl >> (8 * i));
	memcpy(o + 8, k, kl);
	if(vl) memcpy(o + 8 + kl, v, vl);
	s->ops_len += 8 + kl + vl;
	return 0;
}

/* The outcome rc of an LMDB write by t: noted for the journal when it wrote,
 * marks t failed when LMDB failed (the batch is then unusable). */
static int wrote(struct store_txn *t, int rc, int kind, int dbi, const void *k, size_t kl, const void *v, size_t vl)
{
	struct store *s = t->s;
	if(rc == MDB_NOTFOUND && kind == OP_DEL) return STORE_NOTFOUND;
	if(rc){
		t->failed = true;
		return map_rc(s, rc, dbi_names[dbi]);
	}
	if(s->journaled && ops_add(s, kind, dbi, k, kl, v, vl) != 0){
		t->failed = true;
		snprintf(s->last_error, sizeof(s->last_error), "journal: out of memory");
		return STORE_ERR;
	}
	return STORE_OK;
}

/* Applies one record's operations to txn. */
static int ops_apply(struct store *s, MDB_txn *txn, const unsigned char *p, size_t n)
{
	while(n){
		size_t kl, vl;
		MDB_val k, v;
		int rc;
		if(n < 8) return MDB_CORRUPTED;
		kl = (size_t)p[2] | (size_t)p[3] << 8;
		vl = (size_t)p[4] | (size_t)p[5] << 8 | (size_t)p[6] << 16 | (size_t)p[7] << 24;
		if(p[1] >= DBI_COUNT || kl == 0 || kl > n - 8 || vl > n - 8 - kl) return MDB_CORRUPTED;
		k.mv_size = kl;
		k.mv_data = (void *)(p + 8);
		v.mv_size = vl;
		v.mv_data = (void *)(p + 8 + kl);
		if(p[0] == OP_PUT){
			rc = mdb_put(txn, s->dbi[p[1]], &k, &v, 0);
		}else if(p[0] == OP_DEL){
			rc = mdb_del(txn, s->dbi[p[1]], &k, NULL);
			if(rc == MDB_NOTFOUND) rc = 0;
		}else{
			return MDB_CORRUPTED;
		}
		if(rc) return rc;
		p += 8 + kl + vl;
		n -= 8 + kl + vl;
	}
	return 0;
}

static int replay_cb(void *ud, uint64_t lsn, const unsigned char *body, size_t len)
{
	struct store *s = ud;
	(void)lsn;
	return ops_apply(s, s->batch, body, len);
}

static int batch_begin(struct store *s)
{
	int rc = mdb_txn_begin(s->env, NULL, 0, &s->batch);
	if(rc){
		s->batch = NULL;
		return map_rc(s, rc, "begin");
	}
	s->batch_since = mono_ms();
	return STORE_OK;
}

/* Throws the batch away and builds it again from this round's records: what
 * an aborted write txn did is gone, what committed ones did is back. */
static int batch_redo(struct store *s)
{
	uint64_t last = 0;
	int rc = 0;

	if(s->batch){
		mdb_txn_abort(s->batch);
		s->batch = NULL;
	}
	s->gen++;      /* whatever the cache read from the batch: read it again */
	s->epoch++;
	s->jst.redos++;
	if(s->lsn == s->applied) return STORE_OK;   /* the next use begins a fresh batch */
	if((rc = batch_begin(s)) == STORE_OK){
		rc = journal__scan(s->jr, s->applied + 1, true, replay_cb, s, &last);
		if(rc == 0 && last == s->lsn) return STORE_OK;
	}
	if(s->batch){
		mdb_txn_abort(s->batch);
		s->batch = NULL;
	}
	s->broken = true;
	snprintf(s->last_error, sizeof(s->last_error), "the journal could not be applied again (%s): writes are "
			"refused until a restart, which applies it", rc ? mdb_strerror(rc) : "records missing");
	return STORE_ERR;
}

/* Commits the batch to LMDB with the lsn of its last record, and starts the
 * journal again. On failure the batch is redone from the journal. */
static int batch_commit(struct store *s)
{
	MDB_val k = {sizeof(META_JOURNAL) - 1, META_JOURNAL}, v;
	unsigned char v8[8];
	bool carried = s->lsn != s->applied;
	int rc = 0;

	if(!s->batch) return STORE_OK;
	if(carried){
		be64_put(v8, s->lsn);
		v.mv_size = 8;
		v.mv_data = v8;
		rc = mdb_put(s->batch, s->dbi[DBI_META], &k, &v, 0);
	}
	if(rc == 0) rc = mdb_txn_commit(s->batch);
	else mdb_txn_abort(s->batch);
	s->batch = NULL;
	if(rc){
		char why[sizeof(s->last_error)];
		int r = map_rc(s, rc, "commit");
		memcpy(why, s->last_error, sizeof(why));
		if(batch_redo(s) == STORE_OK) memcpy(s->last_error, why, sizeof(why));
		return r;
	}
	s->applied = s->lsn;
	journal__reset(s->jr);
	if(carried) s->jst.commits++;
	if(!s->sync_each) atomic_store(&s->dirty, true);
	return STORE_OK;
}

/* At open: applies what the journal holds beyond LMDB's last commit, commits
 * it, and (journal on) keeps the journal open for writing. */
static int journal_start(struct store *s, const char *path, bool keep, size_t size, char *err, size_t errlen)
{
	MDB_val k = {sizeof(META_JOURNAL) - 1, META_JOURNAL}, v;
	uint64_t last = 0;
	int rc;

	if(journal__open(&s->jr, path, size, s->sync_each, err, errlen) != JOURNAL_OK) return STORE_ERR;
	if((rc = mdb_txn_begin(s->env, NULL, 0, &s->batch)) != 0) goto lmdb;
	rc = mdb_get(s->batch, s->dbi[DBI_META], &k, &v);
	if(rc == 0 && v.mv_size == 8) s->applied = be64_get(v.mv_data);
	else if(rc != MDB_NOTFOUND) goto lmdb;
	rc = journal__scan(s->jr, s->applied + 1, false, replay_cb, s, &last);
	if(rc) goto lmdb;
	s->lsn = last;
	s->jst.replayed = last - s->applied;
	if((rc = batch_commit(s)) != STORE_OK){
		snprintf(err, errlen, "journal %s/journal: applying %llu records: %s", path,
				(unsigned long long)s->jst.replayed, s->last_error);
		return STORE_ERR;
	}
	if(!s->sync_each && s->jst.replayed && (rc = mdb_env_sync(s->env, 1)) != 0) goto lmdb;
	if(!keep){
		journal__close(s->jr);
		s->jr = NULL;
	}
	s->journaled = keep;
	return STORE_OK;

lmdb:
	snprintf(err, errlen, "journal %s/journal: %s", path, mdb_strerror(rc));
	if(s->batch){
		mdb_txn_abort(s->batch);
		s->batch = NULL;
	}
	return STORE_ERR;
}

void store__journal_stats(const struct store *s, struct store_journal_stats *st)
{
	*st = s->jst;
	st->on = s->journaled;
	st->lsn = s->lsn;
	st->used = s->jr ? journal__used(s->jr) : 0;
	st->size = s->jr ? journal__size(s->jr) : 0;
}

int store__tick(struct store *s)
{
	if(!s->journaled || !s->batch || s->wtxn_busy) return STORE_OK;
	if(s->commit_ms && mono_ms() - s->batch_since < s->commit_ms
			&& journal__used(s->jr) < journal__size(s->jr) / 4) return STORE_OK;
	return batch_commit(s);
}

/* Moves every record of the format 1 "cursors" database into cmids and drops
 * it. */
static int format_move_cursors(struct store *s, MDB_txn *txn)
{
	MDB_dbi cursors;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc = mdb_dbi_open(txn, FORMAT1_CURSORS, 0, &cursors);

	if(rc == MDB_NOTFOUND) return 0;
	if(rc) return rc;
	if((rc = mdb_cursor_open(txn, cursors, &cur)) != 0) return rc;
	for(rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)){
		if((rc = mdb_put(txn, s->dbi[DBI_CMIDS], &k, &v, 0)) != 0) break;
	}
	mdb_cursor_close(cur);
	if(rc != MDB_NOTFOUND) return rc;
	return mdb_drop(txn, cursors, 1);
}

/* Refuses a database written by a newer format; brings an older or new one to
 * ours: format 1's "seqs" always equal the last message's key (messages are
 * never deleted), so they are dropped; its cursors move into cmids. Returns 0,
 * -1 with err filled, or an LMDB error code. */
static int format_check(struct store *s, MDB_txn *txn, const char *path, char *err, size_t errlen)
{
	static const char marker[] = "format 3: last_seq is the last msgs key (see meta/format)";
	MDB_val k = {sizeof(FORMAT_KEY) - 1, FORMAT_KEY}, v;
	MDB_val mk = {sizeof(FORMAT1_SEQS) - 1, FORMAT1_SEQS}, mv = {sizeof(marker) - 1, (void *)marker};
	MDB_dbi seqs, main_dbi;
	unsigned char buf[8];
	uint64_t have = 1;
	int rc = mdb_get(txn, s->dbi[DBI_META], &k, &v);

	if(rc == 0 && v.mv_size == 8) have = be64_get(v.mv_data);
	else if(rc != MDB_NOTFOUND && rc != 0) return rc;
	if(have > FORMAT_VERSION){
		snprintf(err, errlen, "database %s has format %llu, this build reads up to %d: use a newer build",
				path, (unsigned long long)have, FORMAT_VERSION);
		return -1;
	}
	if(rc == 0 && have == FORMAT_VERSION) return 0;
	/* format 1 or 2, or a new database: drop "seqs", leave the guard, move the
	 * cursors, stamp */
	rc = mdb_dbi_open(txn, FORMAT1_SEQS, 0, &seqs);
	if(rc == 0) rc = mdb_drop(txn, seqs, 1);
	if(rc != 0 && rc != MDB_NOTFOUND && rc != MDB_INCOMPATIBLE) return rc;   /* INCOMPATIBLE: the guard is there */
	if((rc = mdb_dbi_open(txn, NULL, 0, &main_dbi)) != 0) return rc;
	if((rc = mdb_put(txn, main_dbi, &mk, &mv, 0)) != 0) return rc;
	if((rc = format_move_cursors(s, txn)) != 0) return rc;
	be64_put(buf, FORMAT_VERSION);
	v.mv_size = 8;
	v.mv_data = buf;
	return mdb_put(txn, s->dbi[DBI_META], &k, &v, 0);
}

int store__open(struct store **out, const char *path, size_t map_size, bool sync_each, unsigned flush_ms,
		char *err, size_t errlen)
{
	struct store_opts o = {.map_size = map_size, .sync_each = sync_each, .flush_ms = flush_ms};
	return store__open_ex(out, path, &o, err, errlen);
}

int store__open_ex(struct store **out, const char *path, const struct store_opts *o, char *err, size_t errlen)
{
	size_t map_size = o->map_size;
	bool sync_each = o->sync_each;
	unsigned flush_ms = o->flush_ms;
	char jpath[4096];
	struct stat jst;
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
	s->convs.cap = CACHE_CONVS_MAX;
	s->members.cap = CACHE_MEMBERS_MAX;
	s->gen = 1;
	if(getrandom(&s->seed, sizeof(s->seed), GRND_NONBLOCK) != sizeof(s->seed)) s->seed = (uint32_t)time(NULL);
	atomic_init(&s->dirty, false);
	pthread_mutex_init(&s->flush_lock, NULL);
	pthread_cond_init(&s->flush_wake, NULL);

	if((rc = mdb_env_create(&s->env)) != 0) goto fail;
	if((rc = mdb_env_set_maxdbs(s->env, DBI_COUNT + 2)) != 0) goto fail;   /* + format 1's seqs, cursors */
	if((rc = mdb_env_set_mapsize(s->env, map_size)) != 0) goto fail;
	/* NOTLS: the reusable read txn is not tied to a thread slot. NOSYNC
	 * unless every commit must reach the disk before the ack. */
	rc = mdb_env_open(s->env, path, MDB_NOTLS | (sync_each ? 0 : MDB_NOSYNC | MDB_WRITEMAP), 0640);
	if(rc) goto fail;

	if((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0) goto fail;
	for(int i = 0; i < DBI_COUNT; i++){
		if((rc = mdb_dbi_open(txn, dbi_names[i], MDB_CREATE, &s->dbi[i])) != 0) goto fail;
	}
	if((rc = format_check(s, txn, path, err, errlen)) != 0){
		mdb_txn_abort(txn);
		mdb_env_close(s->env);
		free(s);
		return STORE_ERR;
	}
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if(rc) goto fail;
	if(!sync_each && (rc = mdb_env_sync(s->env, 1)) != 0) goto fail;
	s->commit_ms = o->commit_ms;
	if(o->journal || (snprintf(jpath, sizeof(jpath), "%s/journal", path) < (int)sizeof(jpath)
				&& stat(jpath, &jst) == 0)){
		if(journal_start(s, path, o->journal, o->journal_size ? o->journal_size : JOURNAL_SIZE_DEFAULT,
					err, errlen) != STORE_OK){
			journal__close(s->jr);
			mdb_env_close(s->env);
			free(s);
			return STORE_ERR;
		}
	}
	if(!sync_each && flush_ms > 0){
		if(pthread_create(&s->flusher, NULL, flusher_main, s) != 0){
			snprintf(err, errlen, "cannot start the database flusher thread");
			journal__close(s->jr);
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
	if(s->batch && !s->wtxn_busy) batch_commit(s);
	if(s->batch) mdb_txn_abort(s->batch);   /* a writer left open: its round stays in the journal */
	journal__close(s->jr);
	free(s->ops);
	if(s->rtxn) mdb_txn_abort(s->rtxn);
	if(s->env){
		if(!s->sync_each) mdb_env_sync(s->env, 1);
		mdb_env_close(s->env);
	}
	pthread_cond_destroy(&s->flush_wake);
	pthread_mutex_destroy(&s->flush_lock);
	cache_free(&s->convs);
	cache_free(&s->members);
	free(s);
}

int store__sync(struct store *s)
{
	if(s->journaled && !s->wtxn_busy){
		int rc = batch_commit(s);
		if(rc != STORE_OK) return rc;
	}
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
	int rc = 0;

	*out = NULL;
	if(write && s->journaled && (s->wtxn_busy || s->broken)){
		/* one batch, one op list: a second writer would mix its ops with the first's */
		snprintf(s->last_error, sizeof(s->last_error), "%s", s->broken
				? "the journal could not be applied again: writes are refused until a restart"
				: "a write transaction is already open");
		return STORE_ERR;
	}
	if(write && !s->wtxn_busy){
		t = &s->wtxn;
	}else if(!write && !s->rtxn_live){
		t = &s->rtx;
	}else{
		t = malloc(sizeof(*t));
		if(!t) return STORE_ERR;
	}
	t->s = s;
	t->write = write;
	t->txn = NULL;
	t->wrote_cm = t->wrote_msgs = false;
	t->epoch = s->epoch;
	t->pending = PENDING_NONE;
	t->failed = false;
	if(s->journaled){
		/* every txn works in the batch (txn_mdb), begun when first needed */
		if(write){
			s->full = false;
			s->ops_len = 0;
		}
	}else if(write){
		s->full = false;
		rc = mdb_txn_begin(s->env, NULL, 0, &t->txn);
	}else if(t != &s->rtx){
		/* nested use of the reused reader: give this caller its own */
		rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t->txn);
	}   /* else the reused reader, renewed on first use (txn_mdb) */
	if(rc){
		if(t != &s->wtxn) free(t);
		return map_rc(s, rc, "begin");
	}
	if(t == &s->wtxn) s->wtxn_busy = true;
	if(t == &s->rtx) s->rtxn_live = true;
	*out = t;
	return STORE_OK;
}

/* The LMDB transaction of t. The reused reader is renewed here, when a
 * lookup first needs LMDB; NULL (last_error set) if that failed. */
static MDB_txn *txn_mdb(struct store_txn *t)
{
	struct store *s = t->s;
	int rc;

	if(s->journaled){
		if(!s->batch && batch_begin(s) != STORE_OK) return NULL;
		return s->batch;
	}
	if(t->txn) return t->txn;
	rc = s->rtxn ? mdb_txn_renew(s->rtxn) : mdb_txn_begin(s->env, NULL, MDB_RDONLY, &s->rtxn);
	if(rc){
		map_rc(s, rc, "begin");
		return NULL;
	}
	t->txn = s->rtxn;
	return t->txn;
}

static void txn_free(struct store_txn *t)
{
	struct store *s = t->s;
	if(t == &s->wtxn) s->wtxn_busy = false;
	else if(t == &s->rtx) s->rtxn_live = false;
	else free(t);
}

static void txn_release(struct store_txn *t)
{
	if(t == &t->s->rtx){
		if(t->txn) mdb_txn_reset(t->txn);
	}else{
		mdb_txn_abort(t->txn);
	}
	txn_free(t);
}

/* store__commit of a journaled write txn: its operations become one journal
 * record (see "Journal"). */
static int journal_commit(struct store_txn *t)
{
	struct store *s = t->s;
	int rc;

	if(t->failed){
		store__abort(t);   /* LMDB refused a write: last_error says which */
		return STORE_ERR;
	}
	if(s->ops_len == 0){
		txn_free(t);
		return STORE_OK;
	}
	rc = journal__append(s->jr, s->lsn + 1, s->ops + JOURNAL_HEADER, s->ops_len);
	if(rc == JOURNAL_OK){
		s->lsn++;
		s->jst.records++;
		s->jst.bytes += JOURNAL_HEADER + s->ops_len;
	}else if(rc == JOURNAL_FULL){
		/* no room left in this round: LMDB takes the batch now, this txn in it */
		if((rc = batch_commit(s)) != STORE_OK){
			txn_free(t);
			return rc;
		}
	}else{
		snprintf(s->last_error, sizeof(s->last_error), "%s", journal__error(s->jr));
		s->ops_len = 0;
		txn_free(t);
		batch_redo(s);
		return STORE_ERR;
	}
	cache_committed(t);
	txn_free(t);
	if(s->batch && mono_ms() - s->batch_since >= s->commit_ms + COMMIT_LATE_MS) batch_commit(s);
	return STORE_OK;
}

int store__commit(struct store_txn *t)
{
	struct store *s = t->s;
	int rc;

	if(!t->write){
		txn_release(t);
		return STORE_OK;
	}
	if(s->journaled) return journal_commit(t);
	/* a reused reader handed out before this write and not renewed yet
	 * takes its snapshot now, as if it had at its begin */
	if(s->rtxn_live && !s->rtx.txn) txn_mdb(&s->rtx);
	rc = mdb_txn_commit(t->txn);
	if(rc == 0) cache_committed(t);
	txn_free(t);
	if(rc == 0 && !s->sync_each) atomic_store(&s->dirty, true);
	return map_rc(s, rc, "commit");
}

void store__abort(struct store_txn *t)
{
	if(!t) return;
	if(t->write && t->s->journaled){
		struct store *s = t->s;
		bool redo = t->failed || s->ops_len > 0;
		txn_free(t);
		if(redo) batch_redo(s);
	}else if(t->write){
		mdb_txn_abort(t->txn);
		txn_free(t);
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
	MDB_txn *tx = txn_mdb(t);
	if(!tx) return STORE_ERR;
	return map_rc(t->s, mdb_get(tx, t->s->dbi[dbi], &key, v), dbi_names[dbi]);
}

static int kv_put(struct store_txn *t, int dbi, const void *k, size_t kl, const void *d, size_t dl)
{
	MDB_val key = {kl, (void *)k};
	MDB_val val = {dl, (void *)d};
	MDB_txn *tx = txn_mdb(t);
	if(!tx) return STORE_ERR;
	cache_note_write(t, dbi);
	return wrote(t, mdb_put(tx, t->s->dbi[dbi], &key, &val, 0), OP_PUT, dbi, k, kl, d, dl);
}

static int kv_del(struct store_txn *t, int dbi, const void *k, size_t kl)
{
	MDB_val key = {kl, (void *)k};
	MDB_txn *tx = txn_mdb(t);
	if(!tx) return STORE_ERR;
	cache_note_write(t, dbi);
	return wrote(t, mdb_del(tx, t->s->dbi[dbi], &key, NULL), OP_DEL, dbi, k, kl, NULL, 0);
}

/* Walks every key of dbi that starts with prefix (plen bytes), handing the
 * key's remainder to cb. */
typedef int (*prefix_cb)(void *ud, const unsigned char *rest, size_t rl, const MDB_val *val);

static int prefix_each(struct store_txn *t, int dbi, const unsigned char *prefix, size_t plen, prefix_cb cb, void *ud)
{
	MDB_txn *tx;
	MDB_cursor *cur;
	MDB_val k = {plen, (void *)prefix}, v;
	int rc, out = STORE_OK;

	if(!(tx = txn_mdb(t))) return STORE_ERR;
	rc = mdb_cursor_open(tx, t->s->dbi[dbi], &cur);
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

static size_t msg_key(unsigned char *k, const char *conv, uint64_t seq);

/* The seq of conv's last message (0: none): the key just below
 * (conv \0 FF…FF) in msgs. One seek on the pages a send dirties anyway, where
 * a separate counter was one more B-tree written per message. */
static int last_seq(struct store_txn *t, const char *conv, uint64_t *seq)
{
	unsigned char k[KEY_MAX];
	size_t kl = msg_key(k, conv, UINT64_MAX), pl = kl - 8;
	MDB_txn *tx;
	MDB_cursor *cur;
	MDB_val key = {kl, k}, v;
	int rc;

	*seq = 0;
	if(!kl) return STORE_OK;
	if(!(tx = txn_mdb(t))) return STORE_ERR;
	rc = mdb_cursor_open(tx, t->s->dbi[DBI_MSGS], &cur);
	if(rc) return map_rc(t->s, rc, "cursor");
	rc = mdb_cursor_get(cur, &key, &v, MDB_SET_RANGE);
	rc = mdb_cursor_get(cur, &key, &v, rc == MDB_NOTFOUND ? MDB_LAST : MDB_PREV);
	if(rc == 0 && key.mv_size == kl && memcmp(key.mv_data, k, pl) == 0){
		*seq = be64_get((const unsigned char *)key.mv_data + pl);
	}
	mdb_cursor_close(cur);
	if(rc != 0 && rc != MDB_NOTFOUND) return map_rc(t->s, rc, "cursor");
	return STORE_OK;
}

/* A conversation record: type(1) created_ms(8 BE) name(…), into buf
 * (CONV_REC_MAX bytes); returns its length. */
static size_t conv_encode(unsigned char *buf, const struct store_conv *c)
{
	size_t nl = strnlen(c->name, sizeof(c->name) - 1);
	buf[0] = (unsigned char)c->type;
	be64_put(buf + 1, c->created_ms);
	memcpy(buf + 9, c->name, nl);
	return 9 + nl;
}

/* Reads a record into out (all but last_seq); a name longer than out's is
 * cut. */
static int conv_decode(const unsigned char *p, size_t n, struct store_conv *out)
{
	size_t nl;
	if(n < 9) return STORE_ERR;
	nl = n - 9;
	if(nl > sizeof(out->name) - 1) nl = sizeof(out->name) - 1;
	out->type = (char)p[0];
	out->created_ms = be64_get(p + 1);
	memcpy(out->name, p + 9, nl);
	out->name[nl] = '\0';
	return STORE_OK;
}

int store__conv_get(struct store_txn *t, const char *conv, struct store_conv *out)
{
	struct store *s = t->s;
	struct cache_entry *e;
	MDB_val v;
	size_t kl = strlen(conv);
	bool fill = cache_usable(t) && kl <= CACHE_KEY_MAX;
	uint32_t h = fill ? cache_hash(s, conv, kl) : 0;
	int rc;

	if(fill && (e = cache_get(s, &s->convs, h, conv, kl)) != NULL){
		if(!e->found) return STORE_NOTFOUND;
		out->last_seq = e->last_seq;
		return conv_decode(e->data + e->klen, e->vlen, out);
	}
	rc = kv_get(t, DBI_CONVS, conv, kl, &v);
	if(rc == STORE_NOTFOUND && fill) cache_fill(s, &s->convs, h, conv, kl, false, NULL, 0, 0);
	if(rc) return rc;
	if((rc = conv_decode(v.mv_data, v.mv_size, out)) != STORE_OK) return rc;
	if((rc = last_seq(t, conv, &out->last_seq)) != STORE_OK) return rc;
	/* v is still the record: last_seq only read (a write would move it) */
	if(fill) cache_fill(s, &s->convs, h, conv, kl, true, v.mv_data, v.mv_size, out->last_seq);
	return STORE_OK;
}

int store__conv_put(struct store_txn *t, const char *conv, const struct store_conv *c)
{
	unsigned char buf[CONV_REC_MAX];
	return kv_put(t, DBI_CONVS, conv, strlen(conv), buf, conv_encode(buf, c));
}


/* ====================================================================== *
 * Members
 * ====================================================================== */

int store__member_get(struct store_txn *t, const char *conv, const char *user, char *role)
{
	struct store *s = t->s;
	unsigned char k[KEY_MAX];
	struct cache_entry *e;
	size_t kl = key_join(k, conv, user, NULL);
	bool fill = kl && kl <= CACHE_KEY_MAX && cache_usable(t);
	uint32_t h = fill ? cache_hash(s, k, kl) : 0;
	MDB_val v;
	char r;
	int rc;

	if(!kl) return STORE_NOTFOUND;
	if(fill && (e = cache_get(s, &s->members, h, k, kl)) != NULL){
		if(!e->found) return STORE_NOTFOUND;
		if(role) *role = (char)e->data[e->klen];
		return STORE_OK;
	}
	rc = kv_get(t, DBI_MEMBERS, k, kl, &v);
	if(rc == STORE_NOTFOUND && fill) cache_fill(s, &s->members, h, k, kl, false, NULL, 0, 0);
	if(rc) return rc;
	r = v.mv_size ? ((const char *)v.mv_data)[0] : 'm';
	if(fill) cache_fill(s, &s->members, h, k, kl, true, &r, 1, 0);
	if(role) *role = r;
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
	int rc;
	if(!kl) return STORE_ERR;
	rc = kv_put(t, DBI_MSGS, k, kl, data, len);
	if(rc == STORE_OK) cache_note_msg(t, conv, seq);
	return rc;
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
	MDB_txn *tx;
	MDB_cursor *cur;
	MDB_val key, v;
	int rc, out = STORE_OK;

	if(lo > hi) return STORE_OK;
	pl = id_prefix(k, conv);
	kl = msg_key(k, conv, descending ? hi : lo);
	if(!kl) return STORE_OK;
	if(!(tx = txn_mdb(t))) return STORE_ERR;
	rc = mdb_cursor_open(tx, t->s->dbi[DBI_MSGS], &cur);
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

int store__cmid_claim(struct store_txn *t, const char *conv, const char *from, const char *cmid, uint64_t *seq)
{
	unsigned char k[KEY_MAX], v[8];
	size_t kl = key_join(k, conv, from, cmid);
	MDB_val key = {kl, k}, val = {8, v};
	int rc;
	if(!kl) return STORE_ERR;
	be64_put(v, *seq);
	/* one descent for the duplicate check and the insert: on MDB_KEYEXIST
	 * LMDB hands back the stored value */
	MDB_txn *tx = txn_mdb(t);
	if(!tx) return STORE_ERR;
	rc = mdb_put(tx, t->s->dbi[DBI_CMIDS], &key, &val, MDB_NOOVERWRITE);
	if(rc == MDB_KEYEXIST){
		if(val.mv_size != 8) return STORE_ERR;
		*seq = be64_get(val.mv_data);
		return STORE_EXISTS;
	}
	return wrote(t, rc, OP_PUT, DBI_CMIDS, k, kl, v, 8);
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
	rc = kv_get(t, DBI_CMIDS, k, kl, &v);
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
	return kv_put(t, DBI_CMIDS, k, kl, v, 16);
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
	MDB_txn *tx = txn_mdb(t);
	if(!tx) return STORE_ERR;
	rc = mdb_put(tx, t->s->dbi[DBI_PUSHQ], &key, &val, MDB_RESERVE);
	if(rc) return wrote(t, rc, OP_PUT, DBI_PUSHQ, k, 8, NULL, 0);
	be64_put(val.mv_data, due_ms);
	be64_put((unsigned char *)val.mv_data + 8, sent_ms);
	memcpy((unsigned char *)val.mv_data + 16, json, len);
	return wrote(t, 0, OP_PUT, DBI_PUSHQ, k, 8, val.mv_data, val.mv_size);
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
	MDB_txn *tx = txn_mdb(t);
	if(!tx || mdb_stat(tx, t->s->dbi[DBI_PUSHQ], &st)) return 0;
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
