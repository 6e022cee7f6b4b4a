/*
 * chatbench — the load generator of the benchmark suite.
 *
 * One thread, one epoll loop, many libmosquitto connections: every client is a
 * struct mosquitto driven by hand (mosquitto_socket, mosquitto_loop_read /
 * loop_write / loop_misc, mosquitto_want_write), never by libmosquitto's own
 * loop or thread, so ten thousand connections cost ten thousand sockets and no
 * threads.
 *
 * Workloads (--workload), each against --target plain (mosquitto alone, the
 * same topic layout, the generator publishes straight to chat/c/{conv}/m) or
 * --target plugin (mosquitto + mosquitto-chat: conversations created by
 * requests, sends on chat/send/{conv}, stamped deliveries on chat/c/{conv}/m):
 *
 *   one2one  1,000 conversations between a sender user and a receiver user;
 *            --senders connections send, each to its share of the
 *            conversations; --receivers connections each subscribe to theirs.
 *            --rate R > 0: open loop, R msgs/s on a fixed schedule, latency
 *            counted from the *scheduled* send time (coordinated-omission
 *            safe). --rate 0: closed loop, each sender keeps --window messages
 *            in flight (a message leaves the window once it is both PUBACKed
 *            and delivered): the ceiling.
 *            --flooders N adds N connections of one more user (x0000, its
 *            devices) sending as fast as they can (--flood-window each in
 *            flight, refilled on every PUBACK) into their own conversation
 *            with a receiver of its own: with the plugin's rate limits most
 *            of it is refused (rate_limited); the quiet senders' latency is
 *            what the flood workload of run.py compares with and without.
 *            A flooder the broker disconnects (plugin_opt_rate_disconnect_after)
 *            reconnects at once with a fresh client, as an attacker would,
 *            and floods on; the kicks are counted.
 *   fanout   one --members group (500), every member online (500 receiver
 *            connections: the sender's own second device and the 499 others),
 *            one sender; closed loop (or --rate), deliveries/s and the latency
 *            to the last recipient.
 *   history  end-to-end latency of `history` requests (limit 50, random
 *            `before`) against conversations seeded by chatseed (--hist-convs).
 *   idle     --clients idle connections, each subscribed to chat/u/{me}/+ and
 *            three conversations' chat/c/{conv}/+ (plugin: as a member);
 *            broker RSS / RssAnon before and after → bytes per connection.
 *   storm    --clients clients get one message, remember its seq, disconnect;
 *            --storm-msgs messages per conversation are published; all
 *            reconnect at once and sync: plugin `history after=last_seq`
 *            (paged), plain persistent sessions (clean_session false) get
 *            their queued messages. Time until each client is synced.
 *
 * Every run prints one JSON line per figure set on stdout (broker CPU from
 * /proc/<pid>/stat and RSS from /proc/<pid>/status when --broker-pid is
 * given); diagnostics go to stderr.
 *
 * Message bodies carry the send time (CLOCK_MONOTONIC ns, the receivers run in
 * this process) and a global message number: "T<16 hex>G<8 hex>xxxx…",
 * padded to --body bytes. The plugin stamps it unchanged into its delivery.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "hist.h"

#define NS 1000000000ull

enum workload { W_ONE2ONE, W_FANOUT, W_HISTORY, W_IDLE, W_STORM };
static const char *const workload_names[] = {"one2one", "fanout", "history", "idle", "storm"};
enum target { T_PLAIN, T_PLUGIN };

static struct {
	const char *host;
	int port;
	enum workload workload;
	enum target target;
	const char *label;
	double warmup, duration, drain;
	double rate;
	int window;
	int senders, convs, receivers;
	int body;
	int members;
	int clients;
	int group_size;
	int storm_msgs;
	int connect_concurrency;
	int max_outstanding;
	int flooders, flood_window;
	const char *hist_convs;
	int hist_requests;
	int hist_limit;
	int broker_pid;
	int cpu;
	int keepalive;
	unsigned seed;
	double settle;
	double timeout;
	int verbose;
} O = {
	.host = "127.0.0.1",
	.port = 1883,
	.label = "",
	.warmup = 2,
	.duration = 10,
	.drain = 5,
	.rate = 0,
	.window = 0,
	.senders = 20,
	.convs = 1000,
	.receivers = 50,
	.body = 200,
	.members = 500,
	.clients = 0,
	.group_size = 10,
	.storm_msgs = 20,
	.connect_concurrency = 256,
	.max_outstanding = 200,
	.flooders = 0,
	.flood_window = 100,
	.hist_requests = 2000,
	.hist_limit = 50,
	.broker_pid = 0,
	.cpu = -1,
	.keepalive = 600,
	.seed = 1,
	.settle = 2,
	.timeout = 120,
};

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "chatbench: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static void info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void info(const char *fmt, ...)
{
	va_list ap;
	if(!O.verbose) return;
	va_start(ap, fmt);
	fprintf(stderr, "chatbench: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
}

/*
 * libmosquitto opens a socket pair for every client only to wake its own
 * select() loop (mosquitto_loop, loop_start), and writes a byte into it for
 * every packet it queues. This generator never runs that loop. Refusing the
 * pair (libmosquitto takes it as a warning) saves two descriptors per client
 * — 10,000 clients fit a 20,000 RLIMIT_NOFILE that cannot be raised in a
 * container — and one write() per packet. This definition interposes on
 * libc's for libmosquitto; nothing else here calls socketpair.
 */
