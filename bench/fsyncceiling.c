/*
 * fsyncceiling — the disk's own fsync-per-commit ceiling, on the file system
 * of a given directory (the database's).
 *
 * Two measurements, each a loop for --seconds:
 *   lmdb:      an LMDB environment opened WITHOUT MDB_NOSYNC (what the plugin
 *              does with plugin_opt_fsync always), one small put (a 300-byte
 *              value under a fresh 8-byte key) per write transaction, one
 *              commit each. LMDB syncs the data pages, then writes the meta
 *              page synchronously: this is the storage engine's per-commit
 *              ceiling on this disk.
 *   lmdb-chat: the same, but each commit shaped like one chat message as
 *              the plugin stores it: a 330-byte value under an appended key
 *              in one database, a 16-byte key in a second (the cmid index)
 *              and an 8-byte counter overwritten in a third (last_seq), over
 *              1,000 conversations. What fsync=always could reach if the
 *              plugin did nothing but commit.
 *   fdatasync: write(300 bytes) + fdatasync() on a plain file: the raw
 *              device/file-system ceiling for one durable append.
 *   dsync:     pwrite(560 bytes) on a descriptor opened O_DSYNC, one after
 *              the other through a file written with zeros first, back to
 *              offset 0 every 1 MiB: exactly what the plugin's journal does
 *              per acknowledged write with fsync always, and nothing else —
 *              the ceiling that mode is measured against. Overwriting
 *              allocated blocks needs no file system metadata per sync, which
 *              is why it beats the growing append above.
 * Prints one JSON line: {"bench":"fsyncceiling","lmdb_commits_s":…,
 * "fdatasync_s":…, "dsync_s":…, plus per-commit latency percentiles in µs}.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>

#include "hist.h"

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void rm_rf_env(const char *dir)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/data.mdb", dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/lock.mdb", dir);
	unlink(p);
	rmdir(dir);
}

static int bench_lmdb(const char *base, double seconds, bool chat, double *rate, struct hist *h)
{
	char dir[4096];
	MDB_env *env = NULL;
	MDB_dbi dbi, dbi_cmid = 0, dbi_seq = 0;
	MDB_txn *txn;
	char val[330];
	uint64_t seqs[1000] = {0};
	uint64_t n = 0, t0, t1, deadline;
	int rc;

	snprintf(dir, sizeof(dir), "%s/fsyncceiling-lmdb.%d", base, (int)getpid());
	if(mkdir(dir, 0700) != 0 && errno != EEXIST){
		fprintf(stderr, "fsyncceiling: mkdir %s: %s\n", dir, strerror(errno));
		return -1;
	}
	memset(val, 'x', sizeof(val));
	if((rc = mdb_env_create(&env)) || (rc = mdb_env_set_mapsize(env, (size_t)4 << 30))
			|| (rc = mdb_env_set_maxdbs(env, 4)) || (rc = mdb_env_open(env, dir, 0, 0600))){
		fprintf(stderr, "fsyncceiling: lmdb: %s\n", mdb_strerror(rc));
		goto fail;
	}
	if((rc = mdb_txn_begin(env, NULL, 0, &txn)) || (rc = mdb_dbi_open(txn, chat ? "msgs" : NULL, MDB_CREATE, &dbi))
			|| (chat && (rc = mdb_dbi_open(txn, "cmids", MDB_CREATE, &dbi_cmid)))
			|| (chat && (rc = mdb_dbi_open(txn, "seqs", MDB_CREATE, &dbi_seq)))
			|| (rc = mdb_txn_commit(txn))){
		fprintf(stderr, "fsyncceiling: lmdb: %s\n", mdb_strerror(rc));
		goto fail;
	}
	t0 = now_ns();
	deadline = t0 + (uint64_t)(seconds * 1e9);
	do{
		unsigned char k[24];
		uint64_t s = now_ns();
		MDB_val key = {8, k}, data = {sizeof(val), val};
		if(!chat){
			for(int i = 0; i < 8; i++) k[i] = (unsigned char)(n >> (56 - 8 * i));
		}else{
			/* conversation c (a 14-byte id), its next seq */
			unsigned c = (unsigned)((n * 7919u) % 1000u);
			uint64_t q = ++seqs[c];
			snprintf((char *)k, 16, "d_%012u", c * 2654435761u);
			k[14] = 0;
			for(int i = 0; i < 8; i++) k[15 + i] = (unsigned char)(q >> (56 - 8 * i));
			key.mv_size = 23;
		}
		rc = mdb_txn_begin(env, NULL, 0, &txn);
		if(!rc) rc = mdb_put(txn, dbi, &key, &data, 0);
		if(!rc && chat){
			MDB_val ck = {23, k}, cv = {8, k + 15}, sk = {14, k};
			rc = mdb_put(txn, dbi_cmid, &ck, &cv, 0);
			if(!rc) rc = mdb_put(txn, dbi_seq, &sk, &cv, 0);
		}
		if(!rc) rc = mdb_txn_commit(txn);
		if(rc){
			fprintf(stderr, "fsyncceiling: lmdb: %s\n", mdb_strerror(rc));
			goto fail;
		}
		t1 = now_ns();
		hist_add(h, t1 - s);
		n++;
	}while(t1 < deadline);
	*rate = (double)n / ((double)(t1 - t0) / 1e9);
	mdb_env_close(env);
	rm_rf_env(dir);
	return 0;
