/* The store's read cache (conversation records with last_seq, memberships):
 * it must answer exactly what LMDB would. Checked case by case (commit,
 * abort, last_seq of sends and of multi-conversation txns, reads inside a
 * write txn, a reader held across a commit, table overflow) and against an
 * in-memory model over thousands of random transactions.
 *
 * test_cache_collide builds this file with store.c itself and
 * STORE_CACHE_TEST_HASH_MASK, so that every key hashes to one of four values:
 * answers must stay exact when the hash says nothing. */
#include <inttypes.h>
#include <stdint.h>
#include "store.h"
#include "check.h"

#define NCONV 6
#define NUSER 10

/* What the database holds, kept by the test itself. */
struct model {
	bool exists[NCONV];
	char name[NCONV][16];
	uint64_t last_seq[NCONV];
	char role[NCONV][NUSER];   /* 0: not a member */
};

static struct store *s;
static uint64_t rng = 88172645463325252ULL;

static uint64_t rnd(uint64_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng % n;
}

static const char *conv_id(int c)
{
	static char ids[NCONV][8];
	snprintf(ids[c], sizeof(ids[c]), "c%d", c);
	return ids[c];
}

static const char *user_id(int u)
{
	static char ids[NUSER][8];
	snprintf(ids[u], sizeof(ids[u]), "u%d", u);
	return ids[u];
}

static struct store_cache_stats stats(void)
{
	struct store_cache_stats st;
	store__cache_stats(s, &st);
	return st;
}

/* Membership of user in conv through t: its role, or 0 when not a member. */
static char role_of(struct store_txn *t, const char *conv, const char *user)
{
	char r = '?';
	int rc = store__member_get(t, conv, user, &r);
	if(rc == STORE_NOTFOUND) return 0;
	CHECK_EQ_INT(rc, STORE_OK);
	return r;
}

/* A read txn's answer for one membership. */
static char read_role(const char *conv, const char *user)
{
	struct store_txn *t;
	char r;
	CHECK_EQ_INT(store__begin(s, false, &t), STORE_OK);
	r = role_of(t, conv, user);
	store__abort(t);
	return r;
}

/* A read txn's last_seq of conv, or -1 when there is no such conversation. */
static int64_t read_last(const char *conv)
{
	struct store_txn *t;
	struct store_conv sc;
	int rc;
	CHECK_EQ_INT(store__begin(s, false, &t), STORE_OK);
	rc = store__conv_get(t, conv, &sc);
	store__abort(t);
	if(rc == STORE_NOTFOUND) return -1;
	CHECK_EQ_INT(rc, STORE_OK);
	return (int64_t)sc.last_seq;
}

static void put_conv(struct store_txn *t, const char *conv, const char *name)
{
	struct store_conv sc = {.type = 'g', .created_ms = 5};
	snprintf(sc.name, sizeof(sc.name), "%s", name);
	CHECK_EQ_INT(store__conv_put(t, conv, &sc), STORE_OK);
}

static void put_msg(struct store_txn *t, const char *conv, uint64_t seq)
{
	CHECK_EQ_INT(store__msg_put(t, conv, seq, "m", 1), STORE_OK);
}

/* ====================================================================== *
 * Cases
 * ====================================================================== */

static void setup(void)
{
	struct store_txn *t;
	CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
	put_conv(t, "g", "team");
	put_conv(t, "h", "other");
	put_msg(t, "g", 1);
	put_msg(t, "h", 1);
	CHECK_EQ_INT(store__member_put(t, "g", "alice", 'a'), STORE_OK);
	CHECK_EQ_INT(store__member_put(t, "g", "bob", 'm'), STORE_OK);
	CHECK_EQ_INT(store__member_put(t, "h", "alice", 'm'), STORE_OK);
	CHECK_EQ_INT(store__commit(t), STORE_OK);
}

/* Warm entries answer from memory; a committed add or removal is seen by
 * the very next read. */