int socketpair(int domain, int type, int protocol, int sv[2])
{
	(void)domain;
	(void)type;
	(void)protocol;
	(void)sv;
	errno = EMFILE;
	return -1;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static uint64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ====================================================================== *
 * JSON output
 * ====================================================================== */

static char out_buf[65536];
static size_t out_len;

static void J(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void J(const char *fmt, ...)
{
	va_list ap;
	int n;
	va_start(ap, fmt);
	n = vsnprintf(out_buf + out_len, sizeof(out_buf) - out_len, fmt, ap);
	va_end(ap);
	if(n > 0) out_len += (size_t)n;
	if(out_len >= sizeof(out_buf)) out_len = sizeof(out_buf) - 1;
}

static void J_hist(const char *name, const struct hist *h)
{
	char b[512];
	hist_json(h, b, sizeof(b));
	J(",\"%s\":%s", name, b);
}

static void J_begin(const char *workload)
{
	out_len = 0;
	J("{\"bench\":\"chatbench\",\"workload\":\"%s\",\"target\":\"%s\",\"label\":\"%s\"", workload,
			O.target == T_PLAIN ? "plain" : "plugin", O.label);
}

static void J_end(void)
{
	J("}\n");
	fwrite(out_buf, 1, out_len, stdout);
	fflush(stdout);
}

/* ====================================================================== *
 * Broker and generator resource use
 * ====================================================================== */

struct pstat {
	bool ok;
	double sys_busy_s;  /* all CPUs, non-idle time (/proc/stat) */
	double cpu_s;       /* utime + stime of the broker */
	long rss_kb, anon_kb, file_kb, hwm_kb;
	double gen_cpu_s;   /* this process */
	unsigned long long wchar, syscw, write_bytes, rchar, syscr;  /* broker /proc/<pid>/io */
	uint64_t t;         /* when */
};

static long status_kb(const char *status, const char *key)
{
	const char *p = strstr(status, key);
	return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

static struct pstat sample(void)
{
	struct pstat s = {0};
	struct rusage ru;
	char path[64], buf[4096];
	FILE *f;
	size_t n;

	s.t = now_ns();
	getrusage(RUSAGE_SELF, &ru);
	s.gen_cpu_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec
		+ ru.ru_stime.tv_usec / 1e6;
	if((f = fopen("/proc/stat", "r")) != NULL){
		unsigned long long v[10] = {0};
		if(fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
					&v[7]) == 8){
			/* user nice system [idle iowait] irq softirq steal */
			s.sys_busy_s = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
		}
		fclose(f);
	}
	if(O.broker_pid <= 0) return s;

	snprintf(path, sizeof(path), "/proc/%d/stat", O.broker_pid);
	if(!(f = fopen(path, "r"))) return s;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	{
		char *p = strrchr(buf, ')');
		unsigned long long ut = 0, st = 0;
		if(!p) return s;
		/* after ") ": state(3) … utime(14) stime(15) */
		if(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2) return s;
		s.cpu_s = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
	}
	snprintf(path, sizeof(path), "/proc/%d/io", O.broker_pid);
	if((f = fopen(path, "r")) != NULL){
		char line[128];
		while(fgets(line, sizeof(line), f)){
			unsigned long long v;
			if(sscanf(line, "wchar: %llu", &v) == 1) s.wchar = v;
			else if(sscanf(line, "syscw: %llu", &v) == 1) s.syscw = v;
			else if(sscanf(line, "write_bytes: %llu", &v) == 1) s.write_bytes = v;
			else if(sscanf(line, "rchar: %llu", &v) == 1) s.rchar = v;
			else if(sscanf(line, "syscr: %llu", &v) == 1) s.syscr = v;
		}
		fclose(f);
	}
	snprintf(path, sizeof(path), "/proc/%d/status", O.broker_pid);
	if(!(f = fopen(path, "r"))) return s;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	s.rss_kb = status_kb(buf, "VmRSS:");
	s.anon_kb = status_kb(buf, "RssAnon:");
	s.file_kb = status_kb(buf, "RssFile:");
	s.hwm_kb = status_kb(buf, "VmHWM:");
	s.ok = true;
	return s;
}

/* ,"broker":{cpu over [a,b], rss at b},"gen_cpu_pct":… */
static void J_usage(const struct pstat *a, const struct pstat *b, double units, const char *unit_name)
{
	double secs = (double)(b->t - a->t) / 1e9;
	if(secs <= 0) secs = 1e-9;
	if(a->ok && b->ok){
		double cpu = b->cpu_s - a->cpu_s;
		J(",\"broker\":{\"cpu_pct\":%.1f,\"cpu_s\":%.3f", 100.0 * cpu / secs, cpu);
		if(units > 0){
			/* counts, not times: unaffected by whatever else the machine does */
			J(",\"cpu_us_per_%s\":%.3f,\"write_calls_per_%s\":%.2f,\"write_bytes_per_%s\":%.0f"
					",\"read_calls_per_%s\":%.2f,\"disk_bytes_per_%s\":%.0f",
					unit_name, cpu * 1e6 / units, unit_name, (double)(b->syscw - a->syscw) / units,
					unit_name, (double)(b->wchar - a->wchar) / units, unit_name, (double)(b->syscr - a->syscr) / units,
					unit_name, (double)(b->write_bytes - a->write_bytes) / units);
		}
		J(",\"rss_kb\":%ld,\"rss_anon_kb\":%ld,\"rss_file_kb\":%ld,\"hwm_kb\":%ld}", b->rss_kb, b->anon_kb,
				b->file_kb, b->hwm_kb);
	}
	J(",\"gen_cpu_pct\":%.1f", 100.0 * (b->gen_cpu_s - a->gen_cpu_s) / secs);
	/* everything else the machine did meanwhile (softirq not charged to a
	 * process included): a high value means interference */
	J(",\"sys_busy_pct\":%.1f,\"other_cpu_pct\":%.1f", 100.0 * (b->sys_busy_s - a->sys_busy_s) / secs,
			100.0 * ((b->sys_busy_s - a->sys_busy_s) - (b->cpu_s - a->cpu_s) - (b->gen_cpu_s - a->gen_cpu_s)) / secs);
}

/* ====================================================================== *
 * Connections and the event loop
 * ====================================================================== */

struct due {
	uint64_t t;
	int vi;
};

struct conn {
	struct mosquitto *m;
	int idx;
	int fd;                 /* the fd registered in epoll, -1 if none */
	uint32_t ev;            /* events registered */
	bool dirty;
	bool up;                /* CONNACK accepted and socket open */
	bool connecting;
	bool expect_disc;
	char user[40];
	char cid[48];
	int subs_pending;

	/* sender */
	int *sconvs;
	int nsconv;
	int rr;
	int inflight;           /* sent, not yet acked and delivered */
	int unacked;            /* sent, no PUBACK yet */
	struct due *bl;         /* open loop: due but not handed to libmosquitto */
	size_t bl_head, bl_len, bl_cap;
	uint32_t *mid2g;
	bool flooder;           /* one2one --flooders: sends flat out, counts refusals */
	bool reconnect_due;     /* a flooder the broker dropped: reconnect from the loop */

	/* storm / history */
	int conv;               /* the client's conversation (storm) */
	uint64_t last_seq;
	int got;
	bool synced;
	uint64_t t_connack;
	uint64_t t_synced;
	int reqs;
};

static struct conn *C;
static int NC;
static int epfd = -1;
static int *dirty_list;
static int ndirty;
static int connects_pending;
static uint64_t last_misc;

static struct {
	uint64_t connect_failures;
	uint64_t unexpected_disconnects;
	uint64_t sub_failures;
	uint64_t publish_errors;
	uint64_t bad_payloads;
	uint64_t refused_replies;
} E;

static void mark_dirty(struct conn *c)
{
	if(!c->dirty){
		c->dirty = true;
		dirty_list[ndirty++] = c->idx;
	}
}

/* Keeps c's epoll registration in step with its socket and write queue. */
static void watch(struct conn *c)
{
	int fd = mosquitto_socket(c->m);
	uint32_t want;
	struct epoll_event e;

	if(fd < 0){
		c->fd = -1;
		c->ev = 0;
		return;
	}
	want = EPOLLIN | (mosquitto_want_write(c->m) ? EPOLLOUT : 0);
	e.events = want;
	e.data.u32 = (uint32_t)c->idx;
	if(fd != c->fd){
		if(epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e) != 0){
			if(errno != EEXIST || epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &e) != 0) die("epoll_ctl add: %s", strerror(errno));
		}
		c->fd = fd;
		c->ev = want;
	}else if(want != c->ev){
		if(epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &e) != 0){
			if(errno != ENOENT || epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e) != 0) die("epoll_ctl mod: %s", strerror(errno));
		}
		c->ev = want;
	}
}

static void flush_dirty(void)
{
	while(ndirty > 0){
		struct conn *c = &C[dirty_list[--ndirty]];
		c->dirty = false;
		if(mosquitto_socket(c->m) >= 0 && mosquitto_want_write(c->m)) mosquitto_loop_write(c->m, 1);
		watch(c);
	}
}

/* Reads what is buffered on c, until the socket says EAGAIN or read_batch
 * packets (level-triggered epoll comes back for the rest): small in open
 * loop, so that sends are not held up behind a long batch of reads. */
static int read_batch = 256;

static void conn_read(struct conn *c)
{
	for(int i = 0; i < read_batch; i++){
		int rc;
		if(mosquitto_socket(c->m) < 0) return;
		errno = 0;
		rc = mosquitto_loop_read(c->m, 1);
		if(rc != MOSQ_ERR_SUCCESS) return;
		if(errno == EAGAIN || errno == EWOULDBLOCK) return;
	}
}

/* Called between events: the open-loop schedule is served even while a
 * large batch of reads is handled. */
static void (*between_events)(void);
static void flood_reconnect_due(void);
static bool flood_reconnects;   /* some flooder waits to reconnect */

static void loop_once(uint64_t timeout_ns)
{
	static struct epoll_event evs[1024];
	struct timespec ts = {(time_t)(timeout_ns / NS), (long)(timeout_ns % NS)};
	uint64_t now;
	int n;

	flush_dirty();
	n = epoll_pwait2(epfd, evs, 1024, &ts, NULL);
	if(n < 0 && errno != EINTR) die("epoll_pwait2: %s", strerror(errno));
	for(int i = 0; i < n; i++){
		struct conn *c = &C[evs[i].data.u32];
		if((evs[i].events & EPOLLOUT) && mosquitto_socket(c->m) >= 0) mosquitto_loop_write(c->m, 1);
		if(evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_read(c);
		mark_dirty(c);
		if(between_events) between_events();
	}
	flush_dirty();
	if(flood_reconnects){
		flood_reconnect_due();
		flush_dirty();
	}
	now = now_ns();
	if(now - last_misc > NS){
		last_misc = now;
		for(int i = 0; i < NC; i++){
			if(C[i].m && mosquitto_socket(C[i].m) >= 0) mosquitto_loop_misc(C[i].m);
		}
	}
}

typedef bool (*pred_fn)(void *ud);

/* Runs the loop until pred holds; false on timeout. */
static bool run_until(pred_fn pred, void *ud, double seconds)
{
	uint64_t deadline = now_ns() + (uint64_t)(seconds * 1e9);
	while(!pred(ud)){
		if(now_ns() > deadline) return false;
		loop_once(NS / 1000);
	}
	return true;
}

static void run_for(double seconds)
{
	uint64_t end = now_ns() + (uint64_t)(seconds * 1e9);
	for(uint64_t t = now_ns(); t < end; t = now_ns()){
		loop_once(end - t < NS / 100 ? end - t : NS / 100);
	}
}

/* ---- callbacks ---- */

static void on_reply(struct conn *c, const char *p, size_t len);
static void on_delivery(struct conn *c, const char *p, size_t len);
static void on_puback(struct conn *c, int mid);
static void on_connected(struct conn *c);

static void cb_connect(struct mosquitto *m, void *obj, int rc)
{
	struct conn *c = obj;
	if(c->connecting){
		c->connecting = false;
		connects_pending--;
	}
	if(rc == 0){
		c->up = true;
		c->t_connack = now_ns();
		on_connected(c);
	}else{
		E.connect_failures++;
		if(E.connect_failures < 5) fprintf(stderr, "chatbench: %s: CONNACK %d (%s)\n", c->cid, rc, mosquitto_connack_string(rc));
	}
	mark_dirty(c);
}

static void flood_dropped(struct conn *c, bool was_up);

static void cb_disconnect(struct mosquitto *m, void *obj, int rc)
{
	struct conn *c = obj;
	if(c->flooder && !c->expect_disc){
		flood_dropped(c, !c->connecting);
	}
	if(c->connecting){
		c->connecting = false;
		connects_pending--;
		E.connect_failures++;
	}else if(!c->expect_disc && !c->flooder){
		E.unexpected_disconnects++;
		if(E.unexpected_disconnects < 5) fprintf(stderr, "chatbench: %s disconnected: %s\n", c->cid, mosquitto_strerror(rc));
	}
	c->up = false;
	c->fd = -1;
	c->ev = 0;
}

static void cb_subscribe(struct mosquitto *m, void *obj, int mid, int qos_count, const int *granted)
{
	struct conn *c = obj;
	c->subs_pending--;
	for(int i = 0; i < qos_count; i++){
		if(granted[i] >= 0x80) E.sub_failures++;
	}
}

static void storm_puback(struct conn *c, int mid);
static void flood_puback(struct conn *c);
static void flood_refused(void);

static void cb_publish(struct mosquitto *m, void *obj, int mid)
{
	if(((struct conn *)obj)->flooder){
		flood_puback(obj);
	}else if(O.workload == W_STORM){
		storm_puback(obj, mid);
	}else{
		on_puback(obj, mid);
	}
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && memcmp(s + a - b, suffix, b) == 0;
}

static void cb_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
	struct conn *c = obj;
	if(ends_with(msg->topic, "/reply")){
		on_reply(c, msg->payload, (size_t)msg->payloadlen);
	}else if(ends_with(msg->topic, "/event")){
		/* conv.added / send_failed: not part of any figure */
		if(msg->payloadlen > 0 && memmem(msg->payload, (size_t)msg->payloadlen, "send_failed", 11) && c->flooder){
			flood_refused();
		}else if(msg->payloadlen > 0 && memmem(msg->payload, (size_t)msg->payloadlen, "send_failed", 11)){
			E.refused_replies++;
			if(E.refused_replies < 5) fprintf(stderr, "chatbench: %.*s\n", msg->payloadlen, (char *)msg->payload);
		}
	}else{
		on_delivery(c, msg->payload, (size_t)msg->payloadlen);
	}
}

