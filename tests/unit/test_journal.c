/* The store's journal (store.c "Journal", journal.c): what a killed process
 * acknowledged is applied at the next open, once; a torn or stale record is
 * not; an aborted write txn leaves nothing; readers see committed writes.
 * A "kill" is a child process that writes and _exit()s without closing the
 * store: the mapped journal is then only in the page cache, as after a
 * killed broker. Both durability modes. */
#include <fcntl.h>
#include <inttypes.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "store.h"

static int open_store(struct store **s, const char *dir, bool sync_each, bool journal)
{
	char err[256];
	struct store_opts o = {.map_size = 64u << 20, .sync_each = sync_each, .journal = journal,
		.commit_ms = 0, .journal_size = 64u << 10};
	int rc = store__open_ex(s, dir, &o, err, sizeof(err));
	if(rc != STORE_OK) fprintf(stderr, "open: %s\n", err);
	return rc;
}

/* One write txn: message seq of conv "c" with body "m<seq>", and its cmid. */
static int put_msg(struct store *s, uint64_t seq)
{
	struct store_txn *t;
	char m[32], cmid[32];
	snprintf(m, sizeof(m), "m%" PRIu64, seq);
	snprintf(cmid, sizeof(cmid), "k%" PRIu64, seq);
	if(store__begin(s, true, &t) != STORE_OK) return -1;
	if(store__msg_put(t, "c", seq, m, strlen(m)) != STORE_OK || store__cmid_put(t, "c", "al", cmid, seq) != STORE_OK){
		store__abort(t);
		return -1;
	}
	return store__commit(t) == STORE_OK ? 0 : -1;
}

/* Is message seq there (with its body and cmid)? */
static bool has_msg(struct store *s, uint64_t seq)
{
	struct store_txn *t;
	const void *d;
	size_t l;
	char m[32], cmid[32];
	uint64_t got = 0;
	bool ok;
	snprintf(m, sizeof(m), "m%" PRIu64, seq);
	snprintf(cmid, sizeof(cmid), "k%" PRIu64, seq);
	if(store__begin(s, false, &t) != STORE_OK) return false;
	ok = store__msg_get(t, "c", seq, &d, &l) == STORE_OK && l == strlen(m) && memcmp(d, m, l) == 0
		&& store__cmid_get(t, "c", "al", cmid, &got) == STORE_OK && got == seq;
	store__abort(t);
	return ok;
}

static bool has_member(struct store *s, const char *user)
{
	struct store_txn *t;
	char role;
	bool ok;
	if(store__begin(s, false, &t) != STORE_OK) return false;
	ok = store__member_get(t, "c", user, &role) == STORE_OK;
	store__abort(t);
	return ok;
}

static int member(struct store *s, const char *user, bool add)
{
	struct store_txn *t;
	int rc;
	if(store__begin(s, true, &t) != STORE_OK) return -1;
	rc = add ? store__member_put(t, "c", user, 'm') : store__member_del(t, "c", user);
	if(rc != STORE_OK){
		store__abort(t);
		return -1;
	}
	return store__commit(t) == STORE_OK ? 0 : -1;
}