static void test_commit_seen(void)
{
	struct store_txn *t;
	struct store_cache_stats a, b;

	CHECK_EQ_INT(read_role("g", "bob"), 'm');
	CHECK_EQ_INT(read_role("g", "carol"), 0);
	a = stats();
	CHECK_EQ_INT(read_role("g", "bob"), 'm');
	CHECK_EQ_INT(read_role("g", "carol"), 0);
	b = stats();
	CHECK_EQ_INT(b.member_hits - a.member_hits, 2);   /* positive and negative entries */
	CHECK_EQ_INT(b.member_misses, a.member_misses);

	CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
	CHECK_EQ_INT(store__member_del(t, "g", "bob"), STORE_OK);
	CHECK_EQ_INT(store__member_put(t, "g", "carol", 'a'), STORE_OK);
	CHECK_EQ_INT(store__commit(t), STORE_OK);
	CHECK_EQ_INT(read_role("g", "bob"), 0);
	CHECK_EQ_INT(read_role("g", "carol"), 'a');
	CHECK(stats().generation > b.generation);

	/* a role change too */
	CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
	CHECK_EQ_INT(store__member_put(t, "g", "carol", 'm'), STORE_OK);
	CHECK_EQ_INT(store__commit(t), STORE_OK);
	CHECK_EQ_INT(read_role("g", "carol"), 'm');

	/* a conversation created after its negative entry */
	CHECK_EQ_INT(read_last("new"), -1);
	CHECK_EQ_INT(read_last("new"), -1);
	CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
	put_conv(t, "new", "n");
	CHECK_EQ_INT(store__commit(t), STORE_OK);
	CHECK_EQ_INT(read_last("new"), 0);
}

/* An aborted txn leaves every cached answer as it was (and they are still
 * answered from memory). */
static void test_abort(void)
{
	struct store_txn *t;
	struct store_cache_stats a, b;

	CHECK_EQ_INT(read_role("g", "alice"), 'a');
	CHECK_EQ_INT(read_role("g", "dave"), 0);
	CHECK_EQ_INT(read_last("g"), 1);
	a = stats();
	CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
	CHECK_EQ_INT(store__member_del(t, "g", "alice"), STORE_OK);
	CHECK_EQ_INT(store__member_put(t, "g", "dave", 'm'), STORE_OK);
	put_conv(t, "g", "renamed");
	put_msg(t, "g", 2);
	put_msg(t, "h", 2);
	store__abort(t);
	CHECK_EQ_INT(read_role("g", "alice"), 'a');
	CHECK_EQ_INT(read_role("g", "dave"), 0);
	CHECK_EQ_INT(read_last("g"), 1);
	CHECK_EQ_INT(read_last("h"), 1);
	b = stats();
	CHECK_EQ_INT(b.generation, a.generation);
	CHECK(b.member_hits >= a.member_hits + 2);
}

/* last_seq follows sends (one conversation per txn: the entry is updated in
 * place, no new generation) and txns that store in several conversations. */
static void test_last_seq(void)
{
	struct store_txn *t;
	struct store_conv sc;
	struct store_cache_stats a, b;

	CHECK_EQ_INT(read_last("g"), 1);
	for(uint64_t seq = 2; seq <= 6; seq++){
		a = stats();
		CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
		CHECK_EQ_INT(store__conv_get(t, "g", &sc), STORE_OK);   /* as a send does: read, then store */
		CHECK_EQ_INT(sc.last_seq, seq - 1);
		CHECK_EQ_STR(sc.name, "team");
		put_msg(t, "g", sc.last_seq + 1);
		CHECK_EQ_INT(store__cmid_put(t, "g", "alice", "x", seq), STORE_OK);
		CHECK_EQ_INT(store__commit(t), STORE_OK);
		CHECK_EQ_INT(read_last("g"), seq);
		b = stats();
		CHECK_EQ_INT(b.generation, a.generation);
		CHECK_EQ_INT(b.conv_hits - a.conv_hits, 2);
	}
	/* two messages in one conversation, then in three: system messages */
	CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
	put_msg(t, "g", 7);
	put_msg(t, "g", 8);
	CHECK_EQ_INT(store__commit(t), STORE_OK);
	CHECK_EQ_INT(read_last("g"), 8);
	CHECK_EQ_INT(read_last("h"), 1);
	CHECK_EQ_INT(read_last("new"), 0);
	a = stats();
	CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
	put_msg(t, "g", 9);
	put_msg(t, "h", 2);
	put_msg(t, "h", 3);
	put_msg(t, "new", 1);
	put_msg(t, "g", 10);
	CHECK_EQ_INT(store__commit(t), STORE_OK);
	CHECK(stats().generation > a.generation);
	CHECK_EQ_INT(read_last("g"), 10);
	CHECK_EQ_INT(read_last("h"), 3);
	CHECK_EQ_INT(read_last("new"), 1);
	/* stored out of order in one txn: the largest seq is the last */
	CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
	put_msg(t, "g", 12);
	put_msg(t, "g", 11);
	CHECK_EQ_INT(store__commit(t), STORE_OK);
	CHECK_EQ_INT(read_last("g"), 12);
}

/* A write txn reads its own uncommitted changes; a reader beside it and the
 * cache keep the committed state. */
