/* the LMDB store: key order, ranges, indexes, map full, reopen */
#include <inttypes.h>
#include "chat.h"
#include "check.h"

struct collect {
	uint64_t seqs[600];
	size_t n;
	size_t stop_after;
};

static int collect_cb(void *ud, uint64_t seq, const void *data, size_t len)
{
	struct collect *c = ud;
	char expect[32];
	snprintf(expect, sizeof(expect), "m%" PRIu64, seq);
	if(len != strlen(expect) || memcmp(data, expect, len)) return -1;
	c->seqs[c->n++] = seq;
	return c->stop_after && c->n == c->stop_after;
}

static int names_cb(void *ud, const char *id)
{
	strcat(ud, id);
	strcat(ud, ",");
	return 0;
}

static int roles_cb(void *ud, const char *user, char role)
{
	char s[80];
	snprintf(s, sizeof(s), "%s:%c,", user, role);
	strcat(ud, s);
	return 0;
}

int main(void)
{
	char *dir = tmp_db_dir(), err[200], conv[65], buf[512];
	struct store *s;
	struct store_txn *t;
	struct store_conv sc = {.type = 'g', .created_ms = 7, .name = "team"}, got;
	struct collect c;
	uint64_t seq;

	CHECK(dir != NULL);
	CHECK_EQ_INT(store__open(&s, dir, 64u << 20, false, 50, err, sizeof(err)), STORE_OK);

	/* 300 messages in "g", a few in "g2" (a prefix-sharing id), out of order */
	CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
	CHECK_EQ_INT(store__conv_put(t, "g", &sc), STORE_OK);
	for(uint64_t i = 300; i >= 1; i--){
		char m[32];
		snprintf(m, sizeof(m), "m%" PRIu64, i);
		CHECK_EQ_INT(store__msg_put(t, "g", i, m, strlen(m)), STORE_OK);
	}
	CHECK_EQ_INT(store__msg_put(t, "g2", 1, "m1", 2), STORE_OK);
	CHECK_EQ_INT(store__member_put(t, "g", "bob", 'm'), STORE_OK);
	CHECK_EQ_INT(store__member_put(t, "g", "alice", 'a'), STORE_OK);
	CHECK_EQ_INT(store__member_put(t, "g2", "alice", 'm'), STORE_OK);
	CHECK_EQ_INT(store__member_put(t, "g2", "al", 'm'), STORE_OK);
	CHECK_EQ_INT(store__cmid_put(t, "g", "alice", "c-1", 42), STORE_OK);
	CHECK_EQ_INT(store__direct_put(t, "zed", "amy", "d_1"), STORE_OK);
	CHECK_EQ_INT(store__commit(t), STORE_OK);

	CHECK_EQ_INT(store__begin(s, false, &t), STORE_OK);
	CHECK_EQ_INT(store__conv_get(t, "g", &got), STORE_OK);
	CHECK_EQ_INT(got.type, 'g');
	CHECK_EQ_INT(got.created_ms, 7);
	CHECK_EQ_STR(got.name, "team");
	CHECK_EQ_INT(got.last_seq, 300);
	CHECK_EQ_INT(store__conv_get(t, "nope", &got), STORE_NOTFOUND);

	/* ascending from 250: numeric order across the 255/256 byte boundary */
	memset(&c, 0, sizeof(c));
	CHECK_EQ_INT(store__msgs_range(t, "g", 250, UINT64_MAX, false, collect_cb, &c), STORE_OK);
	CHECK_EQ_INT(c.n, 51);
	for(size_t i = 0; i < c.n; i++) CHECK_EQ_INT(c.seqs[i], 250 + i);
	/* descending from 257, stop after 5 */
	memset(&c, 0, sizeof(c));
	c.stop_after = 5;
	CHECK_EQ_INT(store__msgs_range(t, "g", 1, 257, true, collect_cb, &c), 1);
	CHECK_EQ_INT(c.n, 5);
	CHECK_EQ_INT(c.seqs[0], 257);
	CHECK_EQ_INT(c.seqs[4], 253);
	/* descending from beyond the end lands on the last; never leaks into g2 */
	memset(&c, 0, sizeof(c));
	CHECK_EQ_INT(store__msgs_range(t, "g", 299, 1000, true, collect_cb, &c), STORE_OK);
	CHECK_EQ_INT(c.n, 2);
	CHECK_EQ_INT(c.seqs[0], 300);
	memset(&c, 0, sizeof(c));
	CHECK_EQ_INT(store__msgs_range(t, "g2", 1, 1000, true, collect_cb, &c), STORE_OK);
	CHECK_EQ_INT(c.n, 1);
	memset(&c, 0, sizeof(c));
	CHECK_EQ_INT(store__msgs_range(t, "g", 5, 4, false, collect_cb, &c), STORE_OK);
	CHECK_EQ_INT(c.n, 0);

	buf[0] = '\0';
	store__members_each(t, "g", roles_cb, buf);
	CHECK_EQ_STR(buf, "alice:a,bob:m,");
	CHECK_EQ_INT(store__member_count(t, "g"), 2);
	buf[0] = '\0';
	store__user_convs_each(t, "alice", names_cb, buf);
	CHECK_EQ_STR(buf, "g,g2,");
	buf[0] = '\0';
	store__user_convs_each(t, "al", names_cb, buf);   /* "al" is a prefix of "alice" */
	CHECK_EQ_STR(buf, "g2,");

	CHECK_EQ_INT(store__cmid_get(t, "g", "alice", "c-1", &seq), STORE_OK);
	CHECK_EQ_INT(seq, 42);
	CHECK_EQ_INT(store__cmid_get(t, "g", "bob", "c-1", &seq), STORE_NOTFOUND);
	CHECK_EQ_INT(store__direct_get(t, "amy", "zed", conv), STORE_OK);
	CHECK_EQ_STR(conv, "d_1");
	CHECK_EQ_INT(store__direct_get(t, "zed", "amy", conv), STORE_OK);
	store__abort(t);

	/* removal updates both indexes */
	CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
	CHECK_EQ_INT(store__member_del(t, "g", "alice"), STORE_OK);
	CHECK_EQ_INT(store__commit(t), STORE_OK);
	CHECK_EQ_INT(store__begin(s, false, &t), STORE_OK);
	CHECK_EQ_INT(store__member_get(t, "g", "alice", NULL), STORE_NOTFOUND);
	buf[0] = '\0';
	store__user_convs_each(t, "alice", names_cb, buf);
	CHECK_EQ_STR(buf, "g2,");
	store__abort(t);

	/* reopen: everything is still there */
	store__close(s);
	CHECK_EQ_INT(store__open(&s, dir, 64u << 20, true, 0, err, sizeof(err)), STORE_OK);
	CHECK_EQ_INT(store__begin(s, false, &t), STORE_OK);
	CHECK_EQ_INT(store__conv_get(t, "g", &got), STORE_OK);
	CHECK_EQ_INT(got.last_seq, 300);
	store__abort(t);
	store__close(s);
	rm_db_dir(dir);

	/* a full map fails the write, and the store keeps serving reads */
	dir = tmp_db_dir();
	CHECK_EQ_INT(store__open(&s, dir, 1u << 20, false, 0, err, sizeof(err)), STORE_OK);
	{
		char big[2000];
		int rc = STORE_OK;
		uint64_t i;
		memset(big, 'x', sizeof(big));
		for(i = 1; i < 10000 && rc == STORE_OK; i++){
			CHECK_EQ_INT(store__begin(s, true, &t), STORE_OK);
			rc = store__msg_put(t, "g", i, big, sizeof(big));
			if(rc == STORE_OK){
				rc = store__commit(t);
			}else{
				store__abort(t);
			}
		}
		CHECK_EQ_INT(rc, STORE_FULL);
		CHECK(strstr(store__last_error(s), "MDB_MAP_FULL") != NULL);
		CHECK_EQ_INT(store__begin(s, false, &t), STORE_OK);
		memset(&c, 0, sizeof(c));
		c.stop_after = 3;
		CHECK(store__msg_get(t, "g", 1, &(const void *){0}, &(size_t){0}) == STORE_OK);
		store__abort(t);
	}
	store__close(s);
	rm_db_dir(dir);
	CHECK_DONE();
}