/* Runs fn in a child that _exit()s without closing anything. */
static void killed(void (*fn)(const char *, bool), const char *dir, bool sync_each)
{
	int st = 0;
	pid_t p = fork();
	if(p == 0){
		fn(dir, sync_each);
		_exit(0);
	}
	CHECK(p > 0 && waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* Round 1 (ticked into LMDB): messages 1..40, members x and y.
 * Round 2 (only in the journal): 41..45, y removed, z added; and a txn that
 * writes 999 and member w, then aborts. */
static void writer(const char *dir, bool sync_each)
{
	struct store *s;
	struct store_txn *t;
	if(open_store(&s, dir, sync_each, true) != STORE_OK) _exit(10);
	for(uint64_t i = 1; i <= 40; i++) if(put_msg(s, i)) _exit(11);
	if(member(s, "x", true) || member(s, "y", true)) _exit(12);
	if(store__tick(s) != STORE_OK) _exit(13);   /* commit_ms 0: the tick commits the batch */
	for(uint64_t i = 41; i <= 43; i++) if(put_msg(s, i)) _exit(14);
	if(store__begin(s, true, &t) != STORE_OK) _exit(15);
	if(store__msg_put(t, "c", 999, "m999", 4) != STORE_OK || store__member_put(t, "c", "w", 'm') != STORE_OK) _exit(16);
	store__abort(t);
	if(has_msg(s, 999) || has_member(s, "w") || !has_msg(s, 43)) _exit(17);   /* the redo */
	for(uint64_t i = 44; i <= 45; i++) if(put_msg(s, i)) _exit(18);
	if(member(s, "y", false) || member(s, "z", true)) _exit(19);
	if(!has_member(s, "z") || has_member(s, "y")) _exit(20);   /* readers see committed writes */
}

/* Offsets of the records of the journal's current round, walking its headers. */
static size_t journal_records(const char *dir, size_t *offs, size_t max)
{
	char p[256];
	unsigned char h[32];
	size_t n = 0, off = 0;
	uint64_t prev = 0;
	int fd;
	snprintf(p, sizeof(p), "%s/journal", dir);
	if((fd = open(p, O_RDONLY)) < 0) return 0;
	while(n < max && pread(fd, h, 32, (off_t)off) == 32 && memcmp(h, "CHJ1", 4) == 0){
		uint32_t len = (uint32_t)h[4] | (uint32_t)h[5] << 8 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 24;
		uint64_t lsn = 0;
		for(int i = 7; i >= 0; i--) lsn = (lsn << 8) | h[8 + i];
		if(n && lsn != prev + 1) break;
		prev = lsn;
		offs[n++] = off;
		off += (32 + len + 7) & ~(size_t)7;
	}
	close(fd);
	return n;
}

static void run(bool sync_each)
{
	char *dir = tmp_db_dir();
	struct store *s;
	struct store_journal_stats js;
	size_t offs[64], n;

	printf("fsync %s\n", sync_each ? "always" : "off");
	CHECK(dir != NULL);
	killed(writer, dir, sync_each);

	/* the round's records: 3 + 2 sends, y removed, z added (the aborted txn wrote none) */
	n = journal_records(dir, offs, 64);
	CHECK_EQ_INT(n, 7);

	/* a journal-off open still applies them */
	CHECK_EQ_INT(open_store(&s, dir, sync_each, false), STORE_OK);
	store__journal_stats(s, &js);
	CHECK_EQ_INT(js.replayed, 7);
	CHECK(!js.on);
	for(uint64_t i = 1; i <= 45; i++) CHECK(has_msg(s, i));
	CHECK(!has_msg(s, 46));
	CHECK(!has_msg(s, 999));
	CHECK(has_member(s, "x"));
	CHECK(!has_member(s, "y"));
	CHECK(has_member(s, "z"));
	CHECK(!has_member(s, "w"));
	store__close(s);

	/* applied once: the next open finds nothing to apply */
	CHECK_EQ_INT(open_store(&s, dir, sync_each, true), STORE_OK);
	store__journal_stats(s, &js);
	CHECK_EQ_INT(js.replayed, 0);
	CHECK(js.on);
	CHECK(has_msg(s, 45));
	store__close(s);

	/* a killed writer again, then its last record torn: the rest is applied */
	{
		struct store *w;
		pid_t p = fork();
		int st = 0;
		if(p == 0){
			if(open_store(&w, dir, sync_each, true) != STORE_OK) _exit(10);
			for(uint64_t i = 46; i <= 49; i++) if(put_msg(w, i)) _exit(11);
			_exit(0);
		}
		CHECK(p > 0 && waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	n = journal_records(dir, offs, 64);
	CHECK_EQ_INT(n, 4);
	if(n == 4){
		char p[256];
		unsigned char b;
		int fd;
		snprintf(p, sizeof(p), "%s/journal", dir);
		fd = open(p, O_RDWR);
		CHECK(fd >= 0 && pread(fd, &b, 1, (off_t)offs[3] + 40) == 1);
		b ^= 0x20;
		CHECK(pwrite(fd, &b, 1, (off_t)offs[3] + 40) == 1);
		close(fd);
	}
	CHECK_EQ_INT(open_store(&s, dir, sync_each, true), STORE_OK);
	store__journal_stats(s, &js);
	CHECK_EQ_INT(js.replayed, 3);
	CHECK(has_msg(s, 48));
	CHECK(!has_msg(s, 49));
	/* the next writes go on from the last applied record, and survive a clean close */
	CHECK_EQ_INT(put_msg(s, 49), 0);
	store__close(s);
	CHECK_EQ_INT(open_store(&s, dir, sync_each, true), STORE_OK);
	store__journal_stats(s, &js);
	CHECK_EQ_INT(js.replayed, 0);
	CHECK(has_msg(s, 49));
	store__close(s);

	{
		char p[256];
		snprintf(p, sizeof(p), "%s/journal", dir);
		remove(p);
	}
	rm_db_dir(dir);
}

int main(void)
{
	run(false);
	run(true);
	CHECK_DONE();
}