static void test_own_writes(void)
{
	struct store_txn *w, *r;
	struct store_conv sc;
	uint64_t g_last = (uint64_t)read_last("g");

	CHECK_EQ_INT(read_role("g", "alice"), 'a');
	CHECK_EQ_INT(read_role("g", "erin"), 0);
	CHECK_EQ_INT(store__begin(s, true, &w), STORE_OK);
	CHECK_EQ_INT(role_of(w, "g", "alice"), 'a');   /* untouched: from the cache */
	CHECK_EQ_INT(store__member_del(w, "g", "alice"), STORE_OK);
	CHECK_EQ_INT(store__member_put(w, "g", "erin", 'a'), STORE_OK);
	CHECK_EQ_INT(role_of(w, "g", "alice"), 0);
	CHECK_EQ_INT(role_of(w, "g", "erin"), 'a');
	put_conv(w, "g", "renamed");
	put_msg(w, "g", g_last + 1);
	CHECK_EQ_INT(store__conv_get(w, "g", &sc), STORE_OK);
	CHECK_EQ_STR(sc.name, "renamed");
	CHECK_EQ_INT(sc.last_seq, g_last + 1);
	/* a reader beside the write sees the committed state */
	CHECK_EQ_INT(read_role("g", "alice"), 'a');
	CHECK_EQ_INT(read_role("g", "erin"), 0);
	CHECK_EQ_INT(read_last("g"), g_last);
	store__abort(w);
	CHECK_EQ_INT(read_role("g", "alice"), 'a');
	CHECK_EQ_INT(read_role("g", "erin"), 0);

	/* only messages written: member reads and conv reads from LMDB */
	CHECK_EQ_INT(store__begin(s, true, &w), STORE_OK);
	put_msg(w, "g", g_last + 1);
	put_msg(w, "g", g_last + 2);
	CHECK_EQ_INT(store__conv_get(w, "g", &sc), STORE_OK);
	CHECK_EQ_INT(sc.last_seq, g_last + 2);
	CHECK_EQ_INT(read_last("g"), g_last);
	CHECK_EQ_INT(store__commit(w), STORE_OK);
	CHECK_EQ_INT(read_last("g"), g_last + 2);

	/* a reader held open across a commit keeps its snapshot */
	CHECK_EQ_INT(store__begin(s, false, &r), STORE_OK);
	CHECK_EQ_INT(role_of(r, "g", "alice"), 'a');
	CHECK_EQ_INT(store__begin(s, true, &w), STORE_OK);
	CHECK_EQ_INT(store__member_del(w, "g", "alice"), STORE_OK);
	put_msg(w, "g", g_last + 3);
	CHECK_EQ_INT(store__commit(w), STORE_OK);
	CHECK_EQ_INT(role_of(r, "g", "alice"), 'a');
	CHECK_EQ_INT(store__conv_get(r, "g", &sc), STORE_OK);
	CHECK_EQ_INT(sc.last_seq, g_last + 2);
	store__abort(r);
	CHECK_EQ_INT(read_role("g", "alice"), 0);
	CHECK_EQ_INT(read_last("g"), g_last + 3);
}

/* More distinct keys than a table holds: it is cleared, never grows past its
 * cap, and answers stay right. */
static void test_overflow(void)
{
	struct store_txn *t;
	struct store_cache_stats st;
	char id[32];
	int wrong = 0;

	CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
	CHECK_EQ_INT(store__member_put(t, "g", "frank", 'm'), STORE_OK);
	CHECK_EQ_INT(store__commit(t), STORE_OK);
	CHECK_EQ_INT(store__begin(s, false, &t), STORE_OK);
	for(int i = 0; i < 70000; i++){
		snprintf(id, sizeof(id), "nobody%d", i);
		if(role_of(t, "g", id) != 0) wrong++;
		if(i % 1000 == 0 && role_of(t, "g", "frank") != 'm') wrong++;
		if(i < 17000){
			struct store_conv sc;
			snprintf(id, sizeof(id), "noconv%d", i);
			if(store__conv_get(t, id, &sc) != STORE_NOTFOUND) wrong++;
		}
	}
	for(int i = 0; i < 70000; i += 7){
		snprintf(id, sizeof(id), "nobody%d", i);
		if(role_of(t, "g", id) != 0) wrong++;
	}
	CHECK_EQ_INT(role_of(t, "g", "frank"), 'm');
	store__abort(t);
	CHECK_EQ_INT(wrong, 0);
	st = stats();
#ifndef STORE_CACHE_TEST_HASH_MASK   /* with four hashes, evictions keep the tables small */
	CHECK(st.member_clears >= 1);
	CHECK(st.conv_clears >= 1);
#endif
	CHECK(st.member_entries <= 65536);
	CHECK(st.conv_entries <= 16384);
	CHECK(st.bytes < 16u << 20);
	printf("after overflow: %zu member + %zu conv entries, %zu bytes\n", st.member_entries, st.conv_entries,
			st.bytes);
}