fail:
	if(env) mdb_env_close(env);
	rm_rf_env(dir);
	return -1;
}

/* One durable small write per loop, on a plain file in base.
 * dsync false: write(300 bytes) at the end of a growing file + fdatasync.
 * dsync true: pwrite(560 bytes) on an O_DSYNC descriptor through a file
 * written with zeros first, back to offset 0 every 1 MiB (the journal's way). */
static int bench_file(const char *base, bool dsync, double seconds, double *rate, struct hist *h)
{
	static char zeros[1 << 20];
	char path[4096], buf[560];
	size_t len = dsync ? 560 : 300, off = 0;
	uint64_t n = 0, t0, t1, deadline;
	int fd;

	snprintf(path, sizeof(path), "%s/fsyncceiling-%s.%d", base, dsync ? "dsync" : "raw", (int)getpid());
	fd = open(path, O_CREAT | O_TRUNC | (dsync ? O_RDWR : O_WRONLY), 0600);
	if(fd >= 0 && dsync){
		if(pwrite(fd, zeros, sizeof(zeros), 0) != (ssize_t)sizeof(zeros) || fsync(fd) != 0){
			close(fd);
			fd = -1;
		}else{
			close(fd);
			fd = open(path, O_WRONLY | O_DSYNC);
		}
	}
	if(fd < 0){
		fprintf(stderr, "fsyncceiling: %s: %s\n", path, strerror(errno));
		unlink(path);
		return -1;
	}
	memset(buf, 'x', sizeof(buf));
	t0 = now_ns();
	deadline = t0 + (uint64_t)(seconds * 1e9);
	do{
		uint64_t s = now_ns();
		bool ok = dsync ? pwrite(fd, buf, len, (off_t)off) == (ssize_t)len
			: write(fd, buf, len) == (ssize_t)len && fdatasync(fd) == 0;
		if(!ok){
			fprintf(stderr, "fsyncceiling: %s: %s\n", dsync ? "pwrite O_DSYNC" : "write/fdatasync", strerror(errno));
			close(fd);
			unlink(path);
			return -1;
		}
		off += (len + 7) & ~(size_t)7;
		if(off + len > sizeof(zeros)) off = 0;
		t1 = now_ns();
		hist_add(h, t1 - s);
		n++;
	}while(t1 < deadline);
	*rate = (double)n / ((double)(t1 - t0) / 1e9);
	close(fd);
	unlink(path);
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: fsyncceiling [--dir DIR] [--seconds S] [--label TEXT]\n"
			"  DIR: a directory on the database's file system (default .)\n");
}

int main(int argc, char **argv)
{
	const char *dir = ".", *label = "";
	double seconds = 3, lmdb_rate = 0, chat_rate = 0, raw_rate = 0, dsync_rate = 0;
	static struct hist hl, hc, hr, hd;
	static const struct option opts[] = {
		{"dir", required_argument, NULL, 'd'},
		{"seconds", required_argument, NULL, 's'},
		{"label", required_argument, NULL, 'l'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	int c;
	char ljs[512], cjs[512], rjs[512], djs[512];
	struct statfs sf;

	while((c = getopt_long(argc, argv, "d:s:l:h", opts, NULL)) != -1){
		switch(c){
			case 'd': dir = optarg; break;
			case 's': seconds = atof(optarg); break;
			case 'l': label = optarg; break;
			default: usage(); return c == 'h' ? 0 : 2;
		}
	}
	hist_init(&hl);
	hist_init(&hc);
	hist_init(&hr);
	hist_init(&hd);
	if(bench_lmdb(dir, seconds, false, &lmdb_rate, &hl) || bench_lmdb(dir, seconds, true, &chat_rate, &hc)
			|| bench_file(dir, false, seconds, &raw_rate, &hr) || bench_file(dir, true, seconds, &dsync_rate, &hd)){
		return 1;
	}
	if(statfs(dir, &sf) != 0) memset(&sf, 0, sizeof(sf));
	hist_json(&hl, ljs, sizeof(ljs));
	hist_json(&hc, cjs, sizeof(cjs));
	hist_json(&hr, rjs, sizeof(rjs));
	hist_json(&hd, djs, sizeof(djs));
	printf("{\"bench\":\"fsyncceiling\",\"label\":\"%s\",\"dir\":\"%s\",\"fs_type\":\"0x%lx\",\"seconds\":%.1f,"
			"\"lmdb_commits_s\":%.1f,\"lmdb_chat_commits_s\":%.1f,\"fdatasync_s\":%.1f,\"dsync_s\":%.1f,"
			"\"lmdb_commit_us\":%s,\"lmdb_chat_commit_us\":%s,\"fdatasync_us\":%s,\"dsync_us\":%s}\n",
			label, dir, (unsigned long)sf.f_type, seconds, lmdb_rate, chat_rate, raw_rate, dsync_rate, ljs, cjs, rjs, djs);
	return 0;
}
