/*
 * histbench — server-side cost of a `history` request, without a broker.
 *
 * Opens the database (a chatseed DB) with chat__open, exactly as the plugin
 * does, and times chat__handle_publish() of history requests on chat/req, as
 * user "hist": parse, validation, membership check, the cursor walk of one
 * page, and the JSON reply printed into the outbox — all the plugin does in
 * the broker's message hook except handing the reply to the broker. Random
 * `before` positions over the whole conversation, --limit (50) per page.
 *
 * usage: histbench --db DIR --convs ID:SIZE,… [--requests 20000] [--limit 50]
 *                  [--map-size 16G] [--seed N]
 * One JSON line per conversation: p50/p90/p99/p99.9/max in µs.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include "chat.h"
#include "hist.h"

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"db", required_argument, NULL, 'd'},
		{"convs", required_argument, NULL, 'c'},
		{"requests", required_argument, NULL, 'n'},
		{"limit", required_argument, NULL, 'l'},
		{"map-size", required_argument, NULL, 'm'},
		{"seed", required_argument, NULL, 's'},
		{"label", required_argument, NULL, 'L'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	const char *db = NULL, *convs = NULL, *map_size = "16G", *label = "";
	int requests = 20000, limit = 50, c;
	unsigned seed = 1;
	struct chat_config cfg;
	struct chat *chat;
	char err[256];
	char *spec, *save = NULL, *tok;
	uint64_t bad_total = 0;   /* requests answered with anything but a page, every size */
	static struct hist h;

	while((c = getopt_long(argc, argv, "d:c:n:l:m:s:L:h", opts, NULL)) != -1){
		switch(c){
			case 'd': db = optarg; break;
			case 'c': convs = optarg; break;
			case 'n': requests = atoi(optarg); break;
			case 'l': limit = atoi(optarg); break;
			case 'm': map_size = optarg; break;
			case 's': seed = (unsigned)strtoul(optarg, NULL, 10); break;
			case 'L': label = optarg; break;
			default:
				fprintf(stderr, "usage: histbench --db DIR --convs ID:SIZE,... [--requests N] [--limit 50] "
						"[--map-size 16G] [--seed N]\n");
				return c == 'h' ? 0 : 2;
		}
	}
	if(!db || !convs || requests < 1 || limit < 1){
		fprintf(stderr, "histbench: --db and --convs are required\n");
		return 2;
	}
	config__defaults(&cfg);
	/* one user asks thousands of pages a second here: no request rate limit
	 * (with the default, 20/s, all but the first burst were refused and the
	 * percentiles were of a handful of requests) */
	if(config__set(&cfg, "db_path", db, err, sizeof(err)) || config__set(&cfg, "map_size", map_size, err, sizeof(err))
			|| config__set(&cfg, "rate_request", "0", err, sizeof(err))){
		fprintf(stderr, "histbench: %s\n", err);
		return 2;
	}
	if(chat__open(&chat, &cfg, err, sizeof(err))){
		fprintf(stderr, "histbench: %s\n", err);
		return 1;
	}

	spec = strdup(convs);
	for(tok = strtok_r(spec, ",", &save); tok; tok = strtok_r(NULL, ",", &save)){
		char *colon = strchr(tok, ':');
		long long size;
		uint64_t bad = 0, reply_bytes = 0, t_all0, t_all1;
		long minflt0 = 0, majflt0 = 0;
		struct rusage ru;
		unsigned rs = seed;
		const struct chat_client cl = {.username = "hist", .client_id = "histbench", .protocol_version = 4};

		if(!colon){
			fprintf(stderr, "histbench: --convs wants ID:SIZE,...\n");
			return 2;
		}
		*colon = '\0';
		size = atoll(colon + 1);
		if(size < limit + 1){
			fprintf(stderr, "histbench: %s is too small for pages of %d\n", tok, limit);
			return 2;
		}
		hist_init(&h);
		t_all0 = now_ns();
		for(int phase = 0; phase < 2; phase++){
			int n = phase == 0 ? (requests / 10 > 100 ? requests / 10 : 100) : requests;
			for(int i = 0; i < n; i++){
				long long before = limit + 1 + (long long)(rand_r(&rs) % (unsigned)(size - limit + 1));
				char payload[256];
				struct chat_outbox out;
				struct chat_rewrite rw = {0};
				enum chat_verdict v;
				uint64_t t0, t1;
				int len = snprintf(payload, sizeof(payload),
						"{\"op\":\"history\",\"conv\":\"%s\",\"before\":%lld,\"limit\":%d,\"req_id\":%d}", tok, before,
						limit, i);
				outbox__init(&out);
				t0 = now_ns();
				v = chat__handle_publish(chat, &cl, "chat/req", payload, (size_t)len, &out, &rw);
				t1 = now_ns();
				if(v != CHAT_CONSUMED || !out.head || strncmp(out.head->payload, "{\"ok\":true", 10) != 0){
					if(bad++ < 3) fprintf(stderr, "histbench: bad reply: %.200s\n", out.head ? out.head->payload : "(none)");
				}else if(phase == 1){
					hist_add(&h, t1 - t0);
					reply_bytes += out.head->len;
				}
				outbox__clear(&out);
			}
			if(phase == 0){
				t_all0 = now_ns();
				getrusage(RUSAGE_SELF, &ru);
				minflt0 = ru.ru_minflt;
				majflt0 = ru.ru_majflt;
			}
		}
		t_all1 = now_ns();
		getrusage(RUSAGE_SELF, &ru);
		{
			char js[512];
			hist_json(&h, js, sizeof(js));
			printf("{\"bench\":\"histbench\",\"workload\":\"history\",\"layer\":\"server\",\"label\":\"%s\","
					"\"conv\":\"%s\",\"hist_size\":%lld,\"limit\":%d,\"requests\":%d,\"bad\":%" PRIu64
					",\"reply_bytes_mean\":%.0f,\"req_s\":%.0f,\"minor_faults_per_req\":%.2f,\"major_faults_per_req\":%.3f"
					",\"server_us\":%s}\n",
					label, tok, size, limit, requests, bad, h.count ? (double)reply_bytes / h.count : 0.0,
					requests / ((t_all1 - t_all0) / 1e9), (double)(ru.ru_minflt - minflt0) / requests,
					(double)(ru.ru_majflt - majflt0) / requests, js);
			fflush(stdout);
		}
		bad_total += bad;
	}
	free(spec);
	chat__close(chat);
	if(bad_total){
		fprintf(stderr, "histbench: %" PRIu64 " requests were not answered with a page: the figures are not of "
				"history pages\n", bad_total);
		return 1;
	}
	return 0;
}