/* ====================================================================== *
 * Random transactions against the model
 * ====================================================================== */

/* Every answer of t checked against m; returns the number of differences. */
static int compare(struct store_txn *t, const struct model *m)
{
	int bad = 0;
	for(int c = 0; c < NCONV; c++){
		struct store_conv sc;
		int rc = store__conv_get(t, conv_id(c), &sc);
		if(rc != (m->exists[c] ? STORE_OK : STORE_NOTFOUND)) bad++;
		else if(rc == STORE_OK && (sc.last_seq != m->last_seq[c] || strcmp(sc.name, m->name[c]))) bad++;
		for(int u = 0; u < NUSER; u++){
			if(role_of(t, conv_id(c), user_id(u)) != m->role[c][u]) bad++;
		}
	}
	return bad;
}

/* One random change through t, applied to m too. */
static void random_write(struct store_txn *t, struct model *m)
{
	int c = (int)rnd(NCONV), u = (int)rnd(NUSER);
	switch(rnd(5)){
		case 0:
			snprintf(m->name[c], sizeof(m->name[c]), "n%d", (int)rnd(100));
			put_conv(t, conv_id(c), m->name[c]);
			m->exists[c] = true;
			break;
		case 1:
			m->role[c][u] = rnd(2) ? 'a' : 'm';
			CHECK_EQ_INT(store__member_put(t, conv_id(c), user_id(u), m->role[c][u]), STORE_OK);
			break;
		case 2:
			CHECK_EQ_INT(store__member_del(t, conv_id(c), user_id(u)), m->role[c][u] ? STORE_OK : STORE_NOTFOUND);
			m->role[c][u] = 0;
			break;
		default: {
			/* 1..3 messages, now and then beyond last_seq + 1 (seqs are keys) */
			uint64_t n = 1 + rnd(3);
			for(uint64_t i = 0; i < n; i++){
				uint64_t seq = m->last_seq[c] + 1 + rnd(2);
				put_msg(t, conv_id(c), seq);
				m->last_seq[c] = seq;
				if(rnd(3) == 0) c = (int)rnd(NCONV);
			}
		}
	}
}

static void test_random(void)
{
	struct model m, w;
	struct store_txn *t, *held = NULL;
	struct model held_m;
	int bad = 0;

	memset(&m, 0, sizeof(m));
	for(int round = 0; round < 3000; round++){
		int n;
		switch(rnd(4)){
			case 0:   /* a reader, now and then held open across the next writes */
				CHECK_EQ_INT(store__begin(s, false, &t), STORE_OK);
				bad += compare(t, &m);
				if(!held && rnd(4) == 0){
					held = t;
					held_m = m;
				}else{
					store__abort(t);
				}
				break;
			default:  /* a write txn: reads before and between writes, commit or abort */
				w = m;
				CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
				if(rnd(2)) bad += compare(t, &w);
				n = 1 + (int)rnd(4);
				for(int i = 0; i < n; i++){
					random_write(t, &w);
					if(rnd(3) == 0) bad += compare(t, &w);
				}
				if(rnd(4) == 0){
					store__abort(t);
				}else{
					CHECK_EQ_INT(store__commit(t), STORE_OK);
					m = w;
				}
		}
		if(held && rnd(3) == 0){
			bad += compare(held, &held_m);
			store__abort(held);
			held = NULL;
		}
	}
	if(held) store__abort(held);
	CHECK_EQ_INT(store__begin(s, false, &t), STORE_OK);
	bad += compare(t, &m);
	store__abort(t);
	CHECK_EQ_INT(bad, 0);
	{
		struct store_cache_stats st = stats();
		printf("random: %" PRIu64 " member hits, %" PRIu64 " misses; %" PRIu64 " conv hits, %" PRIu64 " misses\n",
				st.member_hits, st.member_misses, st.conv_hits, st.conv_misses);
		CHECK(st.member_hits > 0 && st.conv_hits > 0);   /* the cache was in use, not bypassed */
	}
}

int main(void)
{
	char *dir = tmp_db_dir(), err[200];

	CHECK(dir != NULL);
	CHECK_EQ_INT(store__open(&s, dir, 256u << 20, false, 0, err, sizeof(err)), STORE_OK);
	setup();
	test_commit_seen();
	test_abort();
	test_last_seq();
	test_own_writes();
	test_overflow();
	store__close(s);
	rm_db_dir(dir);

	dir = tmp_db_dir();
	CHECK_EQ_INT(store__open(&s, dir, 256u << 20, false, 0, err, sizeof(err)), STORE_OK);
	test_random();
	store__close(s);
	rm_db_dir(dir);
	CHECK_DONE();
}
