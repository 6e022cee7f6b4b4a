/*
 * chatseed — fills a mosquitto-chat LMDB directly, for the history benchmark.
 *
 * Seeding ten million messages through the broker would take hours; this
 * writes them through the core's own store interface (store.h) while no
 * broker runs, in large write transactions, with the same keys and the same
 * stamped JSON the plugin stores:
 *   conversation "g_hist<N>" (a group, members "hist" (admin) and "other"),
 *   seq 1 the "created" system message, seqs 2..N text messages of --body
 *   bytes, last_seq N, and (with --cmids) the cmid index of every message.
 * So a conversation "holding N messages" has last_seq N.
 *
 * usage: chatseed --db DIR [--map-size 16G] [--sizes 1000,100000,10000000]
 *                 [--batch 200000] [--body 200] [--cmids]
 * Prints one JSON line per conversation, then {"convs":"id:size,…"}.
 * A conversation already present with that last_seq is left as it is.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat.h"
#include "store.h"

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static size_t parse_size(const char *s)
{
	char *e;
	unsigned long long v = strtoull(s, &e, 10);
	switch(*e){
		case 'k': case 'K': v <<= 10; break;
		case 'm': case 'M': v <<= 20; break;
		case 'g': case 'G': v <<= 30; break;
		case 't': case 'T': v <<= 40; break;
		default: break;
	}
	return (size_t)v;
}

static void fail(const char *what, struct store *s)
{
	fprintf(stderr, "chatseed: %s: %s\n", what, s ? store__last_error(s) : "");
	exit(1);
}

static int seed_conv(struct store *s, uint64_t n, size_t batch, int body_len, bool cmids, const char *conv)
{
	static char buf[70000];
	char body[65536];
	struct store_txn *txn;
	struct store_conv sc;
	uint64_t ts = (uint64_t)time(NULL) * 1000 - n, seq = 1, t0 = now_ns();
	int len;

	if(store__begin(s, false, &txn) != STORE_OK) fail("begin", s);
	if(store__conv_get(txn, conv, &sc) == STORE_OK && sc.last_seq == n){
		store__abort(txn);
		printf("{\"bench\":\"chatseed\",\"conv\":\"%s\",\"size\":%" PRIu64 ",\"existing\":true}\n", conv, n);
		return 0;
	}
	store__abort(txn);

	for(int i = 0; i < body_len; i++) body[i] = "abcdefghijklmnopqrstuvwxyz "[i % 27];
	body[body_len] = '\0';

	while(seq <= n){
		uint64_t end = seq + batch;
		if(store__begin(s, true, &txn) != STORE_OK) fail("begin", s);
		if(seq == 1){
			memset(&sc, 0, sizeof(sc));
			sc.type = 'g';
			sc.created_ms = ts;
			snprintf(sc.name, sizeof(sc.name), "history %" PRIu64, n);
			if(store__conv_put(txn, conv, &sc) || store__member_put(txn, conv, "hist", 'a')
					|| store__member_put(txn, conv, "other", 'm')){
				fail("put", s);
			}
			len = snprintf(buf, sizeof(buf),
					"{\"conv\":\"%s\",\"seq\":1,\"id\":\"%s:1\",\"ts\":%" PRIu64 ",\"from\":\"hist\",\"type\":\"system\","
					"\"event\":\"created\",\"users\":[\"hist\",\"other\"],\"name\":\"%s\"}",
					conv, conv, ts, sc.name);
			if(store__msg_put(txn, conv, 1, buf, (size_t)len)) fail("msg_put", s);
			seq = 2;
		}
		for(; seq <= n && seq < end; seq++){
			const char *from = (seq & 1) ? "hist" : "other";
			char cmid[24];
			snprintf(cmid, sizeof(cmid), "c%" PRIu64, seq);
			len = snprintf(buf, sizeof(buf),
					"{\"conv\":\"%s\",\"seq\":%" PRIu64 ",\"id\":\"%s:%" PRIu64 "\",\"ts\":%" PRIu64 ",\"from\":\"%s\","
					"\"cmid\":\"%s\",\"type\":\"text\",\"body\":\"%s\"}",
					conv, seq, conv, seq, ts + seq, from, cmid, body);
			if(store__msg_put(txn, conv, seq, buf, (size_t)len)) fail("msg_put", s);
			if(cmids && store__cmid_put(txn, conv, from, cmid, seq)) fail("cmid_put", s);
		}
		if(store__commit(txn) != STORE_OK) fail("commit", s);
		if(n >= 1000000 && ((seq - 1) % (batch * 10) < batch)){
			fprintf(stderr, "chatseed: %s: %" PRIu64 " / %" PRIu64 " (%.0f msgs/s)\n", conv, seq - 1, n,
					(double)(seq - 1) / ((now_ns() - t0) / 1e9));
		}
	}
	{
		double secs = (now_ns() - t0) / 1e9;
		printf("{\"bench\":\"chatseed\",\"conv\":\"%s\",\"size\":%" PRIu64 ",\"seconds\":%.2f,\"msgs_s\":%.0f}\n", conv, n,
				secs, (double)n / secs);
		fflush(stdout);
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"db", required_argument, NULL, 'd'},
		{"map-size", required_argument, NULL, 'm'},
		{"sizes", required_argument, NULL, 's'},
		{"batch", required_argument, NULL, 'b'},
		{"body", required_argument, NULL, 'B'},
		{"cmids", no_argument, NULL, 'c'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	const char *db = NULL, *sizes = "1000,100000,10000000";
	size_t map_size = (size_t)16 << 30, batch = 200000;
	int body = 200, c;
	bool cmids = false;
	struct store *s;
	char err[256], list[1024] = "";
	char *spec, *save = NULL, *tok;
	uint64_t t0 = now_ns();

	while((c = getopt_long(argc, argv, "d:m:s:b:B:ch", opts, NULL)) != -1){
		switch(c){
			case 'd': db = optarg; break;
			case 'm': map_size = parse_size(optarg); break;
			case 's': sizes = optarg; break;
			case 'b': batch = (size_t)atol(optarg); break;
			case 'B': body = atoi(optarg); break;
			case 'c': cmids = true; break;
			default:
				fprintf(stderr, "usage: chatseed --db DIR [--map-size 16G] [--sizes 1000,100000,10000000] "
						"[--batch 200000] [--body 200] [--cmids]\n");
				return c == 'h' ? 0 : 2;
		}
	}
	if(!db || batch < 1 || body < 1 || body > 60000){
		fprintf(stderr, "chatseed: --db is required (and --batch >= 1, --body 1..60000)\n");
		return 2;
	}
	/* no fsync per commit: one flush at the end (store__close) */
	if(store__open(&s, db, map_size, false, 0, err, sizeof(err)) != STORE_OK){
		fprintf(stderr, "chatseed: %s\n", err);
		return 1;
	}
	spec = strdup(sizes);
	for(tok = strtok_r(spec, ",", &save); tok; tok = strtok_r(NULL, ",", &save)){
		uint64_t n = strtoull(tok, NULL, 10);
		char conv[CHAT_ID_MAX + 1];
		if(n < 2){
			fprintf(stderr, "chatseed: sizes must be >= 2\n");
			return 2;
		}
		snprintf(conv, sizeof(conv), "g_hist%" PRIu64, n);
		seed_conv(s, n, batch, body, cmids, conv);
		snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s:%" PRIu64, list[0] ? "," : "", conv, n);
	}
	free(spec);
	store__close(s);
	printf("{\"bench\":\"chatseed\",\"convs\":\"%s\",\"total_seconds\":%.2f}\n", list, (now_ns() - t0) / 1e9);
	return 0;
}