static void conn_init(struct conn *c, int idx, const char *user, const char *cid, bool clean)
{
	memset(c, 0, sizeof(*c));
	c->idx = idx;
	c->fd = -1;
	snprintf(c->user, sizeof(c->user), "%s", user);
	snprintf(c->cid, sizeof(c->cid), "%s", cid);
	c->m = mosquitto_new(c->cid, clean, c);
	if(!c->m) die("mosquitto_new: %s", strerror(errno));
	mosquitto_int_option(c->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
	mosquitto_int_option(c->m, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_max_inflight_messages_set(c->m, 0);
	mosquitto_username_pw_set(c->m, c->user, NULL);
	mosquitto_connect_callback_set(c->m, cb_connect);
	mosquitto_disconnect_callback_set(c->m, cb_disconnect);
	mosquitto_subscribe_callback_set(c->m, cb_subscribe);
	mosquitto_publish_callback_set(c->m, cb_publish);
	mosquitto_message_callback_set(c->m, cb_message);
}

static void conns_alloc(int n)
{
	NC = n;
	C = calloc((size_t)n, sizeof(*C));
	dirty_list = calloc((size_t)n, sizeof(int));
	if(!C || !dirty_list) die("out of memory");
}

static void conn_start(struct conn *c, bool first)
{
	int rc;
	c->connecting = true;
	c->expect_disc = false;
	connects_pending++;
	rc = first ? mosquitto_connect_async(c->m, O.host, O.port, O.keepalive) : mosquitto_reconnect_async(c->m);
	if(rc != MOSQ_ERR_SUCCESS){
		die("connect %s to %s:%d: %s (%s)", c->cid, O.host, O.port, mosquitto_strerror(rc),
				rc == MOSQ_ERR_ERRNO ? strerror(errno) : "");
	}
	mark_dirty(c);
}

static bool no_connect_pending(void *ud)
{
	return connects_pending == 0;
}

/* Connects C[a..b) with at most `conc` CONNACKs outstanding (0: all at once). */
static void connect_range(int a, int b, int conc, bool first)
{
	int next = a;
	uint64_t deadline = now_ns() + (uint64_t)(O.timeout * 1e9);
	while(next < b){
		while(next < b && (conc <= 0 || connects_pending < conc)) conn_start(&C[next++], first);
		loop_once(NS / 1000);
		if(now_ns() > deadline) die("timed out connecting");
	}
	if(!run_until(no_connect_pending, NULL, O.timeout)) die("timed out waiting for CONNACKs");
	for(int i = a; i < b; i++){
		if(!C[i].up) die("%s could not connect (%" PRIu64 " failures)", C[i].cid, E.connect_failures);
	}
}

static bool subs_done(void *ud)
{
	int *r = ud;
	for(int i = r[0]; i < r[1]; i++){
		if(C[i].subs_pending > 0) return false;
	}
	return true;
}

static void subscribe(struct conn *c, int n, char *const *filters)
{
	int rc = mosquitto_subscribe_multiple(c->m, NULL, n, filters, 1, 0, NULL);
	if(rc) die("subscribe %s: %s", c->cid, mosquitto_strerror(rc));
	c->subs_pending++;
	mark_dirty(c);
}

static void wait_subs(int a, int b)
{
	int r[2] = {a, b};
	if(!run_until(subs_done, r, O.timeout)) die("timed out waiting for SUBACKs");
	if(E.sub_failures) die("%" PRIu64 " subscriptions were refused", E.sub_failures);
}

static void publish(struct conn *c, int *mid, const char *topic, const void *payload, size_t len)
{
	int rc = mosquitto_publish(c->m, mid, topic, (int)len, payload, 1, false);
	if(rc){
		E.publish_errors++;
		if(E.publish_errors < 5) fprintf(stderr, "chatbench: publish %s: %s\n", c->cid, mosquitto_strerror(rc));
	}
	mark_dirty(c);
}

/* ====================================================================== *
 * Tiny JSON field readers (payloads are ours or the plugin's, unformatted)
 * ====================================================================== */

static const char *jfind(const char *p, size_t len, const char *pat)
{
	return memmem(p, len, pat, strlen(pat));
}

static bool jint(const char *p, size_t len, const char *key, int64_t *out)
{
	char pat[64];
	const char *q;
	snprintf(pat, sizeof(pat), "\"%s\":", key);
	q = jfind(p, len, pat);
	if(!q) return false;
	*out = strtoll(q + strlen(pat), NULL, 10);
	return true;
}

/* The value of the last "seq": in p (the newest message of a history page). */
static int64_t jlast_seq(const char *p, size_t len, int *count)
{
	const char *q = p, *end = p + len, *last = NULL;
	int n = 0;
	while((q = memmem(q, (size_t)(end - q), "\"seq\":", 6)) != NULL){
		last = q;
		n++;
		q += 6;
	}
	*count = n;
	return last ? strtoll(last + 6, NULL, 10) : -1;
}

/* ====================================================================== *
 * Conversations, requests
 * ====================================================================== */

struct conv {
	char id[72];
	char topic_pub[100];    /* plugin: chat/send/{id}; plain: chat/c/{id}/m */
	char filter[100];       /* chat/c/{id}/+ */
	int sender;             /* conn that sends to it (traffic workloads) */
	uint64_t k;             /* messages sent to it (plain: its seq) */
	bool created;
};

static struct conv *V;
static int NV;

static void convs_alloc(int n)
{
	NV = n;
	V = calloc((size_t)n, sizeof(*V));
	if(!V) die("out of memory");
}

static void conv_set_id(struct conv *v, const char *id)
{
	snprintf(v->id, sizeof(v->id), "%s", id);
	if(O.target == T_PLUGIN){
		snprintf(v->topic_pub, sizeof(v->topic_pub), "chat/send/%s", id);
	}else{
		snprintf(v->topic_pub, sizeof(v->topic_pub), "chat/c/%s/m", id);
	}
	snprintf(v->filter, sizeof(v->filter), "chat/c/%s/+", id);
	v->created = true;
}

/* Plain ids look like the plugin's: a kind, '_', 12 characters. */
static void plain_ids(void)
{
	for(int i = 0; i < NV; i++){
		char id[32];
		snprintf(id, sizeof(id), "%c_%012d", O.workload == W_ONE2ONE ? 'd' : 'g', i);
		conv_set_id(&V[i], id);
	}
}

/* Requests in flight: req_id → what to do with the reply. */
enum req_kind { R_CREATE, R_HISTORY, R_STORM };
struct req {
	enum req_kind kind;
	int arg;                /* conv index (create), client (storm) */
	uint64_t t;
	bool done;
};
static struct req *RQ;
static int nreq, reqcap, reqs_outstanding;

static int req_new(enum req_kind kind, int arg)
{
	if(nreq == reqcap){
		reqcap = reqcap ? reqcap * 2 : 4096;
		RQ = realloc(RQ, (size_t)reqcap * sizeof(*RQ));
		if(!RQ) die("out of memory");
	}
	RQ[nreq] = (struct req){kind, arg, now_ns(), false};
	reqs_outstanding++;
	return nreq++;
}

static void request(struct conn *c, const char *json)
{
	publish(c, NULL, "chat/req", json, strlen(json));
}

static bool no_req_outstanding(void *ud)
{
	return reqs_outstanding == 0;
}

static struct hist h_hist;      /* history round trips */
static bool hist_measuring;
static uint64_t hist_bad;

static void storm_reply(struct conn *c, int id, const char *p, size_t len);

static void on_reply(struct conn *c, const char *p, size_t len)
{
	int64_t id;
	struct req *r;

	if(!jint(p, len, "req_id", &id) || id < 0 || id >= nreq){
		E.bad_payloads++;
		return;
	}
	r = &RQ[id];
	if(r->done){
		E.bad_payloads++;
		return;
	}
	r->done = true;
	reqs_outstanding--;
	if(len < 10 || memcmp(p, "{\"ok\":true", 10) != 0){
		E.refused_replies++;
		if(E.refused_replies < 5) fprintf(stderr, "chatbench: request refused: %.*s\n", (int)len, p);
		if(r->kind == R_HISTORY) hist_bad++;
		return;
	}
	switch(r->kind){
		case R_CREATE: {
			const char *q = jfind(p, len, "\"conv\":{\"conv\":\"");
			char cid[72];
			size_t n = 0;
			if(!q){
				E.bad_payloads++;
				return;
			}
			q += 16;
			while(q < p + len && *q != '"' && n < sizeof(cid) - 1) cid[n++] = *q++;
			cid[n] = '\0';
			conv_set_id(&V[r->arg], cid);
			break;
		}
		case R_HISTORY: {
			int count;
			jlast_seq(p, len, &count);
			if(count != O.hist_limit) hist_bad++;
			if(hist_measuring) hist_add(&h_hist, now_ns() - r->t);
			break;
		}
		case R_STORM:
			storm_reply(c, (int)id, p, len);
			break;
	}
}

/* Creates a group of users[] (the creator is c's user) for conv vi. */
static void create_group(struct conn *c, int vi, const char *name, char **users, int n)
{
	size_t cap = 128 + (size_t)n * 48, len;
	char *buf = malloc(cap);
	int id = req_new(R_CREATE, vi);
	if(!buf) die("out of memory");
	len = (size_t)snprintf(buf, cap, "{\"op\":\"conv.create\",\"type\":\"group\",\"name\":\"%s\",\"req_id\":%d,\"members\":[",
			name, id);
	for(int i = 0; i < n; i++) len += (size_t)snprintf(buf + len, cap - len, "%s\"%s\"", i ? "," : "", users[i]);
	snprintf(buf + len, cap - len, "]}");
	request(c, buf);
	free(buf);
}

static void create_direct(struct conn *c, int vi, const char *with)
{
	char buf[256];
	int id = req_new(R_CREATE, vi);
	snprintf(buf, sizeof(buf), "{\"op\":\"conv.create\",\"type\":\"direct\",\"with\":\"%s\",\"req_id\":%d}", with, id);
	request(c, buf);
}

/* Waits for every reply, keeping at most `window` requests in flight is the
 * caller's job; this checks that every conversation got an id. */
static void wait_creates(void)
{
	if(!run_until(no_req_outstanding, NULL, O.timeout)) die("timed out waiting for conv.create replies");
	for(int i = 0; i < NV; i++){
		if(!V[i].created) die("conversation %d was not created (%" PRIu64 " refusals)", i, E.refused_replies);
	}
}

static void subscribe_own(struct conn *c)
{
	char f[100];
	char *fs[1] = {f};
	snprintf(f, sizeof(f), "chat/u/%s/+", c->user);
	subscribe(c, 1, fs);
}

/* ====================================================================== *
 * Traffic: one2one and fanout
 * ====================================================================== */

struct msg {
	uint64_t t;         /* send time (open loop: scheduled) */
	uint32_t conv;
	uint16_t got;
	uint8_t acked;
	uint8_t measured;
};

static struct msg *M;
static uint64_t nmsg, msgcap;
static int need = 1;            /* deliveries per message */
static bool closed_loop, sending;
static uint64_t tw0, tw1;       /* measurement window */
static uint64_t win_deliveries, win_completed, win_sent, dups;
static struct hist h_e2e, h_last, h_puback;
static char body_pad[70000];
/* cmids are unique per run, so a re-used database never sees a duplicate */
static char run_nonce[24];

static void on_connected(struct conn *c);

static uint32_t *mid_table(void)
{
	uint32_t *t = malloc(65536 * sizeof(uint32_t));
	if(!t) die("out of memory");
	memset(t, 0xff, 65536 * sizeof(uint32_t));
	return t;
}

static uint64_t send_msg(struct conn *c, int vi, uint64_t t)
{
	static char buf[80000];
	struct conv *v = &V[vi];
	uint64_t g = nmsg;
	char body[64];
	int mid = 0, bl, len;

	if(nmsg == msgcap){
		msgcap = msgcap ? msgcap * 2 : (1u << 20);
		M = realloc(M, msgcap * sizeof(*M));
		if(!M) die("out of memory");
	}
	nmsg++;
	M[g] = (struct msg){t, (uint32_t)vi, 0, 0, t >= tw0 && t < tw1};
	if(M[g].measured) win_sent++;
	bl = snprintf(body, sizeof(body), "T%016" PRIx64 "G%08" PRIx32, t, (uint32_t)g);
	v->k++;
	if(O.target == T_PLUGIN){
		len = snprintf(buf, sizeof(buf), "{\"cmid\":\"%s%" PRIu64 "\",\"body\":\"%s%.*s\"}", run_nonce, g, body,
				O.body > bl ? O.body - bl : 0, body_pad);
	}else{
		/* the stamped shape the plugin delivers */
		len = snprintf(buf, sizeof(buf),
				"{\"conv\":\"%s\",\"seq\":%" PRIu64 ",\"id\":\"%s:%" PRIu64 "\",\"ts\":%" PRIu64 ",\"from\":\"%s\","
				"\"cmid\":\"%s%" PRIu64 "\",\"type\":\"text\",\"body\":\"%s%.*s\"}",
				v->id, v->k + 1, v->id, v->k + 1, wall_ms(), c->user, run_nonce, g, body, O.body > bl ? O.body - bl : 0, body_pad);
	}
	publish(c, &mid, v->topic_pub, buf, (size_t)len);
	c->mid2g[mid & 0xffff] = (uint32_t)g;
	c->inflight++;
	c->unacked++;
	return g;
}

static void fill_window(struct conn *c)
{
	while(sending && c->inflight < O.window){
		int vi = c->sconvs[c->rr];
		c->rr = (c->rr + 1) % c->nsconv;
		send_msg(c, vi, now_ns());
	}
}

/* --flooders: what the flooding user sent, had acked, had refused and got
 * delivered inside the measurement window */
static struct {
	int conv;               /* its conversation (index in V), -1 if none */
	uint64_t sent, acked, refused, delivered, n;
	uint64_t kicked, reconnects;   /* dropped by the broker while up; reconnects started */
} FL = {.conv = -1};

static bool in_window(uint64_t t)
{
	return t >= tw0 && t < tw1;
}

static void flood_send(struct conn *c)
{
	static char buf[80000];
	struct conv *v = &V[FL.conv];
	uint64_t n = FL.n++;
	int len;

	if(O.target == T_PLUGIN){
		len = snprintf(buf, sizeof(buf), "{\"cmid\":\"%sf%" PRIu64 "\",\"body\":\"F%.*s\"}", run_nonce, n,
				O.body - 1, body_pad);
	}else{
		len = snprintf(buf, sizeof(buf),
				"{\"conv\":\"%s\",\"seq\":%" PRIu64 ",\"id\":\"%s:%" PRIu64 "\",\"ts\":%" PRIu64 ",\"from\":\"%s\","
				"\"cmid\":\"%sf%" PRIu64 "\",\"type\":\"text\",\"body\":\"F%.*s\"}",
				v->id, n + 1, v->id, n + 1, wall_ms(), c->user, run_nonce, n, O.body - 1, body_pad);
	}
	publish(c, NULL, v->topic_pub, buf, (size_t)len);
	c->inflight++;
	if(in_window(now_ns())) FL.sent++;
}

static void flood_fill(struct conn *c)
{
	while(sending && c->inflight < O.flood_window) flood_send(c);
}

/* Every PUBACK (accepted or, MQTT 3.1.1, refused alike) frees a slot. */
static void flood_puback(struct conn *c)
{
	c->inflight--;
	if(in_window(now_ns())) FL.acked++;
	flood_fill(c);
}

static void flood_refused(void)
{
	if(in_window(now_ns())) FL.refused++;
}

/* The broker dropped a flooder (or refused its connection): what it had in
 * flight is lost, and the loop reconnects it at once while the flood goes on.
 * libmosquitto keeps unacked QoS 1 messages for a resend that, with no
 * in-flight limit, never comes: hence a fresh client each time. */
static void flood_dropped(struct conn *c, bool was_up)
{
	if(was_up && in_window(now_ns())) FL.kicked++;
	c->inflight = 0;
	if(sending){
		c->reconnect_due = true;
		flood_reconnects = true;
	}
}

static void flood_reconnect_due(void)
{
	flood_reconnects = false;
	for(int i = 0; i < NC; i++){
		struct conn *c = &C[i];
		char user[sizeof(c->user)], cid[sizeof(c->cid)];
		if(!c->flooder || !c->reconnect_due) continue;
		memcpy(user, c->user, sizeof(user));
		memcpy(cid, c->cid, sizeof(cid));
		mosquitto_destroy(c->m);
		conn_init(c, i, user, cid, true);
		c->flooder = true;
		if(in_window(now_ns())) FL.reconnects++;
		conn_start(c, true);
	}
}

/* A flooder is (again) connected: its events, then flat out. */
static void flood_connected(struct conn *c)
{
	if(!sending) return;
	if(O.target == T_PLUGIN) subscribe_own(c);
	flood_fill(c);
}

static void complete(uint64_t g)
{
	struct conn *s = &C[V[M[g].conv].sender];
	s->inflight--;
	if(M[g].measured) win_completed++;
	if(closed_loop && sending) fill_window(s);
}

/*
 * Open loop, and libmosquitto: every QoS 1 publish and every PUBACK makes
 * libmosquitto 2.0 walk the connection's whole list of outgoing messages
 * (message__release_to_inflight), so a connection with tens of thousands of
 * messages outstanding — an overloaded broker — costs the generator
 * quadratic time and it stops keeping its schedule. So each sender hands
 * libmosquitto at most O.max_outstanding unacknowledged messages and keeps
 * the rest, in order, in its own queue: they still count from their
 * scheduled time.
 */
static void pump(struct conn *c)
{
	while(c->bl_len > 0 && c->unacked < O.max_outstanding){
		struct due d = c->bl[c->bl_head];
		c->bl_head = (c->bl_head + 1) % c->bl_cap;
		c->bl_len--;
		send_msg(c, d.vi, d.t);
	}
}

static void enqueue_due(struct conn *c, int vi, uint64_t t)
{
	if(c->bl_len == c->bl_cap){
		size_t ncap = c->bl_cap ? c->bl_cap * 2 : 1024;
		struct due *n = malloc(ncap * sizeof(*n));
		if(!n) die("out of memory");
		for(size_t i = 0; i < c->bl_len; i++) n[i] = c->bl[(c->bl_head + i) % c->bl_cap];
		free(c->bl);
		c->bl = n;
		c->bl_head = 0;
		c->bl_cap = ncap;
	}
	c->bl[(c->bl_head + c->bl_len) % c->bl_cap] = (struct due){t, vi};
	c->bl_len++;
	pump(c);
}

static void on_puback(struct conn *c, int mid)
{
	uint64_t g, now;
	if(!c->mid2g) return;      /* not a sender */
	g = c->mid2g[mid & 0xffff];
	c->mid2g[mid & 0xffff] = UINT32_MAX;
	if(g >= nmsg || M[g].acked) return;   /* a setup publish */
	now = now_ns();
	M[g].acked = 1;
	c->unacked--;
	if(c->bl_len) pump(c);
	if(M[g].measured) hist_add(&h_puback, now - M[g].t);
	if(M[g].got >= need) complete(g);
}

/* Parses "body":"T<t>G<g> of a delivery; false if it is not one of ours. */
static bool parse_body(const char *p, size_t len, uint64_t *t, uint64_t *g)
{
	const char *q = jfind(p, len, "\"body\":\"T");
	char *e;
	if(!q || (size_t)(p + len - q) < 9 + 16 + 1 + 8) return false;
	q += 9;
	*t = strtoull(q, &e, 16);
	if(e != q + 16 || *e != 'G') return false;
	*g = strtoull(e + 1, &e, 16);
	return e == q + 16 + 1 + 8;
}

static void storm_delivery(struct conn *c, const char *p, size_t len);

static void on_delivery(struct conn *c, const char *p, size_t len)
{
	uint64_t t, g, now;

	if(O.workload == W_STORM){
		storm_delivery(c, p, len);
		return;
	}
	if(O.workload != W_ONE2ONE && O.workload != W_FANOUT) return;
	if(jfind(p, len, "\"body\":\"F")){
		if(in_window(now_ns())) FL.delivered++;
		return;
	}
	if(!parse_body(p, len, &t, &g)){
		/* the plugin's "created" system message would land here; setup
		 * subscribes after it, so count anything else as bad */
		E.bad_payloads++;
		return;
	}
	if(g >= nmsg || M[g].t != t){
		E.bad_payloads++;
		return;
	}
	now = now_ns();
	if(now >= tw0 && now < tw1) win_deliveries++;
	M[g].got++;
	if(M[g].got > need){
		dups++;
		return;
	}
	if(M[g].measured){
		hist_add(&h_e2e, now - t);
		if(M[g].got == need) hist_add(&h_last, now - t);
	}
	if(M[g].got == need && M[g].acked) complete(g);
}

/* The open-loop schedule: message k at t0 + k/R, rotating over the senders
 * first, then over each sender's conversations. */
static struct {
	uint64_t t0, end, k, lag_max;
	double interval;
	int *senders;
	int n;
} SCH;

/* Sends every message whose time has come (at most 256 at once); returns the
 * time of the next one. */
static uint64_t send_due(void)
{
	uint64_t now = now_ns(), next = SCH.t0 + (uint64_t)((double)SCH.k * SCH.interval);
	int burst = 0;
	while(next <= now && next < SCH.end && burst < 256){
		struct conn *c = &C[SCH.senders[SCH.k % (uint64_t)SCH.n]];
		int vi = c->sconvs[(SCH.k / (uint64_t)SCH.n) % (uint64_t)c->nsconv];
		enqueue_due(c, vi, next);
		if(now - next > SCH.lag_max) SCH.lag_max = now - next;
		SCH.k++;
		burst++;
		next = SCH.t0 + (uint64_t)((double)SCH.k * SCH.interval);
	}
	return next;
}

static void send_due_hook(void)
{
	if(sending) send_due();
}

static void traffic_run(void)
{
	struct pstat s0 = {0}, s1 = {0}, s2 = {0};
	bool have0 = false;
	uint64_t t0, t_end, lag_max = 0, drain_end, undelivered = 0, undelivered_measured = 0, unacked = 0, backlog_left = 0;
	int nsenders = 0;
	int *senders = calloc((size_t)NC, sizeof(int));

	for(int i = 0; i < NC; i++){
		if(C[i].nsconv > 0) senders[nsenders++] = i;
	}
	hist_init(&h_e2e);
	hist_init(&h_last);
	hist_init(&h_puback);
	memset(body_pad, 'x', sizeof(body_pad));
	closed_loop = O.rate <= 0;
	if(closed_loop && O.window <= 0) O.window = O.workload == W_FANOUT ? 8 : 20;

	t0 = now_ns();
	tw0 = t0 + (uint64_t)(O.warmup * 1e9);
	tw1 = tw0 + (uint64_t)(O.duration * 1e9);
	t_end = tw1;
	SCH.t0 = t0;
	SCH.end = t_end;
	SCH.interval = O.rate > 0 ? 1e9 / O.rate : 0;
	SCH.senders = senders;
	SCH.n = nsenders;
	sending = true;
	for(int i = 0; i < NC; i++){
		if(C[i].flooder) flood_fill(&C[i]);
	}
	if(closed_loop){
		for(int i = 0; i < nsenders; i++) fill_window(&C[senders[i]]);
	}else{
		between_events = send_due_hook;
		read_batch = 32;
	}
	for(;;){
		uint64_t now = now_ns(), timeout = NS / 100;
		if(!have0 && now >= tw0){
			s0 = sample();
			have0 = true;
		}
		if(now >= t_end){
			s1 = sample();
			sending = false;
			break;
		}
		if(!closed_loop){
			uint64_t next = send_due();
			now = now_ns();
			timeout = next > now ? next - now : 0;
			if(timeout > NS / 100) timeout = NS / 100;
		}
		loop_once(timeout);
	}
	between_events = NULL;
	lag_max = SCH.lag_max;
	/* drain what is in flight */
	drain_end = now_ns() + (uint64_t)(O.drain * 1e9);
	for(;;){
		bool all = true;
		for(int i = 0; i < nsenders && all; i++){
			if(C[senders[i]].inflight > 0 || C[senders[i]].bl_len > 0) all = false;
		}
		if(all || now_ns() > drain_end) break;
		loop_once(NS / 1000);
	}
	s2 = sample();
	/* a measured message still missing at the end is at least this late:
	 * count it so (coordinated omission would otherwise drop it) */
	for(uint64_t g = 0, end = now_ns(); g < nmsg; g++){
		if(M[g].got < need){
			undelivered += (uint64_t)(need - M[g].got);
			if(M[g].measured){
				undelivered_measured += (uint64_t)(need - M[g].got);
				for(int r = M[g].got; r < need; r++) hist_add(&h_e2e, end - M[g].t);
				hist_add(&h_last, end - M[g].t);
			}
		}
		if(!M[g].acked){
			unacked++;
			if(M[g].measured) hist_add(&h_puback, now_ns() - M[g].t);
		}
	}
	/* due, never handed to the broker: as late as the end of the run */
	for(int i = 0; i < nsenders; i++){
		struct conn *c = &C[senders[i]];
		for(size_t j = 0; j < c->bl_len; j++){
			struct due d = c->bl[(c->bl_head + j) % c->bl_cap];
			uint64_t end = now_ns();
			backlog_left++;
			undelivered += (uint64_t)need;
			unacked++;
			if(d.t >= tw0 && d.t < tw1){
				undelivered_measured += (uint64_t)need;
				win_sent++;
				for(int r = 0; r < need; r++) hist_add(&h_e2e, end - d.t);
				hist_add(&h_last, end - d.t);
				hist_add(&h_puback, end - d.t);
			}
		}
	}

	double secs = (double)(s1.t - s0.t) / 1e9;
	J_begin(workload_names[O.workload]);
	J(",\"mode\":\"%s\",\"rate_offered\":%.1f,\"window\":%d,\"senders\":%d,\"convs\":%d,\"recipients\":%d,\"body\":%d",
			closed_loop ? "closed" : "open", O.rate, closed_loop ? O.window : 0, nsenders, NV, need, O.body);
	J(",\"warmup_s\":%.1f,\"duration_s\":%.3f", O.warmup, secs);
	J(",\"sent\":%" PRIu64 ",\"sent_in_window\":%" PRIu64 ",\"send_rate\":%.1f", nmsg, win_sent, win_sent / secs);
	J(",\"deliveries_in_window\":%" PRIu64 ",\"deliveries_s\":%.1f,\"msgs_s\":%.1f", win_deliveries,
			win_deliveries / secs, win_deliveries / secs / need);
	J(",\"completed_in_window\":%" PRIu64, win_completed);
	J(",\"undelivered\":%" PRIu64 ",\"undelivered_measured\":%" PRIu64 ",\"unacked\":%" PRIu64 ",\"dup\":%" PRIu64,
			undelivered, undelivered_measured, unacked, dups);
	if(!closed_loop){
		J(",\"schedule_lag_max_us\":%.1f,\"max_outstanding\":%d,\"never_sent\":%" PRIu64, lag_max / 1e3,
				O.max_outstanding, backlog_left);
	}
	if(O.flooders > 0){
		J(",\"flood\":{\"connections\":%d,\"window\":%d,\"sent_s\":%.1f,\"acked_s\":%.1f,\"refused_s\":%.1f"
				",\"delivered_s\":%.1f,\"kicked\":%" PRIu64 ",\"kicked_s\":%.1f,\"reconnects\":%" PRIu64 "}",
				O.flooders, O.flood_window, FL.sent / secs, FL.acked / secs, FL.refused / secs, FL.delivered / secs,
				FL.kicked, FL.kicked / secs, FL.reconnects);
	}
	J_hist("e2e_us", &h_e2e);
	if(need > 1) J_hist("e2e_last_us", &h_last);
	J_hist("puback_us", &h_puback);
	J_usage(&s0, &s1, (double)win_deliveries / need, "msg");
	J(",\"rss_after_drain_kb\":%ld", s2.rss_kb);
	J(",\"errors\":{\"connect\":%" PRIu64 ",\"disconnect\":%" PRIu64 ",\"publish\":%" PRIu64 ",\"bad\":%" PRIu64
			",\"refused\":%" PRIu64 "}",
			E.connect_failures, E.unexpected_disconnects, E.publish_errors, E.bad_payloads, E.refused_replies);
	J_end();
	free(senders);
}

static void setup_one2one(void)
{
	int S = O.senders, R = O.receivers, F = O.flooders, per;
	if(S == 0 && F > 0) O.convs = 0;   /* the flood alone, in a process of its own */
	else if(S <= 0 || O.convs % S) die("--convs must be a multiple of --senders");
	per = S ? O.convs / S : 0;
	if(per > R) die("each sender talks to %d receivers: --receivers must be >= %d (one direct conversation per pair)", per, per);

	/* --flooders: F devices of user x0000 after the receivers, then their receiver xr0000 */
	conns_alloc(S + R + (F > 0 ? F + 1 : 0));
	convs_alloc(O.convs + (F > 0 ? 1 : 0));
	if(F > 0){
		FL.conv = O.convs;
		for(int i = 0; i <= F; i++){
			char id[48];
			snprintf(id, sizeof(id), i < F ? "bench-x0000-%d" : "bench-xr0000", i);
			conn_init(&C[S + R + i], S + R + i, i < F ? "x0000" : "xr0000", id, true);
			C[S + R + i].flooder = i < F;
		}
	}
	for(int i = 0; i < S; i++){
		char u[32], id[48];
		snprintf(u, sizeof(u), "s%04d", i);
		snprintf(id, sizeof(id), "bench-s%04d", i);
		conn_init(&C[i], i, u, id, true);
		C[i].mid2g = mid_table();
		C[i].sconvs = calloc((size_t)per, sizeof(int));
		C[i].nsconv = per;
		for(int j = 0; j < per; j++){
			C[i].sconvs[j] = i * per + j;
			V[i * per + j].sender = i;
		}
	}
	for(int j = 0; j < R; j++){
		char u[32], id[48];
		snprintf(u, sizeof(u), "r%04d", j);
		snprintf(id, sizeof(id), "bench-r%04d", j);
		conn_init(&C[S + j], S + j, u, id, true);
	}
	connect_range(0, NC, O.connect_concurrency, true);
	if(O.target == T_PLUGIN){
		for(int i = 0; i < S; i++) subscribe_own(&C[i]);
		for(int i = 0; i < F; i++) subscribe_own(&C[S + R + i]);   /* the flood's send_failed events */
		wait_subs(0, NC);
		for(int i = 0; i < S; i++){
			for(int j = 0; j < per; j++) create_direct(&C[i], i * per + j, C[S + j].user);
		}
		if(F > 0) create_direct(&C[S + R], FL.conv, "xr0000");
		wait_creates();
	}else{
		plain_ids();
	}
	/* receiver j: conversation j of every sender */
	for(int j = 0; j < R; j++){
		char **fs = calloc((size_t)S, sizeof(char *));
		int n = 0;
		for(int i = 0; i < S && j < per; i++) fs[n++] = V[i * per + j].filter;
		if(n) subscribe(&C[S + j], n, fs);
		free(fs);
	}
	if(F > 0){
		char *fs[1] = {V[FL.conv].filter};
		subscribe(&C[NC - 1], 1, fs);
	}
	wait_subs(S, NC);
	info("one2one: %d senders, %d receivers, %d conversations, %d flooders ready", S, R, NV, F);
}

static void setup_fanout(void)
{
	int Mn = O.members;
	char **users;
	/* conn 0: the sender (user f0000); 1..Mn: receivers, conn 1 is f0000's
	 * second device, the others the Mn-1 other members */
	conns_alloc(Mn + 1);
	convs_alloc(1);
	conn_init(&C[0], 0, "f0000", "bench-fs", true);
	C[0].mid2g = mid_table();
	C[0].sconvs = calloc(1, sizeof(int));
	C[0].nsconv = 1;
	V[0].sender = 0;
	for(int i = 0; i < Mn; i++){
		char u[32], id[48];
		snprintf(u, sizeof(u), "f%04d", i);
		snprintf(id, sizeof(id), "bench-f%04d", i);
		conn_init(&C[1 + i], 1 + i, u, id, true);
	}
	need = Mn;
	connect_range(0, 1, 0, true);
	if(O.target == T_PLUGIN){
		subscribe_own(&C[0]);
		wait_subs(0, 1);
		users = calloc((size_t)Mn, sizeof(char *));
		for(int i = 1; i < Mn; i++) users[i - 1] = C[1 + i].user;
		create_group(&C[0], 0, "fanout", users, Mn - 1);
		free(users);
		wait_creates();
	}else{
		plain_ids();
	}
	connect_range(1, Mn + 1, O.connect_concurrency, true);
	for(int i = 1; i <= Mn; i++){
		char *fs[1] = {V[0].filter};
		subscribe(&C[i], 1, fs);
	}
	wait_subs(1, Mn + 1);
	info("fanout: %d recipients ready", Mn);
}

/* ====================================================================== *
 * history (end to end)
 * ====================================================================== */

static void run_history(void)
{
	char *spec = strdup(O.hist_convs ? O.hist_convs : ""), *save = NULL, *tok;
	unsigned rs = O.seed;

	conns_alloc(1);
	conn_init(&C[0], 0, "hist", "bench-hist", true);
	connect_range(0, 1, 0, true);
	subscribe_own(&C[0]);
	wait_subs(0, 1);

	for(tok = strtok_r(spec, ",", &save); tok; tok = strtok_r(NULL, ",", &save)){
		char *colon = strchr(tok, ':');
		long long size;
		struct pstat s0, s1;
		if(!colon) die("--hist-convs wants conv:size,…");
		*colon = '\0';
		size = atoll(colon + 1);
		if(size < O.hist_limit + 1) die("conversation %s is too small for pages of %d", tok, O.hist_limit);
		hist_init(&h_hist);
		hist_bad = 0;
		for(int phase = 0; phase < 2; phase++){
			int n = phase == 0 ? (O.hist_requests / 10 > 20 ? O.hist_requests / 10 : 20) : O.hist_requests;
			hist_measuring = phase == 1;
			if(phase == 1) s0 = sample();
			for(int i = 0; i < n; i++){
				/* a full page: before in [limit+1, size+1] */
				long long before = O.hist_limit + 1 + (long long)(rand_r(&rs) % (unsigned)(size - O.hist_limit + 1));
				char buf[256];
				int id = req_new(R_HISTORY, 0);
				snprintf(buf, sizeof(buf), "{\"op\":\"history\",\"conv\":\"%s\",\"before\":%lld,\"limit\":%d,\"req_id\":%d}",
						tok, before, O.hist_limit, id);
				RQ[id].t = now_ns();
				request(&C[0], buf);
				if(!run_until(no_req_outstanding, NULL, O.timeout)) die("history request timed out");
			}
		}
		s1 = sample();
		J_begin("history");
		J(",\"layer\":\"e2e\",\"conv\":\"%s\",\"hist_size\":%lld,\"limit\":%d,\"requests\":%d,\"bad\":%" PRIu64,
				tok, size, O.hist_limit, O.hist_requests, hist_bad);
		J_hist("rtt_us", &h_hist);
		J(",\"req_s\":%.1f", O.hist_requests / ((double)(s1.t - s0.t) / 1e9));
		J_usage(&s0, &s1, O.hist_requests, "req");
		J_end();
	}
	free(spec);
}

/* ====================================================================== *
 * idle
 * ====================================================================== */

/* Layer L's group of user u (N users, groups of g, G = N/g groups a layer). */
static int idle_group(int L, int u, int N, int g)
{
	int G = N / g;
	switch(L){
		case 0: return u / g;
		case 1: return G + u % G;
		default: return 2 * G + ((u + g / 2) % N) / g;
	}
}

static void create_groups_for(struct conn *creator, int first_user_conn, int N, int g, int layers)
{
	int G = N / g;
	char ***members = calloc((size_t)(layers * G), sizeof(char **));
	int *cnt = calloc((size_t)(layers * G), sizeof(int));
	for(int i = 0; i < layers * G; i++) members[i] = calloc((size_t)g, sizeof(char *));
	for(int u = 0; u < N; u++){
		for(int L = 0; L < layers; L++){
			int vi = idle_group(L, u, N, g);
			if(cnt[vi] < g) members[vi][cnt[vi]++] = C[first_user_conn + u].user;
		}
	}
	for(int vi = 0; vi < layers * G; vi++){
		/* keep at most 256 requests in flight */
		while(reqs_outstanding >= 256) loop_once(NS / 1000);
		create_group(creator, vi, "bench", members[vi], cnt[vi]);
		free(members[vi]);
	}
	free(members);
	free(cnt);
	wait_creates();
}

static void run_idle(void)
{
	int N = O.clients ? O.clients : 10000, g = O.group_size, G, layers = 3;
	struct pstat before, after;
	uint64_t t_conn0, t_conn1;

	if(N % g) die("--clients must be a multiple of --group-size");
	G = N / g;
	conns_alloc(N + 1);
	convs_alloc(layers * G);
	conn_init(&C[0], 0, "setup", "bench-setup", true);
	for(int u = 0; u < N; u++){
		char us[32], id[48];
		snprintf(us, sizeof(us), "i%05d", u);
		snprintf(id, sizeof(id), "bench-i%05d", u);
		conn_init(&C[1 + u], 1 + u, us, id, true);
	}
	connect_range(0, 1, 0, true);
	if(O.target == T_PLUGIN){
		subscribe_own(&C[0]);
		wait_subs(0, 1);
		create_groups_for(&C[0], 1, N, g, layers);
	}else{
		plain_ids();
	}
	run_for(O.settle);
	before = sample();
	t_conn0 = now_ns();
	connect_range(1, N + 1, O.connect_concurrency, true);
	t_conn1 = now_ns();
	for(int u = 0; u < N; u++){
		char own[100];
		char *fs[4] = {own, NULL, NULL, NULL};
		snprintf(own, sizeof(own), "chat/u/%s/+", C[1 + u].user);
		for(int L = 0; L < layers; L++) fs[1 + L] = V[idle_group(L, u, N, g)].filter;
		subscribe(&C[1 + u], 4, fs);
		if((u & 255) == 255) loop_once(0);
	}
	wait_subs(1, N + 1);
	run_for(O.settle);
	after = sample();
	if(E.unexpected_disconnects) die("%" PRIu64 " clients were disconnected", E.unexpected_disconnects);

	J_begin("idle");
	J(",\"clients\":%d,\"convs_per_client\":%d,\"group_size\":%d,\"convs\":%d", N, layers, g, NV);
	J(",\"connect_s\":%.3f,\"connects_s\":%.1f", (t_conn1 - t_conn0) / 1e9, N / ((t_conn1 - t_conn0) / 1e9));
	if(before.ok && after.ok){
		J(",\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,\"anon_before_kb\":%ld,\"anon_after_kb\":%ld", before.rss_kb,
				after.rss_kb, before.anon_kb, after.anon_kb);
		J(",\"file_before_kb\":%ld,\"file_after_kb\":%ld", before.file_kb, after.file_kb);
		J(",\"rss_per_conn_b\":%.1f,\"anon_per_conn_b\":%.1f", (after.rss_kb - before.rss_kb) * 1024.0 / N,
				(after.anon_kb - before.anon_kb) * 1024.0 / N);
		J(",\"broker_cpu_s\":%.3f", after.cpu_s - before.cpu_s);
	}
	J(",\"errors\":{\"connect\":%" PRIu64 ",\"disconnect\":%" PRIu64 "}", E.connect_failures, E.unexpected_disconnects);
	J_end();
}

/* ====================================================================== *
 * storm
 * ====================================================================== */

static int storm_phase;         /* 1: first message, 3: reconnect and sync */
static int storm_synced;
static struct hist h_sync, h_connack, h_after;
static uint64_t storm_t0, storm_missing;

static void storm_send_history(struct conn *c)
{
	char buf[256];
	int id = req_new(R_STORM, c->idx);
	snprintf(buf, sizeof(buf), "{\"op\":\"history\",\"conv\":\"%s\",\"after\":%" PRIu64 ",\"limit\":200,\"req_id\":%d}",
			V[c->conv].id, c->last_seq, id);
	request(c, buf);
	c->reqs++;
}

static void storm_mark_synced(struct conn *c)
{
	c->synced = true;
	c->t_synced = now_ns();
	storm_synced++;
	hist_add(&h_sync, c->t_synced - storm_t0);
	hist_add(&h_after, c->t_synced - c->t_connack);
}

static void on_connected(struct conn *c)
{
	if(c->flooder){
		flood_connected(c);
		return;
	}
	if(O.workload != W_STORM || storm_phase != 3 || c->idx == 0) return;
	hist_add(&h_connack, c->t_connack - storm_t0);
	if(O.target == T_PLUGIN){
		/* a fresh session: subscribe again, then ask for what was missed */
		char own[100];
		char *fs[2] = {own, V[c->conv].filter};
		snprintf(own, sizeof(own), "chat/u/%s/+", c->user);
		subscribe(c, 2, fs);
		storm_send_history(c);
	}
}

static void storm_reply(struct conn *c, int id, const char *p, size_t len)
{
	int count;
	int64_t last = jlast_seq(p, len, &count);
	if(c->synced) return;
	if(count > 0){
		c->got += count;
		c->last_seq = (uint64_t)last;
	}
	if(jfind(p, len, "\"has_more\":true")){
		storm_send_history(c);
	}else{
		if(c->got < O.storm_msgs) storm_missing += (uint64_t)(O.storm_msgs - c->got);
		storm_mark_synced(c);
	}
}

static void storm_delivery(struct conn *c, const char *p, size_t len)
{
	if(c->idx == 0 || c->synced) return;
	if(storm_phase == 1){
		int64_t seq = 0;
		if(O.target == T_PLUGIN && jint(p, len, "seq", &seq)) c->last_seq = (uint64_t)seq;
		c->got++;
		return;
	}
	if(storm_phase == 3 && O.target == T_PLAIN){
		c->got++;
		if(c->got >= O.storm_msgs) storm_mark_synced(c);
	}
	/* plugin, phase 3: the history reply is what counts */
}

static bool all_got_one(void *ud)
{
	for(int i = 1; i < NC; i++){
		if(C[i].got < 1) return false;
	}
	return true;
}

static bool all_down(void *ud)
{
	for(int i = 1; i < NC; i++){
		if(mosquitto_socket(C[i].m) >= 0) return false;
	}
	return true;
}

static bool all_synced(void *ud)
{
	return storm_synced >= NC - 1;
}

static int storm_pubacks;
static bool pubacks_done(void *ud)
{
	return storm_pubacks == 0;
}

static void storm_publish_round(int per_conv)
{
	static char buf[2048];
	struct conn *pub = &C[0];
	memset(body_pad, 'x', sizeof(body_pad));
	for(int r = 0; r < per_conv; r++){
		for(int vi = 0; vi < NV; vi++){
			struct conv *v = &V[vi];
			int len;
			v->k++;
			if(O.target == T_PLUGIN){
				len = snprintf(buf, sizeof(buf), "{\"cmid\":\"%sst%d-%" PRIu64 "\",\"body\":\"%.*s\"}", run_nonce, vi, v->k, O.body, body_pad);
			}else{
				len = snprintf(buf, sizeof(buf),
						"{\"conv\":\"%s\",\"seq\":%" PRIu64 ",\"id\":\"%s:%" PRIu64 "\",\"ts\":%" PRIu64
						",\"from\":\"setup\",\"cmid\":\"%sst%d-%" PRIu64 "\",\"type\":\"text\",\"body\":\"%.*s\"}",
						v->id, v->k + 1, v->id, v->k + 1, wall_ms(), run_nonce, vi, v->k, O.body, body_pad);
			}
			storm_pubacks++;
			publish(pub, NULL, v->topic_pub, buf, (size_t)len);
			while(storm_pubacks > 1000) loop_once(NS / 1000);
		}
	}
	if(!run_until(pubacks_done, NULL, O.timeout)) die("timed out publishing");
}

static void storm_puback(struct conn *c, int mid)
{
	if(c->idx == 0 && storm_phase > 0) storm_pubacks--;
}

static void run_storm(void)
{
	int N = O.clients ? O.clients : 2000, g = O.group_size, G;
	bool plain = O.target == T_PLAIN;
	struct pstat s0, s1;

	if(N % g) die("--clients must be a multiple of --group-size");
	G = N / g;
	conns_alloc(N + 1);
	convs_alloc(G);
	hist_init(&h_sync);
	hist_init(&h_connack);
	hist_init(&h_after);
	conn_init(&C[0], 0, "setup", "bench-setup", true);
	for(int u = 0; u < N; u++){
		char us[32], id[48];
		snprintf(us, sizeof(us), "st%05d", u);
		snprintf(id, sizeof(id), "bench-st%05d", u);
		/* plain: persistent sessions keep what is published meanwhile */
		conn_init(&C[1 + u], 1 + u, us, id, !plain);
		C[1 + u].conv = u / g;
	}
	connect_range(0, 1, 0, true);
	if(!plain){
		char ***members = calloc((size_t)G, sizeof(char **));
		subscribe_own(&C[0]);
		wait_subs(0, 1);
		for(int vi = 0; vi < G; vi++){
			members[vi] = calloc((size_t)g, sizeof(char *));
			for(int j = 0; j < g; j++) members[vi][j] = C[1 + vi * g + j].user;
			while(reqs_outstanding >= 256) loop_once(NS / 1000);
			create_group(&C[0], vi, "storm", members[vi], g);
		}
		wait_creates();
		for(int vi = 0; vi < G; vi++) free(members[vi]);
		free(members);
	}else{
		plain_ids();
	}

	/* phase 1: everybody online, one message each, remember its seq */
	connect_range(1, N + 1, O.connect_concurrency, true);
	for(int u = 1; u <= N; u++){
		char own[100];
		char *fs[2] = {own, V[C[u].conv].filter};
		snprintf(own, sizeof(own), "chat/u/%s/+", C[u].user);
		subscribe(&C[u], 2, fs);
	}
	wait_subs(1, N + 1);
	storm_phase = 1;
	storm_publish_round(1);
	if(!run_until(all_got_one, NULL, O.timeout)) die("timed out waiting for the first message");

	/* phase 2: all offline; messages published meanwhile */
	storm_phase = 2;
	for(int u = 1; u <= N; u++){
		C[u].expect_disc = true;
		C[u].got = 0;
		mosquitto_disconnect(C[u].m);
		mark_dirty(&C[u]);
	}
	if(!run_until(all_down, NULL, O.timeout)) die("timed out disconnecting");
	run_for(0.5);
	storm_publish_round(O.storm_msgs);
	run_for(0.5);

	/* phase 3: all at once */
	storm_phase = 3;
	s0 = sample();
	storm_t0 = now_ns();
	for(int u = 1; u <= N; u++) conn_start(&C[u], false);
	if(!run_until(all_synced, NULL, O.timeout)) fprintf(stderr, "chatbench: storm: only %d of %d synced\n", storm_synced, N);
	s1 = sample();

	J_begin("storm");
	J(",\"clients\":%d,\"convs\":%d,\"msgs_per_conv\":%d,\"synced\":%d,\"missing\":%" PRIu64, N, G, O.storm_msgs,
			storm_synced, storm_missing);
	J(",\"all_synced_ms\":%.3f", h_sync.count ? h_sync.max / 1e6 : -1.0);
	J_hist("sync_us", &h_sync);
	J_hist("connack_us", &h_connack);
	J_hist("after_connack_us", &h_after);
	J_usage(&s0, &s1, N, "client");
	J(",\"errors\":{\"connect\":%" PRIu64 ",\"disconnect\":%" PRIu64 ",\"refused\":%" PRIu64 "}", E.connect_failures,
			E.unexpected_disconnects, E.refused_replies);
	J_end();
}

/* ====================================================================== *
 * main
 * ====================================================================== */

static void raise_nofile(long want)
{
	struct rlimit rl;
	if(getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
	if((long)rl.rlim_cur >= want) return;
	if((long)rl.rlim_max < want){
		struct rlimit r2 = {(rlim_t)want, (rlim_t)want};
		if(setrlimit(RLIMIT_NOFILE, &r2) == 0) return;
	}
	rl.rlim_cur = (long)rl.rlim_max < want ? rl.rlim_max : (rlim_t)want;
	setrlimit(RLIMIT_NOFILE, &rl);
	getrlimit(RLIMIT_NOFILE, &rl);
	if((long)rl.rlim_cur < want) fprintf(stderr, "chatbench: warning: RLIMIT_NOFILE is %ld, want %ld\n", (long)rl.rlim_cur, want);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: chatbench --workload one2one|fanout|history|idle|storm --target plain|plugin [options]\n"
		"  --host H --port P          broker (127.0.0.1:1883)\n"
		"  --broker-pid PID           sample broker CPU/RSS from /proc\n"
		"  --label TEXT               copied into the JSON line\n"
		"  --cpu N                    pin this process to CPU N\n"
		" one2one / fanout:\n"
		"  --rate R                   open loop at R msgs/s (0: closed loop, the ceiling)\n"
		"  --window N                 closed loop: messages in flight per sender (20; fanout 8)\n"
		"  --warmup S --duration S --drain S   (2, 10, 5)\n"
		"  --senders N --convs N --receivers N (20, 1000, 50)   --body BYTES (200)\n"
		"  --members N                fanout group size (500)\n"
		"  --max-outstanding N        open loop: unacked messages a sender hands libmosquitto (200)\n"
		"  --flooders N               one2one: N devices of one more user sending flat out (0);\n"
		"                             with --senders 0 --receivers 0 --rate 0 the flood alone\n"
		"  --flood-window N           messages each flooder keeps in flight (100)\n"
		" history:\n"
		"  --hist-convs ID:SIZE,...   seeded conversations (see chatseed), user 'hist'\n"
		"  --hist-requests N          requests per conversation (2000), one at a time\n"
		" idle / storm:\n"
		"  --clients N                (idle 10000, storm 2000)\n"
		"  --group-size N             members per conversation (10)\n"
		"  --storm-msgs N             messages per conversation while offline (20)\n"
		"  --connect-concurrency N    CONNACKs outstanding while connecting (256)\n"
		"  --settle S                 idle: seconds before each RSS sample (2)\n"
		"  --timeout S                any setup step (120)\n"
		"  -v                         progress on stderr\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"host", required_argument, NULL, 'H'},
		{"port", required_argument, NULL, 'p'},
		{"workload", required_argument, NULL, 'w'},
		{"target", required_argument, NULL, 't'},
		{"label", required_argument, NULL, 'l'},
		{"warmup", required_argument, NULL, 1},
		{"duration", required_argument, NULL, 2},
		{"drain", required_argument, NULL, 3},
		{"rate", required_argument, NULL, 4},
		{"window", required_argument, NULL, 5},
		{"senders", required_argument, NULL, 6},
		{"convs", required_argument, NULL, 7},
		{"receivers", required_argument, NULL, 8},
		{"body", required_argument, NULL, 9},
		{"members", required_argument, NULL, 10},
		{"clients", required_argument, NULL, 11},
		{"group-size", required_argument, NULL, 12},
		{"storm-msgs", required_argument, NULL, 13},
		{"connect-concurrency", required_argument, NULL, 14},
		{"hist-convs", required_argument, NULL, 15},
		{"hist-requests", required_argument, NULL, 16},
		{"broker-pid", required_argument, NULL, 17},
		{"cpu", required_argument, NULL, 18},
		{"seed", required_argument, NULL, 19},
		{"settle", required_argument, NULL, 20},
		{"timeout", required_argument, NULL, 21},
		{"max-outstanding", required_argument, NULL, 22},
		{"flooders", required_argument, NULL, 23},
		{"flood-window", required_argument, NULL, 24},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	int c;
	bool have_w = false, have_t = false;

	while((c = getopt_long(argc, argv, "H:p:w:t:l:vh", opts, NULL)) != -1){
		switch(c){
			case 'H': O.host = optarg; break;
			case 'p': O.port = atoi(optarg); break;
			case 'w': {
				bool ok = false;
				for(int i = 0; i < 5; i++){
					if(!strcmp(optarg, workload_names[i])){
						O.workload = (enum workload)i;
						ok = true;
					}
				}
				if(!ok) die("unknown workload %s", optarg);
				have_w = true;
				break;
			}
			case 't':
				if(!strcmp(optarg, "plain")) O.target = T_PLAIN;
				else if(!strcmp(optarg, "plugin")) O.target = T_PLUGIN;
				else die("unknown target %s", optarg);
				have_t = true;
				break;
			case 'l': O.label = optarg; break;
			case 'v': O.verbose++; break;
			case 1: O.warmup = atof(optarg); break;
			case 2: O.duration = atof(optarg); break;
			case 3: O.drain = atof(optarg); break;
			case 4: O.rate = atof(optarg); break;
			case 5: O.window = atoi(optarg); break;
			case 6: O.senders = atoi(optarg); break;
			case 7: O.convs = atoi(optarg); break;
			case 8: O.receivers = atoi(optarg); break;
			case 9: O.body = atoi(optarg); break;
			case 10: O.members = atoi(optarg); break;
			case 11: O.clients = atoi(optarg); break;
			case 12: O.group_size = atoi(optarg); break;
			case 13: O.storm_msgs = atoi(optarg); break;
			case 14: O.connect_concurrency = atoi(optarg); break;
			case 15: O.hist_convs = optarg; break;
			case 16: O.hist_requests = atoi(optarg); break;
			case 17: O.broker_pid = atoi(optarg); break;
			case 18: O.cpu = atoi(optarg); break;
			case 19: O.seed = (unsigned)strtoul(optarg, NULL, 10); break;
			case 20: O.settle = atof(optarg); break;
			case 21: O.timeout = atof(optarg); break;
			case 22: O.max_outstanding = atoi(optarg); break;
			case 23: O.flooders = atoi(optarg); break;
			case 24: O.flood_window = atoi(optarg); break;
			case 'h': usage(); return 0;
			default: usage(); return 2;
		}
	}
	if(!have_w || !have_t){
		usage();
		return 2;
	}
	if(O.body < 32 || O.body > 60000) die("--body must be 32..60000");
	if(O.workload == W_HISTORY && O.target != T_PLUGIN) die("history needs --target plugin");
	prctl(PR_SET_TIMERSLACK, 1UL);   /* open-loop sends are scheduled to the µs */
	if(O.cpu >= 0){
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(O.cpu, &set);
		if(sched_setaffinity(0, sizeof(set), &set) != 0) fprintf(stderr, "chatbench: cannot pin to CPU %d\n", O.cpu);
	}
	/* one socket per client (the socket pair is refused, above) */
	raise_nofile((long)((O.clients ? O.clients : 10000) + O.members + O.senders + O.receivers) + 256);
	signal(SIGPIPE, SIG_IGN);
	mosquitto_lib_init();
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if(epfd < 0) die("epoll_create1: %s", strerror(errno));
	last_misc = now_ns();
	snprintf(run_nonce, sizeof(run_nonce), "%" PRIx64 "-", wall_ms() ^ ((uint64_t)getpid() << 40));

	switch(O.workload){
		case W_ONE2ONE:
			setup_one2one();
			traffic_run();
			break;
		case W_FANOUT:
			setup_fanout();
			traffic_run();
			break;
		case W_HISTORY:
			run_history();
			break;
		case W_IDLE:
			run_idle();
			break;
		case W_STORM:
			run_storm();
			break;
	}
	/* leave quietly: the broker is killed by the harness anyway */
	for(int i = 0; i < NC; i++){
		if(C[i].m && mosquitto_socket(C[i].m) >= 0){
			C[i].expect_disc = true;
			mosquitto_disconnect(C[i].m);
		}
	}
	for(int i = 0; i < 50 && ndirty; i++) loop_once(NS / 1000);
	return 0;
}
